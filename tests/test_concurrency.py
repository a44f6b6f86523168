"""Several runners started at once against one database: one applies, the others find nothing to do."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import PROD_HEAD, PROD_REVISIONS, Project, query

RUNNERS = 4


def slow_first_revision(project: Project, seconds: float) -> None:
    """Make the first revision sleep before its DDL, so the runners' lifetimes really overlap."""
    path = next((project.root / "versions_prod").glob(f"{PROD_REVISIONS[0]}_*.py"))
    text = path.read_text()
    assert "def upgrade() -> None:\n" in text
    path.write_text(text.replace("def upgrade() -> None:\n",
                                 f"def upgrade() -> None:\n    import time\n    time.sleep({seconds})\n", 1))


def test_runners_started_at_once_apply_each_revision_exactly_once(single: Project) -> None:
    slow_first_revision(single, 1.0)
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry", str(single.registry_path), "upgrade"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=single.root,
                              env={**environ, "ORCHESTRATOR_OPERATOR": f"runner-{i}@ci"})
             for i in range(RUNNERS)]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    results = [(code, out, err) for out, err, code in results]

    assert [code for code, _, _ in results] == [0] * RUNNERS, results
    url = single.urls["main"]
    runs = query(url, "SELECT run_id, status, command, target, heads_before, heads_after, operator FROM orchestrator_runs")
    assert len(runs) == 1, runs  # the losers found nothing to do and recorded nothing
    run_id, status, command, target, before, after, operator = runs[0]
    assert (status, command, target, before, after) == ("succeeded", "upgrade", "heads", "", PROD_HEAD)

    winner = f"main: upgraded (none) -> {PROD_HEAD} (5 steps, run {run_id[:12]})\n"
    loser = f"main: nothing to do; at {PROD_HEAD}\n"
    assert sorted(out for _, out, _ in results) == sorted([winner] + [loser] * (RUNNERS - 1))
    won = next(i for i, (_, out, _) in enumerate(results) if out == winner)
    assert operator == f"runner-{won}@ci"
    progress = re.sub(r"\(\d+ ms\)", "(N ms)", results[won][2])
    assert progress == "".join(f"  main: upgrade {rev} (N ms)\n" for rev in PROD_REVISIONS)
    assert all(err == "" for i, (_, _, err) in enumerate(results) if i != won)

    steps = query(url, "SELECT run_id, revision, direction, status FROM orchestrator_steps ORDER BY seq")
    assert steps == [(run_id, rev, "up", "succeeded") for rev in PROD_REVISIONS]
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(url, "SELECT COUNT(*) FROM sessions") == [(0,)]
