"""Benchmark: `orchestrator report` over an environment with 100,000 history step rows.

The issue's target: a report over an environment with 100,000 history step
rows renders in under 2 seconds. This script builds a project with the demo's
five prod revisions on a fresh database (SQLite file, and PostgreSQL when
reachable), upgrades it once for real, then bulk-inserts synthetic history:
runs of five steps each (upgrade and downgrade cycles, with one run in a
hundred failed, blocked or forced) until the steps table holds ``--steps``
rows. It then times, as subprocesses (interpreter start-up included):

* ``orchestrator report --format json`` and ``--format html`` (the whole job:
  reading the registry and folders, the version table, the history queries,
  rendering, writing the file);
* bare Alembic's nearest read-only work on the same database, ``alembic
  current`` and ``alembic history`` through the ini that ``orchestrator ini``
  writes, as a reference point for start-up cost (Alembic has no report).

Medians over ``--repeat`` runs; nothing asserts a time.

    python bench/bench_report.py                          # 100,000 steps, sqlite + postgresql, 5 repeats
    python bench/bench_report.py --dialects sqlite --steps 200000 --json
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
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 2.0
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PROD = ["4a1e7c2b9d10", "7c3d5e9f1a22", "9e2b4d6f8a31", "b5f8a1c3e742", "d0c6e2a4f853"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_workspace(root: Path, url: str) -> Path:
    """Copy the demo's prod folder and reviews; write a one-environment registry on ``url``; return the registry."""
    shutil.copytree(REPO / "versions_prod", root / "versions_prod", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "envs").mkdir()
    shutil.copy(REPO / "envs" / "reviews.yaml", root / "envs" / "reviews.yaml")
    registry = root / "envs" / "registry.yaml"
    registry.write_text(json.dumps({"version": 1, "project": {"root": "..", "reviews": "envs/reviews.yaml"},
                                    "default_env": "prod", "environments": {"prod": {
                                        "url": url, "version_locations": ["versions_prod"], "protected": True}}}))
    return registry


def orchestrator(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "--registry", str(registry), *args],
                          capture_output=True, text=True, cwd=registry.parent.parent)


def fill_history(url: str, steps_wanted: int) -> int:
    """Insert synthetic runs of five steps until the steps table holds ``steps_wanted`` rows; return the count."""
    from orchestrator.recorder import history_tables

    runs, steps = history_tables()
    engine = sa.create_engine(url)
    start = datetime.utcnow() - timedelta(days=365)
    with engine.begin() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(steps)).scalar_one()
        n = 0
        batch_runs: list[dict] = []
        batch_steps: list[dict] = []
        while have + n * 5 < steps_wanted:
            run_id = uuid.uuid4().hex
            at = start + timedelta(minutes=n)
            up = n % 2 == 0
            status = ("failed", "blocked", "succeeded")[n % 3] if n % 100 == 7 else "succeeded"
            forced = "drill: rollback rehearsal" if n % 100 == 42 else None
            batch_runs.append(dict(run_id=run_id, env="prod", command="upgrade" if up else "downgrade", target="heads",
                                   heads_before="", heads_after="", status=status, started_at=at, finished_at=at,
                                   operator="bench@ci", tool_version="bench", alembic_version="bench",
                                   plan_fingerprint="0" * 64, forced_reason=forced,
                                   error="synthetic failure" if status != "succeeded" else None))
            order = PROD if up else PROD[::-1]
            for seq, rev in enumerate(order):
                failed = status == "failed" and seq == 4
                batch_steps.append(dict(run_id=run_id, seq=seq, revision=rev, down_revisions="",
                                        direction="up" if up else "down", script_sha256="0" * 64, reviewer="alice",
                                        started_at=at + timedelta(milliseconds=seq), duration_ms=3.0,
                                        status="failed" if failed else "succeeded",
                                        error="synthetic failure" if failed else None))
            n += 1
            if len(batch_steps) >= 10000:
                conn.execute(runs.insert(), batch_runs)
                conn.execute(steps.insert(), batch_steps)
                batch_runs, batch_steps = [], []
        if batch_runs:
            conn.execute(runs.insert(), batch_runs)
            conn.execute(steps.insert(), batch_steps)
        total = conn.execute(sa.select(sa.func.count()).select_from(steps)).scalar_one()
    engine.dispose()
    return total


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(dialect: str, url: str, workdir: Path, steps: int, repeat: int) -> dict:
    """Build, fill and time one dialect; return its figures."""
    registry = make_workspace(workdir, url)
    upgraded = orchestrator(registry, "-q", "upgrade")
    if upgraded.returncode != 0:
        raise RuntimeError(f"{dialect}: upgrade failed: {upgraded.stderr.strip()}")
    log(f"{dialect}: inserting history up to {steps:,} step rows")
    total = fill_history(url, steps)
    ini = workdir / "alembic.ini"
    orchestrator(registry, "ini", "--env", "prod", "-o", str(ini))
    out = workdir / "report"

    def report(fmt: str) -> None:
        result = orchestrator(registry, "report", "--format", fmt, "-o", f"{out}.{fmt}")
        if result.returncode != 0:
            raise RuntimeError(f"{dialect}: report failed: {result.stderr.strip()}")

    def alembic(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), *args], capture_output=True,
                                text=True, cwd=workdir, env={**os.environ, "ALEMBIC_ENV": "prod"})
        if result.returncode != 0:
            raise RuntimeError(f"{dialect}: alembic {' '.join(args)} failed: {result.stderr.strip()[-300:]}")

    report("json")  # warm the OS caches once
    figures = {"dialect": dialect, "steps": total,
               "report_json_s": timed(lambda: report("json"), repeat),
               "report_html_s": timed(lambda: report("html"), repeat),
               "alembic_current_history_s": timed(lambda: (alembic("current"), alembic("history")), repeat)}
    data = json.loads(Path(f"{out}.json").read_text())
    figures["notable_runs"] = len(data["details"][0]["notable_runs"])
    figures["html_bytes"] = Path(f"{out}.html").stat().st_size
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--dialects", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg-admin-url", default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for dialect in [d.strip() for d in args.dialects.split(",") if d.strip()]:
            workdir = Path(tmp) / dialect
            workdir.mkdir()
            admin = None
            try:
                if dialect == "sqlite":
                    url = f"sqlite:///{workdir / 'prod.db'}"
                else:
                    name = f"bench_report_{uuid.uuid4().hex[:8]}"
                    admin = sa.create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                    url = admin.url.set(database=name).render_as_string(hide_password=False)
                results.append(measure(dialect, url, workdir, args.steps, args.repeat))
            except Exception as exc:  # report and go on with the next dialect
                log(f"{dialect}: not measured: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
                failed = True
            finally:
                if admin is not None:
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
    command = "python bench/bench_report.py " + " ".join(sys.argv[1:])
    if args.json:
        print(json.dumps({"target_seconds": TARGET_SECONDS, "results": results, "command": command.strip()}, indent=2))
    else:
        print(f"{'dialect':<11} {'steps':>8} {'report json':>12} {'report html':>12} {'alembic current+history':>24}  target")
        for r in results:
            ok = "met" if max(r["report_json_s"], r["report_html_s"]) < TARGET_SECONDS else "NOT met"
            print(f"{r['dialect']:<11} {r['steps']:>8,} {r['report_json_s']:>11.2f}s {r['report_html_s']:>11.2f}s "
                  f"{r['alembic_current_history_s']:>23.2f}s  < {TARGET_SECONDS:g}s {ok}")
        print(f"\n{command.strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
