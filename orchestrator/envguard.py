"""Watch the connection an ``env.py`` hands to Alembic, so nothing is applied unrecorded.

The orchestrator puts its connection and recorder in ``config.attributes``;
an ``env.py`` that calls :func:`orchestrator.envpy.run_migrations` uses both.
One that opens its own engine (Alembic's generic template) would apply every
step where the recorder never sees it. :func:`recorded` observes
``context.configure`` (Alembic's public seam): on a protected
environment such an ``env.py`` is refused before any step runs; elsewhere the
steps it applied are reported as an error naming them once it is done.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.engine import Connection

from orchestrator.context import ENV_ATTRIBUTE, REGISTRY_ATTRIBUTE, RUN_ATTRIBUTE, EnvContext
from orchestrator.db import first_line
from orchestrator.errors import GateRefused, MigrationFailed
from orchestrator.loader import path_for_display
from orchestrator.state import current_heads

_CONFIGURE = inspect.signature(EnvironmentContext.configure)
OWN_CONNECTION = "on its own connection"
NO_RECORDER = "on the orchestrator's connection but without its recorder"
REMEDY = "call orchestrator.envpy.run_migrations() from env.py so they are recorded"


class EnvPyRefused(GateRefused):
    """Raised from ``context.configure`` when a protected environment's env.py cannot be gated and recorded."""


class UnrecordedSteps(MigrationFailed):
    """Raised when env.py ran Alembic where the recorder could not see the steps."""


@contextmanager
def recorded(environment: EnvironmentContext) -> Iterator[EnvironmentContext]:
    """Watch what env.py configures ``environment`` with while it runs, and check it ran where we record.

    ``context.configure`` in env.py reaches ``environment.configure`` through
    the ``alembic.context`` proxy; it is observed on this instance (a subclass
    would not do: Alembic installs the proxy per class).
    """
    watch = _Watch(environment)
    environment.configure = watch.configure  # type: ignore[method-assign]
    try:
        yield environment
    except Exception as exc:
        watch.check(exc)
        raise
    else:
        watch.check(None)
    finally:
        del environment.configure


class _Watch:
    """What env.py configured one EnvironmentContext with."""

    def __init__(self, environment: EnvironmentContext):
        self.environment = environment
        self.unrecorded: str | None = None  # how env.py went around the recorder
        self.heads_before: tuple[str, ...] = ()

    def configure(self, *args: Any, **kwargs: Any) -> None:
        """Check what env.py configures Alembic with, then configure it."""
        environment = self.environment
        attributes = environment.config.attributes
        recorder, ours = attributes.get(RUN_ATTRIBUTE), attributes.get("connection")
        if recorder is not None and isinstance(ours, Connection) and not environment.is_offline_mode():
            how = _bypass(_CONFIGURE.bind(environment, *args, **kwargs).arguments, ours, recorder)
            if how is not None:
                ctx = self.orchestrator_context()
                if ctx.env.protected:
                    # raised before run_migrations: no step has run (the executor records the run blocked)
                    reason = (f"env.py at {self.env_py(ctx)} {_configures(how)}, so the orchestrator cannot gate "
                              "and record its steps; call orchestrator.envpy.run_migrations() from it (see README) "
                              "or use the packaged env.py")
                    raise EnvPyRefused(f"{ctx.name}: refused: {reason}", env=ctx.name, reasons=(reason,))
                if self.unrecorded is None:  # the first configure: nothing has run yet
                    self.unrecorded, self.heads_before = how, current_heads(ours, ctx)
        EnvironmentContext.configure(environment, *args, **kwargs)

    def check(self, exc: Exception | None) -> None:
        """Raise UnrecordedSteps when env.py moved the version table where the recorder did not see it."""
        if self.unrecorded is None:
            if exc is not None and _nested_asyncio_run(exc) and self.environment.config.attributes.get(RUN_ATTRIBUTE):
                _close_refused_coroutine(exc)
                self.refuse_nested_loop(exc)
            return
        ctx = self.orchestrator_context()
        attributes = self.environment.config.attributes
        heads_after = current_heads(attributes["connection"], ctx)
        recorded = {r for s in attributes[RUN_ATTRIBUTE].steps for r in s.revision.split()}
        before, after = self.lineage(self.heads_before), self.lineage(heads_after)
        applied = [r for r in after if r not in before and r not in recorded]
        reverted = [r for r in before if r not in after and r not in recorded]
        where = self.env_py(ctx)
        if not applied and not reverted:
            if exc is not None:
                return  # it failed before moving anything: the failure says so
            at = ", ".join(heads_after) or "base"
            raise UnrecordedSteps(
                f"environment '{ctx.name}': env.py at {where} ran Alembic {self.unrecorded} and left this "
                f"database's version table at {at}, so nothing was applied here or recorded; "
                "call orchestrator.envpy.run_migrations() from env.py so the orchestrator applies and records the steps",
                env=ctx.name)
        done = " and ".join(f"{verb} {_count(revs)} ({', '.join(revs)})"
                            for verb, revs in (("applied", applied), ("reverted", reverted)) if revs)
        then = f", then failed: {first_line(exc)}" if exc is not None else ""
        raise UnrecordedSteps(f"environment '{ctx.name}': env.py at {where} {done} {self.unrecorded}, "
                              f"unrecorded{then}; {REMEDY}", env=ctx.name) from exc

    def refuse_nested_loop(self, exc: Exception) -> None:
        """Explain Alembic's async template failing in the orchestrator's event loop (nothing ran)."""
        ctx = self.orchestrator_context()
        where = self.env_py(ctx)
        if ctx.env.protected:
            reason = (f"env.py at {where} runs its own event loop and connection (asyncio.run()), so the orchestrator "
                      "cannot gate and record its steps; call orchestrator.envpy.run_migrations() from it "
                      "(see README; it runs async URLs itself) or use the packaged env.py")
            raise EnvPyRefused(f"{ctx.name}: refused: {reason}", env=ctx.name, reasons=(reason,)) from exc
        raise MigrationFailed(
            f"environment '{ctx.name}': env.py at {where} calls asyncio.run() inside the orchestrator's event loop "
            "(an async URL), so no revision ran; call orchestrator.envpy.run_migrations() from env.py "
            "(it runs async URLs itself)", env=ctx.name) from exc

    def orchestrator_context(self) -> EnvContext:
        """Return the environment Alembic runs for (its version table, its project root)."""
        attributes = self.environment.config.attributes
        return EnvContext(attributes[REGISTRY_ATTRIBUTE], attributes[ENV_ATTRIBUTE])

    def env_py(self, ctx: EnvContext) -> str:
        """Return env.py's path, relative to the project root where possible."""
        return path_for_display(self.environment.script.env_py_location, ctx.registry.root)

    def lineage(self, heads: tuple[str, ...]) -> list[str]:
        """Return the revisions applied at ``heads``, oldest first."""
        if not heads:
            return []
        try:
            return [s.revision for s in reversed(list(self.environment.script.iterate_revisions(heads, "base")))]
        except Exception:  # a revision the scripts do not know: name the heads themselves
            return list(heads)


def _bypass(arguments: dict[str, Any], ours: Connection, recorder: Any) -> str | None:
    """Return how a ``configure`` call goes around the recorder, or None when every step will be recorded."""
    if arguments.get("connection") is not ours:
        return OWN_CONNECTION  # another connection, or a URL (or dialect) and none
    hooks = arguments.get("on_version_apply")
    hooks = hooks if isinstance(hooks, (list, tuple)) else [hooks]
    if not any(getattr(hook, "__self__", None) is recorder for hook in hooks):
        return NO_RECORDER
    return None


def _close_refused_coroutine(exc: Exception) -> None:
    """Close the coroutine asyncio.run() refused, so Python does not warn later that it was never awaited."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "run" and frame.f_globals.get("__name__") == "asyncio.runners":
            main = frame.f_locals.get("main")
            if inspect.iscoroutine(main):
                main.close()
        tb = tb.tb_next


def _nested_asyncio_run(exc: Exception) -> bool:
    """Return True for asyncio.run() called where an event loop already runs (Alembic's async template)."""
    return isinstance(exc, RuntimeError) and "asyncio.run() cannot be called from a running event loop" in str(exc)


def _configures(how: str) -> str:
    """Return the refusal's account of what env.py does."""
    if how == OWN_CONNECTION:
        return "configures its own connection"
    return "configures Alembic without the orchestrator's recorder"


def _count(revisions: list[str]) -> str:
    return f"{len(revisions)} revision" + ("s" if len(revisions) != 1 else "")
