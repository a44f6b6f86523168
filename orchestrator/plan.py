"""The plan: what an upgrade, downgrade or stamp would do, as a value.

A plan is computed from the scripts and the current heads, before anything
runs; it touches no database. Steps come in exactly the order Alembic will
run them (the same ``ScriptDirectory.iterate_revisions`` call Alembic makes).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError, RevisionError
from alembic.util import CommandError

from orchestrator.errors import GraphError, RevisionNotFound
from orchestrator.graph import EnvironmentGraph

UP, DOWN, STAMP = "up", "down", "stamp"


@dataclass(frozen=True)
class Step:
    """One revision applied in one direction."""

    revision: str
    down_revisions: tuple[str, ...]
    direction: str
    path: str
    sha256: str
    message: str


@dataclass(frozen=True)
class Plan:
    """Ordered steps for one environment, with the heads they start from and a fingerprint."""

    env: str
    command: str
    target: str
    heads_before: tuple[str, ...]
    steps: tuple[Step, ...]
    fingerprint: str
    findings: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        """Return True when there is nothing to do."""
        return not self.steps

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as plain data for ``--json``."""
        data = asdict(self)
        data["steps"] = [asdict(s) for s in self.steps]
        return data


def build_plan(env: str, command: str, target: str | tuple[str, ...], heads: tuple[str, ...], script: ScriptDirectory,
               graph: EnvironmentGraph) -> Plan:
    """Return the plan for ``command`` to ``target`` from ``heads``."""
    check_heads(env, heads, graph)
    try:
        if command == "upgrade":
            revs = list(reversed(list(script.iterate_revisions(target, heads, implicit_base=True))))
            steps = tuple(_step(r, UP, graph) for r in revs)
        elif command == "downgrade":
            revs = list(script.iterate_revisions(heads, target, select_for_downgrade=True))
            steps = tuple(_step(r, DOWN, graph) for r in revs)
        elif command == "stamp":
            targets = tuple(sorted(r.revision for r in script.get_revisions(target) if r is not None))
            steps = () if set(targets) == set(heads) else (Step(" ".join(targets) or "base", heads, STAMP, "", "", "stamp"),)
        else:
            raise ValueError(command)
    except (RevisionError, CommandError) as exc:
        raise unusable_target(env, command, target, heads, exc, script, graph) from None
    text = target if isinstance(target, str) else " ".join(target)
    return Plan(env=env, command=command, target=text, heads_before=tuple(sorted(heads)), steps=steps,
                fingerprint=fingerprint(env, command, text, heads, steps))


def _step(script: Any, direction: str, graph: EnvironmentGraph) -> Step:
    """Return the step for one Alembic Script, with the hash read when the graph was loaded."""
    found = graph.get(script.revision)
    return Step(
        revision=script.revision,
        down_revisions=found.down_revisions if found else _as_tuple(script.down_revision),
        direction=direction,
        path=found.display_path(graph.root) if found else script.path,
        sha256=found.sha256 if found else "",
        message=found.message if found else (script.doc or ""),
    )


def _as_tuple(value: Any) -> tuple[str, ...]:
    """Return a revision reference (None, str or tuple) as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def fingerprint(env: str, command: str, target: str, heads: tuple[str, ...], steps: tuple[Step, ...]) -> str:
    """Return a sha256 over everything that defines the plan."""
    payload = json.dumps(
        [env, command, target, sorted(heads), [[s.revision, s.direction, s.sha256] for s in steps]],
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def check_heads(env: str, heads: tuple[str, ...], graph: EnvironmentGraph) -> None:
    """Refuse a database whose version table names a revision the environment cannot see."""
    for head in heads:
        if head in graph.revisions:
            continue
        elsewhere = graph.others.get(head)
        where = (f"it is only in {elsewhere.folder.name}/, which '{env}' does not list" if elsewhere
                 else "no version folder holds it")
        raise GraphError(
            f"environment '{env}': the database is at revision {head}, but {where}; "
            "check that the URL points at the right database, or restore the missing script",
            env=env, revision=head)


def check_target(env: str, target: str | tuple[str, ...], script: ScriptDirectory, graph: EnvironmentGraph) -> None:
    """Refuse a target naming no revision, before any connection is made (relative targets pass)."""
    names = (target,) if isinstance(target, str) else target
    if any(_RELATIVE.search(n) for n in names):
        return
    try:
        script.revision_map.get_revisions(target)
    except (RevisionError, CommandError) as exc:
        raise unusable_target(env, "upgrade", target, None, exc, script, graph) from None


_RELATIVE = re.compile(r"(^|@)[+-]\d+$|^(base|heads?)$")
_STEPS = re.compile(r"(^|@)[+-]\d+$")


def unusable_target(env: str, command: str, target: str | tuple[str, ...], heads: tuple[str, ...] | None,
                    exc: Exception, script: ScriptDirectory, graph: EnvironmentGraph) -> RevisionNotFound:
    """Explain why ``target`` cannot be reached: unseen here, wrong direction, or unknown."""
    text = target if isinstance(target, str) else " ".join(target)
    for name in text.split():
        if name not in graph.revisions and name in graph.others:
            folder = graph.others[name].folder.name
            return RevisionNotFound(
                f"environment '{env}': revision {name} is only in {folder}/, which '{env}' does not list; "
                f"promote it into a folder '{env}' lists first", env=env, revision=name)
    if heads is not None and command in ("upgrade", "downgrade"):
        try:
            script.get_revisions(target)
        except (RevisionError, CommandError):
            pass
        else:
            at = ", ".join(heads) or "base"
            if _STEPS.search(text):
                return RevisionNotFound(
                    f"environment '{env}': cannot {command} {text} from the current heads ({at}): there are not that "
                    f"many revisions {'below' if command == 'downgrade' else 'above'} them; "
                    f"see `orchestrator history --env {env}`", env=env, revision=text)
            if command == "downgrade":
                return RevisionNotFound(
                    f"environment '{env}': cannot downgrade to {text}: it is not below the current heads ({at}); "
                    f"use `orchestrator upgrade {text}` to go forward", env=env, revision=text)
            return RevisionNotFound(
                f"environment '{env}': cannot upgrade to {text}: it is not above the current heads ({at}); "
                f"use `orchestrator downgrade {text}` to go back", env=env, revision=text)
    return unknown_revision(env, text, exc, graph)


def unknown_revision(env: str, target: str | tuple[str, ...], exc: Exception, graph: EnvironmentGraph) -> RevisionNotFound:
    """Explain why ``target`` is not a usable revision for ``env``."""
    target = target if isinstance(target, str) else " ".join(target)
    if isinstance(exc, ResolutionError):
        return RevisionNotFound(f"environment '{env}': unknown revision '{target}'; "
                                f"see `orchestrator history --env {env}` for the revisions it sees", env=env, revision=target)
    detail = " ".join(str(exc).split())
    return RevisionNotFound(
        f"environment '{env}': cannot resolve revision '{target}': {detail}; "
        f"see `orchestrator history --env {env}` for the revisions it sees",
        env=env, revision=target,
    )
