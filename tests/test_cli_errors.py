"""Bad input through the command line, on every dialect: one ``error:`` line, the documented exit code, no
traceback, and the database left as it was.

The README's contract: errors are one line on stderr, ``error: `` followed by the
fact, the place and the remedy; exit 1 for a database or migration failure, 2
for a usage or configuration error; a traceback only with ``--debug``. Every
test here runs the verb with ``-q`` so that stderr holds nothing but the error.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, schema_snapshot
from orchestrator import __version__
from orchestrator.cli import cli as orchestrator_cli
from orchestrator.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from orchestrator.registry import ENV_SELECT_VAR

BAD = "bad000000001"
HISTORY_HINT = "see `orchestrator history --env main` for the revisions it sees"


@pytest.fixture(autouse=True)
def _no_outside_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SELECT_VAR, raising=False)


def assert_one_error(result: Result, line: str, code: int) -> None:
    """The run exited ``code`` with nothing on stdout and exactly ``error: <line>`` on stderr, no traceback."""
    assert "Traceback" not in result.output
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", f"error: {line}\n")


def error_line(result: Result) -> str:
    """Return the one stderr line of a failed run, checking it is one line starting with 'error: '."""
    assert "Traceback" not in result.output
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    return result.stderr[len("error: "):-1]


def runs_count(url: str) -> int:
    return query(url, "SELECT COUNT(*) FROM orchestrator_runs")[0][0]


# ---------------------------------------------------------------------------- unknown revisions


def test_upgrade_to_an_unknown_revision_changes_nothing(single: Project) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade", PROD_REVISIONS[2]).exit_code == EXIT_OK
    before, runs = schema_snapshot(url), runs_count(url)

    result = single.cli("-q", "upgrade", "nope")

    assert_one_error(result, f"environment 'main': unknown revision 'nope'; "
                             f"{HISTORY_HINT}", EXIT_USAGE)
    assert schema_snapshot(url) == before
    assert runs_count(url) == runs  # a usage error records no run


def test_upgrade_to_an_unknown_revision_on_a_fresh_database_creates_nothing(single: Project) -> None:
    url = single.urls["main"]
    before = schema_snapshot(url)

    result = single.cli("-q", "upgrade", "nope")

    assert_one_error(result, f"environment 'main': unknown revision 'nope'; "
                             f"{HISTORY_HINT}", EXIT_USAGE)
    assert schema_snapshot(url) == before == {}


def test_downgrade_to_an_unknown_revision_changes_nothing(single: Project) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    before, runs = schema_snapshot(url), runs_count(url)

    result = single.cli("-q", "downgrade", "nope")

    assert_one_error(result, f"environment 'main': unknown revision 'nope'; "
                             f"{HISTORY_HINT}", EXIT_USAGE)
    assert schema_snapshot(url) == before
    assert runs_count(url) == runs


def test_downgrade_to_a_revision_above_the_current_one(single: Project) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade", PROD_REVISIONS[0]).exit_code == EXIT_OK
    before = schema_snapshot(url)

    result = single.cli("-q", "downgrade", PROD_HEAD)

    assert_one_error(result, f"environment 'main': cannot downgrade to {PROD_HEAD}: it is not below the current heads "
                             f"({PROD_REVISIONS[0]}); use `orchestrator upgrade {PROD_HEAD}` to go forward", EXIT_USAGE)
    assert schema_snapshot(url) == before


# ---------------------------------------------------------------------------- a revision that fails


# (a revision raising halfway, then fixed and rerun, on every dialect: tests/test_faults.py)


def test_revision_failing_on_a_database_error_gives_one_line(single: Project, orchestrator_dialect: str) -> None:
    url = single.urls["main"]
    assert single.cli("-q", "upgrade").exit_code == EXIT_OK
    last_good = schema_snapshot(url)
    path = single.write_revision("versions_prod", BAD, PROD_HEAD, 'op.execute("SELECT * FROM no_such_table")',
                                 message="reads a missing table")

    result = single.cli("-q", "upgrade")

    assert result.exit_code == EXIT_FAILURE
    assert result.stdout == ""
    line = error_line(result)
    prefix = f"environment 'main': revision {BAD} (versions_prod/{path.name}) failed: "
    assert line.startswith(prefix), line
    assert line.endswith("; see `orchestrator runs --env main`"), line
    assert "no_such_table" in line
    assert "[SQL:" not in line and "sqlalche.me" not in line  # the driver's message, not SQLAlchemy's wrapping
    assert schema_snapshot(url) == last_good


def test_upgrade_twice_has_nothing_to_do(single: Project) -> None:
    url = single.urls["main"]
    first = single.cli("-q", "upgrade")
    assert first.exit_code == EXIT_OK, first.output
    before, runs = schema_snapshot(url), runs_count(url)

    again = single.cli("-q", "upgrade")

    assert (again.exit_code, again.stdout, again.stderr) == (EXIT_OK, f"main: nothing to do; at {PROD_HEAD}\n", "")
    assert "nothing to do" in again.stdout
    assert schema_snapshot(url) == before
    assert runs_count(url) == runs
    as_json = single.cli("-q", "--json", "upgrade")
    assert as_json.exit_code == EXIT_OK
    assert json.loads(as_json.stdout)["status"] == "nothing to do"


# ---------------------------------------------------------------------------- unreachable servers


@pytest.fixture
def unreachable(tmp_path: Path) -> Project:
    """A registry whose databases are on port 1 of this host, where nothing listens."""
    return make_project(tmp_path / "project", {
        "main": "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/app",
        "my": "mysql+pymysql://app:s3cret-pw@127.0.0.1:1/app",
    })


@pytest.mark.parametrize(("env", "masked"), [
    ("main", "postgresql+psycopg://app:***@127.0.0.1:1/app"),
    ("my", "mysql+pymysql://app:***@127.0.0.1:1/app"),
])
@pytest.mark.parametrize("verb", [("upgrade",), ("downgrade", "base"), ("plan",), ("current",), ("runs",)])
def test_unreachable_server(unreachable: Project, env: str, masked: str, verb: tuple[str, ...]) -> None:
    result = unreachable.cli("-q", "--env", env, *verb)

    assert result.exit_code == EXIT_FAILURE
    assert result.stdout == ""
    line = error_line(result)
    assert line.startswith(f"environment '{env}': cannot connect to {masked}: "), line
    assert line.endswith("; check that the server is up and the URL is right"), line
    assert "refused" in line.lower()
    assert "s3cret-pw" not in result.output


def test_unreachable_server_as_a_user_runs_it(unreachable: Project) -> None:
    proc = unreachable.run("-q", "upgrade")
    assert proc.returncode == EXIT_FAILURE
    assert (proc.stdout, "Traceback" in proc.stderr, "s3cret-pw" in proc.stderr) == ("", False, False)
    assert re.fullmatch(r"error: environment 'main': cannot connect to postgresql\+psycopg://app:\*\*\*@127\.0\.0\.1:1/app: "
                        r"[^\n]+; check that the server is up and the URL is right\n", proc.stderr), proc.stderr


# ---------------------------------------------------------------------------- usage


VERBS = sorted(
    f"{name} {sub}" if sub else name
    for name, command in orchestrator_cli.commands.items()
    for sub in (sorted(getattr(command, "commands", {})) or [""])
)


def test_every_documented_verb_exists() -> None:
    documented = {"envs", "status", "plan", "upgrade", "downgrade", "stamp", "current", "heads", "history",
                  "revision", "runs", "promote", "rollout", "ini"}
    assert documented | {"review approve", "review revoke", "review status", "review check", "lint", "verify",
                         "release"} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_every_verb(verb: str) -> None:
    # no registry needed (and none in the current directory)
    from click.testing import CliRunner

    for flag in ("--help", "-h"):
        result = CliRunner().invoke(orchestrator_cli, [*verb.split(), flag], prog_name="orchestrator",
                                    catch_exceptions=False)
        assert (result.exit_code, result.stderr) == (EXIT_OK, ""), result.output
        assert result.stdout.startswith(f"Usage: orchestrator {verb} "), result.stdout
        assert "--env NAME" in result.stdout and "--json" in result.stdout


def test_top_level_help_lists_every_verb_and_the_exit_codes() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(orchestrator_cli, ["--help"], prog_name="orchestrator", catch_exceptions=False)
    assert result.exit_code == EXIT_OK
    assert all(re.search(rf"^\s+{re.escape(v.split()[0])}\b", result.stdout, re.M) for v in VERBS), result.stdout
    assert "Exit codes: 0 done (or nothing to do), 1 database or migration failure," in result.stdout


def test_version_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "--version"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (EXIT_OK, f"orchestrator, version {__version__}\n", "")


def test_missing_argument_is_one_line() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(orchestrator_cli, ["downgrade"], prog_name="orchestrator", catch_exceptions=False)
    assert_one_error(result, "Missing argument 'TARGET'; see `orchestrator downgrade --help`", EXIT_USAGE)


def test_misspelt_option_is_not_taken_for_a_revision(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"main": f"sqlite:///{tmp_path}/main.db"})
    result = project.cli("-q", "plan", "--downgrad")
    assert result.exit_code == EXIT_USAGE
    line = error_line(result)
    assert "No such option" in line and "--downgrad" in line and "revision" not in line, line
