"""The per-database migration lock on every dialect, taken by real runners and by the test itself.

A runner that cannot get the lock within ``--lock-timeout`` exits 4 with one line
naming the run that holds it; the lock is released after a run (succeeded or
failed); a runner killed with SIGKILL in the middle of a revision leaves no lock
behind, and the next runner marks its run 'interrupted'; a runner stopped with Ctrl-C
records its run and step as interrupted itself and lets go of the lock.

Holders are real: a subprocess running ``orchestrator upgrade`` through a
revision that sleeps (server side on PostgreSQL/MySQL, in Python on SQLite), or
the lock object the executor itself uses, taken on a connection of the test's own.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, table_names
from orchestrator.lock import lock_for

# the scope executor.run_locked uses for the default version table: f"{schema or ''}.{version_table}"
SCOPE = ".alembic_version"
SLOW = "5a1e0c0ffee1"
INTERRUPTED_ERROR = "runner stopped before finishing (process killed or connection lost)"


def add_slow_revision(project: Project, dialect: str, *, chunk: float | None = 0.25) -> None:
    """Add a revision after PROD_HEAD that sleeps $ORCH_TEST_SLEEP seconds.

    PostgreSQL and MySQL sleep server side, in statements of ``chunk`` seconds (None: one
    statement). A server finishes a statement whose client died before it notices and drops
    the session and its lock, so short chunks keep the tests fast.
    """
    statement = {"postgresql": "SELECT pg_sleep({})", "mysql": "SELECT SLEEP({})"}.get(dialect)
    if statement is None:
        body = "time.sleep(seconds)"
    elif chunk is None:
        body = f"op.execute(sa.text({statement.format('{seconds}')!r}.format(seconds=seconds)))"
    else:
        body = (f"for _ in range(max(1, int(seconds / {chunk}))):\n"
                f"                op.execute(sa.text({statement.format(chunk)!r}))")
    project.write_revision("versions_prod", SLOW, PROD_HEAD, f"""
        seconds = float(os.environ.get("ORCH_TEST_SLEEP") or 0)
        if seconds:
            {body}
    """, message="slow step", extra="import os\nimport time")


class Runner:
    """An ``orchestrator upgrade`` subprocess whose stderr lines are collected as they come."""

    def __init__(self, project: Project, *args: str, env: dict[str, str]):
        environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
        environ.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=project.root)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 30) -> None:
        """Block until a stderr line contains ``needle``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no stderr line with {needle!r} within {timeout}s; got {self.stderr!r}")
            if line is None:
                pytest.fail(f"runner ended (exit {self.proc.wait()}) before printing {needle!r}: {self.stderr!r}")
            if needle in line:
                return

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the process; return its exit code, stdout and stderr."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, out, "".join(self.stderr)


@contextmanager
def held_lock(url: str) -> Iterator[None]:
    """Hold the environment's migration lock from the test, exactly as the executor takes it."""
    sa_url = make_url(url)
    engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            lock = lock_for(conn, sa_url, SCOPE)
            assert lock.try_acquire(), "the lock should be free before the test takes it"
            try:
                yield
            finally:
                lock.release()
    finally:
        engine.dispose()


def lock_is_free(url: str) -> bool:
    """Try the lock once from a fresh connection; release it again if it was taken."""
    sa_url = make_url(url)
    engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            lock = lock_for(conn, sa_url, SCOPE)
            got = lock.try_acquire()
            if got:
                lock.release()
            return got
    finally:
        engine.dispose()


def holder_phrase(run: dict) -> str:
    """Return how a waiter names a recorded run: id prefix, command, operator, start time."""
    started = run["started_at"][:19].replace("T", " ")
    return f"run {run['run_id'][:12]} ({run['command']} by {run['operator']}, started {started} UTC)"


def test_waiter_names_an_unrecorded_holder_and_touches_nothing(single: Project) -> None:
    url = single.urls["main"]
    with held_lock(url):
        result = single.cli("upgrade", "--lock-timeout", "0.3")
        assert result.exit_code == 4, result.output
        assert result.stdout == ""
        assert result.stderr == (
            "error: environment 'main': another runner (its run is not recorded yet) holds the migration lock; "
            "waited 0.3s; retry later or raise --lock-timeout\n")
        # the waiter created nothing while it waited: no version table, no history tables
        assert table_names(url) == set()
    # once the test lets go, a runner that may not wait gets it
    result = single.cli("upgrade", "--lock-timeout", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"main: upgraded (none) -> {PROD_HEAD} (5 steps, run ")


def test_lock_is_released_after_a_run_that_succeeds_and_one_that_fails(single: Project) -> None:
    url = single.urls["main"]
    # in-process runs: a lock released only by process exit would still be held here
    first = single.cli("upgrade")
    assert first.exit_code == 0, first.output
    assert lock_is_free(url)
    second = single.cli("upgrade", "--lock-timeout", "0")
    assert (second.exit_code, second.stdout) == (0, f"main: nothing to do; at {PROD_HEAD}\n")

    single.write_revision("versions_prod", "0fa11ed00001", PROD_HEAD, 'raise RuntimeError("boom")', message="fails")
    failed = single.cli("upgrade", "--lock-timeout", "0")
    assert failed.exit_code == 1, failed.output
    assert "\nerror: environment 'main': revision 0fa11ed00001 (versions_prod/" in failed.stderr
    assert lock_is_free(url)
    retry = single.cli("upgrade", "--lock-timeout", "0")
    assert retry.exit_code == 1, retry.output  # it fails again on the script, not on the lock
    assert "holds the migration lock" not in retry.stderr


def test_lock_is_per_database(tmp_path: Path, db_factory) -> None:
    project = make_project(tmp_path / "project", {"one": db_factory(), "two": db_factory()})
    with held_lock(project.urls["one"]):
        other = project.cli("--env", "two", "upgrade", "--lock-timeout", "0")
        assert other.exit_code == 0, other.output
        assert other.stdout.startswith(f"two: upgraded (none) -> {PROD_HEAD} (5 steps, run ")
        blocked = project.cli("--env", "one", "upgrade", "--lock-timeout", "0")
        assert blocked.exit_code == 4, blocked.output
        assert blocked.stderr == (
            "error: environment 'one': another runner (its run is not recorded yet) holds the migration lock; "
            "waited 0s; retry later or raise --lock-timeout\n")


@pytest.mark.reliability_fault
def test_waiter_exits_4_naming_the_holder_and_a_killed_holder_leaves_no_lock(single: Project,
                                                                            orchestrator_dialect: str) -> None:
    add_slow_revision(single, orchestrator_dialect)
    url = single.urls["main"]
    holder = Runner(single, "upgrade", env={"ORCH_TEST_SLEEP": "60", "ORCHESTRATOR_OPERATOR": "alice@ci-7"})
    holder.wait_for_line(f"  main: upgrade {PROD_HEAD} (")  # the slow step has begun; the lock is held
    holding = single.json("runs")["runs"]
    assert [r["status"] for r in holding] == ["running"]
    live = single.json("report")["details"][0]["notable_runs"]
    assert [(r["status"], r["recorded_status"]) for r in live] == [("running", "running")]  # its runner holds the lock

    started = time.monotonic()
    waiter = single.cli("upgrade", "--lock-timeout", "1", env={"ORCHESTRATOR_OPERATOR": "bob@ci-8"})
    assert time.monotonic() - started >= 1.0
    assert waiter.exit_code == 4, waiter.output
    assert waiter.stdout == ""
    assert waiter.stderr == (
        f"error: environment 'main': {holder_phrase(holding[0])} holds the migration lock; "
        "waited 1s; retry later or raise --lock-timeout\n")
    assert holder.proc.poll() is None  # the holder was still in the sleeping revision

    os.kill(holder.proc.pid, signal.SIGKILL)
    code, out, _err = holder.finish()
    assert (code, out) == (-signal.SIGKILL, "")
    assert query(url, "SELECT status FROM orchestrator_runs") == [("running",)]
    freed_after = wait_until_free(url, 30)  # the lock timeout the next runner is given
    assert freed_after is not None, "the killed runner's lock outlived the lock timeout"
    dead = single.json("report")["details"][0]["notable_runs"]  # before any runner has marked it
    assert [(r["run_id"], r["status"], r["recorded_status"]) for r in dead] == [
        (holding[0]["run_id"], "interrupted", "running")]
    assert query(url, "SELECT status FROM orchestrator_runs") == [("running",)]  # the report wrote nothing

    nxt = single.cli("upgrade", "--lock-timeout", "30", env={"ORCHESTRATOR_OPERATOR": "bob@ci-8"})
    assert nxt.exit_code == 0, nxt.output
    runs = single.json("runs")["runs"]
    assert [r["status"] for r in runs] == ["succeeded", "interrupted"]  # the waiter that timed out recorded nothing
    done, killed = runs
    assert nxt.stdout == f"main: upgraded {PROD_HEAD} -> {SLOW} (1 step, run {done['run_id'][:12]})\n"
    assert killed["run_id"] == holding[0]["run_id"]
    assert (killed["operator"], killed["command"], killed["error"]) == ("alice@ci-7", "upgrade", INTERRUPTED_ERROR)
    assert killed["finished_at"] is not None
    assert [(s["revision"], s["direction"], s["status"]) for s in killed["steps"]] == [
        (rev, "up", "succeeded") for rev in PROD_REVISIONS]
    assert (done["operator"], [(s["revision"], s["status"]) for s in done["steps"]]) == (
        "bob@ci-8", [(SLOW, "succeeded")])
    assert query(url, "SELECT version_num FROM alembic_version") == [(SLOW,)]
    assert lock_is_free(url)
    listed = single.cli("runs")  # as a person reads it
    assert listed.exit_code == 0
    assert [line.split("│")[4].strip() for line in listed.stdout.splitlines() if killed["run_id"][:12] in line] == [
        "interrupted"]
    reported = single.json("report")["details"][0]["notable_runs"]
    assert [(r["run_id"], r["status"], r["recorded_status"], r["reason"]) for r in reported] == [
        (killed["run_id"], "interrupted", "interrupted", INTERRUPTED_ERROR)]


def wait_until_free(url: str, timeout: float) -> float | None:
    """Return how long the lock took to become free, or None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if lock_is_free(url):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@pytest.mark.reliability_fault
@pytest.mark.parametrize("orchestrator_dialect", [
    "sqlite", "postgresql",
    "mysql",
], indirect=True)
def test_ctrl_c_records_the_run_as_interrupted_and_frees_the_lock_at_once(single: Project,
                                                                          orchestrator_dialect: str) -> None:
    add_slow_revision(single, orchestrator_dialect, chunk=None)  # one 30 s statement on the server
    url = single.urls["main"]
    holder = Runner(single, "upgrade", env={"ORCH_TEST_SLEEP": "30"})
    holder.wait_for_line(f"  main: upgrade {PROD_HEAD} (")
    time.sleep(0.3)
    os.kill(holder.proc.pid, signal.SIGINT)
    code, out, err = holder.finish()
    assert code != 0 and out == "", err
    assert query(url, "SELECT status, error, heads_after FROM orchestrator_runs") == [
        ("interrupted", "interrupted", PROD_HEAD)]
    assert query(url, "SELECT revision, status, error FROM orchestrator_steps WHERE seq = 6") == [
        (SLOW, "interrupted", "interrupted")]
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert wait_until_free(url, 2.0) is not None


@pytest.mark.parametrize("orchestrator_dialect", ["sqlite"], indirect=True)
def test_ctrl_c_exits_130_with_one_error_line(single: Project, orchestrator_dialect: str) -> None:
    add_slow_revision(single, orchestrator_dialect)
    holder = Runner(single, "upgrade", env={"ORCH_TEST_SLEEP": "60"})
    holder.wait_for_line(f"  main: upgrade {PROD_HEAD} (")
    time.sleep(0.3)
    os.kill(holder.proc.pid, signal.SIGINT)
    code, _out, err = holder.finish()
    lines = err.splitlines()
    assert (code, lines[-1]) == (130, "error: interrupted")
    assert "" not in lines


def test_interrupted_run_records_the_heads_the_dead_runner_left(single: Project) -> None:
    url = single.urls["main"]
    assert single.cli("upgrade", PROD_REVISIONS[2]).exit_code == 0
    # what a runner killed after its run row was committed leaves behind
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO orchestrator_runs (run_id, env, command, target, heads_before, status, started_at, "
                "operator, tool_version, alembic_version) VALUES (:run_id, 'main', 'upgrade', 'heads', :before, "
                "'running', :started, 'alice@ci-7', '0', '0')"),
                {"run_id": "deadbeef" * 4, "before": PROD_REVISIONS[2], "started": datetime(2020, 1, 1)})
    finally:
        engine.dispose()
    assert single.cli("upgrade").exit_code == 0
    killed = next(r for r in single.json("runs")["runs"] if r["run_id"].startswith("deadbeef"))
    assert killed["status"] == "interrupted"
    assert killed["heads_after"] == [PROD_REVISIONS[2]]
