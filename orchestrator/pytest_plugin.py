"""The orchestrator's pytest plugin: its options and its throwaway-database fixtures.

Registered through the ``pytest11`` entry point, so it loads wherever the package
is installed; it therefore stays inert until a test asks for it: no autouse
fixtures, no hooks that touch collection except parametrizing tests that request
``orchestrator_dialect`` or ``orchestrator_db_url``. Provisioning itself lives in
:mod:`orchestrator.testing.databases`, imported only when a fixture is used so an
unrelated test run does not pay for importing SQLAlchemy.

Every fixture is a plain fixture: a conftest may override any of them by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from orchestrator.testing.databases import Server

DIALECT_FIXTURE = "orchestrator_dialect"


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


def pytest_configure(config: pytest.Config) -> None:
    """Reject an unknown dialect at start-up, but only when the user set the option."""
    if _setting(config, "orchestrator_dialects") is not None:
        selected_dialects(config)


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
