"""Environments together: promotion, rollout along the chain, and the demo's main job."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import CANDIDATE, PROD_HEAD, PROD_REVISIONS, REPO, TESTDATA, Project, query


def test_rollout_brings_every_environment_to_its_heads(demo: Project) -> None:
    result = demo.cli("-q", "rollout")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"dev: upgraded (none) -> {TESTDATA}, {CANDIDATE} (7 steps, run ")
    assert lines[3].startswith(f"prod: upgraded (none) -> {PROD_HEAD} (5 steps, run ")
    status = {r["env"]: r for r in demo.json("status")}
    for env in ("dev", "test"):
        assert status[env]["current_heads"] == sorted([TESTDATA, CANDIDATE])
    for env in ("staging", "prod"):
        assert status[env]["current_heads"] == [PROD_HEAD]
        assert status[env]["pending"] == 0
        steps = query(demo.urls[env], "SELECT revision FROM orchestrator_steps WHERE status = 'succeeded' ORDER BY seq")
        assert [s[0] for s in steps] == list(PROD_REVISIONS)
    again = demo.cli("-q", "rollout")
    assert again.exit_code == 0
    both = ", ".join(sorted([CANDIDATE, TESTDATA]))
    assert again.stdout.splitlines()[:4] == [
        f"dev: nothing to do; at {both}",
        f"test: nothing to do; at {both}",
        f"staging: nothing to do; at {PROD_HEAD}",
        f"prod: nothing to do; at {PROD_HEAD}",
    ]


def test_promote_applies_exactly_what_the_source_has(demo: Project) -> None:
    assert demo.cli("-q", "upgrade", "--env", "dev", PROD_REVISIONS[2]).exit_code == 0
    promoted = demo.cli("-q", "promote", "--to", "test")
    assert promoted.exit_code == 0, promoted.output
    assert query(demo.urls["test"], "SELECT version_num FROM alembic_version") == [(PROD_REVISIONS[2],)]
    # staging sees only versions_prod: it gets the prod part of what test has applied
    assert demo.cli("-q", "upgrade", "--env", "dev").exit_code == 0
    assert demo.cli("-q", "promote", "--to", "test").exit_code == 0
    assert demo.cli("-q", "promote", "--to", "staging").exit_code == 0
    assert query(demo.urls["staging"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    nothing = demo.cli("-q", "promote", "--to", "staging")
    assert nothing.exit_code == 0 and nothing.stdout.startswith("staging: nothing to do")


def test_promote_refuses_to_go_backwards(demo: Project) -> None:
    assert demo.cli("-q", "upgrade", "--env", "staging").exit_code == 0
    result = demo.cli("-q", "promote", "--to", "staging")
    assert result.exit_code == 3
    assert result.stderr == (
        f"error: staging: refused: it has revisions its source 'test' has not applied: {', '.join(sorted(PROD_REVISIONS))}; "
        "promote never downgrades: apply them to 'test' first or downgrade 'staging' explicitly\n")


def test_promote_needs_a_source(demo: Project) -> None:
    result = demo.cli("promote", "--to", "dev")
    assert result.exit_code == 2
    assert result.stderr == (f"error: environment 'dev' has no promote_from in {demo.registry_path}; "
                             "use `upgrade --env dev` instead\n")


def test_rollout_stops_at_the_first_failure(demo: Project) -> None:
    demo.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'raise RuntimeError("boom")', message="raises")
    result = demo.cli("-q", "rollout")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: environment 'dev': revision bad000000001 ")
    for env in ("test", "staging", "prod"):
        assert query(demo.urls[env], "SELECT 1") == [(1,)]
    assert demo.json("current", "--env", "test")["heads"] == []


def test_alembic_env_selects_the_environment(demo: Project) -> None:
    assert demo.cli("-q", "upgrade", "--env", "test", PROD_REVISIONS[0]).exit_code == 0
    result = demo.run("current", env={"ALEMBIC_ENV": "test"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"test: {PROD_REVISIONS[0]} create sessions\n"
    default = demo.run("current")
    assert default.stdout == "dev: (empty: no revision applied)\n"


def test_readme_main_job_on_a_fresh_copy(tmp_path: Path) -> None:
    """The README's first command, run on a copy of the repository's demo."""
    for name in ("envs", "versions_prod", "versions_test", "examples"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "rollout"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "prod" in result.stdout and "at heads" in result.stdout
    for env, applied in (("dev", 7), ("test", 7), ("staging", 5), ("prod", 5)):
        with sqlite3.connect(tmp_path / "var" / f"{env}.db") as db:
            rows = db.execute("SELECT revision, COUNT(*) FROM orchestrator_steps WHERE status = 'succeeded' GROUP BY revision").fetchall()
        assert len(rows) == applied and all(count == 1 for _, count in rows)
