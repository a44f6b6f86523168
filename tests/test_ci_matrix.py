"""`ci-matrix`: the environment x dialect matrix for CI, and the example workflow that uses it."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import REPO, make_project


def test_matrix_has_one_entry_per_environment_and_dialect() -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["--registry", str(REPO / "envs" / "registry.yaml"), "ci-matrix"])
    assert result.exit_code == 0, result.output
    matrix = json.loads(result.stdout)
    pairs = [(e["env"], e["dialect"]) for e in matrix["include"]]
    assert pairs == [(env, d) for env in ("dev", "test", "staging", "prod") for d in ("sqlite", "postgresql", "mysql")]
    assert {e["name"] for e in matrix["include"]} == {f"{env}-{d}" for env, d in pairs}
    assert [e["protected"] for e in matrix["include"] if e["env"] == "prod"] == [True, True, True]


def test_github_format_is_one_output_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"a": "sqlite:///a.db", "b": "sqlite:///b.db"})
    result = project.cli("ci-matrix", "--format", "github", "--dialects", "sqlite,postgresql", "--env", "b")
    assert result.exit_code == 0, result.output
    assert result.stdout == ('matrix={"include":[{"name":"b-sqlite","env":"b","dialect":"sqlite","protected":false},'
                             '{"name":"b-postgresql","env":"b","dialect":"postgresql","protected":false}]}\n')


def test_unknown_dialect_is_a_usage_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"a": "sqlite:///a.db"})
    result = project.cli("ci-matrix", "--dialects", "sqlite,oracle")
    assert (result.exit_code, result.stderr) == (2, "error: unknown dialect 'oracle'; choose from sqlite, postgresql, mysql\n")


def test_example_workflow_uses_the_matrix() -> None:
    workflow = yaml.safe_load((REPO / "examples" / "ci" / "github-actions.yml").read_text())
    jobs = workflow["jobs"]
    assert "orchestrator ci-matrix --format github" in jobs["matrix"]["steps"][-1]["run"]
    assert jobs["migrations"]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    run = jobs["migrations"]["steps"][-1]["run"]
    assert "--orchestrator-envs ${{ matrix.env }}" in run and "--orchestrator-dialects ${{ matrix.dialect }}" in run
    assert "orchestrator review check --env prod --all" in jobs["review-gate"]["steps"][-1]["run"]
