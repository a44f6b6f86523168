"""Applying plans on every dialect: steps, history rows, failures, downgrade and stamp."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import PROD_HEAD, PROD_REVISIONS, Project, query, schema_snapshot, table_names
from orchestrator import commands
from orchestrator.errors import MigrationFailed

DEMO_TABLES = {"sessions", "messages", "user_profiles", "career_reports"}


def test_upgrade_applies_every_revision_and_records_one_step_each(single: Project) -> None:
    result = single.cli("upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"main: upgraded (none) -> {PROD_HEAD} (5 steps, run ")
    url = single.urls["main"]
    assert DEMO_TABLES | {"alembic_version", "orchestrator_runs", "orchestrator_steps", "orchestrator_identity"} == table_names(url)
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    runs = query(url, "SELECT env, command, target, heads_before, heads_after, status, operator, finished_at FROM orchestrator_runs")
    assert len(runs) == 1
    env, command, target, before, after, status, operator, finished = runs[0]
    assert (env, command, target, before, after, status) == ("main", "upgrade", "heads", "", PROD_HEAD, "succeeded")
    assert "@" in operator and finished is not None
    steps = query(url, "SELECT seq, revision, direction, status, script_sha256, duration_ms FROM orchestrator_steps ORDER BY seq")
    assert [(s[0], s[1], s[2], s[3]) for s in steps] == [(i + 1, rev, "up", "succeeded") for i, rev in enumerate(PROD_REVISIONS)]
    for (_, rev, *_rest), sha in zip(steps, (s[4] for s in steps)):
        path = next((single.root / "versions_prod").glob(f"{rev}_*.py"))
        assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(s[5] is not None and s[5] >= 0 for s in steps)


def test_second_upgrade_has_nothing_to_do_and_records_nothing(single: Project) -> None:
    assert single.cli("upgrade").exit_code == 0
    again = single.cli("upgrade")
    assert again.exit_code == 0
    assert again.stdout == f"main: nothing to do; at {PROD_HEAD}\n"
    assert query(single.urls["main"], "SELECT COUNT(*) FROM orchestrator_runs") == [(1,)]


def test_upgrade_to_a_revision_then_plan_shows_the_rest(single: Project) -> None:
    assert single.cli("upgrade", PROD_REVISIONS[1]).exit_code == 0
    plan = single.json("plan")
    assert plan["heads_before"] == [PROD_REVISIONS[1]]
    assert [s["revision"] for s in plan["steps"]] == list(PROD_REVISIONS[2:])
    assert all(s["direction"] == "up" for s in plan["steps"])
    assert len(plan["fingerprint"]) == 64


def test_plan_touches_nothing(single: Project) -> None:
    before = schema_snapshot(single.urls["main"])
    plan = single.json("plan")
    assert [s["revision"] for s in plan["steps"]] == list(PROD_REVISIONS)
    assert schema_snapshot(single.urls["main"]) == before == {}


def test_downgrade_and_stamp_are_recorded_with_their_direction(single: Project) -> None:
    url = single.urls["main"]
    assert single.cli("upgrade").exit_code == 0
    down = single.cli("downgrade", "-2")
    assert down.exit_code == 0, down.output
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_REVISIONS[2],)]
    assert "career_reports" not in table_names(url) and "user_profiles" not in table_names(url)
    stamp = single.cli("stamp", PROD_HEAD)
    assert stamp.exit_code == 0, stamp.output
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    rows = query(url, "SELECT r.command, s.seq, s.revision, s.direction FROM orchestrator_steps s "
                      "JOIN orchestrator_runs r ON r.run_id = s.run_id WHERE r.command <> 'upgrade' ORDER BY r.started_at, s.seq")
    assert rows == [("downgrade", 1, PROD_REVISIONS[4], "down"), ("downgrade", 2, PROD_REVISIONS[3], "down"),
                    ("stamp", 1, PROD_HEAD, "stamp")]


def test_failing_revision_is_recorded_and_leaves_the_last_good_revision(single: Project, orchestrator_dialect: str) -> None:
    single.write_revision("versions_prod", "bad000000001", PROD_HEAD,
                          'op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\n'
                          'op.execute("SELECT * FROM no_such_table")', 'op.drop_table("half")', message="breaks halfway")
    url = single.urls["main"]
    result = single.cli("-q", "upgrade")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert line.startswith("error: environment 'main': revision bad000000001 (versions_prod/bad000000001_breaks_halfway.py) failed: ")
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    if orchestrator_dialect == "mysql":
        assert line.endswith(f"; the database is at {PROD_HEAD}, but MySQL/MariaDB committed 1 statement of "
                             "bad000000001 before the failure (DDL is not transactional there): CREATE TABLE half; "
                             "undo it (or make the script skip it) before rerunning; see `orchestrator runs --env main`")
        assert "half" in table_names(url)  # MariaDB committed the CREATE TABLE before the failure
    else:
        assert line.endswith(f"; rolled back; the database is at {PROD_HEAD}; see `orchestrator runs --env main`")
        assert "half" not in table_names(url)
    steps = query(url, "SELECT revision, status, error FROM orchestrator_steps ORDER BY seq")
    assert [(r, s) for r, s, _ in steps] == [(rev, "succeeded") for rev in PROD_REVISIONS] + [("bad000000001", "failed")]
    assert "no_such_table" in steps[-1][2]
    assert query(url, "SELECT status, heads_after FROM orchestrator_runs") == [("failed", PROD_HEAD)]
    status = single.json("status")
    assert status[0]["state"] == "last run failed"
    assert status[0]["last_run"]["failed_revision"] == "bad000000001"
    assert status[0]["pending_revisions"] == ["bad000000001"]


def test_rerun_after_fixing_the_script_completes(single: Project, orchestrator_dialect: str) -> None:
    path = single.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'op.execute("SELECT * FROM no_such_table")',
                                 message="fails")
    assert single.cli("upgrade").exit_code == 1
    path.write_text(path.read_text().replace('op.execute("SELECT * FROM no_such_table")',
                                             'op.create_table("fixed", sa.Column("id", sa.Integer, primary_key=True))'))
    result = single.cli("upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"main: upgraded {PROD_HEAD} -> bad000000001 (1 step, run ")
    assert "fixed" in table_names(single.urls["main"])


def test_python_api_mirrors_the_cli(single: Project) -> None:
    ctx = single.ctx("main")
    result = commands.upgrade(ctx, PROD_REVISIONS[0])
    assert (result.status, result.heads_after, [s.revision for s in result.steps]) == ("succeeded", (PROD_REVISIONS[0],), [PROD_REVISIONS[0]])
    assert commands.current(ctx)["heads"][0]["revision"] == PROD_REVISIONS[0]
    single.write_revision("versions_prod", "bad000000001", PROD_HEAD, 'raise RuntimeError("boom")', message="raises")
    with pytest.raises(MigrationFailed) as info:
        commands.upgrade(single.ctx("main"))
    assert info.value.revision == "bad000000001" and info.value.exit_code == 1
    assert query(single.urls["main"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]


def test_offline_sql_prints_ddl_and_touches_nothing(single: Project) -> None:
    result = single.cli("upgrade", "--sql", f"base:{PROD_REVISIONS[0]}")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE sessions" in result.stdout
    assert f"'{PROD_REVISIONS[0]}'" in result.stdout
    assert table_names(single.urls["main"]) == set()


def test_runs_reads_the_history_back(single: Project) -> None:
    assert single.cli("upgrade", PROD_REVISIONS[0]).exit_code == 0
    assert single.cli("upgrade").exit_code == 0
    data = single.json("runs")
    assert [r["status"] for r in data["runs"]] == ["succeeded", "succeeded"]
    newest, oldest = data["runs"]
    assert oldest["heads_after"] == [PROD_REVISIONS[0]] and newest["heads_before"] == [PROD_REVISIONS[0]]
    assert [s["revision"] for s in newest["steps"]] == list(PROD_REVISIONS[1:])
    assert newest["started_at"].endswith("Z")
    one = single.json("runs", "--run", oldest["run_id"][:8])
    assert [r["run_id"] for r in one["runs"]] == [oldest["run_id"]]


def test_status_json_lists_every_environment(demo: Project) -> None:
    rows = demo.json("status")
    assert [r["env"] for r in rows] == ["dev", "test", "staging", "prod"]
    for row in rows:
        assert set(row) >= {"env", "current_heads", "target_heads", "pending"}
        assert row["current_heads"] == []
    assert [r["state"] for r in rows] == ["pending", "pending", "pending", "pending; gate would refuse"]
    assert [r["gate"] is None for r in rows] == [True, True, True, False]
    assert rows[3]["gate"] == [f"'staging' (promote_from) has not applied {', '.join(PROD_REVISIONS)}; "
                               "promote them there first (`orchestrator promote --to staging`)"]
    assert rows[0]["pending"] == 7 and rows[3]["pending"] == 5
    assert rows[3]["target_heads"] == [PROD_HEAD]
    json.dumps(rows)
