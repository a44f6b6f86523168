"""Writing the review ledger safely: one locked read-modify-write per `review approve/revoke`, mode kept.

No database is involved: approving builds plans and lints scripts, but never
connects (the environments' SQLite files are never created).
"""
from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROD_HEAD, Project, make_project

from orchestrator.errors import LockTimeout
from orchestrator.reviews import load_ledger, lock_path, save_ledger, update_ledger

CHAIN = [f"c0ffee{n:06d}" for n in range(1, 13)]  # twelve revisions on top of the demo's prod head


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """staging and a protected prod on SQLite files (never created), with twelve unreviewed revisions."""
    urls = {name: f"sqlite:///{tmp_path}/db/{name}.db" for name in ("staging", "prod")}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))
    down = PROD_HEAD
    for n, revision in enumerate(CHAIN, 1):
        project.write_revision("versions_prod", revision, down,
                               f'op.create_table("t{n}", sa.Column("id", sa.Integer(), primary_key=True))',
                               f'op.drop_table("t{n}")', message=f"table {n}")
        down = revision
    return project


def ledger(project: Project) -> Path:
    return project.root / "envs" / "reviews.yaml"


def start(project: Project, *args: str) -> subprocess.Popen[str]:
    """Start the CLI as its own process (not waiting for it)."""
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=project.root)


def test_twelve_concurrent_approvals_all_survive_and_the_mode_is_kept(project: Project) -> None:
    os.chmod(ledger(project), 0o640)
    before = set(load_ledger(ledger(project)).approvals)
    runners = [start(project, "review", "approve", revision, "--reviewer", f"r{n}")
               for n, revision in enumerate(CHAIN, 1)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]
    assert [code for code, _, _ in results] == [0] * 12, results
    approvals = load_ledger(ledger(project)).approvals
    assert set(approvals) == before | set(CHAIN)
    assert [approvals[rev].reviewer for rev in CHAIN] == [f"r{n}" for n in range(1, 13)]
    assert stat.S_IMODE(os.stat(ledger(project)).st_mode) == 0o640
    assert sorted(p.name for p in ledger(project).parent.iterdir()) == [".reviews.yaml.lock", "registry.yaml",
                                                                      "reviews.yaml"]  # no temporary file left

    revokers = [start(project, "review", "revoke", revision) for revision in CHAIN[::2]]
    assert [r.wait(timeout=120) for r in revokers] == [0] * 6
    assert set(load_ledger(ledger(project)).approvals) == before | set(CHAIN[1::2])
    assert stat.S_IMODE(os.stat(ledger(project)).st_mode) == 0o640


def test_approve_waits_for_the_lock_and_rereads_the_ledger(project: Project) -> None:
    holder = os.open(lock_path(ledger(project)), os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another writer is in the middle of its read-modify-write
    try:
        runner = start(project, "review", "approve", CHAIN[0], "--reviewer", "alice")
        time.sleep(3)
        assert runner.poll() is None, runner.communicate()
        # what the other writer saves before releasing must survive the waiting approval
        update = load_ledger(ledger(project)).approve(CHAIN[1], "0" * 64, "bob")
        save_ledger(update)
    finally:
        os.close(holder)
    assert runner.wait(timeout=120) == 0, runner.communicate()
    approvals = load_ledger(ledger(project)).approvals
    assert (approvals[CHAIN[0]].reviewer, approvals[CHAIN[1]].reviewer) == ("alice", "bob")


def test_a_held_lock_times_out_with_exit_4(project: Project) -> None:
    path = ledger(project)
    holder = os.open(lock_path(path), os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockTimeout) as info:
            update_ledger(path, lambda current: current.approve(CHAIN[0], "0" * 64, "alice"), timeout=0.2)
    finally:
        os.close(holder)
    assert info.value.exit_code == 4
    assert str(info.value) == (f"{path}: another `orchestrator review` has held the ledger's lock "
                               f"({path.parent / '.reviews.yaml.lock'}) for 0s; retry when it is done")
    assert CHAIN[0] not in load_ledger(path).approvals


def test_a_new_ledger_gets_a_normal_files_mode(project: Project) -> None:
    ledger(project).unlink()
    old = os.umask(0o022)
    try:
        result = project.run("review", "approve", CHAIN[0], "--reviewer", "alice")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(ledger(project)).st_mode) == 0o644
    assert list(load_ledger(ledger(project)).approvals) == [CHAIN[0]]


def test_a_failed_revoke_leaves_the_ledger_as_it_was(project: Project) -> None:
    text = ledger(project).read_bytes()
    result = project.cli("review", "revoke", CHAIN[0])
    assert result.exit_code == 2
    assert result.stderr == f"error: {ledger(project)}: revision {CHAIN[0]} has no approval to revoke\n"
    assert ledger(project).read_bytes() == text
    # the lock was released: the next write goes through at once
    assert project.cli("review", "approve", CHAIN[0], "--reviewer", "alice").exit_code == 0
