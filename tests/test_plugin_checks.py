"""The built-in migration checks, through whole pytest runs of scenario projects.

Each scenario under ``tests/examples/<scenario>/`` is a small project (a registry,
version folders, models when needed, a pytest.ini turning the checks on) copied
into a pytester directory and run in a separate pytest process, as a user would
run it. Every scenario makes exactly one check fail; the demo project itself
(the repository's envs/, versions_*/ and examples/) passes every check on every
dialect this machine provides.
"""
from __future__ import annotations

import os
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from orchestrator.testing.databases import DIALECTS, docker_available, env_var, leftover_databases

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "examples"
DEMO_REGISTRY = REPO / "envs" / "registry.yaml"
CHECK_NAMES = ("test_single_head", "test_graph_closed", "test_upgrade_from_empty", "test_up_down_consistency",
               "test_model_definitions_match_ddl", "test_downgrade_leaves_no_trace", "test_history_recorded")
STATIC = CHECK_NAMES[:2]
UNAVAILABLE = {
    "postgresql": "postgresql: set ORCHESTRATOR_TEST_POSTGRESQL_URL to a server URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres) or start a Docker engine for testcontainers",
    "mysql": "mysql: set ORCHESTRATOR_TEST_MYSQL_URL to a server URL "
    "(e.g. mysql+pymysql://root@127.0.0.1:3306/mysql) or start a Docker engine for testcontainers",
}


def plugin_args() -> list[str]:
    """Return the -p option that loads the plugin into an inner run, unless its entry point does."""
    installed = any(ep.value == "orchestrator.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "orchestrator.pytest_plugin"]


def available(dialect: str) -> bool:
    """Tell whether the plugin can provide databases of this dialect here."""
    return dialect == "sqlite" or bool(os.environ.get(env_var(dialect))) or docker_available()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the outer run's environment selection out of the inner runs."""
    for name in ("ALEMBIC_ENV", "ORCHESTRATOR_REGISTRY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


def copy_scenario(pytester: pytest.Pytester, name: str) -> Path:
    """Copy tests/examples/<name>/ into the pytester directory and return it."""
    shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "var", ".pytest_cache"))
    return pytester.path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest on the pytester directory in a separate process, with failures and skips summarized."""
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", "-rfEs", *args, timeout=600)


def failed(result: pytest.RunResult) -> list[str]:
    """Return the node ids of the failed items, from the short summary."""
    return [line.split(" ", 1)[1].split(" - ", 1)[0] for line in result.outlines if line.startswith("FAILED ")]


def item_ids(envs: list[str], dialects: list[str]) -> list[str]:
    """Return the node ids the checks collect for these environments and dialects, in order."""
    ids = []
    for check in CHECK_NAMES:
        for env in envs:
            for dialect in [None] if check in STATIC else dialects:
                ids.append(f"orchestrator_checks::{check}[{env}{'-' + dialect if dialect else ''}]")
    return ids


def literal(text: str) -> str:
    """Return ``text`` as an fnmatch pattern matching itself (brackets escaped)."""
    return "".join({"[": "[[]", "]": "[]]", "*": "[*]", "?": "[?]"}.get(c, c) for c in text)


def use_demo_registry(pytester: pytest.Pytester, *extra: str) -> None:
    """Write a pytest.ini pointing the checks at the repository's own registry."""
    pytester.makeini("\n".join(["[pytest]", f"orchestrator_registry = {DEMO_REGISTRY}", *extra]) + "\n")


# --- each scenario fails exactly its check --------------------------------------------------


def test_broken_downgrade_fails_the_trace_check(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "broken_downgrade")
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=5, skipped=1)
    assert failed(result) == ["orchestrator_checks::test_downgrade_leaves_no_trace[main-sqlite]"]
    result.stdout.fnmatch_lines([
        "environment 'main' on sqlite: downgrading to base left 1 object(s) behind; "
        "revision 2b3c4d5e6f7a does not undo its upgrade",
        "",
        "revision:",
        "    2b3c4d5e6f7a (versions/2b3c4d5e6f7a_create_audit_log.py): create audit_log",
        "",
        "difference (left after downgrade to base):",
        "    table audit_log (id INTEGER, account_id INTEGER, action VARCHAR(50)): "
        "created by 2b3c4d5e6f7a (versions/2b3c4d5e6f7a_create_audit_log.py): create audit_log",
    ], consecutive=True)


def test_two_heads_fail_the_single_head_check(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "two_heads")
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=5, skipped=1)
    assert failed(result) == ["orchestrator_checks::test_single_head[main]"]
    result.stdout.fnmatch_lines([
        "environment 'main': 2 heads on unlabelled branches (4d5e6f7a8b9c, 5e6f7a8b9c0d); "
        "merge them (`alembic merge`) or give each branch a label",
        "",
        "heads:",
        "    4d5e6f7a8b9c (versions/4d5e6f7a8b9c_add_projects_owner.py): add projects.owner",
        "    5e6f7a8b9c0d (versions/5e6f7a8b9c0d_create_tags.py): create tags",
    ], consecutive=True)


def test_model_mismatch_fails_the_model_check(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "model_mismatch")
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=6)
    assert failed(result) == ["orchestrator_checks::test_model_definitions_match_ddl[main-sqlite]"]
    result.stdout.fnmatch_lines([
        "environment 'main' on sqlite: the models (scenario_models:Base.metadata) differ from the database at heads "
        "6f7a8b9c0d1e; add a revision (`orchestrator revision --autogenerate`) or fix the models",
        "",
        "revision:",
        "    6f7a8b9c0d1e (versions/6f7a8b9c0d1e_create_notes.py): create notes",
        "",
        "difference (what autogenerate would write to make the database match the models):",
        "    op.add_column('notes', sa.Column('body', sa.Text(), nullable=True))",
    ], consecutive=True)


def test_unclosed_prod_fails_the_graph_check_and_skips_prods_other_checks(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "unclosed_prod")
    result = run(pytester)
    # test: 6 pass and the model check is skipped (no models); prod: the graph check fails, 6 are skipped
    result.assert_outcomes(failed=1, passed=6, skipped=7)
    assert failed(result) == ["orchestrator_checks::test_graph_closed[prod]"]
    result.stdout.fnmatch_lines([
        "environment 'prod': revision 9c0d1e2f3a4b (versions_prod/9c0d1e2f3a4b_create_invoices.py) depends on "
        "8b9c0d1e2f3a, which is only in versions_test/; promote 8b9c0d1e2f3a into a folder 'prod' lists first",
        "",
        "revision:",
        "    9c0d1e2f3a4b (versions_prod/9c0d1e2f3a4b_create_invoices.py): create invoices",
        "",
        "difference:",
        "    9c0d1e2f3a4b refers to 8b9c0d1e2f3a (versions_test/8b9c0d1e2f3a_add_orders_note.py): add orders.note, "
        "in versions_test/, which 'prod' does not list",
        "",
        "folders the environment lists:",
        "    versions_prod/",
    ], consecutive=True)
    result.stdout.fnmatch_lines(["SKIPPED [[]6[]] *: environment 'prod': its graph is not usable; "
                                 "see test_graph_closed[[]prod[]]"])


def test_merges_and_labelled_branches_pass_every_check(pytester: pytest.Pytester) -> None:
    # the stepwise check unapplies a merge and a labelled branch with depends_on one revision at a time
    copy_scenario(pytester, "merge_and_labels")
    result = run(pytester)
    result.assert_outcomes(passed=6, skipped=1)


# --- the demo project passes every check ------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_demo_project_passes_every_check(pytester: pytest.Pytester, dialect: str) -> None:
    if not available(dialect):
        pytest.skip(UNAVAILABLE[dialect])
    # dev/test and staging/prod see the same folders: on a server, one of each keeps the run short
    envs = ["dev", "test", "staging", "prod"] if dialect == "sqlite" else ["dev", "prod"]
    use_demo_registry(pytester)
    result = run(pytester, "--orchestrator-checks", f"--orchestrator-dialects={dialect}",
                 f"--orchestrator-envs={','.join(envs)}", "-v")
    ids = item_ids(envs, [dialect])
    skipped = [f"orchestrator_checks::test_model_definitions_match_ddl[{env}-{dialect}]"
               for env in envs if env in ("dev", "test")]
    result.assert_outcomes(passed=len(ids) - len(skipped), skipped=len(skipped))
    result.stdout.fnmatch_lines([f"{literal(i)} {'SKIPPED' if i in skipped else 'PASSED'} *" for i in ids],
                                consecutive=True)
    # dev and test carry a candidate the models do not describe yet; the registry says so
    result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] *: environment 'dev': compare_models is false for it in {DEMO_REGISTRY}"])


def test_checks_run_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    copy_scenario(pytester, "broken_downgrade")  # every worker collects the same items; failures render alike
    result = run(pytester, "-n", "2")
    result.assert_outcomes(failed=1, passed=5, skipped=1)
    assert failed(result) == ["orchestrator_checks::test_downgrade_leaves_no_trace[main-sqlite]"]
    result.stdout.fnmatch_lines(["difference (left after downgrade to base):",
                                 "    table audit_log (id INTEGER, account_id INTEGER, action VARCHAR(50)): created by *"],
                                consecutive=True)


# --- names, selection, enabling ----------------------------------------------------------------


def test_items_are_named_like_specs_per_environment_and_dialect(pytester: pytest.Pytester) -> None:
    use_demo_registry(pytester)
    result = run(pytester, "--orchestrator-checks", "--orchestrator-envs=staging,prod",
                 "--orchestrator-dialects=sqlite,postgresql", "--collect-only", "-q")
    expected = item_ids(["staging", "prod"], ["sqlite", "postgresql"])
    assert len(expected) == 2 * 2 + 5 * 2 * 2
    assert result.outlines[:len(expected)] == expected


def test_keyword_selects_and_exitfirst_stops(pytester: pytest.Pytester) -> None:
    use_demo_registry(pytester)
    selected = run(pytester, "--orchestrator-checks", "--orchestrator-dialects=sqlite", "-k", "upgrade_from_empty and prod")
    selected.assert_outcomes(passed=1, deselected=27)
    by_marker = run(pytester, "--orchestrator-checks", "--orchestrator-dialects=sqlite", "-m", "not orchestrator_check")
    by_marker.assert_outcomes(deselected=28)

    copy_scenario(pytester, "broken_downgrade")
    (pytester.path / "pytest.ini").write_text("[pytest]\norchestrator_checks = true\norchestrator_dialects = sqlite\n")
    stopped = run(pytester, "-x")
    # test_history_recorded comes after the failing check and does not run
    stopped.assert_outcomes(failed=1, passed=4, skipped=1)


def test_ini_adds_checks_to_default_runs_but_not_to_runs_given_paths(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "two_heads")
    pytester.makepyfile(test_app="def test_app():\n    pass\n")
    default = run(pytester, "--collect-only", "-q")
    assert "orchestrator_checks::test_single_head[main]" in default.outlines
    assert "test_app.py::test_app" in default.outlines
    narrowed = run(pytester, "test_app.py", "--collect-only", "-q")
    assert [line for line in narrowed.outlines if "::" in line] == ["test_app.py::test_app"]
    flagged = run(pytester, "test_app.py", "--orchestrator-checks", "--collect-only", "-q")
    assert "orchestrator_checks::test_single_head[main]" in flagged.outlines


def test_plugin_changes_nothing_unless_enabled(pytester: pytest.Pytester) -> None:
    # a registry at the default place is not enough: the checks must be turned on
    copy_scenario(pytester, "two_heads")
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    pytester.makepyfile(test_app="def test_app():\n    pass\n\ndef test_other(tmp_path):\n    assert tmp_path\n")
    with_plugin = run(pytester, "-v")
    without_plugin = run(pytester, "-v", "-p", "no:orchestrator")
    with_plugin.assert_outcomes(passed=2)
    without_plugin.assert_outcomes(passed=2)
    items = [line.split(" ")[0] for line in with_plugin.outlines if " PASSED" in line]
    assert items == ["test_app.py::test_app", "test_app.py::test_other"]
    assert items == [line.split(" ")[0] for line in without_plugin.outlines if " PASSED" in line]


def test_fixtures_stay_overridable_from_a_conftest(pytester: pytest.Pytester) -> None:
    copy_scenario(pytester, "two_heads")
    record = pytester.path / "urls.txt"
    pytester.makeconftest(f"""
        import pytest

        @pytest.fixture
        def orchestrator_db_url(orchestrator_db_url):
            with open({str(record)!r}, "a") as f:
                f.write(orchestrator_db_url + "\\n")
            return orchestrator_db_url
        """)
    result = run(pytester, "-k", "upgrade_from_empty or history_recorded")
    result.assert_outcomes(passed=2, deselected=5)
    urls = record.read_text().splitlines()
    assert len(urls) == 2 and len(set(urls)) == 2 and all(u.startswith("sqlite:///") for u in urls)


def test_unreadable_registry_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\norchestrator_checks = true\n")
    missing = run(pytester)
    assert missing.ret == pytest.ExitCode.INTERRUPTED
    missing.stdout.fnmatch_lines([
        f"orchestrator checks: registry file {pytester.path / 'envs' / 'registry.yaml'} not found; "
        "set --orchestrator-registry or the orchestrator_registry ini setting"])

    copy_scenario(pytester, "two_heads")
    unknown = run(pytester, "--orchestrator-envs=main,prdo")
    assert unknown.ret == pytest.ExitCode.INTERRUPTED
    unknown.stdout.fnmatch_lines([
        f"orchestrator checks: unknown environment(s) prdo in orchestrator_envs; "
        f"{pytester.path / 'envs' / 'registry.yaml'} has main"])


# --- dialects without a server, and what a failing run leaves behind ----------------------------


def test_dialects_without_a_server_are_skipped_with_the_reason(pytester: pytest.Pytester,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for dialect in ("postgresql", "mysql"):
        monkeypatch.delenv(env_var(dialect), raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path / 'no-docker.sock'}")  # no engine answers there
    use_demo_registry(pytester)
    result = run(pytester, "--orchestrator-checks", "--orchestrator-envs=prod",
                 "--orchestrator-dialects=sqlite,postgresql,mysql")
    # prod: 2 static checks and 5 database checks on sqlite pass; the 10 on the servers are skipped, none passes
    result.assert_outcomes(passed=7, skipped=10)
    result.stdout.fnmatch_lines([f"SKIPPED [[]5[]] *: {UNAVAILABLE['postgresql']}",
                                 f"SKIPPED [[]5[]] *: {UNAVAILABLE['mysql']}"], consecutive=False)


def test_failing_run_leaves_no_throwaway_database_behind(pytester: pytest.Pytester) -> None:
    dialects = [d for d in DIALECTS if available(d)]
    if dialects == ["sqlite"]:
        pytest.skip("no PostgreSQL or MySQL server here; set ORCHESTRATOR_TEST_POSTGRESQL_URL / ORCHESTRATOR_TEST_MYSQL_URL")
    copy_scenario(pytester, "broken_downgrade")
    record = pytester.path / "created.txt"
    pytester.makeconftest(f"""
        import pytest

        @pytest.fixture
        def orchestrator_db_url(orchestrator_db_url):
            with open({str(record)!r}, "a") as f:
                f.write(orchestrator_db_url + "\\n")
            return orchestrator_db_url
        """)
    result = run(pytester, f"--orchestrator-dialects={','.join(dialects)}")
    # per dialect: the trace check fails, the model check is skipped (no models), 3 pass; plus the 2 static checks
    result.assert_outcomes(failed=len(dialects), passed=2 + 3 * len(dialects), skipped=len(dialects))
    assert failed(result) == [f"orchestrator_checks::test_downgrade_leaves_no_trace[main-{d}]" for d in dialects]
    created = [make_url(line) for line in record.read_text().splitlines()]
    assert sorted({url.get_backend_name() for url in created}) == sorted(dialects)
    assert len(created) == 4 * len(dialects)  # the model check is skipped before it asks for a database
    for url in created:
        if url.get_backend_name() == "sqlite":
            assert not Path(url.database or "").exists()
        else:
            assert url.database not in leftover_databases(url.get_backend_name())
