"""The one call an ``env.py`` makes to run migrations under the orchestrator.

The packaged ``env.py`` is just ``run_migrations()``; a team's own ``env.py``
replaces its online/offline boilerplate with the same call::

    from orchestrator.envpy import run_migrations
    run_migrations(target_metadata=Base.metadata)

When the orchestrator drives Alembic it hands over its connection and
recorder; when stock ``alembic`` (or a tool such as pytest-alembic) runs the
env.py, this helper takes the lock, consults the gate and records the run
itself, so nothing applied through Alembic escapes the history or the gate.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from orchestrator.alembic_compat import run_planned
from orchestrator.context import ENV_ATTRIBUTE, REGISTRY_ATTRIBUTE, RUN_ATTRIBUTE, EnvContext
from orchestrator.errors import ConfigError, GateRefused, OrchestratorError
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.recorder import HISTORY_TABLES, Recorder
from orchestrator.registry import Environment, Registry, load_registry

# the alembic.command verbs (public functions, named in config.cmd_opts by the alembic command line)
_RECORDED_COMMANDS = ("upgrade", "downgrade", "stamp")
# verbs that run env.py without a destination and apply nothing
_READ_ONLY_COMMANDS = ("current", "check", "revision", "ensure_version")


def run_migrations(context: Any = None, *, target_metadata: Any = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                   **configure_kwargs: Any) -> None:
    """Run the migrations Alembic asked for, with the orchestrator's lock, gate and history.

    :param context: ``alembic.context`` (imported when omitted).
    :param target_metadata: the models' MetaData; defaults to the registry's ``target_metadata``.
    :param lock_timeout: seconds to wait for another runner when stock Alembic runs this.
    :param configure_kwargs: extra options for ``context.configure``.
    """
    if context is None:
        from alembic import context
    stock = ENV_ATTRIBUTE not in context.config.attributes  # the orchestrator sets it on the Config it hands over
    registry, env = _environment(context.config)
    opts = _configure_options(registry, env, target_metadata, configure_kwargs)
    if context.is_offline_mode():
        if stock and env.protected:
            raise CommandError(
                f"environment '{env.name}' is protected: stock alembic --sql would render scripts outside the "
                f"review gate; use `orchestrator upgrade --env {env.name} --sql`")
        if stock:  # the judged bytes here too, not Alembic's own load of the scripts
            context.script.revision_map = EnvContext(registry, env).script.revision_map
        context.configure(url=env.url(), literal_binds=True, dialect_opts={"paramstyle": "named"}, **opts)
        with context.begin_transaction():
            context.run_migrations()
        return
    recorder: Recorder | None = context.config.attributes.get(RUN_ATTRIBUTE)
    connection: Connection | Engine | None = context.config.attributes.get("connection")
    if recorder is not None and isinstance(connection, Connection):
        _run_online(context, connection, recorder, opts)
        return
    try:
        _run_guarded(context, registry, env, connection, opts, lock_timeout)
    except OrchestratorError as exc:
        # stock alembic reports CommandError as one 'FAILED:' line (and exits 255)
        raise CommandError(str(exc)) from exc


def _run_guarded(context: Any, registry: Registry, env: Environment, connection: Connection | Engine | None,
                 opts: dict[str, Any], lock_timeout: float) -> None:
    """Take the lock and record the run ourselves (stock alembic or another tool drives)."""
    from orchestrator.db import run_with_connection
    from orchestrator.executor import run_locked

    ctx = EnvContext(registry, env)
    # stock alembic runs the scripts the orchestrator read, hashed and judges, never its own load of them
    context.script.revision_map = ctx.script.revision_map

    def work(conn: Connection) -> None:
        command, target = _classify(context, ctx, conn)
        if command is None:  # current, check, revision --autogenerate: nothing to record
            _run_online(context, conn, None, dict(opts, on_version_apply=_applies_nothing(ctx)))
            return
        def invoke(c: Connection, rec: Recorder) -> None:
            run_planned(context.script, command, rec)  # the gate passed: the planned scripts may run now
            _run_online(context, c, rec, opts, verb=command)

        run_locked(conn, ctx, command, target, invoke, lock_timeout=lock_timeout)

    if isinstance(connection, Engine):  # pytest-alembic may hand over an Engine
        with connection.connect() as conn:
            ctx.__dict__["url"] = conn.engine.url  # lock and record where the migration runs
            work(conn)
    elif connection is not None:
        ctx.__dict__["url"] = connection.engine.url
        work(connection)
    else:
        run_with_connection(ctx.url, env.name, work)


def _classify(context: Any, ctx: EnvContext, conn: Connection) -> tuple[str | None, Any]:
    """Return the verb stock alembic runs (upgrade, downgrade, stamp; None: one that applies nothing) and its target.

    Read from public seams only: the destination (``get_revision_argument``),
    the verb the alembic command line was given (``config.cmd_opts``) and the
    direction from the database's current heads to the destination. A run that
    cannot be told apart on a protected environment is refused.
    """
    from orchestrator.plan import build_plan
    from orchestrator.state import current_heads

    cmd = getattr(context.config.cmd_opts, "cmd", None)
    verb = getattr(cmd[0], "__name__", None) if isinstance(cmd, tuple) and cmd else None
    try:
        destination = context.get_revision_argument()
    except KeyError:  # no destination: a verb that reads (current, check, revision --autogenerate)
        if verb is None or verb in _READ_ONLY_COMMANDS:
            return None, None  # run with a hook that fails it, on a protected environment, should it apply a step
        raise _unclassified(ctx, verb, "no destination revision")
    # Alembic hands over None for "base", and a tuple for several heads
    if destination is None:
        target: Any = "base"
    elif isinstance(destination, (tuple, list)):
        target = destination[0] if len(destination) == 1 else tuple(destination)
    else:
        target = destination
    if verb in _RECORDED_COMMANDS:
        return verb, target
    if verb is not None and ctx.env.protected:
        raise _unclassified(ctx, verb, f"destination {target}")
    heads = current_heads(conn, ctx)
    conn.rollback()
    steps = {}
    for direction in ("upgrade", "downgrade"):
        try:
            steps[direction] = build_plan(ctx.name, direction, target, heads, ctx.script, ctx.graph).steps
        except OrchestratorError:
            continue
    moving = [direction for direction, found in steps.items() if found]
    if len(moving) == 1 or (steps and not moving):
        # through Alembic's Python API a stamp looks like an upgrade here: each step is checked as it applies
        return (moving or list(steps))[0], target
    if ctx.env.protected:
        raise _unclassified(ctx, verb, f"destination {target}")
    return None, None


def _unclassified(ctx: EnvContext, verb: str | None, what: str) -> GateRefused:
    shown = f"alembic {verb}" if verb else "Alembic driven through its Python API"
    return GateRefused(
        f"environment '{ctx.name}' is protected and the orchestrator cannot tell what {shown} would do ({what}); "
        f"nothing was run; use `orchestrator upgrade --env {ctx.name}` (or downgrade, stamp)", env=ctx.name,
        reasons=(f"cannot classify {shown} ({what})",))


def _applies_nothing(ctx: EnvContext) -> Callable[..., None]:
    """Return an ``on_version_apply`` hook that fails a run expected to apply nothing, should it apply a step."""

    def hook(*, step: Any, **_: Any) -> None:
        if ctx.env.protected:
            raise CommandError(f"environment '{ctx.name}' is protected: Alembic applied a step "
                               f"({getattr(step, 'up_revision_id', None)}) in a run the orchestrator took for one "
                               "that applies nothing; it is rolled back where DDL is transactional")

    return hook


def _run_online(context: Any, connection: Connection, recorder: Recorder | None, opts: dict[str, Any],
                verb: str | None = None) -> None:
    """Configure Alembic on ``connection`` and run the steps, recording each through ``recorder``.

    ``verb``, when the run was classified from outside (stock alembic), is checked against each step as it
    applies: a stamp step in a run judged as an upgrade (or the reverse) fails the run before it is recorded.
    """
    if recorder is not None:
        opts = dict(opts, on_version_apply=recorder.on_version_apply if verb is None else _checked(recorder, verb))
    if connection.dialect.name == "sqlite":
        opts.setdefault("transactional_ddl", True)
    # Alembic commits each step itself only outside a caller's transaction
    commits_each_step = bool(opts.get("transaction_per_migration")) and not connection.in_transaction()
    context.configure(connection=connection, **opts)
    with context.begin_transaction():
        if recorder is not None:
            recorder.begin_steps(connection, commits_each_step=commits_each_step)
        context.run_migrations()


def _checked(recorder: Recorder, verb: str) -> Callable[..., None]:
    """Return ``recorder.on_version_apply``, refusing a step of another kind than the verb the gate judged."""

    def hook(*, step: Any, **kwargs: Any) -> None:
        if bool(step.is_stamp) != (verb == "stamp"):
            raise CommandError(f"environment '{recorder.env}': Alembic applied a {'stamp' if step.is_stamp else 'migration'}"
                               f" step in a run judged as {verb}; it is rolled back; run it through `orchestrator {verb}`")
        recorder.on_version_apply(step=step, **kwargs)

    return hook


def _environment(config: Any) -> tuple[Registry, Environment]:
    """Return the registry and environment Alembic runs for."""
    env = config.attributes.get(ENV_ATTRIBUTE)
    registry = config.attributes.get(REGISTRY_ATTRIBUTE)
    if env is not None and registry is not None:
        return registry, env
    try:
        registry = load_registry(config.get_main_option("orchestrator.registry") or None)
        env = registry.select(config.get_main_option("orchestrator.env") or None)
    except OrchestratorError as exc:
        raise CommandError(str(exc)) from exc
    config.attributes[ENV_ATTRIBUTE] = env
    config.attributes[REGISTRY_ATTRIBUTE] = registry
    return registry, env


def _configure_options(registry: Registry, env: Environment, target_metadata: Any,
                       extra: dict[str, Any]) -> dict[str, Any]:
    """Return the ``context.configure`` options the registry asks for."""
    if target_metadata is None and env.target_metadata:
        target_metadata = import_object(env.target_metadata, registry)
    opts: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table": env.version_table,
        "version_table_schema": env.version_table_schema,
        "transaction_per_migration": env.transaction_per_migration,
        "include_object": excluding(env.exclude_tables, extra.pop("include_object", None)),
    }
    opts.update(extra)
    return opts


def excluding(tables: tuple[str, ...], user_filter: Callable[..., bool] | None = None) -> Callable[..., bool]:
    """Return an ``include_object`` hook that hides the history tables and ``exclude_tables``."""
    hidden = set(HISTORY_TABLES) | set(tables)

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and name in hidden:
            return False
        table = getattr(obj, "table", None)
        if table is not None and getattr(table, "name", None) in hidden:
            return False
        return user_filter(obj, name, type_, reflected, compare_to) if user_filter else True

    return include_object


def _forget_other_copy(package: str, root: Path) -> None:
    """Drop ``package`` from sys.modules when it was imported from elsewhere and the project has its own copy."""
    loaded = sys.modules.get(package)
    if loaded is None:
        return
    origin = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", None) or ()), None)
    own = root / package
    if origin is None or not (own.is_dir() or own.with_suffix(".py").is_file()):
        return
    if Path(origin).resolve().is_relative_to(root.resolve()):
        return
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def import_object(spec: str, registry: Registry) -> Any:
    """Import ``package.module:attr.path`` with the project root on ``sys.path``."""
    module_name, _, attr_path = spec.partition(":")
    root = str(registry.root)
    if sys.path[:1] != [root]:
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
    _forget_other_copy(module_name.partition(".")[0], registry.root)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, attr_path.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{registry.path}: project.target_metadata {spec!r} cannot be imported: {exc}; "
            "check the module path (relative to the project root) and the attribute"
        ) from None
    return obj
