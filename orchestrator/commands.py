"""One public function per command-line verb, usable from Python as from the shell.

Each function takes a loaded :class:`~orchestrator.registry.Registry` (or an
:class:`~orchestrator.context.EnvContext`) and returns plain values; the CLI
only renders them and maps errors to exit codes.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.runtime.environment import EnvironmentContext

from orchestrator import alembic_compat
from orchestrator.context import EnvContext, alembic_options, contexts, selected_env
from orchestrator.db import dialect_name, first_line, make_engine, run_with_connection
from orchestrator.errors import (ConfigError, DatabaseError, GateRefused, GraphError, MigrationFailed, OrchestratorError,
                                 RevisionNotFound)
from orchestrator.executor import NOTHING, RunResult, execute, lock_scope, record_offline, record_refusal
from orchestrator.state import applied_revisions, database_missing, read_heads
from orchestrator.gate import Gate, default_gate, lint_findings, review_gate, review_problems, unacknowledged_errors
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT, acquire, lock_for
from orchestrator.plan import Plan, build_plan
from orchestrator.recorder import StepRecord, last_run, read_runs
from orchestrator.graph import build_environment_graph, unlabelled_heads
from orchestrator.loader import RevisionFile, path_for_display
from orchestrator.plan import Step
from orchestrator.registry import Registry, has_secret
from orchestrator.reviews import REVIEWED, load_ledger, update_ledger

if TYPE_CHECKING:
    from orchestrator.report import Report

StepCallback = Callable[[StepRecord], None] | None


def envs(registry: Registry) -> list[dict[str, Any]]:
    """Return every environment with its masked URL, folders and protection."""
    rows = []
    for env in registry.environments.values():
        url, error = None, None
        try:
            url = env.masked_url()
            make_engine(env.url(), env.name)  # an unknown or missing driver shows here; nothing connects
        except OrchestratorError as exc:
            error = str(exc)
        rows.append({
            "env": env.name, "url": url, "error": error,
            "version_locations": [path_for_display(p, registry.root) for p in env.version_locations],
            "authoring_location": path_for_display(env.authoring_location, registry.root),
            "promote_from": env.promote_from, "protected": env.protected,
            "default": env.name == registry.default_env,
        })
    return rows


def status(registry: Registry, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Return, for every environment, current heads, target heads, pending steps and the last run."""
    rows = []
    for ctx in contexts(registry, names):
        row: dict[str, Any] = {"env": ctx.name, "protected": ctx.env.protected, "current_heads": [],
                               "target_heads": [], "pending": None, "pending_revisions": [], "last_run": None,
                               "state": "unknown", "error": None, "gate": None}
        try:
            row["target_heads"] = sorted(ctx.graph.heads)
            heads = read_heads(ctx)
            row["current_heads"] = list(heads)
            plan = build_plan(ctx.name, "upgrade", "heads", heads, ctx.script, ctx.graph)
            row["pending"] = len(plan.steps)
            row["pending_revisions"] = [s.revision for s in plan.steps]
            row["last_run"] = _last_run_summary(ctx)
            row["state"] = "at heads" if plan.empty else "pending"
            if ctx.env.protected:
                row["gate"] = review_gate(plan, ctx)
                if row["gate"]:
                    row["state"] = "pending; gate would refuse"
            if row["last_run"] and row["last_run"]["status"] in ("failed", "interrupted"):
                row["state"] = f"last run {row['last_run']['status']}"
        except OrchestratorError as exc:
            row["state"], row["error"] = "error", str(exc)
        rows.append(row)
    return rows


def _last_run_summary(ctx: EnvContext) -> dict[str, Any] | None:
    """Return the newest run of an environment, with the failed step if any."""
    if database_missing(ctx):
        return None
    run = run_with_connection(ctx.url, ctx.name, lambda conn: last_run(conn, ctx.name, ctx.env.version_table_schema))
    if run is None:
        return None
    failed = next((s for s in run["steps"] if s["status"] != "succeeded"), None)
    return {"run_id": run["run_id"], "command": run["command"], "status": run["status"],
            "started_at": _iso(run["started_at"]), "operator": run["operator"], "error": run["error"],
            "failed_revision": failed["revision"] if failed else None, "env": run["env"], "foreign": run["foreign"]}


def plan(ctx: EnvContext, target: str = "heads", *, command: str = "upgrade") -> Plan:
    """Return the steps ``command`` to ``target`` would run; touches nothing."""
    return build_plan(ctx.name, command, target, read_heads(ctx), ctx.script, ctx.graph)


def upgrade(ctx: EnvContext, target: str = "heads", *, sql: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            force: bool = False, reason: str | None = None, on_step: StepCallback = None,
            gate: Gate = default_gate, on_note: Callable[[str], None] | None = None) -> RunResult | str:
    """Upgrade the environment to ``target`` (all heads by default); with ``sql``, return the SQL instead.

    ``force`` with ``reason`` overrides the refusals that allow it (recorded in the run).
    With ``sql`` the gate judges the steps first (see :func:`offline_sql`); ``on_note``
    hears which starting point the SQL was rendered from.
    """
    if sql:
        return offline_sql(ctx, "upgrade", target, force=force, reason=reason, gate=gate, on_note=on_note,
                           lock_timeout=lock_timeout)
    return execute(ctx, "upgrade", target, lock_timeout=lock_timeout, force=force, forced_reason=reason,
                   on_step=on_step, gate=gate)


def downgrade(ctx: EnvContext, target: str, *, sql: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
              force: bool = False, reason: str | None = None, on_step: StepCallback = None,
              gate: Gate = default_gate) -> RunResult | str:
    """Downgrade the environment to ``target``; with ``sql``, return the SQL instead."""
    if sql:
        return offline_sql(ctx, "downgrade", target)
    return execute(ctx, "downgrade", target, lock_timeout=lock_timeout, force=force, forced_reason=reason,
                   on_step=on_step, gate=gate)


def stamp(ctx: EnvContext, target: str, *, sql: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
          force: bool = False, reason: str | None = None, gate: Gate = default_gate) -> RunResult | str:
    """Set the version table to ``target`` without running migrations."""
    if sql:
        return offline_sql(ctx, "stamp", target)
    return execute(ctx, "stamp", target, lock_timeout=lock_timeout, force=force, forced_reason=reason, gate=gate)


OFFLINE_COMMAND = "upgrade --sql"  # how offline SQL the gate refused is named in the history


def offline_sql(ctx: EnvContext, command: str, target: str, *, force: bool = False, reason: str | None = None,
                gate: Gate = default_gate, on_note: Callable[[str], None] | None = None,
                lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> str:
    """Return the SQL Alembic would emit for ``command`` to ``target`` (``FROM:TO`` ranges allowed).

    For ``upgrade``: without ``FROM:`` the SQL starts at the database's current
    heads when it is reachable (else at base), and ``on_note`` is told which.
    The gate judges the rendered steps first: a refusal is recorded as a
    blocked run and raised, as ``upgrade`` would; ``force`` with ``reason``
    prints the SQL anyway and records a finished run ``upgrade --sql`` with the
    reason. A script that cannot render offline is a MigrationFailed naming it.
    """
    ctx.graph
    if command != "upgrade":
        return _render_offline(ctx, command, target)
    if ":" in target:
        start_text, destination = target.split(":", 1)
        heads = _offline_start(ctx, start_text)
    else:
        destination, (heads, note) = target, _current_start(ctx)
        if on_note is not None:
            on_note(note)
    plan = build_plan(ctx.name, "upgrade", destination, heads, ctx.script, ctx.graph)
    forced = reason.strip() if force and reason and reason.strip() else None
    reasons = gate(plan, ctx, None, force=force, reason=forced) if plan.steps else []
    if reasons and forced is None:
        record_offline(ctx, OFFLINE_COMMAND, plan, reasons, lock_timeout=lock_timeout)  # raises the refusal
    start: str | tuple[str, ...] = target.split(":", 1)[0] if ":" in target else heads
    sql = _render_offline(ctx, "upgrade", destination, start, plan)
    if reasons:
        record_offline(ctx, OFFLINE_COMMAND, plan, reasons, forced_reason=forced, lock_timeout=lock_timeout)
    return sql


def _offline_start(ctx: EnvContext, start: str) -> tuple[str, ...]:
    """Return the revisions a ``FROM:`` names (``base``: none)."""
    if start in ("", "base"):
        return ()
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    from orchestrator.plan import unknown_revision

    try:
        return tuple(sorted(r.revision for r in ctx.script.get_revisions(start) if r is not None))
    except (RevisionError, CommandError) as exc:
        raise unknown_revision(ctx.name, start, exc, ctx.graph) from None


def _current_start(ctx: EnvContext) -> tuple[tuple[str, ...], str]:
    """Return the database's current heads to render from (none when unreachable) and a note saying which."""
    try:
        heads = read_heads(ctx)
    except DatabaseError as exc:
        return (), f"{ctx.name}: rendering from base: the database is unreachable: {exc}; pass FROM:TO to choose the start"
    if not heads:
        return (), f"{ctx.name}: rendering from base: the database has no revision applied"
    return heads, f"{ctx.name}: rendering from the database's current heads {', '.join(heads)}"


def _render_offline(ctx: EnvContext, command: str, target: str, start: str | tuple[str, ...] = (),
                    plan: Plan | None = None) -> str:
    """Return Alembic's offline SQL for ``command`` to ``target`` from ``start`` (a ``FROM``, or heads).

    Rendered on the environment's judged ScriptDirectory (the scripts run from
    the bytes that were hashed, never re-read from disk), the way
    ``alembic.command.<verb>(sql=True)`` renders on one it builds itself.
    """
    if ":" in target:  # downgrade/stamp FROM:TO, as Alembic's command line takes it
        start, target = target.split(":", 1)
    starting: str | tuple[str, ...] | None = start if isinstance(start, str) else (
        start[0] if len(start) == 1 else start)
    starting = starting or None
    if command == "downgrade" and starting is None:
        raise ConfigError(f"environment '{ctx.name}': downgrade --sql needs a range FROM:TO (e.g. heads:{target}); "
                          "offline there is no database to read the start from")
    buffer = io.StringIO()
    cfg = ctx.config(output_buffer=buffer)
    script = ctx.script
    fn = alembic_compat.step_function(script, command, target)
    try:
        with selected_env(ctx.name):
            if fn is None:
                if ctx.env.protected or isinstance(starting, tuple):
                    raise ConfigError(
                        f"environment '{ctx.name}': this Alembic has no tested way to render {command} --sql from the "
                        f"judged scripts; install alembic within {alembic_compat.tested_range()}")
                getattr(alembic_command, command)(cfg, f"{starting}:{target}" if starting else target, sql=True)
            else:
                destination = (target,) if command == "stamp" else target
                with EnvironmentContext(cfg, script, fn=fn, as_sql=True, starting_rev=starting,
                                        destination_rev=destination):
                    script.run_env()
    except OrchestratorError:
        raise
    except Exception as exc:
        failed = _failed_offline_step(ctx, exc, buffer.getvalue(), plan)
        if failed is not None:
            raise MigrationFailed(
                f"environment '{ctx.name}': revision {failed.revision} ({failed.path}) cannot render as SQL offline: "
                f"{type(exc).__name__}: {first_line(exc)}; a script that reads the database (or uses batch mode on "
                "SQLite) cannot run offline: skip that part under `context.is_offline_mode()`, or upgrade without --sql",
                env=ctx.name, revision=failed.revision) from None
        raise ConfigError(
            f"environment '{ctx.name}': cannot render {command} {target} as SQL: {first_line(exc)}; "
            "scripts that read the database or use batch mode on SQLite cannot run offline"
        ) from None
    return buffer.getvalue()


def _failed_offline_step(ctx: EnvContext, exc: BaseException, output: str, plan: Plan | None) -> Step | None:
    """Return the planned step whose script raised ``exc`` while rendering, if one can be told."""
    if plan is None or not plan.steps:
        return None
    by_file = {os.path.realpath(ctx.graph.revisions[s.revision].path): s
               for s in plan.steps if s.revision in ctx.graph.revisions}
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:  # the error, then what it was raised from
        seen.add(id(error))
        frames = traceback.extract_tb(error.__traceback__)
        for frame in reversed(frames):  # the innermost script frame is the revision that failed
            step = by_file.get(os.path.realpath(frame.filename))
            if step is not None:
                return step
        error = error.__cause__ or error.__context__
    # otherwise Alembic failed around a step: it announces each one ("-- Running upgrade A -> B") before running it
    started = sum(1 for line in output.splitlines() if line.startswith("-- Running "))
    return plan.steps[started - 1] if 0 < started <= len(plan.steps) else None


def current(ctx: EnvContext) -> dict[str, Any]:
    """Return the revisions the environment's database is at."""
    ctx.graph
    heads = read_heads(ctx)
    return {"env": ctx.name, "heads": [_revision_info(ctx, h) for h in heads]}


def heads(ctx: EnvContext) -> dict[str, Any]:
    """Return the head revisions of the graph the environment sees."""
    return {"env": ctx.name, "heads": [_revision_info(ctx, h) for h in ctx.graph.heads]}


def history(ctx: EnvContext) -> dict[str, Any]:
    """Return every revision the environment sees, newest first, as Alembic orders them."""
    revisions = [_revision_info(ctx, s.revision) for s in ctx.script.walk_revisions()]
    return {"env": ctx.name, "revisions": revisions}


def _revision_info(ctx: EnvContext, revision: str) -> dict[str, Any]:
    """Return what the orchestrator knows of one revision."""
    found = ctx.graph.get(revision) or ctx.all_files.get(revision)
    if found is None:
        return {"revision": revision, "message": None, "folder": None, "path": None, "down_revisions": [],
                "branch_labels": [], "is_head": False}
    return {"revision": revision, "message": found.message, "folder": path_for_display(found.folder, ctx.registry.root),
            "path": path_for_display(found.path, ctx.registry.root), "down_revisions": list(found.down_revisions),
            "depends_on": list(found.depends_on), "branch_labels": list(found.branch_labels),
            "is_head": revision in ctx.graph.heads}


def revision(ctx: EnvContext, message: str, *, autogenerate: bool = False, head: str | None = None,
             branch_label: str | None = None, depends_on: str | None = None, rev_id: str | None = None) -> dict[str, Any]:
    """Write a new revision into the environment's authoring folder and return where."""
    ctx.graph
    cfg = ctx.config()
    if head is None:
        if len(ctx.graph.heads) > 1 and not branch_label:
            raise ConfigError(
                f"environment '{ctx.name}' has {len(ctx.graph.heads)} heads ({', '.join(ctx.graph.heads)}); "
                "pass --head REV (or --head base --branch-label NAME for a new branch)")
        head = "head"
    try:
        # Alembic prints "Generating ..." on stdout; keep stdout for our result
        with selected_env(ctx.name), contextlib.redirect_stdout(sys.stderr):
            script = alembic_command.revision(
                cfg, message=message, autogenerate=autogenerate, head=head, branch_label=branch_label,
                version_path=str(ctx.env.authoring_location), rev_id=rev_id, depends_on=depends_on)
    except OrchestratorError:
        raise
    except Exception as exc:
        if isinstance(exc.__cause__, OrchestratorError):  # env.py's own error (e.g. the database is down), as is
            raise exc.__cause__ from None
        raise ConfigError(f"environment '{ctx.name}': cannot create revision: {first_line(exc)}") from None
    scripts = script if isinstance(script, list) else [script]
    return {"env": ctx.name, "revisions": [
        {"revision": s.revision, "path": path_for_display(s.path, ctx.registry.root)} for s in scripts if s is not None]}


def runs(ctx: EnvContext, *, limit: int = 20, run_id: str | None = None) -> dict[str, Any]:
    """Return the run history of the environment's database, newest first, with steps.

    Every run recorded there is returned, whatever environment name it carries;
    those recorded under another name have ``foreign: true``.
    """
    if database_missing(ctx):
        return {"env": ctx.name, "runs": []}
    rows = run_with_connection(ctx.url, ctx.name, lambda conn: read_runs(conn, ctx.name, ctx.env.version_table_schema,
                                                                     limit=limit, run_id=run_id))
    return {"env": ctx.name, "runs": [_jsonable(r) for r in rows]}


def _jsonable(value: Any) -> Any:
    """Return a history row with datetimes as ISO text and id lists split."""
    if isinstance(value, dict):
        out = {k: _jsonable(v) for k, v in value.items()}
        for key in ("heads_before", "heads_after", "down_revisions"):
            if key in out:
                out[key] = out[key].split() if out[key] else []
        return out
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return _iso(value)


def _iso(value: Any) -> Any:
    """Return a datetime as ISO-8601 UTC text; anything else unchanged."""
    return value.isoformat() + "Z" if hasattr(value, "isoformat") and hasattr(value, "hour") else value


def promotion_target(registry: Registry, to: str) -> tuple[EnvContext, EnvContext, tuple[str, ...], list[str]]:
    """Return (source, target, heads to reach, revisions the target has that the source has not)."""
    target, = contexts(registry, [to])
    if target.env.promote_from is None:
        raise ConfigError(f"environment '{to}' has no promote_from in {registry.path}; use `upgrade --env {to}` instead")
    source = EnvContext(registry, registry.env(target.env.promote_from), target.all_files)
    try:
        source_heads = read_heads(source, must_exist=True)
    except OrchestratorError as exc:
        raise DatabaseError(f"cannot promote to '{to}': its source environment '{source.name}' is unreachable: {exc}",
                            env=to) from None
    applied = applied_revisions(source, source_heads)
    wanted = applied & set(target.graph.revisions)
    ahead = sorted(applied_revisions(target, read_heads(target)) - applied)
    referenced = {d for r in wanted for d in target.graph.revisions[r].down_revisions}
    return source, target, tuple(sorted(wanted - referenced)), ahead


def promote(registry: Registry, to: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_step: StepCallback = None,
            gate: Gate = default_gate) -> RunResult:
    """Apply to ``to`` exactly the revisions its ``promote_from`` environment has applied."""
    source, target, goal, ahead = promotion_target(registry, to)
    if ahead:
        record_refusal(target, "upgrade", "promote", [
            f"it has revisions its source '{source.name}' has not applied: {', '.join(ahead)}; "
            f"promote never downgrades: apply them to '{source.name}' first or downgrade '{to}' explicitly"],
            lock_timeout=lock_timeout)
    if not goal:
        heads = read_heads(target)
        empty = build_plan(to, "upgrade", "heads", heads, target.script, target.graph)
        return RunResult(to, "promote", "", NOTHING, Plan(to, "upgrade", "", heads, (), empty.fingerprint), heads)
    return execute(target, "upgrade", goal[0] if len(goal) == 1 else goal, lock_timeout=lock_timeout,
                   on_step=on_step, gate=gate)


def rollout(registry: Registry, to: str | None = None, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            on_step: StepCallback = None, on_env: Callable[[str], None] | None = None,
            gate: Gate = default_gate) -> list[RunResult]:
    """Upgrade the first environment of the chain to heads, then promote along it; stop at the first error."""
    results = []
    for env in registry.promotion_chain(to):
        if on_env is not None:
            on_env(env.name)
        if env.promote_from is None:
            ctx, = contexts(registry, [env.name])
            results.append(execute(ctx, "upgrade", "heads", lock_timeout=lock_timeout, on_step=on_step, gate=gate))
        else:
            results.append(promote(registry, env.name, lock_timeout=lock_timeout, on_step=on_step, gate=gate))
    return results


def ini(ctx: EnvContext, output: str | None = None) -> str:
    """Return (and with ``output``, write) an alembic.ini for stock ``alembic`` on this environment."""
    options = alembic_options(ctx.env, ctx.registry, separator="os")
    url = ctx.url
    lines = [
        f"# Written by `orchestrator ini --env {ctx.name}`; the registry stays the source of truth.",
        "# The packaged env.py reads the database URL from the registry at run time,",
        "# so no password is ever written here.",
        "[alembic]",
    ]
    for key, value in options.items():
        lines.append(f"{key} = {value}")
    if not has_secret(url):
        lines.append(f"sqlalchemy.url = {url.render_as_string(hide_password=False).replace('%', '%%')}")
    text = "\n".join(lines) + "\n"
    if output:
        write_file(output, text)
    return text


def write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None


def report(registry: Registry, names: list[str] | None = None, *, since: str | None = None,
           drift: bool = False) -> "Report":
    """Return the audit report over ``names`` (every environment if None); ``since`` is YYYY-MM-DD or ISO-8601."""
    from orchestrator.report import build_report, parse_since

    return build_report(registry, names, since=parse_since(since) if since else None, drift=drift)


# ---------------------------------------------------------------------------- the gate's verbs


def _find_revision(ctx: EnvContext, revision: str) -> RevisionFile:
    """Return the revision file with this id (or unique id prefix) in any folder."""
    files = ctx.all_files
    if revision in files:
        return files[revision]
    matches = [f for rev, f in files.items() if rev.startswith(revision)] if len(revision) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"revision prefix '{revision}' is ambiguous: {', '.join(sorted(m.revision for m in matches))}")
    raise RevisionNotFound(f"unknown revision '{revision}': no version folder in {ctx.registry.path} holds it",
                           revision=revision)


def _check_rules(rules: tuple[str, ...]) -> None:
    """Refuse lint rule ids that do not exist."""
    from orchestrator.lint import unknown_rules

    if message := unknown_rules(rules):
        raise ConfigError(message)


def review_approve(registry: Registry, revision: str, reviewer: str, *, note: str | None = None,
                   ack: tuple[str, ...] = ()) -> dict[str, Any]:
    """Approve the current content of ``revision`` (acknowledging lint rules ``ack``) in the ledger."""
    if not reviewer.strip():
        raise ConfigError("--reviewer must name who reviewed the revision")
    _check_rules(ack)
    ctx = contexts(registry)[0]
    found = _find_revision(ctx, revision)
    ledger = update_ledger(registry.reviews_path, lambda current: current.approve(
        found.revision, found.sha256, reviewer.strip(), note=note, acknowledged=ack))
    unacked = []
    for env_ctx in contexts(registry):
        if env_ctx.env.protected and found.revision in env_ctx.graph.revisions:
            step = next(s for s in build_plan(env_ctx.name, "upgrade", found.revision, (), env_ctx.script,
                                              env_ctx.graph).steps if s.revision == found.revision)
            unacked += [{"env": env_ctx.name, "rule": f.rule, "message": f.message}
                        for f in unacknowledged_errors(env_ctx, step, ledger)]
    return {"revision": found.revision, "sha256": found.sha256, "reviewer": reviewer.strip(), "note": note,
            "acknowledged": list(ack), "path": path_for_display(found.path, registry.root),
            "unacknowledged_errors": unacked}


def review_revoke(registry: Registry, revision: str) -> dict[str, Any]:
    """Remove the approval of ``revision`` from the ledger."""
    found = _find_revision(contexts(registry)[0], revision)
    update_ledger(registry.reviews_path, lambda current: current.revoke(found.revision))
    return {"revision": found.revision, "revoked": True}


def _review_steps(ctx: EnvContext, everything: bool) -> tuple[Step, ...]:
    """Return the steps to judge: pending ones (from the database), or every visible revision."""
    heads = () if everything else read_heads(ctx)
    return build_plan(ctx.name, "upgrade", "heads", heads, ctx.script, ctx.graph).steps


def review_status(ctx: EnvContext, *, everything: bool = False) -> dict[str, Any]:
    """Return each pending revision's review state (reviewed, unreviewed, stale) and lint findings."""
    ledger = load_ledger(ctx.registry.reviews_path)
    rows = []
    for step in _review_steps(ctx, everything):
        approval = ledger.approvals.get(step.revision)
        acked = set(approval.acknowledged) if approval and approval.sha256 == step.sha256 else set()
        rows.append({
            "revision": step.revision, "path": step.path, "message": step.message, "sha256": step.sha256,
            "state": ledger.state(step.revision, step.sha256),
            "reviewer": approval.reviewer if approval else None,
            "approved_at": approval.approved_at if approval else None,
            "approved_sha256": approval.sha256 if approval else None,
            "lint": [{"rule": f.rule, "severity": f.severity, "message": f.message, "acknowledged": f.rule in acked}
                     for f in lint_findings(ctx, step.revision)],
        })
    return {"env": ctx.name, "protected": ctx.env.protected, "revisions": rows}


def review_check(ctx: EnvContext, *, everything: bool = False) -> dict[str, Any]:
    """Return the problems that would make the gate refuse what is pending (the CI check for a pull request)."""
    ledger = load_ledger(ctx.registry.reviews_path)
    steps = _review_steps(ctx, everything)
    return {"env": ctx.name, "checked": [s.revision for s in steps], "problems": review_problems(ctx, steps, ledger)}


def lint(ctx: EnvContext, revisions: tuple[str, ...] = (), *, pending: bool = False) -> dict[str, Any]:
    """Return the lint findings of ``revisions`` (default: every revision the environment sees, in order)."""
    from orchestrator.lint import check_dialect

    check_dialect(dialect_name(ctx.url), ctx.name)
    if revisions:
        chosen = [_find_revision(ctx, r).revision for r in revisions]
        unseen = [r for r in chosen if r not in ctx.graph.revisions]
        if unseen:
            raise RevisionNotFound(f"environment '{ctx.name}' does not see {', '.join(unseen)}; "
                                   "pass an --env that lists its folder", env=ctx.name)
    else:
        chosen = [s.revision for s in _review_steps(ctx, not pending)]
    findings = [{"revision": rev, "rule": f.rule, "severity": f.severity, "message": f.message,
                 "statement": f.statement} for rev in chosen for f in lint_findings(ctx, rev)]
    return {"env": ctx.name, "dialect": dialect_name(ctx.url), "revisions": chosen, "findings": findings}


def verify(registry: Registry, names: list[str] | None = None) -> dict[str, Any]:
    """Return integrity findings: unusable graphs, unknown, edited or unrecorded applied revisions, a database owned
    by another environment or runs recorded in it under other names, unexpected heads."""
    findings: list[str] = []
    unreachable: list[str] = []
    try:
        envs = contexts(registry, names)
    except OrchestratorError as exc:
        return {"findings": [str(exc)], "unreachable": []}
    for ctx in envs:
        try:
            ctx.graph
        except OrchestratorError as exc:
            findings.append(str(exc))
            continue
        findings += _head_findings(ctx)
        try:
            findings += _database_findings(ctx)
            findings += _dead_run_findings(ctx)
        except DatabaseError as exc:
            unreachable.append(str(exc))
    return {"findings": findings, "unreachable": unreachable}


def _head_findings(ctx: EnvContext) -> list[str]:
    """Report several heads on unlabelled branches (a merge is missing)."""
    loose = unlabelled_heads(ctx.graph)
    if len(loose) > 1:
        return [f"environment '{ctx.name}': {len(loose)} heads on unlabelled branches ({', '.join(loose)}); "
                f"merge them (`alembic merge`) or give each branch a label"]
    return []


def _database_findings(ctx: EnvContext) -> list[str]:
    """Compare what the database says was applied, and by whom, with the scripts on disk and the registry."""
    heads = read_heads(ctx)
    if database_missing(ctx):
        return []
    facts = run_with_connection(ctx.url, ctx.name, lambda conn: _history_facts(conn, ctx))
    findings = _ownership_findings(ctx, facts)
    unknown = []
    for head in heads:
        if head not in ctx.graph.revisions:
            other = ctx.all_files.get(head)
            where = f"only in {other.folder.name}/, which '{ctx.name}' does not list" if other else "in no version folder"
            unknown.append(f"environment '{ctx.name}': the database is at revision {head}, which is {where}")
    findings += unknown
    if not heads or unknown:
        return findings
    recorded = facts["applied"]
    for rev in sorted(applied_revisions(ctx, heads)):
        found, entry = ctx.graph.get(rev), recorded.get(rev)
        if found is None or entry is None or entry["sha256"] is None or entry["sha256"] == found.sha256:
            continue
        when = entry["started_at"].strftime("%Y-%m-%d %H:%M:%S")
        how = "accepted by repair" if entry.get("direction") == "repair" else "applied"
        findings.append(
            f"environment '{ctx.name}': revision {rev} ({found.display_path(ctx.registry.root)}) changed after it was "
            f"{how}: sha256 {entry['sha256']} when {how} (run {entry['run_id'][:12]}, {when} UTC), "
            f"{found.sha256} on disk")
    return findings + _unrecorded_findings(ctx, heads, facts)


def _history_facts(conn: Any, ctx: EnvContext) -> dict[str, Any]:
    """Read what verify compares from the database's history: applied hashes, owner, foreign runs, stamps, start."""
    from orchestrator.recorder import applied_hashes, first_heads, foreign_runs, read_identity, stamped_heads

    schema = ctx.env.version_table_schema
    facts = {"applied": applied_hashes(conn, ctx.name, schema, repairs=True), "identity": read_identity(conn, schema),
             "foreign": foreign_runs(conn, ctx.name, schema), "stamped": stamped_heads(conn, schema),
             "first_heads": first_heads(conn, schema)}
    conn.rollback()
    return facts


def _ownership_findings(ctx: EnvContext, facts: dict[str, Any]) -> list[str]:
    """Report a database owned by another environment, and runs recorded in it under other environments' names."""
    from orchestrator.identity import is_foreign, owner_text

    findings = []
    identity = facts["identity"]
    if is_foreign(identity, ctx):
        findings.append(f"environment '{ctx.name}': its database belongs to {owner_text(identity)}; "
                        f"check {ctx.env.url_source()}")
    for entry in facts["foreign"]:
        run = entry["newest"]
        forced = ", forced" if run["forced_reason"] else ""
        count = f"{entry['count']} run{'s' if entry['count'] != 1 else ''}"
        findings.append(
            f"environment '{ctx.name}': {count} recorded in its database under environment '{entry['env']}' "
            f"(newest: run {run['run_id'][:12]}, {run['command']} {run['status']}{forced}, "
            f"{run['started_at'].strftime('%Y-%m-%d %H:%M:%S')} UTC); another environment's name reached this "
            f"database: see `orchestrator runs --env {ctx.name}`")
    return findings


def _unrecorded_findings(ctx: EnvContext, heads: tuple[str, ...], facts: dict[str, Any]) -> list[str]:
    """Report applied revisions no recorded run accounts for ("applied without a record").

    A revision is accounted for by a succeeded upgrade step, by a stamp or adopt
    that reached it or a revision above it, or by the history having started
    above it (the oldest run's heads before, else the heads when the identity was
    recorded: what the database had when the orchestrator first wrote there).
    """
    start = "the database holds no run history" if facts["first_heads"] is None else None
    covered = applied_revisions(ctx, facts["first_heads"] or ())
    for stamped in facts["stamped"]:
        covered |= applied_revisions(ctx, stamped)
    covered |= set(facts["applied"])
    missing = [r for r in _graph_order(ctx, applied_revisions(ctx, heads)) if r not in covered]
    if not missing:
        return []
    they, them = ("it", "it") if len(missing) == 1 else ("they", "them")
    if start is None:
        why = f"no succeeded upgrade step, stamp or adopt in the database's history accounts for {them}"
        remedy = f"{they} ran outside the orchestrator (no gate, no history): find out how (`orchestrator runs --env {ctx.name}`)"
    else:
        why = start
        remedy = (f"if {they} ran before the orchestrator was used here, any orchestrated run "
                  f"(`orchestrator upgrade --env {ctx.name}`) starts the history at {them}")
    return [f"environment '{ctx.name}': {len(missing)} revision{'s' if len(missing) != 1 else ''} applied without a "
            f"record ({', '.join(missing)}): the version table says applied, but {why}; {remedy}"]


def _graph_order(ctx: EnvContext, revisions: set[str]) -> list[str]:
    """Return ``revisions`` base first, as the report orders them."""
    from orchestrator.report import graph_order

    return [r for r in graph_order(ctx.all_files) if r in revisions]


def _dead_run_findings(ctx: EnvContext) -> list[str]:
    """Report runs recorded as running whose runner is gone: the lock is free (taken for an instant; nothing written)."""
    if database_missing(ctx):
        return []
    dead = run_with_connection(ctx.url, ctx.name, lambda conn: _runs_of_dead_runners(conn, ctx, held=False))
    return [f"environment '{ctx.name}': run {_run_phrase(r)} is recorded as running but its runner is gone (the "
            f"migration lock is free); mark it interrupted with `orchestrator repair --env {ctx.name} --reason TEXT`"
            for r in dead]


def _runs_of_dead_runners(conn: Any, ctx: EnvContext, *, held: bool) -> list[dict[str, Any]]:
    """Return the runs left running in the database; unless the lock is ``held``, try it once, without waiting.

    A held lock proves that no runner is alive, so every 'running' run there is a dead runner's.
    """
    from orchestrator.recorder import RUNS_TABLE, running_runs

    schema = ctx.env.version_table_schema
    if held:
        return running_runs(conn, schema)
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return []
    probe = lock_for(conn, ctx.url, lock_scope(ctx))
    if not probe.try_acquire():
        return []  # a runner holds the lock: its run is alive
    try:
        return running_runs(conn, schema)
    finally:
        probe.release()


def _run_phrase(run: dict[str, Any]) -> str:
    """Return a run as the lock's waiter names it: id prefix, command, operator, start time."""
    return (f"{run['run_id'][:12]} ({run['command']} by {run['operator']}, "
            f"started {run['started_at'].strftime('%Y-%m-%d %H:%M:%S')} UTC)")


def repair(ctx: EnvContext, *, reason: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> dict[str, Any]:
    """Repair the environment's history under its lock; nothing is ever deleted.

    Runs left 'running' by dead runners (holding the lock proves them dead) are marked
    interrupted; an applied script edited since is accepted only when the ledger approves
    its new sha256, recorded as a ``repair`` step (old and new sha256) that ``verify``
    then honours. An edited script without that approval refuses the whole repair
    (recorded as a blocked run, nothing changed). A repair with nothing to do records nothing.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ConfigError("repair: --reason must say why the history is being repaired; it is recorded")
    ctx.graph  # an unusable graph is reported before touching the database
    if database_missing(ctx):
        return _repaired(ctx, None, [], [])

    def work(conn: Any) -> dict[str, Any]:
        lock = lock_for(conn, ctx.url, lock_scope(ctx))
        acquire(lock, conn=conn, env=ctx.name, schema=ctx.env.version_table_schema, timeout=lock_timeout)
        try:
            ctx.reload()  # judge the scripts as they are now that no one else runs
            return _repair_locked(conn, ctx, reason)
        finally:
            with contextlib.suppress(Exception):
                lock.release()

    return run_with_connection(ctx.url, ctx.name, work)


def _repair_locked(conn: Any, ctx: EnvContext, reason: str) -> dict[str, Any]:
    """Decide and record one repair, with the environment's lock held."""
    from orchestrator.recorder import BLOCKED, RUNS_TABLE, SUCCEEDED, Recorder, applied_hashes
    from orchestrator.state import current_heads

    schema = ctx.env.version_table_schema
    if not sa.inspect(conn).has_table(RUNS_TABLE, schema=schema):
        return _repaired(ctx, None, [], [])  # no history: nothing was ever recorded here
    heads = current_heads(conn, ctx)
    dead = _runs_of_dead_runners(conn, ctx, held=True)
    recorded = applied_hashes(conn, ctx.name, schema, repairs=True)
    edited = [(found, entry["sha256"]) for rev in sorted(applied_revisions(ctx, heads))
              if (found := ctx.graph.get(rev)) is not None and (entry := recorded.get(rev)) is not None
              and entry["sha256"] is not None and entry["sha256"] != found.sha256]
    ledger = load_ledger(ctx.registry.reviews_path) if edited else None
    accepted, reasons = [], []
    for found, old in edited:
        where = found.display_path(ctx.registry.root)
        reviewer = ledger.reviewer(found.revision, found.sha256) if ledger is not None else None
        if ledger is not None and reviewer is not None and ledger.state(found.revision, found.sha256) == REVIEWED:
            accepted.append({"revision": found.revision, "path": where, "old_sha256": old, "new_sha256": found.sha256,
                             "reviewer": reviewer, "down_revisions": found.down_revisions})
        else:
            reasons.append(f"revision {found.revision} ({where}) changed after it was applied (sha256 {old} when "
                           f"applied, {found.sha256} on disk) and its new content is not approved; review the change "
                           f"and run `orchestrator review approve {found.revision} --reviewer NAME`, then repair again")
    recorder = Recorder(conn, ctx.name, schema)
    if reasons:
        recorder.start_run(command="repair", target=None, heads_before=heads, fingerprint=None, forced_reason=reason,
                           status=BLOCKED, error="; ".join(reasons))
        conn.commit()
        message = (f"{ctx.name}: refused: {reasons[0]}" if len(reasons) == 1 else
                   f"{ctx.name}: refused for {len(reasons)} reasons:\n" + "\n".join(f"  - {r}" for r in reasons))
        raise GateRefused(message, env=ctx.name, reasons=tuple(reasons))
    if not dead and not accepted:
        return _repaired(ctx, None, [], [])
    run_id = recorder.start_run(command="repair", target=None, heads_before=heads, fingerprint=None,
                                forced_reason=reason)
    recorder.interrupt_runs([r["run_id"] for r in dead], heads,
                            "runner stopped before finishing (process killed or connection lost); "
                            f"marked by repair run {run_id[:12]}")
    for a in accepted:
        recorder.record_step(revision=a["revision"], down_revisions=a["down_revisions"], direction="repair",
                             sha256=a["new_sha256"], status=SUCCEEDED, reviewer=a["reviewer"],
                             error=f"accepted sha256 {a['new_sha256']} in place of {a['old_sha256']}, "
                                   f"approved by {a['reviewer']}")
    recorder.finish_run(status=SUCCEEDED, heads_after=heads)
    conn.commit()
    return _repaired(ctx, run_id, dead, accepted)


def _repaired(ctx: EnvContext, run_id: str | None, dead: list[dict[str, Any]],
              accepted: list[dict[str, Any]]) -> dict[str, Any]:
    """Return what a repair did as plain data."""
    return {"env": ctx.name, "status": "repaired" if run_id else NOTHING, "run_id": run_id,
            "interrupted_runs": [{"run_id": r["run_id"], "command": r["command"], "operator": r["operator"],
                                  "started_at": _iso(r["started_at"])} for r in dead],
            "accepted": [{k: v for k, v in a.items() if k != "down_revisions"} for a in accepted]}


def release(registry: Registry, revision: str, *, to: str | None = None) -> dict[str, Any]:
    """Move a reviewed candidate into the promoted folder (refused unless fresh and every graph stays closed)."""
    ctx = contexts(registry)[0]
    found = _find_revision(ctx, revision)
    target = _release_folder(registry, to)
    if found.folder == target:
        raise ConfigError(f"revision {found.revision} is already in {path_for_display(target, registry.root)}/")
    state = load_ledger(registry.reviews_path).state(found.revision, found.sha256)
    if state != REVIEWED:
        raise GateRefused(
            f"release: refused: revision {found.revision} ({path_for_display(found.path, registry.root)}) is {state}; "
            f"run `orchestrator review approve {found.revision} --reviewer NAME` first", revision=found.revision)
    destination = target / found.path.name
    moved = dict(ctx.all_files)
    moved[found.revision] = replace(found, path=destination, folder=target)
    for env in registry.environments.values():
        if target in env.version_locations:
            try:
                build_environment_graph(env.name, env.version_locations, moved, registry.root)
            except GraphError as exc:
                raise GateRefused(f"release: refused: moving {found.revision} would break the graph: {exc}",
                                  revision=found.revision) from None
    if destination.exists():
        raise ConfigError(f"release: {path_for_display(destination, registry.root)} already exists")
    _move(found.path, destination)
    return {"revision": found.revision, "from": path_for_display(found.path, registry.root),
            "to": path_for_display(destination, registry.root)}


def _release_folder(registry: Registry, to: str | None) -> Path:
    """Return the destination folder: ``to``, else the first folder of the end of the promotion chain."""
    if to is not None:
        folder = (registry.root / to).resolve()
        if folder not in registry.all_folders():
            raise ConfigError(f"release: '{to}' is not a version folder of any environment in {registry.path}")
        return folder
    return registry.promotion_chain()[-1].version_locations[0]


def _move(source: Path, destination: Path) -> None:
    """Move a script, through ``git mv`` when the repository tracks it."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", source.name], cwd=source.parent,
                             capture_output=True, text=True)
    if tracked.returncode == 0:
        done = subprocess.run(["git", "mv", str(source), str(destination)], cwd=source.parent, capture_output=True, text=True)
        if done.returncode == 0:
            return
    source.rename(destination)


def ci_matrix(registry: Registry, *, dialects: tuple[str, ...] = ("sqlite", "postgresql", "mysql"),
              names: list[str] | None = None) -> dict[str, Any]:
    """Return the environment x dialect matrix, shaped for a GitHub Actions ``strategy.matrix``."""
    unknown = [d for d in dialects if d not in ("sqlite", "postgresql", "mysql")]
    if unknown:
        raise ConfigError(f"unknown dialect {', '.join(repr(d) for d in unknown)}; choose from sqlite, postgresql, mysql")
    envs = [registry.env(n) for n in names] if names else list(registry.environments.values())
    include = [{"name": f"{env.name}-{dialect}", "env": env.name, "dialect": dialect, "protected": env.protected}
               for env in envs for dialect in dialects]
    return {"include": include}


# ---------------------------------------------------------------------------- import-sql


def import_sql(registry: Registry, directory: str | Path, into: str | Path, *, down_revision: str | None = None,
               dialect: str | None = None) -> dict[str, Any]:
    """Write one revision per numbered SQL file of ``directory`` into the version folder ``into``."""
    from orchestrator.sqlimport import as_revision_files, find_sql_files, plan_import, target_path, write_revisions

    if dialect not in (None, "sqlite", "postgresql", "mysql"):
        raise ConfigError(f"import-sql: unknown dialect {dialect!r}; choose from sqlite, postgresql, mysql")
    folder = _registry_folder(registry, into, "import-sql")
    files = find_sql_files(Path(directory))
    ctx = contexts(registry)[0]
    planned = plan_import(files, folder, ctx.all_files, root=registry.root, down_revision=down_revision,
                          mysql=dialect == "mysql")
    after = {**ctx.all_files, **as_revision_files(planned)}
    warnings = []
    for env in registry.environments.values():
        if folder in env.version_locations:
            before = build_environment_graph(env.name, env.version_locations, ctx.all_files, registry.root).heads
            try:
                graph = build_environment_graph(env.name, env.version_locations, after, registry.root)
            except GraphError as exc:
                raise ConfigError(f"import-sql: refused: the imported chain would break a graph: {exc}") from None
            if len(graph.heads) > max(len(before), 1):
                warnings.append(f"environment '{env.name}' will have {len(graph.heads)} heads instead of {len(before)} "
                                f"({', '.join(sorted(graph.heads))}); pass --down-revision to chain the import onto one")
    write_revisions(folder, list(planned.write))
    rows = [{"revision": r.source.revision, "version": r.source.number, "file": r.source.up.name,
             "down_file": r.source.down.name if r.source.down else None, "down_revision": r.down_revision,
             "path": path_for_display(target_path(folder, r.source), registry.root), "statements": r.statements,
             "reversible": r.source.down is not None, "left_out": list(r.left_out), "status": "written"}
            for r in planned.write]
    for source in planned.unchanged:
        found = ctx.all_files[source.revision]
        rows.append({"revision": source.revision, "version": source.number, "file": source.up.name,
                     "down_file": source.down.name if source.down else None,
                     "down_revision": next(iter(found.down_revisions), None),
                     "path": path_for_display(found.path, registry.root), "statements": None,
                     "reversible": source.down is not None, "left_out": [], "status": "unchanged"})
    rows.sort(key=lambda row: row["version"])
    return {"into": path_for_display(folder, registry.root), "revisions": rows, "warnings": warnings}


def _registry_folder(registry: Registry, folder: str | Path, verb: str) -> Path:
    """Return ``folder`` (relative to the cwd or the project root) when it is one of the registry's version folders."""
    known = registry.all_folders()
    for candidate in (Path(folder).resolve(), (registry.root / folder).resolve()):
        if candidate in known:
            return candidate
    names = ", ".join(path_for_display(f, registry.root) for f in known)
    raise ConfigError(f"{verb}: '{folder}' is not a version folder of any environment in {registry.path}; "
                      f"choose one of: {names}")


# ---------------------------------------------------------------------------- drift and adopt


def check(ctx: EnvContext) -> dict[str, Any]:
    """Return what separates the environment's models (``target_metadata``) from its database."""
    from orchestrator.drift import model_differences

    differences = model_differences(ctx)
    return {"env": ctx.name, "target_metadata": ctx.env.target_metadata,
            "state": "drifted" if differences else "clean", "differences": [d.to_dict() for d in differences]}


def diff(registry: Registry, env_a: str, env_b: str) -> dict[str, Any]:
    """Return what separates the live schemas of two environments (tables, columns, types, keys, indexes)."""
    from orchestrator.drift import comparison_notes, compare_schemas, environment_schema, types_comparable

    ctx_a, ctx_b = contexts(registry, [env_a, env_b]) if env_a != env_b else contexts(registry, [env_a]) * 2
    a, b = environment_schema(ctx_a), environment_schema(ctx_b)
    comparable = types_comparable(a, b)
    names = (env_a, env_b)
    differences = compare_schemas(a, b, names=names, types_comparable=comparable)
    return {"env_a": env_a, "env_b": env_b, "dialects": {env_a: a.dialect, env_b: b.dialect},
            "types": "exact" if a.dialect == b.dialect else ("by family" if comparable else "not compared"),
            "notes": comparison_notes(a, b, names=names, types_comparable=comparable),
            "differences": [d.to_dict() for d in differences]}


def adopt(ctx: EnvContext, revision: str = "auto", *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> dict[str, Any]:
    """Stamp ``revision`` (``auto``: the newest whose schema matches) on a database that has tables but no version."""
    from orchestrator import adopt as adopting

    return adopting.adopt(ctx, revision, lock_timeout=lock_timeout)
