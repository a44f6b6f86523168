"""The command line: parse, call the verb's function, render, and map errors to exit codes.

This is the only module that catches :class:`~orchestrator.errors.OrchestratorError`
and turns it into an exit; it prints one line (fact, place, remedy) on stderr
and never a traceback unless ``--debug``.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import re
import logging
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import click

from orchestrator import __version__, commands
from orchestrator.context import EnvContext, contexts
from orchestrator.db import first_line
from orchestrator.errors import EXIT_DIFFERENCES, EXIT_FAILURE, EXIT_REFUSED, EXIT_USAGE, OrchestratorError
from orchestrator.executor import NOTHING, RunResult
from orchestrator.loader import path_for_display
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.output import consoles, ids, inert, print_json, table
from orchestrator.redact import RedactingFilter, redact
from orchestrator.registry import Registry, load_registry


@dataclass
class State:
    """Options given before the verb, merged with the verb's own."""

    registry_path: str | None = None
    env: str | None = None
    json: bool = False
    debug: bool = False
    quiet: bool = False
    envs: list[str] = field(default_factory=list)
    _registry: Registry | None = None

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = load_registry(self.registry_path)
        return self._registry

    def context(self) -> EnvContext:
        """Return the selected environment: --env, else ALEMBIC_ENV, else default_env."""
        registry = self.registry()
        return contexts(registry, [registry.select(self.env).name])[0]


OUT, ERR = consoles()
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
_RELATIVE = re.compile(r"[+-]\d+")


class OrchestratorGroup(click.Group):
    """The verb group; click's usage errors become one ``error:`` line and exit 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            OUT.file.write(exc.ctx.get_help() + "\n" if exc.ctx else str(exc))
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
            ERR.file.write(f"error: {inert(exc.format_message().rstrip('.'))}{where}\n")
            sys.exit(EXIT_USAGE)
        except click.Abort:
            ERR.file.write("error: aborted\n")
            sys.exit(EXIT_FAILURE)
        except click.ClickException as exc:
            ERR.file.write(f"error: {inert(exc.format_message())}\n")
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


class RevisionCommand(click.Command):
    """A verb whose revision argument may be relative (``-1``, ``+2``), as in Alembic."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # an option's value (``--lock-timeout -1``) stays with its option; only a free ``-1`` is a revision
        valued = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        relative = [i for i, a in enumerate(args) if _RELATIVE.fullmatch(a) and not (i and args[i - 1] in valued)]
        if "--" not in args and relative:
            args = [a for i, a in enumerate(args) if i not in relative] + ["--"] + [args[i] for i in relative]
        return super().parse_args(ctx, args)


def verb(fn: Callable[..., Any] | None = None, *, many_envs: bool = False) -> Any:
    """Add --env/--json/--registry to a verb, merge them with the group's, and map errors to exits.

    With ``many_envs``, ``--env`` may be repeated and the verb reads ``state.envs``.
    """
    if fn is None:
        return functools.partial(verb, many_envs=many_envs)
    env_help = ("Environment; repeat for several (default: every environment)." if many_envs
                else "Environment (default: $ALEMBIC_ENV, else default_env).")

    @click.option("--registry", "registry_path", metavar="PATH", help="Registry file (default envs/registry.yaml or $ORCHESTRATOR_REGISTRY).")
    @click.option("--env", "env", metavar="NAME", multiple=many_envs, help=env_help)
    @click.option("--json", "as_json", is_flag=True, default=False, help="Print JSON for scripts.")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(click_ctx: click.Context, registry_path: str | None, env: Any, as_json: bool, **kwargs: Any) -> None:
        state: State = click_ctx.ensure_object(State)
        state.registry_path = registry_path or state.registry_path
        if many_envs:
            state.envs = list(dict.fromkeys(env)) or ([state.env] if state.env else [])
        else:
            state.env = env or state.env
        state.json = as_json or state.json
        try:
            fn(state, **kwargs)
        except OrchestratorError as exc:
            fail(state, str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail(state, "interrupted", EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # a bug or an unexpected library error: still one line
            if state.debug:
                ERR.file.write(inert(traceback.format_exc()))
            fail(state, f"internal error: {exc.__class__.__name__}: {first_line(exc)}; rerun with --debug for the traceback",
                 EXIT_FAILURE)

    return wrapper


def fail(state: State, message: str, code: int) -> None:
    """Print the error on stderr (a traceback only with --debug) and exit with ``code``."""
    if state.debug and sys.exc_info()[0] is not None:
        ERR.file.write(inert(traceback.format_exc()))
    ERR.file.write(f"error: {inert(message)}\n")  # (the text may quote a script's exception: no escapes pass)
    ERR.file.flush()
    sys.exit(code)


@contextlib.contextmanager
def verdict_first(state: State, verb_name: str) -> Iterator[None]:
    """Fail (exit 1, one line) when code run while a verdict is computed tries to end the process.

    A revision script calling ``sys.exit(0)`` (at import, or in ``upgrade()``
    when something renders it) must never make a check exit 0 with no verdict.
    """
    try:
        yield
    except (SystemExit, click.exceptions.Exit) as exc:
        code = exc.code if isinstance(exc, SystemExit) else exc.exit_code
        fail(state, f"{_exit_site(state, exc)}: sys.exit({code!r}) was called while `{verb_name}` read the revision "
                    "scripts, before any verdict; remove that call from the script", EXIT_FAILURE)


def _exit_site(state: State, exc: BaseException) -> str:
    """Return ``file:line`` of the innermost Python frame that raised ``exc`` (relative to the project root)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "a revision script"
    frame = frames[-1]
    name = path_for_display(frame.filename, state._registry.root) if state._registry is not None else frame.filename
    return f"{name}:{frame.lineno}"


@click.group(cls=OrchestratorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--registry", "registry_path", metavar="PATH", envvar="ORCHESTRATOR_REGISTRY",
              help="Registry file (default envs/registry.yaml; env ORCHESTRATOR_REGISTRY).")
@click.option("--env", metavar="NAME", help="Environment (default: $ALEMBIC_ENV, else default_env).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--debug", is_flag=True, help="Show tracebacks and SQL logging.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def cli(click_ctx: click.Context, registry_path: str | None, env: str | None, as_json: bool, debug: bool, quiet: bool) -> None:
    """Run Alembic migrations across environments from one YAML registry.

    \b
    Exit codes: 0 done (or nothing to do), 1 database or migration failure,
    2 usage or configuration error, 3 refused by the gate, 4 lock not acquired
    in time, 5 drift or integrity differences found.
    """
    click_ctx.obj = State(registry_path=registry_path, env=env, json=as_json, debug=debug, quiet=quiet)
    if debug:
        handler = logging.StreamHandler(ERR.file)
        handler.addFilter(RedactingFilter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)


def progress(state: State, env: str) -> Callable[[Any], None] | None:
    """Return a callback that prints one stderr line per applied step."""
    if state.quiet:
        return None

    def on_step(step: Any) -> None:
        arrow = {"up": "upgrade", "down": "downgrade", "stamp": "stamp"}.get(step.direction, step.direction)
        outcome = "" if step.status == "succeeded" else f" {step.status.upper()}"
        ERR.file.write(f"  {inert(env)}: {arrow} {inert(step.revision)}{outcome} ({step.duration_ms:.0f} ms)\n")
        ERR.file.flush()

    return on_step


def lock_timeout_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--lock-timeout", type=click.FloatRange(min=0), default=DEFAULT_LOCK_TIMEOUT, show_default=True,
                        metavar="SECONDS", help="How long to wait for another runner's lock.")(fn)


def show_result(state: State, result: RunResult) -> None:
    """Print what a run did."""
    if state.json:
        print_json(OUT, result.to_dict())
        return
    if result.status == NOTHING:
        OUT.line(f"{inert(result.env)}: nothing to do; at {ids(result.heads_after)}")
        return
    verb_done = {"upgrade": "upgraded", "downgrade": "downgraded", "stamp": "stamped"}.get(result.command, result.command)
    OUT.line(f"{inert(result.env)}: {verb_done} {ids(result.plan.heads_before)} -> {ids(result.heads_after)} "
              f"({len(result.steps)} step{'s' if len(result.steps) != 1 else ''}, run {result.run_id[:12] if result.run_id else '-'})")


# ---------------------------------------------------------------------------- verbs


@cli.command("envs")
@verb
def envs_cmd(state: State) -> None:
    """List environments: masked URL, folders, promotion source, protection."""
    rows = commands.envs(state.registry())
    if state.json:
        print_json(OUT, rows)
        return
    OUT.print(table(None, ["env", "url", "version folders", "promote from", "protected"], [
        [r["env"] + (" (default)" if r["default"] else ""), r["url"] or f"error: {r['error']}",
         ", ".join(r["version_locations"]), r["promote_from"] or "-", "yes" if r["protected"] else "no"]
        for r in rows]))


@cli.command("status")
@verb
def status_cmd(state: State) -> None:
    """Show every environment: current heads, target heads, pending steps, last run."""
    rows = commands.status(state.registry(), [state.env] if state.env else None)
    if state.json:
        print_json(OUT, rows)
    else:
        render_status(rows)
    if any(r["error"] for r in rows):
        sys.exit(EXIT_FAILURE)


def render_status(rows: list[dict[str, Any]]) -> None:
    """Print the status table."""
    def last(r: dict[str, Any]) -> str:
        run = r["last_run"]
        if not run:
            return "-"
        text = f"{run['command']} {run['status']} {run['started_at'][:19].replace('T', ' ')}"
        if run["failed_revision"]:
            text += f" at {run['failed_revision']}"
        if run.get("foreign"):
            text += f" (recorded as '{run['env']}')"
        return text

    OUT.print(table(None, ["env", "current heads", "target heads", "pending", "state", "last run"], [
        [r["env"], ids(r["current_heads"]), ids(r["target_heads"]), "-" if r["pending"] is None else r["pending"],
         r["state"] if not r["error"] else f"error: {r['error']}", last(r)] for r in rows]))


@cli.command("plan", cls=RevisionCommand)
@click.argument("target", default="heads")
@click.option("--downgrade", "direction", flag_value="downgrade", help="Plan a downgrade to TARGET instead.")
@verb
def plan_cmd(state: State, target: str, direction: str | None) -> None:
    """Show the steps an upgrade to TARGET (default: all heads) would run; touches nothing."""
    ctx = state.context()
    plan = commands.plan(ctx, target, command=direction or "upgrade")
    if state.json:
        print_json(OUT, plan.to_dict())
        return
    if plan.empty:
        OUT.line(f"{inert(ctx.name)}: nothing to do; at {ids(plan.heads_before)}")
        return
    OUT.line(f"{inert(ctx.name)}: {plan.command} {inert(target)} from {ids(plan.heads_before)}, "
              f"{len(plan.steps)} step(s), fingerprint {plan.fingerprint[:16]}")
    OUT.print(table(None, ["#", "revision", "direction", "message", "script", "sha256"], [
        [i, s.revision, s.direction, s.message, commands.path_for_display(s.path, ctx.registry.root) if s.path else "-",
         s.sha256[:12]] for i, s in enumerate(plan.steps, 1)]))


def _run_verb(state: State, result: RunResult | str) -> None:
    if isinstance(result, str):
        OUT.file.write(result)
    else:
        show_result(state, result)


@cli.command("upgrade", cls=RevisionCommand)
@click.argument("target", default="heads")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it, from the database's current heads "
              "(FROM:TO ranges allowed); gated like upgrade, --force --reason prints a refused plan anyway (recorded).")
@click.option("--force", is_flag=True, help="Override a refusal that allows it (with --reason); recorded.")
@click.option("--reason", metavar="TEXT", help="Why the refusal is being overridden; recorded.")
@lock_timeout_option
@verb
def upgrade_cmd(state: State, target: str, sql: bool, force: bool, reason: str | None, lock_timeout: float) -> None:
    """Upgrade the environment to TARGET (default: all heads)."""
    ctx = state.context()
    _run_verb(state, commands.upgrade(ctx, target, sql=sql, lock_timeout=lock_timeout, force=force, reason=reason,
                                      on_step=progress(state, ctx.name), on_note=note_line))


def note_line(text: str) -> None:
    """Print a note that qualifies the output (e.g. where offline SQL starts) on stderr, even with -q."""
    ERR.file.write(inert(text) + "\n")
    ERR.file.flush()


@cli.command("downgrade", cls=RevisionCommand)
@click.argument("target")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (FROM:TO ranges).")
@click.option("--force", is_flag=True, help="Allow on a protected environment (with --reason).")
@click.option("--reason", metavar="TEXT", help="Why a protected environment is being forced; recorded.")
@lock_timeout_option
@verb
def downgrade_cmd(state: State, target: str, sql: bool, force: bool, reason: str | None, lock_timeout: float) -> None:
    """Downgrade the environment to TARGET (a revision, -N, or base)."""
    ctx = state.context()
    _run_verb(state, commands.downgrade(ctx, target, sql=sql, lock_timeout=lock_timeout, force=force, reason=reason,
                                        on_step=progress(state, ctx.name)))


@cli.command("stamp", cls=RevisionCommand)
@click.argument("target")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--force", is_flag=True, help="Allow on a protected environment (with --reason).")
@click.option("--reason", metavar="TEXT", help="Why a protected environment is being forced; recorded.")
@lock_timeout_option
@verb
def stamp_cmd(state: State, target: str, sql: bool, force: bool, reason: str | None, lock_timeout: float) -> None:
    """Set the version table to TARGET without running migrations."""
    ctx = state.context()
    _run_verb(state, commands.stamp(ctx, target, sql=sql, lock_timeout=lock_timeout, force=force, reason=reason))


@cli.command("current")
@verb
def current_cmd(state: State) -> None:
    """Show the revisions the environment's database is at."""
    data = commands.current(state.context())
    if state.json:
        print_json(OUT, data)
        return
    if not data["heads"]:
        OUT.line(f"{inert(data['env'])}: (empty: no revision applied)")
    for h in data["heads"]:
        OUT.line(f"{inert(data['env'])}: {inert(h['revision'])} {inert(h['message'] or '(not in any visible folder)')}")


@cli.command("heads")
@verb
def heads_cmd(state: State) -> None:
    """Show the head revisions of the graph the environment sees."""
    data = commands.heads(state.context())
    if state.json:
        print_json(OUT, data)
        return
    for h in data["heads"]:
        labels = f" ({', '.join(h['branch_labels'])})" if h["branch_labels"] else ""
        OUT.line(f"{inert(h['revision'])}{inert(labels)} {inert(h['message'])} [{inert(h['folder'])}]")


@cli.command("history")
@verb
def history_cmd(state: State) -> None:
    """List the revisions the environment sees, newest first."""
    data = commands.history(state.context())
    if state.json:
        print_json(OUT, data)
        return
    OUT.print(table(None, ["revision", "revises", "message", "folder"], [
        [r["revision"] + (" (head)" if r["is_head"] else ""), ids(r["down_revisions"]), r["message"], r["folder"]]
        for r in data["revisions"]]))


@cli.command("revision")
@click.option("-m", "--message", required=True, help="The revision's message.")
@click.option("--autogenerate", is_flag=True, help="Compare the models with the database and write the operations.")
@click.option("--head", metavar="REV", help="The revision to build on (needed when the environment has several heads).")
@click.option("--branch-label", metavar="NAME", help="A branch label for the new revision.")
@click.option("--depends-on", metavar="REV", help="A revision the new one depends on.")
@click.option("--rev-id", metavar="ID", help="Use this revision id instead of a generated one.")
@verb
def revision_cmd(state: State, message: str, autogenerate: bool, head: str | None, branch_label: str | None,
                 depends_on: str | None, rev_id: str | None) -> None:
    """Write a new revision into the environment's authoring folder."""
    data = commands.revision(state.context(), message, autogenerate=autogenerate, head=head,
                             branch_label=branch_label, depends_on=depends_on, rev_id=rev_id)
    if state.json:
        print_json(OUT, data)
        return
    for r in data["revisions"]:
        OUT.line(f"{inert(data['env'])}: wrote {inert(r['revision'])} to {inert(r['path'])}")


@cli.command("runs")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs, newest first.")
@click.option("--run", "run_id", metavar="ID", help="Only the run whose id starts with ID, with its steps.")
@verb
def runs_cmd(state: State, limit: int, run_id: str | None) -> None:
    """Show the run history recorded in the environment's database (runs under other names marked)."""
    data = commands.runs(state.context(), limit=limit, run_id=run_id)
    if state.json:
        print_json(OUT, data)
        return
    if not data["runs"]:
        OUT.line(f"{inert(data['env'])}: no runs recorded")
        return
    OUT.print(table(f"{data['env']}: runs", ["run", "command", "target", "status", "started (UTC)", "operator", "steps", "error"], [
        [r["run_id"][:12], r["command"], r["target"], run_status_text(r), (r["started_at"] or "")[:19].replace("T", " "),
         r["operator"], len(r["steps"]), r["error"] or ""] for r in data["runs"]]))
    if run_id:
        for r in data["runs"]:
            OUT.print(table(f"run {r['run_id'][:12]}: steps", ["#", "revision", "direction", "status", "ms", "sha256", "error"], [
                [s["seq"], s["revision"], s["direction"], s["status"], s["duration_ms"], (s["script_sha256"] or "")[:12],
                 s["error"] or ""] for s in r["steps"]]))


def run_status_text(run: dict[str, Any]) -> str:
    """Return a run's status as ``runs`` shows it: forced runs and runs recorded under another name marked."""
    text = run["status"] + (" (forced)" if run.get("forced_reason") and run["status"] != "blocked" else "")
    return text + (f" (recorded as '{run['env']}')" if run.get("foreign") else "")


@cli.command("promote")
@click.option("--to", "to", required=True, metavar="ENV", help="The environment to bring up to its promote_from.")
@lock_timeout_option
@verb
def promote_cmd(state: State, to: str, lock_timeout: float) -> None:
    """Apply to ENV exactly the revisions its promote_from environment has applied."""
    show_result(state, commands.promote(state.registry(), to, lock_timeout=lock_timeout, on_step=progress(state, to)))


@cli.command("rollout")
@click.option("--to", "to", metavar="ENV", help="Stop after this environment (default: the whole chain).")
@lock_timeout_option
@verb
def rollout_cmd(state: State, to: str | None, lock_timeout: float) -> None:
    """Upgrade the chain's first environment, then promote environment by environment; stop at the first failure."""
    registry = state.registry()
    current_env = {"name": ""}

    def on_env(name: str) -> None:
        current_env["name"] = name
        if not state.quiet:
            ERR.file.write(f"{inert(name)}:\n")

    def on_step(step: Any) -> None:
        cb = progress(state, current_env["name"])
        if cb:
            cb(step)

    results = commands.rollout(registry, to, lock_timeout=lock_timeout, on_step=on_step, on_env=on_env)
    if state.json:
        print_json(OUT, [r.to_dict() for r in results])
        return
    for r in results:
        show_result(state, r)
    OUT.line()
    render_status(commands.status(registry, [e.name for e in registry.promotion_chain(to)]))


@cli.command("ini")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout.")
@verb
def ini_cmd(state: State, output: str | None) -> None:
    """Write an alembic.ini with which stock `alembic` works on the environment."""
    ctx = state.context()
    text = commands.ini(ctx, output)
    if state.json:
        print_json(OUT, {"env": ctx.name, "path": output, "ini": text})
    elif output:
        OUT.line(f"{inert(ctx.name)}: wrote {inert(output)}")
    else:
        OUT.file.write(text)


# ---------------------------------------------------------------------------- the gate


@cli.group("review")
def review_group() -> None:
    """The review ledger: approvals bound to each script's sha256."""


@review_group.command("approve")
@click.argument("revision")
@click.option("--reviewer", required=True, metavar="NAME", help="Who reviewed the script.")
@click.option("--note", metavar="TEXT", help="Why it is fine.")
@click.option("--ack", "ack", multiple=True, metavar="RULE", help="Acknowledge a lint rule the script trips (repeatable).")
@verb
def review_approve_cmd(state: State, revision: str, reviewer: str, note: str | None, ack: tuple[str, ...]) -> None:
    """Approve REVISION's current content."""
    data = commands.review_approve(state.registry(), revision, reviewer, note=note, ack=ack)
    if state.json:
        print_json(OUT, data)
        return
    OUT.line(f"approved {inert(data['revision'])} ({inert(data['path'])}, sha256 {data['sha256'][:12]}) by {inert(data['reviewer'])}")
    for f in data["unacknowledged_errors"]:
        ERR.file.write(f"warning: {inert(f['env'])}: lint error {f['rule']} ({inert(f['message'])}) is not acknowledged; "
                       f"approve with --ack {f['rule']} if it is intended\n")


@review_group.command("revoke")
@click.argument("revision")
@verb
def review_revoke_cmd(state: State, revision: str) -> None:
    """Remove REVISION's approval."""
    data = commands.review_revoke(state.registry(), revision)
    if state.json:
        print_json(OUT, data)
    else:
        OUT.line(f"revoked the approval of {inert(data['revision'])}")


@review_group.command("status")
@click.option("--all", "everything", is_flag=True, help="Every revision the environment sees, not only pending ones.")
@verb
def review_status_cmd(state: State, everything: bool) -> None:
    """Show each pending revision: reviewed, unreviewed or stale, and its lint findings."""
    data = commands.review_status(state.context(), everything=everything)
    if state.json:
        print_json(OUT, data)
        return
    if not data["revisions"]:
        OUT.line(f"{inert(data['env'])}: nothing pending")
        return
    OUT.print(table(f"{data['env']}: reviews", ["revision", "state", "reviewer", "lint", "script"], [
        [r["revision"], r["state"], r["reviewer"] or "-",
         ", ".join(f"{f['rule']} ({f['severity']}{', acknowledged' if f['acknowledged'] else ''})" for f in r["lint"]) or "-",
         r["path"]] for r in data["revisions"]]))


@review_group.command("check")
@click.option("--all", "everything", is_flag=True, help="Judge every revision the environment sees (no database needed).")
@verb
def review_check_cmd(state: State, everything: bool) -> None:
    """Exit 3 if anything pending for the environment is unreviewed, stale or has unacknowledged lint errors."""
    with verdict_first(state, "review check"):
        data = commands.review_check(state.context(), everything=everything)
    if state.json:
        print_json(OUT, data)
    elif data["problems"]:
        for problem in data["problems"]:
            OUT.line(f"{inert(data['env'])}: {inert(problem)}")
    else:
        OUT.line(f"{inert(data['env'])}: {len(data['checked'])} revision(s) checked; all reviewed")
    if data["problems"]:
        sys.exit(EXIT_REFUSED)


@cli.command("lint")
@click.argument("revisions", nargs=-1)
@click.option("--pending", is_flag=True, help="Only the revisions pending on the environment's database.")
@click.option("--strict", is_flag=True, help="Exit 3 when an error-severity finding is present.")
@verb
def lint_cmd(state: State, revisions: tuple[str, ...], pending: bool, strict: bool) -> None:
    """Find unsafe operations in the SQL each revision emits (default: every revision the environment sees)."""
    with verdict_first(state, "lint"):
        data = commands.lint(state.context(), revisions, pending=pending)
    if state.json:
        print_json(OUT, data)
    elif not data["findings"]:
        OUT.line(f"{inert(data['env'])}: {len(data['revisions'])} revision(s) linted on {data['dialect']}; no findings")
    else:
        OUT.print(table(f"{data['env']}: lint on {data['dialect']}", ["revision", "rule", "severity", "finding"], [
            [f["revision"], f["rule"], f["severity"], f["message"]] for f in data["findings"]]))
    if strict and any(f["severity"] == "error" for f in data["findings"]):
        sys.exit(EXIT_REFUSED)


@cli.command("verify")
@verb
def verify_cmd(state: State) -> None:
    """Check integrity: graphs, edited applied scripts, unknown or unrecorded revisions, runs under other names, stray heads."""
    with verdict_first(state, "verify"):
        data = commands.verify(state.registry(), [state.env] if state.env else None)
    if state.json:
        print_json(OUT, data)
    else:
        for finding in data["findings"]:
            OUT.line(inert(finding))
        if not data["findings"] and not data["unreachable"]:
            OUT.line("verified: no integrity findings")
    for problem in data["unreachable"]:
        ERR.file.write(f"error: {inert(problem)}\n")
    if data["findings"]:
        sys.exit(EXIT_DIFFERENCES)
    if data["unreachable"]:
        sys.exit(EXIT_FAILURE)


@cli.command("repair")
@click.option("--reason", required=True, metavar="TEXT", help="Why the history is being repaired; recorded with the run.")
@lock_timeout_option
@verb
def repair_cmd(state: State, reason: str, lock_timeout: float) -> None:
    """Mark dead runners' runs interrupted; accept edited applied scripts whose new content is approved.

    \b
    Works under the environment's lock (holding it proves no runner is alive):
    every run still recorded as running is marked interrupted. An applied
    script edited since is accepted only when the review ledger approves its
    new sha256 (`review approve`), on any environment; otherwise the repair is
    refused (exit 3) naming the revision and both hashes, and nothing changes.
    What it did is recorded as a `repair` run carrying the reason, with one
    `repair` step (old and new sha256) per accepted script, so `verify` is
    clean again. Nothing is ever deleted from the history.
    """
    ctx = state.context()
    data = commands.repair(ctx, reason=reason, lock_timeout=lock_timeout)
    if state.json:
        print_json(OUT, data)
        return
    for r in data["interrupted_runs"]:
        OUT.line(f"{inert(ctx.name)}: run {r['run_id'][:12]} ({inert(r['command'])} by {inert(r['operator'])}, started "
                 f"{r['started_at'][:19].replace('T', ' ')} UTC) marked interrupted: its runner is gone")
    for a in data["accepted"]:
        OUT.line(f"{inert(ctx.name)}: accepted revision {inert(a['revision'])} ({inert(a['path'])}) at sha256 "
                 f"{a['new_sha256']} in place of {a['old_sha256']}, approved by {inert(a['reviewer'])}")
    if data["run_id"]:
        OUT.line(f"{inert(ctx.name)}: repaired (run {data['run_id'][:12]})")
    else:
        OUT.line(f"{inert(ctx.name)}: nothing to repair")


@cli.command("release")
@click.argument("revision")
@click.option("--to", "to", metavar="FOLDER", help="Destination folder (default: the first folder of the chain's last environment).")
@verb
def release_cmd(state: State, revision: str, to: str | None) -> None:
    """Move a reviewed candidate revision into the promoted folder (e.g. versions_test -> versions_prod)."""
    data = commands.release(state.registry(), revision, to=to)
    if state.json:
        print_json(OUT, data)
    else:
        OUT.line(f"released {inert(data['revision'])}: {inert(data['from'])} -> {inert(data['to'])}")


@cli.command("ci-matrix")
@click.option("--format", "fmt", type=click.Choice(["json", "github"]), default="json", show_default=True,
              help="json: the matrix object; github: one `matrix=...` line for $GITHUB_OUTPUT.")
@click.option("--dialects", default="sqlite,postgresql,mysql", show_default=True, metavar="LIST",
              help="Comma-separated dialects.")
@verb
def ci_matrix_cmd(state: State, fmt: str, dialects: str) -> None:
    """Print the environment x dialect matrix for CI (every environment, or --env)."""
    chosen = tuple(d.strip() for d in dialects.split(",") if d.strip())
    data = commands.ci_matrix(state.registry(), dialects=chosen, names=[state.env] if state.env else None)
    if fmt == "github":
        OUT.file.write("matrix=" + json.dumps(data, separators=(",", ":")) + "\n")
    else:
        print_json(OUT, data)


@cli.command("report")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown", "html"]), default="text",
              show_default=True, help="Output format (--json is --format json).")
@click.option("-o", "--output", metavar="FILE", help="Write the report to FILE instead of stdout.")
@click.option("--since", metavar="DATE", help="Only runs and steps from DATE on (YYYY-MM-DD or ISO-8601, UTC).")
@click.option("--drift", is_flag=True, help="Also compare each environment's models with its database.")
@click.option("--schema", "schema", is_flag=True, help="Print the JSON Schema of the json format and exit.")
@verb(many_envs=True)
def report_cmd(state: State, fmt: str, output: str | None, since: str | None, drift: bool, schema: bool) -> None:
    """Audit report: revisions x environments, who applied what when, reviewers, failed/forced runs.

    \b
    Exit codes: 0 report complete; 1 an environment could not be read (the
    report still covers the others and says why); 5 --drift found differences.
    """
    from orchestrator.render import render
    from orchestrator.report import Report

    if schema:
        print_json(OUT, Report.model_json_schema())
        return
    fmt = "json" if state.json else fmt
    report = commands.report(state.registry(), state.envs or None, since=since, drift=drift)
    text = redact(render(report, fmt))
    if output:
        commands.write_file(output, text)
        ERR.file.write(f"report written to {inert(output)} ({fmt})\n")
    else:
        OUT.file.write(text)
        OUT.file.flush()
    for d in report.details:
        if not d.reachable:
            ERR.file.write(f"error: {inert(d.error)}\n")
    if any(not d.reachable for d in report.details):
        sys.exit(EXIT_FAILURE)
    if any(d.drift is not None and d.drift.state == "drifted" for d in report.details):
        sys.exit(EXIT_DIFFERENCES)


@cli.command("import-sql")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--into", "into", required=True, metavar="FOLDER", help="The version folder to write into (one the registry lists).")
@click.option("--down-revision", metavar="REV", help="What the first imported revision builds on (default: the folder's head; `base` for none).")
@click.option("--dialect", type=click.Choice(["sqlite", "postgresql", "mysql"]), default=None,
              help="The files' SQL flavour; mysql: backslash escapes in quotes and # comments (default: standard SQL).")
@verb
def import_sql_cmd(state: State, directory: str, into: str, down_revision: str | None, dialect: str | None) -> None:
    """Turn numbered SQL files (vNNN_description.sql, NNN_name.up.sql/.down.sql) into a chain of revisions."""
    data = commands.import_sql(state.registry(), directory, into, down_revision=down_revision, dialect=dialect)
    for warning in data["warnings"]:
        ERR.file.write(f"warning: {inert(warning)}\n")
    if state.json:
        print_json(OUT, data)
        return
    for row in data["revisions"]:
        if row["status"] == "unchanged":
            OUT.line(f"{inert(row['revision'])}: unchanged ({inert(row['path'])})")
            continue
        down = "with downgrade" if row["reversible"] else "irreversible"
        OUT.line(f"{inert(row['revision'])}: {inert(row['file'])} -> {inert(row['path'])} "
                 f"({row['statements']} statement{'s' if row['statements'] != 1 else ''}, {down})")


# ---------------------------------------------------------------------------- drift and adopt


def show_differences(prefix: str, differences: list[dict[str, Any]]) -> None:
    """Print one line per difference."""
    for d in differences:
        OUT.line(f"{prefix}{inert(d['detail'])}")


@cli.command("check")
@verb
def check_cmd(state: State) -> None:
    """Compare the models (target_metadata) with the environment's database; exit 5 listing each difference.

    \b
    Uses Alembic's autogenerate comparison; the history tables, the version
    table and the registry's exclude_tables are left out.
    """
    data = commands.check(state.context())
    if state.json:
        print_json(OUT, data)
    elif data["differences"]:
        show_differences(f"{inert(data['env'])}: ", data["differences"])
        count = len(data["differences"])
        OUT.line(f"{inert(data['env'])}: {count} difference{'s' if count != 1 else ''} between the database and "
                 f"the models ({inert(data['target_metadata'])})")
    else:
        OUT.line(f"{inert(data['env'])}: no drift: the database matches the models ({inert(data['target_metadata'])})")
    if data["differences"]:
        sys.exit(EXIT_DIFFERENCES)


@cli.command("diff")
@click.argument("env_a", metavar="ENV_A")
@click.argument("env_b", metavar="ENV_B")
@verb
def diff_cmd(state: State, env_a: str, env_b: str) -> None:
    """Compare the live schemas of two environments; exit 5 listing each difference.

    \b
    Tables, columns, types, nullability, server defaults, primary keys,
    indexes, unique and foreign keys, by reflection. Across dialects types are
    compared by family (integer, string(n), text, datetime, json, ...) and
    server defaults are not compared; a note says so.
    """
    data = commands.diff(state.registry(), env_a, env_b)
    if state.json:
        print_json(OUT, data)
    else:
        show_differences("", data["differences"])
        for note in data["notes"]:
            OUT.line(f"note: {inert(note)}")
        count = len(data["differences"])
        if count:
            OUT.line(f"{inert(env_a)} and {inert(env_b)}: {count} difference{'s' if count != 1 else ''}")
        else:
            OUT.line(f"{inert(env_a)} and {inert(env_b)}: no differences")
    if data["differences"]:
        sys.exit(EXIT_DIFFERENCES)


@cli.command("adopt")
@click.option("--revision", "revision", required=True, metavar="REV|auto",
              help="The revision the database is believed to be at, or auto: the newest whose schema matches.")
@lock_timeout_option
@verb
def adopt_cmd(state: State, revision: str, lock_timeout: float) -> None:
    """Stamp a database that has tables but no version table, if its schema is exactly REV's.

    \b
    REV's schema is built in a scratch database of the same dialect (a
    temporary SQLite file, or a database created on the same server and
    always dropped) and compared with the live one by reflection. A match is
    stamped under the lock and recorded as an `adopt` run (allowed on
    protected environments: nothing but the version table is written). Any
    difference is listed, nothing is written, exit 5. With auto on a SQLite
    database whose PRAGMA user_version is N, the revision carrying
    `orchestrator_sql_version = N` (from import-sql) is the one tried.
    """
    ctx = state.context()
    data = commands.adopt(ctx, revision, lock_timeout=lock_timeout)
    if state.json:
        print_json(OUT, data)
    elif data["status"] == "adopted":
        how = {"given": "", "auto": " (the newest revision whose schema matches)"}.get(
            data["chosen_by"], f" (chosen by {data['chosen_by']})")
        OUT.line(f"{inert(ctx.name)}: adopted at {inert(data['revision'])}{how}: the database has exactly its schema; "
                 f"stamped (run {data['run']['run_id'][:12]})")
    else:
        show_differences(f"{inert(ctx.name)}: ", data["differences"])
        closest = "" if data["chosen_by"] != "auto" else " (the closest of the revisions tried)"
        count = len(data["differences"])
        OUT.line(f"{inert(ctx.name)}: not adopted: the database differs from revision {inert(data['revision'])}"
                 f"{closest} in {count} place{'s' if count != 1 else ''}; nothing written")
    if data["status"] != "adopted":
        sys.exit(EXIT_DIFFERENCES)


def _warning_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Print a library warning as one ``warning:`` line on stderr."""
    ERR.file.write(f"warning: {inert(' '.join(str(message).split()))}\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``orchestrator`` console script."""
    warnings.showwarning = _warning_line
    # what start-up imported lives as long as the process: keep it out of the collector's full passes
    gc.freeze()
    try:
        cli.main(args=argv, prog_name="orchestrator")
    except KeyboardInterrupt:
        ERR.file.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
