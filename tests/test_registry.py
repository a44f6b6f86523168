"""Tests of the registry: loading, interpolation, path anchoring, environment selection, errors.

No database is involved: the registry is loaded with
:func:`orchestrator.registry.load_registry` and read back through the ``envs``
and ``heads`` verbs (which never connect). Every error is pinned as the one
whole stderr line the user sees, with exit code 2 and no traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from orchestrator.errors import EXIT_USAGE, ConfigError, RegistryError, UnknownEnvironment
from orchestrator.registry import ENV_SELECT_VAR, REGISTRY_ENV_VAR, Registry, interpolate, load_registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_selection_from_the_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's ALEMBIC_ENV / ORCHESTRATOR_REGISTRY (or variables used below) out of these tests."""
    for name in (ENV_SELECT_VAR, REGISTRY_ENV_VAR, "REG_TEST_URL", "REG_TEST_DB", "REG_TEST_PW"):
        monkeypatch.delenv(name, raising=False)


def write_registry(root: Path, text: str, *, folders: tuple[str, ...] = ("v1", "v2")) -> Path:
    """Write ``text`` (dedented) as ``root/envs/registry.yaml`` and create the given folders under ``root``."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "envs").mkdir(parents=True, exist_ok=True)
    path = root / "envs" / "registry.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process; stdout and stderr apart."""
    from orchestrator.cli import cli

    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_error(result: Result, line: str, code: int = EXIT_USAGE) -> None:
    """The run failed with ``code``, printed nothing on stdout and exactly ``error: <line>`` on stderr."""
    assert "Traceback" not in result.output
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", f"error: {line}\n")


# ---------------------------------------------------------------------------- the demo registry


def test_demo_registry_loads_with_absolute_folders_protection_and_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROD_DATABASE_URL", raising=False)
    registry = load_registry(REPO / "envs" / "registry.yaml")

    assert registry.path == REPO / "envs" / "registry.yaml"
    assert registry.root == REPO
    assert list(registry.environments) == ["dev", "test", "staging", "prod"]
    assert registry.default_env == "dev"
    both = (REPO / "versions_prod", REPO / "versions_test")
    assert {name: env.version_locations for name, env in registry.environments.items()} == {
        "dev": both, "test": both, "staging": both[:1], "prod": both[:1],
    }
    assert all(p.is_absolute() and p.is_dir() for env in registry.environments.values() for p in env.version_locations)
    assert {name: env.authoring_location for name, env in registry.environments.items()} == {
        "dev": both[1], "test": both[1], "staging": both[0], "prod": both[0],
    }
    assert {name: env.protected for name, env in registry.environments.items()} == {
        "dev": False, "test": False, "staging": False, "prod": True,
    }
    assert {name: env.promote_from for name, env in registry.environments.items()} == {
        "dev": None, "test": "dev", "staging": "test", "prod": "staging",
    }
    assert [e.name for e in registry.promotion_chain()] == ["dev", "test", "staging", "prod"]
    assert [e.name for e in registry.promotion_chain("staging")] == ["dev", "test", "staging"]
    assert [e.name for e in registry.promotion_chain("dev")] == ["dev"]
    assert registry.all_folders() == both
    assert registry.reviews_path == REPO / "envs" / "reviews.yaml"
    assert registry.environments["prod"].script_location == "orchestrator:alembic_env"
    assert registry.environments["prod"].version_table == "alembic_version"
    # the default URLs are SQLite files under var/ of the repository, whatever the current directory
    assert registry.environments["prod"].url({}).database == str(REPO / "var" / "prod.db")


def test_demo_registry_through_envs_json(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEV", "TEST", "STAGING", "PROD"):
        monkeypatch.delenv(f"{name}_DATABASE_URL", raising=False)
    result = invoke("--registry", str(REPO / "envs" / "registry.yaml"), "envs", "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = json.loads(result.stdout)
    assert [(r["env"], r["version_locations"], r["promote_from"], r["protected"], r["default"], r["error"]) for r in rows] == [
        ("dev", ["versions_prod", "versions_test"], None, False, True, None),
        ("test", ["versions_prod", "versions_test"], "dev", False, False, None),
        ("staging", ["versions_prod"], "test", False, False, None),
        ("prod", ["versions_prod"], "staging", True, False, None),
    ]
    assert [r["url"] for r in rows] == [f"sqlite:///{REPO}/var/{name}.db" for name in ("dev", "test", "staging", "prod")]


# ---------------------------------------------------------------------------- interpolation


@pytest.fixture
def interp(tmp_path: Path) -> Registry:
    """A registry whose URLs use each interpolation form."""
    return load_registry(write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          plain:    {url: "${REG_TEST_URL}", version_locations: [v1]}
          colon:    {url: "postgresql+psycopg://app@db/${REG_TEST_DB:-fallback}", version_locations: [v1]}
          dash:     {url: "postgresql+psycopg://app@dash/${REG_TEST_DB-fallback}", version_locations: [v1]}
          several:  {url: "postgresql+psycopg://app:${REG_TEST_PW}@db:5432/${REG_TEST_DB:-main}", version_locations: [v1]}
          literal:  {url: "postgresql+psycopg://app@db/fixed", version_locations: [v1]}
    """))


def url_text(registry: Registry, env: str, environ: dict[str, str]) -> str:
    return registry.env(env).url(environ).render_as_string(hide_password=False)


def test_plain_variable_is_substituted(interp: Registry) -> None:
    assert url_text(interp, "plain", {"REG_TEST_URL": "mysql+pymysql://u@h/x"}) == "mysql+pymysql://u@h/x"


def test_plain_variable_unset_is_an_error_naming_it(interp: Registry) -> None:
    with pytest.raises(ConfigError) as info:
        interp.env("plain").url({})
    assert str(info.value) == (
        "environment 'plain': url: variable ${REG_TEST_URL} is not set; "
        "export REG_TEST_URL or give a default as ${REG_TEST_URL:-...}"
    )


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "fallback"),                       # unset: the default
    ({"REG_TEST_DB": ""}, "fallback"),      # empty: the default too
    ({"REG_TEST_DB": "given"}, "given"),
])
def test_colon_dash_default_covers_unset_and_empty(interp: Registry, environ: dict[str, str], expected: str) -> None:
    assert url_text(interp, "colon", environ) == f"postgresql+psycopg://app@db/{expected}"


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "postgresql+psycopg://app@dash/fallback"),   # unset: the default
    ({"REG_TEST_DB": ""}, "postgresql+psycopg://app@dash/"),  # empty: kept empty
    ({"REG_TEST_DB": "given"}, "postgresql+psycopg://app@dash/given"),
])
def test_dash_default_covers_unset_only(interp: Registry, environ: dict[str, str], expected: str) -> None:
    assert url_text(interp, "dash", environ) == expected


def test_several_variables_and_a_password_which_is_masked(interp: Registry) -> None:
    # a password with URL-special characters, percent-encoded in the variable as URLs require
    environ = {"REG_TEST_PW": "pa%3Ass%40word", "REG_TEST_DB": "shop"}
    url = interp.env("several").url(environ)
    assert (url.username, url.password, url.host, url.port, url.database) == ("app", "pa:ss@word", "db", 5432, "shop")
    assert interp.env("several").masked_url(environ) == "postgresql+psycopg://app:***@db:5432/shop"


def test_raw_special_characters_in_a_password_variable_never_leak(tmp_path: Path) -> None:
    path = write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "postgresql+psycopg://app:${REG_TEST_PW}@db:5432/shop", version_locations: [v1]}
    """)
    result = invoke("--registry", str(path), "envs", "--json", env={"REG_TEST_PW": "pa:ss@w0rdtail"})
    assert "w0rdtail" not in result.output
    assert result.exit_code in (0, EXIT_USAGE)


def test_environ_defaults_to_the_process_environment(interp: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REG_TEST_DB", "from_os")
    assert interp.env("colon").url().database == "from_os"
    assert interp.env("literal").url().database == "fixed"


def test_interpolate_leaves_text_without_variables_alone() -> None:
    assert interpolate("sqlite:///a$b{c}.db", {}, where="x") == "sqlite:///a$b{c}.db"
    assert interpolate("${A}-${B:-b}-${C-c}", {"A": "a"}, where="x") == "a-b-c"


# ---------------------------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_project_root_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    path = write_registry(root, """
        version: 1
        project: {root: ..}
        environments:
          rel:  {url: "sqlite:///var/app.db", version_locations: [v1, ./v2]}
          abs:  {url: "sqlite:////srv/abs.db", version_locations: [v1]}
          mem:  {url: "sqlite://", version_locations: [v1]}
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # the registry itself named relative to the other directory
    registry = load_registry(os.path.relpath(path, elsewhere))

    assert registry.root == root.resolve()
    assert registry.env("rel").url({}).database == str(root.resolve() / "var" / "app.db")
    assert registry.env("rel").version_locations == (root.resolve() / "v1", root.resolve() / "v2")
    assert registry.env("abs").url({}).database == "/srv/abs.db"
    assert registry.env("mem").url({}).database is None
    assert not (elsewhere / "var").exists()


def test_project_root_defaults_to_the_registry_folder(tmp_path: Path) -> None:
    path = write_registry(tmp_path, """
        version: 1
        environments:
          only: {url: "sqlite:///local.db", version_locations: [v1]}
    """, folders=("envs/v1",))
    registry = load_registry(path)
    assert registry.root == (tmp_path / "envs").resolve()
    assert registry.env("only").version_locations == ((tmp_path / "envs" / "v1").resolve(),)
    assert registry.env("only").url({}).database == str((tmp_path / "envs" / "local.db").resolve())


def test_relative_sqlite_path_from_another_cwd_in_a_subprocess(tmp_path: Path) -> None:
    root = tmp_path / "project"
    path = write_registry(root, """
        version: 1
        project: {root: ..}
        environments:
          rel: {url: "sqlite:///var/app.db", version_locations: [v1]}
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in (ENV_SELECT_VAR, REGISTRY_ENV_VAR)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "--registry", os.path.relpath(path, elsewhere), "envs", "--json"],
                          capture_output=True, text=True, cwd=elsewhere, env=environ, timeout=120)

    assert (proc.returncode, proc.stderr) == (0, "")
    rows = json.loads(proc.stdout)
    assert [(r["env"], r["url"], r["version_locations"]) for r in rows] == [
        ("rel", f"sqlite:///{root.resolve()}/var/app.db", ["v1"]),
    ]


# ---------------------------------------------------------------------------- environment selection


@pytest.fixture
def three(tmp_path: Path) -> Path:
    return write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        default_env: c
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1]}
          b: {url: "sqlite:///b.db", version_locations: [v1]}
          c: {url: "sqlite:///c.db", version_locations: [v1]}
    """)


@pytest.mark.parametrize(("name", "environ", "expected"), [
    ("a", {ENV_SELECT_VAR: "b"}, "a"),   # --env beats ALEMBIC_ENV
    ("a", {}, "a"),                      # --env beats default_env
    (None, {ENV_SELECT_VAR: "b"}, "b"),  # ALEMBIC_ENV beats default_env
    (None, {ENV_SELECT_VAR: ""}, "c"),   # an empty ALEMBIC_ENV counts as unset
    (None, {}, "c"),                     # default_env last
])
def test_selection_precedence(three: Path, name: str | None, environ: dict[str, str], expected: str) -> None:
    assert load_registry(three).select(name, environ).name == expected


def test_selection_of_an_unknown_name_through_alembic_env(three: Path) -> None:
    with pytest.raises(UnknownEnvironment) as info:
        load_registry(three).select(None, {ENV_SELECT_VAR: "zz"})
    assert str(info.value) == f"unknown environment 'zz' in {three}; known environments: a, b, c"


@pytest.mark.parametrize(("args", "env", "expected"), [
    (("--env", "a", "heads", "--json"), {ENV_SELECT_VAR: "b"}, "a"),
    (("heads", "--env", "a", "--json"), {ENV_SELECT_VAR: "b"}, "a"),
    (("heads", "--json"), {ENV_SELECT_VAR: "b"}, "b"),
    (("heads", "--json"), {}, "c"),
])
def test_selection_precedence_through_the_cli(three: Path, args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    result = invoke("--registry", str(three), *args, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"env": expected, "heads": []}


def test_single_environment_needs_no_default_env(tmp_path: Path) -> None:
    path = write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          only: {url: "sqlite:///only.db", version_locations: [v1]}
    """)
    registry = load_registry(path)
    assert registry.default_env is None
    assert registry.select(None, {}).name == "only"
    result = invoke("--registry", str(path), "heads", "--json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, {"env": "only", "heads": []})


def test_several_environments_without_default_env_and_no_selection(tmp_path: Path) -> None:
    path = write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1]}
          b: {url: "sqlite:///b.db", version_locations: [v1]}
    """)
    message = f"no environment selected in {path}; pass --env, set ALEMBIC_ENV, or set default_env"
    with pytest.raises(ConfigError) as info:
        load_registry(path).select(None, {})
    assert str(info.value) == message
    assert_one_error(invoke("--registry", str(path), "heads"), message)


# ---------------------------------------------------------------------------- errors through the CLI


def registry_error(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None) -> tuple[Path, Result]:
    """Write a registry and run the CLI on it (``envs`` unless other arguments are given)."""
    path = write_registry(tmp_path, text)
    return path, invoke("--registry", str(path), *(args or ("envs",)), env=env)


VALID_ENV = "{url: 'sqlite:///a.db', version_locations: [v1]}"


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a:
            url: sqlite:///a.db: oops
            version_locations: [v1]
    """)
    assert_one_error(result, f"{path}:5: invalid YAML: mapping values are not allowed here")


def test_unclosed_quote_names_the_line_it_opened_on(tmp_path: Path) -> None:
    path = write_registry(tmp_path, 'version: 1\nproject: {root: ..}\nenvironments:\n  a: {url: "sqlite:///a.db\n  b: 1\n')
    assert len(path.read_text().splitlines()) == 5
    assert_one_error(invoke("--registry", str(path), "envs"), f"{path}:4: invalid YAML: found unexpected end of stream")


def test_tab_indentation_names_the_line(tmp_path: Path) -> None:
    path = write_registry(tmp_path, "version: 1\nproject: {root: ..}\nenvironments:\n\ta: 1\n")
    assert_one_error(invoke("--registry", str(path), "envs"),
                     f"{path}:4: invalid YAML: found character '\\t' that cannot start any token")


def test_unknown_key_names_line_and_dotted_field(tmp_path: Path) -> None:
    # the README's example: line 8, environments.dev.urll
    path, result = registry_error(tmp_path, """
        version: 1
        project:
          root: ..
        default_env: dev
        environments:
          dev:
            version_locations: [v1]
            urll: "sqlite:///dev.db"
            url: "sqlite:///dev.db"
    """)
    assert_one_error(result, f"{path}:8: environments.dev.urll: unknown key; "
                             "check its spelling against the registry format in README.md")


def test_unknown_project_key_counts_further_errors(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: .., bogus: 1}
        environments:
          a: {url: "sqlite:///a.db", urll: x, version_locations: [v1]}
    """)
    assert_one_error(result, f"{path}:2: project.bogus: unknown key; "
                             "check its spelling against the registry format in README.md (and 1 more error)")


def test_missing_url(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a:
            version_locations: [v1]
    """)
    assert_one_error(result, f"{path}:4: environments.a.url: required key is missing")


def test_missing_version(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, f"""
        project: {{root: ..}}
        environments:
          a: {VALID_ENV}
    """)
    assert_one_error(result, f"{path}:1: version: required key is missing")


@pytest.mark.parametrize(("line", "expected"), [
    ("url: 5", "5: environments.a.url: input should be a string"),
    ("protected: maybe", "7: environments.a.protected: input should be true or false"),
])
def test_wrong_type(tmp_path: Path, line: str, expected: str) -> None:
    body = {"url: 5": "    url: 5\n    version_locations: [v1]\n",
            "protected: maybe": "    url: sqlite:///a.db\n    version_locations: [v1]\n    protected: maybe\n"}[line]
    path = write_registry(tmp_path, "version: 1\nproject: {root: ..}\nenvironments:\n  a:\n" + body)
    assert_one_error(invoke("--registry", str(path), "envs"), f"{path}:{expected}")


def test_wrong_type_for_a_folder_list_speaks_of_a_list(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a:
            url: sqlite:///a.db
            version_locations: v1
    """)
    assert_one_error(result, f"{path}:6: environments.a.version_locations: input should be a valid list")


def test_empty_folder_list(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a:
            url: sqlite:///a.db
            version_locations: []
    """)
    assert_one_error(result, f"{path}:6: environments.a.version_locations: at least one version folder is required")


def test_bad_environment_name(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, f"""
        version: 1
        project: {{root: ..}}
        environments:
          "a b": {VALID_ENV}
    """)
    assert_one_error(result, f"{path}:3: environments: environment name 'a b' must be letters, digits, '_', '-' or '.'")


def test_environment_defined_twice(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1]}
          a: {url: "sqlite:///other.db", version_locations: [v1]}
    """)
    assert_one_error(result, f"{path}:5: environments.a: defined twice (first at line 4); keep one")


@pytest.mark.parametrize("version", ["2", "0", "'1'", "null"])
def test_unsupported_version(tmp_path: Path, version: str) -> None:
    path, result = registry_error(tmp_path, f"""
        version: {version}
        project: {{root: ..}}
        environments:
          a: {VALID_ENV}
    """)
    assert_one_error(result, f"{path}:1: version: unsupported registry version; expected 1")


def test_unknown_default_env(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, f"""
        version: 1
        project: {{root: ..}}
        default_env: nope
        environments:
          a: {VALID_ENV}
          b: {VALID_ENV}
    """)
    assert_one_error(result, f"{path}:3: default_env: 'nope' is not one of the environments (a, b)")


def test_unknown_promote_from(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1]}
          b:
            url: "sqlite:///b.db"
            version_locations: [v1]
            promote_from: nope
    """)
    assert_one_error(result, f"{path}:8: environments.b.promote_from: 'nope' is not one of the environments (a, b)")


@pytest.mark.parametrize(("links", "line", "cycle"), [
    ({"a": "c", "b": "a", "c": "b"}, 7, "a -> c -> b -> a"),
    ({"a": "a", "b": None, "c": None}, 7, "a -> a"),
])
def test_promote_from_cycle(tmp_path: Path, links: dict[str, str | None], line: int, cycle: str) -> None:
    envs = "".join(
        f"  {name}:\n    url: sqlite:///{name}.db\n    version_locations: [v1]\n" + (f"    promote_from: {src}\n" if src else "")
        for name, src in links.items())
    path = write_registry(tmp_path, "version: 1\nproject: {root: ..}\nenvironments:\n" + envs)
    assert_one_error(invoke("--registry", str(path), "envs"),
                     f"{path}:{line}: environments.a.promote_from: promote_from forms a cycle: {cycle}")


def test_missing_version_folder(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a:
            url: sqlite:///a.db
            version_locations:
              - v1
              - versions_gone
    """)
    assert_one_error(result, f"{path}:8: environments.a.version_locations.1: version folder 'versions_gone' does not exist "
                             f"({tmp_path.resolve() / 'versions_gone'})")


def test_folder_listed_twice_names_the_folder(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1, v2, ./v1]}
    """)
    assert_one_error(result, f"{path}:4: environments.a.version_locations.2: version folder './v1' is listed twice "
                             "(already as 'v1')")


def test_unknown_environment_name(three: Path) -> None:
    message = f"unknown environment 'zz' in {three}; known environments: a, b, c"
    assert_one_error(invoke("--registry", str(three), "--env", "zz", "heads"), message)
    assert_one_error(invoke("--registry", str(three), "heads", env={ENV_SELECT_VAR: "zz"}), message)
    assert_one_error(invoke("--registry", str(three), "promote", "--to", "zz"), message)


@pytest.fixture
def half_configured(tmp_path: Path) -> Path:
    """'remote' needs an unset variable; 'local' does not."""
    return write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        default_env: local
        environments:
          local:  {url: "sqlite:///var/local.db", version_locations: [v1]}
          remote: {url: "postgresql+psycopg://app:${REG_TEST_PW}@db/app", version_locations: [v1]}
    """)


UNSET = ("environment 'remote': url: variable ${REG_TEST_PW} is not set; "
         "export REG_TEST_PW or give a default as ${REG_TEST_PW:-...}")


def test_unset_variable_is_an_error_only_where_used(half_configured: Path, tmp_path: Path) -> None:
    registry = load_registry(half_configured)  # loading never resolves URLs
    with pytest.raises(ConfigError) as info:
        registry.env("remote").url({})
    assert str(info.value) == UNSET

    assert_one_error(invoke("--registry", str(half_configured), "--env", "remote", "plan"), UNSET)
    assert_one_error(invoke("--registry", str(half_configured), "--env", "remote", "current"), UNSET)

    local = invoke("--registry", str(half_configured), "plan", "--json")
    assert (local.exit_code, local.stderr) == (0, "")
    assert json.loads(local.stdout)["steps"] == []
    assert not (tmp_path / "var" / "local.db").exists()  # plan touches nothing

    rows = invoke("--registry", str(half_configured), "envs", "--json")
    assert rows.exit_code == 0
    assert [(r["env"], r["url"], r["error"]) for r in json.loads(rows.stdout)] == [
        ("local", f"sqlite:///{tmp_path.resolve()}/var/local.db", None),
        ("remote", None, UNSET),
    ]

    with_var = invoke("--registry", str(half_configured), "envs", "--json", env={"REG_TEST_PW": "hunter2"})
    assert "hunter2" not in with_var.output
    assert json.loads(with_var.stdout)[1]["url"] == "postgresql+psycopg://app:***@db/app"


@pytest.mark.parametrize("text", ["not a url", "://nohost"])
def test_invalid_url_text(tmp_path: Path, text: str) -> None:
    path, result = registry_error(tmp_path, f"""
        version: 1
        project: {{root: ..}}
        environments:
          a: {{url: "{text}", version_locations: [v1]}}
    """, "plan")
    assert_one_error(result, f"environment 'a': url '{text}' is not a database URL; "
                             "expected dialect+driver://user:password@host/dbname")


def test_invalid_port_is_a_configuration_error(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "postgresql+psycopg://app:topsecret@db:notaport/app", version_locations: [v1]}
    """, "plan")
    assert_one_error(result, "environment 'a': url 'postgresql+psycopg://app:***@db:notaport/app' is not a database URL; "
                             "expected dialect+driver://user:password@host/dbname")


def test_invalid_url_hides_its_password(tmp_path: Path) -> None:
    path, result = registry_error(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "postgres ql://app:topsecret@db/app", version_locations: [v1]}
    """, "plan")
    assert_one_error(result, "environment 'a': url 'postgres ql://app:***@db/app' is not a database URL; "
                             "expected dialect+driver://user:password@host/dbname")


@pytest.mark.parametrize(("url", "driver"), [
    ("postgresql+nope://app:topsecret@db/app", "postgresql+nope"),
    ("nope://app@db/app", "nope"),
])
def test_unknown_driver(tmp_path: Path, url: str, driver: str) -> None:
    path, result = registry_error(tmp_path, f"""
        version: 1
        project: {{root: ..}}
        environments:
          a: {{url: "{url}", version_locations: [v1]}}
    """, "plan")
    assert_one_error(result, f"environment 'a': unknown database driver '{driver}'; "
                             "use e.g. sqlite, postgresql+psycopg or mysql+pymysql")
    assert "topsecret" not in result.output


@pytest.mark.parametrize("where", ["value", "top"])
def test_python_tags_are_refused_and_never_run(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    if where == "value":
        text, line = f"version: 1\nproject: {{root: ..}}\nenvironments:\n  a:\n    url: {tag}\n    version_locations: [v1]\n", 5
    else:
        text, line = f"{tag}\n", 1
    path = write_registry(tmp_path, text)

    with pytest.raises(RegistryError):
        load_registry(path)
    result = invoke("--registry", str(path), "envs")
    assert_one_error(result, f"{path}:{line}: invalid YAML: could not determine a constructor for the tag "
                             "'tag:yaml.org,2002:python/object/apply:os.system'")
    assert not marker.exists()


def test_registry_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "registry.yaml"
    expected = f"{missing}: registry file not found; pass --registry or set ORCHESTRATOR_REGISTRY"
    assert_one_error(invoke("--registry", str(missing), "envs"), expected)
    assert_one_error(invoke("envs", env={REGISTRY_ENV_VAR: str(missing)}), expected)


def test_default_registry_path_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("envs"), "envs/registry.yaml: registry file not found; pass --registry or set ORCHESTRATOR_REGISTRY")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "# only a comment\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_registry(tmp_path, text)
    assert_one_error(invoke("--registry", str(path), "envs"),
                     f"{path}:1: the registry must be a mapping with 'version' and 'environments'")


def test_errors_are_registry_errors_with_fields(tmp_path: Path) -> None:
    path = write_registry(tmp_path, """
        version: 1
        project: {root: ..}
        environments:
          a: {url: "sqlite:///a.db", version_locations: [v1], colour: blue}
    """)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert (info.value.file, info.value.line, info.value.field, info.value.exit_code) == (
        str(path), 4, "environments.a.colour", EXIT_USAGE)
