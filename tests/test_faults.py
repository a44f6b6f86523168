"""Faults: the database connection cut in the middle of a run (PostgreSQL's pg_terminate_backend)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from conftest import PROD_HEAD, PROD_REVISIONS, Project, query, table_names

SLOW = "5105100000a1"


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql"], indirect=True)
def test_connection_cut_mid_run_is_one_clear_error_and_consistent_history(single: Project) -> None:
    single.write_revision("versions_prod", SLOW, PROD_HEAD,
                          'op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))\n'
                          'for _ in range(120):\n    op.execute("SELECT pg_sleep(0.25)")', message="slow")
    url = single.urls["main"]
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    runner = subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(single.registry_path), "upgrade"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    database = sa.engine.make_url(url).database
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + 60
        with admin.connect() as conn:
            # wait until the runner is inside the slow revision, then cut its session
            while not conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND query LIKE '%pg_sleep%' "
                    "AND pid <> pg_backend_pid()"), {"db": database}).scalar():
                assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
                time.sleep(0.05)
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})
    finally:
        admin.dispose()
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"error: environment 'main': revision {SLOW} (versions_prod/{SLOW}_slow.py) failed: terminating connection "
        f"due to administrator command; rolled back; the database is at {PROD_HEAD}; see `orchestrator runs --env main`")
    # the schema and the history agree: the slow step is gone from both, the run is failed at the last good head
    assert "slow" not in table_names(url)
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
