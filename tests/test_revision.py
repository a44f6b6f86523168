"""Writing new revisions: the authoring folder, several heads, autogenerate without our own tables."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from conftest import CANDIDATE, PROD_HEAD, REPO, TESTDATA, Project, make_project

EXTRA_MODEL = '''

class AuditNote(Base):
    __tablename__ = "audit_notes"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    body: Mapped[str] = mapped_column(sa.String(200), nullable=False)
'''


def test_revision_goes_to_the_authoring_folder(demo: Project) -> None:
    result = demo.cli("revision", "--env", "staging", "-m", "add index", "--rev-id", "aaa000000001")
    assert result.exit_code == 0, result.output
    assert result.stdout == "staging: wrote aaa000000001 to versions_prod/aaa000000001_add_index.py\n"
    text = (demo.root / "versions_prod" / "aaa000000001_add_index.py").read_text()
    assert f"down_revision: Union[str, Sequence[str], None] = '{PROD_HEAD}'" in text
    assert [h["revision"] for h in demo.json("heads", "--env", "prod")["heads"]] == ["aaa000000001"]


def test_revision_with_several_heads_asks_which(demo: Project) -> None:
    result = demo.cli("revision", "--env", "dev", "-m", "next")
    assert result.exit_code == 2
    assert result.stderr == (f"error: environment 'dev' has 2 heads ({TESTDATA}, {CANDIDATE}); "
                             "pass --head REV (or --head base --branch-label NAME for a new branch)\n")
    ok = demo.cli("revision", "--env", "dev", "-m", "next", "--head", CANDIDATE, "--rev-id", "bbb000000001")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "dev: wrote bbb000000001 to versions_test/bbb000000001_next.py\n"
    assert "bbb000000001" not in {h["revision"] for h in demo.json("history", "--env", "prod")["revisions"]}


def test_autogenerate_sees_models_but_never_the_history_tables(tmp_path: Path, db_factory: Callable[[], str]) -> None:
    project = make_project(tmp_path / "project", {"main": db_factory()},
                           project={"target_metadata": "examples.ican.models:Base.metadata"})
    shutil.copytree(REPO / "examples", project.root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    models = project.root / "examples" / "ican" / "models.py"
    models.write_text(models.read_text() + EXTRA_MODEL)
    assert project.cli("-q", "upgrade").exit_code == 0
    result = project.cli("revision", "-m", "audit notes", "--autogenerate", "--rev-id", "ccc000000001")
    assert result.exit_code == 0, result.output
    text = (project.root / "versions_prod" / "ccc000000001_audit_notes.py").read_text()
    assert "op.create_table('audit_notes'" in text
    assert "orchestrator_runs" not in text and "orchestrator_steps" not in text
    assert "drop_table" not in text.split("def downgrade")[0]


def test_autogenerate_against_an_unreachable_server_is_a_database_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"main": "postgresql+psycopg://app:pw@127.0.0.1:1/app"})
    before = sorted(p.name for p in (project.root / "versions_prod").iterdir())

    result = project.cli("-q", "revision", "-m", "next", "--autogenerate")

    assert (result.exit_code, result.stdout) == (1, ""), result.stderr  # a database failure, not a usage error
    assert result.stderr.startswith("error: environment 'main': cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/app: ")
    assert result.stderr.endswith("; check that the server is up and the URL is right\n")
    assert sorted(p.name for p in (project.root / "versions_prod").iterdir()) == before
