"""The gate: judge a plan before any DDL runs.

A gate is a callable that returns the reasons to refuse a plan (empty: go).
The review, lint and promotion-order checks of protected environments plug in
here; this module holds the seam and the default that lets every plan pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from orchestrator.context import EnvContext
    from orchestrator.plan import Plan


class Gate(Protocol):
    """Return every reason to refuse ``plan`` on its environment (empty list: allowed)."""

    def __call__(self, plan: "Plan", ctx: "EnvContext", conn: "Connection", *, force: bool = False,
                 reason: str | None = None) -> list[str]: ...


def default_gate(plan: "Plan", ctx: "EnvContext", conn: "Connection", *, force: bool = False,
                 reason: str | None = None, **_: Any) -> list[str]:
    """Allow every plan (the review gate is not configured)."""
    return []
