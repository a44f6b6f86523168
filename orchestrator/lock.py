"""One runner per target database at a time.

PostgreSQL: a session advisory lock; MySQL/MariaDB: ``GET_LOCK``; SQLite: an
OS lock (``flock``) on a file beside the database. Each dies with its
connection or process, so a crashed runner never leaves a stale lock. Waiting
is bounded; the error names the run that holds the lock.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from orchestrator.errors import LockTimeout
from orchestrator.recorder import running_run

DEFAULT_LOCK_TIMEOUT = 300.0


class Lock(Protocol):
    """A held or not-yet-held lock on one database."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...

    def abandon(self) -> None:
        """Give the lock up at once when the runner is interrupted mid-statement."""


def _key(name: str) -> int:
    """Return a stable signed 64-bit key for an advisory lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass
class PostgresLock:
    """A session-level advisory lock, held for the connection's life or until released."""

    conn: Connection
    name: str

    def try_acquire(self) -> bool:
        got = self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(self.name)}).scalar()
        self.conn.commit()
        return bool(got)

    def release(self) -> None:
        self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(self.name)})
        self.conn.commit()

    def abandon(self) -> None:
        # psycopg cancels the running statement on KeyboardInterrupt; the session then closes
        return None


@dataclass
class MySQLLock:
    """A named ``GET_LOCK`` lock, held for the connection's life or until released."""

    conn: Connection
    name: str
    _thread_id: int | None = None

    def try_acquire(self) -> bool:
        got = self.conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self._name()}).scalar()
        if got == 1:
            self._thread_id = self.conn.execute(text("SELECT CONNECTION_ID()")).scalar()
        self.conn.commit()
        return got == 1

    def abandon(self) -> None:
        """Kill the holding session: MySQL would finish its statement (and keep the lock) otherwise."""
        if self._thread_id is None:
            return
        try:
            with self.conn.engine.connect() as other:
                other.execute(text(f"KILL {int(self._thread_id)}"))
        except Exception:
            pass  # already gone

    def release(self) -> None:
        self.conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self._name()})
        self.conn.commit()

    def _name(self) -> str:
        # GET_LOCK names are limited to 64 characters
        return "orchestrator." + hashlib.sha256(self.name.encode()).hexdigest()[:40]


@dataclass
class FileLock:
    """An exclusive ``flock`` on ``<database>.lock``, released when the process dies."""

    path: Path
    _fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def abandon(self) -> None:
        return None  # SQLite runs in this process: the interrupt already stopped it


class NoLock:
    """For databases only this process can see (in-memory SQLite)."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def abandon(self) -> None:
        return None


def lock_for(conn: Connection, url: URL, scope: str) -> Lock:
    """Return the lock that guards ``url``'s migrations; ``scope`` names the version table."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresLock(conn, f"orchestrator:{scope}")
    if backend in ("mysql", "mariadb"):
        return MySQLLock(conn, f"{url.database}:{scope}")
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            return NoLock()
        return FileLock(Path(database + ".lock"))
    return NoLock()


def acquire(lock: Lock, *, conn: Connection, env: str, schema: str | None, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``lock``; raise LockTimeout naming the holder."""
    deadline = time.monotonic() + max(timeout, 0.0)
    pause = 0.05
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            raise LockTimeout(f"environment '{env}': {describe_holder(conn, env, schema)} holds the migration lock; "
                              f"waited {timeout:g}s; retry later or raise --lock-timeout", env=env)
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.01)))
        pause = min(pause * 1.5, 0.5)


def describe_holder(conn: Connection, env: str, schema: str | None) -> str:
    """Return a phrase naming the run that holds the lock, as far as the history tells."""
    holder: dict[str, Any] | None = running_run(conn, env, schema)
    if holder is None:
        return "another runner (its run is not recorded yet)"
    started = holder["started_at"].strftime("%Y-%m-%d %H:%M:%S")
    return f"run {holder['run_id'][:12]} ({holder['command']} by {holder['operator']}, started {started} UTC)"
