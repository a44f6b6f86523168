"""Every use of Alembic's internals, in one place, with a version check and a public-API fallback.

The orchestrator hands Alembic the scripts it has read, hashed and judged
(never letting Alembic load them again from disk), and runs an Alembic verb
on that ScriptDirectory. Doing so as ``alembic.command`` does needs a few
private members (``ScriptDirectory._upgrade_revs``/``_downgrade_revs``/
``_stamp_revs``, ``_version_locations``, ``Script._list_py_dir``). They are
used only on the Alembic versions they were tested on (:data:`ALEMBIC_TESTED`)
and only when present; otherwise the same work is done with public API
(``ScriptDirectory.iterate_revisions``, ``MigrationStep.upgrade_from_script``,
``RevisionMap``), and a stamp, which has no public equivalent, runs through
``alembic.command.stamp`` on unprotected environments only.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import alembic
from alembic.runtime.migration import MigrationStep
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionMap

from orchestrator.loader import RevisionFile, module_from_source

# half-open range of (major, minor) Alembic versions whose internals were tested here
ALEMBIC_TESTED = ((1, 16), (1, 21))


def alembic_version() -> tuple[int, int]:
    """Return the installed Alembic's (major, minor)."""
    parts = alembic.__version__.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def tested_range() -> str:
    """Return the tested Alembic versions as a pip requirement (``>=1.16,<1.21``)."""
    (a, b), (c, d) = ALEMBIC_TESTED
    return f">={a}.{b},<{c}.{d}"


def internals_usable(obj: Any, *names: str) -> bool:
    """Return True when the installed Alembic is a tested version and ``obj`` has every private member ``names``."""
    low, high = ALEMBIC_TESTED
    return low <= alembic_version() < high and all(hasattr(obj, name) for name in names)


# ---------------------------------------------------------------------------- judged modules


class JudgedModule(ModuleType):
    """A revision script as Alembic sees it before it may run: its identifiers and docstring, parsed.

    Anything else asked of it (``upgrade``, ``downgrade``, a module global)
    first runs the script, compiled from the bytes that were hashed, once,
    and only if ``guard`` allows it (a protected environment runs approved
    content only). Until then no code of the script has run.
    """

    def __init__(self, file: RevisionFile, guard: Callable[[RevisionFile], None]) -> None:
        super().__init__(file.path.stem, file.doc)
        self.__file__ = str(file.path)
        self.revision = file.revision
        self.down_revision = _alembic_value(file.down_revisions)
        self.branch_labels = _alembic_value(file.branch_labels)
        self.depends_on = _alembic_value(file.depends_on)
        self.__dict__["_orchestrator_file"] = file
        self.__dict__["_orchestrator_guard"] = guard
        self.__dict__["_orchestrator_loaded"] = None

    def __getattr__(self, name: str) -> Any:
        loaded = self.__dict__.get("_orchestrator_loaded")
        if loaded is None:
            if name.startswith("_"):  # Alembic's probes (_alembic_source_encoding) must not run the script
                raise AttributeError(name)
            loaded = self.executed()
        return getattr(loaded, name)

    def executed(self) -> ModuleType:
        """Return the script's module, running it from the judged bytes the first time."""
        loaded = self.__dict__["_orchestrator_loaded"]
        if loaded is None:
            file: RevisionFile = self.__dict__["_orchestrator_file"]
            self.__dict__["_orchestrator_guard"](file)
            loaded = module_from_source(file.path, file.folder, file.source, file.revision)
            self.__dict__["_orchestrator_loaded"] = loaded
        return loaded


def _alembic_value(values: tuple[str, ...]) -> str | tuple[str, ...] | None:
    return None if not values else values[0] if len(values) == 1 else values


def install_revision_map(script: ScriptDirectory, files: dict[str, RevisionFile],
                         guard: Callable[[RevisionFile], None]) -> None:
    """Make ``script`` build its revision map from ``files`` (keyed by real path), as :class:`JudgedModule` s.

    Alembic never loads a revision script itself: a file Alembic would list
    but that was not read and hashed (a sourceless ``.pyc``) is left out.
    """

    def judged(path: str, file: RevisionFile) -> Script:
        return Script(JudgedModule(file, guard), file.revision, path)

    locations = getattr(script, "_version_locations", None)
    if locations is not None and internals_usable(Script, "_list_py_dir"):
        def load_revisions() -> Iterator[Script]:
            # Alembic's own listing decides the order (as in ScriptDirectory._load_revisions)
            seen = set()
            for folder in [Path(v) for v in locations if Path(v).exists()]:
                for file_path in Script._list_py_dir(script, folder):
                    real_path = Path(file_path).resolve()
                    if real_path in seen:
                        warnings.warn(f"File {real_path} loaded twice! ignoring. Please ensure version_locations "
                                      "is unique.")
                        continue
                    seen.add(real_path)
                    found = files.get(str(real_path))
                    if found is not None:
                        yield judged(str(real_path), found)
    else:
        def load_revisions() -> Iterator[Script]:
            for path, found in files.items():
                yield judged(path, found)

    script.revision_map = RevisionMap(load_revisions)


def real_paths(files: Any, folders: Any) -> dict[str, RevisionFile]:
    """Key ``files`` by the real path Alembic finds them under: the folder's real path, then the script's path in it."""
    real = {folder: (os.path.realpath(folder), len(str(folder))) for folder in folders}
    return {real[f.folder][0] + str(f.path)[real[f.folder][1]:]: f for f in files if f.folder in real}


# ---------------------------------------------------------------------------- the verbs


def step_function(script: ScriptDirectory, command: str, target: Any) -> Callable[[Any, Any], Any] | None:
    """Return the ``fn`` Alembic's ``command.<verb>`` hands EnvironmentContext, on ``script``; None: use alembic.command."""
    if command == "upgrade":
        if internals_usable(script, "_upgrade_revs"):
            return lambda rev, context: script._upgrade_revs(target, rev)
        return lambda rev, context: [MigrationStep.upgrade_from_script(script.revision_map, s)
                                     for s in reversed(list(script.iterate_revisions(target, rev, implicit_base=True)))]
    if command == "downgrade":
        if internals_usable(script, "_downgrade_revs"):
            return lambda rev, context: script._downgrade_revs(target, rev)
        return lambda rev, context: [MigrationStep.downgrade_from_script(script.revision_map, s)
                                     for s in script.iterate_revisions(rev, target, select_for_downgrade=True)]
    if command == "stamp" and internals_usable(script, "_stamp_revs"):
        return lambda rev, context: script._stamp_revs(target, rev)
    return None


def executed_module(module: Any) -> Any:
    """Return a revision's runnable module (running a :class:`JudgedModule` from its judged bytes)."""
    return module.executed() if isinstance(module, JudgedModule) else module


def run_planned(script: ScriptDirectory, command: str, recorder: Any) -> None:
    """Run the planned steps' scripts (judged, the gate passed) before Alembic starts, so an import failure fails no step."""
    if command in ("upgrade", "downgrade") and recorder is not None:
        for revision in getattr(recorder, "expected", None) or ():
            executed_module(script.get_revision(revision).module)


# ---------------------------------------------------------------------------- Alembic's module proxies


@contextmanager
def proxies_restored() -> Iterator[None]:
    """Put ``alembic.context`` and ``alembic.op`` back as they were once a nested EnvironmentContext is done.

    Lint may render a step inside a migration already under way (the gate, called
    from an env.py that stock ``alembic`` runs): that run's proxies must survive.
    Uses the proxies' private ``_proxy``/``_install_proxy``/``_remove_proxy``
    where present; without them there is nothing to restore.
    """
    import alembic.context
    import alembic.op

    saved = [(module, getattr(module, "_proxy", None)) for module in (alembic.context, alembic.op)]
    try:
        yield
    finally:
        for module, before in saved:
            now = getattr(module, "_proxy", None)
            if now is before:
                continue
            if before is not None and hasattr(before, "_install_proxy"):
                before._install_proxy()
            elif now is not None and hasattr(now, "_remove_proxy"):
                now._remove_proxy()
