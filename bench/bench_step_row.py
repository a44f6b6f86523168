"""What the history row costs the PostgreSQL server, one step at a time.

Times N transactions shaped like the benchmark's migrations (``CREATE TABLE``
plus the version ``UPDATE``, then ``COMMIT``) from one psycopg connection, in
a fresh database each, with and without the orchestrator's step row sent with
the COMMIT, and reads the server backend's own CPU time from ``/proc`` (the
server runs on this machine). Variants run in alternating order; medians are
printed. No orchestrator code runs here: this isolates the server's side.

    python bench/bench_step_row.py                      # 300 steps, 5 rounds
    python bench/bench_step_row.py --steps 500 --rounds 9 --variants none,row,row-prepared,row-no-index,row-no-fk
    python bench/bench_step_row.py --steps 2000 --rounds 3 --no-ddl    # the row alone, without the DDL's scatter
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

VARIANTS = ("none", "row", "row-prepared", "row-no-index", "row-no-fk")

RUNS_TABLE = "CREATE TABLE orchestrator_runs (run_id VARCHAR(32) PRIMARY KEY, status VARCHAR(16) NOT NULL)"
STEPS_TABLE = """CREATE TABLE orchestrator_steps (
 run_id VARCHAR(32) NOT NULL{fk}, seq INTEGER NOT NULL, revision VARCHAR(255) NOT NULL, down_revisions VARCHAR(1000),
 direction VARCHAR(8) NOT NULL, script_sha256 VARCHAR(64), reviewer VARCHAR(255), started_at TIMESTAMP NOT NULL,
 duration_ms FLOAT, status VARCHAR(16) NOT NULL, error TEXT, PRIMARY KEY (run_id, seq))"""
STEPS_INDEX = "CREATE INDEX ix_orchestrator_steps_revision ON orchestrator_steps (revision, started_at)"
INSERT = ("INSERT INTO orchestrator_steps (run_id, seq, revision, down_revisions, direction, script_sha256, reviewer, "
          "started_at, duration_ms, status, error) VALUES ({}, {}, {}, {}, 'up', {}, NULL, {}, 1.5, 'succeeded', NULL)")


def backend_cpu(pid: int) -> float:
    """Return user+system CPU seconds of a local process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(psycopg, admin: str, dsn: str, variant: str, steps: int, ddl: bool = True) -> tuple[float, float]:
    with psycopg.connect(admin, autocommit=True) as a:
        a.execute("DROP DATABASE IF EXISTS orch_bench_step_row WITH (FORCE)")
        a.execute("CREATE DATABASE orch_bench_step_row")
        a.execute("CHECKPOINT")
    conn = psycopg.connect(dsn)
    cur = psycopg.ClientCursor(conn)
    pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
    cur.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    cur.execute("INSERT INTO alembic_version VALUES ('r0000')")
    if variant != "none":
        # as the orchestrator's: each step row references its run row
        cur.execute(RUNS_TABLE)
        cur.execute("INSERT INTO orchestrator_runs VALUES (%s, 'running')", ("a" * 32,))
        cur.execute(STEPS_TABLE.format(fk="" if variant == "row-no-fk" else " REFERENCES orchestrator_runs (run_id)"))
        if variant != "row-no-index":
            cur.execute(STEPS_INDEX)
    if variant == "row-prepared":
        cur.execute("PREPARE orch_step (varchar, int, varchar, varchar, varchar, timestamp) AS "
                    + INSERT.format("$1", "$2", "$3", "$4", "$5", "$6"))
    conn.commit()
    row_sql = INSERT.format(*["%s"] * 6) + "; COMMIT"
    cpu0, start = backend_cpu(pid), time.perf_counter()
    for i in range(1, steps + 1):
        if ddl:
            cur.execute(f"CREATE TABLE t_{i:04d} (id SERIAL NOT NULL, PRIMARY KEY (id))")
        cur.execute(f"UPDATE alembic_version SET version_num='r{i:04d}'")
        values = ("a" * 32, i, f"r{i:04d}", f"r{i - 1:04d}", "f" * 64, datetime.datetime.now())
        if variant in ("row", "row-no-index", "row-no-fk"):
            cur.execute(row_sql, values)  # the row travels with the COMMIT, as the orchestrator sends it
        elif variant == "row-prepared":
            cur.execute("EXECUTE orch_step (%s, %s, %s, %s, %s, %s); COMMIT", values)
        else:
            conn.commit()
    wall, cpu = time.perf_counter() - start, backend_cpu(pid) - cpu0
    conn.close()
    with psycopg.connect(admin, autocommit=True) as a:
        a.execute("DROP DATABASE orch_bench_step_row WITH (FORCE)")
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="none,row", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--admin-dsn", default=os.environ.get("BENCH_PG_ADMIN_DSN", "host=127.0.0.1 user=postgres dbname=postgres"))
    parser.add_argument("--no-ddl", action="store_true",
                        help="leave the CREATE TABLE out of each step: only the version UPDATE (and the row), "
                             "so the DDL's own scatter does not hide the row's cost")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    import psycopg

    dsn = args.admin_dsn.replace("dbname=postgres", "dbname=orch_bench_step_row")
    if "dbname=orch_bench_step_row" not in dsn:
        dsn += " dbname=orch_bench_step_row"
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            results[v].append(one_round(psycopg, args.admin_dsn, dsn, v, args.steps, not args.no_ddl))
            print(f"round {r + 1}/{args.rounds} {v:<13} wall {results[v][-1][0]:.3f}s  backend cpu {results[v][-1][1]:.3f}s",
                  file=sys.stderr)
    base = results[variants[0]]
    print(f"{args.steps} steps per round{' (no DDL: version UPDATE only)' if args.no_ddl else ''}, {args.rounds} rounds, medians; per-step figures against '{variants[0]}'")
    for v in variants:
        wall = statistics.median(x[0] for x in results[v])
        cpu = statistics.median(x[1] for x in results[v])
        extra_wall = (wall - statistics.median(x[0] for x in base)) / args.steps * 1000
        extra_cpu = (cpu - statistics.median(x[1] for x in base)) / args.steps * 1000
        print(f"{v:<13} wall {wall:6.3f}s  backend cpu {cpu:6.3f}s  per step: {extra_wall:+.3f} ms wall, "
              f"{extra_cpu:+.3f} ms backend cpu")
    print(f"reproduce: python bench/bench_step_row.py --steps {args.steps} --rounds {args.rounds} --variants {args.variants}"
          + (" --no-ddl" if args.no_ddl else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
