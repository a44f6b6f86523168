"""Run exactly what was judged, and fail closed under stock alembic (issue 13, items 4 and 9).

Every script runs from the bytes that were hashed (never re-read, never a
``.pyc``); on a protected environment no code of an unapproved script runs,
whichever verb reads it; stock ``alembic`` through the generated ini is
classified from public seams and refused when it cannot be judged.
"""
from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import PROD_HEAD, Project, make_project, query, schema_snapshot, table_names
from orchestrator import alembic_compat

NEW = "c0de00000001"
NEXT = "c0de00000002"


def ok(project: Project, *args: str) -> None:
    result = project.cli("-q", *args)
    assert result.exit_code == 0, (args, result.output)


@pytest.fixture
def pair(tmp_path: Path, db_factory: Callable[[], str]) -> Project:
    """staging and a protected prod promoted from it, at the demo's prod head."""
    urls = {"staging": db_factory(), "prod": db_factory()}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))
    ok(project, "upgrade", "--env", "staging")
    ok(project, "upgrade", "--env", "prod")
    return project


def versions(project: Project, env: str) -> list[str]:
    return sorted(v for (v,) in query(project.urls[env], "SELECT version_num FROM alembic_version"))


def planting(url: str, table: str) -> str:
    """Module-level code that creates ``table`` in the database at ``url`` (what must never run unapproved)."""
    return (f"import sqlalchemy as _sa\n_engine = _sa.create_engine({url!r}, poolclass=_sa.pool.NullPool)\n"
            f"with _engine.begin() as _conn:\n    _conn.exec_driver_sql('CREATE TABLE {table} (id INTEGER)')\n"
            "_engine.dispose()\n")


def alembic(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Run stock alembic as a user would; ``stderr`` holds everything it printed (it reports FAILED on stdout)."""
    result = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=project.root, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(project.root),
                                            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ
                                               else {})})
    result.stderr = result.stdout + result.stderr
    return result


# ---------------------------------------------------------------------------- stock alembic fails closed


def test_stock_alembic_on_a_protected_environment_with_an_unreviewed_revision_is_refused(pair: Project) -> None:
    marker = pair.root / "imported"
    pair.write_revision("versions_prod", NEW, PROD_HEAD, 'op.create_table("unreviewed", sa.Column("id", sa.Integer))',
                        message="unreviewed", extra=f"open({str(marker)!r}, 'w').close()")
    written = pair.cli("ini", "--env", "prod", "-o", str(pair.root / "prod.ini"))
    assert written.exit_code == 0, written.output
    before = schema_snapshot(pair.urls["prod"])
    shown = f"revision {NEW} (versions_prod/{NEW}_unreviewed.py)"
    upgrade = alembic(pair, "-c", "prod.ini", "upgrade", "heads")
    assert upgrade.returncode != 0
    assert f"FAILED: prod: refused for 2 reasons:\n  - {shown} is not reviewed;" in upgrade.stderr, upgrade.stderr
    downgrade = alembic(pair, "-c", "prod.ini", "downgrade", "-1")
    assert downgrade.returncode != 0
    assert ("FAILED: prod: refused: downgrade on protected environment 'prod' needs --force --reason TEXT"
            in downgrade.stderr), downgrade.stderr
    stamp = alembic(pair, "-c", "prod.ini", "stamp", "heads")
    assert stamp.returncode != 0
    assert "FAILED: prod: refused: stamp on protected environment 'prod' needs --force --reason TEXT" in stamp.stderr
    offline = alembic(pair, "-c", "prod.ini", "upgrade", "--sql", f"{PROD_HEAD}:heads")
    assert offline.returncode != 0
    assert ("FAILED: environment 'prod' is protected: stock alembic --sql would render scripts outside the review "
            "gate; use `orchestrator upgrade --env prod --sql`") in offline.stderr, offline.stderr
    # nothing applied, no code of the unreviewed script ran, each refusal recorded as a blocked run
    assert schema_snapshot(pair.urls["prod"]) == before and versions(pair, "prod") == [PROD_HEAD]
    assert not marker.exists()
    runs = pair.json("runs", "--env", "prod")["runs"]
    assert [(r["command"], r["status"]) for r in runs[:3]] == [("stamp", "blocked"), ("downgrade", "blocked"),
                                                               ("upgrade", "blocked")]


def test_a_stamp_through_alembics_python_api_on_prod_is_refused_as_it_applies(pair: Project) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    pair.write_revision("versions_prod", NEW, PROD_HEAD, 'op.create_table("stamped", sa.Column("id", sa.Integer))',
                        message="stamped")
    approve(pair, NEW)
    ok(pair, "upgrade", "--env", "staging")
    assert pair.cli("ini", "--env", "prod", "-o", str(pair.root / "prod.ini")).exit_code == 0
    # no command line: a stamp looks like an upgrade until its first step, which is refused and rolled back
    with pytest.raises(CommandError, match="Alembic applied a stamp step in a run judged as upgrade"):
        command.stamp(Config(str(pair.root / "prod.ini")), NEW)
    assert versions(pair, "prod") == [PROD_HEAD] and "stamped" not in table_names(pair.urls["prod"])
    assert pair.json("runs", "--env", "prod")["runs"][0]["status"] == "failed"


def test_stock_alembic_upgrade_heads_with_two_labelled_heads(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    project = make_project(tmp_path / "project", {"main": db_factory()}, copy_demo=False)
    project.write_revision("versions_prod", "a00000000001", None, 'op.create_table("base_t", sa.Column("id", sa.Integer))',
                           message="base")
    project.write_revision("versions_prod", "e00000000001", "a00000000001",
                           'op.create_table("expand_t", sa.Column("id", sa.Integer))', message="expand",
                           extra="branch_labels = ('expand',)")
    project.write_revision("versions_prod", "c00000000001", "a00000000001",
                           'op.create_table("contract_t", sa.Column("id", sa.Integer))', message="contract",
                           extra="branch_labels = ('contract',)")
    written = project.cli("ini", "--env", "main", "-o", str(project.root / "main.ini"))
    assert written.exit_code == 0, written.output
    result = alembic(project, "-c", "main.ini", "upgrade", "heads")
    assert result.returncode == 0, result.stderr
    assert versions(project, "main") == ["c00000000001", "e00000000001"]
    assert {"base_t", "expand_t", "contract_t"} <= table_names(project.urls["main"])
    run = project.json("runs", "--env", "main")["runs"][0]
    assert (run["command"], run["status"], len(run["steps"])) == ("upgrade", "succeeded", 3)
    # one branch down by its label, through the same ini
    down = alembic(project, "-c", "main.ini", "downgrade", "expand@-1")
    assert down.returncode == 0, down.stderr
    assert versions(project, "main") == ["a00000000001", "c00000000001"] or versions(project, "main") == [
        "c00000000001"]


# ---------------------------------------------------------------------------- the bytes that were judged


def approve(project: Project, *revisions: str) -> None:
    for revision in revisions:
        ok(project, "review", "approve", revision, "--reviewer", "alice")


def test_a_script_swapped_during_the_run_never_runs(pair: Project) -> None:
    second = pair.root / "versions_prod" / f"{NEXT}_good.py"
    evil = (f'"""good"""\nfrom alembic import op\nimport sqlalchemy as sa\nrevision = {NEXT!r}\n'
            f"down_revision = {NEW!r}\nbranch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n"
            '    op.create_table("evil", sa.Column("id", sa.Integer))\n\n\ndef downgrade():\n    pass\n')
    # the first revision rewrites the second's file while prod runs (staging runs both untouched)
    pair.write_revision("versions_prod", NEW, PROD_HEAD, f"""
        import os
        if os.environ.get("ALEMBIC_ENV") == "prod":
            open({str(second)!r}, "w").write({evil!r})
        op.create_table("first", sa.Column("id", sa.Integer))""", message="swapper")
    pair.write_revision("versions_prod", NEXT, NEW, 'op.create_table("good", sa.Column("id", sa.Integer))',
                        message="good")
    approve(pair, NEW, NEXT)
    ok(pair, "upgrade", "--env", "staging")
    result = pair.cli("-q", "upgrade", "--env", "prod")
    tables = table_names(pair.urls["prod"])
    assert "evil" not in tables
    if result.exit_code == 0:
        assert "good" in tables and versions(pair, "prod") == [NEXT]
    else:  # the recorder saw the file change: the step is rolled back and the run fails, recorded
        assert result.exit_code == 1 and f"revision {NEXT} changed on disk" in result.stderr, result.output
        assert pair.json("runs", "--env", "prod")["runs"][0]["status"] == "failed"


def test_a_planted_pyc_beside_an_approved_script_never_runs(pair: Project) -> None:
    path = pair.write_revision("versions_prod", NEW, PROD_HEAD, 'op.create_table("good", sa.Column("id", sa.Integer))',
                               message="approved")
    approve(pair, NEW)
    ok(pair, "upgrade", "--env", "staging")
    other = pair.root / "other.py"
    other.write_text(path.read_text().replace('"good"', '"evil"'))
    pyc = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
    pyc.parent.mkdir(exist_ok=True)
    py_compile.compile(str(other), cfile=str(pyc), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    stat = path.stat()
    os.utime(pyc, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 0, result.output
    tables = table_names(pair.urls["prod"])
    assert "good" in tables and "evil" not in tables


def test_an_unreviewed_scripts_module_code_never_runs_on_prod(pair: Project, orchestrator_dialect: str) -> None:
    pair.write_revision("versions_prod", NEW, PROD_HEAD, "pass", message="planter",
                        extra=planting(pair.urls["prod"], "planted"))
    result = pair.cli("-q", "upgrade", "--env", "prod")
    assert result.exit_code == 3, result.output
    assert f"revision {NEW} (versions_prod/{NEW}_planter.py) is not reviewed" in result.stderr
    for verb in (("status",), ("review", "status", "--env", "prod"), ("review", "check", "--env", "prod"),
                 ("plan", "--env", "prod"), ("lint", "--env", "prod", NEW), ("report",)):
        pair.cli("-q", *verb)
    assert "planted" not in table_names(pair.urls["prod"])
    assert pair.json("runs", "--env", "prod")["runs"][0]["status"] == "blocked"


def test_adopt_auto_on_prod_runs_no_unreviewed_code(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    urls = {"staging": db_factory(), "prod": db_factory()}
    project = make_project(tmp_path / "project", urls, promote_from={"prod": "staging"}, protected=("prod",))
    ok(project, "upgrade", "--env", "staging")
    ok(project, "upgrade", "--env", "prod")  # the demo's approved schema, then forget the version table
    with project.engine("prod").begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    marker = project.root / "upgrade-ran"
    project.write_revision("versions_prod", NEW, PROD_HEAD, f'open({str(marker)!r}, "w").close()', message="planter",
                           extra=planting(project.urls["prod"], "planted"))
    result = project.cli("-q", "adopt", "--env", "prod", "--revision", "auto")
    assert result.exit_code == 3, result.output
    assert (f"revision {NEW} (versions_prod/{NEW}_planter.py) is not approved at its current content, and adopt on "
            "protected environment 'prod' runs its code in a scratch database; run `orchestrator review approve "
            f"{NEW} --reviewer NAME` first") in result.stderr, result.stderr
    assert not marker.exists() and "planted" not in table_names(project.urls["prod"])
    assert "alembic_version" not in table_names(project.urls["prod"])


def test_system_exit_at_import_fails_the_revision(single: Project) -> None:
    ok(single, "upgrade")
    single.write_revision("versions_prod", NEW, PROD_HEAD, "pass", message="exits", extra="import sys\nsys.exit(0)")
    heads = single.cli("heads")  # reading parses, it does not import
    assert heads.exit_code == 0, heads.output
    result = single.cli("-q", "upgrade")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"error: environment 'main': versions_prod/{NEW}_exits.py: cannot import revision script "
                             f"{NEW}: SystemExit: 0; no step was applied from it; fix the script and rerun\n")
    assert versions(single, "main") == [PROD_HEAD]
    assert single.json("runs", "--env", "main")["runs"][0]["status"] == "failed"
    # where a script is only read (its identifiers are not literals, so it is run to read them): exit 2
    single.write_revision("versions_prod", NEXT, NEW, "pass", message="computed",
                          extra="import sys\nsys.exit(0)\nrevision = str(revision)")
    read = single.cli("heads")
    assert (read.exit_code, read.stderr) == (
        2, f"error: versions_prod/{NEXT}_computed.py: cannot import revision script: SystemExit: 0\n")


# ---------------------------------------------------------------------------- the public-API fallback


def test_alembic_internals_are_used_only_on_tested_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic.script import ScriptDirectory

    assert alembic_compat.ALEMBIC_TESTED[0] <= alembic_compat.alembic_version() < alembic_compat.ALEMBIC_TESTED[1]
    assert alembic_compat.internals_usable(ScriptDirectory, "_upgrade_revs")
    assert not alembic_compat.internals_usable(ScriptDirectory, "_no_such_member")
    monkeypatch.setattr(alembic_compat, "ALEMBIC_TESTED", ((9, 0), (9, 1)))
    assert not alembic_compat.internals_usable(ScriptDirectory, "_upgrade_revs")


def test_outside_the_tested_versions_the_public_fallback_runs_and_gates(
        pair: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alembic_compat, "ALEMBIC_TESTED", ((9, 0), (9, 1)))
    pair.write_revision("versions_prod", NEW, PROD_HEAD, 'op.create_table("fallback_t", sa.Column("id", sa.Integer))',
                        message="fallback", downgrade='op.drop_table("fallback_t")')
    refused = pair.cli("-q", "upgrade", "--env", "prod")
    assert refused.exit_code == 3 and "is not reviewed" in refused.stderr
    approve(pair, NEW)
    ok(pair, "upgrade", "--env", "staging")
    ok(pair, "upgrade", "--env", "prod")
    assert versions(pair, "prod") == [NEW] and "fallback_t" in table_names(pair.urls["prod"])
    ok(pair, "downgrade", "--env", "staging", PROD_HEAD)
    assert versions(pair, "staging") == [PROD_HEAD] and "fallback_t" not in table_names(pair.urls["staging"])
    # a stamp has no public equivalent: refused on a protected environment, even forced
    stamp = pair.cli("-q", "stamp", "--env", "prod", PROD_HEAD, "--force", "--reason", "test")
    assert stamp.exit_code == 2, stamp.output
    assert "has no tested way to stamp the judged scripts" in stamp.stderr
    assert versions(pair, "prod") == [NEW]
