"""Turn numbered SQL files (``vNNN_description.sql``) into a chain of Alembic revisions.

Reading, checking and rendering are pure; :func:`write_revisions` is the only
writer. Each imported revision carries ``orchestrator_sql_version = N`` (the
number of its file, which ``adopt`` matches against SQLite's ``PRAGMA
user_version``) and ``orchestrator_sql_sha256`` (of the file it came from), so
importing the folder again skips what is unchanged and refuses what changed.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError, RevisionNotFound
from orchestrator.loader import RevisionFile, path_for_display
from orchestrator.sqlsplit import Statement, is_transaction_control, split_statements, strip_comments

# v003_add_users.sql, 003_add_users.up.sql (golang-migrate), v003_add_users.down.sql, V3__add_users.sql (Flyway)
SQL_FILE = re.compile(r"^(?P<prefix>[vV]?)(?P<number>\d+)_(?P<description>.+?)(?P<kind>\.up|\.down)?\.sql$")
VERSION_ATTRIBUTE = "orchestrator_sql_version"
SHA_ATTRIBUTE = "orchestrator_sql_sha256"


@dataclass(frozen=True)
class SqlFile:
    """One numbered migration: its up file and, when present, its down file."""

    number: int
    digits: str  # the number as written in the file name ("003")
    description: str
    up: Path
    down: Path | None

    @property
    def revision(self) -> str:
        """Return the revision id: ``v`` and the number as written (``v003``)."""
        return f"v{self.digits}"

    @property
    def message(self) -> str:
        """Return the revision message: the description with underscores as spaces."""
        return " ".join(self.description.replace("_", " ").split())

    @property
    def slug(self) -> str:
        """Return the description as a file-name part."""
        return re.sub(r"[^A-Za-z0-9]+", "_", self.description).strip("_").lower() or "sql"

    def sha256(self) -> str:
        """Return the sha256 of the up file's bytes, followed by the down file's when there is one."""
        digest = hashlib.sha256(self.up.read_bytes())
        if self.down is not None:
            digest.update(b"\0" + self.down.read_bytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Rendered:
    """One revision script ready to be written."""

    source: SqlFile
    down_revision: str | None
    text: str
    statements: int
    left_out: tuple[str, ...]


def find_sql_files(directory: Path) -> list[SqlFile]:
    """Return the folder's numbered SQL files in numeric order, refusing gaps, duplicates and strays."""
    if not directory.is_dir():
        raise ConfigError(f"import-sql: {directory} is not a folder")
    ups: dict[int, list[tuple[str, str, Path]]] = {}
    downs: dict[int, list[Path]] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == ".sql"):
        m = SQL_FILE.match(path.name)
        description = m.group("description").strip("_ ") if m else ""
        if m is None or not description:
            raise ConfigError(f"import-sql: {path.name} in {directory} does not match vNNN_description.sql "
                              "(or NNN_description.up.sql / .down.sql); rename it or move it out of the folder")
        number = int(m.group("number"))
        if m.group("kind") == ".down":
            downs.setdefault(number, []).append(path)
        else:
            ups.setdefault(number, []).append((m.group("number"), description, path))
    if not ups and not downs:
        raise ConfigError(f"import-sql: {directory} holds no vNNN_description.sql files")
    return _pair(directory, ups, downs)


def _pair(directory: Path, ups: dict[int, list[tuple[str, str, Path]]],
          downs: dict[int, list[Path]]) -> list[SqlFile]:
    """Match each up file with its down file and check the numbers run without gaps."""
    for number, group in [*ups.items(), *((n, [(None, None, p) for p in d]) for n, d in downs.items())]:
        if len(group) > 1:
            names = ", ".join(p.name for *_, p in group)
            raise ConfigError(f"import-sql: version {number} appears more than once in {directory} ({names}); "
                              "keep one file per number")
    for number, (path,) in downs.items():
        if number not in ups:
            raise ConfigError(f"import-sql: {path.name} in {directory} has no up file for version {number}")
    numbers = sorted(ups)
    for before, after in zip(numbers, numbers[1:]):
        if after != before + 1:
            missing = ", ".join(str(n) for n in range(before + 1, after))
            raise ConfigError(f"import-sql: version {missing} is missing in {directory} between "
                              f"{ups[before][0][2].name} and {ups[after][0][2].name}; the numbers must run without gaps")
    return [SqlFile(n, ups[n][0][0], ups[n][0][1], ups[n][0][2], downs[n][0] if n in downs else None) for n in numbers]


def read_statements(path: Path, *, mysql: bool = False) -> tuple[list[Statement], list[str]]:
    """Return a file's statements and, apart, the transaction statements left out (each revision has its own)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"import-sql: {path.name} is not UTF-8 text (byte {exc.start}); convert it first") from None
    kept, left_out = [], []
    for statement in split_statements(text, where=path.name, mysql=mysql):
        if is_transaction_control(statement.sql):
            left_out.append(f"{strip_comments(statement.sql).split()[0].upper()} (line {statement.line})")
        else:
            kept.append(statement)
    return kept, left_out


def render_revision(source: SqlFile, down_revision: str | None, *, mysql: bool = False) -> Rendered:
    """Return the revision script for one numbered SQL file."""
    up, left_out = read_statements(source.up, mysql=mysql)
    down, down_left_out = read_statements(source.down, mysql=mysql) if source.down else ([], [])
    names = source.up.name + (f" and {source.down.name}" if source.down else "")
    lines = [
        f'"""{_docstring_safe(source.message)}',
        "",
        f"Imported by `orchestrator import-sql` from {_docstring_safe(names)}; each statement",
        "is the file's own text, cut at its top-level semicolons.",
        '"""',
        "import sqlalchemy as sa",
        "from alembic import op",
        "",
        f"revision = {source.revision!r}",
        f"down_revision = {down_revision!r}",
        "branch_labels = None",
        "depends_on = None",
        "",
        "# the legacy schema version (e.g. SQLite's PRAGMA user_version) this revision brings the database to",
        f"{VERSION_ATTRIBUTE} = {source.number}",
        "# sha256 of the imported file(s): importing again skips this revision while they are unchanged",
        f"{SHA_ATTRIBUTE} = {source.sha256()!r}",
        "",
    ]
    if left_out or down_left_out:
        lines.append(f"# left out: {', '.join(left_out + down_left_out)}: every revision runs in its own transaction")
    lines += _statement_list("UPGRADE_STATEMENTS", up)
    lines += _statement_list("DOWNGRADE_STATEMENTS", down) if source.down else []
    lines += [
        "",
        "",
        "def _execute(statements: list[str]) -> None:",
        '    """Run each statement as written (DDL() adds no bind parameters; it reads \'%%\' as \'%\')."""',
        "    for statement in statements:",
        '        op.execute(sa.DDL(statement.replace("%", "%%")))',
        "",
        "",
        "def upgrade() -> None:",
        "    _execute(UPGRADE_STATEMENTS)",
        "",
        "",
        "def downgrade() -> None:",
    ]
    if source.down:
        lines.append("    _execute(DOWNGRADE_STATEMENTS)")
    else:
        down_name = source.up.name[: -len(".sql")].removesuffix(".up") + ".down.sql"
        message = (f"revision {source.revision} ({source.up.name}) is irreversible: no {down_name} was imported; "
                   "restore a backup or write a new revision that undoes it")
        lines.append(f"    raise RuntimeError({message!r})")
    return Rendered(source, down_revision, "\n".join(lines) + "\n", len(up), tuple(left_out + down_left_out))


def _statement_list(name: str, statements: list[Statement]) -> list[str]:
    """Return the lines of a list literal holding each statement verbatim."""
    lines = [f"{name} = ["]
    for statement in statements:
        lines.append(f"    # line {statement.line}")
        lines.append(f"    {_literal(statement.sql)},")
    return lines + ["]"]


def _literal(sql: str) -> str:
    """Return a Python literal for ``sql``: a raw triple-quoted string when that reads back exactly, else repr."""
    candidate = f'r"""{sql}"""'
    if '"""' not in sql and not sql.endswith(("\\", '"')) and "\r" not in sql:
        try:
            if ast.literal_eval(candidate) == sql:
                return candidate
        except (SyntaxError, ValueError):
            pass
    return repr(sql)


def _docstring_safe(text: str) -> str:
    """Return text that cannot end the module docstring early."""
    return text.replace("\\", "/").replace('"""', "'''")


def imported_sha256(path: Path) -> str | None:
    """Return the ``orchestrator_sql_sha256`` recorded in an existing revision script, if any."""
    value = _assigned_constant(path, SHA_ATTRIBUTE)
    return value if isinstance(value, str) else None


def imported_version(path: Path) -> int | None:
    """Return the ``orchestrator_sql_version`` (the SQL file's number) of a revision script, if it has one."""
    value = _assigned_constant(path, VERSION_ATTRIBUTE)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def revision_for_version(all_files: dict[str, RevisionFile], number: int) -> RevisionFile | None:
    """Return the revision imported from SQL file ``number`` (what ``PRAGMA user_version = number`` means)."""
    found = [f for f in all_files.values() if imported_version(f.path) == number]
    if len(found) > 1:
        names = ", ".join(sorted(f.revision for f in found))
        raise ConfigError(f"several revisions were imported from SQL file {number} ({names}); keep one")
    return found[0] if found else None


def _assigned_constant(path: Path, name: str) -> object:
    """Return the literal a module-level ``name = ...`` assigns in a script, without importing it."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def write_revisions(folder: Path, rendered: list[Rendered]) -> list[Path]:
    """Write each rendered script into ``folder`` and return the paths."""
    paths = []
    for item in rendered:
        path = target_path(folder, item.source)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(item.text, encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths


def target_path(folder: Path, source: SqlFile) -> Path:
    """Return where the revision for ``source`` is written."""
    return folder / f"{source.revision}_{source.slug}.py"


@dataclass(frozen=True)
class ImportPlan:
    """What an import will do: the scripts to write and the revisions already imported unchanged."""

    folder: Path
    write: tuple[Rendered, ...]
    unchanged: tuple[SqlFile, ...]


def plan_import(files: list[SqlFile], folder: Path, all_files: dict[str, RevisionFile], *, root: Path,
                down_revision: str | None = None, mysql: bool = False) -> ImportPlan:
    """Decide, for each file, whether it is new (rendered, chained) or already imported unchanged."""
    write: list[Rendered] = []
    unchanged: list[SqlFile] = []
    previous: str | None = None
    for index, source in enumerate(files):
        existing = all_files.get(source.revision)
        if existing is not None:
            _check_unchanged(source, existing, root)
            unchanged.append(source)
        else:
            down = previous if index else _chain_start(folder, all_files, down_revision, root)
            path = target_path(folder, source)
            if path.exists():
                raise ConfigError(f"import-sql: {path_for_display(path, root)} already exists and is not revision "
                                  f"{source.revision}; move it away first")
            write.append(render_revision(source, down, mysql=mysql))
        previous = source.revision
    return ImportPlan(folder, tuple(write), tuple(unchanged))


def _check_unchanged(source: SqlFile, existing: RevisionFile, root: Path) -> None:
    """Refuse to import a file again when its revision exists but came from other (or edited) SQL."""
    recorded = imported_sha256(existing.path)
    where = existing.display_path(root)
    if recorded is None:
        raise ConfigError(f"import-sql: revision {source.revision} already exists ({where}) and was not imported "
                          f"from {source.up.name}; rename the SQL files or move that revision away")
    if recorded != source.sha256():
        names = source.up.name + (f" / {source.down.name}" if source.down else "")
        raise ConfigError(f"import-sql: {names} changed since it was imported as {source.revision} ({where}); "
                          "a revision that may have run must not change: put the change in a new numbered file, "
                          f"or delete {where} to import it again")


def _chain_start(folder: Path, all_files: dict[str, RevisionFile], down_revision: str | None, root: Path) -> str | None:
    """Return the revision the first new file builds on: ``down_revision``, else the folder's single head."""
    if down_revision is not None:
        if down_revision == "base":
            return None
        if down_revision not in all_files:
            raise RevisionNotFound(f"import-sql: --down-revision {down_revision}: no version folder holds it",
                                   revision=down_revision)
        return down_revision
    inside = {rev: f for rev, f in all_files.items() if f.folder == folder}
    referenced = {d for f in inside.values() for d in f.down_revisions}
    heads = sorted(set(inside) - referenced)
    if len(heads) > 1:
        raise ConfigError(f"import-sql: {path_for_display(folder, root)}/ has {len(heads)} heads ({', '.join(heads)}); "
                          "pass --down-revision REV (or base) to say where the imported chain starts")
    return heads[0] if heads else None


def as_revision_files(plan: ImportPlan) -> dict[str, RevisionFile]:
    """Return the scripts an import would write as they will read back from disk."""
    files = {}
    for item in plan.write:
        path = target_path(plan.folder, item.source)
        files[item.source.revision] = RevisionFile(
            revision=item.source.revision, down_revisions=(item.down_revision,) if item.down_revision else (),
            depends_on=(), branch_labels=(), message=item.source.message, path=path, folder=plan.folder,
            sha256=hashlib.sha256(item.text.encode()).hexdigest())
    return files
