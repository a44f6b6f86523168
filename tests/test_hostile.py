"""Hostile content: text from scripts, the review ledger, the environment and the database is shown inert.

A revision message, an exception text, a reviewer's name and an operator name
carrying terminal escape sequences, HTML and rich markup are printed by every
text output as visible text: no control character reaches the terminal, markup
is not interpreted, and the characters themselves are still there to read.
(YAML tags that would construct Python objects: tests/test_bad_inputs.py.)
"""
from __future__ import annotations

import re

import pytest

from conftest import PROD_HEAD, Project

HOSTILE = "\x1b[31mred\x1b[0m\x07 <script>alert(1)</script> [bold]markup[/bold] \x1b]0;title\x07"
SHOWN = ["\\x1b[31mred\\x1b[0m\\x07", "<script>alert(1)</script>", "[bold]markup[/bold]", "\\x1b]0;title\\x07"]
EVIL = "e1e1e1e1e1e1"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def unfolded(text: str) -> str:
    """Return a table's text with borders and line breaks removed, so a folded cell reads whole again."""
    return re.sub(r"[\s│┃|]+", "", text)


@pytest.fixture
def hostile(single: Project) -> Project:
    """A project whose next revision has a hostile message, is approved by a hostile reviewer and fails hostilely."""
    assert single.cli("-q", "upgrade").exit_code == 0
    single.write_revision("versions_prod", EVIL, PROD_HEAD, f"raise RuntimeError({HOSTILE!r})",
                          message="hostile")
    path = next((single.root / "versions_prod").glob(f"{EVIL}_*.py"))
    path.write_text(path.read_text().replace('"""hostile"""', f'"""{HOSTILE}"""', 1))
    approved = single.cli("review", "approve", EVIL, "--reviewer", HOSTILE)
    assert approved.exit_code == 0, approved.output
    single.environ["ORCHESTRATOR_OPERATOR"] = HOSTILE
    return single


@pytest.mark.parametrize("args", [
    ("history",), ("plan",), ("status",), ("runs",), ("review", "status"), ("review", "approve", EVIL, "--reviewer", HOSTILE),
    ("upgrade",), ("lint", EVIL), ("heads",),
], ids=" ".join)
def test_hostile_text_is_inert_in_every_text_output(hostile: Project, args: tuple[str, ...]) -> None:
    if args[0] not in ("upgrade", "review"):
        assert hostile.cli("-q", "upgrade").exit_code == 1  # a failed run whose error and operator are hostile
    result = hostile.cli(*args)
    output = result.stdout + result.stderr
    assert not CONTROL.findall(output), (args, output)
    if args not in (("lint", EVIL), ("status",)):  # (lint shows no message; status no error text)
        assert any(shown in unfolded(output) for shown in map(unfolded, SHOWN)), (args, output)


def test_a_failed_run_shows_every_hostile_field_as_text(hostile: Project) -> None:
    failed = hostile.cli("-q", "upgrade")
    assert failed.exit_code == 1
    assert failed.stderr == (f"error: environment 'main': revision {EVIL} (versions_prod/{EVIL}_hostile.py) failed: "
                             f"{' '.join(SHOWN)}; rolled back; the database is at {PROD_HEAD}; "
                             "see `orchestrator runs --env main`\n")
    assert not CONTROL.findall(failed.stderr)
    runs = unfolded(hostile.cli("runs", "--run", hostile.json("runs")["runs"][0]["run_id"][:12]).stdout)
    assert all(unfolded(shown) in runs for shown in SHOWN), runs  # operator and error, whole, as text
    review = unfolded(hostile.cli("review", "status").stdout)
    assert all(unfolded(shown) in review for shown in SHOWN), review  # the reviewer's name
    history = unfolded(hostile.cli("history").stdout)
    assert all(unfolded(shown) in history for shown in SHOWN), history  # the revision's message
