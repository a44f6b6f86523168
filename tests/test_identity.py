"""Database identity: the database, not the name a command uses, is the environment (issue 13, items 1 and 2).

The scenarios are the bypass as a user meets it: prod's database reached
through staging's URL variable (an unreviewed revision visible to staging),
by the orchestrator and by stock Alembic through the generated ini; two
environments of one registry on one database; a database from before the
identity row; and revisions that reached a database outside the orchestrator.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
import yaml

from conftest import PROD_HEAD, PROD_REVISIONS, Project, database_snapshot, make_project, query

NEW = "a1b2c3d4e5f6"  # an unreviewed revision on top of the demo's prod head, visible to staging and prod
REASON = "hotfix applied through staging's name"


@pytest.fixture
def shared(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """staging and a protected prod promoted from it, their URLs from $STAGING_DATABASE_URL / $PROD_DATABASE_URL.

    ``project.urls`` holds three fresh databases: 'prod', 'staging' and 'spare'.
    """
    urls = {"staging": db_factory(), "prod": db_factory()}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))
    data = yaml.safe_load(project.registry_path.read_text())
    for name in ("staging", "prod"):
        data["environments"][name]["url"] = f"${{{name.upper()}_DATABASE_URL}}"
    project.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    project.urls["spare"] = db_factory()
    project.environ = {"STAGING_DATABASE_URL": urls["staging"], "PROD_DATABASE_URL": urls["prod"]}
    return project


# ---------------------------------------------------------------------------------------------- helpers


def ok(project: Project, *args: str, env: dict[str, str] | None = None) -> Any:
    result = project.cli("-q", *args, env=env)
    assert result.exit_code == 0, (args, result.output)
    return result


def misrouted(project: Project) -> dict[str, str]:
    """The second invocation's variables: staging's URL is prod's database, prod's points elsewhere."""
    return {"STAGING_DATABASE_URL": project.urls["prod"], "PROD_DATABASE_URL": project.urls["spare"]}


def shown(project: Project, revision: str) -> str:
    found = [p for folder in ("versions_prod", "versions_test") for p in (project.root / folder).glob(f"{revision}_*.py")]
    assert len(found) == 1, found
    return str(found[0].relative_to(project.root))


def add_new_revision(project: Project) -> Path:
    return project.write_revision("versions_prod", NEW, PROD_HEAD,
                                  'op.add_column("sessions", sa.Column("note", sa.String(20), nullable=True))',
                                  'op.drop_column("sessions", "note")', message="add note")


def not_reviewed(project: Project, revision: str) -> str:
    return (f"revision {revision} ({shown(project, revision)}) is not reviewed; "
            f"run `orchestrator review approve {revision} --reviewer NAME`")


FOREIGN = ("this database belongs to environment 'prod' (protected); check $STAGING_DATABASE_URL "
           "(the url of 'staging'), or pass --force --reason TEXT to run under 'staging' anyway")


def identity(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT id, env, protected, project, heads FROM orchestrator_identity")


def runs_rows(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT env, command, status, forced_reason FROM orchestrator_runs ORDER BY started_at")


def without_runs(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A database snapshot without the run rows (a refusal adds exactly one)."""
    return {k: v for k, v in snapshot.items() if k != "orchestrator_runs"}


def prod_at_head(project: Project) -> None:
    ok(project, "upgrade", "--env", "staging")
    ok(project, "upgrade", "--env", "prod")
    assert identity(project.urls["prod"]) == [(1, "prod", True, "", "")]


# ---------------------------------------------------------------------------------------------- the bypass


def test_prods_database_under_stagings_name_is_refused_then_forced_and_shown(shared: Project) -> None:
    prod_at_head(shared)
    add_new_revision(shared)
    before = database_snapshot(shared.urls["prod"])

    refused = shared.cli("upgrade", "--env", "staging", env=misrouted(shared))
    assert refused.exit_code == 3, refused.output
    assert refused.stderr == (f"error: staging: refused for 2 reasons:\n  - {FOREIGN}\n"
                              f"  - {not_reviewed(shared, NEW)}\n")
    after = database_snapshot(shared.urls["prod"])
    assert without_runs(after) == without_runs(before)  # no new table, version table unchanged, identity unchanged
    assert "note" not in str(after["schema"]["sessions"])
    assert runs_rows(shared.urls["prod"])[-1] == ("staging", "upgrade", "blocked", None)

    # --force --reason overrides the name, not the protection the database carries
    forced_unreviewed = shared.cli("upgrade", "--env", "staging", "--force", "--reason", REASON, env=misrouted(shared))
    assert forced_unreviewed.exit_code == 3
    assert forced_unreviewed.stderr == f"error: staging: refused: {not_reviewed(shared, NEW)}\n"
    assert without_runs(database_snapshot(shared.urls["prod"])) == without_runs(before)

    ok(shared, "review", "approve", NEW, "--reviewer", "carol")
    forced = shared.cli("upgrade", "--env", "staging", "--force", "--reason", REASON, env=misrouted(shared))
    assert forced.exit_code == 0, forced.output
    assert query(shared.urls["prod"], "SELECT version_num FROM alembic_version") == [(NEW,)]
    assert runs_rows(shared.urls["prod"])[-1] == ("staging", "upgrade", "succeeded", REASON)
    assert identity(shared.urls["prod"]) == [(1, "prod", True, "", "")]  # the owner stays prod

    # back to the right variables: prod's history shows the forced run under 'staging'
    history = shared.json("runs", "--env", "prod")["runs"]
    newest = history[0]
    assert (newest["env"], newest["foreign"], newest["status"], newest["forced_reason"]) == (
        "staging", True, "succeeded", REASON)
    assert [s["revision"] for s in newest["steps"]] == [NEW]
    assert [(r["env"], r["foreign"], r["status"]) for r in history[1:4]] == [
        ("staging", True, "blocked"), ("staging", True, "blocked"), ("prod", False, "succeeded")]
    text = shared.cli("runs", "--env", "prod").stdout
    assert "│ succeeded (forced) (recorded as " in text and "│ blocked (recorded as 'staging') " in text

    status = next(r for r in shared.json("status") if r["env"] == "prod")
    assert (status["last_run"]["env"], status["last_run"]["foreign"]) == ("staging", True)

    verify = shared.cli("verify", "--env", "prod")
    assert verify.exit_code == 5
    when = newest["started_at"][:19].replace("T", " ")
    assert verify.stdout == (
        f"environment 'prod': 3 runs recorded in its database under environment 'staging' (newest: run "
        f"{newest['run_id'][:12]}, upgrade succeeded, forced, {when} UTC); another environment's name reached this "
        f"database: see `orchestrator runs --env prod`\n")

    report = json.loads(shared.cli("report", "--format", "json", "--env", "prod").stdout)
    detail = report["details"][0]
    notable = {r["run_id"]: r for r in detail["notable_runs"]}
    run = notable[newest["run_id"]]
    assert (run["env"], run["foreign"], run["forced"], run["status"], run["reason"]) == (
        "staging", True, True, "succeeded", REASON)
    applied = {a["revision"]: a for a in detail["applied"]}
    assert (applied[NEW]["recorded_env"], applied[NEW]["run_id"]) == ("staging", newest["run_id"])
    assert applied[PROD_HEAD]["recorded_env"] is None
    assert detail["run_count"] == 4
    text_report = shared.cli("report", "--env", "prod").stdout
    assert f"(run {newest['run_id'][:12]}) (recorded as 'staging')" in text_report


def test_stock_alembic_under_an_unprotected_name_is_gated_on_prods_database(shared: Project) -> None:
    prod_at_head(shared)
    add_new_revision(shared)
    ok(shared, "ini", "--env", "staging", "-o", str(shared.root / "staging.ini"), env=misrouted(shared))
    before = database_snapshot(shared.urls["prod"])
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"} | misrouted(shared)

    result = subprocess.run([sys.executable, "-m", "alembic", "-c", "staging.ini", "upgrade", "heads"], cwd=shared.root,
                            capture_output=True, text=True, env=environ, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    lines = output.splitlines()
    assert "FAILED: staging: refused for 2 reasons:" in lines
    assert f"  - {FOREIGN}" in lines
    assert f"  - {not_reviewed(shared, NEW)}" in lines  # gated as protected: the protection travels
    assert "Traceback" not in output
    assert without_runs(database_snapshot(shared.urls["prod"])) == without_runs(before)
    assert runs_rows(shared.urls["prod"])[-1] == ("staging", "upgrade", "blocked", None)


def test_an_unprotected_name_on_a_protected_owner_is_gated_even_when_the_names_match(
        tmp_path: Path, db_factory: Callable[[], str]) -> None:
    """A registry where prod is unprotected (an old checkout) still meets the gate on a database prod owns protected."""
    url = db_factory()
    strict = make_project(tmp_path / "project", {"prod": url}, protected=("prod",))
    ok(strict, "upgrade", "--env", "prod")
    add_new_revision(strict)
    data = yaml.safe_load(strict.registry_path.read_text())
    data["environments"]["prod"].pop("protected")
    strict.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    refused = strict.cli("upgrade", "--env", "prod")
    assert refused.exit_code == 3
    assert refused.stderr == f"error: prod: refused: {not_reviewed(strict, NEW)}\n"
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]


def test_another_project_under_the_same_name_is_refused(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    url = db_factory()
    first = make_project(tmp_path / "one", {"main": url}, project={"id": "one"})
    ok(first, "upgrade", "--env", "main", PROD_REVISIONS[0])
    # a checkout without project.id (in a folder of any name) is told apart by the environment name alone
    anywhere = make_project(tmp_path / "elsewhere", {"main": url})
    ok(anywhere, "upgrade", "--env", "main", PROD_REVISIONS[1])
    other = make_project(tmp_path / "two", {"main": url}, project={"id": "billing"})
    result = other.cli("upgrade", "--env", "main")
    assert result.exit_code == 3
    assert result.stderr == (
        f"error: main: refused: this database belongs to environment 'main' (not protected) of project 'one'; set "
        f"project.id: one in {other.registry_path} if this is the same project (it is 'billing' now), check the url "
        f"of 'main', or pass --force --reason TEXT to run under 'main' anyway\n")
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_REVISIONS[1],)]
    same = make_project(tmp_path / "three", {"main": url}, project={"id": "one"})
    ok(same, "upgrade", "--env", "main")
    assert identity(url) == [(1, "main", False, "one", "")]


# ---------------------------------------------------------------------------------------------- writing the row


def test_first_write_records_the_owner_also_when_blocked_and_for_stamp(shared: Project) -> None:
    add_new_revision(shared)  # unreviewed: prod's first run is refused, and still claims the database
    refused = shared.cli("upgrade", "--env", "prod")
    assert refused.exit_code == 3
    rows = query(shared.urls["prod"], "SELECT env, protected, project, heads, recorded_by FROM orchestrator_identity")
    assert [r[:4] for r in rows] == [("prod", True, "", "")]
    assert rows[0][4]  # operator_name()

    ok(shared, "stamp", "--env", "staging", PROD_REVISIONS[1])
    assert identity(shared.urls["staging"]) == [(1, "staging", False, "", "")]


def test_adopt_records_the_owner(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    from orchestrator.envpy import import_object
    from test_drift import MODELS, drift_project, forget_models

    forget_models()
    try:
        project = drift_project(tmp_path / "project", {"prod": db_factory()}, protected=("prod",))
        engine = project.engine("prod")
        try:
            import_object(MODELS, project.registry()).create_all(engine)
        finally:
            engine.dispose()
        result = project.cli("adopt", "--env", "prod", "--revision", "auto")
        assert result.exit_code == 0, result.output
    finally:
        forget_models()
    assert identity(project.urls["prod"]) == [(1, "prod", True, "", "")]
    assert project.cli("verify", "--env", "prod").exit_code == 0  # the adopt's stamp accounts for every revision


def test_a_database_from_before_identity_gets_its_row_on_the_next_run(shared: Project) -> None:
    prod_at_head(shared)
    engine = sa.create_engine(shared.urls["prod"], poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE orchestrator_identity")
    engine.dispose()
    result = shared.cli("upgrade", "--env", "prod")  # nothing to do, still claims the database
    assert (result.exit_code, result.stdout) == (0, "prod: nothing to do; at d0c6e2a4f853\n")
    assert identity(shared.urls["prod"]) == [(1, "prod", True, "", PROD_HEAD)]
    assert shared.cli("verify", "--env", "prod").exit_code == 0


# ---------------------------------------------------------------------------------------------- at load


def test_two_environments_on_one_database_are_a_configuration_error(shared: Project) -> None:
    same = {"STAGING_DATABASE_URL": shared.urls["prod"], "PROD_DATABASE_URL": shared.urls["prod"]}
    result = shared.cli("status", env=same)
    assert result.exit_code == 2
    from sqlalchemy.engine import make_url

    url = make_url(shared.urls["prod"])
    if url.get_backend_name() == "sqlite":
        what = f"SQLite file {os.path.realpath(url.database)}"
    else:
        what = f"{url.get_backend_name()} database '{url.database}' on {url.host.lower()}:{url.port}"
    text = shared.registry_path.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "${PROD_DATABASE_URL}" in t)
    assert result.stderr == (
        f"error: {shared.registry_path}:{line}: environments.prod.url: environments 'staging' and 'prod' both reach the "
        f"{what}; give each environment its own database: check $PROD_DATABASE_URL (the url of 'prod')\n")
    assert len(result.stderr.splitlines()) == 1


def write_registry(tmp_path: Path, environments: dict[str, Any]) -> Path:
    (tmp_path / "v1").mkdir(exist_ok=True)
    path = tmp_path / "envs" / "registry.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"version": 1, "project": {"root": ".."}, "environments": {
        name: {"version_locations": ["v1"], **env} for name, env in environments.items()}}, sort_keys=False))
    return path


@pytest.mark.parametrize(("a", "b", "clash"), [
    ("sqlite:///var/app.db", "sqlite:///var/./app.db", True),
    ("sqlite:///var/app.db", "sqlite:///LINK/app.db", True),  # LINK: a symlink to var
    ("sqlite://", "sqlite:///:memory:", False),
    ("sqlite:///:memory:", "sqlite:///:memory:", False),
    ("postgresql+psycopg://u@DB.example.com/app", "postgresql://v:pw@db.example.com:5432/app", True),
    ("postgresql://u@db.example.com/app", "postgresql://u@db.example.com:5433/app", False),
    ("postgresql://u@db.example.com/app", "postgresql://u@db.example.com/app2", False),
    ("mysql+pymysql://root@db/app", "mariadb+pymysql://root@db:3306/app", True),
])
def test_which_urls_reach_one_database(tmp_path: Path, a: str, b: str, clash: bool) -> None:
    from orchestrator.errors import RegistryError
    from orchestrator.registry import load_registry

    (tmp_path / "var").mkdir()
    (tmp_path / "LINK").symlink_to(tmp_path / "var")
    path = write_registry(tmp_path, {"a": {"url": a}, "b": {"url": b}})
    if clash:
        with pytest.raises(RegistryError, match=r"environments\.b\.url: environments 'a' and 'b' both reach the "):
            load_registry(path)
    else:
        load_registry(path)


def test_one_server_database_with_two_version_table_schemas_is_two_databases(tmp_path: Path) -> None:
    from orchestrator.registry import load_registry

    url = "postgresql://u@db.example.com/app"
    path = write_registry(tmp_path, {"a": {"url": url, "version_table_schema": "tenant_a"},
                                     "b": {"url": url, "version_table_schema": "tenant_b"}})
    assert load_registry(path).project_id == ""  # no project.id: environment names alone tell databases apart


def test_project_id_is_a_registry_key_and_unknown_keys_stay_errors(tmp_path: Path) -> None:
    from orchestrator.errors import RegistryError
    from orchestrator.registry import load_registry

    path = write_registry(tmp_path, {"a": {"url": "sqlite:///a.db"}})
    data = yaml.safe_load(path.read_text())
    data["project"]["id"] = "billing"
    path.write_text(yaml.safe_dump(data))
    assert load_registry(path).project_id == "billing"
    data["project"]["ident"] = "billing"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RegistryError, match="ident"):
        load_registry(path)


# ---------------------------------------------------------------------------------------------- applied without a record


def unrecorded(project: Project, env: str, revisions: list[str]) -> str:
    them = "it" if len(revisions) == 1 else "them"
    they = "it" if len(revisions) == 1 else "they"
    plural = "s" if len(revisions) != 1 else ""
    return (f"environment '{env}': {len(revisions)} revision{plural} applied without a record ({', '.join(revisions)}): "
            f"the version table says applied, but no succeeded upgrade step, stamp or adopt in the database's history "
            f"accounts for {them}; {they} ran outside the orchestrator (no gate, no history): find out how "
            f"(`orchestrator runs --env {env}`)\n")


def test_a_version_row_written_by_hand_is_applied_without_a_record(shared: Project) -> None:
    ok(shared, "upgrade", "--env", "staging", PROD_REVISIONS[3])
    assert shared.cli("verify", "--env", "staging").exit_code == 0
    engine = sa.create_engine(shared.urls["staging"], poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{PROD_HEAD}'")
    engine.dispose()
    result = shared.cli("verify", "--env", "staging")
    assert (result.exit_code, result.stdout) == (5, unrecorded(shared, "staging", [PROD_HEAD]))


GENERIC_ENV_PY = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                 poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''


def plain_alembic_upgrade(project: Project, env: str, target: str) -> None:
    """Upgrade an environment's database with Alembic and a team's generic env.py: nothing orchestrated or recorded."""
    from alembic import command
    from alembic.config import Config

    plain = project.root / "plain_alembic"
    plain.mkdir(exist_ok=True)
    (plain / "env.py").write_text(textwrap.dedent(GENERIC_ENV_PY))
    cfg = Config()
    cfg.set_main_option("script_location", str(plain))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(project.root / "versions_prod"))
    cfg.set_main_option("sqlalchemy.url", project.urls[env].replace("%", "%%"))
    command.upgrade(cfg, target)


def test_revisions_upgraded_by_plain_alembic_are_applied_without_a_record(shared: Project) -> None:
    ok(shared, "upgrade", "--env", "staging", PROD_REVISIONS[2])
    plain_alembic_upgrade(shared, "staging", "head")
    assert query(shared.urls["staging"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]

    result = shared.cli("verify", "--env", "staging")
    assert (result.exit_code, result.stdout) == (5, unrecorded(shared, "staging", list(PROD_REVISIONS[3:])))
    assert shared.cli("verify", "--env", "prod").exit_code == 0


def test_a_stamp_accounts_for_the_revisions_at_and_below_it(shared: Project) -> None:
    ok(shared, "stamp", "--env", "staging", PROD_REVISIONS[2])
    ok(shared, "upgrade", "--env", "staging")
    assert shared.cli("verify", "--env", "staging").exit_code == 0  # 0..2 stamped, 3..4 upgraded


def test_the_first_orchestrated_run_starts_the_history_of_a_database_migrated_before(shared: Project) -> None:
    ok(shared, "upgrade", "--env", "staging")
    plain_alembic_upgrade(shared, "prod", PROD_REVISIONS[1])
    before = shared.cli("verify", "--env", "prod")
    assert before.exit_code == 5
    assert before.stdout == (
        f"environment 'prod': 2 revisions applied without a record ({PROD_REVISIONS[0]}, {PROD_REVISIONS[1]}): the "
        f"version table says applied, but the database holds no run history; if they ran before the orchestrator was "
        f"used here, any orchestrated run (`orchestrator upgrade --env prod`) starts the history at them\n")
    ok(shared, "upgrade", "--env", "prod")
    assert shared.cli("verify", "--env", "prod").exit_code == 0
