"""The review ledger (``envs/reviews.yaml``): who approved which revision, bound to its content.

An approval records the sha256 of the script as it was approved; a script
edited afterwards is *stale*, which counts as unreviewed. The ledger lives in
the repository, so approvals go through code review themselves. This module
reads, judges and writes the ledger; it touches no database.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError, RegistryError
from orchestrator.yamlfile import parse_yaml, validation_error

REVIEWED, UNREVIEWED, STALE = "reviewed", "unreviewed", "stale"


class ApprovalEntry(BaseModel):
    """One approval as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reviewer: str = Field(min_length=1)
    approved_at: str
    note: str | None = None
    acknowledged: tuple[str, ...] = ()

    @field_validator("revision", "approved_at", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted all-digit id as a number and an unquoted timestamp as a datetime
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("acknowledged")
    @classmethod
    def _known_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from orchestrator.lint import unknown_rules

        if message := unknown_rules(value):
            raise ValueError(message)
        return value


class LedgerFile(BaseModel):
    """The whole ledger file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(1, ge=1, le=1)
    approvals: tuple[ApprovalEntry, ...] = ()


@dataclass(frozen=True)
class Approval:
    """An approval of one revision's content."""

    revision: str
    sha256: str
    reviewer: str
    approved_at: str
    note: str | None = None
    acknowledged: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ledger:
    """Every approval, keyed by revision, and the file it belongs to."""

    path: Path
    approvals: dict[str, Approval]

    def state(self, revision: str, sha256: str) -> str:
        """Return reviewed, unreviewed or stale for a revision with this content."""
        approval = self.approvals.get(revision)
        if approval is None:
            return UNREVIEWED
        return REVIEWED if approval.sha256 == sha256 else STALE

    def reviewer(self, revision: str, sha256: str) -> str | None:
        """Return who approved this exact content, if anyone."""
        approval = self.approvals.get(revision)
        return approval.reviewer if approval is not None and approval.sha256 == sha256 else None

    def approve(self, revision: str, sha256: str, reviewer: str, *, note: str | None = None,
                acknowledged: tuple[str, ...] = (), now: datetime | None = None) -> "Ledger":
        """Return the ledger with this content of ``revision`` approved (replacing an older approval)."""
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        approval = Approval(revision, sha256, reviewer, stamp, note, tuple(dict.fromkeys(acknowledged)))
        return replace(self, approvals={**self.approvals, revision: approval})

    def revoke(self, revision: str) -> "Ledger":
        """Return the ledger without the approval of ``revision``."""
        if revision not in self.approvals:
            raise ConfigError(f"{self.path}: revision {revision} has no approval to revoke")
        return replace(self, approvals={k: v for k, v in self.approvals.items() if k != revision})


def load_ledger(path: Path | None) -> Ledger:
    """Read the ledger at ``path``; a missing file is an empty ledger."""
    if path is None:
        raise ConfigError("no review ledger configured; set project.reviews in the registry (e.g. envs/reviews.yaml)")
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Ledger(path, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read the review ledger: {exc.__class__.__name__}: {exc}", file=label) from None
    data, lines = parse_yaml(text, label, "the review ledger must be a mapping with 'version' and 'approvals'",
                             allow_empty=True)
    if data is None:  # blank, or only comments
        return Ledger(path, {})
    try:
        model = LedgerFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lines, label, "review ledger format") from None
    approvals: dict[str, Approval] = {}
    for i, entry in enumerate(model.approvals):
        if entry.revision in approvals:
            raise RegistryError(f"revision {entry.revision} is approved twice; keep one entry", file=label,
                                line=lines.get(("approvals", i)), field=f"approvals.{i}")
        approvals[entry.revision] = Approval(**entry.model_dump())
    return Ledger(path, approvals)


def save_ledger(ledger: Ledger) -> None:
    """Write the ledger atomically, approvals sorted by revision."""
    entries = []
    for approval in sorted(ledger.approvals.values(), key=lambda a: a.revision):
        entry = {"revision": approval.revision, "sha256": approval.sha256, "reviewer": approval.reviewer,
                 "approved_at": approval.approved_at}
        if approval.note:
            entry["note"] = approval.note
        entry["acknowledged"] = list(approval.acknowledged)
        entries.append(entry)
    text = ("# Review ledger: approvals bound to each script's sha256. Written by `orchestrator review`;\n"
            "# edits go through code review like any other change.\n")
    text += yaml.safe_dump({"version": 1, "approvals": entries}, sort_keys=False, allow_unicode=True)
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=ledger.path.parent, prefix=".reviews-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, ledger.path)
