"""Several runners started at once against one database: one applies, the others wait and find nothing to do.

On every dialect, ``RUNNERS`` processes run ``orchestrator upgrade`` at the same
moment: each exits 0 (or 4, the documented lock timeout), every revision is
applied exactly once (counted in ``orchestrator_steps``), the history holds
exactly one run that applied steps, and the schema equals that of a clean
single-runner upgrade on a fresh database of the same dialect.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from typing import Callable

import pytest

from conftest import PROD_HEAD, PROD_REVISIONS, Project, full_schema, make_project, query
from orchestrator.errors import EXIT_LOCKED, EXIT_OK

RUNNERS = 8


def slow_first_revision(project: Project, seconds: float) -> None:
    """Make the first revision sleep before its DDL, so the runners' lifetimes really overlap."""
    path = next((project.root / "versions_prod").glob(f"{PROD_REVISIONS[0]}_*.py"))
    text = path.read_text()
    assert "def upgrade() -> None:\n" in text
    path.write_text(text.replace("def upgrade() -> None:\n",
                                 f"def upgrade() -> None:\n    import time\n    time.sleep({seconds})\n", 1))


def start_runners(project: Project, count: int) -> list[tuple[int, str, str]]:
    """Start ``count`` ``orchestrator upgrade`` processes at once; return (exit code, stdout, stderr) of each."""
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), "upgrade"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root,
                              env={**environ, "ORCHESTRATOR_OPERATOR": f"runner-{i}@ci"})
             for i in range(count)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.reliability_concurrency
@pytest.mark.parametrize("runners", [RUNNERS])
def test_runners_started_at_once_apply_each_revision_exactly_once(single: Project, tmp_path, runners: int,
                                                                  orchestrator_dialect: str,
                                                                  db_factory: Callable[[], str],
                                                                  record_property) -> None:
    slow_first_revision(single, 1.0)
    results = start_runners(single, runners)

    assert {code for code, _, _ in results} <= {EXIT_OK, EXIT_LOCKED}, results
    assert all("Traceback" not in err for _, _, err in results), results
    url = single.urls["main"]
    runs = query(url, "SELECT run_id, status, command, target, heads_before, heads_after, operator FROM orchestrator_runs")
    assert len(runs) == 1, runs  # the losers found nothing to do (or timed out) and recorded nothing
    run_id, status, command, target, before, after, operator = runs[0]
    assert (status, command, target, before, after) == ("succeeded", "upgrade", "heads", "", PROD_HEAD)

    # every revision applied exactly once, all by the one run
    steps = query(url, "SELECT run_id, revision, direction, status FROM orchestrator_steps ORDER BY seq")
    assert steps == [(run_id, rev, "up", "succeeded") for rev in PROD_REVISIONS]
    assert Counter(rev for _, rev, _, _ in steps) == Counter(PROD_REVISIONS)
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(url, "SELECT COUNT(*) FROM sessions") == [(0,)]

    # what each runner said: one upgraded, the others nothing to do (or the lock-timeout line)
    winner = f"main: upgraded (none) -> {PROD_HEAD} (5 steps, run {run_id[:12]})\n"
    loser = f"main: nothing to do; at {PROD_HEAD}\n"
    won = [i for i, (_, out, _) in enumerate(results) if out == winner]
    assert len(won) == 1, results
    assert operator == f"runner-{won[0]}@ci"
    progress = re.sub(r"\(\d+ ms\)", "(N ms)", results[won[0]][2])
    assert progress == "".join(f"  main: upgrade {rev} (N ms)\n" for rev in PROD_REVISIONS)
    for i, (code, out, err) in enumerate(results):
        if i == won[0]:
            continue
        if code == EXIT_OK:
            assert (out, err) == (loser, ""), (i, out, err)
        else:
            assert out == "" and err.startswith("error: environment 'main': ") and "holds the migration lock" in err

    # the schema equals a clean single-runner upgrade on a fresh database of the same dialect
    clean = make_project(tmp_path / "clean", {"main": db_factory()})
    assert clean.cli("-q", "upgrade").exit_code == EXIT_OK
    assert full_schema(url) == full_schema(clean.urls["main"])
    record_property("runners", runners)
    record_property("dialect", orchestrator_dialect)
