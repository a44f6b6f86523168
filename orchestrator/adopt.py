"""Adopt a database that predates the orchestrator: find the revision whose schema it has, and stamp it.

The schema of a revision is built by running the environment's own
migrations in a scratch database of the same dialect (a temporary SQLite
file, or a database created on the same server and always dropped), then
compared with the live database by reflection (:mod:`orchestrator.drift`).
Only an exact match is stamped, under the environment's lock, as an ``adopt``
run in the history; any difference is listed and nothing is written.
"""
from __future__ import annotations

import ast
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from orchestrator.context import RUN_ATTRIBUTE, EnvContext
from orchestrator.db import dialect_name, first_line, run_with_connection
from orchestrator.drift import Difference, Schema, compare_schemas, reflect_schema
from orchestrator.errors import ConfigError, DatabaseError, DifferencesFound, OrchestratorError, RevisionNotFound
from orchestrator.executor import RunResult, execute, record_refusal, run_alembic, run_locked
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.plan import build_plan, check_target
from orchestrator.state import current_heads, database_missing

SCRATCH_PREFIX = "orch_adopt_"
SQL_VERSION = "orchestrator_sql_version"
AUTO = "auto"


@dataclass
class Candidate:
    """A state the migrations reach (its heads), the schema it has, and how the live database differs."""

    heads: tuple[str, ...]
    schema: Schema
    differences: list[Difference] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(self.heads)


@dataclass
class LiveDatabase:
    """What adopt reads from the live database before deciding anything."""

    schema: Schema
    user_version: int


def adopt_gate(plan: Any, ctx: EnvContext, conn: Connection, *, force: bool = False, reason: str | None = None,
               **_: Any) -> list[str]:
    """Allow the stamp: adopt has just shown that the database already has exactly this revision's schema."""
    return []


# ---------------------------------------------------------------------------- the live database


def read_live(ctx: EnvContext) -> LiveDatabase:
    """Return the live schema, refusing a database that has a version or has no tables."""
    if database_missing(ctx):
        raise _no_tables(ctx)

    def read(conn: Connection) -> LiveDatabase:
        heads = current_heads(conn, ctx)
        if heads:
            raise ConfigError(
                f"environment '{ctx.name}': the database already has a version table ({ctx.env.version_table}) at "
                f"{', '.join(heads)}; adopt is only for databases without one: use `orchestrator upgrade --env "
                f"{ctx.name}` to move it, or `orchestrator stamp` to correct it", env=ctx.name)
        schema = reflect_schema(conn, schema=ctx.env.version_table_schema, exclude_tables=ctx.env.exclude_tables,
                                version_table=ctx.env.version_table)
        user_version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0) if schema.dialect == "sqlite" else 0
        conn.rollback()
        return LiveDatabase(schema, user_version)

    try:
        live = run_with_connection(ctx.url, ctx.name, read)
    except DBAPIError as exc:
        raise DatabaseError(f"environment '{ctx.name}': cannot read the schema: {first_line(exc)}", env=ctx.name) from None
    if not live.schema.tables:
        raise _no_tables(ctx)
    return live


def _no_tables(ctx: EnvContext) -> ConfigError:
    return ConfigError(f"environment '{ctx.name}': the database has no tables, so there is nothing to adopt; "
                       f"use `orchestrator upgrade --env {ctx.name}` to build it", env=ctx.name)


# ---------------------------------------------------------------------------- which revisions to try


def sql_version_of(path: Path) -> int | None:
    """Return the ``orchestrator_sql_version = N`` a revision imported from SQL file N carries, if any."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        value = getattr(node, "value", None)
        if (isinstance(target, ast.Name) and target.id == SQL_VERSION and isinstance(value, ast.Constant)
                and type(value.value) is int):
            return value.value
    return None


def sql_versions(ctx: EnvContext) -> dict[int, str]:
    """Return, for each imported SQL file number, the revision the environment sees that carries it."""
    found: dict[int, str] = {}
    for revision, file in sorted(ctx.graph.revisions.items()):
        number = sql_version_of(file.path)
        if number is not None:
            if number in found:
                raise ConfigError(
                    f"environment '{ctx.name}': revisions {found[number]} and {revision} both carry "
                    f"{SQL_VERSION} = {number}; keep it on one of them", env=ctx.name)
            found[number] = revision
    return found


def chosen_revision(ctx: EnvContext, revision: str, user_version: int) -> tuple[str | None, str]:
    """Return the one revision to try (None: walk the graph) and why it was chosen."""
    if revision != AUTO:
        check_target(ctx.name, revision, ctx.script, ctx.graph)
        try:
            found = ctx.script.get_revision(revision)
        except Exception:  # several heads, a relative reference: not one revision
            found = None
        if found is None:
            raise RevisionNotFound(f"environment '{ctx.name}': '{revision}' names no single revision; pass one "
                                   "revision id, or auto", env=ctx.name, revision=revision)
        return found.revision, "given"
    if user_version > 0:
        imported = sql_versions(ctx)
        if imported and user_version in imported:
            return imported[user_version], f"PRAGMA user_version {user_version}"
        if imported:
            raise ConfigError(
                f"environment '{ctx.name}': the database has PRAGMA user_version {user_version}, but no revision "
                f"'{ctx.name}' sees carries {SQL_VERSION} = {user_version} (imported: "
                f"{', '.join(str(n) for n in sorted(imported))}); import SQL file {user_version} "
                "(`orchestrator import-sql`) or pass --revision", env=ctx.name)
    return None, "auto"


# ---------------------------------------------------------------------------- the scratch database


@contextmanager
def scratch_database(ctx: EnvContext) -> Iterator[URL]:
    """Yield the URL of an empty database of the environment's dialect; it is dropped afterwards, whatever happens."""
    url = ctx.url
    if url.get_backend_name() == "sqlite":
        folder = tempfile.mkdtemp(prefix="orchestrator-adopt-")
        try:
            yield url.set(database=str(Path(folder) / "scratch.db"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = scratch_database_name()
    _admin(ctx, f"create a scratch database {name} (adopt needs the CREATE DATABASE privilege)",
           lambda conn: conn.exec_driver_sql(f"CREATE DATABASE {_quote(conn, name)}"))
    try:
        yield url.set(database=name)
    finally:
        _admin(ctx, f"drop the scratch database {name}; drop it by hand", lambda conn: _drop(conn, name))


def scratch_database_name() -> str:
    """Return a fresh name for a scratch database on a server."""
    return SCRATCH_PREFIX + secrets.token_hex(6)


def _admin(ctx: EnvContext, what: str, fn: Callable[[Connection], Any]) -> None:
    """Run ``fn`` on an autocommit connection to the environment's server."""

    def work(conn: Connection) -> None:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        fn(conn)

    try:
        run_with_connection(ctx.url, ctx.name, work)
    except DBAPIError as exc:
        raise DatabaseError(f"environment '{ctx.name}': cannot {what}: {first_line(exc)}", env=ctx.name) from None


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _drop(conn: Connection, name: str) -> None:
    """Drop a scratch database, ending connections still attached to it."""
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (13,):
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quote(conn, name)} WITH (FORCE)")
    else:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quote(conn, name)}")


def scratch_context(ctx: EnvContext, url: URL) -> EnvContext:
    """Return the environment pointed at ``url``, unprotected: migrations run there only to show a schema."""
    scratch = EnvContext(ctx.registry, replace(ctx.env, protected=False), ctx.all_files)
    scratch.__dict__["url"] = url
    scratch.may_run = ctx.may_run  # type: ignore[method-assign]  # but only code the real environment may run
    return scratch


def unapproved_to_build(ctx: EnvContext, revision: str | None) -> list[str]:
    """Return a reason for each revision adopt would run in the scratch database that a protected environment may not run."""
    from orchestrator.reviews import REVIEWED, load_ledger

    if not ctx.env.protected:
        return []
    steps = build_plan(ctx.name, "upgrade", revision or "heads", (), ctx.script, ctx.graph).steps
    try:
        ledger = load_ledger(ctx.registry.reviews_path)
    except OrchestratorError as exc:
        return [f"cannot read the review ledger: {exc}"]
    return [f"revision {s.revision} ({s.path}) is not approved at its current content, and adopt on protected "
            f"environment '{ctx.name}' runs its code in a scratch database; run `orchestrator review approve "
            f"{s.revision} --reviewer NAME` first" for s in steps if ledger.state(s.revision, s.sha256) != REVIEWED]


def build_candidates(ctx: EnvContext, url: URL, revision: str | None) -> list[Candidate]:
    """Migrate the scratch database and snapshot it: at ``revision``, or after every step from base to heads."""
    scratch = scratch_context(ctx, url)
    targets = [revision] if revision else [s.revision for s in build_plan(
        ctx.name, "upgrade", "heads", (), ctx.script, ctx.graph).steps]
    candidates = []
    for target in targets:
        try:
            result = execute(scratch, "upgrade", target, gate=adopt_gate)
        except OrchestratorError as exc:
            raise DatabaseError(f"environment '{ctx.name}': cannot build revision {target} in a scratch database: "
                                f"{exc}", env=ctx.name) from None
        schema = run_with_connection(url, ctx.name, lambda conn: reflect_schema(
            conn, schema=ctx.env.version_table_schema, exclude_tables=ctx.env.exclude_tables,
            version_table=ctx.env.version_table))
        candidates.append(Candidate(result.heads_after, schema))
    return candidates


def scratch_name(url: URL) -> str:
    """Return how the scratch database is named in results: the server database, or 'a temporary SQLite file'."""
    return "a temporary SQLite file" if url.get_backend_name() == "sqlite" else str(url.database)


# ---------------------------------------------------------------------------- compare and stamp


def judge(live: Schema, candidates: list[Candidate]) -> Candidate | None:
    """Compare the live schema with each candidate, newest first; return the first that matches."""
    for candidate in reversed(candidates):
        candidate.differences = compare_schemas(live, candidate.schema,
                                                names=("the database", f"revision {candidate.label}"))
        if not candidate.differences:
            return candidate
    return None


def closest(candidates: list[Candidate]) -> Candidate:
    """Return the candidate with the fewest differences (the newest on a tie)."""
    return min(reversed(candidates), key=lambda c: len(c.differences))


def stamp_adopted(ctx: EnvContext, match: Candidate, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                  gate: Any = adopt_gate) -> RunResult:
    """Stamp the matching heads under the lock, checking again that nothing changed since the comparison."""
    target: str | tuple[str, ...] = match.heads[0] if len(match.heads) == 1 else match.heads

    def invoke(conn: Connection, recorder: Any) -> None:
        _recheck(conn, ctx, match)
        cfg = ctx.config()
        cfg.attributes["connection"] = conn
        cfg.attributes[RUN_ATTRIBUTE] = recorder
        run_alembic(ctx, cfg, "stamp", target)

    return run_with_connection(ctx.url, ctx.name, lambda conn: run_locked(
        conn, ctx, "stamp", target, invoke, lock_timeout=lock_timeout, gate=gate, record_as="adopt"))


def _recheck(conn: Connection, ctx: EnvContext, match: Candidate) -> None:
    """Refuse to stamp if another runner changed the schema or the version table since the comparison."""
    schema = reflect_schema(conn, schema=ctx.env.version_table_schema, exclude_tables=ctx.env.exclude_tables,
                            version_table=ctx.env.version_table)
    differences = compare_schemas(schema, match.schema, names=("the database", f"revision {match.label}"))
    if differences:
        raise DifferencesFound(f"environment '{ctx.name}': the schema changed while adopt ran "
                               f"({differences[0].detail}); nothing stamped; run adopt again", env=ctx.name,
                               findings=tuple(d.detail for d in differences))


def adopt(ctx: EnvContext, revision: str = AUTO, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
          gate: Any = adopt_gate) -> dict[str, Any]:
    """Stamp ``revision`` (or, with ``auto``, the newest revision whose schema the database has) if it matches."""
    ctx.graph
    live = read_live(ctx)
    wanted, source = chosen_revision(ctx, revision, live.user_version)
    reasons = unapproved_to_build(ctx, wanted)
    if reasons:  # no code of an unapproved script runs for a protected environment, not even in a scratch database
        record_refusal(ctx, "adopt", wanted or revision, reasons, lock_timeout=lock_timeout)
    with scratch_database(ctx) as url:
        candidates = build_candidates(ctx, url, wanted)
        scratch = scratch_name(url)
    match = judge(live.schema, candidates)
    result: dict[str, Any] = {
        "env": ctx.name, "dialect": dialect_name(ctx.url), "requested": revision, "chosen_by": source,
        "user_version": live.user_version or None, "scratch_database": scratch,
        "checked": [{"revision": c.label, "differences": len(c.differences)} for c in reversed(candidates)
                    if c.differences or c is match],
    }
    if match is None:
        nearest = closest(candidates)
        return {**result, "status": "differences", "revision": nearest.label,
                "differences": [d.to_dict() for d in nearest.differences], "run": None}
    run = stamp_adopted(ctx, match, lock_timeout=lock_timeout, gate=gate)
    return {**result, "status": "adopted", "revision": match.label, "differences": [], "run": run.to_dict()}

