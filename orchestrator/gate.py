"""The gate: judge a plan before any DDL runs.

A gate is a callable returning every reason to refuse a plan (an empty list:
go). On a protected environment the review gate refuses an upgrade with a
step that is unreviewed, stale (edited since approval), or carries a lint
error the approval does not acknowledge, or that its ``promote_from``
environment has not applied yet; and refuses ``downgrade``/``stamp`` without
``--force --reason``. Unprotected environments pass everything.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol

from orchestrator.errors import OrchestratorError
from orchestrator.reviews import REVIEWED, STALE, UNREVIEWED, Ledger, load_ledger

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.context import EnvContext
    from orchestrator.lint import Finding
    from orchestrator.plan import Plan, Step


class Gate(Protocol):
    """Return every reason to refuse ``plan`` on its environment (empty list: allowed)."""

    def __call__(self, plan: "Plan", ctx: "EnvContext", conn: "Connection", *, force: bool = False,
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
        if ctx.env.protected and state != REVIEWED:
            continue  # lint runs the script's code, and a protected environment runs approved content only
        for finding in unacknowledged_errors(ctx, step, ledger):
            reasons.append(f"{where}: lint error {finding.rule} ({finding.message}) is not acknowledged; "
                           f"approve it with --ack {finding.rule}")
    return reasons


def unacknowledged_errors(ctx: "EnvContext", step: "Step", ledger: Ledger) -> list["Finding"]:
    """Return the step's error findings that its (fresh) approval does not acknowledge."""
    approval = ledger.approvals.get(step.revision)
    acknowledged = set(approval.acknowledged) if approval is not None and approval.sha256 == step.sha256 else set()
    return [f for f in lint_findings(ctx, step.revision) if f.severity == "error" and f.rule not in acknowledged]


def lint_findings(ctx: "EnvContext", revision: str) -> list["Finding"]:
    """Return the lint findings of one revision on the environment's dialect (cached per content)."""
    from orchestrator.db import dialect_name
    from orchestrator.lint import lint_revision

    script = ctx.script.get_revision(revision)
    found = ctx.graph.get(revision)
    if ctx.env.protected and found is not None and not _may_run(ctx, found):
        from orchestrator.lint import RULES, Finding

        return [Finding("not-analysable", RULES["not-analysable"].severity, revision,
                        "not linted here: its content is not approved and a protected environment runs none of its "
                        "code; lint it on an unprotected environment, or approve it first", None)]
    key = (revision, found.sha256 if found else "", dialect_name(ctx.url), tuple(sorted(ctx.env.lint.items())))
    if key not in _lint_cache:
        _lint_cache[key] = lint_revision(script, dialect_name(ctx.url), ctx.env.lint)
    return _lint_cache[key]


_lint_cache: dict[tuple[Any, ...], list["Finding"]] = {}


def _may_run(ctx: "EnvContext", found: Any) -> bool:
    """Return True when the environment may run the script's code (see EnvContext.may_run)."""
    from orchestrator.errors import GateRefused

    try:
        ctx.may_run(found)
    except GateRefused:
        return False
    return True


def promotion_problems(ctx: "EnvContext", steps: Iterable["Step"]) -> list[str]:
    """Return a reason when the ``promote_from`` environment has not applied every step (or cannot be read)."""
    from orchestrator.context import EnvContext
    from orchestrator.state import applied_revisions, read_heads

    source_name = ctx.env.promote_from
    steps = list(steps)
    if source_name is None or not steps:
        return []
    source = EnvContext(ctx.registry, ctx.registry.env(source_name), ctx.all_files)
    try:
        applied = applied_revisions(source, read_heads(source, must_exist=True))
    except OrchestratorError as exc:
        return [f"cannot read '{source_name}' (promote_from) to check the promotion order: {exc}"]
    missing = [s.revision for s in steps if s.revision not in applied]
    if not missing:
        return []
    return [f"'{source_name}' (promote_from) has not applied {', '.join(missing)}; "
            f"promote {'it' if len(missing) == 1 else 'them'} there first (`orchestrator promote --to {source_name}`)"]
