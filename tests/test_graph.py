"""Tests of the revision graph each environment sees.

The pure functions (:func:`orchestrator.loader.read_folders`,
:func:`orchestrator.graph.index_unique`, :func:`orchestrator.graph.build_environment_graph`)
run on small revision files in temporary folders; the same cases then go
through the ``heads``/``history``/``plan`` verbs, which must refuse an unusable
graph with one ``error:`` line and exit 2 before touching any database.
"""
from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conftest import CANDIDATE, PROD_HEAD, PROD_REVISIONS, REPO, TESTDATA, Project, make_project, schema_snapshot
from orchestrator.errors import EXIT_USAGE, GraphError
from orchestrator.graph import build_environment_graph, index_unique
from orchestrator.loader import read_folders, read_revision_file
from orchestrator.registry import ENV_SELECT_VAR, load_registry

DEMO_ENVS = ("dev", "test", "staging", "prod")
ALL_DEMO = set(PROD_REVISIONS) | {TESTDATA, CANDIDATE}


@pytest.fixture(autouse=True)
def _no_outside_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SELECT_VAR, raising=False)


def script(revision: str, down: str | tuple[str, ...] | None, *, depends_on: str | None = None,
           labels: tuple[str, ...] | None = None, message: str = "a revision", revision_expr: str | None = None) -> str:
    """Return the text of a small revision script (identifiers as literals unless ``revision_expr``)."""
    return textwrap.dedent(f'''\
        """{message}"""
        from alembic import op

        revision = {revision_expr or repr(revision)}
        down_revision = {down!r}
        branch_labels = {labels!r}
        depends_on = {depends_on!r}


        def upgrade():
            pass


        def downgrade():
            pass
        ''')


class Tree:
    """A project root with folders ``vp`` (prod-like) and ``vt`` (test-like) and a registry over them."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("vp", "vt", "envs"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.registry_path = root / "envs" / "registry.yaml"
        self.registry_path.write_text(textwrap.dedent("""\
            version: 1
            project: {root: ..}
            default_env: prod
            environments:
              dev:  {url: "sqlite:///var/dev.db", version_locations: [vp, vt]}
              prod: {url: "sqlite:///var/prod.db", version_locations: [vp]}
            """))

    def add(self, folder: str, name: str, text: str) -> Path:
        path = self.root / folder / name
        path.write_text(text)
        return path

    def files(self) -> dict:
        return index_unique(read_folders([self.root / "vp", self.root / "vt"]), self.root)

    def graph(self, env: str):
        folders = {"dev": [self.root / "vp", self.root / "vt"], "prod": [self.root / "vp"]}[env]
        return build_environment_graph(env, folders, self.files(), self.root)

    def cli(self, *args: str) -> Result:
        from orchestrator.cli import cli

        return CliRunner().invoke(cli, ["--registry", str(self.registry_path), *args], catch_exceptions=False)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "project")
    t.add("vp", "aaa_first.py", script("aaa", None, message="first"))
    t.add("vp", "bbb_second.py", script("bbb", "aaa", message="second"))
    return t


def assert_one_error(result: Result, line: str, code: int = EXIT_USAGE) -> None:
    assert "Traceback" not in result.output
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", f"error: {line}\n")


def assert_no_database(tree: Tree) -> None:
    assert not (tree.root / "var").exists()


# ---------------------------------------------------------------------------- a sound graph


def test_read_folders_returns_identifiers_hash_and_message(tree: Tree) -> None:
    tree.add("vt", "ccc_third.py", script("ccc", "bbb", depends_on="aaa", labels=("extra",), message="third"))
    (tree.root / "vp" / "__init__.py").write_text("")
    (tree.root / "vp" / "notes.txt").write_text("not a script")
    files = read_folders([tree.root / "vp", tree.root / "vt"])
    assert [(f.revision, f.down_revisions, f.depends_on, f.branch_labels, f.message, f.folder.name, f.path.name)
            for f in files] == [
        ("aaa", (), (), (), "first", "vp", "aaa_first.py"),
        ("bbb", ("aaa",), (), (), "second", "vp", "bbb_second.py"),
        ("ccc", ("bbb",), ("aaa",), ("extra",), "third", "vt", "ccc_third.py"),
    ]
    assert all(f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest() for f in files)
    dev, prod = tree.graph("dev"), tree.graph("prod")
    assert (set(dev.revisions), dev.heads) == ({"aaa", "bbb", "ccc"}, ("ccc",))
    assert (set(prod.revisions), prod.heads) == ({"aaa", "bbb"}, ("bbb",))


def test_non_literal_revision_id_loads_through_the_import_fallback(tree: Tree) -> None:
    tree.add("vp", "abcd_computed.py", script("abcd", "bbb", revision_expr='"ab" + "cd"', message="computed id"))
    tree.add("vp", "eee_after.py", script("eee", "abcd", message="after the computed one"))
    found = read_revision_file(tree.root / "vp" / "abcd_computed.py", tree.root / "vp")
    assert (found.revision, found.down_revisions, found.message) == ("abcd", ("bbb",), "computed id")
    assert tree.graph("prod").heads == ("eee",)

    history = tree.cli("--env", "prod", "history", "--json")
    assert history.exit_code == 0, history.output
    assert [r["revision"] for r in json.loads(history.stdout)["revisions"]] == ["eee", "abcd", "bbb", "aaa"]


# ---------------------------------------------------------------------------- unusable graphs


def test_duplicate_revision_id_across_two_folders(tree: Tree) -> None:
    tree.add("vt", "aaa_again.py", script("aaa", None, message="same id"))
    message = ("revision id aaa is defined twice: vp/aaa_first.py and vt/aaa_again.py; "
               "give one of them a new id (and update what revises it)")
    with pytest.raises(GraphError) as info:
        tree.files()
    assert (str(info.value), info.value.revision) == (message, "aaa")
    # ids are unique across all folders: even prod, which does not list vt, refuses
    for env in ("dev", "prod"):
        assert_one_error(tree.cli("--env", env, "heads"), message)
    assert_one_error(tree.cli("--env", "prod", "upgrade"), message)
    assert_no_database(tree)


@pytest.mark.parametrize("link", ["down_revision", "depends_on"])
def test_unclosed_environment_graph(tree: Tree, link: str) -> None:
    tree.add("vt", "ttt_test_only.py", script("ttt", "bbb", message="test only"))
    if link == "down_revision":
        tree.add("vp", "ppp_promoted.py", script("ppp", "ttt", message="promoted too early"))
    else:
        tree.add("vp", "ppp_promoted.py", script("ppp", "bbb", depends_on="ttt", message="promoted too early"))
    message = ("environment 'prod': revision ppp (vp/ppp_promoted.py) depends on ttt, which is only in vt/; "
               "promote ttt into a folder 'prod' lists first")
    with pytest.raises(GraphError) as info:
        tree.graph("prod")
    assert (str(info.value), info.value.env, info.value.revision) == (message, "prod", "ppp")
    assert "ppp" in tree.graph("dev").revisions  # dev sees both folders: closed

    for args in (("heads",), ("history",), ("plan",), ("upgrade",), ("downgrade", "base"), ("status",)):
        result = tree.cli("--env", "prod", *args)
        if args == ("status",):
            # status reports every environment; the broken one is an error row and exit 1
            assert result.exit_code == 1 and "Traceback" not in result.output
            continue
        assert_one_error(result, message)
    assert tree.cli("--env", "dev", "heads").exit_code == 0
    assert_no_database(tree)


def test_unclosed_prod_graph_in_the_demo_folders(tmp_path: Path) -> None:
    # the README's example: a versions_prod revision built on the candidate still in versions_test
    project = make_project(tmp_path / "project", {n: f"sqlite:///var/{n}.db" for n in DEMO_ENVS})
    path = project.write_revision("versions_prod", "aaaa00000001", CANDIDATE, "pass", message="built on the candidate")
    result = project.cli("--env", "prod", "plan")
    assert_one_error(result, f"environment 'prod': revision aaaa00000001 (versions_prod/{path.name}) "
                             f"depends on {CANDIDATE}, which is only in versions_test/; "
                             f"promote {CANDIDATE} into a folder 'prod' lists first")
    assert project.cli("--env", "dev", "plan").exit_code == 0


def test_reference_to_a_revision_no_folder_holds(tree: Tree) -> None:
    tree.add("vp", "ccc_orphan.py", script("ccc", "zzz", message="orphan"))
    message = ("environment 'prod': revision ccc (vp/ccc_orphan.py) refers to zzz, which no version folder holds; "
               "fix its down_revision/depends_on or restore the missing script")
    with pytest.raises(GraphError) as info:
        tree.graph("prod")
    assert str(info.value) == message
    assert_one_error(tree.cli("--env", "prod", "heads"), message)
    assert_one_error(tree.cli("--env", "dev", "heads"), message.replace("'prod'", "'dev'"))


def test_cycle(tree: Tree) -> None:
    tree.add("vp", "ccc_loop.py", script("ccc", "ddd", message="loop one"))
    tree.add("vp", "ddd_loop.py", script("ddd", "ccc", message="loop two"))
    message = "revisions form a cycle: ccc -> ddd -> ccc (vp/ccc_loop.py); fix the down_revision that points back"
    with pytest.raises(GraphError) as info:
        tree.graph("prod")
    assert str(info.value) == message
    assert_one_error(tree.cli("--env", "prod", "history"), message)
    assert_one_error(tree.cli("--env", "prod", "upgrade"), message)
    assert_no_database(tree)


def test_self_reference_is_a_cycle(tree: Tree) -> None:
    tree.add("vp", "ccc_self.py", script("ccc", "ccc", message="revises itself"))
    assert_one_error(tree.cli("--env", "prod", "heads"),
                     "revisions form a cycle: ccc -> ccc (vp/ccc_self.py); fix the down_revision that points back")


def test_syntax_error_in_a_script(tree: Tree) -> None:
    bad = tree.add("vp", "ccc_broken.py", 'revision = "ccc"\ndown_revision = "bbb"\n\ndef upgrade(:\n    pass\n')
    message = f"vp/{bad.name}:4: revision script has a syntax error: invalid syntax; fix the file"
    with pytest.raises(GraphError) as info:
        tree.files()
    assert str(info.value) == message
    assert_one_error(tree.cli("--env", "prod", "heads"), message)
    assert_one_error(tree.cli("--env", "dev", "plan"), message)
    assert_no_database(tree)


def test_file_without_a_revision(tree: Tree) -> None:
    stray = tree.add("vp", "helpers.py", "X = 1\n")
    assert_one_error(tree.cli("--env", "prod", "heads"),
                     f"vp/{stray.name}: no 'revision = \"...\"' assignment; every file in a version folder must be a revision script")


def test_script_failing_on_import_fallback(tree: Tree) -> None:
    bad = tree.add("vp", "ccc_import.py", 'revision = compute_id()\ndown_revision = "bbb"\n')
    assert_one_error(tree.cli("--env", "prod", "heads"),
                     f"vp/{bad.name}: cannot import revision script: NameError: name 'compute_id' is not defined")


def test_script_failing_on_import_with_a_multi_line_error_gives_one_line(tree: Tree) -> None:
    bad = tree.add("vp", "ccc_import.py", 'raise RuntimeError("line one\\nline two")\nrevision = compute_id()\n')
    assert_one_error(tree.cli("--env", "prod", "heads"),
                     f"vp/{bad.name}: cannot import revision script: RuntimeError: line one line two")


def test_a_script_failing_on_import_breaks_only_the_runs_that_execute_it(tree: Tree) -> None:
    # literal ids: parsing it is fine, running it is not; reading never runs a script, so only a run fails
    bad = tree.add("vt", "ccc_raises.py", script("ccc", "bbb", message="raises").replace(
        "from alembic import op\n", "from alembic import op\nraise RuntimeError('needs the test fixtures')\n"))
    prod = tree.cli("--env", "prod", "heads", "--json")
    assert prod.exit_code == 0, prod.output
    assert [h["revision"] for h in json.loads(prod.stdout)["heads"]] == ["bbb"]
    dev = tree.cli("--env", "dev", "heads", "--json")
    assert dev.exit_code == 0, dev.output
    assert_one_error(tree.cli("--env", "dev", "-q", "upgrade"),
                     f"environment 'dev': vt/{bad.name}: cannot import revision script ccc: RuntimeError: needs the "
                     "test fixtures; no step was applied from it; fix the script and rerun", code=1)


def test_scripts_are_parsed_when_read_and_run_once_from_the_bytes_read(
        tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    import alembic.script.base

    import orchestrator.alembic_compat
    import orchestrator.loader
    from orchestrator.context import contexts

    tree.add("vp", "ccc_third.py", script("ccc", "bbb", message="third"))
    tree.add("vt", "ddd_test.py", script("ddd", "ccc", message="test only"))
    loads: list[str] = []
    real_load, real_run = alembic.script.base.util.load_python_file, orchestrator.loader.module_from_source

    def counting(dir_: str, filename: str):  # Alembic's loader, counted
        loads.append(filename)
        return real_load(dir_, filename)

    def running(path, folder, data, revision=None):  # ours, counted
        loads.append(f"bytes:{path.name}")
        return real_run(path, folder, data, revision)

    monkeypatch.setattr(alembic.script.base.util, "load_python_file", counting)
    monkeypatch.setattr(orchestrator.loader, "module_from_source", running)
    monkeypatch.setattr(orchestrator.alembic_compat, "module_from_source", running)
    ctx, = contexts(load_registry(tree.registry_path), ["prod"])
    result = ctx.script.get_revisions("heads")
    assert [r.revision for r in result] == ["ccc"] and loads == []  # planning runs no script
    # a real upgrade on SQLite: each script run once from the bytes read, Alembic loads only the env.py
    run = tree.cli("--env", "prod", "upgrade")
    assert run.exit_code == 0, run.output
    assert sorted(loads) == ["bytes:aaa_first.py", "bytes:bbb_second.py", "bytes:ccc_third.py", "env.py"]
    current = tree.cli("--env", "prod", "current", "--json")
    assert [h["revision"] for h in json.loads(current.stdout)["heads"]] == ["ccc"]


# ---------------------------------------------------------------------------- the demo graph per environment


@pytest.fixture
def demo_files(tmp_path: Path) -> Project:
    """The demo folders and registry chain on SQLite files that are never created (heads/history only)."""
    return make_project(tmp_path / "project", {n: f"sqlite:///var/{n}.db" for n in DEMO_ENVS},
                        promote_from={"test": "dev", "staging": "test", "prod": "staging"}, protected=("prod",))


def test_demo_graphs_from_the_pure_functions() -> None:
    registry = load_registry(REPO / "envs" / "registry.yaml")
    files = index_unique(read_folders(registry.all_folders()), registry.root)
    assert set(files) == ALL_DEMO
    expected = {"dev": (ALL_DEMO, {TESTDATA, CANDIDATE}), "test": (ALL_DEMO, {TESTDATA, CANDIDATE}),
                "staging": (set(PROD_REVISIONS), {PROD_HEAD}), "prod": (set(PROD_REVISIONS), {PROD_HEAD})}
    for name, env in registry.environments.items():
        graph = build_environment_graph(name, env.version_locations, files, registry.root)
        assert (set(graph.revisions), set(graph.heads)) == expected[name], name
    assert files[TESTDATA].branch_labels == ("testdata",)
    assert files[TESTDATA].depends_on == (PROD_HEAD,)


@pytest.mark.parametrize(("env", "heads"), [
    ("dev", {TESTDATA, CANDIDATE}), ("test", {TESTDATA, CANDIDATE}), ("staging", {PROD_HEAD}), ("prod", {PROD_HEAD}),
])
def test_heads_of_each_demo_environment(demo_files: Project, env: str, heads: set[str]) -> None:
    result = demo_files.cli("--env", env, "heads", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["env"] == env
    assert {h["revision"] for h in data["heads"]} == heads
    assert all(h["is_head"] for h in data["heads"])
    folders = {h["revision"]: h["folder"] for h in data["heads"]}
    assert folders == {r: "versions_test" if r in (TESTDATA, CANDIDATE) else "versions_prod" for r in heads}
    # the same heads as Alembic's own view of the environment's folders
    assert set(demo_files.ctx(env).script.get_heads()) == heads
    assert not (demo_files.root / "var").exists()


@pytest.mark.parametrize(("env", "visible"), [
    ("dev", ALL_DEMO), ("test", ALL_DEMO), ("staging", set(PROD_REVISIONS)), ("prod", set(PROD_REVISIONS)),
])
def test_history_lists_exactly_the_visible_revisions(demo_files: Project, env: str, visible: set[str]) -> None:
    result = demo_files.cli("--env", env, "history", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    revisions = [r["revision"] for r in data["revisions"]]
    assert (data["env"], len(revisions), set(revisions)) == (env, len(visible), visible)
    for r in data["revisions"]:
        assert r["folder"] == ("versions_test" if r["revision"] in (TESTDATA, CANDIDATE) else "versions_prod")
        assert (demo_files.root / r["path"]).is_file()
    if env in ("staging", "prod"):
        assert revisions == list(reversed(PROD_REVISIONS))  # newest first
        assert [r["is_head"] for r in data["revisions"]] == [True, False, False, False, False]


def test_prod_plan_never_contains_a_test_revision_even_on_an_empty_database(demo: Project) -> None:
    url = demo.urls["prod"]
    before = schema_snapshot(url)
    plan = demo.json("--env", "prod", "plan")
    assert (plan["env"], plan["command"], plan["target"], plan["heads_before"]) == ("prod", "upgrade", "heads", [])
    assert [s["revision"] for s in plan["steps"]] == list(PROD_REVISIONS)
    assert not {s["revision"] for s in plan["steps"]} & {TESTDATA, CANDIDATE}
    assert all(Path(s["path"]).parent.name == "versions_prod" for s in plan["steps"])
    assert schema_snapshot(url) == before  # plan touched nothing

    # dev's plan on its own empty database does contain them, on their own branch
    dev = demo.json("--env", "dev", "plan")
    assert {s["revision"] for s in dev["steps"]} == ALL_DEMO

    # and prod's upgrade applies exactly the prod revisions (once staging, its promote_from, has them)
    assert demo.cli("-q", "--env", "staging", "upgrade").exit_code == 0
    up = demo.cli("--env", "prod", "--json", "upgrade")
    assert up.exit_code == 0, up.output
    assert [s["revision"] for s in json.loads(up.stdout)["steps"]] == list(PROD_REVISIONS)
    assert schema_snapshot(url)["@versions"] == [PROD_HEAD]


def test_prod_plan_to_a_test_only_revision_says_where_it_is(demo_files: Project) -> None:
    assert_one_error(demo_files.cli("--env", "prod", "plan", CANDIDATE),
                     f"environment 'prod': revision {CANDIDATE} is only in versions_test/, which 'prod' does not list; "
                     f"promote it into a folder 'prod' lists first")


def test_plan_sha256_is_the_hash_of_the_script_bytes(demo_files: Project) -> None:
    result = demo_files.cli("--env", "dev", "plan", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {s["revision"] for s in plan["steps"]} == ALL_DEMO
    for step in plan["steps"]:
        path = Path(step["path"])
        path = path if path.is_absolute() else demo_files.root / path
        assert path.name.startswith(step["revision"])
        assert step["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(plan["fingerprint"]) == 64

    # editing a script changes its hash and the plan's fingerprint
    candidate = next((demo_files.root / "versions_test").glob(f"{CANDIDATE}_*.py"))
    candidate.write_bytes(candidate.read_bytes() + b"\n# edited\n")
    again = json.loads(demo_files.cli("--env", "dev", "plan", "--json").stdout)
    changed = {s["revision"]: s["sha256"] for s in again["steps"]}
    assert changed[CANDIDATE] == hashlib.sha256(candidate.read_bytes()).hexdigest()
    assert changed[CANDIDATE] != {s["revision"]: s["sha256"] for s in plan["steps"]}[CANDIDATE]
    assert again["fingerprint"] != plan["fingerprint"]
