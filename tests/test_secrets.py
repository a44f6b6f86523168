"""A password in a registry URL never shows: not in any verb's stdout or stderr (with or without
--debug, on success and on failure), not in the run history, not in a written alembic.ini.

The sentinel password contains ``@ : / %`` so that the registry holds it URL-encoded
(``S3ntinel-p%40ss%3Aw%2Frd%259d7c``) while drivers and errors see it decoded; every
check looks for the fragment ``s3ntinel`` case-insensitively, which every spelling of
it (raw, %-encoded, +-encoded) contains. PostgreSQL (trust auth here) accepts any
password; on MySQL/MariaDB the test creates a user with the sentinel as its password.
Every verb runs as a separate process, as a user would run it.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conftest import PROD_HEAD, PROD_REVISIONS, Project, make_project, query, table_names
from orchestrator.recorder import HISTORY_TABLES

SPECIAL = "S3ntinel-p@ss:w/rd%9d7c"
PLAIN = "S3ntinel-pw-9d7c"
FRAGMENT = "s3ntinel"  # in every spelling of both sentinels, compared lowercased
BAD = "badbadbad001"


@dataclass
class Outcome:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


# Every verb, successful and failing, with and without --debug: ONE LINE per run, (wave, exit code, arguments).
# Runs of one wave start at once; waves run in order (after the upgrades, promotes and rollouts of the test).
# Environments: a/b/c/u/r1/r2 reachable with the sentinel password, 'bad' has a revision whose error quotes the
# URL, 'down' an unreachable server, 'denied' a login the server refuses. ``{run_a}`` is a run id prefix of 'a',
# ``{tmp}`` the test's folder. A verb the CLI has that no line runs (both ways) fails the test: add its line here.
VERB_RUNS: list[tuple[int, int, str]] = [
    (4, 0, "review status --env a --all"), (4, 1, "--debug review status --env down"),
    (4, 3, "review check --env bad"), (4, 0, "--debug review check --env a"),
    (4, 0, "lint --env a"), (4, 0, "--debug lint --env bad --pending"), (4, 1, "lint --env denied --pending"),
    (4, 0, "--debug lint --env bad"),
    (4, 0, "verify --env a"), (4, 1, "--debug verify"), (4, 1, "verify --env denied"),
    (4, 0, "repair --env a --reason secrets-test"), (4, 1, "--debug repair --env down --reason secrets-test"),
    (4, 0, "ci-matrix"), (4, 0, "--debug ci-matrix --format github"), (4, 2, "ci-matrix --dialects oracle"),
    (4, 0, "--debug review approve " + BAD + " --reviewer sentinel-auditor"),
    (4, 2, "review approve nosuchrev --reviewer sentinel-auditor"),
    (5, 0, "release " + BAD + " --to versions_prod"), (5, 2, "--debug release nosuchrev"),
    (5, 2, "--debug review revoke nosuchrev"), (5, 1, "revision -m autogen --autogenerate --env down"),
    (6, 0, "review revoke " + BAD), (6, 0, "--debug revision -m from-the-secrets-test --env r1"),
    (4, 1, "report --format html -o {tmp}/report.html"), (4, 1, "--debug report --format json -o {tmp}/report.json"),
    (4, 1, "report --format markdown"), (4, 1, "--debug report"), (4, 0, "--json report --env a --env b"),
    (4, 2, "check --env a"), (4, 2, "--debug check --env down"),
    (4, 0, "diff a b"), (4, 1, "--debug diff a down"), (4, 1, "diff denied a"),
    (4, 2, "adopt --env a --revision auto"), (4, 1, "--debug adopt --env down --revision auto"),
    (7, 0, "import-sql {tmp}/sql --into versions_prod"), (7, 2, "--debug import-sql {tmp}/nosql --into versions_prod"),
]


def cli_verbs() -> set[str]:
    """Return every verb of the command line, subcommands as 'group sub'."""
    from orchestrator.cli import cli

    return {f"{name} {sub}" if sub else name
            for name, command in cli.commands.items() for sub in (sorted(getattr(command, "commands", {})) or [""])}


def verb_of(args: tuple[str, ...]) -> str:
    """Return the verb (with its subcommand) a run invoked."""
    words = [a for a in args if not a.startswith("-")]
    return " ".join(words[:2]) if words[0] == "review" else words[0]


def run_wave(project: Project, wave: list[tuple[int, list[str]]]) -> list[Outcome]:
    """Start every command of a wave at once (separate processes), wait for all, check their exit codes."""
    environ = {k: v for k, v in os.environ.items() if k != "ALEMBIC_ENV"}
    environ["ORCHESTRATOR_OPERATOR"] = "secrets-test@ci"
    procs = [(args, expected, subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--registry", str(project.registry_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=project.root))
        for expected, args in wave]
    outcomes, unexpected = [], []
    for args, expected, proc in procs:
        out, err = proc.communicate(timeout=120)
        outcome = Outcome(tuple(args), proc.returncode, out, err)
        if outcome.code != expected:
            unexpected.append((expected, outcome))
        outcomes.append(outcome)
    assert not unexpected, unexpected
    return outcomes


def both(code: int, *args: str) -> list[tuple[int, list[str]]]:
    """The command without and with --debug."""
    return [(code, list(args)), (code, ["--debug", *args])]


@pytest.fixture(autouse=True)
def _count_leaks(record_property: Callable[[str, object], None]) -> None:
    """Make ``assert_no_secret`` report what it looked at and found, for the README's figures."""
    global _record
    _record = record_property


_record: Callable[[str, object], None] | None = None


def assert_no_secret(outcomes: list[Outcome]) -> None:
    leaks = [o for o in outcomes if FRAGMENT in (o.stdout + o.stderr).lower()]
    if _record is not None:
        _record("outputs_checked", len(outcomes))
        _record("leaks", len(leaks))
    assert not leaks, leaks


def history_rows(url: str) -> list[str]:
    """Every column of every history row, as text."""
    present = table_names(url)
    return [repr(row) for table in HISTORY_TABLES if table in present
            for row in query(url, f"SELECT * FROM {table}")]


def with_password(url: str, password: str, *, username: str | None = None, port: int | None = None,
                  database: str | None = None) -> str:
    """Return ``url`` with a password (URL-encoded as a registry must hold it) and other parts replaced."""
    parts = {"password": password}
    if username is not None:
        parts["username"] = username
    if port is not None:
        parts["port"] = port
    if database is not None:
        parts["database"] = database
    return make_url(url).set(**parts).render_as_string(hide_password=False)


def failing_revision(project: Project) -> None:
    """A folder only the 'bad' environment sees, with a revision whose error quotes the URL with its password."""
    (project.root / "versions_bad").mkdir()
    project.write_revision("versions_bad", BAD, PROD_HEAD, """
        url = op.get_bind().engine.url
        raise RuntimeError(f"cannot copy rows from {url.render_as_string(hide_password=False)} "
                           f"(user {url.username}, password {url.password})")
    """, message="copies rows")


@pytest.fixture
def mysql_user(orchestrator_dialect: str, db_factory: Callable[[], str]):
    """On MySQL/MariaDB: a function creating a user whose password is given, with all rights on some databases."""
    created: list[str] = []
    admin: list[sa.Engine] = []

    def create(password: str, databases: list[str]) -> str:
        name = f"orch_s_{secrets.token_hex(4)}"
        engine = sa.create_engine(databases[0], poolclass=sa.pool.NullPool)
        admin.append(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE USER :u@'%' IDENTIFIED BY :p"), {"u": name, "p": password})
            created.append(name)
            for url in databases:
                conn.execute(sa.text(f"GRANT ALL PRIVILEGES ON `{make_url(url).database}`.* TO :u@'%'"), {"u": name})
        return name

    yield create
    for engine in admin[:1]:
        with engine.begin() as conn:
            for name in created:
                conn.execute(sa.text("DROP USER IF EXISTS :u@'%'"), {"u": name})
    for engine in admin:
        engine.dispose()


@pytest.mark.secret_leak
@pytest.mark.parametrize("orchestrator_dialect", ["postgresql", "mysql"], indirect=True)
def test_no_verb_reveals_the_password(tmp_path: Path, orchestrator_dialect: str, db_factory: Callable[[], str],
                                      mysql_user) -> None:
    names = ["a", "b", "c", "u", "bad", "r1", "r2"]
    plain = {name: db_factory() for name in names}
    username = mysql_user(SPECIAL, list(plain.values())) if orchestrator_dialect == "mysql" else None
    urls = {name: with_password(url, SPECIAL, username=username) for name, url in plain.items()}
    # unreachable server, and a reachable one refusing an unknown user, both with the sentinel
    urls["down"] = with_password(plain["a"], SPECIAL, username=username, port=1, database="nowhere")
    # (another database name: two environments of one registry may not reach one database)
    urls["denied"] = with_password(plain["a"], SPECIAL, username="orch_nobody",
                                   database=f"{make_url(plain['a']).database}_denied")
    assert all("%40ss%3Aw%2Frd%259d7c" in url for url in urls.values())
    project = make_project(tmp_path / "project", urls, promote_from={"b": "a", "c": "a", "r2": "r1"},
                           folders={"bad": ["versions_prod", "versions_bad"]})
    failing_revision(project)
    ini_plain, ini_debug = tmp_path / "plain.ini", tmp_path / "debug.ini"
    u3 = PROD_REVISIONS[3]

    outcomes = run_wave(project, [
        (0, ["--debug", "upgrade", "--env", "a"]),
        (0, ["upgrade", "--env", "u"]),
        (0, ["rollout", "--to", "r2"]),
        *both(1, "upgrade", "--env", "bad"),                 # a revision fails, quoting the URL
        *both(1, "upgrade", "--env", "down"),                # unreachable server
        (1, ["--debug", "plan", "--env", "down"]),
        (1, ["upgrade", "--env", "denied"]),                 # the server refuses the login
        (1, ["--debug", "current", "--env", "denied"]),
        *both(2, "upgrade", "nosuchrev", "--env", "c"),      # unknown revision
    ])
    outcomes += run_wave(project, [
        (0, ["promote", "--to", "b"]),
        (0, ["--debug", "promote", "--to", "c"]),
        (0, ["--debug", "downgrade", "-1", "--env", "u"]),
        (0, ["downgrade", "-1", "--env", "r1"]),
        (0, ["downgrade", "-1", "--env", "r2"]),
    ])
    outcomes += run_wave(project, [
        (0, ["--debug", "rollout", "--to", "r2"]),
        (0, ["stamp", "heads", "--env", "u"]),
    ])
    run_a = query(plain["a"], "SELECT run_id FROM orchestrator_runs")[0][0][:8]
    outcomes += run_wave(project, [
        (0, ["--debug", "stamp", u3, "--env", "u"]),
        *both(0, "envs"), (0, ["--json", "envs"]),           # (JSON too: a table may fold a cell over lines)
        *both(1, "status"), (1, ["--json", "status"]),       # 1: 'down' and 'denied' cannot be read
        *both(0, "plan", "--env", "u"),
        *both(0, "current", "--env", "a"),
        *both(0, "heads", "--env", "a"),
        *both(0, "history", "--env", "a"),
        (0, ["--json", "runs", "--env", "bad"]), (0, ["--debug", "runs", "--env", "a", "--run", run_a]),
        (0, ["ini", "--env", "a", "-o", str(ini_plain)]), (0, ["--debug", "ini", "--env", "a", "-o", str(ini_debug)]),
    ])
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "v001_legacy_table.sql").write_text("CREATE TABLE legacy_table (id INTEGER PRIMARY KEY);\n")
    for wave in sorted({w for w, _, _ in VERB_RUNS}):
        outcomes += run_wave(project, [(code, args.format(run_a=run_a, tmp=tmp_path).split())
                                       for w, code, args in VERB_RUNS if w == wave])
    assert_no_secret(outcomes)

    # every verb of the command line ran, with and without --debug
    for debug in (False, True):
        ran = {verb_of(o.args) for o in outcomes if ("--debug" in o.args) == debug}
        assert cli_verbs() <= ran, (debug, cli_verbs() - ran)

    # the masking really happened where the password would have been
    by_args = {o.args: o for o in outcomes}
    assert len(by_args) == len(outcomes)
    envs_out = by_args[("envs",)].stdout
    assert f"{make_url(urls['a']).drivername}://{username or 'postgres'}:***@" in envs_out
    bad_err = by_args[("upgrade", "--env", "bad")].stderr
    assert f"error: environment 'bad': revision {BAD} (versions_bad/" in bad_err
    assert ":***@" in bad_err and "password ***)" in bad_err
    assert "Traceback (most recent call last)" in by_args[("--debug", "upgrade", "--env", "bad")].stderr
    assert ":***@" in by_args[("upgrade", "--env", "down")].stderr
    status = {row["env"]: row for row in json.loads(by_args[("--json", "status")].stdout)}
    assert f"cannot connect to {make_url(urls['down']).drivername}://{username or 'postgres'}:***@127.0.0.1:1/nowhere: " \
        in status["down"]["error"]
    assert status["denied"]["error"].startswith("environment 'denied': cannot connect to ")
    assert status["bad"]["last_run"]["status"] == "failed" and "password ***)" in status["bad"]["last_run"]["error"]
    assert query(plain["b"], "SELECT version_num FROM alembic_version") == [(PROD_HEAD,)]
    assert query(plain["u"], "SELECT version_num FROM alembic_version") == [(u3,)]

    # the history rows, every column, every database
    for name in names:
        rows = history_rows(plain[name])
        assert rows, name
        assert not [r for r in rows if FRAGMENT in r.lower()], (name, rows)
    bad_errors = query(plain["bad"], "SELECT error FROM orchestrator_steps WHERE status = 'failed'")
    assert len(bad_errors) == 2 and all("password ***)" in e for (e,) in bad_errors), bad_errors

    # the files the verbs wrote: the review ledger, new revisions, the ini files
    written = [project.root / "envs" / "reviews.yaml", *(project.root / "versions_prod").glob("*.py"),
               tmp_path / "report.html", tmp_path / "report.json"]
    assert not [p for p in written if FRAGMENT in p.read_text().lower()]
    for ini in (ini_plain, ini_debug):
        text = ini.read_text()
        assert "[alembic]" in text and "orchestrator.env = a" in text
        assert FRAGMENT not in text.lower() and "sqlalchemy.url" not in text


@pytest.mark.secret_leak
def test_unreachable_server_errors_hide_a_plain_password(tmp_path: Path) -> None:
    down = with_password("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", PLAIN)
    project = make_project(tmp_path / "project", {
        "local": f"sqlite:///{tmp_path / 'local.db'}", "down": down,
        "down_next": down.replace("/nowhere", "/nowhere_next"),  # one registry's environments never share a database
    }, promote_from={"down_next": "down"})
    ini = tmp_path / "down.ini"
    outcomes = run_wave(project, [
        *both(0, "envs"), (0, ["--json", "envs"]),           # (JSON too: a table may fold a cell over lines)
        *both(1, "status"), (1, ["--json", "status"]),
        *both(1, "upgrade", "--env", "down"),
        (1, ["plan", "--env", "down"]), (1, ["--debug", "current", "--env", "down"]),
        (1, ["runs", "--env", "down"]), (1, ["--debug", "downgrade", "-1", "--env", "down"]),
        (1, ["stamp", "heads", "--env", "down"]), (1, ["--debug", "promote", "--to", "down_next"]),
        (1, ["rollout", "--to", "down_next"]), (0, ["--debug", "ini", "--env", "down", "-o", str(ini)]),
        (0, ["heads", "--env", "down"]), (0, ["--debug", "history", "--env", "down"]),
    ])
    assert_no_secret(outcomes)
    upgrade = next(o for o in outcomes if o.args == ("upgrade", "--env", "down"))
    assert upgrade.stderr.startswith(
        "error: environment 'down': cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere: ")
    assert upgrade.stderr.endswith("; check that the server is up and the URL is right\n")
    assert FRAGMENT not in ini.read_text().lower()
    assert not (tmp_path / "local.db").exists()  # nothing touched the local environment


@pytest.mark.secret_leak
def test_password_in_the_url_query_is_hidden_too(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {
        "down": f"postgresql+psycopg://postgres@127.0.0.1:1/nowhere?password={PLAIN}"})
    ini = tmp_path / "down.ini"
    outcomes = run_wave(project, [(0, ["--json", "envs"]), *both(1, "upgrade", "--env", "down"),
                                  (0, ["ini", "--env", "down", "-o", str(ini)])])
    assert json.loads(outcomes[0].stdout)[0]["url"].startswith("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    assert outcomes[1].stderr.startswith("error: environment 'down': cannot connect to postgresql+psycopg://postgres@")
    assert_no_secret(outcomes)
    assert FRAGMENT not in ini.read_text().lower()


@pytest.mark.secret_leak
def test_a_password_that_is_a_common_word_masks_only_the_password(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"down": "postgresql+psycopg://app:postgres@127.0.0.1:1/nowhere"})
    envs, upgrade = run_wave(project, [(0, ["--json", "envs"]), (1, ["upgrade", "--env", "down"])])
    assert json.loads(envs.stdout)[0]["url"] == "postgresql+psycopg://app:***@127.0.0.1:1/nowhere"
    assert upgrade.stderr.startswith(
        "error: environment 'down': cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/nowhere: ")
