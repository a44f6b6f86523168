"""`adopt` on every dialect: stamp a version-less database only when its schema is exactly a revision's."""
from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, schema_snapshot, table_names
from orchestrator import adopt as adopting
from orchestrator.envpy import import_object
from orchestrator.registry import ENV_SELECT_VAR
from test_drift import MODELS, drift_project, forget_models

DEMO_TABLES = {"sessions", "messages", "user_profiles", "career_reports"}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No outside environment selection; scratch SQLite files go to a folder of this test's own."""
    monkeypatch.delenv(ENV_SELECT_VAR, raising=False)
    forget_models()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    forget_models()
    assert list(scratch.iterdir()) == [], "adopt left a scratch SQLite folder behind"


@pytest.fixture
def legacy(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """prod (protected, seeing versions_prod) on a database built by create_all from the demo models."""
    project = drift_project(tmp_path / "project", {"prod": db_factory()}, protected=("prod",))
    engine = project.engine("prod")
    try:
        import_object(MODELS, project.registry()).create_all(engine)
    finally:
        engine.dispose()
    return project


def databases(url: str) -> set[str]:
    """Return the databases on the server behind ``url``."""
    dialect = sa.engine.make_url(url).get_backend_name()
    sql = "SELECT datname FROM pg_database" if dialect == "postgresql" else "SHOW DATABASES"
    return {row[0] for row in query(url, sql)}


def assert_scratch_dropped(project: Project, data: dict[str, object]) -> None:
    """The scratch database adopt reports is gone (SQLite: the autouse fixture checks the temporary folder)."""
    url = project.urls["prod"]
    if url.startswith("sqlite"):
        assert data["scratch_database"] == "a temporary SQLite file"
        return
    name = str(data["scratch_database"])
    assert name.startswith("orch_adopt_") and name not in databases(url)


def test_auto_stamps_the_head_of_a_database_built_from_the_models(legacy: Project) -> None:
    result = legacy.cli("--json", "adopt", "--env", "prod", "--revision", "auto")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["status"], data["revision"], data["chosen_by"], data["differences"]) == (
        "adopted", PROD_HEAD, "auto", [])
    assert data["checked"] == [{"revision": PROD_HEAD, "differences": 0}]
    assert data["run"]["command"] == "adopt" and data["run"]["heads_after"] == [PROD_HEAD]
    assert_scratch_dropped(legacy, data)
    url = legacy.urls["prod"]
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(url, "SELECT env, command, target, heads_before, heads_after, status FROM orchestrator_runs") == [
        ("prod", "adopt", PROD_HEAD, "", PROD_HEAD, "succeeded")]
    assert query(url, "SELECT seq, revision, direction, status FROM orchestrator_steps") == [
        (1, PROD_HEAD, "stamp", "succeeded")]
    assert legacy.cli("check", "--env", "prod").exit_code == 0
    assert legacy.json("plan", "--env", "prod")["steps"] == []


def test_text_output_says_which_revision_was_adopted(legacy: Project) -> None:
    result = legacy.cli("adopt", "--env", "prod", "--revision", "auto")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"prod: adopted at {PROD_HEAD} (the newest revision whose schema matches): "
                                    "the database has exactly its schema; stamped (run ")


def test_a_column_dropped_by_hand_is_named_and_nothing_is_written(legacy: Project) -> None:
    def drop(op: Operations) -> None:
        with op.batch_alter_table("career_reports") as batch:
            batch.drop_column("body")

    engine = legacy.engine("prod")
    with engine.begin() as conn:
        drop(Operations(MigrationContext.configure(conn)))
    engine.dispose()
    before = schema_snapshot(legacy.urls["prod"])
    result = legacy.cli("adopt", "--env", "prod", "--revision", "auto")
    assert (result.exit_code, result.stderr) == (5, ""), result.output
    assert result.stdout == (
        f"prod: column career_reports.body is in revision {PROD_HEAD}, not in the database\n"
        f"prod: not adopted: the database differs from revision {PROD_HEAD} (the closest of the revisions tried) "
        "in 1 place; nothing written\n")
    assert schema_snapshot(legacy.urls["prod"]) == before
    assert table_names(legacy.urls["prod"]) == DEMO_TABLES


def test_an_explicit_revision_that_does_not_match_lists_the_differences(legacy: Project) -> None:
    before = schema_snapshot(legacy.urls["prod"])
    result = legacy.cli("--json", "adopt", "--env", "prod", "--revision", PROD_REVISIONS[3])
    assert result.exit_code == 5, result.output
    data = json.loads(result.stdout)
    assert (data["status"], data["revision"], data["chosen_by"], data["run"]) == (
        "differences", PROD_REVISIONS[3], "given", None)
    assert data["differences"] == [{"kind": "table", "object": "career_reports",
                                    "detail": f"table career_reports is in the database, not in revision {PROD_REVISIONS[3]}"}]
    assert_scratch_dropped(legacy, data)
    assert schema_snapshot(legacy.urls["prod"]) == before
    assert table_names(legacy.urls["prod"]) == DEMO_TABLES  # no version table, no history tables


def test_an_explicit_matching_revision_is_stamped(legacy: Project) -> None:
    result = legacy.cli("adopt", "--env", "prod", "--revision", PROD_HEAD)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"prod: adopted at {PROD_HEAD}: the database has exactly its schema; stamped (run ")


def test_refused_when_the_database_already_has_a_version(single: Project) -> None:
    assert single.cli("-q", "upgrade").exit_code == 0
    before = schema_snapshot(single.urls["main"])
    result = single.cli("adopt", "--revision", "auto")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: environment 'main': the database already has a version table (alembic_version) at {PROD_HEAD}; "
        "adopt is only for databases without one: use `orchestrator upgrade --env main` to move it, "
        "or `orchestrator stamp` to correct it\n")
    assert schema_snapshot(single.urls["main"]) == before


def test_refused_when_the_database_is_empty(single: Project) -> None:
    result = single.cli("adopt", "--revision", "auto")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: environment 'main': the database has no tables, so there is nothing to adopt; "
                             "use `orchestrator upgrade --env main` to build it\n")
    assert table_names(single.urls["main"]) == set()


def test_an_unknown_revision_is_a_usage_error(legacy: Project) -> None:
    result = legacy.cli("adopt", "--env", "prod", "--revision", "nosuchrev")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: environment 'prod': unknown revision 'nosuchrev'; "
                             "see `orchestrator history --env prod` for the revisions it sees\n")
    assert table_names(legacy.urls["prod"]) == DEMO_TABLES


def test_base_is_not_a_revision_to_adopt(legacy: Project) -> None:
    result = legacy.cli("adopt", "--env", "prod", "--revision", "base")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "error: environment 'prod': 'base' names no single revision; pass one revision id, or auto\n"


# ---------------------------------------------------------------------------- SQLite PRAGMA user_version


def imported_project(root: Path, url: str) -> Project:
    """One environment whose revisions were imported from SQL files 1..5, each creating table tN."""
    project = make_project(root, {"legacy": url}, copy_demo=False)
    down = None
    for n in range(1, 6):
        rev = f"sql{n:09d}"
        project.write_revision("versions_prod", rev, down, f'op.execute("CREATE TABLE t{n} (id INTEGER PRIMARY KEY)")',
                               f'op.execute("DROP TABLE t{n}")', message=f"v{n:03d} imported",
                               extra=f"orchestrator_sql_version = {n}")
        down = rev
    return project


def legacy_sqlite(path: Path, tables: int, user_version: int) -> str:
    """Build the SQLite file the old PRAGMA user_version scheme left: tables t1..tN."""
    import sqlite3

    conn = sqlite3.connect(path)
    for n in range(1, tables + 1):
        conn.execute(f"CREATE TABLE t{n} (id INTEGER PRIMARY KEY)")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def test_sqlite_user_version_picks_the_revision_imported_from_that_file(tmp_path: Path) -> None:
    url = legacy_sqlite(tmp_path / "legacy.db", 3, 3)
    project = imported_project(tmp_path / "project", url)
    result = project.cli("adopt", "--revision", "auto")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("legacy: adopted at sql000000003 (chosen by PRAGMA user_version 3): "
                                    "the database has exactly its schema; stamped (run ")
    assert query(url, "SELECT version_num FROM alembic_version") == [("sql000000003",)]
    assert [s["revision"] for s in project.json("plan")["steps"]] == ["sql000000004", "sql000000005"]


def test_sqlite_user_version_with_the_wrong_tables_is_refused(tmp_path: Path) -> None:
    url = legacy_sqlite(tmp_path / "legacy.db", 2, 3)
    project = imported_project(tmp_path / "project", url)
    result = project.cli("adopt", "--revision", "auto")
    assert result.exit_code == 5
    assert result.stdout.splitlines() == [
        "legacy: table t3 is in revision sql000000003, not in the database",
        "legacy: not adopted: the database differs from revision sql000000003 in 1 place; nothing written"]
    assert table_names(url) == {"t1", "t2"}


def test_sqlite_user_version_without_an_imported_revision_is_a_usage_error(tmp_path: Path) -> None:
    url = legacy_sqlite(tmp_path / "legacy.db", 3, 7)
    project = imported_project(tmp_path / "project", url)
    result = project.cli("adopt", "--revision", "auto")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: environment 'legacy': the database has PRAGMA user_version 7, but no revision 'legacy' sees carries "
        "orchestrator_sql_version = 7 (imported: 1, 2, 3, 4, 5); import SQL file 7 (`orchestrator import-sql`) "
        "or pass --revision\n")


def test_sqlite_user_version_zero_walks_the_graph(tmp_path: Path) -> None:
    url = legacy_sqlite(tmp_path / "legacy.db", 4, 0)
    project = imported_project(tmp_path / "project", url)
    data = json.loads(project.cli("--json", "adopt", "--revision", "auto").stdout)
    assert (data["status"], data["revision"], data["chosen_by"]) == ("adopted", "sql000000004", "auto")
    assert data["checked"] == [{"revision": "sql000000005", "differences": 1}, {"revision": "sql000000004", "differences": 0}]


def test_the_scratch_database_is_dropped_when_building_fails(legacy: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"orch_adopt_{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(adopting, "scratch_database_name", lambda: name)
    created = []
    real = adopting.build_candidates

    def spy(ctx: object, url: sa.engine.URL, revision: str | None) -> object:
        created.append(url.database)
        if not str(url).startswith("sqlite"):
            assert name in databases(legacy.urls["prod"])
        return real(ctx, url, revision)

    monkeypatch.setattr(adopting, "build_candidates", spy)
    legacy.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'op.execute("SELECT * FROM no_such_table")',
                          message="breaks")
    # a protected environment builds only approved revisions in the scratch database
    assert legacy.cli("review", "approve", "bad000000001", "--reviewer", "alice").exit_code == 0
    result = legacy.cli("adopt", "--env", "prod", "--revision", "bad000000001")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: environment 'prod': cannot build revision bad000000001 in a scratch database: ")
    assert result.stderr.count("\n") == 1
    assert len(created) == 1
    if not legacy.urls["prod"].startswith("sqlite"):
        assert created == [name] and name not in databases(legacy.urls["prod"])
    assert table_names(legacy.urls["prod"]) == DEMO_TABLES


def test_the_scratch_database_is_dropped_on_ctrl_c(legacy: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"orch_adopt_{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(adopting, "scratch_database_name", lambda: name)

    def interrupted(ctx: object, url: sa.engine.URL, revision: str | None) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(adopting, "build_candidates", interrupted)
    result = legacy.cli("adopt", "--env", "prod", "--revision", "auto")
    assert (result.exit_code, result.stdout, result.stderr) == (130, "", "error: interrupted\n")
    if not legacy.urls["prod"].startswith("sqlite"):
        assert name not in databases(legacy.urls["prod"])
    assert table_names(legacy.urls["prod"]) == DEMO_TABLES
