"""Promotion by content, and offline SQL under the gate, on every dialect.

A protected ``prod`` promoted from ``staging``: prod accepts a revision only
when staging ran a succeeded upgrade of it with the sha256 the script has now
(a stamp or adopt there is not an applied migration). ``upgrade --sql`` is
judged by the same gate, starts from the database's current heads, and names
the revision that cannot render offline.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from conftest import (
    CANDIDATE,
    PROD_HEAD,
    PROD_REVISIONS,
    TESTDATA,
    Project,
    database_snapshot,
    make_project,
)

from orchestrator import commands
from orchestrator.errors import MigrationFailed
from orchestrator.recorder import HISTORY_TABLES

NEW = "a1b2c3d4e5f6"  # a revision written by a test on top of the demo's prod head


@pytest.fixture
def pair(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """staging and a protected prod promoted from it, each on a fresh database of the test's dialect."""
    urls = {"staging": db_factory(), "prod": db_factory()}
    return make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))


def ok(project: Project, *args: str) -> Any:
    result = project.cli("-q", *args)
    assert result.exit_code == 0, (args, result.output)
    return result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(env: str, *reasons: str) -> str:
    if len(reasons) == 1:
        return f"error: {env}: refused: {reasons[0]}\n"
    return f"error: {env}: refused for {len(reasons)} reasons:\n" + "".join(f"  - {r}\n" for r in reasons)


def runs(project: Project, env: str, limit: int = 20) -> list[dict[str, Any]]:
    return project.json("runs", "--env", env, "--limit", str(limit))["runs"]


def add_note_column(project: Project, width: int = 20) -> Path:
    return project.write_revision("versions_prod", NEW, PROD_HEAD,
                                  f'op.add_column("sessions", sa.Column("note", sa.String({width}), nullable=True))',
                                  'op.drop_column("sessions", "note")', message="add note")


def shown(path: Path, project: Project) -> str:
    return str(path.relative_to(project.root))


def not_reviewed(project: Project, path: Path) -> str:
    return (f"revision {NEW} ({shown(path, project)}) is not reviewed; "
            f"run `orchestrator review approve {NEW} --reviewer NAME`")


# ---------------------------------------------------------------------------------------------- by content


def test_promote_refuses_content_staging_never_ran(pair: Project) -> None:
    """Staging applies X at content A; X is edited to B and approved; prod refuses naming X, A and B."""
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "upgrade", "--env", "prod")
    path = add_note_column(pair)
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    a = sha(path)
    ok(pair, "upgrade", "--env", "staging")
    ran = runs(pair, "staging")[0]
    path.write_text(path.read_text().replace("String(20)", "String(30)"))
    b = sha(path)
    ok(pair, "review", "approve", NEW, "--reviewer", "bob")
    before = database_snapshot(pair.urls["prod"])

    reason = (f"revision {NEW} ({shown(path, pair)}) is not the content 'staging' (promote_from) applied: "
              f"sha256 {a[:12]} applied there (run {ran['run_id'][:12]}), {b[:12]} on disk now; re-run it on "
              "'staging' first (downgrade it there, then `orchestrator upgrade --env staging`)")
    for args in (("promote", "--to", "prod"), ("upgrade", "--env", "prod")):
        after_refusal = pair.cli("-q", *args)
        assert (after_refusal.exit_code, after_refusal.stderr) == (3, refused("prod", reason)), args
        blocked = runs(pair, "prod")[0]
        assert {k: blocked[k] for k in ("command", "status", "heads_before", "error", "steps")} == \
            {"command": "upgrade", "status": "blocked", "heads_before": [PROD_HEAD], "error": reason, "steps": []}
    snapshot = database_snapshot(pair.urls["prod"])
    assert snapshot["schema"] == before["schema"] and snapshot["alembic_version"] == before["alembic_version"]
    assert len(snapshot["orchestrator_runs"]) == len(before["orchestrator_runs"]) + 2
    assert snapshot["orchestrator_steps"] == before["orchestrator_steps"]

    # verify still flags staging's applied script as edited
    verify = pair.cli("verify", "--env", "staging")
    when = ran["steps"][0]["started_at"][:19].replace("T", " ")
    assert (verify.exit_code, verify.stdout) == (5, (
        f"environment 'staging': revision {NEW} ({shown(path, pair)}) changed after it was applied: sha256 {a} when "
        f"applied (run {ran['run_id'][:12]}, {when} UTC), {b} on disk\n"))

    # re-running the new content on staging lets it through
    ok(pair, "downgrade", "--env", "staging", "-1")
    ok(pair, "upgrade", "--env", "staging")
    promoted = pair.cli("-q", "promote", "--to", "prod")
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stdout.startswith(f"prod: upgraded {PROD_HEAD} -> {NEW} (1 step, run ")
    assert runs(pair, "prod")[0]["steps"][0]["script_sha256"] == b


def test_a_stamp_on_staging_is_not_an_applied_migration(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    urls = {"staging": db_factory(), "prod": db_factory()}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"},
                           protected=("staging", "prod"))
    ok(project, "stamp", "--env", "staging", PROD_HEAD, "--force", "--reason", "schema restored from a dump")

    reason = (f"'staging' (promote_from) only stamped {', '.join(PROD_REVISIONS)} (a stamp or adopt is not an applied "
              "migration; no succeeded upgrade of them is recorded there); upgrade them there first")
    result = project.cli("-q", "promote", "--to", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", reason))
    blocked, = runs(project, "prod")
    assert (blocked["command"], blocked["status"], blocked["error"]) == ("upgrade", "blocked", reason)
    assert set(database_snapshot(project.urls["prod"])["schema"]) == set(HISTORY_TABLES)


def test_a_downgrade_then_stamp_on_staging_undoes_the_upgrade(pair: Project) -> None:
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "upgrade", "--env", "prod", PROD_REVISIONS[3])
    ok(pair, "downgrade", "--env", "staging", "-1")
    ok(pair, "stamp", "--env", "staging", PROD_HEAD)  # the version table says applied; the schema lacks it
    reason = (f"'staging' (promote_from) only stamped {PROD_HEAD} (a stamp or adopt is not an applied migration; "
              "no succeeded upgrade of it is recorded there); upgrade it there first")
    result = pair.cli("-q", "promote", "--to", "prod")
    assert (result.exit_code, result.stderr) == (3, refused("prod", reason))
    ok(pair, "stamp", "--env", "staging", PROD_REVISIONS[3])
    ok(pair, "upgrade", "--env", "staging")
    assert pair.cli("-q", "promote", "--to", "prod").exit_code == 0


# ---------------------------------------------------------------------------------------------- upgrade --sql


def test_offline_sql_on_prod_is_gated(pair: Project) -> None:
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "upgrade", "--env", "prod")
    path = add_note_column(pair)
    ok(pair, "upgrade", "--env", "staging")
    before = database_snapshot(pair.urls["prod"])
    start = f"prod: rendering from the database's current heads {PROD_HEAD}\n"

    result = pair.cli("upgrade", "--env", "prod", "--sql")
    assert (result.exit_code, result.stdout) == (3, "")
    assert result.stderr == start + refused("prod", not_reviewed(pair, path))
    blocked = runs(pair, "prod")[0]
    assert {k: blocked[k] for k in ("command", "target", "status", "heads_before", "error", "forced_reason")} == {
        "command": "upgrade --sql", "target": "heads", "status": "blocked", "heads_before": [PROD_HEAD],
        "error": not_reviewed(pair, path), "forced_reason": None}

    # --force never runs code a protected environment has not approved: rendering would run the script
    unapproved = pair.cli("upgrade", "--env", "prod", "--sql", "--force", "--reason", "DBA applies it by hand, CHG-7")
    assert (unapproved.exit_code, unapproved.stdout) == (3, "")
    assert unapproved.stderr == start + (
        f"error: environment 'prod': revision {NEW} ({shown(path, pair)}) is not approved at sha256 "
        f"{sha(path)[:12]}, so none of its code runs on this protected environment; review it: "
        f"`orchestrator review approve {NEW} --reviewer NAME`\n")

    # approved content the gate still refuses (staging no longer has it): --force --reason prints it, recorded
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ok(pair, "downgrade", "--env", "staging", PROD_HEAD)
    forced = pair.cli("upgrade", "--env", "prod", "--sql", "--force", "--reason", "DBA applies it by hand, CHG-7")
    assert (forced.exit_code, forced.stderr) == (0, start)
    # only the pending step, from the current heads: no table of the applied revisions is created again
    assert f"-- Running upgrade {PROD_HEAD} -> {NEW}" in forced.stdout
    assert "note VARCHAR(20)" in forced.stdout
    assert "CREATE TABLE" not in forced.stdout
    assert forced.stdout.count("-- Running upgrade") == 1
    run = runs(pair, "prod")[0]
    assert {k: run[k] for k in ("command", "target", "status", "heads_before", "heads_after", "forced_reason",
                                "error", "steps")} == {
        "command": "upgrade --sql", "target": "heads", "status": "succeeded", "heads_before": [PROD_HEAD],
        "heads_after": [PROD_HEAD], "forced_reason": "DBA applies it by hand, CHG-7", "error": None, "steps": []}
    snapshot = database_snapshot(pair.urls["prod"])
    assert snapshot["schema"] == before["schema"] and snapshot["alembic_version"] == before["alembic_version"]
    assert snapshot["orchestrator_steps"] == before["orchestrator_steps"]

    # --force without a reason prints nothing
    bare = pair.cli("upgrade", "--env", "prod", "--sql", "--force")
    assert (bare.exit_code, bare.stdout) == (3, "")

    # approved and applied on staging, the same SQL prints without a record (nothing was overridden)
    ok(pair, "upgrade", "--env", "staging")
    count = len(runs(pair, "prod"))
    approved = pair.cli("upgrade", "--env", "prod", "--sql")
    assert (approved.exit_code, approved.stderr) == (0, start)
    assert approved.stdout == forced.stdout
    assert len(runs(pair, "prod")) == count


def test_offline_sql_with_an_explicit_range_is_judged_from_it(pair: Project) -> None:
    ok(pair, "upgrade", "--env", "staging")
    path = add_note_column(pair)
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ranged = pair.cli("upgrade", "--env", "prod", "--sql", f"{PROD_REVISIONS[3]}:{PROD_HEAD}")
    assert (ranged.exit_code, ranged.stderr) == (0, "")  # no note: the range says where it starts
    assert ranged.stdout.count("-- Running upgrade") == 1 and f"-> {PROD_HEAD}" in ranged.stdout
    path.write_text(path.read_text().replace("String(20)", "String(30)"))  # stale now
    assert pair.cli("upgrade", "--env", "prod", "--sql", f"base:{PROD_HEAD}").exit_code == 0
    assert pair.cli("upgrade", "--env", "prod", "--sql", f"{PROD_HEAD}:{NEW}").exit_code == 3


def test_offline_sql_starts_from_every_current_head(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    """A database at two heads renders only the merge on top of them."""
    project = make_project(tmp_path / "project", {"dev": db_factory()})
    ok(project, "upgrade", "--env", "dev")
    merge = "f00d00000001"
    project.write_revision("versions_test", merge, (TESTDATA, CANDIDATE), "pass", message="merge heads")  # type: ignore[arg-type]
    heads = ", ".join(sorted([TESTDATA, CANDIDATE]))
    result = project.cli("upgrade", "--env", "dev", "--sql")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"dev: rendering from the database's current heads {heads}\n"
    assert result.stdout.count("-- Running upgrade") == 1
    assert f"-- Running upgrade {heads} -> {merge}" in result.stdout
    assert "CREATE TABLE" not in result.stdout


def test_offline_sql_from_base_when_the_database_is_unreachable(pair: Project, orchestrator_dialect: str,
                                                                tmp_path: Path) -> None:
    data = yaml.safe_load(pair.registry_path.read_text())
    data["environments"]["staging"]["url"] = {
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "mysql": "mysql+pymysql://root@127.0.0.1:1/nowhere",
        "sqlite": f"sqlite:///{tmp_path}/no/such/folder/staging.db"}[orchestrator_dialect]
    pair.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = pair.cli("upgrade", "--env", "staging", "--sql")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE alembic_version" in result.stdout
    assert result.stdout.count("-- Running upgrade") == len(PROD_REVISIONS)
    if orchestrator_dialect == "sqlite":  # a missing SQLite file is an empty database
        assert result.stderr == "staging: rendering from base: the database has no revision applied\n"
        assert not (tmp_path / "no").exists()
    else:
        assert result.stderr.startswith("staging: rendering from base: the database is unreachable: "
                                        "environment 'staging': cannot connect to ")
        assert result.stderr.endswith("; pass FROM:TO to choose the start\n")


def test_a_script_that_cannot_render_offline_is_named_exit_1(pair: Project) -> None:
    ok(pair, "upgrade", "--env", "staging")
    path = pair.write_revision("versions_prod", NEW, PROD_HEAD,
                               'count = op.get_bind().execute(sa.text("SELECT count(*) FROM sessions")).scalar()',
                               message="reads rows")
    message = (f"environment 'staging': revision {NEW} ({shown(path, pair)}) cannot render as SQL offline: "
               "AttributeError: 'NoneType' object has no attribute 'scalar'; a script that reads the database (or uses "
               "batch mode on SQLite) cannot run offline: skip that part under `context.is_offline_mode()`, or "
               "upgrade without --sql")
    result = pair.cli("-q", "upgrade", "--env", "staging", "--sql")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"staging: rendering from the database's current heads {PROD_HEAD}\nerror: {message}\n"
    ranged = pair.cli("upgrade", "--env", "staging", "--sql", f"base:{NEW}")
    assert (ranged.exit_code, ranged.stderr) == (1, f"error: {message}\n")
    with pytest.raises(MigrationFailed) as info:
        commands.upgrade(pair.ctx("staging"), sql=True)
    assert (info.value.revision, info.value.exit_code, str(info.value)) == (NEW, 1, message)


def test_a_refusal_that_cannot_be_recorded_is_still_a_refusal(pair: Project, orchestrator_dialect: str,
                                                              tmp_path: Path) -> None:
    ok(pair, "upgrade", "--env", "staging")
    data = yaml.safe_load(pair.registry_path.read_text())
    data["environments"]["prod"]["url"] = {
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        "mysql": "mysql+pymysql://root@127.0.0.1:1/nowhere",
        "sqlite": f"sqlite:///{tmp_path}/no/such/folder/prod.db"}[orchestrator_dialect]
    pair.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    path = add_note_column(pair)
    ok(pair, "upgrade", "--env", "staging")
    result = pair.cli("upgrade", "--env", "prod", "--sql")
    assert (result.exit_code, result.stdout) == (3, "")
    lines = result.stderr.splitlines()
    if orchestrator_dialect == "sqlite":  # a missing SQLite file is an empty database: the refusal is recorded in it
        assert lines == ["prod: rendering from base: the database has no revision applied",
                         f"error: prod: refused: {not_reviewed(pair, path)}"]
        assert [(r["command"], r["status"]) for r in runs(pair, "prod")] == [("upgrade --sql", "blocked")]
        return
    assert lines[:3] == [lines[0], "error: prod: refused for 2 reasons:", f"  - {not_reviewed(pair, path)}"]
    assert lines[0].startswith("prod: rendering from base: the database is unreachable: ")
    assert lines[3].startswith("  - this refusal is not recorded: environment 'prod': cannot connect to ")
    assert len(lines) == 4
    # a forced print of approved content (still refused: staging no longer has it) that cannot be recorded
    ok(pair, "review", "approve", NEW, "--reviewer", "alice")
    ok(pair, "downgrade", "--env", "staging", PROD_HEAD)
    forced = pair.cli("upgrade", "--env", "prod", "--sql", "--force", "--reason", "CHG-8")
    assert (forced.exit_code, forced.stdout) == (1, "")
    assert forced.stderr.splitlines()[1].startswith(
        "error: environment 'prod': cannot record the forced `upgrade --sql`, so its SQL is not printed: ")
