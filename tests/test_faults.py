"""Faults on every dialect: a revision that raises halfway, and the database connection cut mid-run.

(A runner killed with SIGKILL, or stopped with Ctrl-C, mid-revision: tests/test_lock.py.)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conftest import PROD_HEAD, PROD_REVISIONS, Project, full_schema, query, table_names
from orchestrator.errors import EXIT_FAILURE, EXIT_OK

pytestmark = pytest.mark.reliability_fault

SLOW = "5105100000a1"
HALF = "4a1f0000b001"
TWO_OPS_THEN_RAISE = """
op.create_table("halfway", sa.Column("id", sa.Integer, primary_key=True))
op.add_column("sessions", sa.Column("flag", sa.Integer))
raise RuntimeError("boom halfway")
"""
TWO_OPS = """
op.create_table("halfway", sa.Column("id", sa.Integer, primary_key=True))
op.add_column("sessions", sa.Column("flag", sa.Integer))
"""


def execute(url: str, *statements: str) -> None:
    """Run statements that return no rows, committed."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_revision_raising_after_two_ddl_ops_then_fixed(single: Project, orchestrator_dialect: str) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    last_good = full_schema(url)
    path = single.write_revision("versions_prod", HALF, PROD_HEAD, TWO_OPS_THEN_RAISE,
                                 'op.drop_column("sessions", "flag")\nop.drop_table("halfway")', message="two ops")
    where = f"versions_prod/{path.name}"

    failed = single.cli("-q", "upgrade")

    mysql = orchestrator_dialect == "mysql"
    committed = "CREATE TABLE halfway; ALTER TABLE sessions ADD COLUMN flag INTEGER"
    if mysql:
        state = (f"the database is at {PROD_HEAD}, but MySQL/MariaDB committed 2 statements of {HALF} before the failure "
                 f"(DDL is not transactional there): {committed}; undo them (or make the script skip them) before rerunning")
        recorded = f"boom halfway; committed before the failure: {committed}"
    else:
        state = f"rolled back; the database is at {PROD_HEAD}"
        recorded = "boom halfway"
    assert (failed.exit_code, failed.stdout) == (EXIT_FAILURE, "")
    assert failed.stderr == (f"error: environment 'main': revision {HALF} ({where}) failed: boom halfway; {state}; "
                             "see `orchestrator runs --env main`\n")

    after = full_schema(url)
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    if mysql:  # exactly the two committed statements stayed: the new table and the new column
        assert set(after) - set(last_good) == {"halfway"}
        assert [c[0] for c in after["sessions"]["columns"]] == [c[0] for c in last_good["sessions"]["columns"]] + ["flag"]
        assert {t: v for t, v in after.items() if t not in ("halfway", "sessions", "orchestrator_runs",
                                                              "orchestrator_steps")} == \
            {t: v for t, v in last_good.items() if t not in ("sessions", "orchestrator_runs", "orchestrator_steps")}
    else:  # nothing of the failed step is left
        assert after == last_good
    assert "halfway" in table_names(url) if mysql else "halfway" not in table_names(url)

    # runs and status name the failed step and (on MySQL) what of it stayed
    runs = single.json("runs", "--limit", "1")["runs"]
    assert (runs[0]["status"], runs[0]["error"], runs[0]["heads_after"]) == ("failed", recorded, [PROD_HEAD])
    assert [(s["revision"], s["status"], s["error"]) for s in runs[0]["steps"]] == [(HALF, "failed", recorded)]
    text = single.cli("runs", "--run", runs[0]["run_id"][:12])
    assert text.exit_code == EXIT_OK and HALF in text.stdout and "failed" in text.stdout
    row, = single.json("status")
    assert (row["state"], row["current_heads"], row["pending_revisions"]) == ("last run failed", [PROD_HEAD], [HALF])
    assert (row["last_run"]["failed_revision"], row["last_run"]["error"]) == (HALF, recorded)

    # fix the script (an unapplied revision on an unprotected environment: allowed); on MySQL undo what the
    # message listed, as it says; rerun
    single.write_revision("versions_prod", HALF, PROD_HEAD, TWO_OPS,
                          'op.drop_column("sessions", "flag")\nop.drop_table("halfway")', message="two ops")
    if mysql:
        execute(url, "DROP TABLE halfway", "ALTER TABLE sessions DROP COLUMN flag")
    rerun = single.cli("-q", "upgrade")
    assert (rerun.exit_code, rerun.stderr) == (EXIT_OK, ""), rerun.output
    assert re.fullmatch(rf"main: upgraded {PROD_HEAD} -> {HALF} \(1 step, run [0-9a-f]{{12}}\)\n", rerun.stdout)
    assert query(url, "SELECT version_num FROM alembic_version") == [(HALF,)]
    assert "halfway" in table_names(url)
    row, = single.json("status")
    assert (row["state"], row["last_run"]["status"], row["last_run"]["failed_revision"]) == ("at heads", "succeeded", None)


# the statement a slow revision runs in a loop, and how another session cuts the runner's connection
SLEEP = {"postgresql": "SELECT pg_sleep(0.25)", "mysql": "SELECT SLEEP(0.25)"}
RUNNER_SESSIONS = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()",
    "mysql": "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()",
}
IN_SLEEP = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND query LIKE '%pg_sleep%' "
                  "AND pid <> pg_backend_pid()",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE db = :db AND info LIKE '%SLEEP(%' "
             "AND id <> CONNECTION_ID()",
}
CUT = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}
LOST = {
    "postgresql": "terminating connection due to administrator command",
    "mysql": "(2013, 'Lost connection to MySQL server during query')",
}


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql", "mysql"], indirect=True)
def test_connection_cut_mid_run_is_one_clear_error_and_consistent_history(single: Project,
                                                                         orchestrator_dialect: str) -> None:
    single.write_revision("versions_prod", SLOW, PROD_HEAD,
                          'op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))\n'
                          f'for _ in range(120):\n    op.execute("{SLEEP[orchestrator_dialect]}")', message="slow")
    url = single.urls["main"]
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    runner = subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(single.registry_path), "upgrade"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    database = sa.engine.make_url(url).database
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + 60
        with admin.connect() as conn:
            # wait until the runner is inside the slow revision, then cut its session from this one
            while not conn.execute(sa.text(IN_SLEEP[orchestrator_dialect]), {"db": database}).scalar():
                assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
                time.sleep(0.05)
            for (session,) in conn.execute(sa.text(RUNNER_SESSIONS[orchestrator_dialect]), {"db": database}).all():
                conn.execute(sa.text(CUT[orchestrator_dialect].format(int(session))))
    finally:
        admin.dispose()
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == EXIT_FAILURE, (out, err)
    assert "Traceback" not in err
    mysql = orchestrator_dialect == "mysql"
    state = (f"the database is at {PROD_HEAD}, but MySQL/MariaDB committed 1 statement of {SLOW} before the failure "
             f"(DDL is not transactional there): CREATE TABLE `slow`; undo it (or make the script skip it) before rerunning"
             if mysql else f"rolled back; the database is at {PROD_HEAD}")
    assert err.splitlines()[-1] == (
        f"error: environment 'main': revision {SLOW} (versions_prod/{SLOW}_slow.py) failed: {LOST[orchestrator_dialect]}; "
        f"{state}; see `orchestrator runs --env main`")
    # the schema and the history agree: the run is failed at the last good head, the slow step failed
    assert ("slow" in table_names(url)) == mysql
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(url, "SELECT status, heads_after FROM orchestrator_runs") == [("failed", PROD_HEAD)]
    steps = query(url, "SELECT revision, status FROM orchestrator_steps ORDER BY seq")
    assert steps == [(rev, "succeeded") for rev in PROD_REVISIONS] + [(SLOW, "failed")]
    # and the lock died with the session: it can be taken at once
    from orchestrator.lock import lock_for

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            lock = lock_for(conn, engine.url, ".alembic_version")
            assert lock.try_acquire()
            lock.release()
    finally:
        engine.dispose()
