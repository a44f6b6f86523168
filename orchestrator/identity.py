"""Database identity: the database, not the name a command uses, is the environment.

The first orchestrated write to a database records (in ``orchestrator_identity``,
see :mod:`orchestrator.recorder`) which environment of which project owns it
and whether it is protected. Every later run is judged against that row: a run
under another environment's name (or from another project) is refused unless
forced with a reason, and a database whose owner is protected is gated as
protected whatever name reaches it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.context import EnvContext
from orchestrator.recorder import Recorder

_SHARED = ("all_files", "graph", "script", "directory", "url")


def owner_text(row: dict[str, Any]) -> str:
    """Return how a database's owner is named in messages: environment, protection and project."""
    protection = "protected" if row["protected"] else "not protected"
    project = f" of project '{row['project']}'" if row["project"] else ""
    return f"environment '{row['env']}' ({protection}){project}"


def same_project(row: dict[str, Any], ctx: EnvContext) -> bool:
    """Return True unless both the database and the registry name a project (``project.id``) and they differ.

    Without ``project.id`` a project has no name that survives a checkout under
    another folder, so only the environment name tells databases apart.
    """
    return not (row["project"] and ctx.registry.project_id) or row["project"] == ctx.registry.project_id


def is_foreign(row: dict[str, Any] | None, ctx: EnvContext) -> bool:
    """Return True when the database belongs to another environment or project than ``ctx``."""
    return row is not None and (row["env"] != ctx.name or not same_project(row, ctx))


def owner_protected(row: dict[str, Any], ctx: EnvContext) -> bool:
    """Return True when the owner is protected, by its row or by this registry's entry for it (same project)."""
    if row["protected"]:
        return True
    owner = ctx.registry.environments.get(row["env"])
    return owner is not None and same_project(row, ctx) and owner.protected


def foreign_reason(row: dict[str, Any], ctx: EnvContext) -> str:
    """Return the refusal of a run under ``ctx``'s name on a database another environment or project owns."""
    if row["env"] == ctx.name:  # same name, another project
        remedy = (f"set project.id: {row['project']} in {ctx.registry.path} if this is the same project "
                  f"(it is '{ctx.registry.project_id}' now), check {ctx.env.url_source()}")
    else:
        remedy = f"check {ctx.env.url_source()}"
    return (f"this database belongs to {owner_text(row)}; {remedy}, or pass --force --reason TEXT to run under "
            f"'{ctx.name}' anyway")


def check_owner(recorder: Recorder, ctx: EnvContext, heads: tuple[str, ...], *, force: bool,
                reason: str | None) -> tuple[list[str], EnvContext]:
    """Claim the database for ``ctx`` if no one owns it; return the refusals and the context the gate judges.

    Call under the lock, right after the history tables exist. ``force`` with a
    non-empty ``reason`` overrides a foreign owner (the reason is recorded with
    the run), but never its protection: the returned context is protected when
    the owner is.
    """
    row = recorder.claim(project=ctx.registry.project_id, protected=ctx.env.protected, heads=heads)
    reasons = []
    if is_foreign(row, ctx) and not (force and reason and reason.strip()):
        reasons.append(foreign_reason(row, ctx))
    protected = ctx.env.protected or row["protected"] or (is_foreign(row, ctx) and owner_protected(row, ctx))
    return reasons, ctx if protected == ctx.env.protected else protected_context(ctx)


def protected_context(ctx: EnvContext) -> EnvContext:
    """Return ``ctx`` judged as a protected environment, sharing what it has read (folders, graph, scripts, URL)."""
    gated = EnvContext(ctx.registry, replace(ctx.env, protected=True), ctx._all_files, ctx._stamp)
    for key in _SHARED:
        if key in ctx.__dict__:
            gated.__dict__[key] = ctx.__dict__[key]
    return gated
