"""The revision graph each environment sees, as a pure value.

All folders together form one graph; an environment sees the revisions in the
folders it lists. This module checks that ids are unique, that nothing an
environment sees depends on something it does not see, and that there are no
cycles. It reads nothing from disk and never imports a script.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from orchestrator.errors import GraphError
from orchestrator.loader import RevisionFile


@dataclass(frozen=True)
class EnvironmentGraph:
    """The revisions one environment sees, keyed by id, with its heads."""

    env: str
    revisions: dict[str, RevisionFile]
    heads: tuple[str, ...]
    others: dict[str, RevisionFile]  # every revision of every folder, to say where an unseen one lives
    root: Path

    def get(self, revision: str) -> RevisionFile | None:
        """Return the revision with this exact id, if the environment sees it."""
        return self.revisions.get(revision)


def index_unique(files: Iterable[RevisionFile], root: Path) -> dict[str, RevisionFile]:
    """Return revisions keyed by id, refusing an id defined in two files."""
    index: dict[str, RevisionFile] = {}
    for f in files:
        other = index.get(f.revision)
        if other is not None:
            raise GraphError(
                f"revision id {f.revision} is defined twice: {other.display_path(root)} and {f.display_path(root)}; "
                "give one of them a new id (and update what revises it)",
                revision=f.revision,
            )
        index[f.revision] = f
    return index


def build_environment_graph(
    env: str, visible_folders: Iterable[Path], all_files: dict[str, RevisionFile], root: Path
) -> EnvironmentGraph:
    """Return the graph ``env`` sees, refusing one that is not closed or has a cycle."""
    folders = tuple(visible_folders)
    visible = {rev: f for rev, f in all_files.items() if f.folder in folders}
    labels = _label_index(visible)
    for f in visible.values():
        for ref in f.down_revisions + f.depends_on:
            if ref in visible or ref in labels:
                continue
            raise _unclosed(env, f, ref, all_files, root)
    _check_acyclic(visible, labels, root)
    referenced = {d for f in visible.values() for d in f.down_revisions}
    heads = tuple(rev for rev in visible if rev not in referenced)
    return EnvironmentGraph(env=env, revisions=visible, heads=heads, others=all_files, root=root)


def _label_index(files: dict[str, RevisionFile]) -> dict[str, str]:
    """Map each branch label to the revision that declares it."""
    return {label: f.revision for f in files.values() for label in f.branch_labels}


def _unclosed(env: str, f: RevisionFile, ref: str, all_files: dict[str, RevisionFile], root: Path) -> GraphError:
    """Explain a reference from a visible revision to one the environment cannot see."""
    where = f.display_path(root)
    target = all_files.get(ref) or next((g for g in all_files.values() if ref in g.branch_labels), None)
    if target is None:
        return GraphError(
            f"environment '{env}': revision {f.revision} ({where}) refers to {ref}, which no version folder holds; "
            "fix its down_revision/depends_on or restore the missing script",
            env=env, revision=f.revision,
        )
    folder = target.folder.name
    return GraphError(
        f"environment '{env}': revision {f.revision} ({where}) depends on {target.revision}, which is only in {folder}/; "
        f"promote {target.revision} into a folder '{env}' lists first",
        env=env, revision=f.revision,
    )


def _check_acyclic(visible: dict[str, RevisionFile], labels: dict[str, str], root: Path) -> None:
    """Refuse a graph in which a revision (indirectly) revises itself."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def parents(rev: str) -> list[str]:
        f = visible[rev]
        return [labels.get(r, r) for r in f.down_revisions + f.depends_on]

    for start in visible:
        if start in state:
            continue
        stack = [(start, iter(parents(start)))]
        state[start] = 1
        while stack:
            rev, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[rev] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycle = [r for r, _ in stack][[r for r, _ in stack].index(nxt):] + [nxt]
                raise GraphError(
                    f"revisions form a cycle: {' -> '.join(cycle)} ({visible[nxt].display_path(root)}); "
                    "fix the down_revision that points back",
                    revision=nxt,
                )
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(parents(nxt))))


def labelled_revisions(graph: EnvironmentGraph) -> set[str]:
    """Return the revisions on a labelled branch: a labelled revision and everything built on it."""
    labelled = {r for r, f in graph.revisions.items() if f.branch_labels}
    grown = True
    while grown:
        more = {r for r, f in graph.revisions.items() if r not in labelled and set(f.down_revisions) & labelled}
        labelled |= more
        grown = bool(more)
    return labelled


def unlabelled_heads(graph: EnvironmentGraph) -> list[str]:
    """Return the heads not on a labelled branch (more than one means a merge is missing)."""
    labelled = labelled_revisions(graph)
    return [h for h in graph.heads if h not in labelled]
