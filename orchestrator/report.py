"""The audit report: what reached which environment, when, by whom, reviewed by whom.

This module gathers the facts: the revision graph of every folder, each
environment's version table and history tables, and the review ledger. It
reads and never writes. Rendering is :mod:`orchestrator.render`'s job; the JSON
form is the :class:`Report` model below, whose ``schema_version`` changes only
when a field is removed or changes meaning (``report --schema`` prints it).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, Optional

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from orchestrator import __version__
from orchestrator.context import EnvContext, contexts
from orchestrator.db import first_line, run_with_connection
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.loader import RevisionFile, path_for_display
from orchestrator.lock import lock_for
from orchestrator.recorder import (
    BLOCKED, FAILED, INTERRUPTED, RUNNING, RUNS_TABLE, SUCCEEDED, history_tables,
)
from orchestrator.registry import Registry, mask_url
from orchestrator.reviews import Ledger, load_ledger
from orchestrator.state import applied_revisions, current_heads, database_missing

SCHEMA_VERSION = 1
APPLIED, PENDING, NOT_VISIBLE = "applied", "pending", "not visible"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RevisionInfo(_Model):
    """One revision of the registry's folders."""

    revision: str
    message: str
    down_revisions: list[str]
    depends_on: list[str]
    branch_labels: list[str]
    path: str = Field(description="script path relative to the project root")
    sha256: str = Field(description="sha256 of the script on disk now")


class Cell(_Model):
    """One environment's state of one revision in the matrix."""

    state: Literal["applied", "pending", "not visible", "unknown"] = Field(
        description="unknown: the environment's database could not be read")
    applied_at: Optional[str] = Field(None, description="ISO-8601 UTC time of the step that applied it, if recorded")


class MatrixRow(_Model):
    """A revision and its state in every environment, in graph order (base first)."""

    revision: str
    message: str
    cells: dict[str, Cell] = Field(description="keyed by environment name")


class AppliedRevision(_Model):
    """A revision applied on an environment, with the facts of the step that applied it."""

    revision: str
    message: str
    applied_at: Optional[str] = Field(description="null when no recorded step applied it (stamped or applied by other tools)")
    operator: Optional[str]
    duration_ms: Optional[float]
    run_id: Optional[str]
    recorded_env: Optional[str] = Field(None, description="the environment name the applying run was recorded under, "
                                                          "when it is not this environment's")
    reviewer: Optional[str] = Field(description="reviewer recorded with the step (who approved the content applied)")
    review_state: str = Field(description="the ledger's verdict on the script on disk now: reviewed, unreviewed or stale")
    recorded_sha256: Optional[str]
    script_sha256: Optional[str] = Field(description="sha256 of the script on disk now; null when the file is gone")
    repaired_sha256: Optional[str] = Field(None, description="sha256 a later `repair` accepted in place of the "
                                                             "applied one (approved content), when there is one")
    script_matches: Optional[bool] = Field(description="true when the script on disk is the one applied (or the one a "
                                                       "later repair accepted); null when unknown")


class FailedStep(_Model):
    """The step that failed, was interrupted or was refused in a notable run."""

    revision: str
    direction: str
    status: str
    error: Optional[str]


class NotableRun(_Model):
    """A run that failed, was blocked by the gate, was forced, was interrupted, or was recorded under another name."""

    run_id: str
    env: str = Field(description="the environment name the run was recorded under")
    foreign: bool = Field(description="true when that name is not this environment's (another name reached its database)")
    command: str
    target: Optional[str]
    status: str = Field(description="failed, blocked, interrupted, running, or succeeded (when forced)")
    recorded_status: str = Field(description="the status in the history table (running when its runner died unseen)")
    started_at: str
    finished_at: Optional[str]
    operator: str
    heads_before: list[str]
    heads_after: list[str]
    forced: bool
    reason: Optional[str] = Field(description="the error, the gate's reasons, or the forced reason")
    steps: list[FailedStep] = Field(description="the steps that did not succeed")


class Drift(_Model):
    """Models against the live database (only with --drift)."""

    state: Literal["clean", "drifted", "no_models", "unreachable", "error"]
    differences: list[dict[str, Any]] = Field(description="{kind, object, detail} each, as `check --json` gives them")
    error: Optional[str] = Field(None, description="why the comparison could not run (unreachable, error)")
    reason: Optional[str] = Field(None, description="why there is nothing to compare (no_models)")


class EnvironmentReport(_Model):
    """Everything the report says about one environment."""

    env: str
    url: str = Field(description="the database URL, password masked")
    protected: bool
    promote_from: Optional[str]
    reachable: bool
    error: Optional[str] = Field(description="why the database could not be read, when unreachable")
    current_heads: list[str]
    target_heads: list[str]
    pending: list[str] = Field(description="revisions the environment sees and has not applied, in graph order")
    applied: list[AppliedRevision] = Field(description="applied revisions in graph order (within --since, if given)")
    notable_runs: list[NotableRun] = Field(description="oldest first (within --since, if given)")
    run_count: int = Field(description="runs recorded in the period")
    step_count: int = Field(description="steps recorded in the period")
    drift: Optional[Drift] = None


class Report(_Model):
    """The audit report (JSON schema version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    generated_at: str
    tool_version: str
    registry: str
    since: Optional[str]
    environments: list[str]
    revisions: list[RevisionInfo] = Field(description="every revision of every folder, in graph order (base first)")
    matrix: list[MatrixRow]
    details: list[EnvironmentReport]


# ---------------------------------------------------------------------------- gathering


def build_report(registry: Registry, names: list[str] | None = None, *, since: datetime | None = None,
                 drift: bool = False) -> Report:
    """Return the report over ``names`` (every environment if None)."""
    for name in names or ():
        registry.env(name)  # refuse an unknown name before reading anything
    ctxs = contexts(registry, [n for n in registry.environments if n in names] if names else None)
    files = ctxs[0].all_files
    order = graph_order(files)
    ledger = _ledger(registry)
    details = [environment_report(ctx, order, ledger, since=since, drift=drift) for ctx in ctxs]
    root = registry.root
    revisions = [RevisionInfo(revision=r, message=files[r].message, down_revisions=list(files[r].down_revisions),
                              depends_on=list(files[r].depends_on), branch_labels=list(files[r].branch_labels),
                              path=path_for_display(files[r].path, root), sha256=files[r].sha256) for r in order]
    return Report(generated_at=_iso(datetime.now(timezone.utc).replace(tzinfo=None)), tool_version=__version__,
                  registry=path_for_display(registry.path, root), since=_iso(since) if since else None,
                  environments=[d.env for d in details], revisions=revisions,
                  matrix=matrix(order, files, ctxs, details), details=details)


def graph_order(files: dict[str, RevisionFile]) -> list[str]:
    """Return every revision, parents before children; ties keep folder then id order (deterministic)."""
    labels = {label: f.revision for f in files.values() for label in f.branch_labels}
    parents = {rev: {labels.get(p, p) for p in f.down_revisions + f.depends_on} & files.keys() for rev, f in files.items()}
    children: dict[str, list[str]] = {rev: [] for rev in files}
    for rev, ps in parents.items():
        for p in ps:
            children[p].append(rev)
    key = {rev: (str(f.folder), rev) for rev, f in files.items()}
    waiting = {rev: len(ps) for rev, ps in parents.items()}
    ready = sorted((rev for rev, n in waiting.items() if n == 0), key=key.__getitem__)
    order: list[str] = []
    while ready:
        rev = ready.pop(0)
        order.append(rev)
        for child in children[rev]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
        ready.sort(key=key.__getitem__)
    return order


def matrix(order: list[str], files: dict[str, RevisionFile], ctxs: list[EnvContext],
           details: list[EnvironmentReport]) -> list[MatrixRow]:
    """Return one row per revision with every environment's state of it."""
    seen = {ctx.name: set(ctx.env.version_locations) for ctx in ctxs}
    applied = {d.env: {a.revision: a.applied_at for a in d.applied} for d in details}
    current = {d.env: d for d in details}
    rows = []
    for rev in order:
        cells = {}
        for ctx in ctxs:
            d = current[ctx.name]
            if files[rev].folder not in seen[ctx.name]:
                cells[ctx.name] = Cell(state=NOT_VISIBLE)
            elif not d.reachable:
                cells[ctx.name] = Cell(state="unknown")
            elif rev in d.pending:
                cells[ctx.name] = Cell(state=PENDING)
            else:
                cells[ctx.name] = Cell(state=APPLIED, applied_at=applied[ctx.name].get(rev))
        rows.append(MatrixRow(revision=rev, message=files[rev].message, cells=cells))
    return rows


def environment_report(ctx: EnvContext, order: list[str], ledger: Ledger | None, *, since: datetime | None,
                       drift: bool) -> EnvironmentReport:
    """Return what one environment's database and history say; an unreachable one is reported as such."""
    base = {"env": ctx.name, "url": mask_url(ctx.url), "protected": ctx.env.protected,
            "promote_from": ctx.env.promote_from}
    try:
        visible = [r for r in order if r in ctx.graph.revisions]
        target = list(ctx.graph.heads)
        if database_missing(ctx):
            facts: dict[str, Any] = {"heads": (), "applied_rows": {}, "notable": [], "runs": 0, "steps": 0}
        else:
            facts = run_with_connection(ctx.url, ctx.name, lambda conn: _read_history(conn, ctx, since))
    except (OrchestratorError, sa.exc.DBAPIError) as exc:
        error = str(exc) if isinstance(exc, OrchestratorError) else f"environment '{ctx.name}': {first_line(exc)}"
        return EnvironmentReport(**base, reachable=False, error=error, current_heads=[], target_heads=[],
                                 pending=[], applied=[], notable_runs=[], run_count=0, step_count=0,
                                 drift=_drift(ctx) if drift else None)
    heads = facts["heads"]
    done = applied_revisions(ctx, heads)
    applied = [_applied(ctx, rev, facts["applied_rows"].get(rev), ledger) for rev in order if rev in done]
    if since is not None:
        applied = [a for a in applied if a.applied_at is not None]
    return EnvironmentReport(**base, reachable=True, error=None, current_heads=list(heads), target_heads=target,
                             pending=[r for r in visible if r not in done], applied=applied,
                             notable_runs=facts["notable"], run_count=facts["runs"], step_count=facts["steps"],
                             drift=_drift(ctx) if drift else None)


def _read_history(conn: Connection, ctx: EnvContext, since: datetime | None) -> dict[str, Any]:
    """Return heads, the applying step of each applied revision, notable runs and counts."""
    heads = current_heads(conn, ctx)
    schema = ctx.env.version_table_schema
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return {"heads": heads, "applied_rows": {}, "notable": [], "runs": 0, "steps": 0}
    runs, steps = history_tables(schema)
    in_period = [runs.c.started_at >= since] if since else []  # every run in the database, whatever its name
    run_ids = sa.select(runs.c.run_id).where(*in_period)
    facts = {"heads": heads,
             "applied_rows": _applying_steps(conn, ctx, sorted(applied_revisions(ctx, heads)), since),
             "notable": _notable_runs(conn, ctx, in_period),
             "runs": conn.execute(sa.select(sa.func.count()).select_from(runs).where(*in_period)).scalar_one(),
             "steps": conn.execute(sa.select(sa.func.count()).select_from(steps)
                                   .where(steps.c.run_id.in_(run_ids))).scalar_one()}
    conn.commit()
    return facts


def _applying_steps(conn: Connection, ctx: EnvContext, revisions: list[str],
                    since: datetime | None) -> dict[str, dict[str, Any]]:
    """Return, per applied revision, its latest successful upgrade (or stamp) step with the run's operator.

    One indexed lookup per revision (``ix_orchestrator_steps_revision`` walked
    from the newest step), so the cost follows the number of applied revisions,
    not the length of the history.
    """
    runs, steps = history_tables(ctx.env.version_table_schema)
    wanted = [steps.c.status == SUCCEEDED, steps.c.direction.in_(("up", "stamp")),
              steps.c.revision == sa.bindparam("rev")]
    if since is not None:
        wanted.append(steps.c.started_at >= since)
    query = (sa.select(steps.c.revision, steps.c.started_at, steps.c.duration_ms, steps.c.run_id, steps.c.reviewer,
                       steps.c.script_sha256, runs.c.operator, runs.c.env)
             .join(runs, runs.c.run_id == steps.c.run_id).where(*wanted)
             .order_by(steps.c.started_at.desc()).limit(1))
    repaired = (sa.select(steps.c.script_sha256, steps.c.started_at)
                .where(steps.c.status == SUCCEEDED, steps.c.direction == "repair", steps.c.revision == sa.bindparam("rev"))
                .order_by(steps.c.started_at.desc()).limit(1))
    found = {}
    for revision in revisions:
        row = conn.execute(query, {"rev": revision}).mappings().first()
        if row is not None:
            found[revision] = dict(row)
            repair = conn.execute(repaired, {"rev": revision}).mappings().first()
            if repair is not None and repair["started_at"] >= row["started_at"]:
                found[revision]["repaired_sha256"] = repair["script_sha256"]
    return found


def _notable_runs(conn: Connection, ctx: EnvContext, in_period: list[Any]) -> list[NotableRun]:
    """Return failed, blocked, interrupted, forced and still-running runs, oldest first."""
    runs, steps = history_tables(ctx.env.version_table_schema)
    notable = sa.or_(runs.c.status.in_((FAILED, BLOCKED, INTERRUPTED, RUNNING)), runs.c.forced_reason.is_not(None),
                     runs.c.env != ctx.name)
    rows = [dict(r) for r in conn.execute(sa.select(runs).where(*in_period, notable).order_by(runs.c.started_at))
            .mappings()]
    if not rows:
        return []
    bad: dict[str, list[FailedStep]] = {r["run_id"]: [] for r in rows}
    ids = list(bad)
    for chunk in range(0, len(ids), 500):
        query = (sa.select(steps.c.run_id, steps.c.revision, steps.c.direction, steps.c.status, steps.c.error)
                 .where(steps.c.run_id.in_(ids[chunk:chunk + 500]), steps.c.status != SUCCEEDED)
                 .order_by(steps.c.run_id, steps.c.seq))
        for s in conn.execute(query).mappings():
            bad[s["run_id"]].append(FailedStep(revision=s["revision"], direction=s["direction"], status=s["status"],
                                               error=s["error"]))
    dead = _runner_gone(conn, ctx) if any(r["status"] == RUNNING for r in rows) else False
    return [_notable(r, bad[r["run_id"]], dead, foreign=r["env"] != ctx.name) for r in rows]


def _notable(row: dict[str, Any], steps: list[FailedStep], runner_gone: bool, *, foreign: bool = False) -> NotableRun:
    """Return one notable run; a 'running' run whose runner no longer holds the lock is shown as interrupted."""
    status = INTERRUPTED if row["status"] == RUNNING and runner_gone else row["status"]
    reason = row["error"] or row["forced_reason"]
    if status != row["status"]:
        reason = "its runner is gone (the lock is free); recorded as running until the next run takes the lock"
    return NotableRun(run_id=row["run_id"], env=row["env"], foreign=foreign, command=row["command"], target=row["target"], status=status,
                      recorded_status=row["status"], started_at=_iso(row["started_at"]),
                      finished_at=_iso(row["finished_at"]) if row["finished_at"] else None, operator=row["operator"],
                      heads_before=(row["heads_before"] or "").split(), heads_after=(row["heads_after"] or "").split(),
                      forced=row["forced_reason"] is not None, reason=reason,
                      steps=steps)


def _runner_gone(conn: Connection, ctx: EnvContext) -> bool:
    """Return True when no runner holds the environment's migration lock (taken and given back at once)."""
    from orchestrator.executor import lock_scope

    lock = lock_for(conn, ctx.url, lock_scope(ctx))
    if not lock.try_acquire():
        return False
    lock.release()
    return True


def _applied(ctx: EnvContext, revision: str, row: dict[str, Any] | None, ledger: Ledger | None) -> AppliedRevision:
    """Return one applied revision with its applying step and whether the script still matches."""
    f = ctx.all_files.get(revision)
    on_disk = f.sha256 if f is not None else None
    recorded = row["script_sha256"] if row else None
    accepted = (row.get("repaired_sha256") or recorded) if row else None
    review = ledger.state(revision, on_disk) if ledger is not None and on_disk else "unreviewed"
    return AppliedRevision(
        revision=revision, message=f.message if f else "", applied_at=_iso(row["started_at"]) if row else None,
        operator=row["operator"] if row else None, duration_ms=row["duration_ms"] if row else None,
        run_id=row["run_id"] if row else None,
        recorded_env=row["env"] if row and row["env"] != ctx.name else None,
        reviewer=row["reviewer"] if row else None, review_state=review,
        recorded_sha256=recorded, script_sha256=on_disk, repaired_sha256=accepted if accepted != recorded else None,
        script_matches=(accepted == on_disk) if accepted and on_disk else None)


def _ledger(registry: Registry) -> Ledger | None:
    """Return the review ledger, or None when the registry names none."""
    try:
        return load_ledger(registry.reviews_path) if registry.reviews_path else None
    except ConfigError:
        return None


def _drift(ctx: EnvContext) -> Drift:
    """Return the environment's drift state (models against its database), as ``check`` judges it."""
    from orchestrator.drift import env_drift

    return Drift(**env_drift(ctx))  # never raises; a SQLite file not yet made reads as an empty database


def _iso(value: datetime) -> str:
    """Return a naive-UTC datetime as ISO-8601 text with a Z."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"


def parse_since(text: str) -> datetime:
    """Return the UTC start of a --since value (YYYY-MM-DD or an ISO-8601 time)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r} is not a date; use YYYY-MM-DD or an ISO-8601 time such as "
                          "2026-11-01T12:00:00Z") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value
