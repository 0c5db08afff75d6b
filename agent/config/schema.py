"""The configuration schema DSL: ``Field`` and ``Schema``, and validation against them.

Every error names the key path (``ingest.statsd.port``), what was found and
what was expected, with a "did you mean" for a misspelt key, because a
daemon that refuses to start must say exactly why.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    """One or more configuration errors; ``str()`` lists them all."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


# --- schema -----------------------------------------------------------------

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    """A leaf key: its type, default and help (which the example config mirrors)."""

    type: type | tuple[type, ...]
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    check: Check | None = None
    nullable: bool = False
    item: Schema | Field | None = None  # for list fields: schema of each element


@dataclass(frozen=True)
class Schema:
    """A mapping section with known keys (unknown keys are errors)."""

    fields: Mapping[str, Field | Schema]
    help: str = ""
    open: bool = False  # accept any key (values must still be of ``value_type``)
    value: Field | Schema | None = None  # schema of each value when ``open``


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _found(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _is_type(value: Any, t: type | tuple[type, ...]) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    for x in types:
        if x is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if x is int and isinstance(value, bool):
            continue
        if isinstance(value, x):
            return True
    return False


def defaults(schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in schema.fields.items():
        out[key] = defaults(f) if isinstance(f, Schema) else copy.deepcopy(f.default)
    return out


def validate(data: Any, schema: Schema, path: str, errors: list[str]) -> dict[str, Any]:
    """Validate ``data`` against ``schema``; return it merged with defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or '<top level>'}: expected a mapping, found {_found(data)}")
        return defaults(schema)
    out = defaults(schema)
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        spec: Field | Schema | None = schema.fields.get(key)
        if spec is None and schema.open:
            spec = schema.value
        if spec is None:
            if schema.open:
                out[key] = value
                continue
            close = difflib.get_close_matches(str(key), list(schema.fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(schema.fields)) or "none"
            errors.append(f"{key_path}: unknown key{hint}; known keys here: {known}")
            continue
        out[key] = _validate_value(value, spec, key_path, errors)
    return out


def _validate_value(value: Any, spec: Field | Schema, path: str, errors: list[str]) -> Any:
    if isinstance(spec, Schema):
        return validate(value, spec, path, errors)
    if value is None:
        if spec.nullable:
            return None
        errors.append(f"{path}: expected {type_name(spec.type)}, found null")
        return spec.default
    if not _is_type(value, spec.type):
        errors.append(f"{path}: expected {type_name(spec.type)}, found {_found(value)}")
        return spec.default
    if spec.type is float and isinstance(value, int):
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        choices = ", ".join(repr(c) for c in spec.choices)
        errors.append(f"{path}: expected one of {choices}, found {_found(value)}")
        return spec.default
    if isinstance(value, list) and spec.item is not None:
        value = [_validate_value(v, spec.item, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            errors.append(f"{path}: {problem}, found {_found(value)}")
            return spec.default
    return value
