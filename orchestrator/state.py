"""Read what an environment's database is at, without changing it.

The current heads come from Alembic's version table; the applied revisions
are those heads and everything they stand on. A SQLite file that does not
exist yet is an empty database: reading never creates one.
"""
from __future__ import annotations

from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from orchestrator.context import EnvContext
from orchestrator.db import first_line, run_with_connection
from orchestrator.errors import DatabaseError


def current_heads(conn: Connection, ctx: EnvContext) -> tuple[str, ...]:
    """Return the revisions in the environment's version table (empty before the first run)."""
    mc = MigrationContext.configure(conn, opts={
        "version_table": ctx.env.version_table, "version_table_schema": ctx.env.version_table_schema,
    })
    heads = tuple(sorted(mc.get_current_heads()))
    conn.commit()
    return heads


def database_missing(ctx: EnvContext) -> bool:
    """Return True for a SQLite file that does not exist yet (reading it must not create it)."""
    url = ctx.url
    database = url.database or ""
    return (url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
            and not database.startswith("file:") and not Path(database).exists())


def read_heads(ctx: EnvContext, *, must_exist: bool = False) -> tuple[str, ...]:
    """Return the environment's current heads without creating anything.

    A SQLite file that does not exist is an empty database, or with ``must_exist``
    (another environment's record is being consulted) a DatabaseError.
    """
    url = ctx.url
    if database_missing(ctx):
        if must_exist:
            raise DatabaseError(f"environment '{ctx.name}': database file {url.database} does not exist", env=ctx.name)
        return ()

    def read(conn: Connection) -> tuple[str, ...]:
        try:
            return current_heads(conn, ctx)
        except DBAPIError as exc:
            raise DatabaseError(f"environment '{ctx.name}': cannot read the version table: {first_line(exc)}",
                                env=ctx.name) from None

    return run_with_connection(url, ctx.name, read)


def applied_revisions(ctx: EnvContext, heads: tuple[str, ...]) -> set[str]:
    """Return every revision applied on an environment at ``heads`` (the heads and their ancestors)."""
    graph = ctx.all_files
    labels = {label: f.revision for f in graph.values() for label in f.branch_labels}
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        ref = stack.pop()
        rev = ref if ref in graph else labels.get(ref)
        if rev is None or rev in seen:
            continue
        seen.add(rev)
        stack.extend(graph[rev].down_revisions + graph[rev].depends_on)
    return seen
