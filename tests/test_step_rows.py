"""Step rows: written inside each step's transaction, whatever path carries them to the server.

On PostgreSQL with psycopg 3 and one transaction per migration, a step's row
travels in the same message as its transaction's COMMIT (no extra round trip);
elsewhere it is inserted as the step's last statement. Either way the row is committed
with the step or not at all, and a row that cannot be written fails its step.
"""
from __future__ import annotations

import pytest

from conftest import PROD_HEAD, PROD_REVISIONS, Project, query, table_names
from orchestrator import commands
from orchestrator.recorder import StepRecord, read_runs

BAD = "bad0000000a1"


def test_history_rows_are_what_the_run_reports(single: Project) -> None:
    seen: list[StepRecord] = []
    result = commands.upgrade(single.ctx("main"), on_step=seen.append)
    assert result.status == "succeeded"  # type: ignore[union-attr]
    assert seen == result.steps  # type: ignore[union-attr]
    assert [s.seq for s in seen] == [1, 2, 3, 4, 5]
    with single.engine("main").connect() as conn:
        run, = read_runs(conn, "main")
    columns = ("seq", "revision", "direction", "script_sha256", "reviewer", "started_at", "duration_ms", "status", "error")
    assert [tuple(row[c] for c in columns) for row in run["steps"]] == [tuple(getattr(s, c) for c in columns) for s in seen]
    assert [row["down_revisions"] for row in run["steps"]] == [" ".join(sorted(s.down_revisions)) for s in seen]
    assert [row["revision"] for row in run["steps"]] == list(PROD_REVISIONS)


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql"], indirect=True)
def test_a_step_whose_row_cannot_be_written_fails_and_is_rolled_back(single: Project) -> None:
    # the step itself succeeds, then forbids its own history row: the row fails at COMMIT time
    single.write_revision("versions_prod", BAD, PROD_HEAD,
                          'op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\n'
                          'op.execute("ALTER TABLE orchestrator_steps ADD CONSTRAINT no_more_steps CHECK (seq < 0) NOT VALID")',
                          message="forbids its row")
    url = single.urls["main"]
    result = single.cli("-q", "upgrade")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert line.startswith(f"error: environment 'main': revision {BAD} (versions_prod/{BAD}_forbids_its_row.py) failed: ")
    assert 'violates check constraint "no_more_steps"' in line
    assert line.endswith(f"; rolled back; the database is at {PROD_HEAD}; see `orchestrator runs --env main`")
    # schema, version table and history agree: the step is gone from all three, its failure recorded
    assert "half" not in table_names(url)
    assert query(url, "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(url, "SELECT count(*) FROM pg_constraint WHERE conname = 'no_more_steps'") == [(0,)]
    steps = query(url, "SELECT seq, revision, status FROM orchestrator_steps ORDER BY seq")
    assert steps == [(i + 1, rev, "succeeded") for i, rev in enumerate(PROD_REVISIONS)] + [(6, BAD, "failed")]
    assert query(url, "SELECT status, heads_after FROM orchestrator_runs ORDER BY started_at") == [("failed", PROD_HEAD)]


@pytest.mark.parametrize("orchestrator_dialect", ["postgresql"], indirect=True)
def test_the_step_row_costs_no_round_trip_on_psycopg(single: Project) -> None:
    import psycopg

    chain = ["0000000000c1", "0000000000c2", "0000000000c3"]
    for rev, down in zip(chain, [PROD_HEAD] + chain):
        single.write_revision("versions_prod", rev, down, 'op.execute("SELECT 1")', message=f"noop {rev}")
    assert commands.upgrade(single.ctx("main"), PROD_HEAD).status == "succeeded"  # type: ignore[union-attr]
    waits = [0]
    original = psycopg.Connection.wait

    def counting(self, gen, *args, **kwargs):
        return original(self, network(gen), *args, **kwargs)

    def network(gen):  # psycopg waits on the socket once per round trip; a wait with nothing to send yields nothing
        try:
            ready = next(gen)
        except StopIteration as stop:
            return stop.value
        waits[0] += 1
        while True:
            try:
                ready = gen.send((yield ready))
            except StopIteration as stop:
                return stop.value

    def round_trips(target: str) -> int:
        waits[0] = 0
        psycopg.Connection.wait = counting  # type: ignore[method-assign]
        try:
            assert commands.upgrade(single.ctx("main"), target).status == "succeeded"  # type: ignore[union-attr]
        finally:
            psycopg.Connection.wait = original  # type: ignore[method-assign]
        return waits[0]

    one_step, two_steps = round_trips(chain[0]), round_trips(chain[2])
    # what bare Alembic needs per step: BEGIN with the step's statement, the version UPDATE, the COMMIT;
    # the step row rides with the COMMIT
    assert two_steps - one_step == 3
    rows = query(single.urls["main"], "SELECT revision, status FROM orchestrator_steps ORDER BY started_at, seq")
    assert rows[-3:] == [(rev, "succeeded") for rev in chain]
