"""Everything about one environment that the commands need, built lazily and once.

An :class:`EnvContext` bundles the registry entry, the revision graph the
environment sees (checked closed), the in-memory Alembic ``Config`` and the
``ScriptDirectory`` over the environment's own folders. Building the context
sets ``ALEMBIC_ENV`` so that code run by Alembic sees the same environment.

Scripts are only parsed while the folders are read; the ``ScriptDirectory``
is handed them as :class:`~orchestrator.alembic_compat.JudgedModule` s, which
run a script (compiled from the bytes that were hashed) only when Alembic or
lint asks for its code, and on a protected environment only when that content
is approved in the ledger: planning and the gate never run a script.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from orchestrator.errors import GateRefused, GraphError, OrchestratorError
from orchestrator.graph import EnvironmentGraph, build_environment_graph, index_unique
from orchestrator.loader import RevisionFile, Stamp, folders_stamp, read_folders_stamped, stat_key
from orchestrator.redact import RedactingStream
from orchestrator.registry import ENV_SELECT_VAR, Environment, Registry

ENV_ATTRIBUTE = "orchestrator.environment"
REGISTRY_ATTRIBUTE = "orchestrator.registry"
RUN_ATTRIBUTE = "orchestrator.recorder"


@dataclass
class EnvContext:
    """One environment of a registry, ready for Alembic."""

    registry: Registry
    env: Environment
    _all_files: dict[str, RevisionFile] | None = field(default=None, repr=False)
    _stamp: Stamp | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.env.name

    def reload(self) -> None:
        """Read the folders again if any script was added, removed or changed since they were read."""
        if self._stamp is not None and self._stamp == self._current_stamp():
            return
        for cached in ("all_files", "graph", "script", "directory"):
            self.__dict__.pop(cached, None)
        self._all_files = None
        self._stamp = None

    def _current_stamp(self) -> Stamp:
        return folders_stamp(self.registry.all_folders(), recursive=self.env.recursive_version_locations)

    @cached_property
    def url(self) -> URL:
        """Return the resolved database URL."""
        return self.env.url()

    @cached_property
    def all_files(self) -> dict[str, RevisionFile]:
        """Return every revision in every folder of the registry, ids checked unique."""
        if self._all_files is None:
            files, self._stamp = read_folders_stamped(self.registry.all_folders(),
                                                      recursive=self.env.recursive_version_locations,
                                                      may_run=self._may_run_unparsed())
            self._all_files = index_unique(files, self.registry.root)
        else:
            self._stamp = self._current_stamp()
        return self._all_files

    @cached_property
    def graph(self) -> EnvironmentGraph:
        """Return the graph this environment sees, checked closed and acyclic."""
        return build_environment_graph(self.name, self.env.version_locations, self.all_files, self.registry.root)

    def config(self, *, stdout: TextIO | None = None, output_buffer: TextIO | None = None) -> Config:
        """Return a fresh in-memory Alembic Config for this environment."""
        # Alembic's own messages ("Generating ...") are progress: stderr, keeping stdout for results
        cfg = Config(stdout=stdout or RedactingStream(lambda: sys.stderr), output_buffer=output_buffer)
        for key, value in alembic_options(self.env, self.registry).items():
            cfg.set_main_option(key, value)
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        cfg.attributes[ENV_ATTRIBUTE] = self.env
        cfg.attributes[REGISTRY_ATTRIBUTE] = self.registry
        return cfg

    @cached_property
    def directory(self) -> ScriptDirectory:
        """Return Alembic's ScriptDirectory for this environment, before it has read any script."""
        return ScriptDirectory.from_config(self.config())

    @cached_property
    def script(self) -> ScriptDirectory:
        """Return Alembic's view of this environment's folders."""
        graph = self.graph  # refuse an unclosed graph before Alembic trips over it
        script = self.directory
        from orchestrator.alembic_compat import install_revision_map, real_paths
        install_revision_map(script, real_paths(graph.revisions.values(), self.env.version_locations), self.may_run)
        return script

    def approved(self, file: RevisionFile) -> bool:
        """Return True when the review ledger approves this content of the script (an unreadable ledger approves nothing)."""
        from orchestrator.reviews import REVIEWED, load_ledger

        try:
            return self._ledger(load_ledger).state(file.revision, file.sha256) == REVIEWED
        except (OrchestratorError, OSError):
            return False

    def may_run(self, file: RevisionFile) -> None:
        """Allow a script's code to run here, or refuse: a protected environment runs approved content only."""
        if not self.env.protected:
            return
        if not self.approved(file):
            where = file.display_path(self.registry.root)
            raise GateRefused(
                f"environment '{self.name}': revision {file.revision} ({where}) is not approved at sha256 "
                f"{file.sha256[:12]}, so none of its code runs on this protected environment; review it: "
                f"`orchestrator review approve {file.revision} --reviewer NAME`", env=self.name,
                reasons=(f"revision {file.revision} ({where}) is not approved",))

    def _ledger(self, load: Any) -> Any:
        """Return the review ledger, read again only when its file changed (one read for a run's many steps)."""
        path = self.registry.reviews_path
        key = (str(path), *stat_key(path)) if path is not None and Path(path).exists() else (str(path),)
        cached = self.__dict__.get("_ledger_cache")
        if cached is None or cached[0] != key:
            cached = (key, load(path))
            self.__dict__["_ledger_cache"] = cached
        return cached[1]

    def _may_run_unparsed(self) -> Any:
        """Return the check made before a script with non-literal identifiers is run to read them."""
        from orchestrator.reviews import load_ledger

        def check(path: Path, folder: Path, sha256: str) -> None:
            self.directory  # puts prepend_sys_path on sys.path first, as Alembic does before loading
            if not any(env.protected for env in self.registry.environments.values()):
                return
            try:
                approved = {a.sha256 for a in load_ledger(self.registry.reviews_path).approvals.values()}
            except OrchestratorError:
                approved = set()
            if sha256 not in approved:
                raise GraphError(
                    f"{path.relative_to(folder.parent)}: revision identifiers are not literals, and a registry with "
                    "protected environments runs no unapproved script to read them; assign revision, down_revision, "
                    "branch_labels and depends_on literal values")

        return check


def alembic_options(env: Environment, registry: Registry, *, separator: str = "newline") -> dict[str, str]:
    """Return the Alembic main options for ``env`` (no URL), as an ini would hold them."""
    sep = {"newline": "\n", "os": os.pathsep}[separator]
    options = {
        "script_location": env.script_location,
        "path_separator": separator,
        "version_locations": sep.join(str(p) for p in env.version_locations),
        "recursive_version_locations": "true" if env.recursive_version_locations else "false",
        "orchestrator.registry": str(registry.path),
        "orchestrator.env": env.name,
    }
    if env.prepend_sys_path:
        options["prepend_sys_path"] = sep.join(str(p) for p in env.prepend_sys_path)
    if env.file_template:
        options["file_template"] = env.file_template
    # Config values go through configparser interpolation: escape every '%'
    return {k: v.replace("%", "%%") for k, v in options.items()}


@contextmanager
def selected_env(name: str) -> Iterator[None]:
    """Set ``ALEMBIC_ENV`` for code Alembic runs (env.py, scripts), restoring it afterwards."""
    before = os.environ.get(ENV_SELECT_VAR)
    os.environ[ENV_SELECT_VAR] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_SELECT_VAR, None)
        else:
            os.environ[ENV_SELECT_VAR] = before


def contexts(registry: Registry, names: list[str] | None = None) -> list[EnvContext]:
    """Return contexts for ``names`` (all environments if None), sharing one read of the folders."""
    chosen = [registry.env(n) for n in names] if names else list(registry.environments.values())
    shared: dict[str, RevisionFile] | None = None
    result = []
    for env in chosen:
        ctx = EnvContext(registry, env, shared)
        if shared is None:
            shared = ctx.all_files
            ctx._all_files = shared
        result.append(ctx)
    return result
