"""Read revision scripts from the version folders.

Each file is hashed and read for its ``revision``, ``down_revision``,
``branch_labels`` and ``depends_on``, so the graph of every environment can be
checked before Alembic builds its own. Scripts are parsed, never run, while
they are read: each file is read once, and its bytes are kept with their hash
so that the module Alembic later runs is compiled from exactly the bytes that
were hashed and judged (:func:`module_from_source`), never re-read from disk
and never taken from a ``.pyc``. Only a script whose identifiers are not
literals is run to read them, from the same bytes, and only when ``may_run``
allows it.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from orchestrator.errors import GraphError

# the same files Alembic treats as revision scripts
_REVISION_FILE = re.compile(r"^(?!\.#|__init__)[^/]*\.py$")
_FIELDS = ("revision", "down_revision", "branch_labels", "depends_on")


@dataclass(frozen=True)
class RevisionFile:
    """One revision script as found on disk."""

    revision: str
    down_revisions: tuple[str, ...]
    depends_on: tuple[str, ...]
    branch_labels: tuple[str, ...]
    message: str
    path: Path
    folder: Path
    sha256: str
    stat_key: tuple[int, int] = (0, 0)  # (size, mtime_ns) when read
    # the bytes that were read and hashed: the only source the script is ever run from
    source: bytes = field(default=b"", compare=False, repr=False)
    # the module docstring, whole (Alembic's long message)
    doc: str | None = field(default=None, compare=False, repr=False)

    def display_path(self, root: Path) -> str:
        """Return the path relative to ``root`` where possible."""
        return path_for_display(self.path, root)


def path_for_display(path: Path | str, root: Path) -> str:
    """Return ``path`` relative to the project root where possible (lexically, as ``Path.relative_to``)."""
    if isinstance(path, Path):  # already normalised: a prefix test says the same as relative_to, without its cost
        text, prefix = str(path), os.path.join(str(root), "")
        if text.startswith(prefix) and len(text) > len(prefix):
            return text[len(prefix):]
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def sha256_of(path: Path | str) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


Stamp = tuple[tuple[str, int, int], ...]


def _scripts(folder: Path, recursive: bool) -> list[Path]:
    """Return the ``*.py`` files of a folder (and its subfolders when recursive), sorted by path."""
    if recursive:
        return sorted(folder.rglob("*.py"))
    return [folder / name for name in _script_names(folder)]


def _script_names(folder: Path) -> list[str]:
    """Return the names of the ``*.py`` files directly in a folder, sorted."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if fnmatch.fnmatch(e.name, "*.py")]
    except (FileNotFoundError, NotADirectoryError):
        return []  # as Path.glob: a missing folder holds nothing
    return sorted(names, key=os.path.normcase)


def _is_revision_file(path: Path) -> bool:
    """Return True for a file Alembic treats as a revision script."""
    return bool(_REVISION_FILE.match(path.name)) and "__pycache__" not in path.parts


def stat_key(path: Path | str) -> tuple[int, int]:
    """Return (size, mtime_ns): what tells a file changed without reading it."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def folders_stamp(folders: Iterable[Path], *, recursive: bool = False) -> Stamp:
    """Return (path, size, mtime_ns) of every script in the folders: equal stamps mean nothing changed."""
    stamp = []
    for folder in folders:
        # the same files as _scripts, as strings: no Path object per script
        paths = ([str(p) for p in _scripts(folder, recursive)] if recursive
                 else [os.path.join(str(folder), name) for name in _script_names(folder)])
        stamp.extend((path, *stat_key(path)) for path in paths)
    return tuple(sorted(stamp))


def read_folders(folders: Iterable[Path], *, recursive: bool = False) -> list[RevisionFile]:
    """Return the revision files of several folders, in folder order."""
    return read_folders_stamped(folders, recursive=recursive)[0]


# called before a script whose identifiers are not literals is run to read them; raises to refuse
MayRun = Callable[[Path, Path, str], None]


def read_folders_stamped(folders: Iterable[Path], *, recursive: bool = False,
                         may_run: MayRun | None = None) -> tuple[list[RevisionFile], Stamp]:
    """Return the revision files of several folders and the stamp of what was read, in one pass.

    Every script is parsed, not run. Each file is stat-ed as it is read, so a
    change made while reading shows as a different stamp next time.
    """
    files: list[RevisionFile] = []
    stamp = []
    for folder in folders:
        for path in _scripts(folder, recursive):
            if _is_revision_file(path):
                found = read_revision_file(path, folder, may_run)
                files.append(found)
                size, mtime_ns = found.stat_key
            else:
                size, mtime_ns = stat_key(path)
            stamp.append((str(path), size, mtime_ns))
    return files, tuple(sorted(stamp))


def _read_bytes(path: Path) -> tuple[os.stat_result, bytes]:
    with open(path, "rb") as handle:
        return os.fstat(handle.fileno()), handle.read()


def _syntax_error(path: Path, folder: Path, exc: SyntaxError) -> GraphError:
    return GraphError(f"{_short(path, folder)}:{exc.lineno}: revision script has a syntax error: {exc.msg}; fix the file")


def read_revision_file(path: Path, folder: Path, may_run: MayRun | None = None) -> RevisionFile:
    """Parse one revision script for its identifiers, falling back to running its bytes (if ``may_run`` allows)."""
    st, data = _read_bytes(path)
    try:
        tree = ast.parse(data, filename=str(path))
    except SyntaxError as exc:
        raise _syntax_error(path, folder, exc) from None
    values = _literal_assignments(tree)
    if values is None:
        if may_run is not None:
            may_run(path, folder, hashlib.sha256(data).hexdigest())
        values = _module_values(module_from_source(path, folder, data))
    return _revision_file(path, folder, st, data, values, _message(tree), _docstring(tree))


def _revision_file(path: Path, folder: Path, st: os.stat_result, data: bytes, values: dict[str, Any], message: str,
                   doc: str | None = None) -> RevisionFile:
    """Check the identifiers read from one script and return its RevisionFile."""
    if not isinstance(values.get("revision"), str) or not values["revision"]:
        raise GraphError(f"{_short(path, folder)}: no 'revision = \"...\"' assignment; "
                         "every file in a version folder must be a revision script")
    refs = {}
    for name in ("down_revision", "depends_on", "branch_labels"):
        try:
            refs[name] = _as_tuple(values.get(name))
        except TypeError:
            raise GraphError(f"{_short(path, folder)}: {name} must be None, a string or a tuple of strings") from None
    return RevisionFile(
        revision=values["revision"],
        down_revisions=refs["down_revision"],
        depends_on=refs["depends_on"],
        branch_labels=refs["branch_labels"],
        message=message,
        path=path,
        folder=folder,
        sha256=hashlib.sha256(data).hexdigest(),
        stat_key=(st.st_size, st.st_mtime_ns),
        source=data,
        doc=doc,
    )


def _literal_assignments(tree: ast.Module) -> dict[str, Any] | None:
    """Return the module-level identifier assignments, or None if one is not a literal."""
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _FIELDS:
            if isinstance(value, ast.Constant):  # what literal_eval returns for it, without its overhead
                values[target.id] = value.value
                continue
            try:
                values[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
    return values


def _module_values(module: ModuleType) -> dict[str, Any]:
    """Return a loaded script's identifier attributes (None where missing)."""
    return {name: getattr(module, name, None) for name in _FIELDS}


def module_from_source(path: Path, folder: Path, data: bytes, revision: str | None = None) -> ModuleType:
    """Run a script's bytes as a fresh module (named as Alembic names it); a failure is the script's, named by its path.

    The code is compiled from ``data``, the bytes that were hashed: never
    re-read from disk and never taken from a cached ``.pyc``. A script that
    raises ``SystemExit`` (or anything else) at import fails like any other.
    """
    spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path.name), path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    try:
        code = compile(data, str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SyntaxError as exc:
        raise _syntax_error(path, folder, exc) from None
    except (Exception, SystemExit) as exc:
        detail = " ".join(str(exc).split())
        name = f" {revision}" if revision else ""
        raise GraphError(f"{_short(path, folder)}: cannot import revision script{name}: {exc.__class__.__name__}: "
                         f"{detail}") from None
    return module


def _short(path: Path, folder: Path) -> str:
    """Return ``folder/name`` for messages (the folder as the registry names it, not the whole path)."""
    return str(path.relative_to(folder.parent))


def _message(tree: ast.Module) -> str:
    """Return the first line of the module docstring (Alembic's message).

    The same line as ``ast.get_docstring(tree).strip().splitlines()[0]``: cleaning a
    docstring only removes whitespace before its first line of text, which
    ``strip`` removes anyway.
    """
    first = tree.body[0] if tree.body else None
    if not isinstance(first, ast.Expr) or not isinstance(first.value, ast.Constant) or not isinstance(first.value.value, str):
        return ""
    return _first_line(first.value.value)


def _docstring(tree: ast.Module) -> str | None:
    """Return the module docstring as written (what ``module.__doc__`` holds), or None."""
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.value.value
    return None


def _first_line(doc: str) -> str:
    """Return the first line of a docstring's text."""
    doc = doc.expandtabs().strip()
    return doc.splitlines()[0] if doc else ""


def _as_tuple(value: Any) -> tuple[str, ...]:
    """Normalise None, a string or a sequence of strings to a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(value)
    return tuple(value)
