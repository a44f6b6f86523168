"""Throwaway databases for tests: one fresh, uniquely named database per use.

This module owns provisioning only (no pytest here): finding a server for a
dialect (an ``ORCHESTRATOR_TEST_<DIALECT>_URL`` environment variable first, else
a testcontainers container when a Docker engine answers), creating a database
named ``orch_t_<12 hex>`` on it, and dropping that database again. SQLite gets a
fresh file in a caller-given directory instead of a server.

URLs handed out carry their password so they can be used; every message this
module writes shows them through :func:`safe_url`, which hides the password.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

DIALECTS = ("sqlite", "postgresql", "mysql")
SERVER_DIALECTS = ("postgresql", "mysql")

NAME_PREFIX = "orch_t_"
_NAME_PATTERN = re.compile(rf"^{NAME_PREFIX}[0-9a-f]{{12}}$")

# The driver every URL handed out uses, whatever driver the server URL named.
SYNC_DRIVERNAMES = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
# A server URL for the skip message; it doubles as the documented example.
EXAMPLE_SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/mysql",
}
CONTAINER_IMAGES = {"postgresql": "postgres:16-alpine", "mysql": "mysql:8.4"}
DOCKER_PING_TIMEOUT = 3.0
DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"
# MySQL waits up to a year for metadata locks by default; a drop should fail instead.
MYSQL_DROP_LOCK_WAIT_SECONDS = 30


class DatabaseUnavailable(Exception):
    """Raised when no server can be provided for a dialect; the message says how to enable it."""


def env_var(dialect: str) -> str:
    """Return the environment variable that names the server URL for a dialect."""
    return f"ORCHESTRATOR_TEST_{dialect.upper()}_URL"


def unavailable_reason(dialect: str) -> str:
    """Return the message that explains how to make a server dialect available."""
    return (
        f"{dialect}: set {env_var(dialect)} to a server URL "
        f"(e.g. {EXAMPLE_SERVER_URLS[dialect]}) or start a Docker engine for testcontainers"
    )


def safe_url(url: str | URL) -> str:
    """Return the URL as text with its password hidden, fit for any message."""
    return make_url(url).render_as_string(hide_password=True)


class DatabaseURL(str):
    """A database URL that prints without its password, being a plain ``str`` otherwise."""

    __slots__ = ()

    # pytest shows a failing test's arguments with repr(); the fixture's URL is one of them.
    def __repr__(self) -> str:
        return repr(safe_url(self))


def new_database_name() -> str:
    """Return a fresh throwaway database name, ``orch_t_`` and 12 hex digits."""
    return f"{NAME_PREFIX}{secrets.token_hex(6)}"


def is_throwaway_name(name: str | None) -> bool:
    """Tell whether a database name is one this module hands out (so it may be dropped)."""
    return name is not None and _NAME_PATTERN.match(name) is not None


def _check_dialect(dialect: str, allowed: tuple[str, ...] = DIALECTS) -> None:
    """Raise ValueError for a dialect name this module does not provide."""
    if dialect not in allowed:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(allowed)}")


def _refuse_unless_throwaway(name: str | None, url: str | URL) -> str:
    """Return the name if it is a throwaway database name, else raise ValueError."""
    # Guard against ever dropping a database this module did not create.
    if name is None or not is_throwaway_name(name):
        raise ValueError(f"refusing to drop {safe_url(url)}: not a throwaway database")
    return name


def normalize_server_url(url: str | URL, dialect: str) -> URL:
    """Return a server URL with a sync driver, checking it belongs to the dialect."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    # MariaDB URLs are served by the MySQL code path.
    if (backend if backend != "mariadb" else "mysql") != dialect:
        raise ValueError(f"{dialect}: {safe_url(parsed)} is not a {dialect} URL")
    # A bare dialect means SQLAlchemy's default driver (psycopg2, mysqlclient), which
    # may be missing; an async driver cannot run the sync DDL here.
    if "+" not in parsed.drivername or parsed.get_dialect().is_async:
        parsed = parsed.set(drivername=SYNC_DRIVERNAMES[dialect])
    return parsed


class Server(ABC):
    """A place that creates and drops throwaway databases of one dialect."""

    dialect: str

    @abstractmethod
    def create_database(self) -> str:
        """Create a fresh empty database and return its sync-driver URL (a DatabaseURL)."""

    @abstractmethod
    def drop_database(self, url: str) -> None:
        """Drop a database this server created; a missing one is not an error."""

    @abstractmethod
    def list_databases(self) -> list[str]:
        """Return the names of the throwaway databases currently present."""

    def close(self) -> None:
        """Release what the server holds (connections, a container)."""


class SqliteServer(Server):
    """Throwaway SQLite databases as files in one directory."""

    dialect = "sqlite"
    # Files SQLite may leave next to a database, by journal mode.
    _SIDECARS = ("-journal", "-wal", "-shm")

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory).resolve()

    def __repr__(self) -> str:
        return f"SqliteServer({str(self.directory)!r})"

    def create_database(self) -> str:
        """Create an empty database file and return its ``sqlite:///`` URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{new_database_name()}.db"
        # An empty file is a valid empty SQLite database; exclusive create keeps names unique.
        path.touch(exist_ok=False)
        return DatabaseURL(URL.create("sqlite", database=str(path)).render_as_string())

    def drop_database(self, url: str) -> None:
        """Delete the database file and any journal files beside it."""
        path = Path(make_url(url).database or "")
        _refuse_unless_throwaway(path.stem if path.suffix == ".db" else None, url)
        for suffix in ("", *self._SIDECARS):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def list_databases(self) -> list[str]:
        """Return the names (file stems) of throwaway database files in the directory."""
        return sorted(p.stem for p in self.directory.glob(f"{NAME_PREFIX}*.db") if is_throwaway_name(p.stem))


class SqlServer(Server):
    """A database server reached through an admin URL; subclasses hold the dialect's SQL."""

    _list_sql: str  # a query whose first column is every database name

    def __init__(self, url: str | URL, *, container: Any = None):
        self.url = normalize_server_url(url, self.dialect)
        self.container = container
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_url(self.url)!r})"

    @property
    def engine(self) -> Engine:
        """Return the admin engine, created on first use."""
        if self._engine is None:
            # AUTOCOMMIT: CREATE/DROP DATABASE cannot run in a transaction (PostgreSQL).
            # NullPool: no admin connection stays open between uses.
            self._engine = create_engine(
                self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args=self._connect_args()
            )
        return self._engine

    def _connect_args(self) -> dict[str, Any]:
        """Return extra DBAPI connect arguments for the admin engine."""
        return {}

    @contextlib.contextmanager
    def _admin(self) -> Iterator[Connection]:
        """Yield an admin connection; a failure carries the (password-free) server URL as a note."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            exc.add_note(f"{self.dialect} server: {safe_url(self.url)}")
            raise

    def _quote(self, name: str) -> str:
        """Return a database name quoted as an identifier for this dialect."""
        return self.engine.dialect.identifier_preparer.quote_identifier(name)

    def create_database(self) -> str:
        """Create a fresh database on the server and return its URL."""
        name = new_database_name()
        with self._admin() as conn:
            conn.exec_driver_sql(self._create_sql(self._quote(name)))
        return DatabaseURL(self.url.set(database=name).render_as_string(hide_password=False))

    def drop_database(self, url: str) -> None:
        """Drop the database, disconnecting anything still connected to it."""
        name = _refuse_unless_throwaway(make_url(url).database, url)
        with self._admin() as conn:
            self._drop(conn, name)

    def list_databases(self) -> list[str]:
        """Return the names of throwaway databases on the server."""
        with self._admin() as conn:
            names = conn.execute(text(self._list_sql)).scalars()
            return sorted(n for n in names if is_throwaway_name(n))

    def close(self) -> None:
        """Dispose of the admin engine and stop the container, if this server started one."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.container is not None:
            container, self.container = self.container, None
            container.stop()

    @abstractmethod
    def _create_sql(self, quoted_name: str) -> str:
        """Return the statement that creates the database."""

    @abstractmethod
    def _drop(self, conn: Connection, name: str) -> None:
        """Drop the database on an autocommit admin connection."""


class PostgresServer(SqlServer):
    """A PostgreSQL 13+ server."""

    dialect = "postgresql"
    _list_sql = "SELECT datname FROM pg_database"

    def _connect_args(self) -> dict[str, Any]:
        """Bound the connect time so an unreachable host fails instead of hanging."""
        return {} if "connect_timeout" in self.url.query else {"connect_timeout": 10}

    def _create_sql(self, quoted_name: str) -> str:
        """Return CREATE DATABASE for the name."""
        return f"CREATE DATABASE {quoted_name}"

    def _drop(self, conn: Connection, name: str) -> None:
        """Drop with FORCE (PostgreSQL 13+) so connections a test left open don't block it."""
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quote(name)} WITH (FORCE)")


class MySqlServer(SqlServer):
    """A MySQL or MariaDB server."""

    dialect = "mysql"
    _list_sql = "SHOW DATABASES"

    def _create_sql(self, quoted_name: str) -> str:
        """Return CREATE DATABASE for the name, in utf8mb4."""
        return f"CREATE DATABASE {quoted_name} CHARACTER SET utf8mb4"

    def _drop(self, conn: Connection, name: str) -> None:
        """Kill connections still using the database, then drop it (MySQL has no FORCE)."""
        # A connection a test left inside a transaction holds metadata locks that would
        # make DROP DATABASE wait; ending it is what PostgreSQL's FORCE does.
        conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {MYSQL_DROP_LOCK_WAIT_SECONDS}")
        ids = conn.execute(
            text("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :name AND ID <> CONNECTION_ID()"),
            {"name": name},
        ).scalars()
        for connection_id in list(ids):
            # The connection may have ended meanwhile (unknown thread id); that's the goal anyway.
            with contextlib.suppress(DBAPIError):
                conn.exec_driver_sql(f"KILL {int(connection_id)}")
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quote(name)}")


_SERVER_CLASSES: dict[str, type[SqlServer]] = {"postgresql": PostgresServer, "mysql": MySqlServer}


@functools.cache
def docker_available() -> bool:
    """Tell, quickly and quietly, whether a Docker engine answers (checked once per process)."""
    try:
        # testcontainers' own client and host lookup, so DOCKER_HOST, docker contexts and
        # ~/.testcontainers.properties are honoured exactly as when starting a container.
        from docker.constants import DEFAULT_DOCKER_API_VERSION
        from testcontainers.core.docker_client import DockerClient, get_docker_host

        host = get_docker_host() or DEFAULT_DOCKER_SOCKET
        # docker-py leaks a socket (ResourceWarning) when a unix socket file is missing.
        if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
            return False
        # A fixed version keeps the constructor off the network; the check is the
        # unversioned /_ping, answered by every engine whatever API versions it supports.
        client = DockerClient(version=DEFAULT_DOCKER_API_VERSION, timeout=DOCKER_PING_TIMEOUT).client
        try:
            return client.api.get(f"{client.api.base_url}/_ping", timeout=DOCKER_PING_TIMEOUT).ok
        finally:
            client.close()
    except Exception:  # no testcontainers, no engine, refused, timed out: all mean "no"
        return False


def _make_container(dialect: str) -> Any:
    """Return an unstarted testcontainers container for a server dialect."""
    if dialect == "postgresql":
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14 has no community package
            from testcontainers.postgres import PostgresContainer
        return PostgresContainer(CONTAINER_IMAGES[dialect], driver="psycopg")
    try:
        from testcontainers.community.mysql import MySqlContainer
    except ImportError:
        from testcontainers.mysql import MySqlContainer
    # root, because the default user may only use its own database, not create others.
    return MySqlContainer(CONTAINER_IMAGES[dialect], dialect="pymysql", username="root", password="test")


def start_container_server(dialect: str) -> SqlServer:
    """Start a container for a server dialect and return a Server that stops it on close."""
    container = _make_container(dialect)
    try:
        container.start()
        url = make_url(container.get_connection_url()).set(drivername=SYNC_DRIVERNAMES[dialect])
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    return _SERVER_CLASSES[dialect](url, container=container)


def open_server(dialect: str) -> SqlServer:
    """Return a new Server for a server dialect: env var URL, else container, else raise."""
    _check_dialect(dialect, SERVER_DIALECTS)
    if url := os.environ.get(env_var(dialect)):
        return _SERVER_CLASSES[dialect](url)
    if docker_available():
        return start_container_server(dialect)
    raise DatabaseUnavailable(unavailable_reason(dialect))


# Process-wide servers, keyed by dialect and the env var's value at the time, so a
# container starts once per process while a changed env var is still honoured.
_servers: dict[tuple[str, str | None], SqlServer] = {}
# Failures are remembered too: a container that failed to start is not retried per test.
_failures: dict[tuple[str, str | None], BaseException] = {}


def get_server(dialect: str) -> SqlServer:
    """Return the process-wide Server for a server dialect, opening it on first use."""
    _check_dialect(dialect, SERVER_DIALECTS)
    key = (dialect, os.environ.get(env_var(dialect)) or None)
    if key in _failures:
        raise _failures[key]
    if key not in _servers:
        try:
            _servers[key] = open_server(dialect)
        except Exception as exc:
            _failures[key] = exc
            raise
    return _servers[key]


@atexit.register
def close_servers() -> None:
    """Close every process-wide server, stopping the containers started for them."""
    while _servers:
        _, server = _servers.popitem()
        # At exit, one server failing to stop must not keep the others running.
        with contextlib.suppress(Exception):
            server.close()
    _failures.clear()


def server_for(dialect: str, tmp_dir: str | os.PathLike[str] | None = None) -> Server:
    """Return the Server for a dialect: SQLite files in tmp_dir, else the process-wide server."""
    _check_dialect(dialect)
    if dialect == "sqlite":
        if tmp_dir is None:
            raise ValueError("sqlite: a directory for the database files is required")
        return SqliteServer(tmp_dir)
    return get_server(dialect)


@contextlib.contextmanager
def throwaway_database(
    dialect: str, tmp_dir: str | os.PathLike[str] | None = None, *, server: Server | None = None
) -> Iterator[str]:
    """Yield the URL of a fresh database and drop it afterwards, even when the body raises."""
    if server is None:
        server = server_for(dialect, tmp_dir)
    elif server.dialect != dialect:
        raise ValueError(f"server {server!r} is not a {dialect} server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


def leftover_databases(dialect: str, tmp_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Return the throwaway databases present for a dialect (SQLite: files in tmp_dir)."""
    return server_for(dialect, tmp_dir).list_databases()
