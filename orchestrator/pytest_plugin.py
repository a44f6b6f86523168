"""The orchestrator's pytest plugin: options, throwaway-database fixtures and the built-in checks.

Registered through the ``pytest11`` entry point, so it loads wherever the package
is installed; it therefore stays inert until a test asks for it: no autouse
fixtures, no hooks that touch collection except parametrizing tests that request
``orchestrator_dialect`` or ``orchestrator_db_url``. Provisioning itself lives in
:mod:`orchestrator.testing.databases`, imported only when a fixture is used so an
unrelated test run does not pay for importing SQLAlchemy.

The built-in migration checks (:mod:`orchestrator.testing.checks`) join a run only
when turned on (``--orchestrator-checks``, or ``orchestrator_checks = true`` for runs
not narrowed to paths): then a collector named ``orchestrator_checks`` is added beside
the session's own, holding one item per check and environment (and dialect, for the
checks that need a database), e.g. ``orchestrator_checks::test_upgrade_from_empty[prod-postgresql]``
or ``orchestrator_checks::test_single_head[prod]``. Each database check gets its own
``orchestrator_db_url``; a dialect without a server skips with the way to enable it.

Every fixture is a plain fixture: a conftest may override any of them by name (for
the checks' items, the conftest.py at the rootdir, since they live outside any folder).
"""
from __future__ import annotations

import types
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from orchestrator.registry import Registry
    from orchestrator.testing.checks import Check, Subject
    from orchestrator.testing.databases import Server

DIALECT_FIXTURE = "orchestrator_dialect"
CHECKS_NODE = "orchestrator_checks"
CHECKS_MARKER = "orchestrator_check"
DEFAULT_REGISTRY = "envs/registry.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the orchestrator's options, each also settable in the ini file."""
    group = parser.getgroup("orchestrator", "orchestrator (Alembic migrations across environments)")
    group.addoption(
        "--orchestrator-dialects",
        dest="orchestrator_dialects",
        metavar="LIST",
        default=None,
        help="comma-separated dialects to run orchestrator_db_url tests on "
        "(sqlite,postgresql,mysql; default: all). Ini: orchestrator_dialects.",
    )
    parser.addini(
        "orchestrator_dialects",
        "comma-separated dialects to run orchestrator_db_url tests on (default: all)",
        type="string",
        default="",
    )
    group.addoption(
        "--orchestrator-registry",
        dest="orchestrator_registry",
        metavar="PATH",
        default=None,
        help="registry file for the orchestrator fixtures. Ini: orchestrator_registry.",
    )
    parser.addini(
        "orchestrator_registry",
        "registry file for the orchestrator fixtures, relative to the ini file",
        type="string",
        default="",
    )
    group.addoption(
        "--orchestrator-envs",
        dest="orchestrator_envs",
        metavar="LIST",
        default=None,
        help="comma-separated registry environments for the orchestrator fixtures. Ini: orchestrator_envs.",
    )
    parser.addini(
        "orchestrator_envs",
        "comma-separated registry environments for the orchestrator fixtures",
        type="string",
        default="",
    )
    group.addoption(
        "--orchestrator-checks",
        dest="orchestrator_checks",
        action="store_true",
        default=False,
        help="add the built-in migration checks (items orchestrator_checks::test_*[env-dialect]) for every "
        "environment of the registry (--orchestrator-registry, default envs/registry.yaml under the rootdir) "
        "or those of --orchestrator-envs, on the dialects of --orchestrator-dialects. Ini: orchestrator_checks.",
    )
    parser.addini(
        "orchestrator_checks",
        "add the built-in migration checks to runs that collect from their default locations "
        "(no paths given on the command line); --orchestrator-checks adds them to any run",
        type="bool",
        default=False,
    )


def _setting(config: pytest.Config, name: str) -> str | None:
    """Return a setting from the command line, else the ini file; None when unset or blank."""
    value = config.getoption(name)
    if value is None or not value.strip():
        value = config.getini(name)
    return value.strip() or None


def _split(value: str) -> tuple[str, ...]:
    """Split a comma list into its non-blank items, first occurrence kept."""
    return tuple(dict.fromkeys(item.strip() for item in value.split(",") if item.strip()))


def selected_dialects(config: pytest.Config) -> tuple[str, ...]:
    """Return the dialects tests run on; raise UsageError for an unknown one."""
    from orchestrator.testing.databases import DIALECTS

    value = _setting(config, "orchestrator_dialects")
    dialects = _split(value) if value else DIALECTS
    if unknown := [d for d in dialects if d not in DIALECTS]:
        raise pytest.UsageError(
            f"orchestrator_dialects: unknown dialect(s) {', '.join(unknown)}; choose from {', '.join(DIALECTS)}"
        )
    return dialects


def registry_path(config: pytest.Config) -> Path | None:
    """Return the registry path set for the run (command line or ini), or None."""
    if cli := (config.getoption("orchestrator_registry") or "").strip():
        return config.invocation_params.dir / cli
    if ini := config.getini("orchestrator_registry").strip():
        # An ini path means what it says next to the ini file, wherever pytest runs from.
        return (config.inipath.parent if config.inipath else config.rootpath) / ini
    return None


def selected_envs(config: pytest.Config) -> tuple[str, ...] | None:
    """Return the registry environments set for the run (command line or ini), or None."""
    value = _setting(config, "orchestrator_envs")
    return _split(value) if value else None


def checks_requested(config: pytest.Config) -> bool:
    """Tell whether this run collects the built-in checks.

    ``--orchestrator-checks`` adds them to any run. The ini setting adds them to runs
    that collect from their default locations (``testpaths`` or the current directory),
    not to a run narrowed to paths given on the command line (``pytest tests/test_x.py``).
    """
    if config.getoption("orchestrator_checks"):
        return True
    return bool(config.getini("orchestrator_checks")) and config.args_source != pytest.Config.ArgsSource.ARGS


def pytest_configure(config: pytest.Config) -> None:
    """Reject an unknown dialect at start-up; register the checks' collection when they are requested."""
    if _setting(config, "orchestrator_dialects") is not None:
        selected_dialects(config)
    if checks_requested(config):
        config.addinivalue_line("markers", f"{CHECKS_MARKER}: a built-in orchestrator migration check")
        config.pluginmanager.register(ChecksCollection(config), "orchestrator-checks")


def _parametrized_by_marker(metafunc: pytest.Metafunc) -> bool:
    """Tell whether the test parametrizes orchestrator_dialect itself."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [name.strip() for name in argnames.split(",")]
        if DIALECT_FIXTURE in argnames:
            return True
    return False


def _dialect_fixture_is_ours(metafunc: pytest.Metafunc) -> bool:
    """Tell whether the orchestrator_dialect the test sees is this plugin's, not an override."""
    # _arg2fixturedefs is private but long-stable; without it, assume no override.
    fixturedefs = getattr(metafunc, "_arg2fixturedefs", {}).get(DIALECT_FIXTURE)
    return not fixturedefs or getattr(fixturedefs[-1].func, "__module__", None) == __name__


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests that use orchestrator_dialect over the selected dialects."""
    if DIALECT_FIXTURE not in metafunc.fixturenames:
        return
    # A test's own parametrize mark or a conftest override decides the dialects instead.
    if _parametrized_by_marker(metafunc) or not _dialect_fixture_is_ours(metafunc):
        return
    dialects = selected_dialects(metafunc.config)
    metafunc.parametrize(DIALECT_FIXTURE, dialects, ids=list(dialects), indirect=True)


@pytest.fixture
def orchestrator_dialect(request: pytest.FixtureRequest) -> str:
    """The dialect this test runs on: ``sqlite``, ``postgresql`` or ``mysql``.

    Tests that request it (or ``orchestrator_db_url``) are parametrized over
    ``--orchestrator-dialects`` / the ``orchestrator_dialects`` ini setting (default:
    all three), with ids ``sqlite``/``postgresql``/``mysql``. To choose otherwise, use
    ``@pytest.mark.parametrize("orchestrator_dialect", [...])`` on a test, or override
    this fixture in a conftest (with or without ``params``).
    """
    if not hasattr(request, "param"):
        # A built-in check item carries its dialect itself (it is not parametrized).
        dialect = getattr(request.node, "orchestrator_dialect", None)
        if dialect is not None:
            return dialect
        pytest.fail(
            "orchestrator_dialect is parametrized at collection: request it (or orchestrator_db_url) "
            "as a test argument rather than through request.getfixturevalue",
            pytrace=False,
        )
    return request.param


@pytest.fixture(scope="session")
def orchestrator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Server]]:
    """A lookup ``dialect -> Server`` shared by the session.

    PostgreSQL and MySQL servers come from ``ORCHESTRATOR_TEST_POSTGRESQL_URL`` /
    ``ORCHESTRATOR_TEST_MYSQL_URL``, else from a testcontainers container started at
    most once per session (per xdist worker) and stopped when the session ends.
    SQLite databases are files in one session temporary directory. The lookup raises
    ``DatabaseUnavailable`` when a dialect cannot be provided.
    """
    from orchestrator.testing import databases

    sqlite_servers: list[Server] = []

    def lookup(dialect: str) -> Server:
        """Return the session's Server for a dialect."""
        if dialect != "sqlite":
            return databases.get_server(dialect)
        if not sqlite_servers:
            sqlite_servers.append(databases.SqliteServer(tmp_path_factory.mktemp("orchestrator_sqlite")))
        return sqlite_servers[0]

    yield lookup
    # Also registered with atexit; closing here too covers workers that exit without running atexit.
    databases.close_servers()


@pytest.fixture
def orchestrator_db_url(orchestrator_dialect: str, orchestrator_server: Callable[[str], Server]) -> Iterator[str]:
    """A SQLAlchemy URL (sync driver) to a fresh, empty database, dropped after the test.

    The database is named ``orch_t_<12 hex>`` and dropped even when the test fails;
    connections the test left open do not block the drop. When the dialect has no
    server, the test is skipped with the way to enable it as the reason.
    """
    from orchestrator.testing.databases import DatabaseUnavailable, throwaway_database

    try:
        server = orchestrator_server(orchestrator_dialect)
    except DatabaseUnavailable as exc:
        pytest.skip(str(exc))
    with throwaway_database(orchestrator_dialect, server=server) as url:
        yield url


# ---------------------------------------------------------------------------- the built-in checks


class ChecksCollection:
    """Adds the ``orchestrator_checks`` collector to the session; registered only when checks are requested."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        """Append the checks' collector to what the session collects, so -k, -m, -x and xdist treat them alike."""
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            # The rootdir as its path: --lf then keeps it whenever anything failed, and filters its items itself.
            report.result.append(OrchestratorChecks.from_parent(
                collector, name=CHECKS_NODE, nodeid=CHECKS_NODE, path=self.config.rootpath))
        return report


def checks_registry_path(config: pytest.Config) -> Path:
    """Return the registry the checks run on: --orchestrator-registry, the ini setting, else envs/registry.yaml."""
    return registry_path(config) or config.rootpath / DEFAULT_REGISTRY


class OrchestratorChecks(pytest.Module):
    """The built-in checks for the registry's environments: one item per check, environment and dialect.

    A module without a file (as pytest-alembic's collector is), so that fixtures of every
    scope, module-scoped autouse ones included, resolve for its items as for any test.
    """

    def _getobj(self) -> Any:
        """Return an empty module object: there is no file to import."""
        return types.ModuleType(CHECKS_NODE, "The orchestrator's built-in migration checks.")

    def collect(self) -> list[pytest.Item]:
        """Return the check items; a registry that cannot be read is this collector's error."""
        from orchestrator.errors import OrchestratorError
        from orchestrator.registry import load_registry
        from orchestrator.testing.checks import CHECKS, graph_error, not_applicable

        path = checks_registry_path(self.config)
        if not path.is_file():
            raise self.CollectError(
                f"orchestrator checks: registry file {path} not found; set --orchestrator-registry "
                "or the orchestrator_registry ini setting")
        try:
            registry = load_registry(path)
        except OrchestratorError as exc:
            raise self.CollectError(f"orchestrator checks: {exc}") from None
        envs = self._environments(registry)
        dialects = selected_dialects(self.config)
        unusable = {env: graph_error(registry, env) for env in envs}
        items: list[pytest.Item] = []
        for check in CHECKS:
            for env in envs:
                reason = not_applicable(check, registry, env, unusable[env])
                for dialect in dialects if check.needs_database else (None,):
                    item = OrchestratorCheckItem.from_check(self, check, registry, env, dialect)
                    if reason is not None:
                        item.add_marker(pytest.mark.skip(reason=reason))
                    items.append(item)
        return items

    def _environments(self, registry: Registry) -> tuple[str, ...]:
        """Return the environments to check: --orchestrator-envs / the ini setting, else all of them."""
        chosen = selected_envs(self.config)
        if chosen is None:
            return tuple(registry.environments)
        if unknown := [e for e in chosen if e not in registry.environments]:
            raise self.CollectError(
                f"orchestrator checks: unknown environment(s) {', '.join(unknown)} in orchestrator_envs; "
                f"{registry.path} has {', '.join(registry.environments)}")
        return chosen


class OrchestratorCheckItem(pytest.Function):
    """One built-in check on one environment (and dialect); its failures print as message and sections."""

    orchestrator_env: str
    orchestrator_dialect: str | None

    @classmethod
    def from_check(cls, parent: OrchestratorChecks, check: Check, registry: Registry, env: str,
                   dialect: str | None) -> OrchestratorCheckItem:
        """Return the item running ``check`` on ``env`` (on a fresh ``dialect`` database if it needs one)."""
        from orchestrator.testing.checks import Subject

        subject = Subject(registry, env, dialect)
        ids = f"{env}-{dialect}" if dialect else env
        # No originalname here: pytest >= 9.2 builds the node id from it and a callspec, which this item has not.
        item = cls.from_parent(parent, name=f"{check.name}[{ids}]", callobj=_check_function(check, subject))
        item.originalname = check.name
        item.orchestrator_env, item.orchestrator_dialect = env, dialect
        item.add_marker(CHECKS_MARKER)
        return item

    def reportinfo(self) -> tuple[Any, int, str]:
        """Point at the registry's first line: the checks have no source file of their own."""
        return checks_registry_path(self.config), 0, f"{CHECKS_NODE}::{self.name}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        """Show a check failure (or an orchestrator error) as its message and sections, without a traceback."""
        from orchestrator.errors import OrchestratorError
        from orchestrator.testing.checks import MigrationCheckFailure

        if not excinfo.errisinstance((MigrationCheckFailure, OrchestratorError)) or self.config.getoption("fulltrace"):
            return super().repr_failure(excinfo, style=style)
        failure = self._repr_failure_py(excinfo, style="value")
        # The one-line summary (-ra) shows the check's own first line, not the exception's module path.
        crash = getattr(failure, "reprcrash", None)
        if crash is not None:
            crash.message = f"{type(excinfo.value).__name__}: {str(excinfo.value).splitlines()[0]}"
        return failure


def _check_function(check: Check, subject: Subject) -> Callable[..., None]:
    """Return the test function of one item: static checks take no fixture, database checks take a fresh database."""
    if check.needs_database:

        def run_on_database(orchestrator_db_url: str) -> None:
            check.run(replace(subject, url=orchestrator_db_url))

        run_on_database.__doc__ = check.doc
        return run_on_database

    def run() -> None:
        check.run(subject)

    run.__doc__ = check.doc
    return run
