"""The production gate as a release engineer meets it, on every dialect.

Each scenario drives the command line (in-process, or as a subprocess for
stock Alembic) against real throwaway databases: a protected ``prod`` whose
``promote_from`` is ``staging``. A refusal must exit 3 with a message that
names what is wrong, leave prod's schema and version table exactly as they
were, and be recorded as a ``blocked`` run; what the gate lets through must
record who reviewed each step.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import CANDIDATE, PROD_HEAD, PROD_REVISIONS, TESTDATA, Project, make_project, query, schema_snapshot

# who approved the five demo revisions in envs/reviews.yaml
DEMO_REVIEWERS = ["alice", "alice", "alice", "bob", "bob"]
NEW = "a1b2c3d4e5f6"  # a revision written by a test on top of the demo's prod head


@pytest.fixture
def pair(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """staging and a protected prod promoted from it, each on a fresh database of the test's dialect."""
    urls = {"staging": db_factory(), "prod": db_factory()}
    return make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))


# ---------------------------------------------------------------------------------------------- helpers


def ok(project: Project, *args: str) -> Any:
    """Run a verb quietly and insist it succeeds."""
    result = project.cli("-q", *args)
    assert result.exit_code == 0, (args, result.output)
    return result


def script(project: Project, revision: str) -> Path:
    """Return the script of ``revision`` in versions_prod or versions_test."""
    found = [p for folder in ("versions_prod", "versions_test") for p in (project.root / folder).glob(f"{revision}_*.py")]
    assert len(found) == 1, found
    return found[0]


def shown(project: Project, revision: str) -> str:
    """Return a script's path as the orchestrator prints it (relative to the project root)."""
    return str(script(project, revision).relative_to(project.root))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def not_reviewed(project: Project, revision: str) -> str:
    return (f"revision {revision} ({shown(project, revision)}) is not reviewed; "
            f"run `orchestrator review approve {revision} --reviewer NAME`")


def not_acknowledged(project: Project, revision: str, rule: str, message: str) -> str:
    return (f"revision {revision} ({shown(project, revision)}): lint error {rule} ({message}) is not acknowledged; "
            f"approve it with --ack {rule}")


def refused(env: str, *reasons: str) -> str:
    """Return the stderr of a refusal with these reasons, as the CLI prints it."""
    if len(reasons) == 1:
        return f"error: {env}: refused: {reasons[0]}\n"
    return f"error: {env}: refused for {len(reasons)} reasons:\n" + "".join(f"  - {r}\n" for r in reasons)


def runs(project: Project, env: str, limit: int = 20) -> list[dict[str, Any]]:
    return project.json("runs", "--env", env, "--limit", str(limit))["runs"]


def step_reviewers(project: Project, env: str) -> list[tuple[str, str | None]]:
    """Return (revision, reviewer) of every succeeded upgrade step, oldest first."""
    rows = query(project.urls[env], "SELECT s.revision, s.reviewer FROM orchestrator_steps s "
                                    "JOIN orchestrator_runs r ON r.run_id = s.run_id "
                                    "WHERE s.status = 'succeeded' AND s.direction = 'up' ORDER BY s.started_at, s.seq")
    return [(r[0], r[1]) for r in rows]


def versions(project: Project, env: str) -> list[str]:
    return sorted(r[0] for r in query(project.urls[env], "SELECT version_num FROM alembic_version"))


def set_url(project: Project, env: str, url: str) -> None:
    """Point one environment of the project's registry at another database URL."""
    data = yaml.safe_load(project.registry_path.read_text())
    data["environments"][env]["url"] = url
    project.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))


def unreachable(dialect: str, tmp_path: Path) -> str:
    """Return a URL of the dialect that no server answers (SQLite: a file in a folder that does not exist)."""
    return {
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "mysql": "mysql+pymysql://root@127.0.0.1:1/nowhere",
        "sqlite": f"sqlite:///{tmp_path}/no/such/folder/staging.db",
    }[dialect]


def add_note_column(project: Project, revision: str = NEW, down: str = PROD_HEAD) -> Path:
    """Write a harmless revision (a nullable column) into versions_prod."""
    return project.write_revision("versions_prod", revision, down,
                                  'op.add_column("sessions", sa.Column("note", sa.String(20), nullable=True))',
                                  'op.drop_column("sessions", "note")', message="add note")


def at_prod_head(project: Project) -> None:
    """Bring staging, then prod, to the demo's prod head (the five approved revisions)."""
    ok(project, "upgrade", "--env", "staging")
    ok(project, "upgrade", "--env", "prod")
    assert versions(project, "prod") == [PROD_HEAD]


# ---------------------------------------------------------------------------------------------- the demo


def test_demo_rollout_and_release_pass_the_gate(demo: Project) -> None:
    """The README's main job passes the gate, and a released candidate reaches prod with its reviewer."""
    result = demo.cli("-q", "rollout")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[3].startswith(f"prod: upgraded (none) -> {PROD_HEAD} (5 steps, run ")
    assert step_reviewers(demo, "prod") == list(zip(PROD_REVISIONS, DEMO_REVIEWERS))
    prod = next(r for r in demo.json("status") if r["env"] == "prod")
    assert (prod["state"], prod["gate"]) == ("at heads", [])

    candidate = shown(demo, CANDIDATE)
    refusal = demo.cli("release", CANDIDATE)
    assert refusal.exit_code == 3
    assert refusal.stderr == (f"error: release: refused: revision {CANDIDATE} ({candidate}) is unreviewed; "
                              f"run `orchestrator review approve {CANDIDATE} --reviewer NAME` first\n")
    assert script(demo, CANDIDATE).parent.name == "versions_test"

    ok(demo, "review", "approve", CANDIDATE, "--reviewer", "carol", "--note", "nullable column + index")
    released = demo.cli("release", CANDIDATE)
    assert released.exit_code == 0, released.output
    moved = candidate.replace("versions_test", "versions_prod")
    assert released.stdout == f"released {CANDIDATE}: {candidate} -> {moved}\n"
    assert shown(demo, CANDIDATE) == moved and not (demo.root / candidate).exists()
    fresh = demo.json("review", "status", "--env", "prod", "--all")["revisions"]
    assert [(r["revision"], r["state"], r["reviewer"]) for r in fresh] == \
        list(zip(PROD_REVISIONS, ["reviewed"] * 5, DEMO_REVIEWERS)) + [(CANDIDATE, "reviewed", "carol")]

    again = demo.cli("-q", "rollout")
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[3].startswith(f"prod: upgraded {PROD_HEAD} -> {CANDIDATE} (1 step, run ")
    assert step_reviewers(demo, "prod") == list(zip(PROD_REVISIONS, DEMO_REVIEWERS)) + [(CANDIDATE, "carol")]
    assert versions(demo, "staging") == versions(demo, "prod") == [CANDIDATE]


# ---------------------------------------------------------------------------------------------- reviews


def test_unreviewed_then_stale_then_approved(pair: Project) -> None:
    at_prod_head(pair)
    path = add_note_column(pair)
    ok(pair, "upgrade", "--env", "staging")
    before = schema_snapshot(pair.urls["prod"])
    reason = not_reviewed(pair, NEW)

    prod = next(r for r in pair.json("status") if r["env"] == "prod")
    assert (prod["state"], prod["pending_revisions"], prod["gate"]) == ("pending; gate would refuse", [NEW], [reason])
    check = pair.cli("review", "check", "--env", "prod")
    assert (check.exit_code, check.stdout) == (3, f"prod: {reason}\n")

    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3
    assert result.stderr == refused("prod", reason)
    assert schema_snapshot(pair.urls["prod"]) == before
    rollout = pair.cli("-q", "rollout")  # staging has nothing to do; prod is promoted through the same gate
    assert (rollout.exit_code, rollout.stderr) == (3, refused("prod", reason))
    assert schema_snapshot(pair.urls["prod"]) == before
    blocked = runs(pair, "prod")[0]
    assert {k: blocked[k] for k in ("command", "status", "heads_before", "error", "steps")} == \
        {"command": "upgrade", "status": "blocked", "heads_before": [PROD_HEAD], "error": reason, "steps": []}

    approved = pair.cli("review", "approve", NEW, "--reviewer", "alice")
    assert approved.exit_code == 0
    old = sha(path)
    assert approved.stdout == f"approved {NEW} ({shown(pair, NEW)}, sha256 {old[:12]}) by alice\n"
    path.write_text(path.read_text().replace("String(20)", "String(21)"))  # one character
    new = sha(path)
    stale = (f"revision {NEW} ({shown(pair, NEW)}) changed since approval by alice (sha256 {old[:12]} approved, "
             f"{new[:12]} on disk); review it again: `orchestrator review approve {NEW} --reviewer NAME`")
    # staging ran the old content: the promotion check (by sha256) refuses too
    ran = runs(pair, "staging")[0]["run_id"][:12]
    content = (f"revision {NEW} ({shown(pair, NEW)}) is not the content 'staging' (promote_from) applied: sha256 "
               f"{old[:12]} applied there (run {ran}), {new[:12]} on disk now; re-run it on 'staging' first "
               "(downgrade it there, then `orchestrator upgrade --env staging`)")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", stale, content))
    assert schema_snapshot(pair.urls["prod"]) == before
    assert [(r["status"], r["error"]) for r in runs(pair, "prod", 3)] == \
        [("blocked", f"{stale}; {content}"), ("blocked", reason), ("blocked", reason)]
    status, = pair.json("review", "status", "--env", "prod")["revisions"]
    assert {k: status[k] for k in ("revision", "state", "reviewer", "sha256", "approved_sha256")} == \
        {"revision": NEW, "state": "stale", "reviewer": "alice", "sha256": new, "approved_sha256": old}
    check = pair.cli("review", "check", "--env", "prod")
    assert (check.exit_code, check.stdout) == (3, f"prod: {stale}\n")

    ok(pair, "review", "approve", NEW, "--reviewer", "bob")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", content))
    ok(pair, "downgrade", "--env", "staging", "-1")  # staging runs the approved content
    ok(pair, "upgrade", "--env", "staging")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"prod: upgraded {PROD_HEAD} -> {NEW} (1 step, run ")
    assert versions(pair, "prod") == [NEW]
    assert step_reviewers(pair, "prod")[-1] == (NEW, "bob")
    assert pair.cli("review", "check", "--env", "prod").stdout == "prod: 0 revision(s) checked; all reviewed\n"


def test_the_gate_judges_exactly_the_steps_of_the_target(pair: Project) -> None:
    """A partial upgrade runs when its own steps pass, whatever lies beyond; one step further is refused."""
    follow_up = "b0b0b0b0b0b0"
    add_note_column(pair)
    pair.write_revision("versions_prod", follow_up, NEW,
                        'op.add_column("sessions", sa.Column("note2", sa.String(20), nullable=True))',
                        'op.drop_column("sessions", "note2")', message="add note2")
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "upgrade", "--env", "prod", PROD_REVISIONS[3])
    assert pair.cli("-q", "upgrade", "--env", "prod", "+1").exit_code == 0
    assert versions(pair, "prod") == [PROD_HEAD]
    for target in ("+1", NEW, "heads"):
        result = pair.cli("-q", "upgrade", "--env", "prod", target)
        assert result.exit_code == 3, target
        assert result.stderr.startswith(f"error: prod: refused{':' if target != 'heads' else ' for 2 reasons:'}")
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ok(pair, "upgrade", "--env", "prod", NEW)
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", not_reviewed(pair, follow_up)))
    assert versions(pair, "prod") == [NEW]
    assert [r["status"] for r in runs(pair, "prod", 2)] == ["blocked", "succeeded"]


def test_review_status_check_and_revoke(pair: Project, orchestrator_dialect: str, tmp_path: Path) -> None:
    check = pair.cli("review", "check", "--env", "prod")
    assert (check.exit_code, check.stdout) == (0, "prod: 5 revision(s) checked; all reviewed\n")
    status = pair.json("review", "status", "--env", "prod")
    assert (status["env"], status["protected"]) == ("prod", True)
    assert [(r["revision"], r["state"], r["reviewer"]) for r in status["revisions"]] == \
        list(zip(PROD_REVISIONS, ["reviewed"] * 5, DEMO_REVIEWERS))

    revoked = pair.cli("review", "revoke", PROD_HEAD)
    assert (revoked.exit_code, revoked.stdout) == (0, f"revoked the approval of {PROD_HEAD}\n")
    again = pair.cli("review", "revoke", PROD_HEAD)
    assert again.exit_code == 2
    assert again.stderr == f"error: {pair.root / 'envs' / 'reviews.yaml'}: revision {PROD_HEAD} has no approval to revoke\n"
    last = pair.json("review", "status", "--env", "prod")["revisions"][-1]
    assert (last["revision"], last["state"], last["reviewer"], last["approved_sha256"]) == (PROD_HEAD, "unreviewed", None, None)
    reason = not_reviewed(pair, PROD_HEAD)
    check = pair.cli("--json", "review", "check", "--env", "prod")
    assert check.exit_code == 3
    assert json.loads(check.stdout) == {"env": "prod", "checked": list(PROD_REVISIONS), "problems": [reason]}

    ok(pair, "upgrade", "--env", "staging")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", reason))
    assert not {t for t in schema_snapshot(pair.urls["prod"]) if not t.startswith("orchestrator_")}
    assert runs(pair, "prod")[0]["status"] == "blocked"

    # --all judges every revision prod sees without its database
    set_url(pair, "prod", unreachable(orchestrator_dialect, tmp_path))
    everything = pair.cli("review", "check", "--env", "prod", "--all")
    assert (everything.exit_code, everything.stdout, everything.stderr) == (3, f"prod: {reason}\n", "")
    if orchestrator_dialect != "sqlite":  # a missing SQLite file reads as an empty database
        pending = pair.cli("review", "check", "--env", "prod")
        assert pending.exit_code == 1
        assert pending.stderr.startswith("error: environment 'prod': cannot connect to ")


# ---------------------------------------------------------------------------------------------- lint

DROP = "d40bc0100001"
NOT_NULL = "a77e11000002"
BATCH = "ba7c40000003"


def test_lint_errors_refuse_until_acknowledged(pair: Project, orchestrator_dialect: str) -> None:
    at_prod_head(pair)
    pair.write_revision("versions_prod", DROP, PROD_HEAD, 'op.drop_column("sessions", "workflow_data")',
                        message="drop workflow data")
    pair.write_revision("versions_prod", NOT_NULL, DROP,
                        'op.add_column("user_profiles", sa.Column("age", sa.Integer(), nullable=False))',
                        message="add age")
    pair.write_revision("versions_prod", BATCH, NOT_NULL,
                        'with op.batch_alter_table("career_reports") as batch:\n    batch.drop_column("body")',
                        message="drop report body")
    drop = ("drop-column", "drops column sessions.workflow_data")
    not_null = ("add-not-null-without-default", "adds NOT NULL column user_profiles.age without a server default")
    batch = ("not-analysable",
             'not analysable offline: batch mode on SQLite needs a live connection to reflect table "career_reports"') \
        if orchestrator_dialect == "sqlite" else ("drop-column", "drops column career_reports.body")

    lint = pair.json("lint", "--env", "staging", DROP, NOT_NULL, BATCH)
    assert (lint["dialect"], lint["revisions"]) == (orchestrator_dialect, [DROP, NOT_NULL, BATCH])
    assert [(f["revision"], f["rule"], f["severity"], f["message"]) for f in lint["findings"]] == [
        (DROP, drop[0], "error", drop[1]), (NOT_NULL, not_null[0], "error", not_null[1]),
        (BATCH, batch[0], "error", batch[1])]
    strict = pair.cli("lint", "--env", "staging", "--strict", DROP)
    assert strict.exit_code == 3 and "drops column sessions.workflow_data" in strict.stdout
    # on protected prod an unapproved script is not run to lint it (tests/test_lint_closed.py pins the finding)
    assert [f["rule"] for f in pair.json("lint", "--env", "prod", DROP)["findings"]] == ["not-analysable"]
    assert pair.cli("lint", "--env", "prod", "--strict", PROD_REVISIONS[0]).exit_code == 0

    ok(pair, "upgrade", "--env", "staging")  # staging is not protected: lint does not stop it
    before = schema_snapshot(pair.urls["prod"])
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3
    # unreviewed steps are not run to lint them on protected prod: being unreviewed is the reason
    assert result.stderr == refused("prod", not_reviewed(pair, DROP), not_reviewed(pair, NOT_NULL),
                                    not_reviewed(pair, BATCH))
    assert schema_snapshot(pair.urls["prod"]) == before

    for revision, (rule, message) in ((DROP, drop), (NOT_NULL, not_null), (BATCH, batch)):
        approved = pair.cli("review", "approve", revision, "--reviewer", "alice")
        assert approved.exit_code == 0
        assert approved.stderr == (f"warning: prod: lint error {rule} ({message}) is not acknowledged; "
                                   f"approve with --ack {rule} if it is intended\n")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3
    assert result.stderr == refused("prod", not_acknowledged(pair, DROP, *drop),
                                    not_acknowledged(pair, NOT_NULL, *not_null), not_acknowledged(pair, BATCH, *batch))
    assert schema_snapshot(pair.urls["prod"]) == before

    # acknowledging another rule does not do
    ok(pair, "review", "approve", DROP, "--reviewer", "alice", "--ack", "drop-table")
    assert not_acknowledged(pair, DROP, *drop) in pair.cli("-q", "upgrade", "--env", "prod").stderr

    for revision, (rule, _) in ((DROP, drop), (NOT_NULL, not_null), (BATCH, batch)):
        approved = pair.cli("review", "approve", revision, "--reviewer", "bob", "--ack", rule)
        assert (approved.exit_code, approved.stderr) == (0, "")
    row = next(r for r in pair.json("review", "status", "--env", "prod")["revisions"] if r["revision"] == DROP)
    assert row["lint"] == [{"rule": drop[0], "severity": "error", "message": drop[1], "acknowledged": True}]
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 0, result.output
    assert versions(pair, "prod") == [BATCH]
    assert step_reviewers(pair, "prod")[-3:] == [(DROP, "bob"), (NOT_NULL, "bob"), (BATCH, "bob")]
    snap = schema_snapshot(pair.urls["prod"])
    assert "workflow_data" not in snap["sessions"] and "age" in snap["user_profiles"] and "body" not in snap["career_reports"]


# ---------------------------------------------------------------------------------------------- promotion order


def test_prod_ahead_of_staging_is_refused(pair: Project) -> None:
    at_prod_head(pair)
    add_note_column(pair)
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "downgrade", "--env", "staging", PROD_REVISIONS[3])  # staging no longer has NEW nor the prod head
    before = schema_snapshot(pair.urls["prod"])

    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3
    reason = (f"'staging' (promote_from) has not applied {NEW}; "
              "promote it there first (`orchestrator promote --to staging`)")
    assert result.stderr == refused("prod", reason)
    assert (runs(pair, "prod")[0]["status"], runs(pair, "prod")[0]["error"]) == ("blocked", reason)

    promote = pair.cli("-q", "promote", "--to", "prod")
    assert promote.exit_code == 3
    assert promote.stderr == (
        f"error: prod: refused: it has revisions its source 'staging' has not applied: {PROD_HEAD}; "
        "promote never downgrades: apply them to 'staging' first or downgrade 'prod' explicitly\n")
    assert schema_snapshot(pair.urls["prod"]) == before


def test_refused_promote_is_recorded_as_blocked(pair: Project) -> None:
    at_prod_head(pair)
    ok(pair, "downgrade", "--env", "staging", PROD_REVISIONS[3])
    assert pair.cli("-q", "promote", "--to", "prod").exit_code == 3
    latest = runs(pair, "prod")[0]
    assert (latest["status"], latest["command"]) == ("blocked", "upgrade")
    assert PROD_HEAD in latest["error"]


def test_unreachable_staging_is_a_refusal(pair: Project, orchestrator_dialect: str, tmp_path: Path) -> None:
    at_prod_head(pair)
    add_note_column(pair)
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ok(pair, "upgrade", "--env", "staging")
    set_url(pair, "staging", unreachable(orchestrator_dialect, tmp_path))
    before = schema_snapshot(pair.urls["prod"])

    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1
    if orchestrator_dialect == "sqlite":
        assert result.stderr == refused("prod", "cannot read 'staging' (promote_from) to check the promotion order: "
                                                f"environment 'staging': database file {tmp_path}/no/such/folder/staging.db "
                                                "does not exist")
    else:
        assert result.stderr.startswith(
            "error: prod: refused: cannot read 'staging' (promote_from) to check the promotion order: "
            "environment 'staging': cannot connect to ")
        assert result.stderr.endswith("; check that the server is up and the URL is right\n")
    assert schema_snapshot(pair.urls["prod"]) == before
    blocked = runs(pair, "prod")[0]
    assert blocked["status"] == "blocked" and blocked["error"] == result.stderr.removeprefix("error: prod: refused: ").strip()
    assert not (tmp_path / "no").exists()


def test_unreachable_sqlite_staging_is_named_as_unreadable(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"staging": f"sqlite:///{tmp_path}/staging.db",
                                                  "prod": f"sqlite:///{tmp_path}/prod.db"},
                           promote_from={"prod": "staging"}, protected=("prod",))
    set_url(project, "staging", unreachable("sqlite", tmp_path))
    result = project.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "error: prod: refused: cannot read 'staging' (promote_from) to check the promotion order: ")


def open_files(pid: int) -> set[str]:
    """Return the files a process has open (Linux)."""
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass  # closed meanwhile
    except OSError:
        pass  # the process is gone
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see when the runner is waiting")
def test_a_script_edited_while_waiting_for_the_lock_is_not_run(tmp_path: Path) -> None:
    import fcntl
    import time

    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ("staging", "prod")}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))
    at_prod_head(project)
    path = add_note_column(project)
    ok(project, "review", "approve", NEW, "--reviewer", "alice")
    approved = sha(path)
    ok(project, "upgrade", "--env", "staging")
    database = f"{tmp_path}/prod.db"
    holder = os.open(database + ".lock", os.O_RDWR | os.O_CREAT)  # another runner holds prod's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
        runner = subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), "-q",
                                   "upgrade", "--env", "prod", "--lock-timeout", "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
        deadline = time.monotonic() + 60
        while database not in open_files(runner.pid):
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.02)
        # the runner has connected and now waits for the lock; the working copy changes under it
        path.write_text(path.read_text().replace('"note"', '"evil"'))
    finally:
        os.close(holder)
    out, err = runner.communicate(timeout=60)
    steps = query(urls["prod"], f"SELECT script_sha256, reviewer FROM orchestrator_steps WHERE revision = '{NEW}'")
    assert "evil" not in schema_snapshot(urls["prod"])["sessions"], (runner.returncode, out, err, steps)
    assert all(sha256 == approved for sha256, reviewer in steps if reviewer == "alice"), steps


# ---------------------------------------------------------------------------------------------- downgrade, stamp


def test_downgrade_and_stamp_need_force_and_reason(pair: Project) -> None:
    at_prod_head(pair)
    before = schema_snapshot(pair.urls["prod"])
    downgrade = "downgrade on protected environment 'prod' needs --force --reason TEXT"
    for extra in ((), ("--force",), ("--reason", "INC-42"), ("--force", "--reason", "  ")):
        result = pair.cli("-q", "downgrade", "--env", "prod", "-1", *extra)
        assert (result.exit_code, result.stderr) == (3, refused("prod", downgrade)), extra
    assert schema_snapshot(pair.urls["prod"]) == before
    assert [(r["command"], r["status"], r["error"]) for r in runs(pair, "prod", 4)] == [("downgrade", "blocked", downgrade)] * 4

    result = pair.cli("-q", "downgrade", "--env", "prod", "-1", "--force", "--reason", "rollback for INC-42")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"prod: downgraded {PROD_HEAD} -> {PROD_REVISIONS[3]} (1 step, run ")
    assert versions(pair, "prod") == [PROD_REVISIONS[3]]
    forced = runs(pair, "prod")[0]
    assert (forced["command"], forced["status"], forced["forced_reason"]) == ("downgrade", "succeeded", "rollback for INC-42")

    stamp = "stamp on protected environment 'prod' needs --force --reason TEXT"
    result = pair.cli("-q", "stamp", "--env", "prod", PROD_HEAD)
    assert (result.exit_code, result.stderr) == (3, refused("prod", stamp))
    assert versions(pair, "prod") == [PROD_REVISIONS[3]]
    result = pair.cli("-q", "stamp", "--env", "prod", PROD_HEAD, "--force", "--reason", "table restored from backup")
    assert result.exit_code == 0, result.output
    assert versions(pair, "prod") == [PROD_HEAD]
    forced = runs(pair, "prod")[0]
    assert (forced["command"], forced["status"], forced["forced_reason"]) == ("stamp", "succeeded", "table restored from backup")
    assert [(s["revision"], s["direction"]) for s in forced["steps"]] == [(PROD_HEAD, "stamp")]


# ---------------------------------------------------------------------------------------------- stock alembic


def alembic(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Run stock Alembic on the project's generated alembic.ini, as a user would."""
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    return subprocess.run([sys.executable, "-m", "alembic", "-c", "alembic.ini", *args], cwd=project.root,
                          capture_output=True, text=True, env=environ, timeout=120)


def test_stock_alembic_through_the_generated_ini_is_gated(pair: Project) -> None:
    at_prod_head(pair)
    add_note_column(pair)
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "ini", "--env", "prod", "-o", str(pair.root / "alembic.ini"))
    before = schema_snapshot(pair.urls["prod"])

    result = alembic(pair, "upgrade", "head")
    assert result.returncode != 0
    reason = not_reviewed(pair, NEW)
    assert f"FAILED: prod: refused: {reason}" in (result.stdout + result.stderr).splitlines()
    assert "Traceback" not in result.stdout + result.stderr
    assert schema_snapshot(pair.urls["prod"]) == before
    blocked = runs(pair, "prod")[0]
    assert (blocked["command"], blocked["status"], blocked["error"]) == ("upgrade", "blocked", reason)

    for args, verb in ((("downgrade", "-1"), "downgrade"), (("stamp", PROD_REVISIONS[0]), "stamp")):
        result = alembic(pair, *args)
        assert result.returncode != 0
        assert (f"FAILED: prod: refused: {verb} on protected environment 'prod' needs --force --reason TEXT"
                in (result.stdout + result.stderr).splitlines())
        assert schema_snapshot(pair.urls["prod"]) == before

    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    result = alembic(pair, "upgrade", "head")
    assert result.returncode == 0, result.stdout + result.stderr
    assert versions(pair, "prod") == [NEW]
    assert step_reviewers(pair, "prod")[-1] == (NEW, "alice")


# ---------------------------------------------------------------------------------------------- verify


def test_verify_finds_edited_scripts_and_unknown_revisions(pair: Project) -> None:
    at_prod_head(pair)
    clean = pair.cli("verify")
    assert (clean.exit_code, clean.stdout) == (0, "verified: no integrity findings\n")

    path = script(pair, PROD_REVISIONS[1])
    original = path.read_bytes()
    applied = sha(path)
    path.write_bytes(original + b"# edited after it was applied\n")
    lines = []
    for env in ("staging", "prod"):
        run = next(r for r in runs(pair, env) if any(s["revision"] == PROD_REVISIONS[1] for s in r["steps"]))
        step = next(s for s in run["steps"] if s["revision"] == PROD_REVISIONS[1])
        when = step["started_at"][:19].replace("T", " ")
        lines.append(f"environment '{env}': revision {PROD_REVISIONS[1]} ({shown(pair, PROD_REVISIONS[1])}) changed after "
                     f"it was applied: sha256 {applied} when applied (run {run['run_id'][:12]}, {when} UTC), "
                     f"{sha(path)} on disk")
    result = pair.cli("verify")
    assert (result.exit_code, result.stdout) == (5, "".join(f"{line}\n" for line in lines))
    only_prod = pair.cli("--json", "verify", "--env", "prod")
    assert only_prod.exit_code == 5
    assert json.loads(only_prod.stdout) == {"findings": [lines[1]], "unreachable": []}

    path.write_bytes(original)
    assert pair.cli("verify").exit_code == 0

    engine = pair.engine("staging")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed0001'")
    engine.dispose()
    result = pair.cli("verify")
    assert (result.exit_code, result.stdout) == (
        5, "environment 'staging': the database is at revision f00dfeed0001, which is in no version folder\n")
    assert pair.cli("verify", "--env", "prod").exit_code == 0


# ---------------------------------------------------------------------------------------------- release (no database)


def test_release_refuses_what_would_leave_prod_unclosed(tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ("dev", "test", "staging", "prod")}
    project = make_project(tmp_path / "project", urls, protected=("prod",),
                           promote_from={"test": "dev", "staging": "test", "prod": "staging"})
    follow_up = "c0ffee000001"
    project.write_revision("versions_test", follow_up, CANDIDATE,
                           'op.add_column("messages", sa.Column("pinned", sa.Boolean(), nullable=True))',
                           message="add pinned")
    ok(project, "review", "approve", follow_up, "--reviewer", "carol")
    before = sorted(p.name for p in (project.root / "versions_prod").iterdir())

    result = project.cli("release", follow_up)
    assert result.exit_code == 3
    assert result.stderr == (
        f"error: release: refused: moving {follow_up} would break the graph: environment 'staging': revision "
        f"{follow_up} (versions_prod/{script(project, follow_up).name}) depends on {CANDIDATE}, which is only in "
        f"versions_test/; promote {CANDIDATE} into a folder 'staging' lists first\n")
    assert sorted(p.name for p in (project.root / "versions_prod").iterdir()) == before
    assert script(project, follow_up).parent.name == "versions_test"

    # a stale approval is not enough either
    ok(project, "review", "approve", CANDIDATE, "--reviewer", "carol")
    candidate = script(project, CANDIDATE)
    candidate.write_text(candidate.read_text() + "# edited\n")
    result = project.cli("release", CANDIDATE)
    assert (result.exit_code, result.stderr) == (3, (
        f"error: release: refused: revision {CANDIDATE} ({shown(project, CANDIDATE)}) is stale; "
        f"run `orchestrator review approve {CANDIDATE} --reviewer NAME` first\n"))

    ok(project, "review", "approve", CANDIDATE, "--reviewer", "carol")
    ok(project, "release", CANDIDATE)
    ok(project, "release", follow_up)
    assert {script(project, r).parent.name for r in (CANDIDATE, follow_up)} == {"versions_prod"}
    assert script(project, TESTDATA).parent.name == "versions_test"
    check = project.cli("review", "check", "--env", "prod", "--all")
    assert (check.exit_code, check.stdout) == (0, "prod: 7 revision(s) checked; all reviewed\n")
    already = project.cli("release", CANDIDATE)
    assert (already.exit_code, already.stderr) == (2, f"error: revision {CANDIDATE} is already in versions_prod/\n")
