"""The built-in migration checks a project turns on for its own registry.

Each check takes a :class:`Subject` (a registry, one environment and, for the
checks that need one, a throwaway database of one dialect) and either returns
or raises :class:`MigrationCheckFailure`, which says which revision and shows
the difference in titled sections. No pytest here: :mod:`orchestrator.pytest_plugin`
turns :data:`CHECKS` into test items, one per environment (and dialect).

The database checks drive the environment through the public Python API
(:mod:`orchestrator.commands`) on the throwaway database, with the environment
unprotected: they test the migrations, not the review gate.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from dataclasses import dataclass, replace

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from orchestrator import commands
from orchestrator.context import EnvContext, contexts
from orchestrator.loader import path_for_display
from orchestrator.db import run_with_connection
from orchestrator.errors import OrchestratorError
from orchestrator.executor import RunResult
from orchestrator.graph import EnvironmentGraph, labelled_revisions
from orchestrator.recorder import HISTORY_TABLES
from orchestrator.registry import Registry


class MigrationCheckFailure(AssertionError):
    """Raised when a built-in check finds a problem; carries titled sections shown under the message."""

    def __init__(self, message: str, sections: Sequence[tuple[str, str]] = (), *, revision: str | None = None):
        super().__init__(message)
        self.message = message
        self.sections = [(title, body) for title, body in sections if body]
        self.revision = revision

    def format_sections(self) -> list[str]:
        """Return the sections as lines: a title, then its body indented."""
        lines: list[str] = []
        for title, body in self.sections:
            lines += ["", f"{title}:", textwrap.indent(body.rstrip("\n"), "    ")]
        return lines

    def __str__(self) -> str:
        return "\n".join([self.message, *self.format_sections()])


@dataclass(frozen=True)
class Subject:
    """What one check runs on: an environment of a registry and, for database checks, a database."""

    registry: Registry
    env: str
    dialect: str | None = None
    url: str | None = None

    def context(self) -> EnvContext:
        """Return the environment's context, on the throwaway database and unprotected when there is one."""
        registry = self.registry
        if self.url is not None:
            env = replace(registry.env(self.env), url_template=str(self.url), protected=False)
            registry = replace(registry, environments={**registry.environments, self.env: env})
        return contexts(registry, [self.env])[0]

    def where(self) -> str:
        """Return 'environment' or 'environment on dialect' for messages."""
        return f"environment '{self.env}'" + (f" on {self.dialect}" if self.dialect else "")


@dataclass(frozen=True)
class Check:
    """One built-in check: its test name, what it runs, and whether it needs a database."""

    name: str
    run: Callable[[Subject], None]
    needs_database: bool = True

    @property
    def doc(self) -> str:
        """Return what the check asserts (the first line of its function's docstring)."""
        return (self.run.__doc__ or "").strip().splitlines()[0]


# ---------------------------------------------------------------------------- helpers


def _describe(ctx: EnvContext, revision: str) -> str:
    """Return 'rev (folder/file.py): message' for a revision the environment sees."""
    found = ctx.all_files.get(revision)  # every folder: the graph may be the thing that is broken
    if found is None:
        return revision
    return f"{revision} ({found.display_path(ctx.registry.root)}): {found.message}"


def _ids(revisions: Iterable[str]) -> str:
    """Return revision ids for a message, or 'base'."""
    return ", ".join(revisions) or "base"


def _failure(subject: Subject, ctx: EnvContext, what: str, exc: OrchestratorError,
             extra: Sequence[tuple[str, str]] = ()) -> MigrationCheckFailure:
    """Return the failure for an orchestrator error raised while ``what`` ran."""
    revision = exc.revision
    sections = [("revision", _describe(ctx, revision) if revision else ""), ("error", str(exc))]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(cause, OrchestratorError):
        sections.append(("raised by the script", f"{type(cause).__name__}: {cause}"))
    at = f" at revision {revision}" if revision else ""
    return MigrationCheckFailure(f"{subject.where()}: {what} failed{at}", [*sections, *extra], revision=revision)


def _upgrade(subject: Subject, ctx: EnvContext, target: str, what: str) -> RunResult:
    """Upgrade to ``target``, turning an orchestrator error into a check failure."""
    return _run(commands.upgrade, subject, ctx, target, what)


def _downgrade(subject: Subject, ctx: EnvContext, target: str, what: str) -> RunResult:
    """Downgrade to ``target``, turning an orchestrator error into a check failure."""
    return _run(commands.downgrade, subject, ctx, target, what)


def _run(verb: Callable[..., Any], subject: Subject, ctx: EnvContext, target: str, what: str) -> RunResult:
    """Run one orchestrator verb, turning an orchestrator error into a check failure."""
    try:
        result = verb(ctx, target)
    except OrchestratorError as exc:
        raise _failure(subject, ctx, what, exc) from None
    assert isinstance(result, RunResult)
    return result


def _current(ctx: EnvContext) -> tuple[str, ...]:
    """Return the revisions the database is at."""
    return tuple(h["revision"] for h in commands.current(ctx)["heads"])


def _upgrade_order(ctx: EnvContext) -> list[str]:
    """Return every revision the environment sees, in the order an upgrade from empty applies them."""
    return [step.revision for step in commands.plan(ctx, "heads").steps]


def one_step_down_target(graph: EnvironmentGraph, applied: Sequence[str], revision: str) -> str:
    """Return the downgrade target that unapplies ``revision`` alone.

    ``revision`` must be on top: nothing else in ``applied`` (the revisions the database
    has, ``revision`` included) stands on it. ``<rev>@-1`` steps down ``revision``'s own
    branch, leaving sibling branches and labelled branches alone. Alembic cannot say that
    of a merge (it has several parents), so a merge steps down to a parent that nothing
    else applied is built on: Alembic then removes exactly the merge.
    """
    parents = graph.revisions[revision].down_revisions
    if len(parents) <= 1:
        return f"{revision}@-1"
    others = [r for r in applied if r != revision]
    for parent in parents:
        if not any(parent in graph.revisions[r].down_revisions for r in others):
            return parent
    return f"{revision}@-1"


def _schema_objects(conn: Connection, schemas: Sequence[str | None]) -> dict[str, str]:
    """Return every table, view, sequence and (PostgreSQL) enum type, keyed 'kind name', with a description."""
    insp = inspect(conn)
    found: dict[str, str] = {}
    for schema in dict.fromkeys(schemas):
        prefix = f"{schema}." if schema else ""
        for table in insp.get_table_names(schema=schema):
            columns = ", ".join(f"{c['name']} {c['type']}" for c in insp.get_columns(table, schema=schema))
            found[f"table {prefix}{table}"] = f"table {prefix}{table} ({columns})"
        for view in insp.get_view_names(schema=schema):
            found[f"view {prefix}{view}"] = f"view {prefix}{view}"
        if conn.dialect.name == "postgresql":
            for sequence in _standalone_sequences(conn, schema):
                found[f"sequence {prefix}{sequence}"] = f"sequence {prefix}{sequence}"
            for enum in insp.get_enums(schema=schema):  # type: ignore[attr-defined]
                labels = ", ".join(repr(label) for label in enum["labels"])
                found[f"type {prefix}{enum['name']}"] = f"enum type {prefix}{enum['name']} ({labels})"
    return found


def _standalone_sequences(conn: Connection, schema: str | None) -> list[str]:
    """Return PostgreSQL sequences no column owns (owned ones go with their table, which is reported)."""
    rows = conn.execute(text(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname = coalesce(:schema, current_schema()) "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
        "AND d.objid = c.oid AND d.deptype IN ('a', 'i')) ORDER BY c.relname"), {"schema": schema})
    return [row[0] for row in rows]


def _snapshot(ctx: EnvContext) -> dict[str, str]:
    """Return the schema objects in the environment's database (default schema and version table schema)."""
    schemas = [None, ctx.env.version_table_schema]
    return run_with_connection(ctx.url, ctx.name, lambda conn: _schema_objects(conn, schemas))


def _bookkeeping(ctx: EnvContext) -> set[str]:
    """Return the keys of the objects that stay after a downgrade to base: version and history tables."""
    schema = ctx.env.version_table_schema
    prefix = f"{schema}." if schema else ""
    return {f"table {prefix}{name}" for name in (ctx.env.version_table, *HISTORY_TABLES)}


# ---------------------------------------------------------------------------- the checks


def single_head(subject: Subject) -> None:
    """Each environment's graph has at most one head outside labelled branches."""
    ctx = subject.context()
    labelled = labelled_revisions(ctx.graph)
    loose = [h for h in ctx.graph.heads if h not in labelled]
    if len(loose) <= 1:
        return
    raise MigrationCheckFailure(
        f"{subject.where()}: {len(loose)} heads on unlabelled branches ({', '.join(loose)}); "
        "merge them (`alembic merge`) or give each branch a label",
        [("heads", "\n".join(_describe(ctx, h) for h in loose)),
         ("labelled heads (allowed)", "\n".join(_describe(ctx, h) for h in ctx.graph.heads if h in labelled))],
        revision=loose[0],
    )


def graph_closed(subject: Subject) -> None:
    """Nothing the environment sees depends on a revision it does not see; no cycles, no duplicate ids."""
    ctx = subject.context()
    try:
        ctx.graph
    except OrchestratorError as exc:
        raise MigrationCheckFailure(
            str(exc),
            [("revision", _describe(ctx, exc.revision) if exc.revision else ""),
             ("difference", _unseen_references(ctx, exc.revision) or str(exc)),
             ("folders the environment lists",
              "\n".join(path_for_display(p, ctx.registry.root) + "/" for p in ctx.env.version_locations))],
            revision=exc.revision,
        ) from None


def _unseen_references(ctx: EnvContext, revision: str | None) -> str:
    """Return, one a line, what ``revision`` refers to that the environment's folders do not hold."""
    found = ctx.all_files.get(revision or "")
    if found is None:
        return ""
    lines = []
    for ref in found.down_revisions + found.depends_on:
        target = ctx.all_files.get(ref)
        if target is None:
            lines.append(f"{revision} refers to {ref}, which no version folder holds")
        elif target.folder not in ctx.env.version_locations:
            lines.append(f"{revision} refers to {_describe(ctx, ref)}, "
                         f"in {path_for_display(target.folder, ctx.registry.root)}/, which '{ctx.name}' does not list")
    return "\n".join(lines)


def upgrade_from_empty(subject: Subject) -> None:
    """An empty database upgrades to the graph's heads, and nothing is pending afterwards."""
    ctx = subject.context()
    _upgrade(subject, ctx, "heads", "upgrade from an empty database")
    pending = _upgrade_order(ctx)
    if pending:
        raise MigrationCheckFailure(
            f"{subject.where()}: after upgrading an empty database to heads, {len(pending)} revision(s) are still pending",
            [("current", _ids(_current(ctx))), ("graph heads", _ids(ctx.graph.heads)),
             ("pending", "\n".join(_describe(ctx, r) for r in pending))],
            revision=pending[0],
        )


def up_down_consistency(subject: Subject) -> None:
    """Upgrade one revision at a time, downgrade one at a time back to base, then upgrade to heads again."""
    ctx = subject.context()
    order = _upgrade_order(ctx)
    for revision in order:
        ran = [s.revision for s in _upgrade(subject, ctx, revision, f"upgrade to {revision}").steps]
        if ran != [revision]:
            raise MigrationCheckFailure(
                f"{subject.where()}: upgrading to {revision} ran {_ids(ran)} instead of {revision} alone",
                [("revision", _describe(ctx, revision)), ("expected order", "\n".join(order))], revision=revision)
    applied = list(order)
    for revision in reversed(order):
        target = one_step_down_target(ctx.graph, applied, revision)
        ran = [s.revision for s in _downgrade(subject, ctx, target, f"downgrade of {revision} (to {target})").steps]
        if ran != [revision]:
            raise MigrationCheckFailure(
                f"{subject.where()}: downgrading {revision} (to {target}) ran {_ids(ran)} instead of {revision} alone",
                [("revision", _describe(ctx, revision)), ("database before", _ids(applied))], revision=revision)
        applied.remove(revision)
    if left := _current(ctx):
        raise MigrationCheckFailure(f"{subject.where()}: after every downgrade the database is still at {_ids(left)}",
                                    [("current", _ids(left))], revision=left[0])
    try:
        commands.upgrade(ctx, "heads")
    except OrchestratorError as exc:
        hint = ("each downgrade ran, but upgrading again failed: a downgrade left behind something "
                "an upgrade creates (most likely the failing revision's own downgrade)")
        raise _failure(subject, ctx, "upgrading again after downgrading to base", exc, [("hint", hint)]) from None


def model_definitions_match_ddl(subject: Subject) -> None:
    """At heads, autogenerate finds nothing to do: the models describe the database the migrations build."""
    from alembic.autogenerate import produce_migrations, render_python_code

    from orchestrator.drift import comparison_context
    from orchestrator.envpy import import_object

    ctx = subject.context()
    _upgrade(subject, ctx, "heads", "upgrade from an empty database")
    spec = ctx.env.target_metadata
    assert spec, "the plugin collects this check only for environments with target_metadata"
    try:
        metadata = import_object(spec, ctx.registry)
    except OrchestratorError as exc:
        raise MigrationCheckFailure(f"{subject.where()}: {exc}") from None

    def compare(conn: Connection) -> str | None:
        ops = produce_migrations(comparison_context(conn, ctx, metadata), metadata).upgrade_ops
        assert ops is not None
        if ops.is_empty():
            return None
        code = render_python_code(ops)
        return textwrap.dedent("\n".join(line for line in code.splitlines() if not line.strip().startswith("# ###")))

    difference = run_with_connection(ctx.url, ctx.name, compare)
    if difference is None:
        return
    heads = _current(ctx)
    raise MigrationCheckFailure(
        f"{subject.where()}: the models ({spec}) differ from the database at heads {_ids(heads)}; "
        "add a revision (`orchestrator revision --autogenerate`) or fix the models",
        [("revision", "\n".join(_describe(ctx, h) for h in heads)),
         ("difference (what autogenerate would write to make the database match the models)", difference)],
        revision=heads[0] if heads else None,
    )


def downgrade_leaves_no_trace(subject: Subject) -> None:
    """Upgrade to heads and downgrade to base: only the version table and the history tables remain."""
    ctx = subject.context()
    before = _snapshot(ctx)
    created_by: dict[str, str] = {}
    for revision in _upgrade_order(ctx):
        _upgrade(subject, ctx, revision, f"upgrade to {revision}")
        for key in _snapshot(ctx).keys() - before.keys() - created_by.keys():
            created_by[key] = revision
    _downgrade(subject, ctx, "base", "downgrade to base")
    after = _snapshot(ctx)
    left = {key: found for key, found in after.items() if key not in before and key not in _bookkeeping(ctx)}
    heads = _current(ctx)
    if not left and not heads:
        return
    lines = []
    for key in sorted(left, key=lambda k: (created_by.get(k, ""), k)):
        origin = created_by.get(key)
        lines.append(f"{left[key]}: created by {_describe(ctx, origin)}" if origin else
                     f"{left[key]}: created during the downgrade")
    culprits = list(dict.fromkeys(created_by[k] for k in sorted(left) if k in created_by))
    which = f"; revision {', '.join(culprits)} does not undo its upgrade" if culprits else ""
    raise MigrationCheckFailure(
        f"{subject.where()}: downgrading to base left {len(left)} object(s) behind{which}",
        [("revision", "\n".join(_describe(ctx, r) for r in culprits)),
         ("difference (left after downgrade to base)", "\n".join(lines)),
         ("version table", f"still at {_ids(heads)}" if heads else "")],
        revision=culprits[0] if culprits else None,
    )


def history_recorded(subject: Subject) -> None:
    """After an upgrade from empty, orchestrator_steps holds one succeeded 'up' step per revision."""
    ctx = subject.context()
    order = _upgrade_order(ctx)
    _upgrade(subject, ctx, "heads", "upgrade from an empty database")
    runs = commands.runs(ctx, limit=None)["runs"]
    steps = [(run["run_id"][:12], step) for run in runs for step in run["steps"]]
    ups = [step["revision"] for _, step in steps if step["direction"] == "up" and step["status"] == "succeeded"]
    missing = [r for r in order if r not in ups]
    repeated = sorted({r for r in ups if ups.count(r) > 1})
    unknown = sorted(set(ups) - set(order))
    if not (missing or repeated or unknown):
        return
    recorded = "\n".join(f"run {run_id} seq {s['seq']}: {s['revision']} {s['direction']} {s['status']}"
                         for run_id, s in steps) or "(no steps recorded)"
    problems = [f"{what}: {', '.join(revs)}" for what, revs in
                (("not recorded", missing), ("recorded more than once", repeated), ("not in the plan", unknown)) if revs]
    first = (missing or repeated or unknown)[0]
    raise MigrationCheckFailure(
        f"{subject.where()}: the history does not hold one succeeded 'up' step per revision ({'; '.join(problems)})",
        [("revision", _describe(ctx, first)), ("expected, in order", "\n".join(order)),
         ("recorded in orchestrator_steps", recorded)],
        revision=first,
    )


CHECKS: tuple[Check, ...] = (
    Check("test_single_head", single_head, needs_database=False),
    Check("test_graph_closed", graph_closed, needs_database=False),
    Check("test_upgrade_from_empty", upgrade_from_empty),
    Check("test_up_down_consistency", up_down_consistency),
    Check("test_model_definitions_match_ddl", model_definitions_match_ddl),
    Check("test_downgrade_leaves_no_trace", downgrade_leaves_no_trace),
    Check("test_history_recorded", history_recorded),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)


def not_applicable(check: Check, registry: Registry, env: str, graph_error: str | None) -> str | None:
    """Return why ``check`` does not apply to ``env`` (the item is then skipped), or None."""
    if check.name == "test_graph_closed":
        return None
    if graph_error is not None:
        return f"environment '{env}': its graph is not usable; see test_graph_closed[{env}]"
    if check.name == "test_model_definitions_match_ddl":
        environment = registry.env(env)
        if not environment.target_metadata:
            return f"environment '{env}': no project.target_metadata in {registry.path}, so there are no models to compare"
        # An environment that runs revisions the models do not describe yet (a candidate) opts out.
        if getattr(environment, "compare_models", True) is False:
            return f"environment '{env}': compare_models is false for it in {registry.path}"
    return None


def graph_error(registry: Registry, env: str) -> str | None:
    """Return why the environment's graph is unusable, or None when it is closed and acyclic."""
    try:
        contexts(registry, [env])[0].graph
    except OrchestratorError as exc:
        return str(exc)
    return None

