"""Migrate, or check, the database when an application starts: the one call for a ``lifespan`` hook.

``migrate_at_start`` brings the process's environment to heads exactly as
``orchestrator upgrade`` does: under the environment's lock, through the
production gate, recorded in the history. When several workers start together,
one applies each revision and the others wait for the lock, find nothing left
to do and start. ``mode="verify"`` changes nothing: it checks the database is at
heads and fails fast with one line otherwise (the right choice for production,
where migrating is a deploy step). ``migrate_at_start_async`` runs the same
call on a worker thread, so an application's event loop is never blocked and
no ``asyncio.run`` is attempted inside it::

    @asynccontextmanager
    async def lifespan(app):
        await migrate_at_start_async()          # ALEMBIC_ENV / ORCHESTRATOR_REGISTRY pick the database
        yield
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.context import EnvContext, contexts
from orchestrator.errors import ConfigError, NotAtHeads
from orchestrator.executor import NOTHING, execute
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.registry import Registry, load_registry
from orchestrator.state import read_heads

MODES = ("upgrade", "verify")
log = logging.getLogger("orchestrator.appstart")


@dataclass(frozen=True)
class StartupResult:
    """What the start-up call found or did."""

    env: str
    mode: str
    status: str  # "upgraded", "nothing to do" or "at heads"
    heads: tuple[str, ...]
    run_id: str | None = None
    applied: tuple[str, ...] = ()


def migrate_at_start(env: str | None = None, registry: Registry | str | os.PathLike[str] | None = None, *,
                     mode: str = "upgrade", lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> StartupResult:
    """Upgrade the process's environment to heads under its lock, or with ``mode="verify"`` check it is there.

    :param env: the environment; default ``$ALEMBIC_ENV``, else the registry's ``default_env``.
    :param registry: a loaded registry or its path; default ``$ORCHESTRATOR_REGISTRY``, else envs/registry.yaml.
    :param mode: ``upgrade`` (apply what is pending) or ``verify`` (raise :class:`NotAtHeads` if anything is).
    :param lock_timeout: seconds to wait while another worker migrates.
    """
    if mode not in MODES:
        raise ConfigError(f"migrate_at_start: unknown mode {mode!r}; use 'upgrade' or 'verify'")
    ctx = _context(env, registry)
    if mode == "verify":
        return verify_at_heads(ctx)
    result = execute(ctx, "upgrade", "heads", lock_timeout=lock_timeout)
    if result.status == NOTHING:
        log.info("%s: nothing to do; at %s", ctx.name, _ids(result.heads_after))
        return StartupResult(ctx.name, mode, NOTHING, result.heads_after)
    applied = tuple(s.revision for s in result.steps)
    log.info("%s: upgraded %s -> %s (%d steps, run %s)", ctx.name, _ids(result.plan.heads_before),
             _ids(result.heads_after), len(applied), (result.run_id or "-")[:12])
    return StartupResult(ctx.name, mode, "upgraded", result.heads_after, result.run_id, applied)


async def migrate_at_start_async(env: str | None = None, registry: Registry | str | os.PathLike[str] | None = None, *,
                                 mode: str = "upgrade", lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> StartupResult:
    """Run :func:`migrate_at_start` on a worker thread, for an async ``lifespan`` hook."""
    return await asyncio.to_thread(migrate_at_start, env, registry, mode=mode, lock_timeout=lock_timeout)


def verify_at_heads(ctx: EnvContext) -> StartupResult:
    """Return quietly when the database is at the environment's heads; raise NotAtHeads otherwise."""
    heads = tuple(sorted(ctx.graph.heads))
    current = read_heads(ctx)
    if set(current) == set(heads):
        log.info("%s: at heads %s", ctx.name, _ids(heads))
        return StartupResult(ctx.name, "verify", "at heads", current)
    unknown = [rev for rev in current if rev not in ctx.graph.revisions]
    if unknown:
        remedy = (f"{', '.join(unknown)} is in no version folder '{ctx.name}' lists: "
                  "this application is older than its database; deploy the release that matches it")
    else:
        remedy = f"run `orchestrator upgrade --env {ctx.name}` as a deploy step"
    raise NotAtHeads(f"database of env '{ctx.name}' is at {_ids(current)}, heads are {_ids(heads)}; {remedy}",
                     env=ctx.name, current=current, heads=heads)


def _context(env: str | None, registry: Registry | str | os.PathLike[str] | None) -> EnvContext:
    """Return the environment the process runs against, chosen as the command line chooses it."""
    loaded = registry if isinstance(registry, Registry) else load_registry(Path(registry) if registry else None)
    return contexts(loaded, [loaded.select(env).name])[0]


def _ids(revisions: tuple[str, ...]) -> str:
    """Return revision ids for a message: ``base`` when there are none."""
    return ", ".join(revisions) or "base"
