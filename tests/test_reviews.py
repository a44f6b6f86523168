"""The review ledger (envs/reviews.yaml) as a file: reading it strictly, writing it back, and the approve verb.

No database is needed except where the gate itself reads the ledger (SQLite
files under the test's folder).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import PROD_HEAD, PROD_REVISIONS, REPO, Project, make_project
from orchestrator.errors import RegistryError
from orchestrator.lint import RULES
from orchestrator.reviews import REVIEWED, STALE, UNREVIEWED, Approval, load_ledger

KNOWN_RULES = ", ".join(RULES)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """staging and a protected prod on SQLite files (not created until used), with the demo's ledger."""
    urls = {name: f"sqlite:///{tmp_path}/db/{name}.db" for name in ("staging", "prod")}
    return make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))


def ledger_path(project: Project) -> Path:
    return project.root / "envs" / "reviews.yaml"


def demo_ledger_text() -> str:
    return (REPO / "envs" / "reviews.yaml").read_text()


# ---------------------------------------------------------------------------------------------- reading


def test_missing_file_is_an_empty_ledger(project: Project, tmp_path: Path) -> None:
    assert load_ledger(tmp_path / "nowhere" / "reviews.yaml").approvals == {}
    (tmp_path / "blank.yaml").write_text("\n  \n")
    assert load_ledger(tmp_path / "blank.yaml").approvals == {}

    ledger_path(project).unlink()
    check = project.cli("review", "check", "--env", "prod", "--all")
    assert check.exit_code == 3
    assert check.stdout.splitlines() == [
        f"prod: revision {rev} (versions_prod/{next((project.root / 'versions_prod').glob(rev + '_*.py')).name}) "
        f"is not reviewed; run `orchestrator review approve {rev} --reviewer NAME`" for rev in PROD_REVISIONS]
    states = project.json("review", "status", "--env", "prod", "--all")["revisions"]
    assert [(r["state"], r["reviewer"]) for r in states] == [(UNREVIEWED, None)] * 5
    assert not ledger_path(project).exists()  # reading never creates it


def test_the_demo_ledger_loads(project: Project) -> None:
    ledger = load_ledger(ledger_path(project))
    assert list(ledger.approvals) == list(PROD_REVISIONS)
    assert ledger.approvals[PROD_HEAD] == Approval(
        PROD_HEAD, "360ac4ef8caff1d88413c96aa6cdcb1174b9823bbd95dfad6e42c1eedd6ec059", "bob", "2026-11-06T10:00:00Z",
        "career_reports", ())
    assert ledger.state(PROD_HEAD, "360ac4ef8caff1d88413c96aa6cdcb1174b9823bbd95dfad6e42c1eedd6ec059") == REVIEWED
    assert ledger.state(PROD_HEAD, "0" * 64) == STALE
    assert ledger.state("c0ffee000000", "0" * 64) == UNREVIEWED


BAD_SHA = "30ca0bc545cc4c41fedcd6b24f38cae4030813b054a18831f78121ee6d21b649"


def _duplicate(text: str) -> str:
    return text + text.split("approvals:\n", 1)[1].split("- revision: 7c3d5e9f1a22")[0]


MALFORMED = [
    # (id, how the demo ledger is broken, line, message after "path:line: ")
    ("invalid-yaml", lambda t: t.replace("  reviewer: alice\n", "  reviewer: alice\n   bad: [\n", 1),
     8, "invalid YAML: mapping values are not allowed here"),
    ("bad-indentation", lambda t: t.replace("  reviewer: bob\n", " reviewer: bob\n", 1),
     25, "invalid YAML: expected <block end>, but found '<block mapping start>'"),
    ("unknown-key", lambda t: t.replace("  note: user_profiles\n", "  note: user_profiles\n  comment: fine\n", 1),
     28, "approvals.3.comment: unknown key; check its spelling against the review ledger format in README.md"),
    ("duplicate-approval", _duplicate,
     35, "approvals.5: revision 4a1e7c2b9d10 is approved twice; keep one entry"),
    ("bad-sha256", lambda t: t.replace(BAD_SHA, BAD_SHA.upper(), 1),
     6, "approvals.0.sha256: string should match pattern '^[0-9a-f]{64}$'"),
    ("short-sha256", lambda t: t.replace(BAD_SHA, BAD_SHA[:12], 1),
     6, "approvals.0.sha256: string should match pattern '^[0-9a-f]{64}$'"),
    ("duplicate-key", lambda t: t.replace("  reviewer: bob\n", "  reviewer: bob\n  reviewer: eve\n", 1),
     26, "approvals.3.reviewer: defined twice (first at line 25); keep one"),
    ("missing-reviewer", lambda t: t.replace("  reviewer: bob\n", "", 1),
     23, "approvals.3.reviewer: required key is missing"),
    ("empty-reviewer", lambda t: t.replace("  reviewer: bob\n", "  reviewer: ''\n", 1),
     25, "approvals.3.reviewer: string should have at least 1 character"),
    ("acknowledged-not-a-list", lambda t: t.replace("acknowledged: []", "acknowledged: drop-column", 1),
     10, "approvals.0.acknowledged: input should be a valid list"),
    ("not-a-mapping", lambda t: "- revision: 4a1e7c2b9d10\n",
     1, "the review ledger must be a mapping with 'version' and 'approvals'"),
    ("python-tag", lambda t: t.replace("note: career_reports", "note: !!python/object/apply:os.system [id]", 1),
     33, "invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
]


@pytest.mark.parametrize("breaks, line, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_ledger_names_file_line_and_field(project: Project, breaks, line: int, message: str) -> None:
    path = ledger_path(project)
    path.write_text(breaks(demo_ledger_text()))
    with pytest.raises(RegistryError) as raised:
        load_ledger(path)
    assert (raised.value.line, str(raised.value)) == (line, f"{path}:{line}: {message}")
    for verb in (("review", "check", "--env", "prod", "--all"), ("review", "approve", PROD_HEAD, "--reviewer", "x")):
        result = project.cli(*verb)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {path}:{line}: {message}\n"), verb


def test_the_gate_refuses_prod_when_the_ledger_is_unreadable(project: Project) -> None:
    path = ledger_path(project)
    path.write_text(MALFORMED[0][1](demo_ledger_text()))
    staging = project.cli("-q", "upgrade", "--env", "staging")  # unprotected: the ledger does not matter
    assert staging.exit_code == 0, staging.output
    prod = project.cli("-q", "upgrade", "--env", "prod")
    assert prod.exit_code == 3
    assert prod.stderr == (f"error: prod: refused: cannot read the review ledger: {path}:8: "
                           "invalid YAML: mapping values are not allowed here\n")
    assert project.json("current", "--env", "prod")["heads"] == []


def test_without_a_configured_ledger_prod_is_refused(tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path}/db/{name}.db" for name in ("staging", "prod")}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",),
                           project={"reviews": None})
    missing = "no review ledger configured; set project.reviews in the registry (e.g. envs/reviews.yaml)"
    assert project.cli("-q", "upgrade", "--env", "staging").exit_code == 0
    prod = project.cli("-q", "upgrade", "--env", "prod")
    assert (prod.exit_code, prod.stderr) == (3, f"error: prod: refused: cannot read the review ledger: {missing}\n")
    approve = project.cli("review", "approve", PROD_HEAD, "--reviewer", "alice")
    assert (approve.exit_code, approve.stderr) == (2, f"error: {missing}\n")


def test_a_ledger_of_only_comments_is_empty(project: Project) -> None:
    path = ledger_path(project)
    path.write_text("# Review ledger: approvals will go here.\n")
    assert load_ledger(path).approvals == {}
    assert project.cli("review", "approve", PROD_HEAD, "--reviewer", "alice").exit_code == 0
    assert list(load_ledger(path).approvals) == [PROD_HEAD]


def test_unknown_rule_in_the_ledger_file_is_refused(project: Project) -> None:
    path = ledger_path(project)
    path.write_text(demo_ledger_text().replace("acknowledged: []", "acknowledged: [drop-colum]", 1))
    result = project.cli("review", "check", "--env", "prod", "--all")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:10: approvals.0.acknowledged")
    assert "drop-colum" in result.stderr and KNOWN_RULES in result.stderr


# ---------------------------------------------------------------------------------------------- writing


def test_approve_writes_a_ledger_that_loads_back_and_keeps_other_entries(project: Project) -> None:
    path = ledger_path(project)
    before = load_ledger(path).approvals
    # an id of digits only would read back as a number if it were written unquoted
    new = "202611220001"
    script = project.write_revision("versions_prod", new, PROD_HEAD,
                                    'op.drop_column("sessions", "workflow_data")', message="drop workflow data")
    result = project.cli("--json", "review", "approve", new[:8], "--reviewer", "  carol ", "--note", "checked: no readers",
                         "--ack", "drop-column", "--ack", "drop-column")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    assert json.loads(result.stdout) == {
        "revision": new, "sha256": digest, "reviewer": "carol", "note": "checked: no readers",
        "acknowledged": ["drop-column", "drop-column"], "path": f"versions_prod/{script.name}",
        "unacknowledged_errors": []}

    after = load_ledger(path).approvals
    assert {k: v for k, v in after.items() if k != new} == before
    approval = after[new]
    assert (approval.revision, approval.sha256, approval.reviewer, approval.note, approval.acknowledged) == \
        (new, digest, "carol", "checked: no readers", ("drop-column",))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", approval.approved_at)
    text = path.read_text()
    assert text.startswith("# Review ledger: ")
    assert re.findall(r"^- revision: '?(\w+)'?$", text, re.M) == sorted([*PROD_REVISIONS, new])

    # approving again replaces the entry; revoking removes only it
    assert project.cli("review", "approve", new, "--reviewer", "dave").exit_code == 0
    again = load_ledger(path).approvals
    assert (len(again), again[new].reviewer, again[new].acknowledged, again[new].note) == (6, "dave", (), None)
    assert project.cli("review", "revoke", new).exit_code == 0
    assert load_ledger(path).approvals == before
    check = project.cli("review", "check", "--env", "prod", "--all")
    assert check.exit_code == 3 and check.stdout.startswith(f"prod: revision {new} ")


def test_approve_keeps_entries_for_revisions_no_folder_holds(project: Project) -> None:
    path = ledger_path(project)
    path.write_text(demo_ledger_text() + (
        "- revision: 0ldc0de00000\n  sha256: " + "ab" * 32 + "\n  reviewer: zoe\n"
        "  approved_at: '2025-01-01T00:00:00Z'\n  acknowledged: [drop-table]\n"))
    assert project.cli("review", "approve", PROD_REVISIONS[0], "--reviewer", "alice").exit_code == 0
    kept = load_ledger(path).approvals["0ldc0de00000"]
    assert (kept.reviewer, kept.sha256, kept.acknowledged) == ("zoe", "ab" * 32, ("drop-table",))


def test_unknown_ack_rule_is_a_usage_error(project: Project) -> None:
    path = ledger_path(project)
    before = path.read_bytes()
    result = project.cli("review", "approve", PROD_HEAD, "--reviewer", "alice", "--ack", "drop-colum")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"error: unknown lint rule 'drop-colum'; known rules: {KNOWN_RULES}\n"
    two = project.cli("review", "approve", PROD_HEAD, "--reviewer", "alice", "--ack", "drop-column", "--ack", "nope",
                      "--ack", "Drop-Table")
    assert two.stderr == f"error: unknown lint rule 'nope', 'Drop-Table'; known rules: {KNOWN_RULES}\n"
    assert path.read_bytes() == before


@pytest.mark.parametrize("reviewer", ["", "   "])
def test_reviewer_must_name_someone(project: Project, reviewer: str) -> None:
    path = ledger_path(project)
    before = path.read_bytes()
    result = project.cli("review", "approve", PROD_HEAD, "--reviewer", reviewer)
    assert (result.exit_code, result.stdout, result.stderr) == \
        (2, "", "error: --reviewer must name who reviewed the revision\n")
    assert path.read_bytes() == before


def test_approve_usage_errors(project: Project) -> None:
    path = ledger_path(project)
    before = path.read_bytes()
    missing = project.run("review", "approve", PROD_HEAD)
    assert (missing.returncode, missing.stderr) == (
        2, "error: Missing option '--reviewer'; see `orchestrator review approve --help`\n")
    unknown = project.cli("review", "approve", "c0ffee", "--reviewer", "alice")
    assert (unknown.exit_code, unknown.stderr) == (
        2, f"error: unknown revision 'c0ffee': no version folder in {project.registry_path} holds it\n")
    revoke = project.cli("review", "revoke", "c0ffee")
    assert (revoke.exit_code, revoke.stderr) == (
        2, f"error: unknown revision 'c0ffee': no version folder in {project.registry_path} holds it\n")
    assert path.read_bytes() == before
