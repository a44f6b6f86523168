"""Keep passwords out of everything the orchestrator writes.

Every password found in a registry URL is registered here when the URL is
resolved; text bound for a terminal, a log, a history row or a report passes
through :func:`redact` first.
"""
from __future__ import annotations

import io
import logging
import re
from typing import Callable, TextIO
from urllib.parse import quote, quote_plus

MASK = "***"
_secrets: set[str] = set()


def register_secret(secret: str | None) -> None:
    """Remember a secret (and its URL-encoded spellings) so it is masked from now on."""
    if not secret:
        return
    for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
        _secrets.add(form)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``.

    A secret is masked where it stands as a token of its own (not inside a
    longer word), so a password such as ``postgres`` masks the password and not
    the word ``postgresql``.
    """
    if not _secrets or not text:
        return text
    global _pattern, _pattern_for
    if _pattern_for != len(_secrets):
        # longest first, so a secret containing another is masked whole
        alternatives = "|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True))
        _pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
        _pattern_for = len(_secrets)
    return _pattern.sub(MASK, text)


_pattern: re.Pattern[str] | None = None
_pattern_for = -1


class RedactingStream(io.TextIOBase):
    """A text stream that masks secrets before writing to the wrapped stream.

    ``wrapped`` may be a callable returning the stream, so that the stream is
    looked up at each write (``lambda: sys.stdout`` follows redirections).
    """

    def __init__(self, wrapped: TextIO | Callable[[], TextIO]):
        self._target = wrapped

    @property
    def _wrapped(self) -> TextIO:
        return self._target() if callable(self._target) else self._target

    def write(self, s: str) -> int:
        self._wrapped.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self._wrapped.flush()

    def isatty(self) -> bool:
        return self._wrapped.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._wrapped, "encoding", "utf-8")


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True
