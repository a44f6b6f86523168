"""Tests of the throwaway databases and the pytest plugin's fixtures, against real servers.

No mocks: PostgreSQL and MySQL tests use the servers named by
ORCHESTRATOR_TEST_POSTGRESQL_URL / ORCHESTRATOR_TEST_MYSQL_URL (or a Docker engine)
and skip, with the plugin's reason, when neither is there. Plugin behaviour that
needs a whole pytest run (options, skips, teardown after a failure) runs an inner
session through ``pytester``.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

import orchestrator
from orchestrator.pytest_plugin import registry_path, selected_dialects, selected_envs
from orchestrator.testing.databases import (
    DIALECTS,
    DatabaseUnavailable,
    DatabaseURL,
    MySqlServer,
    PostgresServer,
    Server,
    SqlServer,
    docker_available,
    env_var,
    get_server,
    is_throwaway_name,
    leftover_databases,
    new_database_name,
    normalize_server_url,
    open_server,
    safe_url,
    throwaway_database,
)

pytest_plugins = ["pytester"]

UNAVAILABLE = {
    "postgresql": "postgresql: set ORCHESTRATOR_TEST_POSTGRESQL_URL to a server URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres) or start a Docker engine for testcontainers",
    "mysql": "mysql: set ORCHESTRATOR_TEST_MYSQL_URL to a server URL "
    "(e.g. mysql+pymysql://root@127.0.0.1:3306/mysql) or start a Docker engine for testcontainers",
}
SYNC_DRIVERNAMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
SECRET = "s3cret-pw"


def database_name(url: str) -> str:
    """Return the throwaway name in a URL (the file stem for SQLite)."""
    database = make_url(url).database or ""
    return Path(database).stem if url.startswith("sqlite") else database


def assert_gone(url: str) -> None:
    """Assert the database behind a URL no longer exists."""
    if url.startswith("sqlite"):
        assert not Path(make_url(url).database or "").exists()
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with pytest.raises(OperationalError, match=r"does not exist|Unknown database"):
            engine.connect().close()
    finally:
        engine.dispose()


def available_dialects() -> list[str]:
    """Return the dialects this machine can provide, as the plugin will decide."""
    return [d for d in DIALECTS if d == "sqlite" or os.environ.get(env_var(d)) or docker_available()]


def plugin_args() -> list[str]:
    """Return the -p option that loads the plugin into an inner run, unless its entry point does."""
    # Loading it twice (entry point + -p) is a registration error in pytest.
    installed = any(ep.value == "orchestrator.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "orchestrator.pytest_plugin"]


@pytest.fixture
def server(orchestrator_dialect: str, orchestrator_server: Callable[[str], Server]) -> Server:
    """The plugin's Server for the dialect, skipping like orchestrator_db_url when unavailable."""
    try:
        return orchestrator_server(orchestrator_dialect)
    except DatabaseUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def no_server_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the server env vars; skip where a Docker engine would provide servers anyway."""
    for dialect in ("postgresql", "mysql"):
        monkeypatch.delenv(env_var(dialect), raising=False)
    if docker_available():
        pytest.skip("a Docker engine answers here, so no dialect is unavailable")


@pytest.fixture
def source_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the package importable in subprocesses, installed or not."""
    repo_root = str(Path(orchestrator.__file__).parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])))


# --- the fixtures, used directly -------------------------------------------------


def test_db_url_is_a_fresh_usable_database(orchestrator_dialect: str, orchestrator_db_url: str) -> None:
    url = make_url(orchestrator_db_url)
    assert url.drivername == SYNC_DRIVERNAMES[orchestrator_dialect]
    assert is_throwaway_name(database_name(orchestrator_db_url))
    engine = create_engine(orchestrator_db_url)
    try:
        with engine.begin() as conn:
            assert inspect(conn).get_table_names() == []
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name VARCHAR(20))"))
            conn.execute(text("INSERT INTO t (id, name) VALUES (1, 'one'), (2, 'two')"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM t ORDER BY id")).scalars().all() == ["one", "two"]
    finally:
        engine.dispose()


def test_db_url_appears_among_the_servers_databases(
    orchestrator_dialect: str, orchestrator_db_url: str, orchestrator_server: Callable[[str], Server]
) -> None:
    names = orchestrator_server(orchestrator_dialect).list_databases()
    assert database_name(orchestrator_db_url) in names


def test_dialect_ids_follow_the_dialect(request: pytest.FixtureRequest, orchestrator_dialect: str) -> None:
    assert request.node.name == f"test_dialect_ids_follow_the_dialect[{orchestrator_dialect}]"


@pytest.mark.parametrize("orchestrator_dialect", ["sqlite"])
def test_own_parametrize_mark_overrides_the_plugin(request: pytest.FixtureRequest, orchestrator_db_url: str) -> None:
    assert request.node.callspec.params == {"orchestrator_dialect": "sqlite"}
    assert orchestrator_db_url.startswith("sqlite:///")


# --- throwaway_database and the servers ------------------------------------------


def test_throwaway_database_is_dropped_when_the_body_raises(
    orchestrator_dialect: str, server: Server, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with throwaway_database(orchestrator_dialect, tmp_path) as url:
            name = database_name(url)
            assert name in leftover_databases(orchestrator_dialect, tmp_path)
            raise RuntimeError("boom")
    assert name not in leftover_databases(orchestrator_dialect, tmp_path)
    assert_gone(url)


def test_drop_ends_connections_left_open_in_a_transaction(
    orchestrator_dialect: str, server: Server, tmp_path: Path
) -> None:
    with throwaway_database(orchestrator_dialect, tmp_path, server=server) as url:
        engine = create_engine(url, poolclass=NullPool)
        conn = engine.connect()
        conn.execute(text("CREATE TABLE t (id INTEGER)"))
        conn.commit()
        # An open transaction holding locks on the database: the case a plain DROP waits on.
        conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    assert_gone(url)
    assert database_name(url) not in server.list_databases()
    with contextlib.suppress(Exception):  # the server ended it; closing only tidies up
        conn.close()
    engine.dispose()


def test_names_are_unique_and_well_formed(server: Server) -> None:
    urls = [server.create_database() for _ in range(3)]
    try:
        names = [database_name(url) for url in urls]
        assert len(set(names)) == 3
        assert all(re.fullmatch(r"orch_t_[0-9a-f]{12}", name) for name in names)
        assert set(names) <= set(server.list_databases())
    finally:
        for url in urls:
            server.drop_database(url)
    assert not set(names) & set(server.list_databases())


def test_generated_names_do_not_repeat() -> None:
    names = {new_database_name() for _ in range(10_000)}
    assert len(names) == 10_000
    assert all(is_throwaway_name(name) for name in names)


def test_drop_refuses_a_database_it_did_not_create(server: Server, tmp_path: Path) -> None:
    precious = tmp_path / "precious.db"
    precious.touch()
    # SQLite: a file outside the naming scheme; servers: their own admin database.
    if isinstance(server, SqlServer):
        not_ours = server.url.render_as_string(hide_password=False)
    else:
        not_ours = f"sqlite:///{precious}"
    with pytest.raises(ValueError, match="not a throwaway database"):
        server.drop_database(not_ours)
    assert precious.exists()


def test_sqlite_url_is_an_absolute_file_url(tmp_path: Path) -> None:
    with throwaway_database("sqlite", tmp_path / "relative" / ".." / "dir") as url:
        path = Path(make_url(url).database or "")
        assert url == f"sqlite:///{path}"
        assert path.is_absolute() and path.parent == (tmp_path / "dir").resolve()
        assert path.name.startswith("orch_t_") and path.suffix == ".db"
    assert leftover_databases("sqlite", tmp_path / "dir") == []


def test_sqlite_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="directory"):
        with throwaway_database("sqlite"):
            pass


def test_server_urls_get_a_sync_driver() -> None:
    assert normalize_server_url("postgresql://u@h/db", "postgresql").drivername == "postgresql+psycopg"
    assert normalize_server_url("postgresql+asyncpg://u@h/db", "postgresql").drivername == "postgresql+psycopg"
    assert normalize_server_url("postgresql+psycopg://u@h/db", "postgresql").drivername == "postgresql+psycopg"
    assert normalize_server_url("mysql://u@h/db", "mysql").drivername == "mysql+pymysql"
    assert normalize_server_url("mariadb+pymysql://u@h/db", "mysql").drivername == "mariadb+pymysql"
    with pytest.raises(ValueError, match="is not a postgresql URL"):
        normalize_server_url("mysql+pymysql://u@h/db", "postgresql")


def test_unknown_dialect_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dialect 'oracle'"):
        with throwaway_database("oracle", tmp_path):
            pass


# --- unavailable dialects ----------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_unavailable_reason_says_how_to_enable_the_dialect(dialect: str, no_server_configured: None) -> None:
    with pytest.raises(DatabaseUnavailable) as raised:
        open_server(dialect)
    assert str(raised.value) == UNAVAILABLE[dialect]
    with pytest.raises(DatabaseUnavailable, match=re.escape(UNAVAILABLE[dialect])):
        get_server(dialect)


def test_db_url_skips_with_the_reason_when_unavailable(pytester: pytest.Pytester, no_server_configured: None) -> None:
    pytester.makepyfile("def test_db(orchestrator_db_url):\n    assert orchestrator_db_url\n")
    result = pytester.runpytest(*plugin_args(), "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [f"SKIPPED * {UNAVAILABLE['postgresql']}", f"SKIPPED * {UNAVAILABLE['mysql']}"], consecutive=False
    )


# --- passwords stay out of messages -------------------------------------------------


def test_safe_url_hides_the_password() -> None:
    shown = safe_url(f"postgresql+psycopg://postgres:{SECRET}@db.example:5432/postgres")
    assert SECRET not in shown
    assert shown == "postgresql+psycopg://postgres:***@db.example:5432/postgres"


def test_server_messages_hide_the_password() -> None:
    pg = PostgresServer(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/postgres")
    my = MySqlServer(f"mysql+pymysql://root:{SECRET}@127.0.0.1:3306/mysql")
    assert SECRET not in repr(pg) and "***" in repr(pg)
    assert SECRET not in repr(my) and "***" in repr(my)
    with pytest.raises(ValueError) as refused:
        pg.drop_database(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/postgres")
    assert SECRET not in str(refused.value) and "***" in str(refused.value)
    with pytest.raises(ValueError) as wrong_dialect:
        normalize_server_url(f"mysql+pymysql://root:{SECRET}@127.0.0.1/mysql", "postgresql")
    assert SECRET not in str(wrong_dialect.value) and "***" in str(wrong_dialect.value)


def test_database_url_prints_without_its_password() -> None:
    url = DatabaseURL(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/orch_t_0123456789ab")
    assert repr(url) == "'postgresql+psycopg://postgres:***@127.0.0.1:5432/orch_t_0123456789ab'"
    assert make_url(url).password == SECRET  # still the full URL for use
    assert isinstance(url, str)


def test_failing_test_report_hides_the_password(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest prints a failing test's arguments; a fixture URL with a password is one of them.
    # (The password comes from the environment so the printed source cannot show it.)
    monkeypatch.setenv("INNER_SECRET", SECRET)
    pytester.makepyfile(
        """
        import os
        import pytest
        from orchestrator.testing.databases import DatabaseURL

        @pytest.fixture
        def db_url():
            password = os.environ["INNER_SECRET"]
            return DatabaseURL(f"postgresql+psycopg://postgres:{password}@127.0.0.1:5432/orch_t_0123456789ab")

        def test_fails(db_url):
            assert not db_url
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*db_url = 'postgresql+psycopg://postgres:***@127.0.0.1:5432/orch_t_0123456789ab'*"])
    assert SECRET not in result.stdout.str()


def test_connection_failure_names_the_server_without_its_password() -> None:
    # Port 1 refuses at once: the failure path, with a password in the URL.
    unreachable = PostgresServer(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/postgres")
    with pytest.raises(OperationalError) as failed:
        unreachable.create_database()
    text_shown = "\n".join([str(failed.value), *getattr(failed.value, "__notes__", [])])
    assert "postgresql server: postgresql+psycopg://postgres:***@127.0.0.1:1/postgres" in text_shown
    assert SECRET not in text_shown


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql"])
def test_created_url_keeps_the_password_for_use(server: Server) -> None:
    assert isinstance(server, PostgresServer)
    # A server configured without a password trusts its clients, so any password is accepted.
    password = server.url.password or SECRET
    with_password = PostgresServer(server.url.set(password=password))
    url = with_password.create_database()
    try:
        assert make_url(url).password == password
        assert str(password) not in repr(with_password)
        assert str(password) not in repr(url) and "***" in repr(url)
    finally:
        with_password.drop_database(url)


# --- the plugin in a whole pytest run ---------------------------------------------------


def test_failing_test_still_drops_its_database(pytester: pytest.Pytester, source_on_path: None) -> None:
    record = pytester.path / "created.txt"
    pytester.makepyfile(
        f"""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        # Held for the whole run: CPython 3.11.7 can raise a SystemError when a dropped
        # connection is garbage-collected in the middle of pytest's assertion rewriting.
        LEFT_OPEN = []

        def test_fails(orchestrator_dialect, orchestrator_db_url):
            with open({str(record)!r}, "a") as f:
                f.write(orchestrator_dialect + " " + make_url(orchestrator_db_url).database + "\\n")
            conn = create_engine(orchestrator_db_url).connect()
            LEFT_OPEN.append(conn)
            conn.execute(text("CREATE TABLE t (id INTEGER)"))
            conn.commit()
            conn.execute(text("INSERT INTO t (id) VALUES (1)"))
            assert False, "fails on purpose, leaving a connection in a transaction"
        """
    )
    # A separate process, as a real run.
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider")
    available = available_dialects()
    result.assert_outcomes(failed=len(available), skipped=len(DIALECTS) - len(available))
    created = dict(line.split(" ", 1) for line in record.read_text().splitlines())
    assert sorted(created) == sorted(available)
    for dialect, database in created.items():
        if dialect == "sqlite":
            assert not Path(database).exists()
        else:
            assert database not in leftover_databases(dialect)


def test_plugin_is_inert_for_tests_that_do_not_use_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n\ndef test_other(tmp_path):\n    pass\n")
    result = pytester.runpytest(*plugin_args(), "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_plugin_is_inert_for_tests_that_do_not_use_it.py::test_plain", "*::test_other"])
    result.stdout.no_fnmatch_line("*[[]*")


def test_loading_the_plugin_does_not_import_sqlalchemy(pytester: pytest.Pytester, source_on_path: None) -> None:
    # A fresh interpreter: this one imported everything already.
    check = "import sys, orchestrator.pytest_plugin; assert 'sqlalchemy' not in sys.modules, 'imported'"
    result = pytester.run(sys.executable, "-c", check)
    assert result.ret == 0, result.stderr.str()


def test_dialects_option_selects_the_parametrization(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_db(orchestrator_dialect):\n    pass\n")
    result = pytester.runpytest(*plugin_args(), "--collect-only", "-q", "--orchestrator-dialects=mysql, sqlite")
    result.stdout.fnmatch_lines(["*::test_db[[]mysql]", "*::test_db[[]sqlite]"])
    result.stdout.no_fnmatch_line("*postgresql*")


def test_dialects_ini_setting_selects_the_parametrization(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\norchestrator_dialects = postgresql\n")
    pytester.makepyfile("def test_db(orchestrator_db_url):\n    pass\n")
    result = pytester.runpytest(*plugin_args(), "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_db[[]postgresql]"])
    result.stdout.no_fnmatch_line("*sqlite*")


def test_default_parametrization_is_all_dialects(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_db(orchestrator_db_url):\n    pass\n")
    result = pytester.runpytest(*plugin_args(), "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_db[[]sqlite]", "*::test_db[[]postgresql]", "*::test_db[[]mysql]"])


def test_unknown_dialect_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(*plugin_args(), "--orchestrator-dialects=sqlite,oracle")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown dialect(s) oracle; choose from sqlite, postgresql, mysql*"])


def test_conftest_can_override_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def orchestrator_dialect():
            return "sqlite"

        @pytest.fixture
        def orchestrator_db_url(orchestrator_dialect, tmp_path):
            return f"sqlite:///{tmp_path}/mine.db"
        """
    )
    pytester.makepyfile("def test_db(orchestrator_db_url):\n    assert orchestrator_db_url.endswith('/mine.db')\n")
    result = pytester.runpytest(*plugin_args(), "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_db PASSED*"])


def test_stored_options_are_read_from_cli_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\norchestrator_registry = conf/registry.yaml\norchestrator_envs = dev\n")
    from_ini = pytester.parseconfigure(*plugin_args())
    assert registry_path(from_ini) == pytester.path / "conf" / "registry.yaml"
    assert selected_envs(from_ini) == ("dev",)
    assert selected_dialects(from_ini) == DIALECTS
    from_cli = pytester.parseconfigure(
        *plugin_args(), "--orchestrator-registry=/abs/reg.yaml", "--orchestrator-envs=dev, prod,,dev"
    )
    assert registry_path(from_cli) == Path("/abs/reg.yaml")
    assert selected_envs(from_cli) == ("dev", "prod")


def test_stored_options_default_to_none(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure(*plugin_args())
    assert registry_path(config) is None
    assert selected_envs(config) is None


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql", "mysql"])
def test_servers_are_cached_per_process(server: Server) -> None:
    assert get_server(server.dialect) is server
