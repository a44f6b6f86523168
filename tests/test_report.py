"""The audit report: the matrix, per-environment facts, notable runs, formats, escaping, unreachable databases."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import CANDIDATE, PROD_HEAD, PROD_REVISIONS, TESTDATA, Project, make_project, query, revision_source
from orchestrator.recorder import history_tables
from orchestrator.report import Report

ALL = (*PROD_REVISIONS, TESTDATA, CANDIDATE)
HOSTILE = "<script>alert(1)</script> & \"quoted\" \x1b[31mred\x1b[0m"


def report_json(project: Project, *args: str) -> dict:
    result = project.cli("report", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    Report.model_validate(data)  # the documented schema
    return data


def details(data: dict, env: str) -> dict:
    return next(d for d in data["details"] if d["env"] == env)


def test_after_rollout_json_lists_every_prod_revision_with_operator_time_duration_reviewer(demo: Project) -> None:
    assert demo.cli("-q", "rollout", env={"ORCHESTRATOR_OPERATOR": "carol@ci"}).exit_code == 0
    data = report_json(demo)
    assert data["schema_version"] == 1
    assert data["environments"] == ["dev", "test", "staging", "prod"]
    assert [r["revision"] for r in data["revisions"]] == list(ALL)
    prod = details(data, "prod")
    assert prod["reachable"] is True and prod["protected"] is True and prod["promote_from"] == "staging"
    assert prod["current_heads"] == [PROD_HEAD] and prod["pending"] == []
    assert [a["revision"] for a in prod["applied"]] == list(PROD_REVISIONS)
    reviewers = {"4a1e7c2b9d10": "alice", "7c3d5e9f1a22": "alice", "9e2b4d6f8a31": "alice",
                 "b5f8a1c3e742": "bob", "d0c6e2a4f853": "bob"}
    for applied in prod["applied"]:
        assert applied["operator"] == "carol@ci"
        assert applied["reviewer"] == reviewers[applied["revision"]]
        assert applied["review_state"] == "reviewed"
        assert applied["duration_ms"] is not None and applied["duration_ms"] >= 0
        assert datetime.fromisoformat(applied["applied_at"].rstrip("Z")) > datetime.utcnow() - timedelta(minutes=10)
        assert applied["script_matches"] is True and applied["recorded_sha256"] == applied["script_sha256"]
    assert prod["run_count"] == 1 and prod["step_count"] == 5 and prod["notable_runs"] == []
    rows = {row["revision"]: row["cells"] for row in data["matrix"]}
    assert rows[CANDIDATE]["dev"]["state"] == "applied" and rows[CANDIDATE]["dev"]["applied_at"]
    assert rows[CANDIDATE]["prod"] == {"state": "not visible", "applied_at": None}
    assert rows[PROD_HEAD]["prod"]["applied_at"] == prod["applied"][-1]["applied_at"]


def test_matrix_shows_pending_and_stamped_revisions(demo: Project) -> None:
    assert demo.cli("-q", "upgrade", "--env", "dev", PROD_REVISIONS[1]).exit_code == 0
    assert demo.cli("-q", "stamp", "--env", "test", PROD_REVISIONS[0]).exit_code == 0
    data = report_json(demo, "--env", "dev", "--env", "test")
    rows = {row["revision"]: row["cells"] for row in data["matrix"]}
    assert rows[PROD_REVISIONS[1]]["dev"]["state"] == "applied"
    assert rows[PROD_REVISIONS[2]]["dev"] == {"state": "pending", "applied_at": None}
    assert details(data, "dev")["pending"] == [*PROD_REVISIONS[2:], TESTDATA, CANDIDATE]
    stamped = details(data, "test")["applied"]
    assert [(a["revision"], a["operator"] is not None) for a in stamped] == [(PROD_REVISIONS[0], True)]
    lines = {line.split()[0]: line.split() for line in demo.cli("report", "--env", "dev", "--env", "test").stdout.splitlines()
             if line[:12] in ALL}
    assert lines[PROD_REVISIONS[1]][-4:-1] == ["2026-11-22", lines[PROD_REVISIONS[1]][-2], "pending"] or \
        lines[PROD_REVISIONS[1]][-1] == "pending"
    assert lines[PROD_REVISIONS[2]][-2:] == ["pending", "pending"]
    assert lines[PROD_REVISIONS[0]][-6] == "applied" and lines[PROD_REVISIONS[0]][-3] == "applied"


def test_failed_blocked_forced_and_interrupted_runs_are_listed_with_their_reasons(demo: Project) -> None:
    assert demo.cli("-q", "rollout").exit_code == 0
    # blocked: an unreviewed revision on prod
    demo.write_revision("versions_prod", "aa11bb22cc33", PROD_HEAD, "op.add_column('messages', sa.Column('x', sa.Integer))",
                        message="add x")
    assert demo.cli("-q", "upgrade", "--env", "staging").exit_code == 0
    assert demo.cli("-q", "upgrade", "--env", "prod").exit_code == 3
    # forced: a downgrade on prod with a reason
    assert demo.cli("-q", "downgrade", "--env", "prod", PROD_REVISIONS[3], "--force", "--reason", "INC-42 rollback").exit_code == 0
    # failed: a revision that raises, on staging
    demo.write_revision("versions_prod", "dd44ee55ff66", "aa11bb22cc33", "raise RuntimeError('boom in dd44')",
                        message="broken")
    assert demo.cli("-q", "upgrade", "--env", "staging").exit_code == 1
    data = report_json(demo, "--env", "staging", "--env", "prod")
    prod_runs = details(data, "prod")["notable_runs"]
    assert [(r["status"], r["command"], r["forced"]) for r in prod_runs] == [("blocked", "upgrade", False),
                                                                             ("succeeded", "downgrade", True)]
    assert "aa11bb22cc33" in prod_runs[0]["reason"] and "not reviewed" in prod_runs[0]["reason"]
    assert prod_runs[1]["reason"] == "INC-42 rollback"
    failed = details(data, "staging")["notable_runs"]
    assert [r["status"] for r in failed] == ["failed"]
    assert failed[0]["steps"] == [{"revision": "dd44ee55ff66", "direction": "up", "status": "failed",
                                   "error": "boom in dd44"}]
    text = demo.cli("report", "--env", "prod").stdout
    assert "FORCED downgrade" in text and "reason: INC-42 rollback" in text and "BLOCKED upgrade" in text


def test_a_run_left_running_by_a_dead_runner_shows_as_interrupted(single: Project) -> None:
    assert single.cli("-q", "upgrade").exit_code == 0
    run_id = uuid.uuid4().hex
    engine = single.engine("main")
    with engine.begin() as conn:  # what a runner killed with -9 leaves behind
        conn.execute(history_tables()[0].insert().values(
            run_id=run_id, env="main", command="upgrade", target="heads", heads_before=PROD_HEAD, status="running",
            started_at=datetime.utcnow(), operator="dave@box", tool_version="0", alembic_version="0"))
    engine.dispose()
    runs = report_json(single)["details"][0]["notable_runs"]
    assert [(r["run_id"], r["status"], r["recorded_status"]) for r in runs] == [(run_id, "interrupted", "running")]
    assert runs[0]["reason"] == ("its runner is gone (the lock is free); recorded as running until the next run "
                                 "takes the lock")
    assert query(single.urls["main"], "SELECT status FROM orchestrator_runs WHERE run_id = :r", r=run_id) == [("running",)]


def test_an_edited_script_is_flagged_and_since_limits_the_period(single: Project) -> None:
    assert single.cli("-q", "upgrade").exit_code == 0
    path = next((single.root / "versions_prod").glob("9e2b4d6f8a31_*.py"))
    path.write_text(path.read_text() + "\n# edited after it was applied\n")
    applied = {a["revision"]: a for a in report_json(single)["details"][0]["applied"]}
    assert applied["9e2b4d6f8a31"]["script_matches"] is False
    assert applied["9e2b4d6f8a31"]["review_state"] == "stale"
    assert applied[PROD_HEAD]["script_matches"] is True
    assert "NO (edited since applied)" in single.cli("report").stdout
    tomorrow = (datetime.utcnow() + timedelta(days=1)).strftime("%Y-%m-%d")
    later = report_json(single, "--since", tomorrow)
    assert later["since"] == f"{tomorrow}T00:00:00Z"
    assert later["details"][0]["applied"] == [] and later["details"][0]["run_count"] == 0
    assert later["details"][0]["current_heads"] == [PROD_HEAD]  # the state is today's, whatever the period
    assert len(report_json(single, "--since", "2000-01-01")["details"][0]["applied"]) == 5


def test_an_unreachable_environment_is_reported_and_the_others_still_covered(demo: Project) -> None:
    assert demo.cli("-q", "rollout").exit_code == 0
    registry = demo.registry_path.read_text()
    demo.registry_path.write_text(registry.replace(demo.urls["staging"],
                                                   "postgresql+psycopg://auditor:Sentinel-Pw-9@127.0.0.1:1/nowhere"))
    result = demo.run("report", "--format", "json")
    assert result.returncode == 1
    assert result.stderr == ("error: environment 'staging': cannot connect to postgresql+psycopg://auditor:***@127.0.0.1:1"
                             "/nowhere: " + result.stderr.split("/nowhere: ", 1)[1])
    assert "Traceback" not in result.stderr and "Sentinel-Pw-9" not in result.stdout + result.stderr
    data = json.loads(result.stdout)
    staging = details(data, "staging")
    assert staging["reachable"] is False and staging["error"].startswith("environment 'staging': cannot connect")
    assert {row["cells"]["staging"]["state"] for row in data["matrix"]} == {"unknown", "not visible"}
    assert [a["revision"] for a in details(data, "prod")["applied"]] == list(PROD_REVISIONS)
    html = demo.run("report", "--format", "html").stdout
    assert "staging (..." not in html and "UNREACHABLE: environment &#x27;staging&#x27;: cannot connect" in html


@pytest.mark.parametrize("fmt", ["text", "json", "markdown", "html"])
def test_no_password_in_any_format(fmt: str, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"main": f"sqlite:///{tmp_path / 'main.db'}",
                                            "down": "mysql+pymysql://u:Sentinel-Pw-9@127.0.0.1:1/x"})
    assert project.cli("-q", "upgrade", "--env", "main").exit_code == 0
    out = project.run("report", "--format", fmt, "-o", str(tmp_path / "report.out"))
    written = (tmp_path / "report.out").read_text()
    assert out.returncode == 1 and "Sentinel-Pw-9" not in written + out.stdout + out.stderr
    assert ("u:\\*\\*\\*@" if fmt == "markdown" else "u:***@") in written  # masked, not dropped


def hostile_project(tmp_path: Path, url: str) -> Project:
    project = make_project(tmp_path / "p", {"main": url}, copy_demo=False)
    (project.root / "versions_prod" / "0a0b0c0d0e0f_hostile.py").write_text(revision_source(
        "0a0b0c0d0e0f", None, "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))", message=HOSTILE))
    (project.root / "envs" / "reviews.yaml").write_text("version: 1\napprovals: []\n")
    assert project.cli("review", "approve", "0a0b0c0d0e0f", "--reviewer", "<img src=x onerror=alert(2)>").exit_code == 0
    assert project.cli("-q", "upgrade", env={"ORCHESTRATOR_OPERATOR": "<b onmouseover=alert(3)>op</b>"}).exit_code == 0
    return project


def test_hostile_messages_and_reviewers_are_inert_in_every_format(tmp_path: Path, db_factory) -> None:
    project = hostile_project(tmp_path, db_factory())
    text = project.cli("report").stdout
    assert "\x1b" not in text and "<script>alert(1)</script>" in text  # plain text: shown as text, escapes neutralised
    markdown = project.cli("report", "--format", "markdown").stdout
    assert "<script>" not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "<img" not in markdown and "\x1b" not in markdown
    page = project.cli("report", "--format", "html").stdout
    assert "<script" not in page.lower() and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "&lt;b onmouseover=alert(3)&gt;op&lt;/b&gt;" in page
    assert "<b " not in page and "\x1b" not in page
    data = json.loads(project.cli("report", "--format", "json").stdout)
    assert data["revisions"][0]["message"] == HOSTILE  # JSON carries the value itself; escaping is the reader's


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian's chromium is not installed: `apt-get install chromium` (.ci/run installs it)")
    return found


def headless(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'chromium'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_html_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    browser = chromium()  # the page does not depend on the dialect: rendered once, on SQLite
    project = hostile_project(tmp_path, f"sqlite:///{tmp_path / 'main.db'}")
    page = tmp_path / "report.html"
    assert project.cli("report", "--format", "html", "-o", str(page)).exit_code == 0
    dom = headless(browser, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table id="matrix">' in dom.stdout and '<svg id="graph"' in dom.stdout
    assert "<script" not in dom.stdout.lower()  # the hostile message stayed text after parsing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    assert "<th>main</th>" in dom.stdout and "0a0b0c0d0e0f" in dom.stdout
    shot = tmp_path / "report.png"
    result = headless(browser, tmp_path, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(shot.read_bytes()[16:20], "big"), int.from_bytes(shot.read_bytes()[20:24], "big")
    assert (width, height) == (1200, 900)


def test_the_html_is_self_contained(single: Project) -> None:
    assert single.cli("-q", "upgrade").exit_code == 0
    page = single.cli("report", "--format", "html").stdout
    for external in ("<link", "src=", "@import", "url(", "http://", "https://"):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), external
    assert page.count("<circle") == 5 and page.count('<g class="revision">') == 5
    assert ">main</text>" in page  # the environment's marker on its head


def test_report_errors_are_one_line(single: Project, tmp_path: Path) -> None:
    result = single.cli("report", "--since", "last week")
    assert (result.exit_code, result.stderr) == (2, "error: --since 'last week' is not a date; use YYYY-MM-DD or an "
                                                    "ISO-8601 time such as 2026-11-01T12:00:00Z\n")
    result = single.cli("report", "-o", str(tmp_path / "no" / "such" / "dir" / "r.html"))
    assert result.exit_code == 2
    assert result.stderr == f"error: cannot write {tmp_path}/no/such/dir/r.html: No such file or directory; choose a writable path\n"
    result = single.cli("report", "--env", "main", "--env", "qa")
    assert result.exit_code == 2 and result.stderr.startswith("error: unknown environment 'qa' in ")
    result = single.cli("report", "--format", "pdf")
    assert result.exit_code == 2 and "'pdf' is not one of 'text', 'json', 'markdown', 'html'" in result.stderr


def test_report_output_file_and_schema(single: Project, tmp_path: Path) -> None:
    assert single.cli("-q", "upgrade").exit_code == 0
    target = tmp_path / "audit.md"
    result = single.cli("report", "--format", "markdown", "-o", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == f"report written to {target} (markdown)\n"
    assert target.read_text().startswith("# Audit report: 1 environment")
    schema = json.loads(single.cli("report", "--schema").stdout)
    assert schema["properties"]["schema_version"]["const"] == 1
    assert {"matrix", "details", "revisions"} <= set(schema["required"])


def test_drift_shows_each_environments_state(tmp_path: Path, db_factory) -> None:
    from test_drift import add_archived_at, alter, drift_project

    urls = {"dev": db_factory(), "staging": db_factory(), "prod": db_factory()}
    project = drift_project(tmp_path / "project", urls)
    data = project.registry_path.read_text().replace("  dev:\n", "  dev:\n    compare_models: false\n")
    project.registry_path.write_text(data)
    for env in urls:
        assert project.cli("-q", "upgrade", "--env", env).exit_code == 0
    alter(urls["staging"], add_archived_at)
    result = project.run("report", "--format", "json", "--drift")  # a process of its own: it imports the models
    assert result.returncode == 5, result.stderr
    drift = {d["env"]: d["drift"] for d in json.loads(result.stdout)["details"]}
    assert drift["staging"] == {"state": "drifted", "error": None, "reason": None, "differences": [
        {"kind": "column", "object": "messages.archived_at",
         "detail": "column messages.archived_at is in the database, not in the models"}]}
    assert drift["prod"] == {"state": "clean", "differences": [], "error": None, "reason": None}
    assert drift["dev"] == {"state": "no_models", "differences": [], "error": None,
                            "reason": "compare_models is false for it in the registry"}
    text = project.run("report", "--drift", "--env", "staging").stdout
    assert "  drift: drifted\n    column messages.archived_at is in the database, not in the models\n" in text
    assert project.run("report", "--env", "prod", "--drift").returncode == 0
    assert json.loads(project.run("report", "--json").stdout)["details"][0]["drift"] is None
