"""Frozen dataclass views of validated configuration sections, made from the schema.

``Config.typed("storage")`` gives an object with one attribute per key of the
section (``cfg.retention``, ``cfg.rollups.interval``) instead of a dict in
which a misspelt key is a ``KeyError`` at run time, or worse a silent
default. The classes are generated from the same ``Schema`` that validates
the YAML and renders the example config, so the three cannot disagree.

Conventions of a view:

* a nested ``Schema`` is a nested view; a list is a tuple (of views, when
  its items are a schema); a mapping whose keys are data (an open section
  such as ``basic_auth``, or keys like ``1m``) is a read-only mapping;
* a duration (a field checked by one of ``DURATION_CHECKS``) is a ``float``
  number of **seconds**, parsed once here instead of wherever it is used;
* everything is frozen: a reload makes a new ``Config`` and new views.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from agent.config.checks import DURATION_CHECKS
from agent.config.schema import ConfigError, Field, Schema
from agent.durations import parse_duration

_CLASSES: dict[tuple[int, str], type] = {}


def section_schema(root: Schema, dotted: str) -> Schema:
    """The schema of section ``dotted`` (``""`` for the root); raises for an unknown path.

    An unknown path is a programming error that used to pass silently (a
    misspelt ``plugin_config("ingest.statds")`` read as an empty, disabled
    section), so it raises :class:`ConfigError` with a "did you mean".
    """
    node: Schema = root
    walked: list[str] = []
    for part in dotted.split(".") if dotted else []:
        spec = node.fields.get(part)
        if spec is None and node.open and isinstance(node.value, Schema):
            spec = node.value
        if not isinstance(spec, Schema):
            where = ".".join(walked) or "the top level"
            kind = "is a key, not a section" if isinstance(spec, Field) else "no such section"
            sections = [k for k, v in node.fields.items() if isinstance(v, Schema)]
            close = difflib.get_close_matches(part, sections, n=1, cutoff=0.6)
            hint = f" (did you mean '{'.'.join([*walked, close[0]])}'?)" if close else ""
            known = ", ".join(sorted(sections)) or "none"
            raise ConfigError(
                [f"{dotted}: {kind}{hint}; sections under {where}: {known}"], "<code>"
            )
        node = spec
        walked.append(part)
    return node


def view_class(schema: Schema, name: str) -> type:
    """The frozen dataclass for ``schema`` (made once per schema object)."""
    key = (id(schema), name)
    made = _CLASSES.get(key)
    if made is not None:
        return made
    fields = []
    for field_name, spec in schema.fields.items():
        attr = field_name + "_" if keyword.iskeyword(field_name) else field_name
        fields.append((attr, _annotation(spec), dataclasses.field(default=None)))
    cls = dataclasses.make_dataclass(
        _class_name(name), fields, frozen=True, slots=True, namespace={"__doc__": schema.help}
    )
    _CLASSES[key] = cls
    # Keep the schema alive as long as its class: the cache key is its id().
    cls.__schema__ = schema  # type: ignore[attr-defined]
    return cls


def typed_view(value: Any, schema: Schema, name: str = "config") -> Any:
    """``value`` (a validated section, defaults merged) as its frozen dataclass view."""
    if schema.open or not all(k.isidentifier() for k in schema.fields):
        # Keys are data (user names, resolutions such as "1m"): a read-only mapping.
        items = {}
        for k, v in (value or {}).items():
            spec = schema.fields.get(k) or schema.value
            items[k] = _convert(v, spec, f"{name}.{k}") if spec is not None else _frozen(v)
        return MappingProxyType(items)
    cls = view_class(schema, name)
    kwargs = {}
    for field_name, spec in schema.fields.items():
        attr = field_name + "_" if keyword.iskeyword(field_name) else field_name
        kwargs[attr] = _convert((value or {}).get(field_name), spec, f"{name}.{field_name}")
    return cls(**kwargs)


def _convert(value: Any, spec: Field | Schema, name: str) -> Any:
    if isinstance(spec, Schema):
        return typed_view(value, spec, name)
    if value is None:
        return None
    if spec.check in DURATION_CHECKS and isinstance(value, (str, int, float)):
        return parse_duration(value)
    if isinstance(value, list):
        item = spec.item
        return tuple(_convert(v, item, name) if item is not None else _frozen(v) for v in value)
    return _frozen(value)


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _annotation(spec: Field | Schema) -> Any:
    if isinstance(spec, Schema):
        return Any
    if spec.check in DURATION_CHECKS:
        return float
    if spec.type is list:
        return tuple
    if spec.type is dict:
        return Mapping
    return spec.type if isinstance(spec.type, type) else Any


def _class_name(dotted: str) -> str:
    parts = [p for p in dotted.replace("-", "_").split(".") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) + "Config" if parts else "Config"
