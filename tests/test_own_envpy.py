"""A user's own env.py that does not call the helper: nothing it applies goes unrecorded (issue 13, item 5).

The project's ``script_location`` points at a folder holding Alembic's own
template files, copied unmodified from the installed package: the generic
template opens its own engine from ``sqlalchemy.url`` and configures Alembic
on that connection, so the orchestrator's recorder never sees a step. On a
protected environment the orchestrator refuses before any step runs (exit 3,
a blocked run); elsewhere the run fails naming env.py and every revision it
applied unrecorded (exit 1, a failed run): never "0 steps" with exit 0.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import alembic
import pytest
from sqlalchemy.engine import make_url

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, table_names
from orchestrator.recorder import HISTORY_TABLES

TEMPLATES = Path(alembic.__file__).resolve().parent / "templates"
HISTORY = set(HISTORY_TABLES)
ENV_PY = "migrations/env.py"
REFUSAL = (f"env.py at {ENV_PY} configures its own connection, so the orchestrator cannot gate and record its steps; "
           "call orchestrator.envpy.run_migrations() from it (see README) or use the packaged env.py")
REMEDY = "call orchestrator.envpy.run_migrations() from env.py so they are recorded"
ALL_PROD = ", ".join(PROD_REVISIONS)
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
async_dialects = pytest.mark.parametrize("orchestrator_dialect", sorted(ASYNC_DRIVERS), indirect=True)


def own_env_py_project(tmp_path: Path, db_factory: Callable[[], str], template: str = "generic",
                       driver: str | None = None) -> Project:
    """dev and a protected prod (every demo revision approved) whose env.py is Alembic's ``template``, unmodified."""
    urls = {name: db_factory() for name in ("dev", "prod")}
    if driver:
        urls = {name: make_url(url).set(drivername=driver).render_as_string(hide_password=False)
                for name, url in urls.items()}
    project = make_project(tmp_path / "project", urls, protected=("prod",),
                           folders={"dev": ["versions_prod"], "prod": ["versions_prod"]},
                           project={"script_location": "migrations"})
    (project.root / "migrations").mkdir()
    for name in ("env.py", "script.py.mako"):
        shutil.copyfile(TEMPLATES / template / name, project.root / "migrations" / name)
    assert (project.root / ENV_PY).read_bytes() == (TEMPLATES / template / "env.py").read_bytes()
    return project


def sync_url(project: Project, env: str) -> str:
    """Return the environment's URL with a synchronous driver (the dialect's default for an async one)."""
    url = make_url(project.urls[env])
    if url.drivername not in ASYNC_DRIVERS.values():
        return project.urls[env]
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)


def runs(project: Project, env: str) -> list[tuple[str, str, str | None, str | None]]:
    return query(sync_url(project, env), "SELECT command, status, heads_after, error FROM orchestrator_runs")


def step_count(project: Project, env: str) -> int:
    return query(sync_url(project, env), "SELECT COUNT(*) FROM orchestrator_steps")[0][0]


def versions(project: Project, env: str) -> list[str]:
    url = sync_url(project, env)
    if "alembic_version" not in table_names(url):
        return []
    return sorted(r[0] for r in query(url, "SELECT version_num FROM alembic_version"))


def test_generic_template_is_refused_on_a_protected_env_before_any_ddl(tmp_path: Path,
                                                                      db_factory: Callable[[], str]) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    result = project.cli("upgrade", "--env", "prod")
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: prod: refused: {REFUSAL}\n"
    assert table_names(sync_url(project, "prod")) == HISTORY  # no version table, no table of any revision
    assert versions(project, "prod") == []
    assert runs(project, "prod") == [("upgrade", "blocked", "", REFUSAL)]
    assert step_count(project, "prod") == 0


def test_generic_template_elsewhere_fails_naming_every_revision_it_applied(tmp_path: Path,
                                                                          db_factory: Callable[[], str]) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    result = project.cli("upgrade", "--env", "dev")
    message = (f"environment 'dev': env.py at {ENV_PY} applied 5 revisions ({ALL_PROD}) on its own connection, "
               f"unrecorded; {REMEDY}")
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {message}\n"
    assert "0 steps" not in result.output
    assert versions(project, "dev") == [PROD_HEAD]  # they did run: the history says so
    assert runs(project, "dev") == [("upgrade", "failed", PROD_HEAD, message)]
    assert step_count(project, "dev") == 0


def test_generic_template_failing_after_unrecorded_revisions_names_them(tmp_path: Path, db_factory: Callable[[], str],
                                                                       orchestrator_dialect: str) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    project.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'raise RuntimeError("boom")', message="raises")
    result = project.cli("upgrade", "--env", "dev")
    assert result.exit_code == 1, result.output
    if orchestrator_dialect == "postgresql":
        # the template runs every revision in one transaction there: the failure rolled them all back
        message = "environment 'dev': migration run failed before any revision ran: boom; the database is at base"
        heads: list[str] = []
        recorded = "boom"
    else:
        message = (f"environment 'dev': env.py at {ENV_PY} applied 5 revisions ({ALL_PROD}) on its own connection, "
                   f"unrecorded, then failed: boom; {REMEDY}")
        heads = [PROD_HEAD]
        recorded = message
    assert result.stderr == f"error: {message}\n"
    assert versions(project, "dev") == heads
    assert runs(project, "dev") == [("upgrade", "failed", " ".join(heads), recorded)]


SHARED_CONNECTION_ENV_PY = '''
from alembic import context

# Alembic's cookbook "sharing a connection": the caller's connection, but not the orchestrator's helper
context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
'''


def test_shared_connection_without_the_helper_is_refused_or_fails(tmp_path: Path,
                                                                  db_factory: Callable[[], str]) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    (project.root / ENV_PY).write_text(SHARED_CONNECTION_ENV_PY)
    refused = project.cli("upgrade", "--env", "prod")
    reason = (f"env.py at {ENV_PY} configures Alembic without the orchestrator's recorder, so the orchestrator "
              "cannot gate and record its steps; call orchestrator.envpy.run_migrations() from it (see README) "
              "or use the packaged env.py")
    assert refused.exit_code == 3, refused.output
    assert refused.stderr == f"error: prod: refused: {reason}\n"
    assert table_names(sync_url(project, "prod")) == HISTORY
    assert runs(project, "prod") == [("upgrade", "blocked", "", reason)]

    failed = project.cli("upgrade", "--env", "dev")
    message = (f"environment 'dev': env.py at {ENV_PY} applied 5 revisions ({ALL_PROD}) on the orchestrator's "
               f"connection but without its recorder, unrecorded; {REMEDY}")
    assert failed.exit_code == 1, failed.output
    assert failed.stderr == f"error: {message}\n"
    assert runs(project, "dev") == [("upgrade", "failed", PROD_HEAD, message)]


def test_env_py_migrating_another_database_is_not_a_silent_success(tmp_path: Path,
                                                                   db_factory: Callable[[], str]) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    elsewhere = db_factory()
    template = (project.root / ENV_PY).read_text()
    # a hard-coded URL: the template's engine then opens a connection to another database
    (project.root / ENV_PY).write_text(template.replace(
        "config = context.config\n", f"config = context.config\nconfig.set_main_option('sqlalchemy.url', {elsewhere[:]!r})\n"))
    result = project.cli("upgrade", "--env", "dev")
    message = (f"environment 'dev': env.py at {ENV_PY} ran Alembic on its own connection and left this database's "
               "version table at base, so nothing was applied here or recorded; call orchestrator.envpy.run_migrations() "
               "from env.py so the orchestrator applies and records the steps")
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {message}\n"
    assert runs(project, "dev") == [("upgrade", "failed", "", message)]


HELPER_ENV_PY = '''
from alembic import context
from orchestrator.envpy import run_migrations

run_migrations(context)
'''


def test_env_py_calling_the_helper_runs_and_records_on_a_protected_env(tmp_path: Path,
                                                                      db_factory: Callable[[], str]) -> None:
    project = own_env_py_project(tmp_path, db_factory)
    (project.root / ENV_PY).write_text(HELPER_ENV_PY)
    result = project.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 0, result.output
    assert versions(project, "prod") == [PROD_HEAD]
    assert runs(project, "prod") == [("upgrade", "succeeded", PROD_HEAD, None)]
    assert step_count(project, "prod") == 5


@async_dialects
@pytest.mark.filterwarnings("error::RuntimeWarning")  # the refused coroutine is closed, never left unawaited
def test_async_template_is_refused_on_a_protected_env_and_fails_elsewhere(tmp_path: Path, db_factory: Callable[[], str],
                                                                         orchestrator_dialect: str) -> None:
    project = own_env_py_project(tmp_path, db_factory, "async", ASYNC_DRIVERS[orchestrator_dialect])
    refused = project.cli("upgrade", "--env", "prod")
    reason = (f"env.py at {ENV_PY} runs its own event loop and connection (asyncio.run()), so the orchestrator "
              "cannot gate and record its steps; call orchestrator.envpy.run_migrations() from it "
              "(see README; it runs async URLs itself) or use the packaged env.py")
    assert refused.exit_code == 3, refused.output
    assert refused.stderr == f"error: prod: refused: {reason}\n"
    assert table_names(sync_url(project, "prod")) == HISTORY
    assert runs(project, "prod") == [("upgrade", "blocked", "", reason)]

    failed = project.cli("upgrade", "--env", "dev")
    message = (f"environment 'dev': env.py at {ENV_PY} calls asyncio.run() inside the orchestrator's event loop "
               "(an async URL), so no revision ran; call orchestrator.envpy.run_migrations() from env.py "
               "(it runs async URLs itself)")
    assert failed.exit_code == 1, failed.output
    assert failed.stderr == f"error: {message}\n"
    assert versions(project, "dev") == []
    assert runs(project, "dev") == [("upgrade", "failed", "", message)]
