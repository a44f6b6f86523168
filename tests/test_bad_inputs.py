"""The bad-input catalogue: every case one exact ``error:`` line, its exit code, no traceback, nothing written.

Each :class:`Case` names one thing a user gets wrong (the registry, the version
folders and their scripts, the arguments, the review ledger, the database's own
state) and pins the one line ``orchestrator`` must answer with and its exit code.
Every case runs against a project of two environments on real databases,
``main`` (at the head) and the protected ``prod`` (one revision behind, promoted
from ``main``); before and after the command, both databases are snapshotted
(schema, version table, history tables) and must be equal. The only writes
allowed are the gate's: a refusal records one ``blocked`` run, its audit record,
and nothing else. Cases that reach a database run on every dialect; the others
(refused before any connection) on SQLite.

Adding a case is one ``Case(...)`` entry in ``CASES``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import PROD_HEAD, PROD_REVISIONS, Project, database_snapshot, make_project
from orchestrator.errors import EXIT_REFUSED, EXIT_USAGE
from orchestrator.registry import ENV_SELECT_VAR

NEW = "0b0e00000001"   # a revision written by a case, after the head
GHOST = "90057000dead"  # a revision a database holds but no folder has


@dataclass(frozen=True)
class Case:
    """One bad input: what to break, what to run, the exact error line (``{root}`` is the project) and exit code."""

    name: str
    args: tuple[str, ...]
    message: str
    code: int = EXIT_USAGE
    setup: Callable[[Project], None] | None = None
    database: bool = False  # reaches a database: run on every dialect
    blocked: bool = False   # a gate refusal: one 'blocked' run is its audit record

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------------------- what a case breaks


def edit_registry(change: Callable[[dict[str, Any]], None]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        data = yaml.safe_load(project.registry_path.read_text())
        change(data)
        project.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return setup


def registry_text(replace: str, by: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        text = project.registry_path.read_text()
        assert replace in text, (replace, text)
        project.registry_path.write_text(text.replace(replace, by, 1))
    return setup


def main_env(**values: Any) -> Callable[[Project], None]:
    return edit_registry(lambda data: data["environments"]["main"].update(values))


def script(folder: str, revision: str, down: str | None, body: str = "pass", message: str = "a revision",
           extra: str = "") -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        project.write_revision(folder, revision, down, body, message=message, extra=extra)
    return setup


def raw_script(folder: str, name: str, text: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        (project.root / folder / name).write_text(text)
    return setup


def ledger_text(text: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        (project.root / "envs" / "reviews.yaml").write_text(text)
    return setup


def edit_script(revision: str, old: str, new: str) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        path = next((project.root / "versions_prod").glob(f"{revision}_*.py"))
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return setup


def stamp_ghost(project: Project) -> None:
    """Leave in main's version table a revision that no folder holds (a branch deployed, then deleted)."""
    import sqlalchemy as sa

    engine = project.engine("main")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": GHOST})
    finally:
        engine.dispose()


def both(*steps: Callable[[Project], None]) -> Callable[[Project], None]:
    def setup(project: Project) -> None:
        for step in steps:
            step(project)
    return setup


CASES = [
    # -- the registry file
    Case("registry-missing", ("--registry", "{root}/envs/nope.yaml", "upgrade"),
         "{root}/envs/nope.yaml: registry file not found; pass --registry or set ORCHESTRATOR_REGISTRY"),
    Case("registry-is-a-folder", ("--registry", "{root}/envs", "upgrade"),
         "{root}/envs: is a folder, not a registry file; pass --registry FILE"),
    Case("malformed-yaml", ("upgrade",),
         "{root}/envs/registry.yaml:2: invalid YAML: mapping values are not allowed here",
         setup=registry_text("version: 1\n", "version: 1\n  bad: [indent\n")),
    Case("unclosed-quote", ("upgrade",),
         "{root}/envs/registry.yaml:5: invalid YAML: found unexpected end of stream",
         setup=registry_text("default_env: main", 'default_env: "main')),
    Case("duplicate-key", ("upgrade",),
         "{root}/envs/registry.yaml:6: default_env: defined twice (first at line 5); keep one",
         setup=registry_text("default_env: main\n", "default_env: main\ndefault_env: prod\n")),
    Case("python-tag", ("upgrade",),
         "{root}/envs/registry.yaml:5: invalid YAML: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'",
         setup=registry_text("default_env: main", "default_env: !!python/object/apply:os.system [touch pwned]")),
    Case("not-a-mapping", ("upgrade",),
         "{root}/envs/registry.yaml:1: the registry must be a mapping with 'version' and 'environments'",
         setup=lambda p: p.registry_path.write_text("- just\n- a list\n")),
    Case("unsupported-version", ("upgrade",),
         "{root}/envs/registry.yaml:1: version: unsupported registry version; expected 1",
         setup=edit_registry(lambda d: d.update(version=2))),
    Case("unknown-key", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.urll: unknown key; check its spelling against the "
         "registry format in README.md",
         setup=main_env(urll="sqlite://")),
    Case("unknown-project-key", ("upgrade",),
         "{root}/envs/registry.yaml:5: project.scripts: unknown key; check its spelling against the registry "
         "format in README.md",
         setup=edit_registry(lambda d: d["project"].update(scripts="x"))),
    Case("missing-url", ("upgrade",),
         "{root}/envs/registry.yaml:7: environments.main.url: required key is missing",
         setup=edit_registry(lambda d: d["environments"]["main"].pop("url"))),
    Case("wrong-type", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.protected: input should be true or false",
         setup=main_env(protected="maybe")),
    Case("empty-folder-list", ("upgrade",),
         "{root}/envs/registry.yaml:9: environments.main.version_locations: at least one version folder is "
         "required",
         setup=main_env(version_locations=[])),
    Case("bad-environment-name", ("upgrade",),
         "{root}/envs/registry.yaml:6: environments: environment name 'has space' must be letters, digits, "
         "'_', '-' or '.'",
         setup=edit_registry(lambda d: d["environments"].update({"has space": d["environments"]["main"]}))),
    Case("unknown-default-env", ("upgrade",),
         "{root}/envs/registry.yaml:5: default_env: 'nowhere' is not one of the environments (main, prod)",
         setup=edit_registry(lambda d: d.update(default_env="nowhere"))),
    Case("unknown-promote-from", ("upgrade",),
         "{root}/envs/registry.yaml:15: environments.prod.promote_from: 'qa' is not one of the environments "
         "(main, prod)",
         setup=edit_registry(lambda d: d["environments"]["prod"].update(promote_from="qa"))),
    Case("promote-from-cycle", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.promote_from: promote_from forms a cycle: main -> "
         "prod -> main",
         setup=main_env(promote_from="prod")),
    Case("unknown-environment", ("upgrade", "--env", "nowhere"),
         "unknown environment 'nowhere' in {root}/envs/registry.yaml; known environments: main, prod"),
    Case("unknown-environment-from-alembic-env", ("upgrade",),
         "unknown environment 'nowhere' in {root}/envs/registry.yaml; known environments: main, prod",
         setup=lambda p: p.environ.update({ENV_SELECT_VAR: "nowhere"})),
    Case("unset-variable", ("upgrade",),
         "environment 'main': url: variable ${ORCH_BAD_INPUT_UNSET_URL} is not set; export "
         "ORCH_BAD_INPUT_UNSET_URL or give a default as ${ORCH_BAD_INPUT_UNSET_URL:-...}",
         setup=main_env(url="${ORCH_BAD_INPUT_UNSET_URL}")),
    Case("invalid-url", ("upgrade",),
         "environment 'main': url 'not a url' is not a database URL; expected "
         "dialect+driver://user:password@host/dbname",
         setup=main_env(url="not a url")),
    Case("invalid-port", ("upgrade",),
         "environment 'main': url 'postgresql://app@localhost:notaport/app' is not a database URL; expected "
         "dialect+driver://user:password@host/dbname",
         setup=main_env(url="postgresql://app@localhost:notaport/app")),
    Case("unknown-driver", ("upgrade",),
         "environment 'main': unknown database driver 'postgresql+nosuchdriver'; use e.g. sqlite, "
         "postgresql+psycopg or mysql+pymysql",
         setup=main_env(url="postgresql+nosuchdriver://app@localhost/app")),
    Case("unknown-dialect", ("upgrade",),
         "environment 'main': unknown database driver 'oracle9'; use e.g. sqlite, postgresql+psycopg or "
         "mysql+pymysql",
         setup=main_env(url="oracle9://app@localhost/app")),
    Case("missing-folder", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.version_locations.1: version folder 'versions_gone' "
         "does not exist ({root}/versions_gone)",
         setup=main_env(version_locations=["versions_prod", "versions_gone"])),
    Case("folder-is-a-file", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.version_locations.1: version folder 'versions_file' "
         "is a file, not a folder ({root}/versions_file)",
         setup=both(lambda p: (p.root / "versions_file").write_text("x"),
                    main_env(version_locations=["versions_prod", "versions_file"]))),
    Case("folder-listed-twice", ("upgrade",),
         "{root}/envs/registry.yaml:11: environments.main.version_locations.1: version folder 'versions_prod' "
         "is listed twice (already as 'versions_prod')",
         setup=main_env(version_locations=["versions_prod", "versions_prod"])),
    # -- the version folders and their scripts
    Case("duplicate-revision-id", ("upgrade",),
         "revision id 7c3d5e9f1a22 is defined twice: "
         "versions_prod/7c3d5e9f1a22_add_workflow_data_to_sessions.py and versions_test/7c3d5e9f1a22_copy.py; "
         "give one of them a new id (and update what revises it)",
         setup=both(script("versions_test", PROD_REVISIONS[1], PROD_REVISIONS[0], message="copy"),
                    main_env(version_locations=["versions_prod", "versions_test"]))),
    Case("cycle", ("upgrade",),
         "revisions form a cycle: 4a1e7c2b9d10 -> d0c6e2a4f853 -> b5f8a1c3e742 -> 9e2b4d6f8a31 -> "
         "7c3d5e9f1a22 -> 4a1e7c2b9d10 (versions_prod/4a1e7c2b9d10_create_sessions.py); fix the down_revision "
         "that points back",
         setup=edit_script(PROD_REVISIONS[0], "down_revision: str | None = None",
                                                           f"down_revision: str | None = {PROD_HEAD!r}")),
    Case("multiple-heads-for-one-head", ("upgrade", "head"),
         "environment 'main': cannot resolve revision 'head': Multiple heads are present for given argument "
         "'head'; 0b0e00000001, d0c6e2a4f853; see `orchestrator history --env main` for the revisions it sees",
         setup=script("versions_prod", NEW, PROD_REVISIONS[3], message="second head")),
    Case("multiple-heads-new-revision", ("revision", "-m", "next"),
         "environment 'main' has 2 heads (0b0e00000001, d0c6e2a4f853); pass --head REV (or --head base "
         "--branch-label NAME for a new branch)",
         setup=script("versions_prod", NEW, PROD_REVISIONS[3], message="second head")),
    Case("unclosed-environment-graph", ("upgrade", "--env", "prod"),
         "environment 'prod': revision 0b0e00000001 (versions_prod/0b0e00000001_needs_test_only.py) depends "
         "on 7e5700000001, which is only in versions_test/; promote 7e5700000001 into a folder 'prod' lists "
         "first",
         setup=both(
        main_env(version_locations=["versions_prod", "versions_test"]),
        script("versions_test", "7e5700000001", PROD_HEAD, message="test only"),
        script("versions_prod", NEW, "7e5700000001", message="needs test only"))),
    Case("missing-down-revision", ("upgrade",),
         "environment 'main': revision 0b0e00000001 (versions_prod/0b0e00000001_orphan.py) refers to "
         "000000000404, which no version folder holds; fix its down_revision/depends_on or restore the "
         "missing script",
         setup=script("versions_prod", NEW, "000000000404", message="orphan")),
    Case("syntax-error-in-script", ("upgrade",),
         "versions_prod/0b0e00000001_broken.py:3: revision script has a syntax error: invalid syntax; fix the "
         "file",
         setup=raw_script("versions_prod", f"{NEW}_broken.py",
                          f"revision = {NEW!r}\ndown_revision = {PROD_HEAD!r}\ndef upgrade(:\n    pass\n")),
    Case("script-without-revision", ("upgrade",),
         "versions_prod/notes.py: no 'revision = \"...\"' assignment; every file in a version folder must be "
         "a revision script",
         setup=raw_script("versions_prod", "notes.py", "x = 1\n")),
    # -- arguments
    Case("unknown-option", ("upgrade", "--fast"),
         "No such option '--fast'; see `orchestrator upgrade --help`"),
    Case("missing-argument", ("downgrade",),
         "Missing argument 'TARGET'; see `orchestrator downgrade --help`"),
    Case("negative-lock-timeout", ("upgrade", "--lock-timeout", "-1"),
         "Invalid value for '--lock-timeout': -1.0 is not in the range x>=0; see `orchestrator upgrade --help`"),
    Case("promote-to-unknown-env", ("promote", "--to", "nowhere"),
         "unknown environment 'nowhere' in {root}/envs/registry.yaml; known environments: main, prod"),
    Case("promote-to-env-without-source", ("promote", "--to", "main"),
         "environment 'main' has no promote_from in {root}/envs/registry.yaml; use `upgrade --env main` "
         "instead"),
    Case("review-unknown-revision", ("review", "approve", "000000000404", "--reviewer", "alice"),
         "unknown revision '000000000404': no version folder in {root}/envs/registry.yaml holds it"),
    Case("review-unknown-ack-rule", ("review", "approve", PROD_HEAD, "--reviewer", "alice", "--ack", "no-such-rule"),
         "unknown lint rule 'no-such-rule'; known rules: drop-table, drop-column, column-type-change, "
         "add-not-null-without-default, set-not-null, rename-table, rename-column, index-not-concurrent, "
         "fk-not-valid, data-change, not-analysable"),
    Case("lint-unknown-revision", ("lint", "000000000404"),
         "unknown revision '000000000404': no version folder in {root}/envs/registry.yaml holds it"),
    Case("release-unknown-revision", ("release", "000000000404"),
         "unknown revision '000000000404': no version folder in {root}/envs/registry.yaml holds it"),
    Case("ci-matrix-unknown-dialect", ("ci-matrix", "--dialects", "sqlite,oracle"),
         "unknown dialect 'oracle'; choose from sqlite, postgresql, mysql"),
    # -- the database and the target
    Case("unknown-target-revision", ("upgrade", "nosuchrev"),
         "environment 'main': unknown revision 'nosuchrev'; see `orchestrator history --env main` for the "
         "revisions it sees",
         database=True),
    Case("downgrade-to-unknown-revision", ("downgrade", "nosuchrev"),
         "environment 'main': unknown revision 'nosuchrev'; see `orchestrator history --env main` for the "
         "revisions it sees",
         database=True),
    Case("downgrade-above-current", ("downgrade", PROD_HEAD, "--env", "prod"),
         "environment 'prod': cannot downgrade to d0c6e2a4f853: it is not below the current heads "
         "(b5f8a1c3e742); use `orchestrator upgrade d0c6e2a4f853` to go forward",
         database=True),
    Case("downgrade-past-base", ("downgrade", "-9"),
         f"environment 'main': cannot downgrade -9 from the current heads ({PROD_HEAD}): there are not that many "
         "revisions below them; see `orchestrator history --env main`", database=True),
    Case("upgrade-past-the-heads", ("upgrade", "+2"),
         "environment 'main': cannot resolve revision '+2': Relative revision +2 didn't produce 2 migrations; "
         "see `orchestrator history --env main` for the revisions it sees", database=True),
    Case("unknown-revision-in-database", ("upgrade",),
         "environment 'main': the database is at revision 90057000dead, but no version folder holds it; check "
         "that the URL points at the right database, or restore the missing script",
         setup=stamp_ghost, database=True),
    Case("protected-downgrade-without-force", ("downgrade", "-1", "--env", "prod"),
         "prod: refused: downgrade on protected environment 'prod' needs --force --reason TEXT",
         code=EXIT_REFUSED, blocked=True, database=True),
    Case("protected-downgrade-without-reason", ("downgrade", "-1", "--env", "prod", "--force"),
         "prod: refused: downgrade on protected environment 'prod' needs --force --reason TEXT",
         code=EXIT_REFUSED, blocked=True, database=True),
    Case("protected-stamp-without-reason", ("stamp", PROD_HEAD, "--env", "prod", "--force"),
         "prod: refused: stamp on protected environment 'prod' needs --force --reason TEXT",
         code=EXIT_REFUSED, blocked=True, database=True),
    Case("unreviewed-revision", ("upgrade", "--env", "prod"),
         "prod: refused: revision 0b0e00000001 (versions_prod/0b0e00000001_unreviewed.py) is not reviewed; "
         "run `orchestrator review approve 0b0e00000001 --reviewer NAME`",
         code=EXIT_REFUSED, blocked=True, database=True,
         setup=both(script("versions_prod", NEW, PROD_HEAD, message="unreviewed"),
                    lambda p: p.cli("-q", "upgrade", "--env", "main"))),
    Case("stale-revision", ("upgrade", "--env", "prod"),
         "prod: refused for 2 reasons:\n"
         "  - revision d0c6e2a4f853 (versions_prod/d0c6e2a4f853_create_career_reports.py) changed "
         "since approval by bob (sha256 360ac4ef8caf approved, d69d537fa2a4 on disk); review it again: "
         "`orchestrator review approve d0c6e2a4f853 --reviewer NAME`\n"
         "  - revision d0c6e2a4f853 (versions_prod/d0c6e2a4f853_create_career_reports.py) is not the content 'main' "
         "(promote_from) applied: sha256 360ac4ef8caf applied there (run {main_run}), d69d537fa2a4 on disk now; "
         "re-run it on 'main' first (downgrade it there, then `orchestrator upgrade --env main`)",
         code=EXIT_REFUSED, blocked=True, database=True,
         setup=edit_script(PROD_HEAD, "def upgrade() -> None:\n",
                           "def upgrade() -> None:\n    # edited after review\n")),
    Case("malformed-reviews-file", ("upgrade", "--env", "prod"),
         "prod: refused: cannot read the review ledger: {root}/envs/reviews.yaml:3: invalid YAML: expected "
         "the node content, but found '<stream end>'",
         code=EXIT_REFUSED, blocked=True, database=True, setup=ledger_text("version: 1\napprovals: [\n")),
    Case("python-tag-in-reviews-file", ("upgrade", "--env", "prod"),
         "prod: refused: cannot read the review ledger: {root}/envs/reviews.yaml:2: invalid YAML: could not determine "
         "a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'", code=EXIT_REFUSED, blocked=True, database=True,
         setup=ledger_text("version: 1\napprovals: !!python/object/apply:os.system [touch pwned]\n")),
    Case("reviews-file-unknown-key", ("upgrade", "--env", "prod"),
         "prod: refused: cannot read the review ledger: {root}/envs/reviews.yaml:3: approvals.0.sha256: "
         "required key is missing (and 3 more errors)",
         code=EXIT_REFUSED, blocked=True, database=True,
         setup=ledger_text("version: 1\napprovals:\n- revision: x\n  sha: y\n")),
]


# ---------------------------------------------------------------------------- the run


@pytest.fixture
def project(tmp_path: Path, db_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> Project:
    """main at the head, prod (protected, promoted from main) one revision behind, on two fresh databases."""
    monkeypatch.delenv(ENV_SELECT_VAR, raising=False)
    project = make_project(tmp_path / "project", {"main": db_factory(), "prod": db_factory()},
                           promote_from={"prod": "main"}, protected=("prod",))
    assert project.cli("-q", "upgrade", "--env", "main").exit_code == 0
    done = project.cli("-q", "upgrade", PROD_REVISIONS[3], "--env", "prod")
    assert done.exit_code == 0, done.output
    return project


PARAMS = [pytest.param(case, dialect, id=f"{case.name}-{dialect}", marks=pytest.mark.bad_input)
          for case in CASES for dialect in (["sqlite", "postgresql", "mysql"] if case.database else ["sqlite"])]


@pytest.mark.parametrize(("case", "orchestrator_dialect"), PARAMS, indirect=["orchestrator_dialect"])
def test_bad_input(case: Case, project: Project, record_property: Callable[[str, Any], None]) -> None:
    record_property("case", case.name)
    if case.setup is not None:
        case.setup(project)
    before = {env: database_snapshot(url) for env, url in project.urls.items()}

    result = project.cli("-q", *(a.replace("{root}", str(project.root)) for a in case.args))
    assert not list(Path.cwd().glob("pwned")) and not list(project.root.rglob("pwned"))  # no YAML tag ran

    expected = case.message.replace("{root}", str(project.root))
    if "{main_run}" in expected:  # the run that applied main's scripts, named by the promotion check
        expected = expected.replace("{main_run}", project.json("runs", "--env", "main")["runs"][0]["run_id"][:12])
    assert "Traceback" not in result.output
    assert (result.exit_code, result.stdout, result.stderr) == (case.code, "", f"error: {expected}\n")
    after = {env: database_snapshot(url) for env, url in project.urls.items()}
    if case.blocked:  # the refusal's audit record, and nothing else
        new = [r for r in after["prod"]["orchestrator_runs"] if r not in before["prod"]["orchestrator_runs"]]
        assert [(r[2], r[6]) for r in new] == [(case.args[0], "blocked")], new
        after["prod"]["orchestrator_runs"] = before["prod"]["orchestrator_runs"]
    assert after == before
