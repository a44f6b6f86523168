"""The run history in the target database: the only module that writes it.

Two tables, ``orchestrator_runs`` and ``orchestrator_steps``, live beside the
Alembic version table (same schema), with ``orchestrator_identity``: one row
naming the registry environment (and project) that owns the database. Each applied step is recorded from
Alembic's ``on_version_apply`` hook, inside the step's own transaction, so the
history and the schema never disagree on dialects with transactional DDL. On
psycopg 3 with one transaction per migration the row and the step's COMMIT go
to the server as one message, so recording costs no extra round trip.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import alembic
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator import __version__
from orchestrator.errors import MigrationFailed
from orchestrator.loader import sha256_of, stat_key
from orchestrator.redact import redact

RUNS_TABLE = "orchestrator_runs"
STEPS_TABLE = "orchestrator_steps"
IDENTITY_TABLE = "orchestrator_identity"
HISTORY_TABLES = (RUNS_TABLE, STEPS_TABLE, IDENTITY_TABLE)

RUNNING, SUCCEEDED, FAILED, BLOCKED, INTERRUPTED = "running", "succeeded", "failed", "blocked", "interrupted"

class _Timestamp(sa.types.TypeDecorator):
    """A UTC timestamp with microseconds on every dialect (MySQL's DATETIME keeps none by default)."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.engine.Dialect) -> sa.types.TypeEngine:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME  # imported only where needed

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())
_tables: dict[str | None, tuple[sa.Table, sa.Table]] = {}
_identity_tables: dict[str | None, sa.Table] = {}


def history_tables(schema: str | None = None) -> tuple[sa.Table, sa.Table]:
    """Return the runs and steps tables for a schema (None: the default schema)."""
    if schema not in _tables:
        md = sa.MetaData(schema=schema)
        runs = sa.Table(
            RUNS_TABLE, md,
            sa.Column("run_id", sa.String(32), primary_key=True),
            sa.Column("env", sa.String(64), nullable=False),
            sa.Column("command", sa.String(32), nullable=False),
            sa.Column("target", sa.String(255)),
            sa.Column("heads_before", sa.String(1000)),
            sa.Column("heads_after", sa.String(1000)),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("started_at", _Timestamp, nullable=False),
            sa.Column("finished_at", _Timestamp),
            sa.Column("operator", sa.String(255), nullable=False),
            sa.Column("tool_version", sa.String(32), nullable=False),
            sa.Column("alembic_version", sa.String(32), nullable=False),
            sa.Column("plan_fingerprint", sa.String(64)),
            sa.Column("forced_reason", sa.Text),
            sa.Column("error", sa.Text),
            sa.Index("ix_orchestrator_runs_env_started", "env", "started_at"),
            sa.Index("ix_orchestrator_runs_status", "status"),
        )
        steps = sa.Table(
            STEPS_TABLE, md,
            sa.Column("run_id", sa.String(32), sa.ForeignKey(runs.c.run_id, name="fk_orchestrator_steps_run"), primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("revision", sa.String(255), nullable=False),
            sa.Column("down_revisions", sa.String(1000)),
            sa.Column("direction", sa.String(8), nullable=False),
            sa.Column("script_sha256", sa.String(64)),
            sa.Column("reviewer", sa.String(255)),
            sa.Column("started_at", _Timestamp, nullable=False),
            sa.Column("duration_ms", sa.Float),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text),
            # the report finds each revision's latest applying step by walking this index backwards
            sa.Index("ix_orchestrator_steps_revision", "revision", "started_at"),
        )
        _tables[schema] = (runs, steps)
        _identity_tables[schema] = sa.Table(
            IDENTITY_TABLE, md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1: one row
            sa.Column("env", sa.String(64), nullable=False),
            sa.Column("protected", sa.Boolean, nullable=False),
            sa.Column("project", sa.String(255), nullable=False),
            sa.Column("heads", sa.String(1000)),  # the heads when the identity was recorded
            sa.Column("recorded_at", _Timestamp, nullable=False),
            sa.Column("recorded_by", sa.String(255), nullable=False),
            sa.Column("tool_version", sa.String(32), nullable=False),
        )
    return _tables[schema]


def identity_table(schema: str | None = None) -> sa.Table:
    """Return the identity table for a schema (None: the default schema)."""
    history_tables(schema)
    return _identity_tables[schema]


def operator_name() -> str:
    """Return who runs this: ``$ORCHESTRATOR_OPERATOR``, else user@host."""
    explicit = os.environ.get("ORCHESTRATOR_OPERATOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo (what every dialect stores alike)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def join_ids(ids: Iterable[str]) -> str:
    """Return revision ids as one space-separated string, sorted."""
    return " ".join(sorted(ids))


class ScriptChanged(MigrationFailed):
    """Raised when a script's content differs from what was planned and judged for this run."""


@dataclass
class StepRecord:
    """One step as recorded (or about to be)."""

    seq: int
    revision: str
    down_revisions: tuple[str, ...]
    direction: str
    script_sha256: str | None
    started_at: datetime
    duration_ms: float
    status: str
    error: str | None = None
    reviewer: str | None = None


@dataclass
class Recorder:
    """Write one environment's history on one connection."""

    conn: Connection
    env: str
    schema: str | None = None
    run_id: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    on_step: Callable[[StepRecord], None] | None = None
    reviewers: dict[str, str] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)  # each step's RevisionFile as the gate judged it
    migrations_started: bool = False
    statements: list[str] = field(default_factory=list)  # of the current step (filled where DDL is not transactional)
    _step_clock: float = 0.0
    _step_started: datetime | None = None
    _batched: Connection | None = None  # the connection whose step rows travel with each step's COMMIT
    _batched_sql: str = ""  # the step INSERT followed by COMMIT, for psycopg to bind client-side
    _cursor: Any = None  # the psycopg ClientCursor that sends it, kept for the run

    @property
    def runs(self) -> sa.Table:
        return history_tables(self.schema)[0]

    @property
    def steps_table(self) -> sa.Table:
        return history_tables(self.schema)[1]

    def ensure_tables(self) -> None:
        """Create the history tables (and the identity table) if they are missing."""
        runs, steps = history_tables(self.schema)
        runs.metadata.create_all(self.conn, tables=[runs, steps, identity_table(self.schema)], checkfirst=True)

    def claim(self, *, project: str, protected: bool, heads: Iterable[str]) -> dict[str, Any]:
        """Return the database's identity row, first recording this environment as its owner when there is none.

        Called under the lock, right after :meth:`ensure_tables`. An owner's run that
        finds its registry entry protected while the row is not raises the row's
        protection; a run never lowers it.
        """
        table = identity_table(self.schema)
        row = read_identity(self.conn, self.schema, known_to_exist=True)
        if row is None:
            values = {"id": 1, "env": self.env, "protected": protected, "project": project, "heads": join_ids(heads),
                      "recorded_at": utcnow(), "recorded_by": redact(operator_name()), "tool_version": __version__}
            try:
                self.conn.execute(table.insert().values(**values))
                self.conn.commit()
            except sa.exc.IntegrityError:  # a runner on another version table of this schema claimed it first
                self.conn.rollback()
                return read_identity(self.conn, self.schema) or values
            return values
        if protected and not row["protected"] and (row["env"], row["project"]) == (self.env, project):
            self.conn.execute(table.update().where(table.c.id == row["id"]).values(protected=True))
            self.conn.commit()
            row["protected"] = True
        return row

    def mark_interrupted(self, heads: Iterable[str]) -> int:
        """Mark runs left 'running' by a dead runner as interrupted at ``heads``; call only while holding the lock."""
        result = self.conn.execute(
            self.runs.update()
            .where(self.runs.c.env == self.env, self.runs.c.status == RUNNING)
            .values(status=INTERRUPTED, finished_at=utcnow(), heads_after=join_ids(heads),
                    error="runner stopped before finishing (process killed or connection lost)")
        )
        return result.rowcount or 0

    def interrupt_runs(self, run_ids: Iterable[str], heads: Iterable[str], error: str) -> int:
        """Mark the given runs, left 'running' by dead runners, interrupted at ``heads`` (``repair``, under the lock)."""
        ids = list(run_ids)
        if not ids:
            return 0
        result = self.conn.execute(
            self.runs.update()
            .where(self.runs.c.run_id.in_(ids), self.runs.c.status == RUNNING)
            .values(status=INTERRUPTED, finished_at=utcnow(), heads_after=join_ids(heads), error=redact(error))
        )
        return result.rowcount or 0

    def start_run(self, *, command: str, target: str | None, heads_before: Iterable[str], fingerprint: str | None,
                  forced_reason: str | None = None, status: str = RUNNING, error: str | None = None) -> str:
        """Insert a run row and return its id (a run refused outright is finished at once, heads unchanged)."""
        self.run_id = uuid.uuid4().hex
        now = utcnow()
        heads_before = join_ids(heads_before)
        self.conn.execute(self.runs.insert().values(
            run_id=self.run_id, env=self.env, command=command, target=target,
            heads_before=heads_before, heads_after=None if status == RUNNING else heads_before,
            status=status, started_at=now,
            finished_at=None if status == RUNNING else now,
            operator=redact(operator_name()), tool_version=__version__, alembic_version=alembic.__version__,
            plan_fingerprint=fingerprint, forced_reason=redact(forced_reason) if forced_reason else None,
            error=redact(error) if error else None,
        ))
        self._step_clock = time.perf_counter()
        self._step_started = now
        return self.run_id

    def begin_steps(self, conn: Connection | None = None, *, commits_each_step: bool = False) -> None:
        """Start the clock of the first step (env.py calls this right before Alembic runs steps).

        ``commits_each_step``: Alembic commits every step on ``conn`` (one transaction per
        migration, not inside a caller's transaction); on psycopg 3 each step row then
        travels with its step's COMMIT (see :meth:`_insert_and_commit`).
        """
        self.migrations_started = True
        self.statements.clear()
        sql = _insert_sql(conn, self.steps_table) if conn is not None and commits_each_step else None
        if sql is not None:
            self._batched, self._batched_sql = conn, sql + "; COMMIT"  # nothing after a failing INSERT runs
        self._step_clock = time.perf_counter()
        self._step_started = utcnow()

    def on_version_apply(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        """Alembic hook: record the step just applied, in the step's transaction."""
        info = step
        direction = "stamp" if info.is_stamp else ("up" if info.is_upgrade else "down")
        revision = info.up_revision_id if (info.is_upgrade or info.is_stamp) else (info.up_revision_id or "")
        if info.is_stamp:
            revision = join_ids(info.destination_revision_ids) or "base"
        script = info.up_revision if not info.is_stamp else None
        down = tuple(info.down_revision_ids)
        planned = self.expected.get(revision)
        sha256 = _script_sha256(script, planned)
        if planned and sha256 and sha256 != planned.sha256:
            # raising here rolls the step back (where DDL is transactional) before it is recorded
            raise ScriptChanged(
                f"revision {revision} changed on disk while the run was in progress (sha256 {planned.sha256[:12]} planned "
                f"and judged, {sha256[:12]} now); rerun so the new content is planned and judged", revision=revision)
        record, row = self._step_row(revision=revision, down_revisions=down, direction=direction, sha256=sha256,
                                     status=SUCCEEDED, reviewer=self.reviewers.get(revision))
        if self._batched is not None and ctx.connection is self._batched:
            self._insert_and_commit(ctx.connection, row)
        else:
            ctx.connection.execute(self.steps_table.insert(), row)
        self._restart_clock()
        self._accept(record)

    def record_step(self, *, revision: str, down_revisions: tuple[str, ...], direction: str, sha256: str | None,
                    status: str, error: str | None = None, conn: Connection | None = None,
                    reviewer: str | None = None) -> StepRecord:
        """Insert one step row and restart the step clock."""
        record, row = self._step_row(revision=revision, down_revisions=down_revisions, direction=direction,
                                     sha256=sha256, status=status, error=error, reviewer=reviewer)
        (conn or self.conn).execute(self.steps_table.insert(), row)
        self._restart_clock()
        self._accept(record)
        return record

    def _step_row(self, *, revision: str, down_revisions: tuple[str, ...], direction: str, sha256: str | None,
                  status: str, error: str | None = None, reviewer: str | None = None) -> tuple[StepRecord, dict[str, Any]]:
        """Return the next step's record and its row, timed from the step clock."""
        record = StepRecord(
            seq=len(self.steps) + 1, revision=revision, down_revisions=down_revisions,
            direction=direction, script_sha256=sha256, started_at=self._step_started or utcnow(),
            duration_ms=round((time.perf_counter() - self._step_clock) * 1000, 3), status=status,
            error=redact(error) if error else None, reviewer=reviewer,
        )
        return record, {
            "run_id": self.run_id, "seq": record.seq, "revision": record.revision,
            "down_revisions": join_ids(record.down_revisions), "direction": record.direction,
            "script_sha256": record.script_sha256, "reviewer": record.reviewer, "started_at": record.started_at,
            "duration_ms": record.duration_ms, "status": record.status, "error": record.error,
        }

    def _restart_clock(self) -> None:
        """Start timing the next step."""
        self._step_clock = time.perf_counter()
        self._step_started = utcnow()

    def _accept(self, record: StepRecord) -> None:
        """Count a step whose row is written and report it."""
        self.steps.append(record)
        self.statements.clear()  # what the next step runs is the next step's
        if self.on_step is not None:
            self.on_step(record)

    def _insert_and_commit(self, conn: Connection, row: dict[str, Any]) -> None:
        """Send the step's row and its transaction's COMMIT as one message (no extra round trip).

        Called last in the step, where Alembic would commit next: the row is
        committed with the step or not at all. Alembic's own commit that follows
        finds the transaction closed, and psycopg sends nothing for it. If the
        row or the COMMIT fails, the transaction is rolled back and the error
        raised as the step's failure, as an INSERT on its own would.
        """
        import psycopg

        raw = conn.connection.dbapi_connection
        cursor = self._cursor
        if cursor is None or cursor.closed or cursor.connection is not raw:
            cursor = self._cursor = psycopg.ClientCursor(raw)  # binds the values client-side, simple protocol
        try:
            cursor.execute(self._batched_sql, row)
        except Exception as exc:
            with contextlib.suppress(Exception):
                raw.rollback()
            raise sa.exc.DBAPIError.instance(self._batched_sql, row, exc, psycopg.Error, dialect=conn.dialect) from exc

    def finish_run(self, *, status: str, heads_after: Iterable[str] | None, error: str | None = None) -> None:
        """Close the current run row with its final status."""
        self.conn.execute(
            self.runs.update().where(self.runs.c.run_id == self.run_id).values(
                status=status, finished_at=utcnow(),
                heads_after=join_ids(heads_after) if heads_after is not None else None,
                error=redact(error) if error else None,
            )
        )


def running_run(conn: Connection, env: str, schema: str | None = None) -> dict[str, Any] | None:
    """Return the newest run still marked running for ``env`` (the lock holder), if readable."""
    runs = history_tables(schema)[0]
    try:
        row = conn.execute(
            sa.select(runs).where(runs.c.env == env, runs.c.status == RUNNING).order_by(runs.c.started_at.desc()).limit(1)
        ).mappings().first()
    except sa.exc.DBAPIError:
        conn.rollback()
        return None
    return dict(row) if row else None


def read_identity(conn: Connection, schema: str | None = None, *, known_to_exist: bool = False) -> dict[str, Any] | None:
    """Return the database's identity row (owner environment, protection, project), or None."""
    if not known_to_exist and not sa.inspect(conn).has_table(IDENTITY_TABLE, schema=schema):
        return None
    table = identity_table(schema)
    row = conn.execute(sa.select(table).order_by(table.c.id).limit(1)).mappings().first()
    return dict(row) if row else None


def running_runs(conn: Connection, schema: str | None = None) -> list[dict[str, Any]]:
    """Return every run recorded as running in this database, whatever environment name it carries, oldest first."""
    runs = history_tables(schema)[0]
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return []
    query = sa.select(runs).where(runs.c.status == RUNNING).order_by(runs.c.started_at, runs.c.run_id)
    return [dict(r) for r in conn.execute(query).mappings()]


def read_runs(conn: Connection, env: str, schema: str | None = None, *, limit: int | None = 20,
              run_id: str | None = None) -> list[dict[str, Any]]:
    """Return every run recorded in the database, newest first, each with its steps under ``steps``.

    Runs recorded under another name than ``env`` are included and marked ``foreign``.
    """
    runs, steps = history_tables(schema)
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return []
    query = sa.select(runs).order_by(runs.c.started_at.desc())
    if run_id:
        query = query.where(runs.c.run_id.startswith(run_id))
    if limit:
        query = query.limit(limit)
    rows = [dict(r) for r in conn.execute(query).mappings()]
    if rows:
        ids = [r["run_id"] for r in rows]
        by_run: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for s in conn.execute(sa.select(steps).where(steps.c.run_id.in_(ids)).order_by(steps.c.run_id, steps.c.seq)).mappings():
            by_run[s["run_id"]].append(dict(s))
        for r in rows:
            r["steps"] = by_run[r["run_id"]]
            r["foreign"] = r["env"] != env
    return rows


def last_run(conn: Connection, env: str, schema: str | None = None) -> dict[str, Any] | None:
    """Return the newest run recorded in the database (marked ``foreign`` when not under ``env``), or None."""
    rows = read_runs(conn, env, schema, limit=1)
    return rows[0] if rows else None


def _script_sha256(script: Any, planned: Any = None) -> str | None:
    """Return the sha256 of a Script's file; unchanged size and mtime keep the planned hash (no re-read)."""
    path = getattr(script, "path", None)
    if not path:
        return None
    try:
        if planned is not None and planned.stat_key == stat_key(path):
            return planned.sha256
        return sha256_of(path)
    except OSError:
        return None


_insert_sql_cache: dict[tuple[Any, ...], str | None] = {}


def _insert_sql(conn: Connection, steps: sa.Table) -> str | None:
    """Return the step INSERT as psycopg 3 takes it, or None where rows cannot travel with the COMMIT.

    Only a synchronous psycopg 3 connection qualifies, and only while SQLAlchemy
    would pass every value to the driver unchanged (psycopg then quotes them).
    """
    dialect = conn.dialect
    if dialect.driver != "psycopg" or getattr(dialect, "is_async", False):
        return None
    import psycopg

    key = (dialect.__class__, dialect.server_version_info, steps.schema)
    if key not in _insert_sql_cache:
        columns = [c.name for c in steps.c]
        compiled = steps.insert().compile(dialect=dialect, column_keys=columns)
        plain = all(c.type.dialect_impl(dialect).bind_processor(dialect) is None for c in steps.c)
        usable = plain and not compiled.positional and dialect.paramstyle == "pyformat"
        _insert_sql_cache[key] = str(compiled) if usable else None
    return _insert_sql_cache[key] if isinstance(conn.connection.dbapi_connection, psycopg.Connection) else None


def applied_hashes(conn: Connection, env: str, schema: str | None = None, *,
                   repairs: bool = False) -> dict[str, dict[str, Any]]:
    """Return, per revision, the script sha256 of its latest successful upgrade step (with run id, time, env, direction).

    Every run in the database counts, whatever environment name it was recorded under.
    With ``repairs``, a later ``repair`` step (an edited script's new content accepted) supersedes it.
    """
    runs, steps = history_tables(schema)
    if not sa.inspect(conn).has_table(STEPS_TABLE, schema=schema):
        return {}
    query = (sa.select(steps.c.revision, steps.c.script_sha256, steps.c.run_id, steps.c.started_at, runs.c.env,
                       steps.c.direction)
             .join(runs, runs.c.run_id == steps.c.run_id)
             .where(steps.c.direction.in_(("up", "repair") if repairs else ("up",)), steps.c.status == SUCCEEDED)
             .order_by(steps.c.started_at))
    latest: dict[str, dict[str, Any]] = {}
    for row in conn.execute(query).mappings():
        latest[row["revision"]] = {"sha256": row["script_sha256"], "run_id": row["run_id"], "started_at": row["started_at"],
                                   "env": row["env"], "direction": row["direction"]}
    return latest


def stamped_heads(conn: Connection, schema: str | None = None) -> list[tuple[str, ...]]:
    """Return the destination heads of every succeeded stamp step (``stamp`` and ``adopt`` runs)."""
    _, steps = history_tables(schema)
    if not sa.inspect(conn).has_table(STEPS_TABLE, schema=schema):
        return []
    query = sa.select(steps.c.revision).where(steps.c.direction == "stamp", steps.c.status == SUCCEEDED)
    return [tuple(row[0].split()) for row in conn.execute(query)]


def first_heads(conn: Connection, schema: str | None = None) -> tuple[str, ...] | None:
    """Return where the database was when its history began: the oldest run's heads before, else the identity's.

    None when nothing was ever recorded there.
    """
    runs, _ = history_tables(schema)
    if sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        row = conn.execute(sa.select(runs.c.heads_before).order_by(runs.c.started_at).limit(1)).first()
        if row is not None:
            return tuple((row[0] or "").split())
    identity = read_identity(conn, schema)
    return tuple((identity["heads"] or "").split()) if identity else None


def foreign_runs(conn: Connection, env: str, schema: str | None = None) -> list[dict[str, Any]]:
    """Return, per environment name other than ``env`` found in the history, its run count and newest run."""
    runs, _ = history_tables(schema)
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return []
    found: dict[str, dict[str, Any]] = {}
    query = sa.select(runs).where(runs.c.env != env).order_by(runs.c.started_at.desc())
    for row in conn.execute(query).mappings():
        entry = found.setdefault(row["env"], {"env": row["env"], "count": 0, "newest": dict(row)})
        entry["count"] += 1
    return sorted(found.values(), key=lambda e: e["env"])


def upgraded_hashes(conn: Connection, schema: str | None = None) -> dict[str, dict[str, Any]]:
    """Return, per revision still upgraded, the sha256, run id and time of its latest succeeded 'up' step.

    Every run in the database counts, whatever environment name it was recorded
    under; a stamp or adopt is no 'up' step, and a later succeeded 'down' step
    of the revision undoes its entry (it is no longer applied by an upgrade).
    """
    runs, steps = history_tables(schema)
    if not sa.inspect(conn).has_table(STEPS_TABLE, schema=schema):
        return {}
    query = (sa.select(steps.c.revision, steps.c.direction, steps.c.script_sha256, steps.c.run_id, steps.c.started_at)
             .join(runs, runs.c.run_id == steps.c.run_id)
             .where(steps.c.direction.in_(("up", "down")), steps.c.status == SUCCEEDED)
             .order_by(steps.c.started_at, steps.c.seq))
    latest: dict[str, dict[str, Any]] = {}
    for row in conn.execute(query).mappings():
        if row["direction"] == "down":
            latest.pop(row["revision"], None)
        else:
            latest[row["revision"]] = {"sha256": row["script_sha256"], "run_id": row["run_id"],
                                       "started_at": row["started_at"]}
    return latest
