"""The gate: judge a plan before any DDL runs.

A gate is a callable returning every reason to refuse a plan (an empty list:
go). On a protected environment the review gate refuses an upgrade with a
step that is unreviewed, stale (edited since approval), or carries a lint
error the approval does not acknowledge, or that its ``promote_from``
environment has not applied yet (a succeeded upgrade of the sha256 on disk
now: a stamp, an adopt or other content does not count); and refuses
``downgrade``/``stamp`` without ``--force --reason``. Unprotected
environments pass everything.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.reviews import STALE, UNREVIEWED, Ledger, load_ledger

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.context import EnvContext
    from orchestrator.lint import Finding
    from orchestrator.plan import Plan, Step


class Gate(Protocol):
    """Return every reason to refuse ``plan`` on its environment (empty list: allowed)."""

    def __call__(self, plan: "Plan", ctx: "EnvContext", conn: "Connection | None", *, force: bool = False,
                 reason: str | None = None) -> list[str]: ...


def review_gate(plan: "Plan", ctx: "EnvContext", conn: "Connection | None" = None, *, force: bool = False,
                reason: str | None = None, **_: Any) -> list[str]:
    """Return the reasons a protected environment refuses ``plan``."""
    if not ctx.env.protected:
        return []
    if plan.command in ("downgrade", "stamp"):
        if force and reason and reason.strip():
            return []
        return [f"{plan.command} on protected environment '{ctx.name}' needs --force --reason TEXT"]
    try:
        ledger = load_ledger(ctx.registry.reviews_path)
    except OrchestratorError as exc:
        return [f"cannot read the review ledger: {exc}"]
    return review_problems(ctx, plan.steps, ledger) + promotion_problems(ctx, plan.steps)


default_gate = review_gate


def review_problems(ctx: "EnvContext", steps: Iterable["Step"], ledger: Ledger) -> list[str]:
    """Return a reason for each step that is unreviewed, stale or has an unacknowledged lint error."""
    reasons = []
    for step in steps:
        where = f"revision {step.revision} ({step.path})"
        state = ledger.state(step.revision, step.sha256)
        if state == UNREVIEWED:
            reasons.append(f"{where} is not reviewed; run `orchestrator review approve {step.revision} --reviewer NAME`")
        elif state == STALE:
            approval = ledger.approvals[step.revision]
            reasons.append(
                f"{where} changed since approval by {approval.reviewer} (sha256 {approval.sha256[:12]} approved, "
                f"{step.sha256[:12]} on disk); review it again: `orchestrator review approve {step.revision} --reviewer NAME`")
        for finding in unacknowledged_errors(ctx, step, ledger):
            reasons.append(f"{where}: lint error {finding.rule} ({finding.message}) is not acknowledged; "
                           f"approve it with --ack {finding.rule}")
    return reasons


def unacknowledged_errors(ctx: "EnvContext", step: "Step", ledger: Ledger) -> list["Finding"]:
    """Return the step's error findings that its (fresh) approval does not acknowledge.

    A step without a fresh approval has none here: on a protected environment
    its script is not run to lint it, and being unreviewed refuses it already.
    """
    approval = ledger.approvals.get(step.revision)
    fresh = approval is not None and approval.sha256 == step.sha256
    if ctx.env.protected and not fresh:
        return []
    acknowledged = set(approval.acknowledged) if fresh and approval is not None else set()
    return [f for f in lint_findings(ctx, step.revision)
            if f.severity == "error" and f.rule not in acknowledged]


def lint_findings(ctx: "EnvContext", revision: str) -> list["Finding"]:
    """Return the lint findings of one revision on the environment's dialect (cached per content).

    On a protected environment a script whose content is not approved in the
    ledger is not run: one ``not-analysable`` finding stands for it.
    """
    from orchestrator.db import dialect_name
    from orchestrator.lint import check_dialect, lint_revision, unapproved_findings

    dialect = dialect_name(ctx.url)
    check_dialect(dialect, ctx.name)
    found = ctx.graph.get(revision)
    sha256 = found.sha256 if found else ""
    if ctx.env.protected and (found is None or not ctx.approved(found)):
        return unapproved_findings(revision, ctx.name, ctx.env.lint)
    # the environment's name too: its Config (main options) is what the script sees while rendered
    key = (ctx.name, revision, sha256, dialect, tuple(sorted(ctx.env.lint.items())))
    if key not in _lint_cache:
        script = ctx.script.get_revision(revision)
        _lint_cache[key] = lint_revision(script, dialect, ctx.env.lint, config=ctx.config(), directory=ctx.script)
    return _lint_cache[key]


_lint_cache: dict[tuple[Any, ...], list["Finding"]] = {}


def promotion_problems(ctx: "EnvContext", steps: Iterable["Step"]) -> list[str]:
    """Return the reasons ``promote_from`` has not applied every step as it is on disk now (or cannot be read).

    Applied means a succeeded 'up' step recorded in the source's database with
    the sha256 the script has now: a stamp or adopt there does not count, nor
    content the source ran before the script was edited.
    """
    from orchestrator.context import EnvContext
    from orchestrator.db import first_line, run_with_connection
    from orchestrator.recorder import upgraded_hashes
    from orchestrator.state import applied_revisions, read_heads
    from sqlalchemy.exc import DBAPIError

    source_name = ctx.env.promote_from
    steps = list(steps)
    if source_name is None or not steps:
        return []
    source = EnvContext(ctx.registry, ctx.registry.env(source_name), ctx.all_files)
    try:
        applied = applied_revisions(source, read_heads(source, must_exist=True))
        upgraded = run_with_connection(source.url, source.name,
                                       lambda conn: upgraded_hashes(conn, source.env.version_table_schema))
    except OrchestratorError as exc:
        return [f"cannot read '{source_name}' (promote_from) to check the promotion order: {exc}"]
    except DBAPIError as exc:
        return [f"cannot read '{source_name}' (promote_from) to check the promotion order: environment "
                f"'{source_name}': cannot read its run history: {first_line(exc)}"]
    missing = [s.revision for s in steps if s.revision not in applied]
    stamped = [s.revision for s in steps if s.revision in applied and s.revision not in upgraded]
    reasons = []
    if missing:
        reasons.append(f"'{source_name}' (promote_from) has not applied {', '.join(missing)}; "
                       f"promote {_it(missing)} there first (`orchestrator promote --to {source_name}`)")
    if stamped:
        reasons.append(f"'{source_name}' (promote_from) only stamped {', '.join(stamped)} (a stamp or adopt is not an "
                       f"applied migration; no succeeded upgrade of {_it(stamped)} is recorded there); "
                       f"upgrade {_it(stamped)} there first")
    for step in steps:
        entry = upgraded.get(step.revision)
        if step.revision in applied and entry is not None and entry["sha256"] != step.sha256:
            ran = entry["sha256"][:12] if entry["sha256"] else "unknown"
            reasons.append(
                f"revision {step.revision} ({step.path}) is not the content '{source_name}' (promote_from) applied: "
                f"sha256 {ran} applied there (run {entry['run_id'][:12]}), {step.sha256[:12]} on disk now; "
                f"re-run it on '{source_name}' first (downgrade it there, then `orchestrator upgrade --env {source_name}`)")
    return reasons


def _it(revisions: list[str]) -> str:
    return "it" if len(revisions) == 1 else "them"

