"""Read a YAML file safely, with line numbers for every key, and word its validation errors.

Shared by the registry and the review ledger: ``yaml.safe_load`` semantics
(no Python tags), duplicate keys refused, and pydantic's errors turned into
one line naming the file, the line and the field.
"""
from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import RegistryError


def parse_yaml(text: str, label: str, shape: str = "the registry must be a mapping with 'version' and 'environments'",
               *, allow_empty: bool = False) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML safely and index each key path to its line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_duplicate_keys(node, (), label)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark is not None and mark is not None and mark.index >= len(text.rstrip()):
            mark = exc.context_mark  # an unclosed quote or bracket: where it opened, not the end of the file
        line = mark.line + 1 if mark else None
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise RegistryError(f"invalid YAML: {problem}", file=label, line=line) from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"invalid YAML: {exc}", file=label) from None
    if data is None and allow_empty:
        return None, {}
    if not isinstance(data, dict):
        raise RegistryError(shape, file=label, line=1)
    lines: dict[tuple[Any, ...], int] = {}
    _index_lines(node, (), lines)
    return data, lines


def _refuse_duplicate_keys(node: yaml.Node | None, path: tuple[Any, ...], label: str) -> None:
    """Refuse a mapping that defines the same key twice (YAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in seen:
                field_name = ".".join(str(p) for p in path + (key.value,))
                raise RegistryError(f"defined twice (first at line {seen[key.value]}); keep one",
                                    file=label, line=line, field=field_name)
            seen[key.value] = line
            _refuse_duplicate_keys(value, path + (key.value,), label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path + (i,), label)


def _index_lines(node: yaml.Node | None, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Record the line of every mapping key and sequence item below ``node``."""
    if node is None:
        return
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _index_lines(value, path + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), out)


_PLAIN_MESSAGES = {
    "tuple_type": "input should be a valid list",
    "list_type": "input should be a valid list",
    "dict_type": "input should be a mapping",
    "model_type": "input should be a mapping",
    "string_type": "input should be a string",
    "bool_type": "input should be true or false",
    "bool_parsing": "input should be true or false",
}


def validation_error(exc: ValidationError, lines: dict[tuple[Any, ...], int], label: str,
                     file_format: str = "registry format") -> RegistryError:
    """Turn the first pydantic error into a one-line error with file, line and field."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    line = None
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            line = lines[loc[:end]]
            break
    field_name = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        message = f"unknown key; check its spelling against the {file_format} in README.md"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "literal_error" and loc == ("version",):
        message = "unsupported registry version; expected 1"
    elif kind in _PLAIN_MESSAGES:
        message = _PLAIN_MESSAGES[kind]
    elif kind == "too_short" and loc and loc[-1] == "version_locations":
        message = "at least one version folder is required"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind == "value_error":
        message = str(err.get("ctx", {}).get("error") or err["msg"].removeprefix("Value error, "))
    else:
        message = err["msg"][0].lower() + err["msg"][1:]
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return RegistryError(message, file=label, line=line, field=field_name)
