"""Lint fails closed (issue 13, item 6): what it cannot read is a finding, never a silent pass or exit.

- a statement sqlglot cannot parse, or parses only as an opaque command, is a
  ``not-analysable`` finding quoting the statement (one line, shortened,
  secrets masked); a protected environment refuses the revision until its
  approval acknowledges ``not-analysable``;
- an unsupported dialect is one ``error:`` line, exit 2;
- steps render with the environment's Alembic ``Config`` (main options, no
  ``-x``), so scripts reading ``context.config.get_main_option(...)`` are analysable;
- ``sys.exit(0)`` in a script (at import or in ``upgrade()``) never makes
  ``review check``, ``lint --strict`` or ``verify`` exit 0 without a verdict;
- on a protected environment lint does not run a script whose content is not approved.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from alembic import context as alembic_context
from alembic.runtime.environment import EnvironmentContext

from conftest import PROD_HEAD, Project, make_project, query
from orchestrator.lint import Finding, lint_revision, lint_statements
from orchestrator.redact import register_secret

OPAQUE = "0bad5e1ec701"
CONFIG = "c0f1e2a3b401"
EXITS = "e7e7e7e7e701"
MARKER = "ma7e0000a001"

# per dialect: a statement the database runs (inside a transaction) that sqlglot cannot parse
UNPARSEABLE = {"sqlite": "SELECT CAST('1' AS)", "postgresql": "SELECT @ -5", "mysql": "DO 1"}
PARSE_ERRORS = {
    "sqlite": 'not analysable: sqlglot cannot parse statement "SELECT CAST(\'1\' AS)" as SQLite '
              "(Expected TYPE after CAST. Line 1, Col: 19)",
    "postgresql": 'not analysable: sqlglot cannot parse statement "SELECT @ -5" as PostgreSQL '
                  "(Required keyword: 'this' missing for <class 'sqlglot.expressions.core.Parameter'>. Line 1, Col: 10)",
    "mysql": 'not analysable: sqlglot cannot parse statement "DO 1" as MySQL (Invalid expression / Unexpected token. '
             "Line 1, Col: 4)",
}
NOT_APPROVED = ("not analysable on protected environment 'prod': its content is not approved in the review ledger, "
                "so lint does not run it; lint it on an unprotected environment")


def ok(project: Project, *args: str) -> None:
    result = project.cli("-q", *args)
    assert result.exit_code == 0, (args, result.output)


def shown(project: Project, revision: str) -> str:
    [path] = (project.root / "versions_prod").glob(f"{revision}_*.py")
    return str(path.relative_to(project.root))


def versions(project: Project, env: str) -> list[str]:
    return sorted(r[0] for r in query(project.urls[env], "SELECT version_num FROM alembic_version"))


def findings(project: Project, env: str, *revisions: str) -> list[tuple[str, str, str, str | None]]:
    """Return (revision, rule, message, statement) of each lint finding on ``env``."""
    data = project.json("lint", "--env", env, *revisions)
    return [(f["revision"], f["rule"], f["message"], f["statement"]) for f in data["findings"]]


# ---------------------------------------------------------------------------------------------- unparseable SQL


def test_unparseable_statement_is_not_analysable_and_prod_refuses_it_until_acknowledged(
        demo: Project, orchestrator_dialect: str) -> None:
    statement = UNPARSEABLE[orchestrator_dialect]
    demo.write_revision("versions_prod", OPAQUE, PROD_HEAD, f"op.execute({statement!r})", message="opaque sql")
    message = PARSE_ERRORS[orchestrator_dialect]

    assert findings(demo, "staging", OPAQUE) == [(OPAQUE, "not-analysable", message, statement)]
    strict = demo.cli("lint", "--env", "staging", "--strict", OPAQUE)
    assert strict.exit_code == 3 and "not-analysable" in strict.stdout and statement in strict.stdout

    ok(demo, "upgrade", "--env", "staging")  # not protected: the database runs it
    assert versions(demo, "staging") == [OPAQUE]
    ok(demo, "upgrade", "--env", "prod", PROD_HEAD)
    where = f"revision {OPAQUE} ({shown(demo, OPAQUE)})"
    refused = demo.cli("-q", "upgrade", "--env", "prod")
    assert (refused.exit_code, refused.stderr) == (3, f"error: prod: refused: {where} is not reviewed; "
                                                      f"run `orchestrator review approve {OPAQUE} --reviewer NAME`\n")

    approved = demo.cli("review", "approve", OPAQUE, "--reviewer", "alice")
    assert approved.exit_code == 0
    assert approved.stderr == (f"warning: prod: lint error not-analysable ({message}) is not acknowledged; "
                               "approve with --ack not-analysable if it is intended\n")
    refused = demo.cli("-q", "upgrade", "--env", "prod")
    assert (refused.exit_code, refused.stderr) == (
        3, f"error: prod: refused: {where}: lint error not-analysable ({message}) is not acknowledged; "
           "approve it with --ack not-analysable\n")
    assert versions(demo, "prod") == [PROD_HEAD]
    blocked = demo.json("runs", "--env", "prod")["runs"][0]
    assert (blocked["status"], blocked["steps"]) == ("blocked", [])

    approved = demo.cli("review", "approve", OPAQUE, "--reviewer", "bob", "--ack", "not-analysable")
    assert (approved.exit_code, approved.stderr) == (0, "")
    assert findings(demo, "prod", OPAQUE) == [(OPAQUE, "not-analysable", message, statement)]  # approved: rendered
    ok(demo, "promote", "--to", "prod")
    assert versions(demo, "prod") == [OPAQUE]


@pytest.mark.parametrize(("dialect", "statement"), [
    ("sqlite", "REINDEX"), ("postgresql", "LOCK TABLE t IN SHARE MODE"), ("mysql", "RENAME TABLE a TO b")])
def test_opaque_command_is_not_analysable(dialect: str, statement: str) -> None:
    assert lint_statements([statement, "-- a comment only"], dialect, "rev") == [Finding(
        "not-analysable", "error", "rev",
        f'not analysable: sqlglot reads statement "{statement}" only as an opaque command; no rule can check it',
        statement)]


def test_quoted_statement_is_one_line_shortened_and_masked() -> None:
    register_secret("Zq8sentinelPw")
    statement = "ALTER USER app\n    WITH PASSWORD 'Zq8sentinelPw' VALID UNTIL 'infinity' CONNECTION LIMIT 10 " + "x" * 100
    [finding] = lint_statements([statement], "postgresql", "rev")
    quoted = "ALTER USER app WITH PASSWORD '***' VALID UNTIL 'infinity' CONNECTION LIMIT 10..."  # 80 characters
    assert finding.message == (f'not analysable: sqlglot reads statement "{quoted}" only as an opaque command; '
                               "no rule can check it")
    assert "Zq8sentinelPw" not in finding.message and "Zq8sentinelPw" not in (finding.statement or "")


# ---------------------------------------------------------------------------------------------- dialects


def test_unsupported_dialect_is_one_line_exit_2(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"legacy": "oracle+oracledb://scott@db.example/orcl"})
    line = ("error: environment 'legacy': lint supports the dialects sqlite, postgresql, mysql, mariadb, not 'oracle'; "
            "lint the revisions on an environment of one of those dialects\n")
    for args in (("lint",), ("lint", "--strict", PROD_HEAD), ("review", "check", "--all")):
        result = project.cli(*args, "--env", "legacy")
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", line), args


# ---------------------------------------------------------------------------------------------- the real Config

READS_CONFIG = """
from alembic import context
location = context.config.get_main_option("script_location")
env = context.config.get_main_option("orchestrator.env")
if location and not context.get_x_argument(as_dictionary=True).get("skip"):
    op.execute(f"DELETE FROM sessions WHERE id = '{env}'")
"""


def test_script_reading_the_config_is_analysable(demo: Project, orchestrator_dialect: str) -> None:
    demo.write_revision("versions_prod", CONFIG, PROD_HEAD, READS_CONFIG, message="reads config")
    assert findings(demo, "staging", CONFIG) == [
        (CONFIG, "data-change", "deletes rows from sessions", "DELETE FROM sessions WHERE id = 'staging'")]
    ok(demo, "upgrade", "--env", "staging")  # the same script runs for real under Alembic's own Config
    assert versions(demo, "staging") == [CONFIG]
    ok(demo, "review", "approve", CONFIG, "--reviewer", "alice")
    # each environment's own main options (the cache does not hand staging's rendering to prod)
    assert findings(demo, "prod", CONFIG) == [
        (CONFIG, "data-change", "deletes rows from sessions", "DELETE FROM sessions WHERE id = 'prod'")]


def test_lint_inside_a_running_migration_leaves_its_context_in_place(tmp_path: Path) -> None:
    """The gate lints from inside env.py under stock alembic: that run's alembic.context must survive."""
    project = make_project(tmp_path / "project", {"main": f"sqlite:///{tmp_path / 'never_used.db'}"})
    project.write_revision("versions_prod", CONFIG, PROD_HEAD, READS_CONFIG, message="reads config")
    ctx = project.ctx("main")
    outer = ctx.config()
    with EnvironmentContext(outer, ctx.script):
        found = lint_revision(ctx.script.get_revision(CONFIG), "sqlite", config=ctx.config(), directory=ctx.script)
        assert [(f.rule, f.statement) for f in found] == [("data-change", "DELETE FROM sessions WHERE id = 'main'")]
        assert alembic_context.config is outer
    # without a Config, alembic.context is not set up: not analysable, as before
    [finding] = lint_revision(ctx.script.get_revision(CONFIG), "sqlite")
    assert finding.rule == "not-analysable" and "config" in finding.message


# ---------------------------------------------------------------------------------------------- sys.exit


def test_sys_exit_at_import_never_passes_silently(demo: Project, orchestrator_dialect: str) -> None:
    """Reading no longer imports scripts; rendering one that exits at import is a finding, never a silent exit."""
    demo.write_revision("versions_prod", EXITS, PROD_HEAD, 'op.drop_column("sessions", "workflow_data")',
                        message="exits at import", extra="import sys\nsys.exit(0)")
    where = f"revision {EXITS} ({shown(demo, EXITS)})"
    message = (f"not analysable offline: GraphError: {shown(demo, EXITS)}: cannot import revision script {EXITS}: "
               "SystemExit: 0")
    check = demo.cli("review", "check", "--all", "--env", "staging")
    assert (check.exit_code, check.stderr) == (3, "")
    assert check.stdout == (
        f"staging: {where} is not reviewed; run `orchestrator review approve {EXITS} --reviewer NAME`\n"
        f"staging: {where}: lint error not-analysable ({message}) is not acknowledged; "
        "approve it with --ack not-analysable\n")
    assert findings(demo, "staging", EXITS) == [(EXITS, "not-analysable", message, None)]
    # the same as a user's process: the verdict printed, exit 3
    process = demo.run("lint", "--strict", "--env", "staging")
    assert process.returncode == 3 and "not-analysable" in process.stdout and "SystemExit: 0" in process.stdout
    verify = demo.cli("verify", "--env", "staging")  # verify runs no script
    assert (verify.exit_code, verify.stdout) == (0, "verified: no integrity findings\n")


def test_sys_exit_in_upgrade_is_not_analysable_never_an_exit(demo: Project, orchestrator_dialect: str) -> None:
    demo.write_revision("versions_prod", EXITS, PROD_HEAD, "import sys\nsys.exit(0)", message="exits in upgrade")
    message = "not analysable offline: calls sys.exit(0)"
    assert findings(demo, "staging", EXITS) == [(EXITS, "not-analysable", message, None)]
    strict = demo.run("lint", "--strict", "--env", "staging")
    assert strict.returncode == 3 and message in strict.stdout
    where = f"revision {EXITS} ({shown(demo, EXITS)})"
    check = demo.cli("review", "check", "--all", "--env", "staging")
    assert (check.exit_code, check.stdout) == (3, (
        f"staging: {where} is not reviewed; run `orchestrator review approve {EXITS} --reviewer NAME`\n"
        f"staging: {where}: lint error not-analysable ({message}) is not acknowledged; "
        "approve it with --ack not-analysable\n"))
    check = demo.cli("review", "check", "--all", "--env", "prod")
    assert (check.exit_code, check.stdout) == (
        3, f"prod: {where} is not reviewed; run `orchestrator review approve {EXITS} --reviewer NAME`\n")
    verify = demo.cli("verify", "--env", "staging")
    assert (verify.exit_code, verify.stdout) == (0, "verified: no integrity findings\n")


# ---------------------------------------------------------------------------------------------- unapproved code on prod


def test_lint_on_protected_env_does_not_run_unapproved_code(demo: Project, orchestrator_dialect: str,
                                                            tmp_path: Path) -> None:
    marker = tmp_path / "upgrade-ran"
    demo.write_revision("versions_prod", MARKER, PROD_HEAD,
                        f'open({str(marker)!r}, "w").write("ran")\nop.drop_column("sessions", "workflow_data")',
                        message="writes a marker")
    assert findings(demo, "prod", MARKER) == [(MARKER, "not-analysable", NOT_APPROVED, None)]
    strict = demo.cli("lint", "--env", "prod", "--strict")
    assert strict.exit_code == 3 and "not approved in the review ledger" in strict.stdout
    assert demo.cli("review", "check", "--all", "--env", "prod").exit_code == 3
    status = demo.json("review", "status", "--all", "--env", "prod")
    [row] = [r for r in status["revisions"] if r["revision"] == MARKER]
    assert row["lint"] == [{"rule": "not-analysable", "severity": "error", "message": NOT_APPROVED,
                            "acknowledged": False}]
    assert demo.cli("-q", "upgrade", "--env", "prod").exit_code == 3
    assert not marker.exists()

    # a registry that turns the rule off shows nothing for it (the gate still refuses the unreviewed script)
    data = yaml.safe_load(demo.registry_path.read_text())
    data["environments"]["prod"]["lint"] = {"not-analysable": "off"}
    demo.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert findings(demo, "prod", MARKER) == []
    assert demo.cli("-q", "upgrade", "--env", "prod").exit_code == 3
    assert not marker.exists()

    # an unprotected environment runs it to lint it (so the marker does tell)
    assert findings(demo, "staging", MARKER) == [
        (MARKER, "drop-column", "drops column sessions.workflow_data",
         "ALTER TABLE sessions DROP COLUMN workflow_data")]
    assert marker.exists()
    marker.unlink()
    ok(demo, "review", "approve", MARKER, "--reviewer", "alice", "--ack", "drop-column")
    assert [f[1] for f in findings(demo, "prod", MARKER)] == ["drop-column"]  # approved: now rendered on prod
    assert marker.exists()
