"""import-sql: numbered SQL files become a chain of revisions that run, plan, render and re-import cleanly."""
from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from conftest import PROD_HEAD, Project, make_project, query, table_names
from orchestrator.errors import ConfigError
from orchestrator.sqlimport import VERSION_ATTRIBUTE, find_sql_files, revision_for_version
from orchestrator.sqlsplit import SplitError, is_transaction_control, split_statements

NOTE = "it''s 10:30; 100% :done"  # quotes, a colon bind look-alike, a percent and a semicolon: all verbatim
FIVE = {
    "v001_create_users.sql": f"""
        -- users; the first table
        CREATE TABLE users (
          id INTEGER PRIMARY KEY,
          name VARCHAR(100) NOT NULL,
          note VARCHAR(100) DEFAULT '{NOTE}'
        );
        """,
    "v001_create_users.down.sql": "DROP TABLE users;\n",
    "v002_create_orders.sql": """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, total INTEGER);
        /* an index; for lookups */
        CREATE INDEX ix_orders_user ON orders (user_id);
        """,
    "v002_create_orders.down.sql": "DROP TABLE orders;\n",
    "v003_seed_users.sql": """
        INSERT INTO users (id, name) VALUES (1, 'ada');
        INSERT INTO users (id, name, note) VALUES (2, 'bob', 'semi; colon')
        """,
    "v004_add_email.sql": "ALTER TABLE users ADD COLUMN email VARCHAR(200);\n",
    "v005_backfill_email.sql": "UPDATE users SET email = 'ada@example.org' WHERE id = 1;\n",
}
IDS = ("v001", "v002", "v003", "v004", "v005")


def write_sql(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return folder


def empty_project(root: Path, url: str) -> Project:
    """One environment 'main' over an empty versions_prod."""
    return make_project(root, {"main": url}, copy_demo=False)


@pytest.fixture
def offline(tmp_path: Path) -> Project:
    """A project on a SQLite file, for what import-sql does without a database."""
    return empty_project(tmp_path / "project", f"sqlite:///{tmp_path / 'main.db'}")


def sql(text: str, **kw: bool) -> list[str]:
    return [s.sql for s in split_statements(textwrap.dedent(text), **kw)]


# ---------------------------------------------------------------------------- splitting


def test_semicolons_inside_quotes_and_comments_do_not_split() -> None:
    assert sql("""
        -- a comment; with 'a quote
        CREATE TABLE "we;ird" (a VARCHAR(9) DEFAULT 'x;''y', `b;` INT); /* c; 'd */
        SELECT 1;
        -- only a comment; at the end
        """) == [
        "-- a comment; with 'a quote\nCREATE TABLE \"we;ird\" (a VARCHAR(9) DEFAULT 'x;''y', `b;` INT)",
        "/* c; 'd */\nSELECT 1",
    ]


def test_dollar_quotes_and_e_strings() -> None:
    body = "CREATE FUNCTION f() RETURNS trigger AS $fn$ BEGIN NEW.a := 'x;'; RETURN NEW; END; $fn$ LANGUAGE plpgsql"
    assert sql(f"{body};\nSELECT $$a;b$$, E'it\\'s;', price$1 FROM t;") == [
        body, "SELECT $$a;b$$, E'it\\'s;', price$1 FROM t"]


def test_trigger_bodies_stay_whole() -> None:
    trigger = ("CREATE TRIGGER t AFTER UPDATE ON a BEGIN\n"
               "  UPDATE a SET x = CASE WHEN NEW.end = 1 THEN 'y;' ELSE 'z' END;\n"
               "  INSERT INTO log VALUES (NEW.begin);\nEND")
    assert sql(f"{trigger};\nCREATE TABLE b (c INT);") == [trigger, "CREATE TABLE b (c INT)"]


def test_mysql_compound_statements_and_delimiter_lines() -> None:
    procedure = ("CREATE PROCEDURE p()\nBEGIN\n  IF 1 THEN SELECT 'a;'; END IF;\n"
                 "  CASE WHEN 1 THEN SELECT 2; END CASE;\n  WHILE 0 DO SELECT 3; END WHILE;\nEND")
    assert sql(f"{procedure};\nSELECT 'it\\'s;' # note; here\n;", mysql=True) == [
        procedure, "SELECT 'it\\'s;' # note; here"]
    assert sql("DELIMITER //\nCREATE PROCEDURE q() BEGIN SELECT 1; END //\nDELIMITER ;\nSELECT 2;\n", mysql=True) == [
        "CREATE PROCEDURE q() BEGIN SELECT 1; END", "SELECT 2"]


def test_statement_lines_and_transaction_control() -> None:
    statements = split_statements("BEGIN;\n\nCREATE TABLE a (b INT);\nCOMMIT;\n")
    assert [(s.sql, s.line) for s in statements] == [("BEGIN", 1), ("CREATE TABLE a (b INT)", 3), ("COMMIT", 4)]
    assert [is_transaction_control(s.sql) for s in statements] == [True, False, True]
    assert all(is_transaction_control(s) for s in ("begin immediate transaction", "START TRANSACTION", "END", "commit work"))
    assert not is_transaction_control("BEGIN NOT ATOMIC SELECT 1; END")


@pytest.mark.parametrize(("text", "message"), [
    ("SELECT 1;\nSELECT 'open;\n", "v001_x.sql:2: unterminated string '...; the file cannot be split into statements safely: fix it"),
    ("SELECT 1 /* open\n", "v001_x.sql:1: unterminated /* comment; the file cannot be split into statements safely: fix it"),
    ("SELECT $body$ x;\n", "v001_x.sql:1: unterminated dollar-quoted string $body$; the file cannot be split into "
                           "statements safely: fix it"),
    ("SELECT 1;\n\nROLLBACK;\n", "v001_x.sql:3: ROLLBACK in a migration script; remove it (a failing revision is rolled "
                                 "back by the orchestrator); the file cannot be split into statements safely: fix it"),
])
def test_unsplittable_scripts_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(SplitError) as caught:
        split_statements(text, where="v001_x.sql")
    assert str(caught.value) == message


# ---------------------------------------------------------------------------- finding the files


def test_files_are_ordered_by_number_with_their_down_files(tmp_path: Path) -> None:
    folder = write_sql(tmp_path / "sql", {f"v{n}_step_{n}.sql": "SELECT 1;" for n in range(1, 11)}
                       | {"v10_step_10.down.sql": "SELECT 2;", "README.md": "not SQL"})
    files = find_sql_files(folder)
    assert [f.revision for f in files] == [f"v{n}" for n in range(1, 11)]  # v10 after v9, not after v1
    assert [f.message for f in files][:2] == ["step 1", "step 2"]
    assert [f.down.name if f.down else None for f in files][-2:] == [None, "v10_step_10.down.sql"]


def test_golang_migrate_and_flyway_names(tmp_path: Path) -> None:
    folder = write_sql(tmp_path / "gm", {"000001_create_users.up.sql": "SELECT 1;", "000001_create_users.down.sql": "",
                                         "000002_add-email.up.sql": "SELECT 2;"})
    files = find_sql_files(folder)
    assert [(f.revision, f.number, f.message, f.slug, f.down is not None) for f in files] == [
        ("v000001", 1, "create users", "create_users", True), ("v000002", 2, "add-email", "add_email", False)]
    flyway = find_sql_files(write_sql(tmp_path / "fw", {"V1__init.sql": "SELECT 1;"}))
    assert [(f.revision, f.message) for f in flyway] == [("v1", "init")]


@pytest.mark.parametrize(("files", "message"), [
    ({"v001_a.sql": "", "v003_c.sql": ""},
     "import-sql: version 2 is missing in {dir} between v001_a.sql and v003_c.sql; the numbers must run without gaps"),
    ({"v001_a.sql": "", "v1_b.sql": ""},
     "import-sql: version 1 appears more than once in {dir} (v001_a.sql, v1_b.sql); keep one file per number"),
    ({"v001_a.sql": "", "notes.sql": ""},
     "import-sql: notes.sql in {dir} does not match vNNN_description.sql (or NNN_description.up.sql / .down.sql); "
     "rename it or move it out of the folder"),
    ({"v001_a.sql": "", "v002_b.down.sql": ""}, "import-sql: v002_b.down.sql in {dir} has no up file for version 2"),
    ({"README.md": ""}, "import-sql: {dir} holds no vNNN_description.sql files"),
])
def test_bad_folders_are_refused(tmp_path: Path, files: dict[str, str], message: str) -> None:
    folder = write_sql(tmp_path / "sql", files)
    with pytest.raises(ConfigError) as caught:
        find_sql_files(folder)
    assert str(caught.value) == message.format(dir=folder)


# ---------------------------------------------------------------------------- importing and running


def test_five_files_imported_upgrade_record_and_downgrade(tmp_path: Path, db_factory: Callable[[], str],
                                                         orchestrator_dialect: str) -> None:
    project = empty_project(tmp_path / "project", db_factory())
    write_sql(tmp_path / "sql", FIVE)
    imported = project.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert imported.exit_code == 0, imported.output
    assert imported.stdout == (
        "v001: v001_create_users.sql -> versions_prod/v001_create_users.py (1 statement, with downgrade)\n"
        "v002: v002_create_orders.sql -> versions_prod/v002_create_orders.py (2 statements, with downgrade)\n"
        "v003: v003_seed_users.sql -> versions_prod/v003_seed_users.py (2 statements, irreversible)\n"
        "v004: v004_add_email.sql -> versions_prod/v004_add_email.py (1 statement, irreversible)\n"
        "v005: v005_backfill_email.sql -> versions_prod/v005_backfill_email.py (1 statement, irreversible)\n")
    assert [r["revision"] for r in project.json("history")["revisions"]] == list(reversed(IDS))

    upgraded = project.cli("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    url = project.urls["main"]
    assert query(url, "SELECT version_num FROM alembic_version") == [("v005",)]
    assert query(url, "SELECT revision, direction, status FROM orchestrator_steps ORDER BY seq") == [
        (rev, "up", "succeeded") for rev in IDS]
    assert query(url, "SELECT id, name, note, email FROM users ORDER BY id") == [
        (1, "ada", NOTE.replace("''", "'"), "ada@example.org"), (2, "bob", "semi; colon", None)]

    irreversible = project.cli("downgrade", "v002")
    assert irreversible.exit_code == 1
    assert irreversible.stderr.endswith(
        "error: environment 'main': revision v005 (versions_prod/v005_backfill_email.py) failed: revision v005 "
        "(v005_backfill_email.sql) is irreversible: no v005_backfill_email.down.sql was imported; restore a backup "
        "or write a new revision that undoes it; rolled back; the database is at v005; "
        "see `orchestrator runs --env main`\n")  # MariaDB too: nothing of v005's downgrade had run


def test_down_files_downgrade(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    project = empty_project(tmp_path / "project", db_factory())
    write_sql(tmp_path / "sql", {k: v for k, v in FIVE.items() if k.startswith(("v001", "v002"))})
    assert project.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod").exit_code == 0
    assert project.cli("upgrade").exit_code == 0
    assert {"users", "orders"} <= table_names(project.urls["main"])
    down = project.cli("downgrade", "base")
    assert down.exit_code == 0, down.output
    assert table_names(project.urls["main"]) == {"alembic_version", "orchestrator_runs", "orchestrator_steps", "orchestrator_identity"}


def test_legacy_database_stamped_at_three_upgrades_to_five(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    """What adopt does for a database at user_version 3: stamp the revision of file 3, then upgrade."""
    project = empty_project(tmp_path / "project", db_factory())
    folder = write_sql(tmp_path / "sql", FIVE)
    engine = sa.create_engine(project.urls["main"], poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # the legacy runner applied files 1 to 3 itself
        for source in find_sql_files(folder)[:3]:
            for statement in split_statements(source.up.read_text()):
                conn.execute(sa.DDL(statement.sql.replace("%", "%%")))
    engine.dispose()
    assert project.cli("import-sql", str(folder), "--into", "versions_prod").exit_code == 0
    three = next((project.root / "versions_prod").glob("v003_*.py"))
    assert f"\n{VERSION_ATTRIBUTE} = 3\n" in three.read_text()
    assert revision_for_version(project.ctx("main").all_files, 3).revision == "v003"  # how adopt maps user_version 3
    assert revision_for_version(project.ctx("main").all_files, 6) is None
    assert project.cli("stamp", "v003").exit_code == 0
    upgraded = project.cli("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.startswith("main: upgraded v003 -> v005 (2 steps, run ")
    url = project.urls["main"]
    assert query(url, "SELECT command, status, heads_before, heads_after FROM orchestrator_runs ORDER BY started_at") == [
        ("stamp", "succeeded", "", "v003"), ("upgrade", "succeeded", "v003", "v005")]
    assert query(url, "SELECT revision, direction FROM orchestrator_steps WHERE direction = 'up' ORDER BY seq") == [
        ("v004", "up"), ("v005", "up")]
    assert query(url, "SELECT COUNT(*) FROM users WHERE email IS NOT NULL") == [(1,)]


BODIES = {
    "sqlite": """
        CREATE TRIGGER users_audit AFTER INSERT ON users
        BEGIN
          INSERT INTO audit (what) VALUES (CASE WHEN NEW.name = 'x;' THEN 'x' ELSE 'insert; ' || NEW.name END);
        END;
        """,
    "postgresql": """
        CREATE FUNCTION audit_insert() RETURNS trigger AS $$
        BEGIN
          INSERT INTO audit (what) VALUES ('insert; ' || NEW.name);
          RETURN NEW;
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER users_audit AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION audit_insert();
        """,
    "mysql": """
        CREATE TRIGGER users_audit AFTER INSERT ON users FOR EACH ROW
        BEGIN
          IF NEW.name = 'x;' THEN
            INSERT INTO audit (what) VALUES ('x');
          ELSE
            INSERT INTO audit (what) VALUES (CONCAT('insert; ', NEW.name));
          END IF;
        END;
        """,
}


def test_trigger_and_function_bodies_run_on_their_dialect(tmp_path: Path, db_factory: Callable[[], str],
                                                          orchestrator_dialect: str) -> None:
    project = empty_project(tmp_path / "project", db_factory())
    write_sql(tmp_path / "sql", {
        "v001_tables.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50));\n"
                           "CREATE TABLE audit (what VARCHAR(100));\n",
        "v002_audit_trigger.sql": BODIES[orchestrator_dialect],
    })
    imported = project.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod",
                           "--dialect", orchestrator_dialect)
    assert imported.exit_code == 0, imported.output
    assert project.cli("upgrade").exit_code == 0
    with project.engine("main").begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name) VALUES (1, 'ada')")
    assert query(project.urls["main"], "SELECT what FROM audit") == [("insert; ada",)]


# ---------------------------------------------------------------------------- the generated scripts


def test_plan_lint_and_offline_sql_work_on_imported_revisions(offline: Project, tmp_path: Path) -> None:
    write_sql(tmp_path / "sql", FIVE)
    assert offline.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod").exit_code == 0
    plan = offline.json("plan")
    assert [(s["revision"], s["message"]) for s in plan["steps"]] == [
        ("v001", "create users"), ("v002", "create orders"), ("v003", "seed users"), ("v004", "add email"),
        ("v005", "backfill email")]
    rendered = offline.cli("upgrade", "--sql")
    assert rendered.exit_code == 0, rendered.output
    assert f"note VARCHAR(100) DEFAULT '{NOTE}'\n);" in rendered.stdout
    assert "/* an index; for lookups */\nCREATE INDEX ix_orders_user ON orders (user_id);" in rendered.stdout
    lint = offline.json("lint")
    assert {(f["revision"], f["rule"]) for f in lint["findings"]} == {("v003", "data-change"), ("v005", "data-change")}
    source = (offline.root / "versions_prod" / "v001_create_users.py").read_text()
    assert "revision = 'v001'\ndown_revision = None\n" in source
    assert "\norchestrator_sql_version = 1\n" in source
    compile(source, "v001_create_users.py", "exec")


def test_transaction_statements_are_left_out_and_said_so(offline: Project, tmp_path: Path) -> None:
    write_sql(tmp_path / "sql", {"v001_wrapped.sql": "BEGIN TRANSACTION;\nCREATE TABLE a (b INT);\nCOMMIT;\n"})
    data = offline.json("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert data["revisions"][0]["left_out"] == ["BEGIN (line 1)", "COMMIT (line 3)"]
    source = (offline.root / "versions_prod" / "v001_wrapped.py").read_text()
    assert "# left out: BEGIN (line 1), COMMIT (line 3): every revision runs in its own transaction\n" in source


def test_json_output(offline: Project, tmp_path: Path) -> None:
    write_sql(tmp_path / "sql", {k: v for k, v in FIVE.items() if k.startswith("v001")})
    data = offline.json("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert data == {"into": "versions_prod", "warnings": [], "revisions": [{
        "revision": "v001", "version": 1, "file": "v001_create_users.sql", "down_file": "v001_create_users.down.sql",
        "down_revision": None, "path": "versions_prod/v001_create_users.py", "statements": 1, "reversible": True,
        "left_out": [], "status": "written"}]}


# ---------------------------------------------------------------------------- importing again, and refusals


def test_reimport_skips_unchanged_and_appends_new_files(offline: Project, tmp_path: Path) -> None:
    folder = write_sql(tmp_path / "sql", {k: v for k, v in FIVE.items() if not k.startswith("v005")})
    assert offline.cli("import-sql", str(folder), "--into", "versions_prod").exit_code == 0
    before = {p.name: p.read_bytes() for p in (offline.root / "versions_prod").glob("*.py")}
    again = offline.cli("import-sql", str(folder), "--into", "versions_prod")
    assert again.exit_code == 0
    assert again.stdout == "".join(f"{rev}: unchanged (versions_prod/{name})\n" for rev, name in (
        ("v001", "v001_create_users.py"), ("v002", "v002_create_orders.py"), ("v003", "v003_seed_users.py"),
        ("v004", "v004_add_email.py")))
    write_sql(folder, {"v005_backfill_email.sql": FIVE["v005_backfill_email.sql"]})
    more = offline.cli("import-sql", str(folder), "--into", "versions_prod")
    assert more.exit_code == 0
    assert more.stdout.endswith("v005: v005_backfill_email.sql -> versions_prod/v005_backfill_email.py "
                                "(1 statement, irreversible)\n")
    assert "down_revision = 'v004'\n" in (offline.root / "versions_prod" / "v005_backfill_email.py").read_text()
    assert all((offline.root / "versions_prod" / name).read_bytes() == data for name, data in before.items())


def test_changed_file_is_refused_and_nothing_is_written(offline: Project, tmp_path: Path) -> None:
    folder = write_sql(tmp_path / "sql", {k: v for k, v in FIVE.items() if k.startswith(("v001", "v002"))})
    assert offline.cli("import-sql", str(folder), "--into", "versions_prod").exit_code == 0
    (folder / "v002_create_orders.sql").write_text("CREATE TABLE orders (id INTEGER PRIMARY KEY);\n")
    write_sql(folder, {"v003_seed_users.sql": FIVE["v003_seed_users.sql"]})
    refused = offline.cli("import-sql", str(folder), "--into", "versions_prod")
    assert refused.exit_code == 2
    assert refused.stderr == (
        "error: import-sql: v002_create_orders.sql / v002_create_orders.down.sql changed since it was imported as v002 "
        "(versions_prod/v002_create_orders.py); a revision that may have run must not change: put the change in a new "
        "numbered file, or delete versions_prod/v002_create_orders.py to import it again\n")
    assert not list((offline.root / "versions_prod").glob("v003_*"))


def test_an_existing_revision_of_the_same_id_is_refused(offline: Project, tmp_path: Path) -> None:
    offline.write_revision("versions_prod", "v001", None, "pass", message="hand written")
    write_sql(tmp_path / "sql", {"v001_a.sql": "SELECT 1;"})
    refused = offline.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert (refused.exit_code, refused.stderr) == (2, (
        "error: import-sql: revision v001 already exists (versions_prod/v001_hand_written.py) and was not imported "
        "from v001_a.sql; rename the SQL files or move that revision away\n"))


def test_into_must_be_a_registry_folder(offline: Project, tmp_path: Path) -> None:
    write_sql(tmp_path / "sql", {"v001_a.sql": "SELECT 1;"})
    refused = offline.cli("import-sql", str(tmp_path / "sql"), "--into", "migrations")
    assert (refused.exit_code, refused.stderr) == (2, (
        f"error: import-sql: 'migrations' is not a version folder of any environment in {offline.registry_path}; "
        "choose one of: versions_prod\n"))


def test_chain_starts_on_the_folder_head_or_down_revision(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"dev": f"sqlite:///{tmp_path / 'dev.db'}",
                                                  "prod": f"sqlite:///{tmp_path / 'prod.db'}"})
    write_sql(tmp_path / "sql", {"v001_a.sql": "CREATE TABLE imported_a (b INT);"})
    onto_head = project.cli("--json", "import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert json.loads(onto_head.stdout)["revisions"][0]["down_revision"] == PROD_HEAD
    assert onto_head.stderr == ("warning: environment 'dev' will have 3 heads instead of 2 (e8a7b9c1d264, f3b9d1e5a675, "
                                "v001); pass --down-revision to chain the import onto one\n")
    assert [h["revision"] for h in project.json("heads", "--env", "prod")["heads"]] == ["v001"]

    write_sql(tmp_path / "sql2", {"v7_b.sql": "SELECT 1;"})
    unknown = project.cli("import-sql", str(tmp_path / "sql2"), "--into", "versions_prod", "--down-revision", "nope")
    assert (unknown.exit_code, unknown.stderr) == (
        2, "error: import-sql: --down-revision nope: no version folder holds it\n")
    unclosed = project.cli("import-sql", str(tmp_path / "sql2"), "--into", "versions_prod", "--down-revision", "e8a7b9c1d264")
    assert unclosed.exit_code == 2
    assert unclosed.stderr.startswith("error: import-sql: refused: the imported chain would break a graph: "
                                      "environment 'prod': revision v7 (versions_prod/v7_b.py) depends on e8a7b9c1d264")
    assert not (project.root / "versions_prod" / "v7_b.py").exists()
    root = project.cli("import-sql", str(tmp_path / "sql2"), "--into", "versions_prod", "--down-revision", "base")
    assert root.exit_code == 0
    assert root.stderr == (
        "warning: environment 'dev' will have 4 heads instead of 3 (e8a7b9c1d264, f3b9d1e5a675, v001, v7); pass "
        "--down-revision to chain the import onto one\nwarning: environment 'prod' will have 2 heads instead of 1 "
        "(v001, v7); pass --down-revision to chain the import onto one\n")


def test_a_folder_with_two_heads_needs_down_revision(offline: Project, tmp_path: Path) -> None:
    offline.write_revision("versions_prod", "aaa111", None, "pass", message="one")
    offline.write_revision("versions_prod", "bbb222", None, "pass", message="two")
    write_sql(tmp_path / "sql", {"v001_a.sql": "SELECT 1;"})
    refused = offline.cli("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert (refused.exit_code, refused.stderr) == (2, (
        "error: import-sql: versions_prod/ has 2 heads (aaa111, bbb222); pass --down-revision REV (or base) "
        "to say where the imported chain starts\n"))


def test_bad_sql_is_one_line_and_writes_nothing(offline: Project, tmp_path: Path) -> None:
    write_sql(tmp_path / "sql", {"v001_a.sql": "SELECT 1;", "v002_b.sql": "INSERT INTO t VALUES ('open);\n"})
    refused = offline.run("import-sql", str(tmp_path / "sql"), "--into", "versions_prod")
    assert (refused.returncode, refused.stderr) == (2, (
        "error: v002_b.sql:1: unterminated string '...; the file cannot be split into statements safely: fix it\n"))
    assert not list((offline.root / "versions_prod").glob("*.py"))
    assert json.loads(offline.run("--json", "history").stdout) == {"env": "main", "revisions": []}


def test_imported_then_adopted_at_user_version_three_then_upgraded_to_five(tmp_path: Path) -> None:
    """The issue's scenario: five files, a SQLite database at user_version 3: imported, adopted at 3, upgraded to 5."""
    folder = write_sql(tmp_path / "sql", FIVE)
    database = tmp_path / "legacy.db"
    legacy = sqlite3.connect(database)  # the legacy runner: files 1 to 3 applied, PRAGMA user_version = 3
    for source in find_sql_files(folder)[:3]:
        legacy.executescript(source.up.read_text())
    legacy.execute("PRAGMA user_version = 3")
    legacy.commit()
    legacy.close()
    project = empty_project(tmp_path / "project", f"sqlite:///{database}")
    assert project.cli("import-sql", str(folder), "--into", "versions_prod").exit_code == 0
    adopted = project.cli("adopt", "--revision", "auto")
    assert adopted.exit_code == 0, adopted.output
    assert query(f"sqlite:///{database}", "SELECT version_num FROM alembic_version") == [("v003",)]
    upgraded = project.cli("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.startswith("main: upgraded v003 -> v005 (2 steps, run ")
    url = f"sqlite:///{database}"
    assert query(url, "SELECT command, status, heads_before, heads_after FROM orchestrator_runs ORDER BY started_at") == [
        ("adopt", "succeeded", "", "v003"), ("upgrade", "succeeded", "v003", "v005")]
    assert query(url, "SELECT revision, direction FROM orchestrator_steps ORDER BY started_at, seq") == [
        ("v003", "stamp"), ("v004", "up"), ("v005", "up")]
    assert query(url, "SELECT name, email FROM users ORDER BY id") == [("ada", "ada@example.org"), ("bob", None)]
