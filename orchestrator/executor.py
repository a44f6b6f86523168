"""Apply a plan to one environment: lock, plan, gate, run through Alembic, record.

The sequence for every run that changes a database:

1. take the environment's lock (bounded wait);
2. create the history tables if needed, record which environment owns the
   database if no one does yet (:mod:`orchestrator.identity`), and mark runs a
   dead runner left 'running' as interrupted;
3. read the current heads and build the plan; nothing to do ends here
   (a run under another environment's name is refused even then);
4. ask the gate (judging as protected when the database's owner is); a
   refusal is recorded as a blocked run and nothing runs;
5. record the run, then let Alembic apply the steps, each in its own
   transaction with its history row;
6. on failure, roll back the failed step (where DDL is transactional),
   record it with its error, and report the heads the database is left at.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from alembic import __version__ as alembic_version
from alembic import command as alembic_command
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import event
from sqlalchemy.engine import Connection

from orchestrator import alembic_compat
from orchestrator.context import RUN_ATTRIBUTE, EnvContext, selected_env
from orchestrator.loader import path_for_display
from orchestrator.db import first_line, run_with_connection
from orchestrator.envguard import EnvPyRefused, recorded
from orchestrator.errors import ConfigError, DatabaseError, GateRefused, GraphError, MigrationFailed, OrchestratorError
from orchestrator.gate import Gate, default_gate
from orchestrator.identity import check_owner
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT, acquire, lock_for
from orchestrator.plan import Plan, build_plan, check_target
from orchestrator.state import current_heads
from orchestrator.reviews import load_ledger
from orchestrator.recorder import BLOCKED, FAILED, INTERRUPTED, SUCCEEDED, Recorder, StepRecord

NOTHING = "nothing to do"
# a revision argument, or several heads to reach at once (promote)
Target = str | tuple[str, ...]


@dataclass
class RunResult:
    """What one run did to one environment."""

    env: str
    command: str
    target: str
    status: str
    plan: Plan
    heads_after: tuple[str, ...]
    run_id: str | None = None
    steps: list[StepRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain data for ``--json``."""
        return {
            "env": self.env, "command": self.command, "target": self.target, "status": self.status,
            "run_id": self.run_id, "heads_before": list(self.plan.heads_before), "heads_after": list(self.heads_after),
            "plan_fingerprint": self.plan.fingerprint,
            "steps": [{"seq": s.seq, "revision": s.revision, "direction": s.direction, "status": s.status,
                       "duration_ms": s.duration_ms} for s in self.steps],
        }


def execute(ctx: EnvContext, command: str, target: Target, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            forced_reason: str | None = None, force: bool = False, on_step: Callable[[StepRecord], None] | None = None,
            gate: Gate = default_gate) -> RunResult:
    """Run ``command`` (upgrade, downgrade or stamp) to ``target`` on one environment under its lock."""
    check_target(ctx.name, target, ctx.script, ctx.graph)  # refuse a bad target before touching the database

    def invoke(conn: Connection, recorder: Recorder) -> None:
        cfg = ctx.config()
        cfg.attributes["connection"] = conn
        cfg.attributes[RUN_ATTRIBUTE] = recorder
        run_alembic(ctx, cfg, command, target)

    return run_with_connection(ctx.url, ctx.name, lambda conn: run_locked(
        conn, ctx, command, target, invoke, lock_timeout=lock_timeout, forced_reason=forced_reason,
        force=force, on_step=on_step, gate=gate))


def run_alembic(ctx: EnvContext, cfg: Any, command: str, target: Target) -> None:
    """Run an Alembic verb on the ScriptDirectory already loaded for the plan (as ``alembic.command`` does).

    ``alembic.command.upgrade`` would build and load a second ScriptDirectory
    from disk; reusing the planned one runs exactly the scripts, and the bytes,
    that were planned and judged (see :mod:`orchestrator.alembic_compat`).
    """
    script = ctx.script
    fn = alembic_compat.step_function(script, command, target)
    if fn is None:
        if ctx.env.protected:
            raise ConfigError(
                f"environment '{ctx.name}': Alembic {alembic_version} has no tested way to {command} the judged "
                f"scripts, and a protected environment runs nothing else; install alembic"
                f"{alembic_compat.tested_range()}",
                env=ctx.name)
        getattr(alembic_command, command)(cfg, target)
        return
    destination = (target,) if command == "stamp" and isinstance(target, str) else target
    try:
        alembic_compat.run_planned(script, command, cfg.attributes.get(RUN_ATTRIBUTE))
        with EnvironmentContext(cfg, script, fn=fn, as_sql=False, starting_rev=None, destination_rev=destination) as env:
            with recorded(env):  # env.py must run the steps where the recorder sees them
                script.run_env()
    except GraphError as exc:  # a script that cannot be imported fails the run, exit 1
        raise MigrationFailed(f"environment '{ctx.name}': {exc}; no step was applied from it; fix the script and rerun",
                              env=ctx.name) from None


def lock_scope(ctx: EnvContext) -> str:
    """Return what the lock guards: the environment's version table (runners of one table exclude each other)."""
    return f"{ctx.env.version_table_schema or ''}.{ctx.env.version_table}"


def run_locked(conn: Connection, ctx: EnvContext, command: str, target: Target,
               invoke: Callable[[Connection, Recorder], None], *, lock_timeout: float,
               forced_reason: str | None = None, force: bool = False,
               on_step: Callable[[StepRecord], None] | None = None, gate: Gate = default_gate,
               record_as: str | None = None) -> RunResult:
    """Take the lock on ``conn``, then plan, gate, apply through ``invoke`` and record.

    ``record_as`` names the run in the history when it differs from the Alembic verb (``adopt`` stamps).
    """
    schema = ctx.env.version_table_schema
    lock = lock_for(conn, ctx.url, lock_scope(ctx))
    acquire(lock, conn=conn, env=ctx.name, schema=schema, timeout=lock_timeout)
    ctx.reload()  # judge the scripts as they are now that no one else runs, not as they were before the wait
    try:
        return _apply(conn, ctx, command, target, invoke, forced_reason=forced_reason, force=force,
                      on_step=on_step, gate=gate, abandon=lock.abandon, record_as=record_as or command)
    finally:
        _release(lock, conn)


def _apply(conn: Connection, ctx: EnvContext, command: str, target: Target,
           invoke: Callable[[Connection, Recorder], None], *, forced_reason: str | None, force: bool,
           on_step: Callable[[StepRecord], None] | None, gate: Gate, abandon: Callable[[], None],
           record_as: str) -> RunResult:
    """Plan, gate, run and record, with the lock held."""
    recorder = Recorder(conn, ctx.name, ctx.env.version_table_schema, on_step=on_step)
    heads = current_heads(conn, ctx)
    plan = build_plan(ctx.name, command, target, heads, ctx.script, ctx.graph)
    recorder.ensure_tables()
    forced_reason = forced_reason if force else None
    reasons, gated = check_owner(recorder, ctx, heads, force=force, reason=forced_reason)
    recorder.mark_interrupted(heads)
    conn.commit()
    if plan.empty and not reasons:
        return RunResult(ctx.name, record_as, plan.target, NOTHING, plan, heads)
    reasons += gate(plan, gated, conn, force=force, reason=forced_reason) if not plan.empty else []
    if reasons:
        refuse(recorder, record_as, plan.target, heads, reasons, fingerprint=plan.fingerprint, forced_reason=forced_reason)
    recorder.reviewers = approved_by(ctx, plan)
    recorder.expected = {s.revision: ctx.graph.revisions[s.revision] for s in plan.steps if s.revision in ctx.graph.revisions}
    recorder.start_run(command=record_as, target=plan.target, heads_before=heads, fingerprint=plan.fingerprint,
                       forced_reason=forced_reason)
    conn.commit()
    try:
        with selected_env(ctx.name), _watching_statements(conn, recorder):
            invoke(conn, recorder)
    except EnvPyRefused as exc:  # env.py's configure refused before any step ran
        raise _record_blocked(conn, recorder, heads, exc) from None
    except BaseException as exc:
        # record first (on a second connection if this one is unusable), then stop a statement the
        # server would otherwise run on after we are gone: killing the session first lost the record
        raise _record_failure(conn, ctx, plan, recorder, exc, abandon=abandon) from exc
    heads_after = current_heads(conn, ctx)
    recorder.finish_run(status=SUCCEEDED, heads_after=heads_after)
    conn.commit()
    return RunResult(ctx.name, record_as, plan.target, SUCCEEDED, plan, heads_after, recorder.run_id, recorder.steps)


def refuse(recorder: Recorder, command: str, target: str, heads: tuple[str, ...], reasons: list[str], *,
           fingerprint: str | None = None, forced_reason: str | None = None) -> None:
    """Record a blocked run and raise the refusal that lists every reason."""
    recorder.ensure_tables()
    recorder.start_run(command=command, target=target, heads_before=heads, fingerprint=fingerprint,
                       forced_reason=forced_reason, status=BLOCKED, error="; ".join(reasons))
    recorder.conn.commit()
    raise GateRefused(_refusal_message(recorder.env, reasons), env=recorder.env, reasons=tuple(reasons))


def _record_blocked(conn: Connection, recorder: Recorder, heads: tuple[str, ...], exc: GateRefused) -> GateRefused:
    """Close a started run as blocked (nothing ran), with the refusal's reasons."""
    conn.rollback()
    recorder.finish_run(status=BLOCKED, heads_after=heads, error="; ".join(exc.reasons))
    conn.commit()
    return exc


def record_refusal(ctx: EnvContext, command: str, target: str, reasons: list[str], *,
                   lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Record a refusal decided outside a plan (e.g. promote going backwards) as a blocked run, and raise it."""

    def work(conn: Connection) -> None:
        schema = ctx.env.version_table_schema
        lock = lock_for(conn, ctx.url, lock_scope(ctx))
        acquire(lock, conn=conn, env=ctx.name, schema=schema, timeout=lock_timeout)
        try:
            refuse(Recorder(conn, ctx.name, schema), command, target, current_heads(conn, ctx), reasons)
        finally:
            _release(lock, conn)

    run_with_connection(ctx.url, ctx.name, work)


def record_offline(ctx: EnvContext, command: str, plan: Plan, reasons: list[str], *,
                   forced_reason: str | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> str:
    """Record offline SQL the gate refused: a blocked run (then raise the refusal), or, forced, a finished run.

    The forced run (status succeeded, ``forced_reason`` set, heads unchanged,
    no steps) says that SQL the gate refused was printed for someone to apply;
    its id is returned. A refusal that cannot be recorded (the database is
    unreachable) is still a refusal; a forced print that cannot be recorded is
    an error, so nothing the gate refused is printed unrecorded.
    """

    def work(conn: Connection) -> str:
        schema = ctx.env.version_table_schema
        lock = lock_for(conn, ctx.url, lock_scope(ctx))
        acquire(lock, conn=conn, env=ctx.name, schema=schema, timeout=lock_timeout)
        try:
            recorder = Recorder(conn, ctx.name, schema)
            heads = current_heads(conn, ctx)
            if forced_reason is None:
                refuse(recorder, command, plan.target, heads, reasons, fingerprint=plan.fingerprint)
            recorder.ensure_tables()
            run_id = recorder.start_run(command=command, target=plan.target, heads_before=heads,
                                        fingerprint=plan.fingerprint, forced_reason=forced_reason, status=SUCCEEDED)
            conn.commit()
            return run_id
        finally:
            _release(lock, conn)

    try:
        return run_with_connection(ctx.url, ctx.name, work)
    except DatabaseError as exc:
        if forced_reason is None:
            reasons = [*reasons, f"this refusal is not recorded: {exc}"]
            raise GateRefused(_refusal_message(ctx.name, reasons), env=ctx.name, reasons=tuple(reasons)) from None
        raise DatabaseError(f"environment '{ctx.name}': cannot record the forced `{command}`, so its SQL is not "
                            f"printed: {exc}; rerun when the database is reachable", env=ctx.name) from None


def approved_by(ctx: EnvContext, plan: Plan) -> dict[str, str]:
    """Return the reviewer of each step whose approval matches the script, for the history."""
    if ctx.registry.reviews_path is None:
        return {}
    try:
        ledger = load_ledger(ctx.registry.reviews_path)
    except OrchestratorError:
        return {}  # an unprotected environment runs without a readable ledger; the gate judges protected ones
    return {s.revision: r for s in plan.steps if (r := ledger.reviewer(s.revision, s.sha256))}


def _refusal_message(env: str, reasons: list[str]) -> str:
    """Return one report listing every reason the gate gave."""
    if len(reasons) == 1:
        return f"{env}: refused: {reasons[0]}"
    return f"{env}: refused for {len(reasons)} reasons:\n" + "\n".join(f"  - {r}" for r in reasons)


def _record_failure(conn: Connection, ctx: EnvContext, plan: Plan, recorder: Recorder,
                    exc: BaseException, *, abandon: Callable[[], None] = lambda: None) -> BaseException:
    """Roll back the failed step, record it and the run, and return the error to raise.

    An interrupt (Ctrl-C) is recorded on ``conn`` when it still works, else on a second
    connection, and only then is ``abandon`` called to stop what the server still runs.
    A script's ``sys.exit()`` is a failure of its revision, never an exit code.
    """
    exc = _interrupt_behind(exc) or exc  # e.g. the rollback that the Ctrl-C set off failed on a cut connection
    failed = plan.steps[len(recorder.steps)] if recorder.migrations_started and len(recorder.steps) < len(plan.steps) else None
    interrupted = not isinstance(exc, (Exception, SystemExit))
    said = None  # what the message says when it differs from what is recorded
    if isinstance(exc, SystemExit):
        call = "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
        if failed is not None:
            during = "upgrade()" if failed.direction == "up" else "downgrade()"
            said = f"called {call} during {during}"
            detail = f"revision {failed.revision} {said}"
        else:
            detail = f"{call} was called"
    else:
        detail = "interrupted" if interrupted else first_line(exc)
    committed = committed_statements(recorder.statements, ctx.env.version_table) if failed is not None else []
    recorded = f"{detail}; committed before the failure: {'; '.join(committed)}" if committed else detail
    seen = len(recorder.steps)

    def write(on: Connection) -> tuple[str, ...]:
        del recorder.steps[seen:]  # a failed first attempt's step row was rolled back with it
        recorder.conn = on
        on.rollback()
        if failed is not None:
            recorder.record_step(revision=failed.revision, down_revisions=failed.down_revisions,
                                 direction=failed.direction, sha256=failed.sha256,
                                 status=INTERRUPTED if interrupted else FAILED, error=recorded)
        heads = current_heads(on, ctx)
        recorder.finish_run(status=INTERRUPTED if interrupted else FAILED, heads_after=heads, error=recorded)
        on.commit()
        return heads

    try:
        try:
            heads_after = write(conn)
        except Exception as record_exc:
            if not interrupted:
                where = f" during revision {failed.revision}" if failed else ""
                return DatabaseError(
                    f"environment '{ctx.name}': lost the database connection{where}: {first_line(record_exc)}; "
                    "the run will show as interrupted once the next run takes the lock", env=ctx.name)
            try:
                with conn.engine.connect() as other:  # the interrupt left this session unusable
                    write(other)
            except Exception:
                pass  # the run stays 'running'; `verify` reports it and `repair` (or the next run) marks it
            finally:
                recorder.conn = conn
            return exc
    finally:
        if interrupted:
            abandon()  # stop a statement the server would otherwise run on after we are gone
    if interrupted or isinstance(exc, OrchestratorError):
        return exc
    return MigrationFailed(_failure_message(ctx, failed, said or detail, heads_after, committed), env=ctx.name,
                           revision=failed.revision if failed else None)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """Return the Ctrl-C that an error was raised while handling, if any."""
    seen: set[int] = set()
    cause = exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def _failure_message(ctx: EnvContext, failed: Any, detail: str, heads_after: tuple[str, ...],
                     committed: list[str]) -> str:
    """Say which revision failed, why, and where the database was left (and what of it stayed, on MySQL)."""
    at = ", ".join(heads_after) or "base"
    if failed is None:
        return f"environment '{ctx.name}': migration run failed before any revision ran: {detail}; the database is at {at}"
    where = path_for_display(failed.path, ctx.registry.root)
    if committed:
        count, them = (f"{len(committed)} statements", "them") if len(committed) > 1 else ("1 statement", "it")
        state = (f"the database is at {at}, but MySQL/MariaDB committed {count} of {failed.revision} before the failure "
                 f"(DDL is not transactional there): {'; '.join(committed)}; undo {them} (or make the script skip "
                 f"{them}) before rerunning")
    else:
        state = f"rolled back; the database is at {at}"
    return (f"environment '{ctx.name}': revision {failed.revision} ({where}) failed: {detail}; {state}; "
            f"see `orchestrator runs --env {ctx.name}`")


@contextmanager
def _watching_statements(conn: Connection, recorder: Recorder) -> Iterator[None]:
    """On MySQL/MariaDB, keep the statements each step has run, to tell which stayed committed if it fails."""
    if conn.dialect.name != "mysql":
        yield
        return

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        recorder.statements.append(statement)

    event.listen(conn, "after_cursor_execute", executed)
    try:
        yield
    finally:
        event.remove(conn, "after_cursor_execute", executed)


_DDL = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.I)
_WRITES = re.compile(r"\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE|INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


def committed_statements(statements: list[str], version_table: str) -> list[str]:
    """Return, shortened, the writes a MySQL step made up to its last DDL (each DDL commits all before it)."""
    ours = re.compile(rf"\b({re.escape(version_table)}|orchestrator_runs|orchestrator_steps)\b", re.I)
    writes = [s for s in statements if _WRITES.match(s) and not ours.search(s)]
    last_ddl = max((i for i, s in enumerate(writes) if _DDL.match(s)), default=-1)
    return [_shorten(s) for s in writes[:last_ddl + 1]]


def _shorten(statement: str) -> str:
    """Return a statement on one line, a CREATE TABLE without its column list, at most 100 characters."""
    text = " ".join(statement.split())
    if re.match(r"CREATE TABLE\b", text, re.I) and " (" in text:
        text = text[:text.index(" (")]
    return text if len(text) <= 100 else text[:99] + "…"


def _release(lock: Any, conn: Connection) -> None:
    """Release the lock; a dead connection has released it already."""
    try:
        lock.release()
    except Exception:
        pass
