"""Split a SQL script into statements, keeping each statement's text exactly as written.

A careful scanner rather than a parser: it knows where a semicolon does not
end a statement (inside '...' and "..." and `...` quotes, ``--`` and ``/* */``
comments, PostgreSQL ``$tag$`` dollar quotes and ``E'...'`` strings, and the
``BEGIN ... END`` body of a ``CREATE TRIGGER`` / ``PROCEDURE`` / ``FUNCTION``),
honours a MySQL client ``DELIMITER`` line, and never rewrites what it keeps.
With ``mysql`` rules, a backslash escapes the next character inside quotes
and ``#`` starts a comment, as the MySQL server reads them.

Why not sqlglot's tokenizer: its token offsets would allow cutting the text
verbatim, but each dialect's tokenizer misreads the others' quoting (the
PostgreSQL one splits inside backquotes, the SQLite and MySQL ones inside
``$$`` bodies) and none knows where a trigger body ends.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.errors import ConfigError

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_DELIMITER_LINE = re.compile(r"DELIMITER[ \t]+(\S+)[ \t]*(?:\r?\n|$)", re.IGNORECASE)
# statements that open or close a transaction; each imported revision already runs in its own
_TRANSACTION = re.compile(
    r"(?:BEGIN(?:\s+(?:DEFERRED|IMMEDIATE|EXCLUSIVE))?(?:\s+(?:TRANSACTION|WORK))?"
    r"|START\s+TRANSACTION(?:\s+.*)?|COMMIT(?:\s+(?:TRANSACTION|WORK))?|END(?:\s+TRANSACTION)?)",
    re.IGNORECASE | re.DOTALL)
_ROLLBACK = re.compile(r"ROLLBACK\b.*", re.IGNORECASE | re.DOTALL)
# words after CREATE that make BEGIN ... END a body whose semicolons do not end the statement
_BODY_KINDS = {"TRIGGER", "PROCEDURE", "FUNCTION", "EVENT"}
# END followed by one of these closes a block the scanner does not count (MySQL compound statements)
_UNCOUNTED_ENDS = {"IF", "LOOP", "WHILE", "REPEAT"}


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text as written (no terminator) and the line it starts on."""

    sql: str
    line: int


class SplitError(ConfigError):
    """Raised when a script cannot be split safely (an unterminated quote or comment, a ROLLBACK)."""


def split_statements(text: str, *, where: str = "<sql>", mysql: bool = False) -> list[Statement]:
    """Return the statements of ``text`` in order, comment-only pieces left out."""
    return _Scanner(text, where, mysql).run()


def is_transaction_control(sql: str) -> bool:
    """Return True for BEGIN / START TRANSACTION / COMMIT / END (comments ignored)."""
    return bool(_TRANSACTION.fullmatch(strip_comments(sql).strip()))


def strip_comments(sql: str) -> str:
    """Return ``sql`` with ``--`` and ``/* */`` comments outside quotes removed."""
    out, i = [], 0
    while i < len(sql):
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 2
            out.append(" ")
        elif ch in "'\"`":
            end = sql.find(ch, i + 1)
            end = len(sql) - 1 if end < 0 else end
            out.append(sql[i:end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Scanner:
    """Walk a script once, cutting it at the terminators that stand outside quotes, comments and bodies."""

    def __init__(self, text: str, where: str, mysql: bool):
        self.text, self.where, self.mysql = text, where, mysql
        self.pos = 0
        self.start = 0
        self.delimiter = ";"
        self.words: list[str] = []  # upper-cased words of the current statement, outside quotes
        self.depth = 0  # open BEGIN / CASE blocks of a body
        self.statements: list[Statement] = []

    def run(self) -> list[Statement]:
        """Scan to the end and return the statements."""
        text = self.text
        while self.pos < len(text):
            if not self.words and self._at_line_start() and self._delimiter_line():
                continue
            if self.depth == 0 and text.startswith(self.delimiter, self.pos):
                self._cut(self.pos)
                self.pos += len(self.delimiter)
                self.start = self.pos
                continue
            self._step()
        self._cut(len(text))
        return self.statements

    def _step(self) -> None:
        """Consume one token-ish piece at ``pos``."""
        text, i = self.text, self.pos
        ch = text[i]
        if text.startswith("--", i) or (self.mysql and ch == "#"):
            end = text.find("\n", i)
            self.pos = len(text) if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                self._fail(i, "unterminated /* comment")
            self.pos = end + 2
        elif ch in "'\"`":
            escapes = self.mysql and ch != "`" or (ch == "'" and self._e_string(i))
            self.pos = self._quoted(i, ch, escapes)
        elif ch == "$" and (m := _DOLLAR_TAG.match(text, i)) and not self._ident_before(i):
            end = text.find(m.group(), m.end())
            if end < 0:
                self._fail(i, f"unterminated dollar-quoted string {m.group()}")
            self.pos = end + len(m.group())
        elif m := _WORD.match(text, i):
            if not self._ident_before(i) and text[i - 1:i] != ".":  # NEW.end is a column, not END
                self._word(m.group().upper())
            self.pos = m.end()
        else:
            self.pos = i + 1

    def _quoted(self, i: int, quote: str, escapes: bool) -> int:
        """Return the position after the quoted text starting at ``i`` (doubled quotes stay inside)."""
        text, j = self.text, i + 1
        while j < len(text):
            ch = text[j]
            if escapes and ch == "\\":
                j += 2
            elif ch == quote:
                if text.startswith(quote * 2, j):
                    j += 2
                else:
                    return j + 1
            else:
                j += 1
        kind = {"'": "string", '"': "quoted identifier", "`": "quoted identifier"}[quote]
        self._fail(i, f"unterminated {kind} {quote}...")
        raise AssertionError  # unreachable

    def _word(self, word: str) -> None:
        """Track the words that decide whether semicolons inside BEGIN ... END end the statement."""
        previous = self.words[-1] if self.words else None
        self.words.append(word)
        if not self._has_body():
            return
        if word in ("BEGIN", "CASE"):
            self.depth += 1 if not (word == "CASE" and previous == "END") else 0
        elif word == "END":
            self.depth = max(self.depth - 1, 0)
        elif previous == "END" and word in _UNCOUNTED_ENDS:
            self.depth += 1  # that END closed an IF / LOOP / ... block, not a counted one

    def _has_body(self) -> bool:
        """Return True when the statement is CREATE ... TRIGGER / PROCEDURE / FUNCTION / EVENT."""
        return bool(self.words) and self.words[0] == "CREATE" and bool(_BODY_KINDS & set(self.words[1:6]))

    def _e_string(self, i: int) -> bool:
        """Return True for PostgreSQL's E'...' (backslash escapes) string."""
        return i > 0 and self.text[i - 1] in "eE" and not self._ident_before(i - 1)

    def _ident_before(self, i: int) -> bool:
        """Return True when the character before ``i`` belongs to an identifier."""
        return i > 0 and (self.text[i - 1].isalnum() or self.text[i - 1] in "_$")

    def _at_line_start(self) -> bool:
        """Return True when only blanks stand between the previous newline and ``pos``."""
        line_start = self.text.rfind("\n", 0, self.pos) + 1
        return not self.text[line_start:self.pos].strip()

    def _delimiter_line(self) -> bool:
        """Consume a MySQL client ``DELIMITER x`` line, if one stands at ``pos``."""
        m = _DELIMITER_LINE.match(self.text, self.pos)
        if m is None:
            return False
        self.delimiter = m.group(1)
        self.pos = self.start = m.end()
        return True

    def _cut(self, end: int) -> None:
        """Keep the text from the statement's start to ``end`` unless it holds only comments."""
        piece = self.text[self.start:end]
        if self.words:
            lead = len(piece) - len(piece.lstrip())
            line = self.text.count("\n", 0, self.start + lead) + 1
            sql = piece.strip()
            if _ROLLBACK.fullmatch(strip_comments(sql).strip()):
                self._fail(self.start + lead, "ROLLBACK in a migration script; remove it (a failing revision is rolled back "
                           "by the orchestrator)")
            self.statements.append(Statement(sql, line))
        self.words, self.depth = [], 0

    def _fail(self, i: int, what: str) -> None:
        """Raise a SplitError naming the file and line."""
        line = self.text.count("\n", 0, i) + 1
        raise SplitError(f"{self.where}:{line}: {what}; the file cannot be split into statements safely: fix it")
