"""YAML configuration: loaded, expanded, validated against a schema, typed.

Every error names the file, the key path (``ingest.statsd.port``), what was
found and what was expected, because a daemon that refuses to start must say
exactly why. Plugins add sections through the ``config_schema`` hook and are
validated by the same code as the core.

The package: :mod:`~agent.config.schema` (the ``Field``/``Schema`` DSL and
validation), :mod:`~agent.config.checks` (reusable checks),
:mod:`~agent.config.core_schema` (the core's sections),
:mod:`~agent.config.typed` (frozen dataclass views of validated sections),
and here the loader and :class:`Config`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config.checks import (
    DURATION_CHECKS as DURATION_CHECKS,
)
from agent.config.checks import (
    check_bcrypt as check_bcrypt,
)
from agent.config.checks import (
    check_duration as check_duration,
)
from agent.config.checks import (
    check_listen as check_listen,
)
from agent.config.checks import (
    check_non_negative as check_non_negative,
)
from agent.config.checks import (
    check_port as check_port,
)
from agent.config.checks import (
    check_positive as check_positive,
)
from agent.config.checks import (
    check_regex as check_regex,
)
from agent.config.checks import (
    check_timestamp as check_timestamp,
)
from agent.config.checks import (
    check_timezone as check_timezone,
)
from agent.config.checks import (
    parse_listen as parse_listen,
)
from agent.config.checks import (
    parse_timestamp_ms as parse_timestamp_ms,
)
from agent.config.core_schema import (
    ALERTING_NOTIFY_FIELDS as ALERTING_NOTIFY_FIELDS,
)
from agent.config.core_schema import (
    ALERTING_RULE_FIELDS as ALERTING_RULE_FIELDS,
)
from agent.config.core_schema import (
    CORE_SCHEMA as CORE_SCHEMA,
)
from agent.config.core_schema import (
    DEFAULT_LISTEN as DEFAULT_LISTEN,
)
from agent.config.schema import (
    Check as Check,
)
from agent.config.schema import (
    ConfigError as ConfigError,
)
from agent.config.schema import (
    Field as Field,
)
from agent.config.schema import (
    Schema as Schema,
)
from agent.config.schema import (
    defaults as defaults,
)
from agent.config.schema import (
    validate as validate,
)
from agent.config.typed import section_schema, typed_view
from agent.durations import parse_duration as parse_duration

# --- environment expansion --------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, path: str, errors: list[str], env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string values (secrets stay out of files)."""
    if isinstance(data, dict):
        return {
            k: expand_env(v, f"{path}.{k}" if path else str(k), errors, env)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [expand_env(v, f"{path}[{i}]", errors, env) for i, v in enumerate(data)]
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(sub, data)
    return data


# --- the typed result ---------------------------------------------------------


@dataclass
class Config:
    """The validated configuration; ``raw`` keeps every section, plugins' included.

    Read a section as a typed, frozen view with :meth:`typed` (attributes,
    durations in seconds), or as the validated dict with :meth:`section`.
    Both raise :class:`ConfigError` for a path that is not a section of the
    schema (core and loaded plugins), instead of answering ``{}``.
    """

    raw: dict[str, Any]
    source: str = "<defaults>"
    extra_schemas: dict[str, Schema] = field(default_factory=dict)
    _schema: Schema | None = field(default=None, init=False, repr=False, compare=False)
    _views: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def schema(self) -> Schema:
        """The whole schema this config was validated against (core plus plugins)."""
        if self._schema is None:
            self._schema = build_schema(self.extra_schemas)
        return self._schema

    def section(self, dotted: str) -> dict[str, Any]:
        """The validated section at ``dotted`` (defaults merged); raises for an unknown path."""
        section_schema(self.schema, dotted)
        node: Any = self.raw
        for part in dotted.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    def typed(self, dotted: str = "") -> Any:
        """Section ``dotted`` (``""``: all) as a frozen dataclass view (agent.config.typed).

        Made once per config object; a reload builds a new ``Config``.
        """
        view = self._views.get(dotted)
        if view is None:
            schema = section_schema(self.schema, dotted)
            value = self.section(dotted) if dotted else self.raw
            view = self._views[dotted] = typed_view(value, schema, dotted)
        return view

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.raw["listen"])

    @property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.raw["data_dir"])

    def duration(self, dotted: str) -> float:
        """The duration at key path ``dotted``, in seconds (``storage.retention``)."""
        section, _, key = dotted.rpartition(".")
        seconds = getattr(self.typed(section), key)
        if not isinstance(seconds, float):
            raise ConfigError([f"{dotted}: not a duration"], "<code>")
        return seconds


def resolve_data_dir(configured: str) -> Path:
    if configured:
        return Path(configured).expanduser()
    state = os.environ.get("STATE_DIRECTORY")
    if state:  # systemd StateDirectory=; may hold several paths separated by ':'
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tsagent"


def build_schema(extra: Mapping[str, Schema]) -> Schema:
    """Graft plugin sections into the core schema at their dotted paths."""
    root: dict[str, Any] = dict(CORE_SCHEMA.fields)

    def graft(fields: dict[str, Any], parts: list[str], schema: Schema) -> dict[str, Any]:
        head, rest = parts[0], parts[1:]
        if not rest:
            existing = fields.get(head)
            if isinstance(existing, Schema) and isinstance(schema, Schema) and existing.fields:
                # Several plugins may contribute to one section ("export" itself and
                # "export.remote_write"): merge instead of letting the last one win.
                merged = {**existing.fields, **schema.fields}
                fields[head] = Schema(merged, schema.help or existing.help)
            else:
                fields[head] = schema
            return fields
        existing = fields.get(head)
        sub = dict(existing.fields) if isinstance(existing, Schema) else {}
        help_text = existing.help if isinstance(existing, Schema) else ""
        fields[head] = Schema(graft(sub, rest, schema), help_text)
        return fields

    for dotted, schema in extra.items():
        root = graft(root, dotted.split("."), schema)
    return Schema(root, CORE_SCHEMA.help)


def load_config(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    extra_schemas: Mapping[str, Schema] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load, expand and validate. Raises :class:`ConfigError` listing every problem."""
    source = str(path) if path is not None else "<defaults>"
    if text is None and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read file: {exc.strerror}"], source) from exc
    data: Any = {}
    if text:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = ""
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f"line {mark.line + 1}, column {mark.column + 1}: "
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{where}invalid YAML: {problem}"], source) from exc
    errors: list[str] = []
    data = expand_env(data if data is not None else {}, "", errors, env or os.environ)
    if overrides:
        data = _apply_overrides(data if isinstance(data, dict) else {}, overrides)
    schemas = dict(extra_schemas or {})
    raw = validate(data, build_schema(schemas), "", errors)
    if errors:
        raise ConfigError(errors, source)
    return Config(raw=raw, source=source, extra_schemas=schemas)


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``storage.retention``) from command-line flags over the file."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


def peek_plugins_section(path: str | Path | None) -> dict[str, list[str]]:
    """Read ``plugins.enabled/disabled`` before full validation.

    Plugins must be loaded before the file can be validated (they add
    sections to the schema), so this look is deliberately lenient; the full
    validation that follows reports anything wrong here too.
    """
    out: dict[str, list[str]] = {"enabled": [], "disabled": []}
    if path is None:
        return out
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return out
    section = data.get("plugins") if isinstance(data, dict) else None
    if isinstance(section, dict):
        for key in out:
            value = section.get(key)
            if isinstance(value, list):
                out[key] = [str(v) for v in value]
    return out


def peek_event_loop(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> str:
    """``server.event_loop`` before full validation (the loop must exist before it).

    Lenient like :func:`peek_plugins_section`: anything unreadable gives
    ``auto``, and the full validation that follows reports the problem.
    """
    value: Any = (overrides or {}).get("server.event_loop")
    if value is None and path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return "auto"
        server = data.get("server") if isinstance(data, dict) else None
        value = server.get("event_loop") if isinstance(server, dict) else None
        value = expand_env(value, "server.event_loop", [], os.environ)
    return value if value in ("auto", "uvloop", "asyncio") else "auto"


def render_example(schema: Schema, indent: int = 0) -> str:
    """The example config: every key, its default and its help, from the schema itself.

    Generating it keeps ``config/tsagent.example.yaml`` true; a test compares
    the committed file with this output.
    """
    lines: list[str] = []
    pad = "  " * indent
    for key, spec in schema.fields.items():
        if spec.help:
            lines.extend(f"{pad}# {h}" for h in spec.help.splitlines())
        if isinstance(spec, Schema):
            if not spec.fields:
                lines.append(f"{pad}{key}: {{}}")
                continue
            lines.append(f"{pad}{key}:")
            lines.append(render_example(spec, indent + 1).rstrip("\n"))
            continue
        if spec.choices:
            lines.append(f"{pad}# one of: {', '.join(str(c) for c in spec.choices)}")
        value = yaml.safe_dump(spec.default, default_flow_style=True).strip()
        if value.endswith("\n..."):
            value = value[: -len("\n...")]
        value = value.removesuffix("...").strip()
        lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines) + "\n"
