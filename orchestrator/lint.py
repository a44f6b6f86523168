"""Unsafe-operation lint: what one revision emits, checked against rules with stable ids.

This module owns the lint rules (:data:`RULES`: stable ids, default severities),
rendering one revision's ``upgrade()`` (or ``downgrade()``) to SQL offline
through Alembic without a database (:func:`render_step_sql`), splitting that SQL
into statements, and finding unsafe operations in the statements with sqlglot
(:func:`lint_statements`, :func:`lint_revision`). It reads no database and
writes nothing; the plan, the gate and the ``lint`` verb decide what findings mean.

A step that cannot be rendered offline (batch mode on SQLite reflects the live
table, a script reads rows or inspects the schema) gives one ``not-analysable``
finding instead of a crash or a silent pass.

What SQL alone cannot tell, and how the rules approximate it:

- a table created earlier in the same step is new and empty, so only
  ``data-change`` fires for it (renaming it keeps it new);
- MySQL/MariaDB render ``nullable=False`` and type changes alike as
  ``MODIFY col TYPE [NOT] NULL`` and the old type is unknown: ``MODIFY`` with
  ``NOT NULL`` is reported as ``set-not-null``, without it as
  ``column-type-change``; ``CHANGE old new TYPE`` is reported as ``rename-column``
  only;
- ``index-not-concurrent`` and ``fk-not-valid`` are PostgreSQL rules; the other
  dialects have no such option and get no finding;
- a statement sqlglot cannot parse, or parses only as an opaque command or a
  bare expression, is a ``not-analysable`` finding quoting the statement
  (shortened, secrets masked): lint fails closed; identical findings (same rule
  and message) in one step are reported once, with the first statement.

Rendering runs the script's ``upgrade()``: given the environment's Alembic
``Config``, ``alembic.context`` is set up for it as Alembic would (main
options, no ``-x`` arguments), so scripts reading
``context.config.get_main_option(...)`` render. Whatever the script raises,
``SystemExit`` included (only ``KeyboardInterrupt`` passes), is a
``not-analysable`` finding, never an exit.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import sqlglot
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine.mock import MockConnection
from sqlalchemy.exc import NoInspectionAvailable
from sqlglot import exp
from sqlglot.tokens import TokenType

from orchestrator import alembic_compat
from orchestrator.errors import ConfigError
from orchestrator.redact import redact

ERROR, WARNING, OFF = "error", "warning", "off"
UP, DOWN = "up", "down"
STATEMENT_CHARS = 200
REASON_CHARS = 200
QUOTE_CHARS = 80  # a statement quoted in a finding's message

# Alembic dialect name -> sqlglot dialect name (MariaDB is read as MySQL)
SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_DISPLAY = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}


@dataclass(frozen=True)
class Rule:
    """One lint rule: a stable id, its default severity and what it flags."""

    id: str
    severity: str
    summary: str


@dataclass(frozen=True)
class Finding:
    """One rule firing on one revision; ``statement`` is the SQL, clipped (None when nothing rendered)."""

    rule: str
    severity: str
    revision: str
    message: str
    statement: str | None


RULES: dict[str, Rule] = {rule.id: rule for rule in (
    Rule("drop-table", ERROR, "DROP TABLE on an existing table"),
    Rule("drop-column", ERROR, "DROP COLUMN on an existing table"),
    Rule("column-type-change", ERROR, "a column's type changed (a rewrite or a cast under lock)"),
    Rule("add-not-null-without-default", ERROR,
         "NOT NULL column added to an existing table without a server default"),
    Rule("set-not-null", ERROR, "SET NOT NULL on an existing column"),
    Rule("rename-table", ERROR, "table renamed under running code"),
    Rule("rename-column", ERROR, "column renamed under running code"),
    Rule("index-not-concurrent", WARNING,
         "PostgreSQL: CREATE INDEX on an existing table without CONCURRENTLY"),
    Rule("fk-not-valid", WARNING, "PostgreSQL: foreign key added to an existing table without NOT VALID"),
    Rule("data-change", WARNING, "INSERT, UPDATE, DELETE or MERGE emitted by the step"),
    Rule("not-analysable", ERROR, "the step cannot be rendered offline, or a statement it emits cannot be parsed; "
                                  "a reviewer must acknowledge it"),
)}


class NotAnalysable(Exception):
    """Raised when a step cannot be rendered offline; ``reason`` is one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def render_step_sql(script: Script, dialect_name: str, direction: str = UP, *, config: Config | None = None,
                    directory: ScriptDirectory | None = None) -> list[str]:
    """Return the SQL statements one revision emits, rendered offline for ``dialect_name``.

    With ``config`` (the environment's Alembic ``Config``, no ``-x``), ``alembic.context``
    is an ``EnvironmentContext`` over it and ``directory`` while the step runs.
    """
    _sqlglot_dialect(dialect_name)
    if direction not in (UP, DOWN):
        raise ValueError(f"direction must be '{UP}' or '{DOWN}', not {direction!r}")
    buffer = io.StringIO()
    opts = {"as_sql": True, "output_buffer": buffer, "literal_binds": True, "transactional_ddl": False}
    with alembic_compat.proxies_restored():
        try:
            if config is None:
                _run_step(script, direction, MigrationContext.configure(dialect_name=dialect_name, opts=opts))
            else:
                with EnvironmentContext(config, directory) as environment:  # type: ignore[arg-type]
                    environment.configure(dialect_name=dialect_name, **opts)  # type: ignore[arg-type]
                    _run_step(script, direction, environment.get_context())
        except (NotAnalysable, KeyboardInterrupt):
            raise
        except BaseException as exc:  # SystemExit too: a script's sys.exit() is its failure, never lint's exit
            raise NotAnalysable(_reason(exc)) from exc
    return split_statements(buffer.getvalue(), dialect_name)


def _run_step(script: Script, direction: str, context: MigrationContext) -> None:
    """Run one revision's upgrade() or downgrade() into ``context`` (reads refused)."""
    _refuse_reads(context)
    function = script.module.upgrade if direction == UP else script.module.downgrade
    with Operations.context(context):
        function()


def split_statements(sql: str, dialect_name: str) -> list[str]:
    """Split rendered SQL at its statement-ending semicolons, never inside a literal or comment."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(_sqlglot_dialect(dialect_name)).tokenize(sql)
    except Exception as exc:
        raise NotAnalysable(f"cannot split the rendered SQL into statements: {_first_line(exc)}") from exc
    pieces, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            pieces.append(sql[start:token.start])
            start = token.end + 1
    pieces.append(sql[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def lint_statements(statements: Sequence[str], dialect_name: str, revision: str) -> list[Finding]:
    """Return the findings for one step's statements, in statement order, default severities."""
    read = _sqlglot_dialect(dialect_name)
    created: set[str] = set()
    findings: dict[tuple[str, str], Finding] = {}
    for sql in statements:
        tree, problem = _parse(sql, dialect_name)
        if problem is not None:
            checked: Iterable[tuple[str, str]] = [("not-analysable", problem)]
        else:
            checked = _check(tree, read, created) if tree is not None else []
        for rule, message in checked:
            findings.setdefault((rule, message),
                                Finding(rule, RULES[rule].severity, revision, message, _clip(redact(sql))))
    return list(findings.values())


def lint_revision(script: Script, dialect_name: str, severities: Mapping[str, str] | None = None, *,
                  direction: str = UP, config: Config | None = None,
                  directory: ScriptDirectory | None = None) -> list[Finding]:
    """Return the findings for one revision on one dialect, with ``severities`` overriding the defaults.

    ``config`` and ``directory`` are the environment's, for scripts that read ``alembic.context``.
    """
    levels = effective_severities(severities)
    try:
        statements = render_step_sql(script, dialect_name, direction, config=config, directory=directory)
        findings = lint_statements(statements, dialect_name, script.revision)
    except NotAnalysable as exc:
        findings = [Finding("not-analysable", RULES["not-analysable"].severity, script.revision,
                            f"not analysable offline: {exc.reason}", None)]
    return [replace(f, severity=levels[f.rule]) for f in findings if levels[f.rule] != OFF]


def unapproved_findings(revision: str, env: str, severities: Mapping[str, str] | None = None) -> list[Finding]:
    """Return the finding standing for a revision that lint does not run: its content is not approved.

    On a protected environment no code of an unapproved script runs, so its
    step is not rendered; the gate refuses it as unreviewed anyway.
    """
    levels = effective_severities(severities)
    if levels["not-analysable"] == OFF:
        return []
    message = (f"not analysable on protected environment '{env}': its content is not approved in the review ledger, "
               "so lint does not run it; lint it on an unprotected environment")
    return [Finding("not-analysable", levels["not-analysable"], revision, message, None)]


def check_dialect(dialect_name: str, env: str | None = None) -> None:
    """Refuse, as a configuration error, a dialect lint cannot read."""
    _sqlglot_dialect(dialect_name, env)


def unknown_rules(rules: Iterable[str]) -> str | None:
    """Return the message refusing rule ids that do not exist, or None when all exist."""
    unknown = [r for r in rules if r not in RULES]
    if not unknown:
        return None
    return f"unknown lint rule {', '.join(repr(r) for r in unknown)}; known rules: {', '.join(RULES)}"


def effective_severities(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return every rule's severity after ``overrides``, refusing unknown rules and values."""
    levels = {rule.id: rule.severity for rule in RULES.values()}
    for rule, value in (overrides or {}).items():
        if message := unknown_rules([rule]):
            raise ValueError(message)
        if value not in (ERROR, WARNING, OFF):
            raise ValueError(f"lint rule '{rule}': severity must be error, warning or off, not {value!r}")
        levels[rule] = value
    return levels


# --- rendering ---------------------------------------------------------------------------------------


class _NoRows:
    """What ``op.get_bind().execute()`` returns offline: using it means the step reads the database."""

    def __getattr__(self, name: str) -> Any:
        raise NotAnalysable(f"reads from the database (uses .{name} of an op.get_bind().execute() result)")

    def __iter__(self) -> Iterator[Any]:
        raise NotAnalysable("reads from the database (iterates over an op.get_bind().execute() result)")


def _refuse_reads(context: MigrationContext) -> None:
    """Make results of ``op.get_bind().execute()`` raise NotAnalysable when a script reads them."""
    emit = context.connection.execute  # Alembic's offline connection: renders into the buffer, returns None

    def execute(statement: Any, parameters: Any = None) -> _NoRows:
        emit(statement, parameters)
        return _NoRows()

    # op.get_bind() returns impl.connection; MigrationContext.bind returns context.connection
    context.connection = context.impl.connection = MockConnection(context.dialect, execute)


_BATCH = re.compile(r'batch mode with dialect (\w+) requires a live database connection .*? table "([^"]+)"')


def _reason(exc: BaseException) -> str:
    """Return one line saying why a step could not be rendered offline."""
    if isinstance(exc, SystemExit):
        return _clip(f"calls sys.exit({exc.code!r})", REASON_CHARS)
    line = _first_line(exc)
    batch = _BATCH.search(line) if isinstance(exc, CommandError) else None
    if batch:
        dialect = _DISPLAY.get(batch.group(1), batch.group(1))
        return f'batch mode on {dialect} needs a live connection to reflect table "{batch.group(2)}"'
    if isinstance(exc, NoInspectionAvailable):
        return "inspects the live database schema (sa.inspect(op.get_bind()))"
    return _clip(f"{type(exc).__name__}: {line}" if line else type(exc).__name__, REASON_CHARS)


def _first_line(exc: BaseException) -> str:
    """Return the first non-blank line of an exception's text, whitespace collapsed."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    return next((line for line in lines if line), "")


def _clip(text: str, limit: int = STATEMENT_CHARS) -> str:
    """Return ``text`` cut to ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sqlglot_dialect(dialect_name: str, env: str | None = None) -> str:
    """Return sqlglot's name for an Alembic dialect name, refusing others (a configuration error)."""
    try:
        return SQLGLOT_DIALECTS[dialect_name]
    except KeyError:
        where = f"environment '{env}': " if env else ""
        raise ConfigError(f"{where}lint supports the dialects {', '.join(SQLGLOT_DIALECTS)}, not {dialect_name!r}; "
                          "lint the revisions on an environment of one of those dialects", env=env) from None


def _quote(sql: str) -> str:
    """Return a statement for a message: on one line, shortened, secrets masked, in double quotes."""
    return '"' + _clip(redact(" ".join(sql.split())), QUOTE_CHARS) + '"'


# --- rules -------------------------------------------------------------------------------------------


class _QuietFallback(logging.Filter):
    """Drop sqlglot's 'falling back to parsing as a Command' warning (lint reports such statements itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    """Silence sqlglot's fallback warning while parsing."""
    logger, quiet = logging.getLogger("sqlglot"), _QuietFallback()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# what a statement parses to when sqlglot knows what it is (anything else, e.g. exp.Command, a bare
# column or alias, is opaque); getattr: not every sqlglot version has every class
_STATEMENTS = tuple(c for c in (getattr(exp, name, None) for name in (
    "Query", "DDL", "DML", "Alter", "Drop", "Create", "Insert", "Update", "Delete", "Merge", "Values", "Set",
    "Transaction", "Commit", "Rollback", "Comment", "Grant", "Revoke", "Pragma", "TruncateTable", "Analyze",
    "Use", "Describe", "Show")) if isinstance(c, type))


def _parse(sql: str, dialect_name: str) -> tuple[exp.Expression | None, str | None]:
    """Return sqlglot's tree for one statement, or why lint cannot say what it is (None, None: only comments)."""
    read = _sqlglot_dialect(dialect_name)
    display = _DISPLAY.get(dialect_name, dialect_name)
    try:
        with _quiet_sqlglot():
            if not sqlglot.Dialect.get_or_raise(read).tokenize(sql):
                return None, None  # nothing but comments
            tree = sqlglot.parse_one(sql, read=read)
    except Exception as exc:  # ParseError, TokenError, or anything else sqlglot trips on: not analysable, no crash
        why = _first_line(exc).rstrip(".")
        return None, _clip(f"not analysable: sqlglot cannot parse statement {_quote(sql)} as {display}"
                           + (f" ({why})" if why else ""), REASON_CHARS + QUOTE_CHARS)
    if tree is None or not isinstance(tree, _STATEMENTS) or isinstance(tree, exp.Command):
        return None, f"not analysable: sqlglot reads statement {_quote(sql)} only as an opaque command; no rule can check it"
    return tree, None


_DATA_VERBS = {exp.Insert: "inserts rows into", exp.Update: "updates rows in", exp.Delete: "deletes rows from",
               exp.Merge: "merges rows into"}


def _check(tree: exp.Expression, read: str, created: set[str]) -> Iterator[tuple[str, str]]:
    """Yield (rule, message) for one parsed statement, tracking tables created in this step."""
    if isinstance(tree, exp.Create):
        yield from _check_create(tree, read, created)
    elif isinstance(tree, exp.Drop) and (tree.args.get("kind") or "").upper() == "TABLE":
        for table in tree.args.get("tables") or [tree.this]:
            name = _table_name(table)
            if _key(name) in created:
                created.discard(_key(name))
            else:
                yield "drop-table", f"drops table {name}"
    elif isinstance(tree, exp.Alter) and (tree.args.get("kind") or "").upper() == "TABLE":
        yield from _check_alter(tree, read, created)
    elif type(tree) in _DATA_VERBS:
        target = tree.this.find(exp.Table) if tree.this else None
        yield "data-change", f"{_DATA_VERBS[type(tree)]} {_table_name(target) if target else '?'}"


def _check_create(tree: exp.Create, read: str, created: set[str]) -> Iterator[tuple[str, str]]:
    """Record a created table; flag an index built on an existing PostgreSQL table without CONCURRENTLY."""
    kind = (tree.args.get("kind") or "").upper()
    if kind == "TABLE":
        table = tree.this if isinstance(tree.this, exp.Table) else tree.this.find(exp.Table)
        if table is not None:
            created.add(_key(_table_name(table)))
    elif kind == "INDEX" and read == "postgres" and not tree.args.get("concurrently"):
        index = tree.this
        table = index.args.get("table")
        if table is not None and _key(_table_name(table)) not in created:
            yield "index-not-concurrent", f"creates index {index.name} on {_table_name(table)} without CONCURRENTLY"


def _check_alter(tree: exp.Alter, read: str, created: set[str]) -> Iterator[tuple[str, str]]:
    """Yield the findings of each action of one ALTER TABLE."""
    table = _table_name(tree.this)
    is_new = _key(table) in created
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.AlterRename) and not _to_column(tree):
            new = _table_name(action.this)
            if is_new:
                created.add(_key(new))
                continue
            yield "rename-table", f"renames table {table} to {new}"
        elif not is_new:
            yield from _check_action(action, tree, table, read)


def _check_action(action: exp.Expression, tree: exp.Alter, table: str, read: str) -> Iterator[tuple[str, str]]:
    """Yield the findings of one ALTER TABLE action on an existing table."""
    if isinstance(action, exp.Drop) and (action.args.get("kind") or "").upper() == "COLUMN":
        for column in action.args.get("tables") or [action.this]:
            yield "drop-column", f"drops column {table}.{column.name}"
    elif isinstance(action, exp.AlterColumn):
        if action.args.get("dtype") is not None:
            new_type = action.args["dtype"].sql(read)
            yield "column-type-change", f"changes the type of column {table}.{action.name} to {new_type}"
        if action.args.get("allow_null") is False:
            yield "set-not-null", f"sets column {table}.{action.name} NOT NULL"
    elif isinstance(action, exp.ModifyColumn):
        yield _mysql_modify(action, table, read)
    elif isinstance(action, exp.RenameColumn):
        yield "rename-column", f"renames column {table}.{action.this.name} to {action.args['to'].name}"
    elif isinstance(action, exp.AlterRename):  # PostgreSQL's "RENAME a TO b" (no COLUMN), see _to_column
        yield "rename-column", f"renames column {table}.{action.this.name} to {_to_column(tree)}"
    elif isinstance(action, exp.ColumnDef) and _not_null(action) and not _fills_itself(action):
        yield "add-not-null-without-default", f"adds NOT NULL column {table}.{action.name} without a server default"
    elif isinstance(action, exp.AddConstraint) and read == "postgres" and not tree.args.get("not_valid"):
        for fk in action.find_all(exp.ForeignKey):
            constraint = fk.find_ancestor(exp.Constraint)
            name = constraint.name if constraint is not None and constraint.name else \
                "(" + ", ".join(e.name for e in fk.expressions) + ")"
            yield "fk-not-valid", f"adds foreign key {name} on {table} without NOT VALID"


def _mysql_modify(action: exp.ModifyColumn, table: str, read: str) -> tuple[str, str]:
    """Classify MySQL's MODIFY / CHANGE: rename, SET NOT NULL or type change (see the module docstring)."""
    column = action.this
    if action.args.get("rename_from") is not None:
        return "rename-column", f"renames column {table}.{action.args['rename_from'].name} to {column.name}"
    if _not_null(column):
        return "set-not-null", f"sets column {table}.{column.name} NOT NULL"
    new_type = column.args["kind"].sql(read) if column.args.get("kind") else "?"
    return "column-type-change", f"changes the type of column {table}.{column.name} to {new_type}"


def _to_column(tree: exp.Alter) -> str | None:
    """Return the new name when sqlglot read PostgreSQL's ``RENAME col TO new`` as a table rename."""
    # sqlglot 30 parses "ALTER TABLE t RENAME a TO c" as AlterRename(a) plus a ToTableProperty(c) option
    for option in tree.args.get("options") or []:
        if isinstance(option, exp.ToTableProperty):
            return option.this.name
    return None


def _not_null(column: exp.ColumnDef) -> bool:
    """Tell whether a column definition says NOT NULL."""
    return any(isinstance(c.kind, exp.NotNullColumnConstraint) and not c.kind.args.get("allow_null")
               for c in column.args.get("constraints") or [])


_SELF_FILLING = (exp.DefaultColumnConstraint, exp.AutoIncrementColumnConstraint,
                 exp.GeneratedAsIdentityColumnConstraint, exp.ComputedColumnConstraint)
_SERIAL = {exp.DataType.Type.SERIAL, exp.DataType.Type.BIGSERIAL, exp.DataType.Type.SMALLSERIAL}


def _fills_itself(column: exp.ColumnDef) -> bool:
    """Tell whether a new column gets values for existing rows (a default, identity, serial, computed)."""
    kind = column.args.get("kind")
    if isinstance(kind, exp.DataType) and kind.this in _SERIAL:
        return True
    return any(isinstance(c.kind, _SELF_FILLING) for c in column.args.get("constraints") or [])


def _table_name(table: exp.Expression) -> str:
    """Return a table's name as written, schema-qualified when it is."""
    parts = [table.args.get("catalog"), table.args.get("db"), table.this]
    return ".".join(p.name for p in parts if isinstance(p, exp.Expression) and p.name)


def _key(name: str) -> str:
    """Return the key under which a table is remembered as created in this step."""
    return name.lower()
