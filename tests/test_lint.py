"""The unsafe-operation lint: each rule on real Alembic output for every dialect.

Every rule has one small revision doing exactly one unsafe operation on a table
an earlier revision created. Its findings are pinned per dialect (rendering is
offline), and the revision is also applied for real to a throwaway database of
that dialect, so the lint is checked against migrations that actually run.

What is detected where (the expectations below pin it):

- drop-table, add-not-null-without-default, rename-table, rename-column,
  data-change: every dialect;
- drop-column: every dialect with ``op.drop_column`` (SQLite 3.35+ drops
  natively); written in batch mode it is not analysable on SQLite;
- column-type-change, set-not-null: PostgreSQL and MySQL; on SQLite they need
  batch mode, which reflects the live table, so the step is not analysable;
- index-not-concurrent: PostgreSQL only (the other dialects have no CONCURRENTLY);
- fk-not-valid: PostgreSQL only; MySQL gives no finding, SQLite needs batch
  mode (not analysable).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import PROD_REVISIONS, Project, make_project
from orchestrator.errors import ConfigError
from orchestrator.lint import (
    RULES, Finding, NotAnalysable, lint_revision, lint_statements, render_step_sql, split_statements,
)

DIALECTS = ("sqlite", "postgresql", "mysql")
BASE = "base00000001"
BASE_UPGRADE = """
op.create_table("p", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
op.create_table("t", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("a", sa.String(20)), sa.Column("b", sa.Integer))
op.execute("INSERT INTO p (id) VALUES (1)")
op.execute("INSERT INTO t (id, a, b) VALUES (1, 'one', 1)")
"""
BATCH_T = 'not analysable offline: batch mode on SQLite needs a live connection to reflect table "t"'


@dataclass(frozen=True)
class Case:
    """One revision on top of BASE, the findings expected per dialect, and where it fails for real."""

    id: str
    upgrade: str
    expected: dict[str, list[tuple[str, str]]]
    fails_on: tuple[str, ...] = ()


def everywhere(*pairs: tuple[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Return the same expected findings for every dialect."""
    return {d: list(pairs) for d in DIALECTS}


def batch_only_elsewhere(*pairs: tuple[str, str], mysql: bool = True) -> dict[str, list[tuple[str, str]]]:
    """Return: not analysable on SQLite (batch mode), ``pairs`` on PostgreSQL (and MySQL unless told not)."""
    return {"sqlite": [("not-analysable", BATCH_T)], "postgresql": list(pairs), "mysql": list(pairs) if mysql else []}


CASES = [
    Case("dropcolumn01", 'op.drop_column("t", "a")', everywhere(("drop-column", "drops column t.a"))),
    Case("dropcolumn02", 'with op.batch_alter_table("t") as batch:\n    batch.drop_column("a")',
         batch_only_elsewhere(("drop-column", "drops column t.a"))),
    Case("typechange01",
         'with op.batch_alter_table("t") as batch:\n'
         '    batch.alter_column("a", type_=sa.String(50), existing_type=sa.String(20))',
         batch_only_elsewhere(("column-type-change", "changes the type of column t.a to VARCHAR(50)"))),
    Case("addnotnull01", 'op.add_column("t", sa.Column("c", sa.Integer, nullable=False))',
         everywhere(("add-not-null-without-default", "adds NOT NULL column t.c without a server default")),
         # the existing row has no value for c: SQLite and PostgreSQL refuse, MySQL/MariaDB fill in 0
         fails_on=("sqlite", "postgresql")),
    Case("setnotnull01",
         'with op.batch_alter_table("t") as batch:\n'
         '    batch.alter_column("a", existing_type=sa.String(20), nullable=False)',
         batch_only_elsewhere(("set-not-null", "sets column t.a NOT NULL"))),
    Case("renametab01", 'op.rename_table("t", "t_renamed")', everywhere(("rename-table", "renames table t to t_renamed"))),
    Case("renamecol01", 'op.alter_column("t", "a", new_column_name="a2", existing_type=sa.String(20))',
         everywhere(("rename-column", "renames column t.a to a2"))),
    Case("index00001", 'op.create_index("ix_t_b", "t", ["b"])',
         {"sqlite": [], "postgresql": [("index-not-concurrent", "creates index ix_t_b on t without CONCURRENTLY")],
          "mysql": []}),
    Case("foreignkey01",
         'with op.batch_alter_table("t") as batch:\n    batch.create_foreign_key("fk_t_b_p", "p", ["b"], ["id"])',
         batch_only_elsewhere(("fk-not-valid", "adds foreign key fk_t_b_p on t without NOT VALID"), mysql=False)),
    Case("update00001", """op.execute("UPDATE t SET a = 'changed' WHERE id = 1")""",
         everywhere(("data-change", "updates rows in t"))),
    Case("delete00001", 'op.execute("DELETE FROM t WHERE id = 1")', everywhere(("data-change", "deletes rows from t"))),
    Case("bulkinsert01",
         'rows = sa.table("t", sa.column("id", sa.Integer), sa.column("a", sa.String))\n'
         'op.bulk_insert(rows, [{"id": 2, "a": "two"}, {"id": 3, "a": "it\'s;\\n\\nthree"}])',
         everywhere(("data-change", "inserts rows into t"))),  # two INSERTs, one finding
    Case("droptable01", 'op.drop_table("t")', everywhere(("drop-table", "drops table t"))),
    # steps that read the live database cannot be rendered offline
    Case("readsrows01",
         'count = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM t")).scalar()\n'
         'op.execute(f"UPDATE t SET b = {count}")',
         everywhere(("not-analysable",
                     "not analysable offline: reads from the database (uses .scalar of an op.get_bind().execute() result)"))),
    Case("inspects0001",
         'if "c" not in [c["name"] for c in sa.inspect(op.get_bind()).get_columns("t")]:\n'
         '    op.add_column("t", sa.Column("c", sa.Integer))',
         everywhere(("not-analysable",
                     "not analysable offline: inspects the live database schema (sa.inspect(op.get_bind()))"))),
    # safe steps: no findings
    Case("newtable0001",
         'op.create_table("c", sa.Column("id", sa.Integer, primary_key=True),\n'
         '                sa.Column("t_id", sa.Integer, sa.ForeignKey("t.id"), nullable=False))\n'
         'op.create_index("ix_c_t_id", "c", ["t_id"])',
         everywhere()),
    Case("addcolumns01",
         'op.add_column("t", sa.Column("c", sa.Integer, nullable=True))\n'
         'op.add_column("t", sa.Column("d", sa.Integer, nullable=False, server_default="0"))',
         everywhere()),
    Case("concurrent01",
         'with op.get_context().autocommit_block():\n'
         '    op.create_index("ix_t_b", "t", ["b"], postgresql_concurrently=True)',
         everywhere()),
    Case("fknotvalid01",
         'with op.batch_alter_table("t") as batch:\n'
         '    batch.create_foreign_key("fk_t_b_p", "p", ["b"], ["id"], postgresql_not_valid=True)',
         batch_only_elsewhere(mysql=False)),
]


def pairs(findings: list[Finding]) -> list[tuple[str, str]]:
    """Return (rule, message) of each finding."""
    return [(f.rule, f.message) for f in findings]


def project_with(root: Path, url: str, *revisions: tuple[str, str | None, str]) -> Project:
    """Return a one-environment project ('main') holding BASE and the given (revision, down, upgrade)."""
    project = make_project(root, {"main": url}, copy_demo=False)
    project.write_revision("versions_prod", BASE, None, BASE_UPGRADE, message="base tables")
    for revision, down, upgrade in revisions:
        project.write_revision("versions_prod", revision, down, upgrade, message=revision)
    return project


def offline_project(tmp_path: Path, *revisions: tuple[str, str | None, str]) -> Project:
    """Return a project whose database is never touched (rendering is offline)."""
    return project_with(tmp_path / "project", f"sqlite:///{tmp_path / 'never_used.db'}", *revisions)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_findings_per_dialect_on_a_revision_that_really_runs(
        case: Case, orchestrator_dialect: str, tmp_path: Path, db_factory: Callable[[], str]) -> None:
    project = project_with(tmp_path / "project", db_factory(), (case.id, BASE, case.upgrade))
    script = project.ctx("main").script.get_revision(case.id)
    findings = lint_revision(script, orchestrator_dialect)
    assert pairs(findings) == case.expected[orchestrator_dialect]
    assert all(f.revision == case.id and f.severity == RULES[f.rule].severity for f in findings)
    result = project.cli("-q", "upgrade")
    if orchestrator_dialect in case.fails_on:
        assert result.exit_code == 1 and f"revision {case.id} " in result.stderr and " failed: " in result.stderr, result.output
    else:
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("dialect", DIALECTS)
def test_findings_carry_the_statement(dialect: str, tmp_path: Path) -> None:
    project = offline_project(tmp_path, ("droptable01", BASE, 'op.drop_table("t")'),
                              ("longupdate01", BASE, f"""op.execute("UPDATE t SET a = '{'x' * 300}'")"""))
    script = project.ctx("main").script
    [drop] = lint_revision(script.get_revision("droptable01"), dialect)
    assert drop == Finding("drop-table", "error", "droptable01", "drops table t", "DROP TABLE t")
    [update] = lint_revision(script.get_revision("longupdate01"), dialect)
    assert len(update.statement) == 200 and update.statement.startswith("UPDATE t SET a = 'xxx")
    assert update.statement.endswith("...")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_demo_prod_revisions_have_no_findings(dialect: str, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"main": f"sqlite:///{tmp_path / 'never_used.db'}"})
    script = project.ctx("main").script
    for revision in PROD_REVISIONS:
        assert lint_revision(script.get_revision(revision), dialect) == [], revision


def test_demo_downgrades_are_linted_too(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"main": f"sqlite:///{tmp_path / 'never_used.db'}"})
    script = project.ctx("main").script.get_revision(PROD_REVISIONS[1])
    assert pairs(lint_revision(script, "postgresql", direction="down")) == [("drop-column", "drops column sessions.workflow_data")]
    assert pairs(lint_revision(script, "sqlite", direction="down")) == [
        ("not-analysable", 'not analysable offline: batch mode on SQLite needs a live connection to reflect table "sessions"')]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_render_splits_statements_but_never_inside_a_literal(dialect: str, tmp_path: Path) -> None:
    upgrade = (
        """op.execute("UPDATE t SET a = 'x;\\n\\ny' WHERE id = 1; DELETE FROM t WHERE id = 2")\n"""
        'rows = sa.table("t", sa.column("id", sa.Integer), sa.column("a", sa.String))\n'
        """op.bulk_insert(rows, [{"id": 3, "a": "it's;\\n\\nok"}])\n"""
        'op.drop_table("p")'
    )
    project = offline_project(tmp_path, ("split0000001", BASE, upgrade))
    script = project.ctx("main").script.get_revision("split0000001")
    assert render_step_sql(script, dialect) == [
        "UPDATE t SET a = 'x;\n\ny' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t (id, a) VALUES (3, 'it''s;\n\nok')",
        "DROP TABLE p",
    ]
    assert render_step_sql(script, dialect, "down") == []
    assert pairs(lint_revision(script, dialect)) == [
        ("data-change", "updates rows in t"), ("data-change", "deletes rows from t"),
        ("data-change", "inserts rows into t"), ("drop-table", "drops table p")]


def test_postgresql_dollar_quoted_body_is_one_statement() -> None:
    sql = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\nDROP TABLE t;\n\n"
    assert split_statements(sql, "postgresql") == ["CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
                                                   "DROP TABLE t"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_failing_script_is_not_analysable_with_one_line(dialect: str, tmp_path: Path) -> None:
    project = offline_project(tmp_path, ("raises000001", BASE, 'raise RuntimeError("boom\\nsecond line")'),
                              ("context00001", BASE, "from alembic import context\ncontext.get_x_argument()"))
    script = project.ctx("main").script
    with pytest.raises(NotAnalysable) as caught:
        render_step_sql(script.get_revision("raises000001"), dialect)
    assert caught.value.reason == "RuntimeError: boom"
    assert lint_revision(script.get_revision("raises000001"), dialect) == [
        Finding("not-analysable", "error", "raises000001", "not analysable offline: RuntimeError: boom", None)]
    # alembic.context is not set up offline (NameError, or AttributeError once an earlier run tore it down)
    [finding] = lint_revision(script.get_revision("context00001"), dialect)
    assert finding.message.startswith("not analysable offline: ") and "get_x_argument" in finding.message
    assert "\n" not in finding.message and len(finding.message) <= 200 + len("not analysable offline: ")


def test_sqlite_constraint_outside_batch_mode_is_not_analysable(tmp_path: Path) -> None:
    project = offline_project(tmp_path, ("fknobatch001", BASE, 'op.create_foreign_key("fk", "t", "p", ["b"], ["id"])'))
    script = project.ctx("main").script.get_revision("fknobatch001")
    assert pairs(lint_revision(script, "sqlite")) == [(
        "not-analysable", "not analysable offline: NotImplementedError: No support for ALTER of constraints in SQLite "
        "dialect. Please refer to the batch mode feature which allows for SQLite migrations using a copy-and-move strategy.")]
    assert pairs(lint_revision(script, "postgresql")) == [("fk-not-valid", "adds foreign key fk on t without NOT VALID")]


def test_severities_override_and_turn_off(tmp_path: Path) -> None:
    project = offline_project(tmp_path, ("mixed0000001", BASE, 'op.drop_column("t", "a")\nop.execute("DELETE FROM t")'))
    script = project.ctx("main").script.get_revision("mixed0000001")
    default = lint_revision(script, "postgresql")
    assert [(f.rule, f.severity) for f in default] == [("drop-column", "error"), ("data-change", "warning")]
    relaxed = lint_revision(script, "postgresql", {"drop-column": "warning", "data-change": "error"})
    assert [(f.rule, f.severity) for f in relaxed] == [("drop-column", "warning"), ("data-change", "error")]
    assert [f.rule for f in lint_revision(script, "postgresql", {"data-change": "off"})] == ["drop-column"]
    with pytest.raises(ValueError, match="unknown lint rule 'drop-colum'"):
        lint_revision(script, "postgresql", {"drop-colum": "off"})
    with pytest.raises(ValueError, match="severity must be error, warning or off, not 'fatal'"):
        lint_revision(script, "postgresql", {"drop-column": "fatal"})


def test_not_analysable_severity_can_be_overridden(tmp_path: Path) -> None:
    project = offline_project(tmp_path, ("raises000001", BASE, 'raise RuntimeError("boom")'))
    script = project.ctx("main").script.get_revision("raises000001")
    assert [f.severity for f in lint_revision(script, "sqlite", {"not-analysable": "warning"})] == ["warning"]
    assert lint_revision(script, "sqlite", {"not-analysable": "off"}) == []


def test_rule_ids_and_default_severities_are_stable() -> None:
    assert {r.id: r.severity for r in RULES.values()} == {
        "drop-table": "error", "drop-column": "error", "column-type-change": "error",
        "add-not-null-without-default": "error", "set-not-null": "error", "rename-table": "error",
        "rename-column": "error", "index-not-concurrent": "warning", "fk-not-valid": "warning",
        "data-change": "warning", "not-analysable": "error"}
    assert all(rule.id == key and rule.summary for key, rule in RULES.items())


def test_unknown_dialect_is_refused(tmp_path: Path) -> None:
    project = offline_project(tmp_path)
    with pytest.raises(ConfigError, match="not 'oracle'"):
        render_step_sql(project.ctx("main").script.get_revision(BASE), "oracle")


@pytest.mark.parametrize(("dialect", "statements", "expected"), [
    # tables created in the step: no index, foreign key, NOT NULL or rename findings, even after a rename
    ("postgresql", ["CREATE TABLE n (id INT)", "ALTER TABLE n ADD COLUMN c INT NOT NULL",
                    "CREATE INDEX ix_n ON n (c)", "ALTER TABLE n RENAME TO n2",
                    "ALTER TABLE n2 ADD CONSTRAINT fk FOREIGN KEY(c) REFERENCES p (id)", "DROP TABLE n2"], []),
    # PostgreSQL's safe forms
    ("postgresql", ["CREATE INDEX CONCURRENTLY ix ON t (b)",
                    "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY(b) REFERENCES p (id) NOT VALID",
                    "ALTER TABLE t ADD COLUMN c INTEGER DEFAULT '0' NOT NULL",
                    "ALTER TABLE t ADD COLUMN s SERIAL NOT NULL",
                    "ALTER TABLE t ADD COLUMN g INTEGER GENERATED ALWAYS AS IDENTITY NOT NULL",
                    "ALTER TABLE t ALTER COLUMN a DROP NOT NULL", "ALTER TABLE t ALTER COLUMN a SET DEFAULT 'x'",
                    "SELECT 1"], []),
    ("postgresql", ["ALTER TABLE t ADD FOREIGN KEY(b) REFERENCES p (id)"],
     [("fk-not-valid", "adds foreign key (b) on t without NOT VALID")]),
    ("postgresql", ["ALTER TABLE s.t ALTER COLUMN a TYPE TEXT USING a::text", "ALTER TABLE s.t RENAME COLUMN a TO b",
                    "DROP TABLE IF EXISTS s.t, u"],
     [("column-type-change", "changes the type of column s.t.a to TEXT"), ("rename-column", "renames column s.t.a to b"),
      ("drop-table", "drops table s.t"), ("drop-table", "drops table u")]),
    # MySQL: MODIFY with NOT NULL reads as set-not-null (the old type is unknown), CHANGE as a rename
    ("mysql", ["ALTER TABLE t MODIFY a VARCHAR(50) NOT NULL", "ALTER TABLE t CHANGE a a2 VARCHAR(50) NOT NULL",
               "ALTER TABLE t ADD COLUMN c INTEGER NOT NULL AUTO_INCREMENT", "CREATE INDEX ix ON t (b)"],
     [("set-not-null", "sets column t.a NOT NULL"), ("rename-column", "renames column t.a to a2")]),
    # what sqlglot cannot parse, or parses only as an opaque command, is not analysable (quoted); comments are nothing
    ("postgresql", ["ALTER TABLE t VALIDATE CONSTRAINT fk", "THIS IS NOT SQL (", "VACUUM t", "-- only a comment", ""],
     [("not-analysable", 'not analysable: sqlglot reads statement "ALTER TABLE t VALIDATE CONSTRAINT fk" only as an '
                         "opaque command; no rule can check it"),
      ("not-analysable", 'not analysable: sqlglot cannot parse statement "THIS IS NOT SQL (" as PostgreSQL '
                         "(Expecting ). Line 1, Col: 17)"),
      ("not-analysable", 'not analysable: sqlglot reads statement "VACUUM t" only as an opaque command; '
                         "no rule can check it")]),
    ("sqlite", ["ALTER TABLE t DROP COLUMN a", "ALTER TABLE t RENAME COLUMN b TO c", "ALTER TABLE t RENAME TO u"],
     [("drop-column", "drops column t.a"), ("rename-column", "renames column t.b to c"),
      ("rename-table", "renames table t to u")]),
    ("postgresql", ["MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a"],
     [("data-change", "merges rows into t")]),
])
def test_lint_statements(dialect: str, statements: list[str], expected: list[tuple[str, str]]) -> None:
    findings = lint_statements(statements, dialect, "rev")
    assert pairs(findings) == expected
    assert all(f.revision == "rev" for f in findings)
