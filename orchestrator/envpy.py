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

from orchestrator.context import ENV_ATTRIBUTE, REGISTRY_ATTRIBUTE, RUN_ATTRIBUTE, EnvContext
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.lock import DEFAULT_LOCK_TIMEOUT
from orchestrator.recorder import HISTORY_TABLES, Recorder
from orchestrator.registry import Environment, Registry, load_registry

# the names of the inner functions alembic.command passes to env.py, per verb
_RECORDED_COMMANDS = {"upgrade": "upgrade", "downgrade": "downgrade", "do_stamp": "stamp"}


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
    registry, env = _environment(context.config)
    opts = _configure_options(registry, env, target_metadata, configure_kwargs)
    if context.is_offline_mode():
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

    command = _invoked_command(context)
    ctx = EnvContext(registry, env)

    def work(conn: Connection) -> None:
        if command is None:  # current, history, revision --autogenerate, check: nothing to record
            _run_online(context, conn, None, opts)
            return
        target = context.get_revision_argument()
        # Alembic hands over None for "base"
        target = "base" if target is None else (" ".join(target) if isinstance(target, tuple) else target)
        run_locked(conn, ctx, command, target, lambda c, rec: _run_online(context, c, rec, opts),
                   lock_timeout=lock_timeout)

    if isinstance(connection, Engine):  # pytest-alembic may hand over an Engine
        with connection.connect() as conn:
            ctx.__dict__["url"] = conn.engine.url  # lock and record where the migration runs
            work(conn)
    elif connection is not None:
        ctx.__dict__["url"] = connection.engine.url
        work(connection)
    else:
        run_with_connection(ctx.url, env.name, work)


def _invoked_command(context: Any) -> str | None:
    """Return upgrade, downgrade or stamp when Alembic runs one of those, else None."""
    # alembic.context is a module proxy; the EnvironmentContext behind it keeps the
    # verb's step function in its options (the only place the verb is known when
    # Alembic is driven through its Python API rather than its command line)
    instance = getattr(context, "_proxy", None) or context
    fn = getattr(instance, "context_opts", {}).get("fn")
    name = getattr(fn, "__name__", "")
    if not name and context.config.cmd_opts is not None:
        name = getattr(getattr(context.config.cmd_opts, "cmd", (None,))[0], "__name__", "")
    return _RECORDED_COMMANDS.get(name)


def _run_online(context: Any, connection: Connection, recorder: Recorder | None, opts: dict[str, Any]) -> None:
    """Configure Alembic on ``connection`` and run the steps, recording each through ``recorder``."""
    if recorder is not None:
        opts = dict(opts, on_version_apply=recorder.on_version_apply)
    if connection.dialect.name == "sqlite":
        opts.setdefault("transactional_ddl", True)
    # Alembic commits each step itself only outside a caller's transaction
    commits_each_step = bool(opts.get("transaction_per_migration")) and not connection.in_transaction()
    context.configure(connection=connection, **opts)
    with context.begin_transaction():
        if recorder is not None:
            recorder.begin_steps(connection, commits_each_step=commits_each_step)
        context.run_migrations()


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
