"""pytest-alembic's default tests on an orchestrator environment, through ``orchestrator ini``.

A pytester project holds the demo's envs/, versions_*/ and examples/ plus the
scenario ``tests/examples/pytest_alembic_interop/`` (a ``tests/conftest.py`` whose
``alembic_engine`` is a throwaway database from the orchestrator's plugin).
``orchestrator ini --env ENV -o alembic.ini`` writes the only Alembic file there
is, and pytest runs with pytest-alembic's ``--test-alembic``.

What this pins, beyond "it works":

- on an unprotected environment (staging: prod's folders, not protected), the
  default tests pass on every dialect;
- on the protected ``prod`` the packaged env.py applies the production gate to
  stock Alembic too, so upgrades pass once ``staging`` has applied the revisions
  and downgrades are refused;
- ``alembic downgrade base`` through the packaged env.py, and an ``Engine``
  handed over in ``config.attributes["connection"]`` (pytest-alembic's
  documented way).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from orchestrator.testing.databases import DIALECTS, docker_available, env_var, unavailable_reason

pytest_plugins = ["pytester"]

pytest.importorskip("pytest_alembic")

REPO = Path(__file__).resolve().parent.parent
SCENARIO = Path(__file__).resolve().parent / "examples" / "pytest_alembic_interop"
DEFAULT_TESTS = ("test_model_definitions_match_ddl", "test_single_head_revision", "test_up_down_consistency",
                 "test_upgrade")
NODE = "tests/conftest.py::pytest-alembic::{}"


def available(dialect: str) -> bool:
    """Tell whether the orchestrator's plugin can provide databases of this dialect here."""
    return dialect == "sqlite" or bool(os.environ.get(env_var(dialect))) or docker_available()


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo's folders and registry plus the scenario's conftest, in a pytester directory."""
    for name in ("ALEMBIC_ENV", "ORCHESTRATOR_REGISTRY", "PYTEST_ADDOPTS", "DEV_DATABASE_URL", "TEST_DATABASE_URL",
                 "STAGING_DATABASE_URL", "PROD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("versions_prod", "versions_test", "examples", "envs"):
        shutil.copytree(REPO / folder, pytester.path / folder, ignore=ignore)
    shutil.copytree(SCENARIO, pytester.path, dirs_exist_ok=True, ignore=ignore)
    return pytester.path


def orchestrator(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the orchestrator's CLI in the project, as a user would."""
    result = pytester.run(sys.executable, "-m", "orchestrator", "--registry", "envs/registry.yaml", *args, timeout=300)
    assert result.ret == 0, result.stderr.str()
    return result


def run_pytest_alembic(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, env: str, dialect: str = "sqlite",
                       *args: str, hand_over: str = "connection") -> pytest.RunResult:
    """Write alembic.ini for ``env`` and run pytest-alembic's default tests on a ``dialect`` database."""
    orchestrator(pytester, "ini", "--env", env, "-o", "alembic.ini")
    monkeypatch.setenv("INTEROP_ENV", env)
    monkeypatch.setenv("INTEROP_DIALECT", dialect)
    monkeypatch.setenv("INTEROP_HAND_OVER", hand_over)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--test-alembic", "-v", *args, timeout=600)


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Return each pytest-alembic test's outcome from the verbose lines."""
    found = {}
    for line in result.outlines:
        for name in DEFAULT_TESTS:
            if line.startswith(NODE.format(name) + " "):
                found[name] = line.split()[1]
    return found


def test_the_written_ini_is_the_whole_alembic_setup(project: Path, pytester: pytest.Pytester) -> None:
    orchestrator(pytester, "ini", "--env", "prod", "-o", "alembic.ini")
    text = (project / "alembic.ini").read_text()
    assert "script_location = orchestrator:alembic_env\n" in text
    assert f"version_locations = {project / 'versions_prod'}\n" in text
    assert f"orchestrator.registry = {project / 'envs' / 'registry.yaml'}\n" in text
    assert "orchestrator.env = prod\n" in text


@pytest.mark.parametrize("dialect", DIALECTS)
def test_default_tests_pass_on_an_unprotected_environment(project: Path, pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch, dialect: str) -> None:
    if not available(dialect):
        pytest.skip(unavailable_reason(dialect))
    result = run_pytest_alembic(pytester, monkeypatch, "staging", dialect)
    assert outcomes(result) == {"test_model_definitions_match_ddl": "PASSED", "test_single_head_revision": "PASSED",
                                "test_up_down_consistency": "PASSED", "test_upgrade": "PASSED"}
    result.assert_outcomes(passed=4)


def test_up_down_consistency_passes_on_an_unprotected_environment(project: Path, pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_pytest_alembic(pytester, monkeypatch, "staging", "sqlite", "--alembic-exclude",
                                "model_definitions_match_ddl,single_head_revision,upgrade")
    assert outcomes(result) == {"test_up_down_consistency": "PASSED"}


def test_protected_prod_runs_the_upgrade_tests_and_refuses_downgrades(project: Path, pytester: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The gate holds for stock Alembic too: prod upgrades only what staging (its promote_from) has applied
    # and what is reviewed (the demo's ledger approves every prod revision), and never downgrades.
    orchestrator(pytester, "-q", "rollout", "--to", "staging")
    result = run_pytest_alembic(pytester, monkeypatch, "prod", "sqlite")
    assert outcomes(result) == {"test_model_definitions_match_ddl": "PASSED", "test_single_head_revision": "PASSED",
                                "test_up_down_consistency": "FAILED", "test_upgrade": "PASSED"}
    result.stdout.fnmatch_lines(["*Alembic Error:*", "*prod: refused: downgrade on protected environment 'prod' "
                                                     "needs --force --reason TEXT"])


def test_alembic_engine_may_be_an_engine(project: Path, pytester: pytest.Pytester,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_pytest_alembic(pytester, monkeypatch, "staging", "sqlite", "--alembic-exclude", "up_down_consistency",
                                hand_over="engine")
    assert outcomes(result) == {"test_model_definitions_match_ddl": "PASSED", "test_single_head_revision": "PASSED",
                                "test_upgrade": "PASSED"}
