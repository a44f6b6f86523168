"""Shared fixtures: scenario projects on throwaway databases of every dialect.

The throwaway databases come from the package's own pytest plugin (loaded
through its ``pytest11`` entry point): ``orchestrator_dialect`` parametrizes a
test over sqlite, postgresql and mysql, and ``db_factory`` hands out as many
fresh databases of that dialect as a test needs, all dropped afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg  # noqa: F401  (imported before pytester's in-process runs, which drop modules first imported inside them)
import pymysql  # noqa: F401
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from orchestrator.context import EnvContext, contexts
from orchestrator.registry import Registry, load_registry
from orchestrator.testing.databases import DatabaseUnavailable, server_for

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "examples"
PROD_HEAD = "d0c6e2a4f853"
PROD_REVISIONS = ("4a1e7c2b9d10", "7c3d5e9f1a22", "9e2b4d6f8a31", "b5f8a1c3e742", "d0c6e2a4f853")
TESTDATA = "e8a7b9c1d264"
CANDIDATE = "f3b9d1e5a675"


@pytest.fixture
def db_factory(orchestrator_dialect: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Return a function that creates a fresh database of the test's dialect; all are dropped afterwards."""
    try:
        server = server_for(orchestrator_dialect, tmp_path / "dbs")
    except DatabaseUnavailable as exc:
        pytest.skip(str(exc))
    (tmp_path / "dbs").mkdir(exist_ok=True)
    created: list[str] = []

    def create() -> str:
        url = server.create_database()
        created.append(url)
        return url

    yield create
    for url in created:
        server.drop_database(url)


@dataclass
class Project:
    """A scenario project on disk: a registry, version folders, and one database per environment."""

    root: Path
    urls: dict[str, str]
    registry_path: Path
    environ: dict[str, str] = field(default_factory=dict)

    def registry(self) -> Registry:
        return load_registry(self.registry_path)

    def ctx(self, env: str) -> EnvContext:
        return contexts(self.registry(), [env])[0]

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run the CLI in-process and return click's result (stdout and stderr apart)."""
        from orchestrator.cli import cli

        return CliRunner().invoke(cli, ["--registry", str(self.registry_path), *args], prog_name="orchestrator",
                                  env={**self.environ, **(env or {})}, catch_exceptions=False)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a separate process, as a user would."""
        environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
        environ.update({**self.environ, **(env or {})})
        return subprocess.run([sys.executable, "-m", "orchestrator", "--registry", str(self.registry_path), *args],
                              capture_output=True, text=True, env=environ, timeout=timeout, cwd=self.root)

    def json(self, *args: str) -> Any:
        result = self.cli("--json", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def engine(self, env: str) -> sa.Engine:
        return sa.create_engine(self.urls[env], poolclass=sa.pool.NullPool)

    def write_revision(self, folder: str, revision: str, down: str | None, upgrade: str, downgrade: str = "pass",
                       message: str = "a revision", extra: str = "") -> Path:
        """Write a revision script into one of the project's folders."""
        path = self.root / folder / f"{revision}_{message.replace(' ', '_')[:20]}.py"
        path.write_text(revision_source(revision, down, upgrade, downgrade, message, extra))
        return path


def revision_source(revision: str, down: str | None, upgrade: str, downgrade: str = "pass",
                    message: str = "a revision", extra: str = "") -> str:
    """Return the text of a small revision script."""
    return (
        f'"""{message}"""\n'
        "from alembic import op\nimport sqlalchemy as sa\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n{extra}\n\n"
        "def upgrade():\n" + textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ") + "\n\n\n"
        "def downgrade():\n" + textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ") + "\n"
    )


def make_project(root: Path, urls: dict[str, str], *, folders: dict[str, list[str]] | None = None,
                 promote_from: dict[str, str] | None = None, protected: tuple[str, ...] = (),
                 copy_demo: bool = True, project: dict[str, Any] | None = None) -> Project:
    """Write a project under ``root``: the demo's folders (copied) and a registry over ``urls``."""
    root.mkdir(parents=True, exist_ok=True)
    urls = {name: url[:] for name, url in urls.items()}  # plain str (the plugin's DatabaseURL masks its repr)
    for name in ("versions_prod", "versions_test"):
        target = root / name
        if copy_demo:
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(exist_ok=True)
    default_folders = {"dev": ["versions_prod", "versions_test"], "test": ["versions_prod", "versions_test"]}
    environments = {}
    for name, url in urls.items():
        env: dict[str, Any] = {"url": url, "version_locations": (folders or {}).get(name) or default_folders.get(name, ["versions_prod"])}
        if promote_from and name in promote_from:
            env["promote_from"] = promote_from[name]
        if name in protected:
            env["protected"] = True
        environments[name] = env
    data = {"version": 1, "project": {"root": "..", "reviews": "envs/reviews.yaml", **(project or {})},
            "default_env": next(iter(urls)),
            "environments": environments}
    (root / "envs").mkdir(exist_ok=True)
    if copy_demo:
        shutil.copy(REPO / "envs" / "reviews.yaml", root / "envs" / "reviews.yaml")
    registry_path = root / "envs" / "registry.yaml"
    registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Project(root=root, urls=urls, registry_path=registry_path)


@pytest.fixture
def demo(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """The demo project's four environments, each on its own fresh database of the test's dialect."""
    urls = {name: db_factory() for name in ("dev", "test", "staging", "prod")}
    return make_project(tmp_path / "project", urls,
                        promote_from={"test": "dev", "staging": "test", "prod": "staging"}, protected=("prod",))


@pytest.fixture
def single(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """One environment 'main' seeing versions_prod, on a fresh database of the test's dialect."""
    return make_project(tmp_path / "project", {"main": db_factory()})


def table_names(url: str) -> set[str]:
    """Return the tables in a database."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one query and return its rows."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def schema_snapshot(url: str) -> dict[str, Any]:
    """Return tables, columns and the version table's rows, to compare a database before and after."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        insp = sa.inspect(engine)
        snap: dict[str, Any] = {t: sorted(c["name"] for c in insp.get_columns(t)) for t in insp.get_table_names()}
        if "alembic_version" in snap:
            with engine.connect() as conn:
                snap["@versions"] = sorted(r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version")))
        return snap
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- reliability suite (issue 7)

RELIABILITY_MARKERS = ("reliability_concurrency", "reliability_fault", "bad_input", "secret_leak")


def full_schema(url: str) -> dict[str, Any]:
    """Return every table's columns (type, nullability, default), primary key, indexes, foreign keys and uniques."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        insp = sa.inspect(engine)
        schema: dict[str, Any] = {}
        for table in sorted(insp.get_table_names()):
            schema[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in insp.get_columns(table)],
                "pk": sorted(insp.get_pk_constraint(table).get("constrained_columns") or []),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)),
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in insp.get_foreign_keys(table)),
                "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            }
        return schema
    finally:
        engine.dispose()


def database_snapshot(url: str) -> dict[str, Any]:
    """Return the full schema plus every row of the version and history tables, to prove a database unchanged."""
    snap: dict[str, Any] = {"schema": full_schema(url)}
    for table in ("alembic_version", "orchestrator_runs", "orchestrator_steps"):
        if table in snap["schema"]:
            snap[table] = sorted(query(url, f"SELECT * FROM {table}"), key=repr)
    return snap


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the reliability figures (README "Reliability") when reliability tests ran."""
    figures = reliability_figures(terminalreporter.stats)
    if figures is not None:
        terminalreporter.write_sep("=", "reliability")
        terminalreporter.write_line(figures)


def reliability_figures(stats: dict[str, list[Any]]) -> str | None:
    """Return the one-line figures from the test reports, or None when no reliability test ran."""
    reports = [r for key in ("passed", "failed") for r in stats.get(key, [])
               if getattr(r, "when", None) == "call" and any(m in r.keywords for m in RELIABILITY_MARKERS)]
    if not reports:
        return None

    def passed(marker: str) -> list[Any]:
        return [r for r in reports if marker in r.keywords and r.passed]

    held = passed("reliability_concurrency")
    runners = max((dict(r.user_properties).get("runners", 0) for r in held), default=0)
    dialects = len({dict(r.user_properties).get("dialect") for r in held})
    bad_cases = {dict(r.user_properties).get("case", r.nodeid) for r in passed("bad_input")}
    leak_reports = [r for r in reports if "secret_leak" in r.keywords]
    leaks = sum(sum(v for k, v in r.user_properties if k == "leaks") for r in leak_reports)
    checked = sum(sum(v for k, v in r.user_properties if k == "outputs_checked") for r in leak_reports)
    failed = [r for r in reports if r.failed]
    return (f"runners held: {runners} processes x {dialects} dialects, faults survived: {len(passed('reliability_fault'))}, "
            f"bad inputs tried: {len(bad_cases)} ({len(passed('bad_input'))} runs), "
            f"leaks found: {leaks} (in {checked} outputs of {len(leak_reports)} tests), "
            f"reliability tests failed: {len(failed)}")
