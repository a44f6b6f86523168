"""Open connections to an environment's database, sync or async, one way for all callers.

Async URLs (``postgresql+asyncpg``, ``sqlite+aiosqlite``) are driven through
``AsyncConnection.run_sync`` so the rest of the orchestrator (and Alembic) sees
a plain synchronous ``Connection``. When the caller already runs inside an
event loop (an application's ``lifespan`` hook), the coroutine runs on a
worker thread with its own loop instead of failing in ``asyncio.run``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from orchestrator.errors import ConfigError, DatabaseError
from orchestrator.redact import redact
from orchestrator.registry import mask_url

T = TypeVar("T")

_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql", "asyncpg": "async", "aiosqlite": "async"}


def is_async(url: URL) -> bool:
    """Return True when the URL names an asyncio driver."""
    return bool(getattr(url.get_dialect(), "is_async", False))


def dialect_name(url: URL) -> str:
    """Return the dialect family: sqlite, postgresql, mysql (MariaDB included) or other."""
    name = url.get_backend_name()
    return "mysql" if name == "mariadb" else name


def make_engine(url: URL, env: str) -> Any:
    """Create an engine (``AsyncEngine`` for async drivers) with no pooling."""
    try:
        if is_async(url):
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url, poolclass=NullPool)
            sync_engine = engine.sync_engine
        else:
            engine = sync_engine = create_engine(url, poolclass=NullPool)
    except NoSuchModuleError:
        raise ConfigError(
            f"environment '{env}': unknown database driver '{url.drivername}'; "
            "use e.g. sqlite, postgresql+psycopg or mysql+pymysql"
        ) from None
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(exc.name or "", None)
        hint = f"pip install 'orchestrator[{extra}]'" if extra else f"pip install {exc.name}"
        raise ConfigError(f"environment '{env}': driver module '{exc.name}' for '{url.drivername}' is not installed; {hint}") from None
    except ImportError:
        # SQLAlchemy's asyncio layer needs greenlet
        raise ConfigError(f"environment '{env}': '{url.drivername}' needs greenlet: pip install 'orchestrator[async]'") from None
    except ArgumentError as exc:
        raise ConfigError(f"environment '{env}': invalid database URL options: {redact(str(exc))}") from None
    if url.get_backend_name() == "sqlite":
        _sqlite_transactional_ddl(sync_engine)
        _ensure_sqlite_folder(url)
    return engine


def _sqlite_transactional_ddl(engine: Engine) -> None:
    """Make pysqlite/aiosqlite wrap DDL in the transaction SQLAlchemy begins."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # stop the driver from committing implicitly before DDL
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _ensure_sqlite_folder(url: URL) -> None:
    """Create the folder of a SQLite file so a fresh clone needs no set-up."""
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def run_with_connection(url: URL, env: str, fn: Callable[[Connection], T]) -> T:
    """Open a connection to ``url``, call ``fn`` with it, and close it; async drivers included."""
    engine = make_engine(url, env)
    if not is_async(url):
        try:
            with _connect_errors(url, env):
                conn = engine.connect()
            with conn:
                return fn(conn)
        finally:
            engine.dispose()

    async def main() -> T:
        try:
            aconn = engine.connect()
            with _connect_errors(url, env):
                await aconn.start()
            try:
                return await aconn.run_sync(fn)
            finally:
                await aconn.close()
        finally:
            await engine.dispose()

    return run_coroutine(main)


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, on a worker thread if this thread already has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class _connect_errors:
    """Translate a failure to connect into one clear DatabaseError line."""

    def __init__(self, url: URL, env: str):
        self.url, self.env = url, env

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, (DBAPIError, OSError)):
            raise DatabaseError(
                f"environment '{self.env}': cannot connect to {mask_url(self.url)}: "
                f"{first_line(exc)}; check that the server is up and the URL is right",
                env=self.env,
            ) from None
        return False


def first_line(exc: BaseException) -> str:
    """Return the driver's message for ``exc`` as one line, secrets masked."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or exc.__class__.__name__
    return redact(text)[:500]
