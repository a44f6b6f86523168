"""Read revision scripts from the version folders without running them.

Each file is parsed (not imported) for its ``revision``, ``down_revision``,
``branch_labels`` and ``depends_on`` assignments and hashed, so the graph of
every environment can be checked before Alembic loads anything.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from alembic.util import load_python_file

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

    def display_path(self, root: Path) -> str:
        """Return the path relative to ``root`` where possible."""
        return path_for_display(self.path, root)


def path_for_display(path: Path | str, root: Path) -> str:
    """Return ``path`` relative to the project root where possible."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def sha256_of(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_folder(folder: Path, *, recursive: bool = False) -> list[RevisionFile]:
    """Return the revision files of one folder, sorted by path."""
    candidates: Iterable[Path] = folder.rglob("*.py") if recursive else folder.glob("*.py")
    found = []
    for path in sorted(candidates):
        if _REVISION_FILE.match(path.name) and "__pycache__" not in path.parts:
            found.append(read_revision_file(path, folder))
    return found


def folders_stamp(folders: Iterable[Path], *, recursive: bool = False) -> tuple[tuple[str, int, int], ...]:
    """Return (path, size, mtime_ns) of every script in the folders: equal stamps mean nothing changed."""
    stamp = []
    for folder in folders:
        candidates = folder.rglob("*.py") if recursive else folder.glob("*.py")
        for path in candidates:
            st = path.stat()
            stamp.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamp))


def read_folders(folders: Iterable[Path], *, recursive: bool = False) -> list[RevisionFile]:
    """Return the revision files of several folders, in folder order."""
    files: list[RevisionFile] = []
    for folder in folders:
        files.extend(read_folder(folder, recursive=recursive))
    return files


def read_revision_file(path: Path, folder: Path) -> RevisionFile:
    """Parse one revision script for its identifiers, falling back to importing it."""
    st = path.stat()
    data = path.read_bytes()
    try:
        tree = ast.parse(data, filename=str(path))
    except SyntaxError as exc:
        raise GraphError(f"{_short(path, folder)}:{exc.lineno}: revision script has a syntax error: {exc.msg}; fix the file") from None
    values = _literal_assignments(tree)
    if values is None:
        values = _imported_assignments(path, folder)
    where = _short(path, folder)
    if not isinstance(values.get("revision"), str) or not values["revision"]:
        raise GraphError(f"{where}: no 'revision = \"...\"' assignment; every file in a version folder must be a revision script")
    refs = {}
    for name in ("down_revision", "depends_on", "branch_labels"):
        try:
            refs[name] = _as_tuple(values.get(name))
        except TypeError:
            raise GraphError(f"{where}: {name} must be None, a string or a tuple of strings") from None
    return RevisionFile(
        revision=values["revision"],
        down_revisions=refs["down_revision"],
        depends_on=refs["depends_on"],
        branch_labels=refs["branch_labels"],
        message=_message(tree),
        path=path,
        folder=folder,
        sha256=hashlib.sha256(data).hexdigest(),
        stat_key=(st.st_size, st.st_mtime_ns),
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
            try:
                values[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
    return values


def _imported_assignments(path: Path, folder: Path) -> dict[str, Any]:
    """Import the script the way Alembic does and read its identifiers."""
    try:
        module = load_python_file(str(path.parent), path.name)
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise GraphError(f"{_short(path, folder)}: cannot import revision script: {exc.__class__.__name__}: {detail}") from None
    return {name: getattr(module, name, None) for name in _FIELDS}


def _short(path: Path, folder: Path) -> str:
    """Return ``folder/name`` for messages (the folder as the registry names it, not the whole path)."""
    return str(path.relative_to(folder.parent))


def _message(tree: ast.Module) -> str:
    """Return the first line of the module docstring (Alembic's message)."""
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _as_tuple(value: Any) -> tuple[str, ...]:
    """Normalise None, a string or a sequence of strings to a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(value)
    return tuple(value)
