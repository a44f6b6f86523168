"""The review ledger (``envs/reviews.yaml``): who approved which revision, bound to its content.

An approval records the sha256 of the script as it was approved; a script
edited afterwards is *stale*, which counts as unreviewed. The ledger lives in
the repository, so approvals go through code review themselves. This module
reads, judges and writes the ledger; it touches no database. Writes are one
locked read-modify-write (:func:`update_ledger`), so concurrent approvals
are never lost.
"""
from __future__ import annotations

import os
import stat
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError, LockTimeout, RegistryError
from orchestrator.yamlfile import parse_yaml, validation_error

REVIEWED, UNREVIEWED, STALE = "reviewed", "unreviewed", "stale"
LEDGER_LOCK_TIMEOUT = 60.0  # seconds a writer waits for another one (each holds the lock for milliseconds)


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


def update_ledger(path: Path | None, change: Callable[[Ledger], Ledger], *,
                  timeout: float = LEDGER_LOCK_TIMEOUT) -> Ledger:
    """Apply ``change`` to the ledger at ``path`` as one locked read-modify-write, and return the new ledger.

    The lock is an exclusive ``flock`` on a sidecar file beside the ledger
    (``.reviews.yaml.lock``): the ledger itself is replaced by each write, so a
    lock on it would be lost with its old inode. The ledger is re-read under
    the lock, so concurrent approvals never overwrite each other.
    """
    if path is None:
        return load_ledger(path)  # raises: no review ledger configured
    with _ledger_lock(path, timeout):
        ledger = change(load_ledger(path))
        save_ledger(ledger)
    return ledger


def lock_path(path: Path) -> Path:
    """Return the sidecar file whose lock guards writes to the ledger at ``path``."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def _ledger_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the ledger's exclusive lock (waiting at most ``timeout`` seconds for another writer)."""
    import fcntl

    sidecar = lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RegistryError(f"cannot lock the review ledger ({sidecar}): {exc.strerror or exc}; "
                            "check that the folder is writable", file=str(path)) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path}: another `orchestrator review` has held the ledger's lock ({sidecar}) "
                                      f"for {timeout:.0f}s; retry when it is done") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def save_ledger(ledger: Ledger) -> None:
    """Write the ledger atomically, approvals sorted by revision, keeping the file's mode.

    A temporary file in the same folder is renamed over the ledger; it takes the
    existing ledger's permission bits, or for a new ledger those of any new file
    (0666 less the umask). Call it under :func:`update_ledger`'s lock.
    """
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
    path = ledger.path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # a new file's mode: 0666 less the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RegistryError(f"cannot write the review ledger: {exc.strerror or exc}; check that the folder is writable",
                            file=str(path)) from None
