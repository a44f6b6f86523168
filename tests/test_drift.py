"""Drift on every dialect: `check` (models vs database), `diff` (database vs database), and env_drift for reports."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from conftest import REPO, Project, make_project
from orchestrator.drift import Schema, compare_schemas, env_drift, reflect_schema
from orchestrator.registry import ENV_SELECT_VAR
from orchestrator.testing.databases import DatabaseUnavailable, server_for

MODELS = "examples.ican.models:Base.metadata"
UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=3"


@pytest.fixture(autouse=True)
def _no_outside_selection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_SELECT_VAR, raising=False)
    forget_models()
    yield
    forget_models()


def forget_models() -> None:
    """Drop the demo models from sys.modules: each project imports its own copy (other tests edit theirs)."""
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        del sys.modules[name]


def drift_project(root: Path, urls: dict[str, str], protected: tuple[str, ...] = (), **project: object) -> Project:
    """A project whose environments see versions_prod, with the demo models as target_metadata."""
    built = make_project(root, urls, protected=protected, project={"target_metadata": MODELS, **project})
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return built


@pytest.fixture
def pair(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """staging and prod on fresh databases of the test's dialect, both upgraded to the prod head."""
    project = drift_project(tmp_path / "project", {"staging": db_factory(), "prod": db_factory()},
                            exclude_tables=["django_session"])
    for env in ("staging", "prod"):
        assert project.cli("-q", "upgrade", "--env", env).exit_code == 0
    return project


def alter(url: str, change: Callable[[Operations], None]) -> None:
    """Change a database by hand, through Alembic's operations (batch mode where SQLite needs it)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            change(Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()


def add_archived_at(op: Operations) -> None:
    op.add_column("messages", sa.Column("archived_at", sa.DateTime(), nullable=True))


def test_a_column_added_by_hand_in_staging_is_named_by_diff_and_check(pair: Project) -> None:
    alter(pair.urls["staging"], add_archived_at)
    diff = pair.cli("diff", "staging", "prod")
    assert (diff.exit_code, diff.stdout, diff.stderr) == (
        5, "column messages.archived_at is in staging, not in prod\nstaging and prod: 1 difference\n", "")
    check = pair.cli("check", "--env", "staging")
    assert (check.exit_code, check.stderr) == (5, "")
    assert check.stdout == ("staging: column messages.archived_at is in the database, not in the models\n"
                            f"staging: 1 difference between the database and the models ({MODELS})\n")
    clean = pair.cli("check", "--env", "prod")
    assert (clean.exit_code, clean.stdout) == (0, f"prod: no drift: the database matches the models ({MODELS})\n")


def test_json_still_lists_the_differences_on_exit_5(pair: Project) -> None:
    alter(pair.urls["staging"], add_archived_at)
    column = {"kind": "column", "object": "messages.archived_at"}
    diff = pair.cli("--json", "diff", "staging", "prod")
    assert diff.exit_code == 5
    data = json.loads(diff.stdout)
    assert data["differences"] == [{**column, "detail": "column messages.archived_at is in staging, not in prod"}]
    assert data["notes"] == [] and data["types"] == "exact" and data["env_a"] == "staging"
    check = pair.cli("--json", "check", "--env", "staging")
    assert check.exit_code == 5
    assert json.loads(check.stdout) == {
        "env": "staging", "target_metadata": MODELS, "state": "drifted",
        "differences": [{**column, "detail": "column messages.archived_at is in the database, not in the models"}]}


def test_clean_environments_exit_0_and_own_and_excluded_tables_are_ignored(pair: Project) -> None:
    alter(pair.urls["staging"], lambda op: op.create_table("django_session", sa.Column("k", sa.String(40), primary_key=True)))
    diff = pair.cli("diff", "staging", "prod")
    assert (diff.exit_code, diff.stdout) == (0, "staging and prod: no differences\n")
    for env in ("staging", "prod"):
        check = pair.cli("check", "--env", env)
        assert (check.exit_code, check.stdout) == (0, f"{env}: no drift: the database matches the models ({MODELS})\n")


def drift_by_hand(op: Operations) -> None:
    """Drop a column, make one NOT NULL, add an index and a foreign key."""
    with op.batch_alter_table("career_reports") as batch:
        batch.drop_column("body")
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(), nullable=False)
        batch.create_foreign_key("fk_sessions_user_id_user_profiles", "user_profiles", ["user_id"], ["user_id"])
    op.create_index("ix_messages_role", "messages", ["role"])


def test_dropped_column_nullability_index_and_foreign_key_are_each_named(pair: Project) -> None:
    alter(pair.urls["staging"], drift_by_hand)
    diff = pair.cli("diff", "staging", "prod")
    assert diff.exit_code == 5, diff.output
    assert diff.stdout.splitlines() == [
        "column career_reports.body is in prod, not in staging",
        "index ix_messages_role on messages (role) is in staging, not in prod",
        "column sessions.updated_at is NOT NULL in staging, nullable in prod",
        "foreign key sessions (user_id) -> user_profiles (user_id) is in staging, not in prod",
        "staging and prod: 4 differences",
    ]
    check = pair.cli("check", "--env", "staging")
    assert check.exit_code == 5, check.output
    assert check.stdout.splitlines() == [
        "staging: column career_reports.body is in the models, not in the database",
        "staging: index ix_messages_role on messages (role) is in the database, not in the models",
        "staging: column sessions.updated_at is NOT NULL in the database, nullable in the models",
        "staging: foreign key sessions (user_id) -> user_profiles (user_id) is in the database, not in the models",
        f"staging: 4 differences between the database and the models ({MODELS})",
    ]


def test_a_changed_type_and_a_unique_key_are_named(pair: Project, orchestrator_dialect: str) -> None:
    def change(op: Operations) -> None:
        with op.batch_alter_table("messages") as batch:
            batch.alter_column("role", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False)
            batch.create_unique_constraint("uq_messages_role", ["role"])

    alter(pair.urls["staging"], change)
    diff = pair.cli("diff", "staging", "prod")
    assert diff.exit_code == 5, diff.output
    assert diff.stdout.splitlines() == [
        "column messages.role type differs: VARCHAR(32) in staging, VARCHAR(16) in prod",
        "unique constraint on messages (role) is in staging, not in prod",
        "staging and prod: 2 differences",
    ]


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_sqlite_against_a_server_compares_by_type_family_and_says_so(tmp_path: Path, server: str) -> None:
    try:
        other = server_for(server)
    except DatabaseUnavailable as exc:
        pytest.skip(str(exc))
    url = other.create_database()
    try:
        project = drift_project(tmp_path / "project", {"local": f"sqlite:///{tmp_path / 'local.db'}", "remote": url})
        for env in ("local", "remote"):
            assert project.cli("-q", "upgrade", "--env", env).exit_code == 0
        same = project.cli("diff", "local", "remote")
        note = (f"note: local is sqlite and remote is {server}: the comparison is approximate: types compared by "
                "family (integer, string(n), text, boolean, datetime, json, numeric(p,s), ...); server defaults are "
                "dialect text and are not compared")
        assert (same.exit_code, same.stdout) == (0, f"{note}\nlocal and remote: no differences\n")
        alter(url, lambda op: op.alter_column("messages", "role", existing_type=sa.String(16), type_=sa.Text(),
                                              existing_nullable=False))
        changed = project.cli("diff", "local", "remote")
        assert changed.exit_code == 5
        assert changed.stdout.splitlines()[0] == (
            "column messages.role type differs: string(16) (VARCHAR(16)) in local, text (TEXT) in remote")
    finally:
        other.drop_database(url)


def test_an_unreachable_environment_is_one_error_line_exit_1(tmp_path: Path) -> None:
    project = drift_project(tmp_path / "project", {"local": f"sqlite:///{tmp_path / 'local.db'}",
                                                   "gone": UNREACHABLE_PG})
    result = project.cli("diff", "local", "gone")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("error: environment 'gone': cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_check_without_models_names_the_registry_key(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"main": f"sqlite:///{tmp_path / 'main.db'}"})
    result = project.cli("check")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("error: environment 'main' has no models to compare: set project.target_metadata "
                             f"(e.g. 'myapp.models:Base.metadata') in {project.registry_path}\n")


def test_a_sqlite_file_not_created_yet_is_an_empty_database_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    project = drift_project(tmp_path / "project", {"main": f"sqlite:///{missing}"})
    result = project.cli("check")
    assert result.exit_code == 5
    assert "main: table sessions is in the models, not in the database" in result.stdout.splitlines()
    assert not missing.exists()


def test_env_drift_states_for_the_report(pair: Project, tmp_path: Path) -> None:
    assert env_drift(pair.ctx("prod")) == {"state": "clean", "differences": [], "error": None, "reason": None}
    alter(pair.urls["staging"], add_archived_at)
    drifted = env_drift(pair.ctx("staging"))
    assert drifted["state"] == "drifted" and [d["object"] for d in drifted["differences"]] == ["messages.archived_at"]
    bare = make_project(tmp_path / "bare", {"main": f"sqlite:///{tmp_path / 'bare.db'}", "gone": UNREACHABLE_PG})
    assert env_drift(bare.ctx("main"))["state"] == "no_models"
    gone = drift_project(tmp_path / "gone", {"gone": UNREACHABLE_PG})
    state = env_drift(gone.ctx("gone"))
    assert state["state"] == "unreachable" and state["error"].startswith("environment 'gone': cannot connect to ")


def test_compare_schemas_orders_differences_by_table_then_kind(pair: Project) -> None:
    alter(pair.urls["staging"], drift_by_hand)

    def snapshot(env: str) -> Schema:
        engine = pair.engine(env)
        try:
            with engine.connect() as conn:
                return reflect_schema(conn)
        finally:
            engine.dispose()

    staging, prod = snapshot("staging"), snapshot("prod")
    assert "orchestrator_runs" not in staging.tables and "alembic_version" not in staging.tables
    forward = compare_schemas(staging, prod, names=("staging", "prod"))
    backward = compare_schemas(prod, staging, names=("prod", "staging"))
    assert [(d.kind, d.object) for d in forward] == [(d.kind, d.object) for d in backward] == [
        ("column", "career_reports.body"), ("index", "messages.ix_messages_role"),
        ("nullable", "sessions.updated_at"), ("foreign_key", "sessions(user_id)")]
