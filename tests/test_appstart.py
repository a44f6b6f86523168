"""Migrating at application start: several app workers at once, verify mode, the gate, the async variant."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from conftest import PROD_HEAD, PROD_REVISIONS, REPO, Project, make_project, query, table_names
from orchestrator.appstart import StartupResult, migrate_at_start, migrate_at_start_async
from orchestrator.errors import EXIT_DIFFERENCES, EXIT_REFUSED, ConfigError, GateRefused, NotAtHeads
from test_concurrency import slow_first_revision

WORKERS = 4
APP = "examples.fastapi_app.app:app"
UVICORN_STARTUP_FAILURE = 3  # uvicorn's exit code when the lifespan hook raises


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(project: Project, port: int, **environ: str) -> subprocess.Popen[str]:
    """Start one uvicorn process of the example app against the project's 'main' environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("ALEMBIC_ENV", "MIGRATE_AT_START")}
    env.update({"ORCHESTRATOR_REGISTRY": str(project.registry_path), "ALEMBIC_ENV": "main", **environ})
    return subprocess.Popen([sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_healthy(proc: subprocess.Popen[str], port: int, timeout: float = 120) -> dict[str, object]:
    """Return the app's /health answer once it serves; fail if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app on port {port} exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    pytest.fail(f"app on port {port} did not answer within {timeout}s")


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_workers_started_together_all_start_and_apply_each_revision_once(single: Project) -> None:
    slow_first_revision(single, 1.0)
    ports = [free_port() for _ in range(WORKERS)]
    procs = [start_app(single, port, ORCHESTRATOR_OPERATOR=f"worker-{i}@app") for i, port in enumerate(ports)]
    try:
        answers = [wait_healthy(proc, port) for proc, port in zip(procs, ports)]
    finally:
        stop(procs)

    assert all(a["status"] == "ok" and a["env"] == "main" and a["heads"] == [PROD_HEAD] for a in answers), answers
    assert sorted(a["migration"] for a in answers) == ["nothing to do"] * (WORKERS - 1) + ["upgraded"]
    winner = next(i for i, a in enumerate(answers) if a["migration"] == "upgraded")
    assert answers[winner]["applied"] == list(PROD_REVISIONS)
    url = single.urls["main"]
    runs = query(url, "SELECT run_id, command, status, heads_before, heads_after, operator FROM orchestrator_runs")
    assert len(runs) == 1, runs  # the workers that waited found nothing to do and recorded nothing
    run_id, *rest = runs[0]
    assert rest == ["upgrade", "succeeded", "", PROD_HEAD, f"worker-{winner}@app"]
    steps = query(url, "SELECT run_id, revision, direction, status FROM orchestrator_steps ORDER BY seq")
    assert steps == [(run_id, rev, "up", "succeeded") for rev in PROD_REVISIONS]
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]


def test_verify_mode_stops_the_app_with_one_line_when_behind(single: Project) -> None:
    assert single.cli("upgrade", PROD_REVISIONS[2]).exit_code == 0
    port = free_port()
    proc = start_app(single, port, MIGRATE_AT_START="verify")
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        stop([proc])
    assert proc.returncode == UVICORN_STARTUP_FAILURE
    assert (f"orchestrator.errors.NotAtHeads: database of env 'main' is at {PROD_REVISIONS[2]}, heads are {PROD_HEAD}; "
            "run `orchestrator upgrade --env main` as a deploy step") in stderr
    assert query(single.urls["main"], "SELECT version_num FROM alembic_version") == [(PROD_REVISIONS[2],)]
    assert query(single.urls["main"], "SELECT COUNT(*) FROM orchestrator_runs") == [(1,)]  # verify records nothing


def test_verify_raises_not_at_heads_and_changes_nothing(single: Project) -> None:
    with pytest.raises(NotAtHeads) as caught:
        migrate_at_start("main", single.registry_path, mode="verify")
    assert str(caught.value) == (f"database of env 'main' is at base, heads are {PROD_HEAD}; "
                                 "run `orchestrator upgrade --env main` as a deploy step")
    assert caught.value.exit_code == EXIT_DIFFERENCES == 5
    assert (caught.value.env, caught.value.current, caught.value.heads) == ("main", (), (PROD_HEAD,))
    assert table_names(single.urls["main"]) == set()  # verify creates nothing

    assert single.cli("upgrade").exit_code == 0
    assert migrate_at_start("main", single.registry(), mode="verify") == StartupResult("main", "verify", "at heads",
                                                                                       (PROD_HEAD,))


def test_verify_names_a_revision_the_application_does_not_know(single: Project) -> None:
    assert single.cli("upgrade").exit_code == 0
    with single.engine("main").begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dfeed1234'")
    with pytest.raises(NotAtHeads) as caught:
        migrate_at_start("main", single.registry_path, mode="verify")
    assert str(caught.value) == (f"database of env 'main' is at f00dfeed1234, heads are {PROD_HEAD}; f00dfeed1234 is in "
                                 "no version folder 'main' lists: this application is older than its database; "
                                 "deploy the release that matches it")


def test_upgrade_mode_reads_the_environment_like_the_cli(single: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_REGISTRY", str(single.registry_path))
    monkeypatch.setenv("ALEMBIC_ENV", "main")
    first = migrate_at_start()
    assert (first.env, first.status, first.heads, first.applied) == ("main", "upgraded", (PROD_HEAD,), PROD_REVISIONS)
    assert first.run_id is not None
    again = migrate_at_start()
    assert again == StartupResult("main", "upgrade", "nothing to do", (PROD_HEAD,))


def test_async_variant_runs_inside_an_event_loop(single: Project) -> None:
    async def lifespan() -> StartupResult:
        return await migrate_at_start_async("main", single.registry_path)

    result = asyncio.run(lifespan())
    assert (result.status, result.applied) == ("upgraded", PROD_REVISIONS)
    assert asyncio.run(migrate_at_start_async("main", single.registry_path, mode="verify")).status == "at heads"


def test_upgrade_mode_on_a_protected_environment_goes_through_the_gate(tmp_path: Path,
                                                                      db_factory: Callable[[], str]) -> None:
    project = make_project(tmp_path / "project", {"staging": db_factory(), "prod": db_factory()},
                           promote_from={"prod": "staging"}, protected=("prod",))
    with pytest.raises(GateRefused) as caught:
        migrate_at_start("prod", project.registry_path)
    assert caught.value.exit_code == EXIT_REFUSED
    assert str(caught.value) == (f"prod: refused: 'staging' (promote_from) has not applied {', '.join(PROD_REVISIONS)}; "
                                 "promote them there first (`orchestrator promote --to staging`)")
    assert query(project.urls["prod"], "SELECT status, command FROM orchestrator_runs") == [("blocked", "upgrade")]
    assert table_names(project.urls["prod"]) == {"orchestrator_runs", "orchestrator_steps", "orchestrator_identity"}  # no DDL ran


def test_unknown_mode_is_a_config_error(single: Project) -> None:
    with pytest.raises(ConfigError, match=r"^migrate_at_start: unknown mode 'migrate'; use 'upgrade' or 'verify'$"):
        migrate_at_start("main", single.registry_path, mode="migrate")


