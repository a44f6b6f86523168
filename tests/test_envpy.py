"""The env.py side: async drivers, running inside an event loop, stock alembic, a user's own env.py."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy.engine import make_url

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, table_names
from orchestrator import commands

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
# the test extras ship async drivers for SQLite and PostgreSQL only
async_dialects = pytest.mark.parametrize("orchestrator_dialect", sorted(ASYNC_DRIVERS), indirect=True)


def _async_project(tmp_path: Path, db_factory: Callable[[], str], dialect: str) -> Project:
    url = make_url(db_factory()).set(drivername=ASYNC_DRIVERS[dialect])
    project = make_project(tmp_path / "project", {"main": url.render_as_string(hide_password=False)})
    project.urls["sync"] = make_url(project.urls["main"]).set(drivername=dialect).render_as_string(hide_password=False)
    return project


@async_dialects
def test_async_url_upgrades_and_records(tmp_path: Path, db_factory: Callable[[], str], orchestrator_dialect: str) -> None:
    project = _async_project(tmp_path, db_factory, orchestrator_dialect)
    result = project.cli("-q", "upgrade")
    assert result.exit_code == 0, result.output
    assert query(project.urls["sync"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(project.urls["sync"], "SELECT COUNT(*) FROM orchestrator_steps WHERE status = 'succeeded'") == [(5,)]


@async_dialects
def test_async_url_from_inside_a_running_event_loop(tmp_path: Path, db_factory: Callable[[], str],
                                                    orchestrator_dialect: str) -> None:
    project = _async_project(tmp_path, db_factory, orchestrator_dialect)

    async def lifespan() -> str:
        # what an application's start-up hook does: call the sync API with a loop running
        return commands.upgrade(project.ctx("main")).status

    assert asyncio.run(lifespan()) == "succeeded"
    assert query(project.urls["sync"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]


@async_dialects
def test_failing_revision_rolls_back_with_an_async_driver(tmp_path: Path, db_factory: Callable[[], str],
                                                         orchestrator_dialect: str) -> None:
    project = _async_project(tmp_path, db_factory, orchestrator_dialect)
    project.write_revision("versions_prod", "bad000000001", PROD_HEAD,
                           'op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\nraise RuntimeError("boom")',
                           message="raises")
    result = project.cli("-q", "upgrade")
    assert result.exit_code == 1
    assert result.stderr == ("error: environment 'main': revision bad000000001 (versions_prod/bad000000001_raises.py) "
                             f"failed: boom; rolled back; the database is at {PROD_HEAD}; see `orchestrator runs --env main`\n")
    assert "half" not in table_names(project.urls["sync"])


def _alembic(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=project.root, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(project.root),
                                               # the code under test (a worktree first on the path), not only the install
                                               **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
                                               **(env or {})})


def test_stock_alembic_through_the_generated_ini_records_history(single: Project, orchestrator_dialect: str) -> None:
    written = single.cli("ini", "--env", "main", "-o", str(single.root / "alembic.ini"))
    assert written.exit_code == 0, written.output
    result = _alembic(single, "-c", "alembic.ini", "upgrade", PROD_REVISIONS[1])
    assert result.returncode == 0, result.stderr
    assert _alembic(single, "-c", "alembic.ini", "current").stdout.strip() == PROD_REVISIONS[1]
    runs = single.json("runs")["runs"]
    assert [(r["command"], r["target"], r["status"], len(r["steps"])) for r in runs] == [
        ("upgrade", PROD_REVISIONS[1], "succeeded", 2)]
    single.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'raise RuntimeError("boom")', message="raises")
    failed = _alembic(single, "-c", "alembic.ini", "upgrade", "head")
    assert failed.returncode != 0
    state = f"rolled back; the database is at {PROD_HEAD}"  # (on MySQL too: the script ran no statement before failing)
    assert failed.stdout.strip().splitlines()[-1] == (
        "FAILED: environment 'main': revision bad000000001 (versions_prod/bad000000001_raises.py) failed: boom; "
        f"{state}; see `orchestrator runs --env main`")
    assert "Traceback" not in failed.stdout + failed.stderr


def test_ini_holds_no_password_and_escapes_percent(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"main": "postgresql+psycopg://app:pa%25ss@db.example/app"},
                           project={"file_template": "%(rev)s_%(slug)s"})
    text = project.cli("ini").stdout
    assert "pa%25ss" not in text and "pa%ss" not in text and "sqlalchemy.url" not in text
    assert "file_template = %%(rev)s_%%(slug)s" in text
    assert "orchestrator.env = main" in text


USER_ENV_PY = '''
from alembic import context
from orchestrator.envpy import run_migrations

run_migrations(context)
'''


def test_users_own_env_py_gets_lock_and_history_with_alembic_env(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    urls = {"dev": db_factory(), "prod": db_factory()}
    project = make_project(tmp_path / "project", urls, project={"script_location": "migrations"})
    (project.root / "migrations").mkdir()
    (project.root / "migrations" / "env.py").write_text(USER_ENV_PY)
    (project.root / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\npath_separator = os\n"
        f"version_locations = {project.root / 'versions_prod'}\n"
        f"orchestrator.registry = {project.registry_path}\n")
    result = _alembic(project, "upgrade", "head", env={"ALEMBIC_ENV": "prod"})
    assert result.returncode == 0, result.stderr
    assert query(urls["prod"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert "alembic_version" not in table_names(urls["dev"])
    assert query(urls["prod"], "SELECT env, command, status FROM orchestrator_runs") == [("prod", "upgrade", "succeeded")]


def test_import_object_takes_each_projects_own_copy_of_the_models(tmp_path: Path) -> None:
    from orchestrator.envpy import import_object
    from orchestrator.registry import load_registry

    registries = []
    for name, table in (("one", "first_table"), ("two", "second_table")):
        root = tmp_path / name
        (root / "mymodels").mkdir(parents=True)
        (root / "versions").mkdir()
        (root / "mymodels" / "__init__.py").write_text(
            f"import sqlalchemy as sa\nmetadata = sa.MetaData()\nsa.Table({table!r}, metadata, sa.Column('id', sa.Integer))\n")
        (root / "envs").mkdir()
        (root / "envs" / "registry.yaml").write_text(
            "version: 1\nproject: {root: .., target_metadata: 'mymodels:metadata'}\n"
            f"environments: {{main: {{url: 'sqlite:///{root}/main.db', version_locations: [versions]}}}}\n")
        registries.append(load_registry(root / "envs" / "registry.yaml"))
    try:
        assert list(import_object("mymodels:metadata", registries[0]).tables) == ["first_table"]
        assert list(import_object("mymodels:metadata", registries[1]).tables) == ["second_table"]
        assert list(import_object("mymodels:metadata", registries[1]).tables) == ["second_table"]  # kept while the same
    finally:
        sys.modules.pop("mymodels", None)
