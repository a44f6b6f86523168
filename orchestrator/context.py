"""Everything about one environment that the commands need, built lazily and once.

An :class:`EnvContext` bundles the registry entry, the revision graph the
environment sees (checked closed), the in-memory Alembic ``Config`` and the
``ScriptDirectory`` over the environment's own folders. Building the context
sets ``ALEMBIC_ENV`` so that code run by Alembic sees the same environment.

A context made for one environment alone loads that environment's scripts
while reading its folders (as Alembic would) and hands the loaded modules to
its ``ScriptDirectory``; contexts made together for several environments only
parse the scripts, and Alembic loads an environment's scripts if it runs there.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionMap
from alembic.util import warn
from sqlalchemy.engine import URL

from orchestrator.graph import EnvironmentGraph, build_environment_graph, index_unique
from orchestrator.loader import RevisionFile, Stamp, folders_stamp, read_folders_stamped
from orchestrator.redact import RedactingStream
from orchestrator.registry import ENV_SELECT_VAR, Environment, Registry

ENV_ATTRIBUTE = "orchestrator.environment"
REGISTRY_ATTRIBUTE = "orchestrator.registry"
RUN_ATTRIBUTE = "orchestrator.recorder"


@dataclass
class EnvContext:
    """One environment of a registry, ready for Alembic."""

    registry: Registry
    env: Environment
    _all_files: dict[str, RevisionFile] | None = field(default=None, repr=False)
    _stamp: Stamp | None = field(default=None, repr=False)
    # load this environment's own scripts while reading the folders (instead of parsing them)
    load_scripts: bool = False

    @property
    def name(self) -> str:
        return self.env.name

    def reload(self) -> None:
        """Read the folders again if any script was added, removed or changed since they were read."""
        if self._stamp is not None and self._stamp == self._current_stamp():
            return
        for cached in ("all_files", "graph", "script", "directory"):
            self.__dict__.pop(cached, None)
        self._all_files = None
        self._stamp = None

    def _current_stamp(self) -> Stamp:
        return folders_stamp(self.registry.all_folders(), recursive=self.env.recursive_version_locations)

    @cached_property
    def url(self) -> URL:
        """Return the resolved database URL."""
        return self.env.url()

    @cached_property
    def all_files(self) -> dict[str, RevisionFile]:
        """Return every revision in every folder of the registry, ids checked unique."""
        if self._all_files is None:
            load = self.env.version_locations if self.load_scripts else ()
            if load:
                self.directory  # puts prepend_sys_path on sys.path first, as Alembic does before loading
            files, self._stamp = read_folders_stamped(self.registry.all_folders(),
                                                      recursive=self.env.recursive_version_locations, load=load)
            self._all_files = index_unique(files, self.registry.root)
        else:
            self._stamp = self._current_stamp()
        return self._all_files

    @cached_property
    def graph(self) -> EnvironmentGraph:
        """Return the graph this environment sees, checked closed and acyclic."""
        return build_environment_graph(self.name, self.env.version_locations, self.all_files, self.registry.root)

    def config(self, *, stdout: TextIO | None = None, output_buffer: TextIO | None = None) -> Config:
        """Return a fresh in-memory Alembic Config for this environment."""
        # Alembic's own messages ("Generating ...") are progress: stderr, keeping stdout for results
        cfg = Config(stdout=stdout or RedactingStream(lambda: sys.stderr), output_buffer=output_buffer)
        for key, value in alembic_options(self.env, self.registry).items():
            cfg.set_main_option(key, value)
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        cfg.attributes[ENV_ATTRIBUTE] = self.env
        cfg.attributes[REGISTRY_ATTRIBUTE] = self.registry
        return cfg

    @cached_property
    def directory(self) -> ScriptDirectory:
        """Return Alembic's ScriptDirectory for this environment, before it has read any script."""
        return ScriptDirectory.from_config(self.config())

    @cached_property
    def script(self) -> ScriptDirectory:
        """Return Alembic's view of this environment's folders."""
        graph = self.graph  # refuse an unclosed graph before Alembic trips over it
        script = self.directory
        # keyed as Alembic will find them: the real path of the folder, then the script's path inside it
        real = {folder: (os.path.realpath(folder), len(str(folder))) for folder in self.env.version_locations}
        _take_loaded(script, {real[f.folder][0] + str(f.path)[real[f.folder][1]:]: f for f in graph.revisions.values()
                              if f.module is not None and f.folder in real})
        return script


def _take_loaded(script: ScriptDirectory, loaded: dict[str, RevisionFile]) -> None:
    """Make ``script`` build its revision map from the scripts already loaded while the folders were read.

    Alembic's own listing decides which files and in which order (as in
    ``ScriptDirectory._load_revisions``); a file loaded before becomes a
    ``Script`` from its module instead of being loaded a second time, and any
    other file is loaded by Alembic as usual.
    """
    locations = getattr(script, "_version_locations", None)
    if not loaded or locations is None or not hasattr(Script, "_list_py_dir") or not hasattr(Script, "_from_path"):
        return  # an Alembic laid out otherwise loads them itself

    def load_revisions() -> Iterator[Script]:
        seen = set()
        for folder in [Path(v) for v in locations if Path(v).exists()]:
            for file_path in Script._list_py_dir(script, folder):
                real_path = Path(file_path).resolve()
                if real_path in seen:
                    warn(f"File {real_path} loaded twice! ignoring. Please ensure version_locations is unique.")
                    continue
                seen.add(real_path)
                found = loaded.get(str(real_path))
                found_script = (Script(found.module, found.revision, real_path) if found is not None
                                else Script._from_path(script, real_path))
                if found_script is not None:
                    yield found_script

    script.revision_map = RevisionMap(load_revisions)


def alembic_options(env: Environment, registry: Registry, *, separator: str = "newline") -> dict[str, str]:
    """Return the Alembic main options for ``env`` (no URL), as an ini would hold them."""
    sep = {"newline": "\n", "os": os.pathsep}[separator]
    options = {
        "script_location": env.script_location,
        "path_separator": separator,
        "version_locations": sep.join(str(p) for p in env.version_locations),
        "recursive_version_locations": "true" if env.recursive_version_locations else "false",
        "orchestrator.registry": str(registry.path),
        "orchestrator.env": env.name,
    }
    if env.prepend_sys_path:
        options["prepend_sys_path"] = sep.join(str(p) for p in env.prepend_sys_path)
    if env.file_template:
        options["file_template"] = env.file_template
    # Config values go through configparser interpolation: escape every '%'
    return {k: v.replace("%", "%%") for k, v in options.items()}


@contextmanager
def selected_env(name: str) -> Iterator[None]:
    """Set ``ALEMBIC_ENV`` for code Alembic runs (env.py, scripts), restoring it afterwards."""
    before = os.environ.get(ENV_SELECT_VAR)
    os.environ[ENV_SELECT_VAR] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_SELECT_VAR, None)
        else:
            os.environ[ENV_SELECT_VAR] = before


def contexts(registry: Registry, names: list[str] | None = None) -> list[EnvContext]:
    """Return contexts for ``names`` (all environments if None), sharing one read of the folders."""
    chosen = [registry.env(n) for n in names] if names else list(registry.environments.values())
    shared: dict[str, RevisionFile] | None = None
    result = []
    for env in chosen:
        ctx = EnvContext(registry, env, shared, load_scripts=len(chosen) == 1)
        if shared is None:
            shared = ctx.all_files
            ctx._all_files = shared
        result.append(ctx)
    return result
