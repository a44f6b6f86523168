"""Render command results for people (rich tables) and scripts (JSON).

Every value that comes from scripts, the registry or a database goes through
:func:`inert` so control characters and terminal escapes cannot act on the
reader's terminal; everything written passes the password filter.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable

from orchestrator.redact import RedactingStream, redact

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(value: Any) -> str:
    """Return ``value`` as text with control characters shown as escapes."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", redact(text))


class Output:
    """A secret-masking text stream, with a rich console made only when a table is printed.

    Importing rich costs start-up time that a plain ``upgrade -q`` never needs.
    """

    def __init__(self, stream: Any):
        self.file = RedactingStream(stream)
        self._console: Any = None

    def line(self, text: str = "") -> None:
        """Write one line of plain text."""
        self.file.write(text + "\n")

    def print(self, renderable: Any = "") -> None:
        """Print with rich (tables)."""
        if self._console is None:
            from rich.console import Console

            # pipes and CI logs get a wide table rather than rich's 80-column default
            width = None if self.file.isatty() else 160
            self._console = Console(file=self.file, highlight=False, soft_wrap=True, markup=False, emoji=False,
                                    width=width)
        self._console.print(renderable)


def consoles() -> tuple[Output, Output]:
    """Return the outputs for stdout and stderr, both masking secrets."""
    return Output(lambda: sys.stdout), Output(lambda: sys.stderr)


def print_json(console: Output, data: Any) -> None:
    """Write ``data`` as JSON on its own, no styling."""
    console.file.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Any:
    """Return a rich table whose cells are inert text."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(Text(inert(cell)) for cell in row))
    return t


def ids(values: Iterable[str] | None) -> str:
    """Return revision ids for a table cell."""
    values = [inert(v) for v in values or []]  # (a version table may hold anything)
    return ", ".join(values) if values else "(none)"
