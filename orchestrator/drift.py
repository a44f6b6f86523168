"""Drift: the models against a database, and one database's schema against another's.

:func:`model_differences` asks Alembic's autogenerate comparison what separates
an environment's ``target_metadata`` from its database; :func:`reflect_schema`
takes a plain snapshot of a live schema and :func:`compare_schemas` lists what
separates two snapshots, across dialects where types compare meaningfully.
The orchestrator's own tables (history and version table) and the registry's
``exclude_tables`` are never part of either comparison.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from orchestrator.context import EnvContext
from orchestrator.db import first_line, run_with_connection
from orchestrator.errors import ConfigError, DatabaseError, OrchestratorError
from orchestrator.recorder import HISTORY_TABLES

CLEAN, DRIFTED, NO_MODELS, UNREACHABLE, ERROR = "clean", "drifted", "no_models", "unreachable", "error"
COMPARABLE_DIALECTS = frozenset({"sqlite", "postgresql", "mysql"})
_KIND_ORDER = ("table", "column", "type", "nullable", "default", "primary_key", "index", "unique", "foreign_key")


@dataclass(frozen=True)
class Difference:
    """One thing that differs between two schemas (or the models and a schema)."""

    kind: str
    object: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """Return the difference as plain data for ``--json``."""
        return asdict(self)


@dataclass(frozen=True)
class Column:
    """A reflected column: its exact type, its type family, nullability and server default."""

    name: str
    type: str
    family: str
    nullable: bool
    default: str | None


@dataclass(frozen=True)
class Table:
    """A reflected table with its keys and indexes, each described as comparable text."""

    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    indexes: dict[str, str]  # name -> "(a, b)" or "unique (a, b)"
    uniques: tuple[tuple[str, ...], ...]
    foreign_keys: dict[str, str]  # "(cols) -> table (cols)" -> options text ("" when none)


@dataclass(frozen=True)
class Schema:
    """A plain snapshot of one database's tables, on one dialect."""

    dialect: str
    tables: dict[str, Table] = field(default_factory=dict)


# ---------------------------------------------------------------------------- reflection


def hidden_tables(version_table: str = "alembic_version", exclude_tables: Iterable[str] = ()) -> set[str]:
    """Return the tables drift never looks at: the history tables, the version table and ``exclude_tables``."""
    return {*HISTORY_TABLES, version_table, *exclude_tables}


def reflect_schema(conn: Connection, *, schema: str | None = None, exclude_tables: Iterable[str] = (),
                   version_table: str = "alembic_version") -> Schema:
    """Return a snapshot of the tables in ``schema`` (default schema if None), the orchestrator's own left out."""
    insp = sa.inspect(conn)
    dialect = "mysql" if conn.dialect.name == "mariadb" else conn.dialect.name
    hidden = hidden_tables(version_table, exclude_tables)
    tables = {name: _reflect_table(insp, conn, name, schema, dialect)
              for name in sorted(insp.get_table_names(schema=schema)) if name not in hidden}
    return Schema(dialect, tables)


def _reflect_table(insp: Any, conn: Connection, name: str, schema: str | None, dialect: str) -> Table:
    """Return one table's snapshot."""
    columns = {c["name"]: Column(c["name"], _type_text(c["type"], conn), type_family(c["type"]), bool(c["nullable"]),
                                 _default_text(c.get("default")))
               for c in insp.get_columns(name, schema=schema)}
    uniques = insp.get_unique_constraints(name, schema=schema)
    fks = insp.get_foreign_keys(name, schema=schema)
    # an index that only backs a unique constraint, or one MySQL made for a foreign key, is not an index of its own
    implied = {u.get("duplicates_index") for u in uniques}
    fk_names = {fk["name"] for fk in fks} if dialect == "mysql" else set()
    indexes = {}
    for index in insp.get_indexes(name, schema=schema):
        if index.get("duplicates_constraint") or index["name"] in implied or index["name"] in fk_names:
            continue
        cols = _cols(index.get("column_names") or index.get("expressions") or ())
        indexes[index["name"]] = f"unique {cols}" if index.get("unique") else cols
    return Table(
        name=name,
        columns=columns,
        primary_key=tuple(insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or ()),
        indexes=dict(sorted(indexes.items())),
        uniques=tuple(sorted(tuple(u["column_names"]) for u in uniques)),
        foreign_keys=dict(sorted((_fk_key(fk), _fk_options(fk)) for fk in fks)),
    )


def _cols(names: Iterable[Any]) -> str:
    """Return column names as ``(a, b)``."""
    return "(" + ", ".join(str(n) for n in names) + ")"


def _fk_key(fk: dict[str, Any]) -> str:
    """Return a foreign key as ``(cols) -> table (cols)``."""
    target = f"{fk['referred_schema']}.{fk['referred_table']}" if fk.get("referred_schema") else fk["referred_table"]
    return f"{_cols(fk['constrained_columns'])} -> {target} {_cols(fk['referred_columns'])}"


def _fk_options(fk: dict[str, Any]) -> str:
    """Return a foreign key's ON DELETE / ON UPDATE actions as text ("" when the defaults)."""
    options = fk.get("options") or {}
    parts = []
    for key in ("ondelete", "onupdate"):
        value = (options.get(key) or "").upper()
        if value and value not in ("NO ACTION", "RESTRICT"):
            parts.append(f"ON {key[2:].upper()} {value}")
    return " ".join(parts)


def _type_text(type_: Any, conn: Connection) -> str:
    """Return a reflected type as the dialect writes it."""
    try:
        return str(type_.compile(dialect=conn.dialect))
    except Exception:  # a type the dialect cannot render (NullType): its class name is what we know
        return type_.__class__.__name__.upper()


def _default_text(default: Any) -> str | None:
    """Return a server default as normalised text."""
    if default is None:
        return None
    return " ".join(str(default).split())


def type_family(type_: Any) -> str:
    """Return the generic family of a reflected type, comparable across dialects (e.g. ``string(36)``)."""
    visit = getattr(type_, "__visit_name__", "")
    if isinstance(type_, sa.Boolean) or (visit == "TINYINT" and getattr(type_, "display_width", None) == 1):
        return "boolean"
    if isinstance(type_, sa.JSON) or visit in ("JSON", "JSONB"):
        return "json"
    if visit == "LONGTEXT" and getattr(type_, "collation", None) == "utf8mb4_bin":
        return "json"  # MariaDB's JSON is an alias for LONGTEXT COLLATE utf8mb4_bin
    if isinstance(type_, sa.Integer) or visit in ("TINYINT", "MEDIUMINT"):
        return "integer"
    if isinstance(type_, (sa.Text, sa.UnicodeText)) or visit in ("TINYTEXT", "MEDIUMTEXT", "LONGTEXT", "CLOB"):
        return "text"
    if isinstance(type_, sa.Enum):
        return "enum"
    if isinstance(type_, sa.String):
        return f"string({type_.length})" if type_.length else "text"
    if isinstance(type_, sa.DateTime):
        return "datetime"
    if isinstance(type_, sa.Date):
        return "date"
    if isinstance(type_, sa.Time):
        return "time"
    if isinstance(type_, sa.Float) or visit in ("REAL", "DOUBLE", "DOUBLE_PRECISION"):
        return "float"
    if isinstance(type_, sa.Numeric):
        return f"numeric({type_.precision},{type_.scale})" if type_.precision is not None else "numeric"
    if isinstance(type_, (sa.LargeBinary, sa.types._Binary)):
        return "binary"
    if isinstance(type_, sa.Uuid) or visit == "UUID":
        return "uuid"
    return visit.lower() or type_.__class__.__name__.lower()


# ---------------------------------------------------------------------------- comparison


def types_comparable(a: Schema, b: Schema) -> bool:
    """Return True when the two dialects' types can be compared (same dialect, or both well known)."""
    return a.dialect == b.dialect or {a.dialect, b.dialect} <= COMPARABLE_DIALECTS


def comparison_notes(a: Schema, b: Schema, *, names: tuple[str, str] = ("a", "b"),
                     types_comparable: bool = True) -> list[str]:
    """Return what a comparison of ``a`` and ``b`` cannot see (one note; none on one dialect)."""
    if a.dialect == b.dialect:
        return []
    types = ("types compared by family (integer, string(n), text, boolean, datetime, json, numeric(p,s), ...)"
             if types_comparable else "types not compared")
    return [f"{names[0]} is {a.dialect} and {names[1]} is {b.dialect}: the comparison is approximate: {types}; "
            "server defaults are dialect text and are not compared"]


def compare_schemas(a: Schema, b: Schema, *, names: tuple[str, str] = ("a", "b"),
                    types_comparable: bool = True) -> list[Difference]:
    """Return every difference between two snapshots, ordered by table, then kind, then object."""
    same_dialect = a.dialect == b.dialect
    found: list[Difference] = []
    for table in sorted(a.tables.keys() | b.tables.keys()):
        ta, tb = a.tables.get(table), b.tables.get(table)
        if ta is None or tb is None:
            where = names[0] if tb is None else names[1]
            other = names[1] if tb is None else names[0]
            found.append(Difference("table", table, f"table {table} is in {where}, not in {other}"))
            continue
        found += _table_differences(ta, tb, names, same_dialect, types_comparable)
    return found


def _table_differences(a: Table, b: Table, names: tuple[str, str], same_dialect: bool,
                       compare_types: bool) -> list[Difference]:
    """Return the differences inside one table present on both sides."""
    found = _presence("column", a.name, a.columns, b.columns, names, lambda c: f"column {a.name}.{c}",
                      lambda c: f"{a.name}.{c}")
    for name in sorted(a.columns.keys() & b.columns.keys()):
        found += _column_differences(a.name, a.columns[name], b.columns[name], names, same_dialect, compare_types)
    if a.primary_key != b.primary_key:
        found.append(Difference("primary_key", a.name, f"primary key of {a.name} differs: {_cols(a.primary_key)} in "
                                                       f"{names[0]}, {_cols(b.primary_key)} in {names[1]}"))
    found += _presence("index", a.name, a.indexes, b.indexes, names,
                       lambda i: f"index {i} on {a.name} {a.indexes.get(i) or b.indexes.get(i)}", lambda i: f"{a.name}.{i}")
    for name in sorted(a.indexes.keys() & b.indexes.keys()):
        if a.indexes[name] != b.indexes[name]:
            found.append(Difference("index", f"{a.name}.{name}", f"index {name} on {a.name} differs: "
                                    f"{a.indexes[name]} in {names[0]}, {b.indexes[name]} in {names[1]}"))
    ua, ub = {_cols(u): u for u in a.uniques}, {_cols(u): u for u in b.uniques}
    found += _presence("unique", a.name, ua, ub, names, lambda u: f"unique constraint on {a.name} {u}",
                       lambda u: f"{a.name}{u}")
    found += _presence("foreign_key", a.name, a.foreign_keys, b.foreign_keys, names,
                       lambda k: f"foreign key {a.name} {k}", lambda k: f"{a.name}{k.split(' ->')[0]}")
    for key in sorted(a.foreign_keys.keys() & b.foreign_keys.keys()):
        oa, ob = a.foreign_keys[key], b.foreign_keys[key]
        if oa != ob:
            found.append(Difference("foreign_key", f"{a.name}{key.split(' ->')[0]}",
                                    f"foreign key {a.name} {key} differs: {oa or 'no actions'} in {names[0]}, "
                                    f"{ob or 'no actions'} in {names[1]}"))
    return sorted(found, key=lambda d: (_KIND_ORDER.index(d.kind), d.object))


def _presence(kind: str, table: str, a: dict[str, Any], b: dict[str, Any], names: tuple[str, str],
              describe: Any, object_name: Any) -> list[Difference]:
    """Return a difference for each key present on one side only."""
    found = []
    for key in sorted(a.keys() ^ b.keys()):
        where, other = (names[0], names[1]) if key in a else (names[1], names[0])
        found.append(Difference(kind, object_name(key), f"{describe(key)} is in {where}, not in {other}"))
    return found


def _column_differences(table: str, a: Column, b: Column, names: tuple[str, str], same_dialect: bool,
                        compare_types: bool) -> list[Difference]:
    """Return the differences of one column present on both sides."""
    obj = f"{table}.{a.name}"
    found = []
    if same_dialect and a.type != b.type:
        found.append(Difference("type", obj, f"column {obj} type differs: {a.type} in {names[0]}, {b.type} in {names[1]}"))
    elif not same_dialect and compare_types and a.family != b.family:
        found.append(Difference("type", obj, f"column {obj} type differs: {a.family} ({a.type}) in {names[0]}, "
                                             f"{b.family} ({b.type}) in {names[1]}"))
    if a.nullable != b.nullable:
        found.append(Difference("nullable", obj, f"column {obj} is {_null(a)} in {names[0]}, {_null(b)} in {names[1]}"))
    if same_dialect and a.default != b.default:
        found.append(Difference("default", obj, f"column {obj} server default differs: {a.default or 'none'} in "
                                                f"{names[0]}, {b.default or 'none'} in {names[1]}"))
    return found


def _null(column: Column) -> str:
    return "nullable" if column.nullable else "NOT NULL"


# ---------------------------------------------------------------------------- environments


def environment_schema(ctx: EnvContext) -> Schema:
    """Return the snapshot of an environment's database (a SQLite file not yet created is empty)."""
    from orchestrator.state import database_missing

    if database_missing(ctx):
        return Schema("sqlite")
    with _read_errors(ctx, "read the schema"):
        return run_with_connection(ctx.url, ctx.name, lambda conn: reflect_schema(
            conn, schema=ctx.env.version_table_schema, exclude_tables=ctx.env.exclude_tables,
            version_table=ctx.env.version_table))


@contextmanager
def _read_errors(ctx: EnvContext, what: str) -> Iterator[None]:
    """Turn a driver error while reading into one DatabaseError line."""
    try:
        yield
    except DBAPIError as exc:
        raise DatabaseError(f"environment '{ctx.name}': cannot {what}: {first_line(exc)}", env=ctx.name) from None


def target_metadata(ctx: EnvContext) -> Any:
    """Return the environment's models (``target_metadata``), or raise ConfigError when it has none."""
    from orchestrator.envpy import import_object

    spec = ctx.env.target_metadata
    if not spec:
        raise ConfigError(f"environment '{ctx.name}' has no models to compare: set project.target_metadata "
                          f"(e.g. 'myapp.models:Base.metadata') in {ctx.registry.path}", env=ctx.name)
    return import_object(spec, ctx.registry)


def model_differences(ctx: EnvContext) -> list[Difference]:
    """Return what separates the environment's models from its database, as Alembic's autogenerate sees it."""
    from orchestrator.state import database_missing

    metadata = target_metadata(ctx)
    # a SQLite file that does not exist is an empty database; reading must not create it
    url = make_url("sqlite://") if database_missing(ctx) else ctx.url
    with _read_errors(ctx, "compare the models with the database"):
        return run_with_connection(url, ctx.name, lambda conn: _autogenerate_differences(conn, ctx, metadata))


def comparison_context(conn: Connection, ctx: EnvContext, metadata: Any) -> Any:
    """Return the MigrationContext autogenerate compares ``metadata`` through, leaving out what drift ignores."""
    from alembic.runtime.migration import MigrationContext

    from orchestrator.envpy import excluding

    return MigrationContext.configure(conn, opts={
        "target_metadata": metadata, "include_object": excluding(ctx.env.exclude_tables), "compare_type": True,
        "version_table": ctx.env.version_table, "version_table_schema": ctx.env.version_table_schema,
    })


def _autogenerate_differences(conn: Connection, ctx: EnvContext, metadata: Any) -> list[Difference]:
    """Run Alembic's compare_metadata on ``conn`` and describe each difference."""
    from alembic.autogenerate import compare_metadata

    diffs = compare_metadata(comparison_context(conn, ctx, metadata), metadata)
    conn.rollback()
    flat = [d for entry in diffs for d in (entry if isinstance(entry, list) else [entry])]
    found = [_describe_autogenerate(d) for d in flat]
    return sorted(found, key=lambda d: (d.object.split(".")[0].split("(")[0], _KIND_ORDER.index(d.kind)
                                        if d.kind in _KIND_ORDER else len(_KIND_ORDER), d.object))


_IN_MODELS, _IN_DB = "is in the models, not in the database", "is in the database, not in the models"


def _describe_autogenerate(diff: tuple[Any, ...]) -> Difference:
    """Turn one entry of Alembic's compare_metadata into a readable Difference."""
    op = diff[0]
    if op in ("add_table", "remove_table"):
        table = diff[1]
        return Difference("table", table.name, f"table {table.name} {_IN_MODELS if op == 'add_table' else _IN_DB}")
    if op in ("add_column", "remove_column"):
        obj = f"{diff[2]}.{diff[3].name}"
        return Difference("column", obj, f"column {obj} {_IN_MODELS if op == 'add_column' else _IN_DB}")
    if op in ("add_index", "remove_index"):
        index = diff[1]
        cols = _cols(c.name if hasattr(c, "name") else str(c) for c in index.expressions)
        what = f"{'unique ' if index.unique else ''}index {index.name} on {index.table.name} {cols}"
        return Difference("index", f"{index.table.name}.{index.name}",
                          f"{what} {_IN_MODELS if op == 'add_index' else _IN_DB}")
    if op in ("add_constraint", "remove_constraint"):
        constraint = diff[1]
        where = _IN_MODELS if op == "add_constraint" else _IN_DB
        cols = _cols(c.name for c in constraint.columns)
        return Difference("unique", f"{constraint.table.name}{cols}",
                          f"unique constraint on {constraint.table.name} {cols} {where}")
    if op in ("add_fk", "remove_fk"):
        fk = diff[1]
        cols = _cols(c.name for c in fk.columns)
        target = _cols(e.column.name if e.column is not None else e.target_fullname for e in fk.elements)
        where = _IN_MODELS if op == "add_fk" else _IN_DB
        return Difference("foreign_key", f"{fk.table.name}{cols}",
                          f"foreign key {fk.table.name} {cols} -> {fk.referred_table.name} {target} {where}")
    if op.startswith("modify_"):
        return _describe_modify(diff)
    return Difference(op, str(diff[1]), f"{op.replace('_', ' ')}: {diff[1:]}")


def _describe_modify(diff: tuple[Any, ...]) -> Difference:
    """Describe a modify_type / modify_nullable / modify_default / modify_comment entry."""
    op, _schema, table, column, _kw, in_db, in_models = diff
    obj = f"{table}.{column}"
    if op == "modify_nullable":
        return Difference("nullable", obj, f"column {obj} is {'nullable' if in_db else 'NOT NULL'} in the database, "
                                           f"{'nullable' if in_models else 'NOT NULL'} in the models")
    if op == "modify_type":
        return Difference("type", obj, f"column {obj} type differs: {in_db} in the database, {in_models} in the models")
    kind = op.removeprefix("modify_")
    text = {"default": "server default"}.get(kind, kind)
    return Difference(kind if kind in _KIND_ORDER else op, obj,
                      f"column {obj} {text} differs: {_show(in_db)} in the database, {_show(in_models)} in the models")


def _show(value: Any) -> str:
    """Return a default or comment for a message."""
    if value is None:
        return "none"
    arg = getattr(value, "arg", value)
    return " ".join(str(getattr(arg, "text", arg)).split())


def env_drift(ctx: EnvContext) -> dict[str, Any]:
    """Return the environment's drift state for reports; never raises for an unreachable database."""
    if not ctx.env.target_metadata or not ctx.env.compare_models:
        reason = ("no target_metadata in the registry" if not ctx.env.target_metadata
                  else "compare_models is false for it in the registry")
        return {"state": NO_MODELS, "differences": [], "error": None, "reason": reason}
    try:
        differences = model_differences(ctx)
    except DatabaseError as exc:
        return {"state": UNREACHABLE, "differences": [], "error": str(exc), "reason": None}
    except OrchestratorError as exc:
        return {"state": ERROR, "differences": [], "error": str(exc), "reason": None}
    return {"state": DRIFTED if differences else CLEAN, "differences": [d.to_dict() for d in differences],
            "error": None, "reason": None}

