"""One public function per command-line verb, usable from Python as from the shell.

Each function takes a loaded :class:`~orchestrator.registry.Registry` (or an
:class:`~orchestrator.context.EnvContext`) and returns plain values; the CLI
only renders them and maps errors to exit codes.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Callable

from alembic import command as alembic_command

from orchestrator.context import EnvContext, alembic_options, contexts, path_for_display, selected_env
from orchestrator.db import first_line, make_engine, run_with_connection
from orchestrator.errors import ConfigError, DatabaseError, GateRefused, OrchestratorError
from orchestrator.executor import NOTHING, RunResult, execute
from orchestrator.state import applied_revisions, read_heads
from orchestrator.gate import Gate, default_gate
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.plan import Plan, build_plan
from orchestrator.recorder import StepRecord, last_run, read_runs
from orchestrator.registry import Registry, has_secret

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
                               "state": "unknown", "error": None}
        try:
            row["target_heads"] = sorted(ctx.graph.heads)
            heads = read_heads(ctx)
            row["current_heads"] = list(heads)
            plan = build_plan(ctx.name, "upgrade", "heads", heads, ctx.script, ctx.graph)
            row["pending"] = len(plan.steps)
            row["pending_revisions"] = [s.revision for s in plan.steps]
            row["last_run"] = _last_run_summary(ctx)
            row["state"] = "at heads" if plan.empty else "pending"
            if row["last_run"] and row["last_run"]["status"] in ("failed", "interrupted"):
                row["state"] = f"last run {row['last_run']['status']}"
        except OrchestratorError as exc:
            row["state"], row["error"] = "error", str(exc)
        rows.append(row)
    return rows


def _last_run_summary(ctx: EnvContext) -> dict[str, Any] | None:
    """Return the newest run of an environment, with the failed step if any."""
    url = ctx.url
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return None
    run = run_with_connection(url, ctx.name, lambda conn: last_run(conn, ctx.name, ctx.env.version_table_schema))
    if run is None:
        return None
    failed = next((s for s in run["steps"] if s["status"] != "succeeded"), None)
    return {"run_id": run["run_id"], "command": run["command"], "status": run["status"],
            "started_at": _iso(run["started_at"]), "operator": run["operator"], "error": run["error"],
            "failed_revision": failed["revision"] if failed else None}


def plan(ctx: EnvContext, target: str = "heads", *, command: str = "upgrade") -> Plan:
    """Return the steps ``command`` to ``target`` would run; touches nothing."""
    return build_plan(ctx.name, command, target, read_heads(ctx), ctx.script, ctx.graph)


def upgrade(ctx: EnvContext, target: str = "heads", *, sql: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            on_step: StepCallback = None, gate: Gate = default_gate) -> RunResult | str:
    """Upgrade the environment to ``target`` (all heads by default); with ``sql``, return the SQL instead."""
    if sql:
        return offline_sql(ctx, "upgrade", target)
    return execute(ctx, "upgrade", target, lock_timeout=lock_timeout, on_step=on_step, gate=gate)


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


def offline_sql(ctx: EnvContext, command: str, target: str) -> str:
    """Return the SQL Alembic would emit for ``command`` to ``target`` (``FROM:TO`` ranges allowed)."""
    ctx.graph
    buffer = io.StringIO()
    cfg = ctx.config(output_buffer=buffer)
    try:
        with selected_env(ctx.name):
            getattr(alembic_command, command)(cfg, target, sql=True)
    except OrchestratorError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"environment '{ctx.name}': cannot render {command} {target} as SQL: {first_line(exc)}; "
            "scripts that read the database or use batch mode on SQLite cannot run offline"
        ) from None
    return buffer.getvalue()


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
        raise ConfigError(f"environment '{ctx.name}': cannot create revision: {first_line(exc)}") from None
    scripts = script if isinstance(script, list) else [script]
    return {"env": ctx.name, "revisions": [
        {"revision": s.revision, "path": path_for_display(s.path, ctx.registry.root)} for s in scripts if s is not None]}


def runs(ctx: EnvContext, *, limit: int = 20, run_id: str | None = None) -> dict[str, Any]:
    """Return the environment's run history, newest first, with steps."""
    url = ctx.url
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return {"env": ctx.name, "runs": []}
    rows = run_with_connection(url, ctx.name, lambda conn: read_runs(conn, ctx.name, ctx.env.version_table_schema,
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


def promotion_target(registry: Registry, to: str) -> tuple[EnvContext, EnvContext, tuple[str, ...]]:
    """Return (source, target, heads to reach): what the source has applied that the target sees."""
    target, = contexts(registry, [to])
    if target.env.promote_from is None:
        raise ConfigError(f"environment '{to}' has no promote_from in {registry.path}; use `upgrade --env {to}` instead")
    source = EnvContext(registry, registry.env(target.env.promote_from), target.all_files)
    try:
        source_heads = read_heads(source)
    except OrchestratorError as exc:
        raise DatabaseError(f"cannot promote to '{to}': its source environment '{source.name}' is unreachable: {exc}",
                            env=to) from None
    wanted = applied_revisions(source, source_heads) & set(target.graph.revisions)
    have = applied_revisions(target, read_heads(target))
    ahead = sorted(have - applied_revisions(source, source_heads))
    if ahead:
        raise GateRefused(
            f"{to}: refused: it has revisions its source '{source.name}' has not applied: {', '.join(ahead)}; "
            f"promote never downgrades: apply them to '{source.name}' first or downgrade '{to}' explicitly", env=to)
    referenced = {d for r in wanted for d in target.graph.revisions[r].down_revisions}
    return source, target, tuple(sorted(wanted - referenced))


def promote(registry: Registry, to: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_step: StepCallback = None,
            gate: Gate = default_gate) -> RunResult:
    """Apply to ``to`` exactly the revisions its ``promote_from`` environment has applied."""
    source, target, goal = promotion_target(registry, to)
    if not goal:
        heads = read_heads(target)
        empty = build_plan(to, "upgrade", "heads", heads, target.script, target.graph)
        return RunResult(to, "promote", "", NOTHING, Plan(to, "upgrade", "", heads, (), empty.fingerprint), heads)
    return execute(target, "upgrade", goal[0] if len(goal) == 1 else goal, lock_timeout=lock_timeout, on_step=on_step, gate=gate)


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
        Path(output).write_text(text, encoding="utf-8")
    return text
