"""Read and validate the registry: environments, their databases and their folders.

The YAML is read with ``yaml.safe_load`` semantics (no Python tags), validated
by frozen pydantic models, and turned into resolved :class:`Environment`
values whose paths are absolute. Errors name the file, the line and the field.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orchestrator.errors import ConfigError, RegistryError, UnknownEnvironment
from orchestrator.redact import register_secret
from orchestrator.yamlfile import parse_yaml, validation_error

DEFAULT_REGISTRY = "envs/registry.yaml"
REGISTRY_ENV_VAR = "ORCHESTRATOR_REGISTRY"
ENV_SELECT_VAR = "ALEMBIC_ENV"
PACKAGED_SCRIPT_LOCATION = "orchestrator:alembic_env"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


class _Options(BaseModel):
    """Alembic options settable project-wide and overridable per environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    script_location: str | None = None
    version_table: str | None = None
    version_table_schema: str | None = None
    recursive_version_locations: bool | None = None
    prepend_sys_path: tuple[str, ...] | None = None
    transaction_per_migration: bool | None = None
    file_template: str | None = None
    autogenerate_plugins: tuple[str, ...] | None = None
    lint: dict[str, Literal["error", "warning", "off"]] | None = None
    compare_models: bool | None = None

    @field_validator("lint", mode="before")
    @classmethod
    def _unquoted_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false
        if isinstance(value, dict):
            return {k: "off" if v is False else v for k, v in value.items()}
        return value


class ProjectSection(_Options):
    """The ``project:`` section."""

    root: str = "."
    id: str | None = Field(None, min_length=1, max_length=255)  # the project identifier; unset: databases are told apart by environment name only
    target_metadata: str | None = None
    reviews: str | None = None
    exclude_tables: tuple[str, ...] = ()


class EnvironmentSection(_Options):
    """One entry under ``environments:``."""

    url: str
    version_locations: tuple[str, ...] = Field(min_length=1)
    authoring_location: str | None = None
    promote_from: str | None = None
    protected: bool = False


class RegistryFile(BaseModel):
    """The whole registry file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    project: ProjectSection = ProjectSection()
    default_env: str | None = None
    environments: dict[str, EnvironmentSection] = Field(min_length=1)

    @field_validator("environments")
    @classmethod
    def _names_are_identifiers(cls, value: dict[str, EnvironmentSection]) -> dict[str, EnvironmentSection]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"environment name {name!r} must be letters, digits, '_', '-' or '.'")
        return value


@dataclass(frozen=True)
class Environment:
    """One environment with every path absolute and every option resolved."""

    name: str
    url_template: str
    version_locations: tuple[Path, ...]
    authoring_location: Path
    promote_from: str | None
    protected: bool
    script_location: str
    version_table: str
    version_table_schema: str | None
    recursive_version_locations: bool
    prepend_sys_path: tuple[Path, ...]
    transaction_per_migration: bool
    file_template: str | None
    autogenerate_plugins: tuple[str, ...]
    lint: dict[str, str]
    compare_models: bool
    target_metadata: str | None
    exclude_tables: tuple[str, ...]
    root: Path

    def url(self, environ: Mapping[str, str] | None = None) -> URL:
        """Return the database URL, interpolated and with relative SQLite paths made absolute."""
        text = interpolate(self.url_template, os.environ if environ is None else environ, where=f"environment '{self.name}': url")
        authority = text.partition("://")[2].partition("/")[0]
        if authority.count("@") > 1:
            # a raw '@' in a password would split it: part of it would print as the host
            raise ConfigError(
                f"environment '{self.name}': url has more than one '@' before the host; "
                "percent-encode '@' in the user name or password as %40")
        try:
            url = make_url(text)
            url.port  # a non-numeric port fails here
        except (ArgumentError, ValueError) as exc:
            masked = _mask_unparsed(text)
            raise ConfigError(
                f"environment '{self.name}': url {masked!r} is not a database URL; "
                "expected dialect+driver://user:password@host/dbname"
            ) from exc
        register_secret(url.password if isinstance(url.password, str) else None)
        for key in SECRET_QUERY_KEYS.intersection(url.query):
            values = url.query[key]
            for value in (values,) if isinstance(values, str) else values:
                register_secret(value)
        return _anchor_sqlite(url, self.root)

    def url_source(self) -> str:
        """Return where this environment's URL comes from, for a remedy: its variables, else its registry entry."""
        names = list(dict.fromkeys(m.group("name") for m in _VAR.finditer(self.url_template)))
        if names:
            return f"{', '.join('$' + n for n in names)} (the url of '{self.name}')"
        return f"the url of '{self.name}'"

    def masked_url(self, environ: Mapping[str, str] | None = None) -> str:
        """Return the URL as text with its password (and password-like query values) hidden."""
        return mask_url(self.url(environ))


@dataclass(frozen=True)
class Registry:
    """A loaded registry: its file, its project root and its environments in file order."""

    path: Path
    root: Path
    default_env: str | None
    environments: dict[str, Environment] = field(default_factory=dict)
    reviews_path: Path | None = None
    target_metadata: str | None = None
    exclude_tables: tuple[str, ...] = ()
    project_id: str = ""  # recorded in each database the project's environments own ("": no project.id set)

    def env(self, name: str) -> Environment:
        """Return the environment called ``name``."""
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(self.environments)
            raise UnknownEnvironment(
                f"unknown environment '{name}' in {self.path}; known environments: {known}", env=name
            ) from None

    def select(self, name: str | None = None, environ: Mapping[str, str] | None = None) -> Environment:
        """Return the environment chosen by ``name``, else ``ALEMBIC_ENV``, else ``default_env``."""
        environ = os.environ if environ is None else environ
        chosen = name or environ.get(ENV_SELECT_VAR) or self.default_env
        if chosen:
            return self.env(chosen)
        if len(self.environments) == 1:
            return next(iter(self.environments.values()))
        raise ConfigError(
            f"no environment selected in {self.path}; pass --env, set {ENV_SELECT_VAR}, or set default_env"
        )

    def promotion_chain(self, to: str | None = None) -> list[Environment]:
        """Return environments in promotion order, ending at ``to`` (all of the chain if None)."""
        if to is not None:
            chain = [self.env(to)]
            while chain[0].promote_from:
                chain.insert(0, self.env(chain[0].promote_from))
            return chain
        ordered: list[Environment] = []
        for env in self.environments.values():
            for member in self.promotion_chain(env.name):
                if member not in ordered:
                    ordered.append(member)
        return ordered

    def all_folders(self) -> tuple[Path, ...]:
        """Return every version folder any environment lists, each once."""
        seen: dict[Path, None] = {}
        for env in self.environments.values():
            for folder in env.version_locations:
                seen.setdefault(folder, None)
        return tuple(seen)


SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token"})


def has_secret(url: URL) -> bool:
    """Return True when the URL carries a password, in its user part or its query."""
    return url.password is not None or bool(SECRET_QUERY_KEYS.intersection(url.query))


def mask_url(url: URL) -> str:
    """Return the URL as text with every password hidden."""
    hidden = {k: "***" for k in SECRET_QUERY_KEYS.intersection(url.query)}
    if hidden:
        url = url.update_query_dict(hidden)
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def interpolate(template: str, environ: Mapping[str, str], *, where: str) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` from ``environ``."""

    def replace(match: re.Match[str]) -> str:
        name, op, default = match.group("name", "op", "default")
        value = environ.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            raise ConfigError(f"{where}: variable ${{{name}}} is not set; export {name} or give a default as ${{{name}:-...}}")
        return value

    return _VAR.sub(replace, template)


def resolve_registry_path(path: str | os.PathLike[str] | None) -> Path:
    """Return the registry path from the argument, else ``$ORCHESTRATOR_REGISTRY``, else the default."""
    return Path(path or os.environ.get(REGISTRY_ENV_VAR) or DEFAULT_REGISTRY)


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Read, validate and resolve the registry file at ``path``."""
    path = resolve_registry_path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError("registry file not found; pass --registry or set ORCHESTRATOR_REGISTRY", file=label) from None
    except IsADirectoryError:
        raise RegistryError("is a folder, not a registry file; pass --registry FILE", file=label) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read registry: {exc.__class__.__name__}: {exc}", file=label) from None
    data, lines = parse_yaml(text, label)
    try:
        model = RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lines, label) from None
    return _resolve(model, path.resolve(), lines, label)


def _resolve(model: RegistryFile, path: Path, lines: dict[tuple[Any, ...], int], label: str) -> Registry:
    """Build resolved environments from the validated model, checking cross-references."""
    root = (path.parent / model.project.root).resolve()
    project = model.project
    envs: dict[str, Environment] = {}

    def fail(message: str, *loc: Any) -> RegistryError:
        return RegistryError(message, file=label, line=lines.get(loc), field=".".join(map(str, loc)))

    if model.default_env is not None and model.default_env not in model.environments:
        raise fail(f"'{model.default_env}' is not one of the environments ({', '.join(model.environments)})", "default_env")
    for name, sec in model.environments.items():
        if sec.promote_from is not None and sec.promote_from not in model.environments:
            raise fail(
                f"'{sec.promote_from}' is not one of the environments ({', '.join(model.environments)})",
                "environments", name, "promote_from",
            )
        folders = tuple(_abs(root, p) for p in sec.version_locations)
        for i, folder in enumerate(folders):
            if folder.exists() and not folder.is_dir():
                raise fail(f"version folder {sec.version_locations[i]!r} is a file, not a folder ({folder})",
                           "environments", name, "version_locations", i)
            if not folder.is_dir():
                raise fail(f"version folder {sec.version_locations[i]!r} does not exist ({folder})", "environments", name, "version_locations", i)
            if not os.access(folder, os.R_OK | os.X_OK):
                raise fail(f"version folder {sec.version_locations[i]!r} is not readable ({folder})", "environments", name, "version_locations", i)
        for i, folder in enumerate(folders):
            if folder in folders[:i]:
                first = sec.version_locations[folders.index(folder)]
                raise fail(f"version folder {sec.version_locations[i]!r} is listed twice (already as {first!r})",
                           "environments", name, "version_locations", i)
        authoring = _abs(root, sec.authoring_location) if sec.authoring_location else folders[-1]
        if authoring not in folders:
            raise fail("the authoring folder must be one of the environment's version_locations", "environments", name, "authoring_location")

        for loc, overrides in ((("project", "lint"), project.lint), (("environments", name, "lint"), sec.lint)):
            _check_lint_rules(overrides, loc, fail)

        def opt(key: str, default: Any) -> Any:
            value = getattr(sec, key)
            if value is None:
                value = getattr(project, key)
            return default if value is None else value

        envs[name] = Environment(
            name=name,
            url_template=sec.url,
            version_locations=folders,
            authoring_location=authoring,
            promote_from=sec.promote_from,
            protected=sec.protected,
            script_location=_script_location(root, opt("script_location", PACKAGED_SCRIPT_LOCATION)),
            version_table=opt("version_table", "alembic_version"),
            version_table_schema=opt("version_table_schema", None),
            recursive_version_locations=opt("recursive_version_locations", False),
            prepend_sys_path=tuple(_abs(root, p) for p in opt("prepend_sys_path", ())),
            transaction_per_migration=opt("transaction_per_migration", True),
            file_template=opt("file_template", None),
            autogenerate_plugins=tuple(opt("autogenerate_plugins", ())),
            lint={**(project.lint or {}), **(sec.lint or {})},
            compare_models=opt("compare_models", True),
            target_metadata=project.target_metadata,
            exclude_tables=project.exclude_tables,
            root=root,
        )
    _check_promotion_cycles(envs, fail)
    _check_shared_databases(envs, fail)
    return Registry(
        path=path,
        root=root,
        default_env=model.default_env,
        environments=envs,
        reviews_path=_abs(root, project.reviews) if project.reviews else None,
        target_metadata=project.target_metadata,
        exclude_tables=project.exclude_tables,
        project_id=project.id or "",
    )


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "oracle": 1521}


def database_key(env: Environment, environ: Mapping[str, str] | None = None) -> tuple[tuple[Any, ...], str] | None:
    """Return what identifies the database ``env`` reaches (and how to name it), or None when it cannot clash.

    SQLite: the file's real path (``:memory:`` never clashes); servers: backend,
    lower-cased host, port (the backend's default if none), database name, and
    the ``version_table_schema`` the environment keeps its tables in.
    """
    url = env.url(environ)
    backend = url.get_backend_name()
    schema = env.version_table_schema or ""
    where = f" (schema {schema})" if schema else ""
    if backend == "sqlite":
        database = url.database or ""
        if database.startswith("file:"):
            database = database[5:].partition("?")[0]
            if "mode=memory" in (url.database or ""):
                return None
        if database in ("", ":memory:"):
            return None
        path = os.path.realpath(database)
        return ("sqlite", path, schema), f"SQLite file {path}{where}"
    backend = "mysql" if backend == "mariadb" else backend
    host = (url.host or str(url.query.get("host") or "") or "localhost").lower()
    port = url.port or _DEFAULT_PORTS.get(backend)
    name = url.database or ""
    return (backend, host, port, name, schema), f"{backend} database '{name}' on {host}:{port}{where}"


def _check_shared_databases(envs: dict[str, Environment], fail: Any) -> None:
    """Refuse two environments whose URLs (as the environment variables set them now) reach one database."""
    seen: dict[tuple[Any, ...], str] = {}
    for name, env in envs.items():
        try:
            found = database_key(env)
        except ConfigError:
            continue  # an unset variable or a bad URL is reported when the environment is used
        if found is None:
            continue
        key, shown = found
        if key in seen:
            raise fail(f"environments '{seen[key]}' and '{name}' both reach the {shown}; give each environment its own "
                       f"database: check {env.url_source()}", "environments", name, "url")
        seen[key] = name


def _check_lint_rules(overrides: dict[str, str] | None, loc: tuple[Any, ...], fail: Any) -> None:
    """Refuse a lint severity for a rule that does not exist."""
    if not overrides:
        return
    from orchestrator.lint import unknown_rules

    for rule in overrides:
        if message := unknown_rules([rule]):
            raise fail(message, *loc, rule)


def _check_promotion_cycles(envs: dict[str, Environment], fail: Any) -> None:
    """Refuse a ``promote_from`` chain that loops back on itself."""
    for name in envs:
        seen = [name]
        current = envs[name].promote_from
        while current is not None:
            if current in seen:
                raise fail(f"promote_from forms a cycle: {' -> '.join(seen + [current])}", "environments", name, "promote_from")
            seen.append(current)
            current = envs[current].promote_from


def _abs(root: Path, value: str) -> Path:
    """Return ``value`` as an absolute path, relative ones taken from ``root``."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (root / path).resolve()


def _script_location(root: Path, value: str) -> str:
    """Return a package resource (``pkg:dir``) unchanged, a path made absolute."""
    if re.fullmatch(r"[A-Za-z_][\w.]*:[\w./-]+", value) and not Path(value).exists():
        return value
    return str(_abs(root, value))


def _anchor_sqlite(url: URL, root: Path) -> URL:
    """Make a relative SQLite file path absolute against the project root."""
    if not url.drivername.startswith("sqlite"):
        return url
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or os.path.isabs(database):
        return url
    return url.set(database=str((root / database).resolve()))


def _mask_unparsed(text: str) -> str:
    """Hide what looks like a password in a URL that did not parse."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)
