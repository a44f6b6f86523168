"""Where the time of one upgrade goes: before the migrations, the migrations, and after.

Runs bare ``alembic upgrade head`` and ``orchestrator upgrade`` as processes on
the same generated chain as ``bench_upgrade.py`` (a fresh database per run, the
two back to back, each first in every other round), and splits each run's wall
time at Alembic's ``MigrationContext.run_migrations``, which both tools go
through:

* **before**: process start to the first migration step being asked for
  (interpreter, imports, configuration, connecting; for the orchestrator also
  the registry, reading and loading the scripts, the lock, the plan, the
  history tables and the run row);
* **migrations**: ``run_migrations`` itself (for bare Alembic this includes
  loading the scripts, which it does lazily there; for the orchestrator, the
  step rows);
* **after**: ``run_migrations`` returning to the process having exited
  (closing the run, releasing the lock, interpreter shutdown).

A small wrapper (``python -c``) patches ``run_migrations`` to note the time,
then runs ``python -m alembic`` / ``python -m orchestrator`` as usual. The
paired differences (orchestrator minus alembic, same round) are reported per
phase, with their medians. Nothing here asserts a time.

    python bench/bench_phases.py                        # PostgreSQL, 500 revisions, 9 rounds
    python bench/bench_phases.py --dialect sqlite --rounds 5 --json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_upgrade as bu  # noqa: E402  (the same workspace, databases and child environment)

# runs in the child: note when Alembic starts and ends the migrations, then run the tool's own entry point
WRAPPER = r"""
import json, runpy, sys, time
from alembic.runtime import migration
marks = {}
original = migration.MigrationContext.run_migrations
def run_migrations(self, **kw):
    marks.setdefault("start", time.time())
    try:
        return original(self, **kw)
    finally:
        marks["end"] = time.time()
migration.MigrationContext.run_migrations = run_migrations
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module] + sys.argv[3:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    with open(out, "w") as handle:
        json.dump(marks, handle)
"""

PHASES = ("before", "migrations", "after", "total")


def one_run(ws: bu.Workspace, dialect: bu.Dialect, tool: str, tag: str) -> dict[str, float]:
    """Run one tool on a fresh database; return its phases in seconds."""
    url = dialect.fresh(tag)
    argv = bu.subprocess_argv(ws, tool, url, tag)  # [python, -m, module, args...]
    with tempfile.NamedTemporaryFile(suffix=".json") as marks_file:
        child = [sys.executable, "-c", WRAPPER, marks_file.name, argv[2], *argv[3:]]
        bu.quiet_disk()
        start = time.time()
        proc = subprocess.run(child, cwd=ws.root, env=bu.clean_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        end = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} exited {proc.returncode}: {proc.stdout.decode(errors='replace')[-2000:]}")
        marks = json.loads(Path(marks_file.name).read_text())
    bu.verify(ws, tool, url)
    dialect.drop(url)
    return {"before": marks["start"] - start, "migrations": marks["end"] - marks["start"],
            "after": end - marks["end"], "total": end - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revisions", type=int, default=500)
    parser.add_argument("--dialect", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", bu.DEFAULT_PG_ADMIN))
    parser.add_argument("--json", action="store_true", help="print every run's phases as JSON")
    args = parser.parse_args(argv)
    if args.revisions < 1 or args.rounds < 1:
        parser.error(f"bad arguments: revisions {args.revisions}, rounds {args.rounds}")
    root = Path(tempfile.mkdtemp(prefix="orch-bench-phases-"))
    tools = ("alembic", "orchestrator")
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
    try:
        ws = bu.make_workspace(root, args.revisions)
        bu.PYCACHE_PREFIX = root / "pycache"
        dialect = bu.SQLiteDialect(ws) if args.dialect == "sqlite" else bu.PostgresDialect(args.pg_admin_url)
        try:
            for tool in tools:  # warm-up: bytecode caches, server catalogs
                one_run(ws, dialect, tool, f"warm_{tool}")
            for r in range(args.rounds):
                for tool in tools if r % 2 == 0 else tools[::-1]:
                    runs[tool].append(one_run(ws, dialect, tool, f"r{r}_{tool}"))
                    p = runs[tool][-1]
                    print(f"  round {r + 1}/{args.rounds} {tool:<12} " + "  ".join(f"{k} {p[k]:.3f}s" for k in PHASES),
                          file=sys.stderr, flush=True)
        finally:
            dialect.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = f"python bench/bench_phases.py --revisions {args.revisions} --dialect {args.dialect} --rounds {args.rounds}"
    if args.json:
        print(json.dumps({"command": command, "runs": runs}, indent=2))
        return 0
    print(f"{args.revisions} revisions on {args.dialect}, {args.rounds} rounds, medians in ms "
          f"(differences: orchestrator minus alembic in the same round)")
    print(f"{'phase':<12}{'alembic':>10}{'orchestrator':>14}{'difference':>12}")
    for phase in PHASES:
        a = [run[phase] * 1000 for run in runs["alembic"]]
        o = [run[phase] * 1000 for run in runs["orchestrator"]]
        diff = statistics.median(y - x for x, y in zip(a, o))
        print(f"{phase:<12}{statistics.median(a):>10.1f}{statistics.median(o):>14.1f}{diff:>+12.1f}")
    print(f"reproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
