"""The error classes, each mapped to one documented exit code.

Only the CLI turns these into exits; library code raises them with the facts
(environment, revision) as fields and a message that says fact, place, remedy.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_LOCKED = 4
EXIT_DIFFERENCES = 5


class OrchestratorError(Exception):
    """Raised for every failure the orchestrator reports to its user."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, env: str | None = None, revision: str | None = None):
        super().__init__(message)
        self.message = message
        self.env = env
        self.revision = revision

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """Raised when the registry, an argument or the files on disk are unusable."""

    exit_code = EXIT_USAGE


class RegistryError(ConfigError):
    """Raised when the registry file cannot be read or does not validate."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None):
        place = f"{file}:{line}" if line else file
        prefix = f"{place}: {field}: " if field else f"{place}: "
        super().__init__(prefix + message)
        self.file, self.line, self.field = file, line, field


class UnknownEnvironment(ConfigError):
    """Raised when an environment name is not in the registry."""


class GraphError(ConfigError):
    """Raised when an environment's revision graph is not usable (unclosed, duplicate, cycle)."""


class RevisionNotFound(ConfigError):
    """Raised when a target revision names nothing in the environment's graph."""


class DatabaseError(OrchestratorError):
    """Raised when a database cannot be reached or a statement outside a migration fails."""


class MigrationFailed(OrchestratorError):
    """Raised when a revision script fails while being applied."""


class GateRefused(OrchestratorError):
    """Raised when the gate refuses a plan on a protected environment."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, *, env: str | None = None, revision: str | None = None,
                 reasons: tuple[str, ...] = ()):
        super().__init__(message, env=env, revision=revision)
        self.reasons = reasons


class LockTimeout(OrchestratorError):
    """Raised when another runner holds an environment's lock past ``--lock-timeout``."""

    exit_code = EXIT_LOCKED


class DifferencesFound(OrchestratorError):
    """Raised when drift or integrity checks find differences."""

    exit_code = EXIT_DIFFERENCES

    def __init__(self, message: str, *, env: str | None = None, findings: tuple[str, ...] = ()):
        super().__init__(message, env=env)
        self.findings = findings


class NotAtHeads(OrchestratorError):
    """Raised at application start in ``verify`` mode when the database is not at its environment's heads."""

    exit_code = EXIT_DIFFERENCES

    def __init__(self, message: str, *, env: str, current: tuple[str, ...], heads: tuple[str, ...]):
        super().__init__(message, env=env)
        self.current, self.heads = current, heads
