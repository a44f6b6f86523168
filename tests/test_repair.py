"""Interrupts and repair (issue 13, item 8), on every dialect.

Ctrl-C during a revision records the run `interrupted` with the steps done, on
MariaDB too (the lock session used to be killed before the record was written);
`verify` reports runs left `running` by a runner that is gone; `repair` marks them
`interrupted` and accepts an edited applied script only once its new content is
approved, keeping both hashes in the history; a script's `sys.exit()` inside
`upgrade()` is a failure of its revision, exit 1, never the script's exit code.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query
from orchestrator.errors import EXIT_DIFFERENCES, EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from orchestrator.lock import lock_for

SLOW = "5a1e0c0ffee2"
EXITS = "e1170000beef"
SERVER_SLEEP = {"postgresql": "SELECT pg_sleep(0.25)", "mysql": "SELECT SLEEP(0.25)"}


def add_sleeping_revision(project: Project, where: str) -> None:
    """Add after PROD_HEAD a revision that touches $ORCH_TEST_MARKER, then sleeps 60 s (in Python or on the server)."""
    if where == "python":
        sleep = "time.sleep(60)"
    else:
        sleep = f"for _ in range(240): op.execute(sa.text({SERVER_SLEEP[where]!r}))"
    project.write_revision("versions_prod", SLOW, PROD_HEAD, f"""
        open(os.environ["ORCH_TEST_MARKER"], "w").close()
        {sleep}
    """, message="sleeps", extra="import os\nimport time")


def start_runner(project: Project, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``orchestrator ARGS`` as a user would, in its own process."""
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    environ.update(env)
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=project.root)


def wait_for(marker: Path, runner: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until the sleeping revision has started (its marker exists)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "the sleeping revision did not start"
        time.sleep(0.05)


SLEEPS = [("sqlite", "python"), ("postgresql", "python"), ("postgresql", "postgresql"),
          ("mysql", "python"), ("mysql", "mysql")]


@pytest.mark.reliability_fault
@pytest.mark.parametrize(("orchestrator_dialect", "where"), SLEEPS, indirect=["orchestrator_dialect"],
                         ids=[f"{d}-sleep-{w if w == 'python' else 'server'}" for d, w in SLEEPS])
def test_ctrl_c_mid_step_records_the_run_interrupted_with_the_steps_done(single: Project, orchestrator_dialect: str,
                                                                        where: str, tmp_path: Path) -> None:
    add_sleeping_revision(single, where)
    url = single.urls["main"]
    marker = tmp_path / "started"
    runner = start_runner(single, "upgrade", env={"ORCH_TEST_MARKER": str(marker)})
    wait_for(marker, runner)
    time.sleep(0.3)  # well inside the sleep
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert (runner.returncode, out) == (130, ""), err
    assert err.splitlines()[-1] == "error: interrupted" and "Traceback" not in err
    assert query(url, "SELECT status, error, heads_after FROM orchestrator_runs") == [
        ("interrupted", "interrupted", PROD_HEAD)]
    assert query(url, "SELECT revision, status, error FROM orchestrator_steps ORDER BY seq") == [
        *[(rev, "succeeded", None) for rev in PROD_REVISIONS], (SLOW, "interrupted", "interrupted")]
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    # nothing is left for verify or repair, and the next run takes the lock at once
    verified = single.cli("verify")
    assert (verified.exit_code, verified.stdout) == (EXIT_OK, "verified: no integrity findings\n"), verified.output
    assert single.cli("-q", "upgrade", PROD_HEAD, "--lock-timeout", "10").exit_code == EXIT_OK


RUNNER_SESSIONS = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()",
    "mysql": "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()",
}
CUT = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}


@pytest.mark.reliability_fault
@pytest.mark.parametrize("orchestrator_dialect", ["postgresql", "mysql"], indirect=True)
def test_ctrl_c_after_the_connection_was_cut_records_on_a_new_connection(single: Project, orchestrator_dialect: str,
                                                                         tmp_path: Path) -> None:
    # (PostgreSQL records on a second connection; on MySQL the cut is seen by the rollback and the session reconnects)
    add_sleeping_revision(single, "python")
    url = single.urls["main"]
    marker = tmp_path / "started"
    runner = start_runner(single, "upgrade", env={"ORCH_TEST_MARKER": str(marker)})
    wait_for(marker, runner)
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:  # the runner's session dies while it sleeps in Python
            database = sa.engine.make_url(url).database
            sessions = conn.execute(sa.text(RUNNER_SESSIONS[orchestrator_dialect]), {"db": database}).scalars().all()
            assert sessions
            for session in sessions:
                conn.execute(sa.text(CUT[orchestrator_dialect].format(int(session))))
    finally:
        admin.dispose()
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert (runner.returncode, out, err.splitlines()[-1]) == (130, "", "error: interrupted"), err
    assert query(url, "SELECT status, error, heads_after FROM orchestrator_runs") == [
        ("interrupted", "interrupted", PROD_HEAD)]
    assert query(url, "SELECT revision, status FROM orchestrator_steps ORDER BY seq") == [
        *[(rev, "succeeded") for rev in PROD_REVISIONS], (SLOW, "interrupted")]


# ---------------------------------------------------------------------------- runs left running


def insert_running_run(url: str, run_id: str, *, started: datetime, operator: str = "alice@ci-7") -> None:
    """Leave in the history what a runner killed after recording its run leaves: a 'running' row."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO orchestrator_runs (run_id, env, command, target, heads_before, status, started_at, "
                "operator, tool_version, alembic_version) VALUES (:run_id, 'main', 'upgrade', 'heads', :before, "
                "'running', :started, :operator, '0', '0')"),
                {"run_id": run_id, "before": PROD_HEAD, "started": started, "operator": operator})
    finally:
        engine.dispose()


def lock_is_free(url: str) -> bool:
    """Try the environment's lock once from a connection of the test's own; give it back if taken."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            lock = lock_for(conn, engine.url, ".alembic_version")
            got = lock.try_acquire()
            if got:
                lock.release()
            return got
    finally:
        engine.dispose()


def dead_run_finding(run_id: str, started: str, operator: str = "alice@ci-7") -> str:
    return (f"environment 'main': run {run_id[:12]} (upgrade by {operator}, started {started} UTC) is recorded as "
            "running but its runner is gone (the migration lock is free); mark it interrupted with "
            "`orchestrator repair --env main --reason TEXT`")


def test_verify_flags_a_dead_runners_run_and_repair_marks_it_interrupted(single: Project,
                                                                         orchestrator_dialect: str) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    insert_running_run(url, "deadbeef" * 4, started=datetime(2026, 11, 30, 8, 15, 2))
    insert_running_run(url, "feedface" * 4, started=datetime(2026, 11, 30, 9, 0, 0), operator="bob@ci-8")

    flagged = single.cli("verify")
    assert (flagged.exit_code, flagged.stderr) == (EXIT_DIFFERENCES, "")
    assert flagged.stdout == (dead_run_finding("deadbeef" * 4, "2026-11-30 08:15:02") + "\n"
                              + dead_run_finding("feedface" * 4, "2026-11-30 09:00:00", "bob@ci-8") + "\n")
    # verify wrote nothing and let go of the lock
    assert query(url, "SELECT count(*) FROM orchestrator_runs WHERE status = 'running'") == [(2,)]
    assert lock_is_free(url)

    usage = single.cli("repair")
    assert (usage.exit_code, usage.stdout) == (EXIT_USAGE, "")
    assert usage.stderr == "error: Missing option '--reason'; see `orchestrator repair --help`\n"

    repaired = single.cli("repair", "--reason", "runner host rebooted", env={"ORCHESTRATOR_OPERATOR": "carol@desk"})
    assert (repaired.exit_code, repaired.stderr) == (EXIT_OK, ""), repaired.output
    run_id, = [r[0] for r in query(url, "SELECT run_id FROM orchestrator_runs WHERE command = 'repair'")]
    assert repaired.stdout == (
        "main: run deadbeefdead (upgrade by alice@ci-7, started 2026-11-30 08:15:02 UTC) marked interrupted: "
        "its runner is gone\n"
        "main: run feedfacefeed (upgrade by bob@ci-8, started 2026-11-30 09:00:00 UTC) marked interrupted: "
        "its runner is gone\n"
        f"main: repaired (run {run_id[:12]})\n")
    marked = f"runner stopped before finishing (process killed or connection lost); marked by repair run {run_id[:12]}"
    assert query(url, "SELECT run_id, status, heads_after, error FROM orchestrator_runs WHERE command = 'upgrade' "
                      "AND run_id IN ('" + "deadbeef" * 4 + "', '" + "feedface" * 4 + "') ORDER BY run_id") == [
        ("deadbeef" * 4, "interrupted", PROD_HEAD, marked), ("feedface" * 4, "interrupted", PROD_HEAD, marked)]
    assert query(url, "SELECT status, operator, forced_reason, error FROM orchestrator_runs WHERE command = 'repair'") == [
        ("succeeded", "carol@desk", "runner host rebooted", None)]

    clean = single.cli("verify")
    assert (clean.exit_code, clean.stdout) == (EXIT_OK, "verified: no integrity findings\n"), clean.output
    again = single.cli("--json", "repair", "--reason", "again")
    assert again.exit_code == EXIT_OK, again.output
    assert json.loads(again.stdout) == {"env": "main", "status": "nothing to do", "run_id": None,
                                        "interrupted_runs": [], "accepted": []}
    assert query(url, "SELECT count(*) FROM orchestrator_runs WHERE command = 'repair'") == [(1,)]


@pytest.mark.reliability_fault
def test_a_killed_runner_is_flagged_by_verify_and_repaired(single: Project, orchestrator_dialect: str,
                                                           tmp_path: Path) -> None:
    add_sleeping_revision(single, "python")
    url = single.urls["main"]
    marker = tmp_path / "started"
    runner = start_runner(single, "upgrade", env={"ORCH_TEST_MARKER": str(marker), "ORCHESTRATOR_OPERATOR": "alice@ci-7"})
    wait_for(marker, runner)
    # while it runs, its run is live: verify does not flag it
    live = single.cli("verify")
    assert (live.exit_code, live.stdout) == (EXIT_OK, "verified: no integrity findings\n"), live.output
    runner.kill()
    runner.communicate(timeout=30)
    (run_id, started), = query(url, "SELECT run_id, started_at FROM orchestrator_runs WHERE status = 'running'")
    started = started if isinstance(started, datetime) else datetime.fromisoformat(started)
    deadline = time.monotonic() + 30  # the server notices the dead client and drops its session (and lock)
    while True:
        flagged = single.cli("verify")
        if flagged.exit_code != EXIT_OK or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (flagged.exit_code, flagged.stdout) == (
        EXIT_DIFFERENCES, dead_run_finding(run_id, started.strftime("%Y-%m-%d %H:%M:%S")) + "\n")
    repaired = single.cli("repair", "--reason", "CI job killed")
    assert repaired.exit_code == EXIT_OK, repaired.output
    assert query(url, f"SELECT status FROM orchestrator_runs WHERE run_id = '{run_id}'") == [("interrupted",)]
    assert single.cli("verify").exit_code == EXIT_OK


# ---------------------------------------------------------------------------- an edited applied script

EDITED = '\n# a comment added after the script was applied\n'


def test_repair_accepts_an_edited_applied_script_only_once_it_is_approved(tmp_path: Path, db_factory,
                                                                          orchestrator_dialect: str) -> None:
    project = make_project(tmp_path / "project", {"staging": db_factory(), "prod": db_factory()},
                           promote_from={"prod": "staging"}, protected=("prod",))
    url = project.urls["prod"]
    assert project.cli("-q", "upgrade", "--env", "staging").exit_code == EXIT_OK
    assert project.cli("-q", "promote", "--to", "prod").exit_code == EXIT_OK
    edited = project.ctx("prod").graph.revisions[PROD_REVISIONS[1]]
    old = edited.sha256
    path = f"versions_prod/{edited.path.name}"
    with open(edited.path, "a") as f:
        f.write(EDITED)
    new = project.ctx("prod").graph.revisions[PROD_REVISIONS[1]].sha256
    steps_before = query(url, "SELECT * FROM orchestrator_steps ORDER BY run_id, seq")

    flagged = project.cli("verify", "--env", "prod")
    assert flagged.exit_code == EXIT_DIFFERENCES
    assert f"revision {PROD_REVISIONS[1]} ({path}) changed after it was applied: sha256 {old}" in flagged.stdout

    refused = project.cli("repair", "--env", "prod", "--reason", "comment only")
    assert (refused.exit_code, refused.stdout) == (EXIT_REFUSED, "")
    assert refused.stderr == (
        f"error: prod: refused: revision {PROD_REVISIONS[1]} ({path}) changed after it was applied (sha256 {old} "
        f"when applied, {new} on disk) and its new content is not approved; review the change and run "
        f"`orchestrator review approve {PROD_REVISIONS[1]} --reviewer NAME`, then repair again\n")
    assert query(url, "SELECT status, error FROM orchestrator_runs WHERE command = 'repair'") == [
        ("blocked", refused.stderr[len("error: prod: refused: "):-1])]
    assert query(url, "SELECT * FROM orchestrator_steps ORDER BY run_id, seq") == steps_before
    assert project.cli("verify", "--env", "prod").exit_code == EXIT_DIFFERENCES

    assert project.cli("review", "approve", PROD_REVISIONS[1], "--reviewer", "dana").exit_code == EXIT_OK
    repaired = project.cli("repair", "--env", "prod", "--reason", "comment only")
    assert (repaired.exit_code, repaired.stderr) == (EXIT_OK, ""), repaired.output
    (run_id,), = query(url, "SELECT run_id FROM orchestrator_runs WHERE command = 'repair' AND status = 'succeeded'")
    assert repaired.stdout == (f"prod: accepted revision {PROD_REVISIONS[1]} ({path}) at sha256 {new} in place of "
                               f"{old}, approved by dana\nprod: repaired (run {run_id[:12]})\n")

    clean = project.cli("verify", "--env", "prod")
    assert (clean.exit_code, clean.stdout) == (EXIT_OK, "verified: no integrity findings\n"), clean.output
    # nothing was deleted or changed: the old step row keeps the old hash, the repair step has the new one
    after = query(url, "SELECT * FROM orchestrator_steps ORDER BY run_id, seq")
    assert [r for r in after if r[0] != run_id] == steps_before
    assert query(url, f"SELECT revision, direction, script_sha256, reviewer, status, error FROM orchestrator_steps "
                      f"WHERE run_id = '{run_id}'") == [
        (PROD_REVISIONS[1], "repair", new, "dana", "succeeded",
         f"accepted sha256 {new} in place of {old}, approved by dana")]
    assert (PROD_REVISIONS[1], "up", old) in [(r[2], r[4], r[5]) for r in after]
    # staging, which was not repaired, still reports its own edited script
    assert project.cli("verify", "--env", "staging").exit_code == EXIT_DIFFERENCES
    # the report agrees: prod's script matches what repair accepted, the applied hash is kept beside it
    report = json.loads(project.cli("report", "--format", "json").stdout)
    applied = {e["env"]: {a["revision"]: a for a in e["applied"]} for e in report["details"]}
    assert {k: applied["prod"][PROD_REVISIONS[1]][k] for k in ("recorded_sha256", "repaired_sha256", "script_matches")} \
        == {"recorded_sha256": old, "repaired_sha256": new, "script_matches": True}
    assert {k: applied["staging"][PROD_REVISIONS[1]][k] for k in ("repaired_sha256", "script_matches")} \
        == {"repaired_sha256": None, "script_matches": False}


# ---------------------------------------------------------------------------- sys.exit() in upgrade()


def test_sys_exit_in_upgrade_is_a_failure_of_that_revision(single: Project, orchestrator_dialect: str) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    path = single.write_revision("versions_prod", EXITS, PROD_HEAD, "import sys\nsys.exit(0)", message="exits")
    failed = single.run("-q", "upgrade")
    assert (failed.returncode, failed.stdout) == (EXIT_FAILURE, "")
    assert failed.stderr == (
        f"error: environment 'main': revision {EXITS} (versions_prod/{path.name}) failed: called sys.exit(0) during "
        f"upgrade(); rolled back; the database is at {PROD_HEAD}; see `orchestrator runs --env main`\n")
    recorded = f"revision {EXITS} called sys.exit(0) during upgrade()"
    assert query(url, f"SELECT revision, status, error FROM orchestrator_steps WHERE revision = '{EXITS}'") == [
        (EXITS, "failed", recorded)]
    run, = single.json("runs", "--limit", "1")["runs"]
    assert (run["status"], run["error"], run["heads_after"]) == ("failed", recorded, [PROD_HEAD])
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]


def test_sys_exit_in_downgrade_is_a_failure_whatever_the_code(single: Project, orchestrator_dialect: str) -> None:
    url = single.urls["main"]
    path = single.write_revision("versions_prod", EXITS, PROD_HEAD, "pass", "import sys\nsys.exit('no way back')",
                                 message="exits")
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    failed = single.run("-q", "downgrade", "-1")
    assert (failed.returncode, failed.stdout) == (EXIT_FAILURE, "")
    assert failed.stderr == (
        f"error: environment 'main': revision {EXITS} (versions_prod/{path.name}) failed: called sys.exit('no way back') "
        f"during downgrade(); rolled back; the database is at {EXITS}; see `orchestrator runs --env main`\n")
    assert query(url, "SELECT revision, direction, status, error FROM orchestrator_steps WHERE status <> 'succeeded'") == [
        (EXITS, "down", "failed", f"revision {EXITS} called sys.exit('no way back') during downgrade()")]
    assert query(url, "SELECT version_num FROM alembic_version") == [(EXITS,)]
