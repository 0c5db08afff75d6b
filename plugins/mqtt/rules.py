"""MQTT mapping rules: which topics, how their payloads become samples.

A topic pattern is an MQTT filter whose wildcards may carry a label name:
``home/+room/+sensor`` subscribes to ``home/+/+`` and turns
``home/kitchen/temp`` into ``room="kitchen", sensor="temp"``; a final
``#rest`` captures the remaining levels joined by ``/``. As MQTT says,
wildcards at the first level do not match topics that start with ``$``.

Payloads (``payload:``):

* ``number``: the whole payload is one number (``21.5``, ``-3``, ``NaN``,
  ``true``/``false`` as 1/0); the metric is ``metric:``, a template of the
  captures (``home_{sensor}``);
* ``json``: ``fields:`` maps a dotted path (``sensors.0.temp``; digits index
  arrays) to a metric-name template; numbers and booleans become values,
  anything else is skipped and counted; ``timestamp:`` names the path of the
  sample time;
* ``line``: InfluxDB line protocol, one or more lines (names as the ``influx``
  plugin writes them: ``measurement_field``).

The time of a sample is the payload's (a JSON path, or a line's timestamp)
when given, else the message's arrival. Numeric JSON times are read in
``timestamp_unit`` (``s``, ``ms``, ``us``, ``ns``, or ``auto``: by magnitude);
strings as RFC 3339. Labels: the captures, then ``labels:`` (constants); for
line protocol, the line's tags below both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.plugin_api import Labels, Parser, valid_label_name, valid_metric_name

PAYLOADS = ("number", "json", "line")
UNITS = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}
_TEMPLATE = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
_LP_PRECISION = {"s": "s", "ms": "ms", "us": "us", "ns": "ns"}


class PayloadError(ValueError):
    """A message that cannot be turned into samples; ``reason`` names why, for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Pattern:
    """A topic pattern: its levels, capture names, and the filter to subscribe to."""

    levels: tuple[str, ...]
    captures: tuple[str | None, ...]  # per level: label name, or None
    filter: str

    @classmethod
    def parse(cls, text: str) -> Pattern:
        if not text:
            raise ValueError("topic pattern is empty")
        levels = text.split("/")
        kinds: list[str] = []
        names: list[str | None] = []
        for i, level in enumerate(levels):
            if level.startswith("#"):
                if i != len(levels) - 1:
                    raise ValueError(f"'#' must be the last level of {text!r}")
                kinds.append("#")
            elif level.startswith("+"):
                kinds.append("+")
            else:
                if "+" in level or "#" in level:
                    raise ValueError(f"wildcard inside level {level!r} of {text!r}")
                kinds.append(level)
                names.append(None)
                continue
            name = level[1:] or None
            if name is not None and not valid_label_name(name):
                raise ValueError(f"capture {name!r} in {text!r} is not a valid label name")
            names.append(name)
        return cls(tuple(kinds), tuple(names), "/".join(kinds))

    def match(self, topic: str) -> dict[str, str] | None:
        """The captures when ``topic`` matches, else None."""
        parts = topic.split("/")
        if topic.startswith("$") and self.levels[0] in ("+", "#"):
            return None
        out: dict[str, str] = {}
        for i, level in enumerate(self.levels):
            if level == "#":
                name = self.captures[i]
                if name is not None:
                    out[name] = "/".join(parts[i:])
                return out
            if i >= len(parts):
                return None
            if level == "+":
                name = self.captures[i]
                if name is not None and parts[i]:
                    out[name] = parts[i]
            elif level != parts[i]:
                return None
        return out if len(parts) == len(self.levels) else None


def template_names(text: str) -> list[str]:
    return _TEMPLATE.findall(text)


def render(template: str, values: Mapping[str, str]) -> str:
    return _TEMPLATE.sub(lambda m: values.get(m.group(1), ""), template)


def json_path(doc: Any, path: str) -> Any:
    """``a.b.0.c`` into nested objects and arrays; KeyError when absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(path)
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def timestamp_ms(value: Any, unit: str) -> int:
    """A payload's time in ms: a number in ``unit`` (or by magnitude), or RFC 3339."""
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadError("bad_timestamp", f"timestamp {value!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise PayloadError("bad_timestamp", f"timestamp {value!r} has no UTC offset")
        return int(dt.timestamp() * 1000)
    number = _number(value)
    if number is None or isinstance(value, bool) or not math.isfinite(number):
        raise PayloadError("bad_timestamp", f"timestamp {value!r} is not a number or string")
    if unit == "auto":
        magnitude = abs(number)
        unit = (
            "s"
            if magnitude < 1e11
            else "ms"
            if magnitude < 1e14
            else "us"
            if magnitude < 1e17
            else "ns"
        )
    ms = int(number * UNITS[unit])
    if not -(2**62) <= ms < 2**62:
        raise PayloadError("bad_timestamp", f"timestamp {value!r} out of range")
    return ms


@dataclass
class Rule:
    pattern: Pattern
    payload: str = "number"
    metric: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    timestamp: str = ""
    timestamp_unit: str = "auto"
    labels: dict[str, str] = field(default_factory=dict)
    qos: int = 1
    precision: str = "ns"

    @classmethod
    def from_config(cls, raw: Any, where: str) -> Rule:
        """A rule from its YAML mapping. Raises ValueError naming the key."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping with topic and payload")
        known = {
            "topic",
            "payload",
            "metric",
            "fields",
            "timestamp",
            "timestamp_unit",
            "labels",
            "qos",
            "precision",
        }
        for key in raw:
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown key; expected {', '.join(sorted(known))}")
        try:
            pattern = Pattern.parse(str(raw.get("topic", "")))
        except ValueError as exc:
            raise ValueError(f"{where}.topic: {exc}") from None
        payload = raw.get("payload", "number")
        if payload not in PAYLOADS:
            raise ValueError(f"{where}.payload: expected one of {', '.join(PAYLOADS)}")
        qos = raw.get("qos", 1)
        if qos not in (0, 1):
            raise ValueError(f"{where}.qos: expected 0 or 1")
        unit = raw.get("timestamp_unit", "auto")
        if unit != "auto" and unit not in UNITS:
            raise ValueError(f"{where}.timestamp_unit: expected auto, s, ms, us or ns")
        precision = raw.get("precision", "ns")
        if precision not in _LP_PRECISION:
            raise ValueError(f"{where}.precision: expected s, ms, us or ns")
        labels = raw.get("labels", {}) or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and valid_label_name(k) and isinstance(v, str)
            for k, v in labels.items()
        ):
            raise ValueError(f"{where}.labels: expected label: value strings")
        fields = raw.get("fields", {}) or {}
        if not isinstance(fields, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise ValueError(f"{where}.fields: expected path: metric-name strings")
        metric = str(raw.get("metric", ""))
        captured = {c for c in pattern.captures if c}
        templates = [metric, *fields.values()]
        for t in templates:
            for name in template_names(t):
                if name not in captured:
                    raise ValueError(
                        f"{where}: template {t!r} uses {{{name}}}, not captured by the topic"
                    )
        if payload == "number" and not metric:
            raise ValueError(f"{where}.metric: required for payload: number")
        if payload == "json" and not fields:
            raise ValueError(f"{where}.fields: required for payload: json (path: metric name)")
        return cls(
            pattern,
            payload,
            metric,
            dict(fields),
            str(raw.get("timestamp", "")),
            unit,
            dict(labels),
            qos,
            precision,
        )

    def samples(
        self, captures: dict[str, str], payload: bytes, arrival_ms: int, parser: Parser
    ) -> tuple[list[tuple[Labels, int, float]], int]:
        """(samples, values skipped) of one message. Raises PayloadError."""
        base = {**captures, **self.labels}
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise PayloadError("bad_payload", "payload is not UTF-8") from None
        if self.payload == "number":
            value = text.strip()
            number = {"true": 1.0, "false": 0.0}.get(value.lower())
            if number is None:
                try:
                    number = float(value)
                except ValueError:
                    raise PayloadError(
                        "bad_payload", f"payload {value[:40]!r} is not a number"
                    ) from None
            return [(_labels(render(self.metric, captures), base), arrival_ms, number)], 0
        if self.payload == "json":
            return self._json(text, captures, base, arrival_ms)
        batch = parser.parse(text, arrival_ms, self.precision)
        if batch.errors:
            line, why = batch.errors[0]
            raise PayloadError("bad_payload", f"line {line}: {why}")
        out = []
        for key, ms, v in zip(batch.keys, batch.timestamps, batch.values, strict=True):
            labels = dict(parser.labels(key))
            labels.update(base)
            out.append((_labels(labels.pop("__name__"), labels), ms, v))
        return out, batch.strings_skipped

    def _json(
        self, text: str, captures: dict[str, str], base: dict[str, str], arrival_ms: int
    ) -> tuple[list[tuple[Labels, int, float]], int]:
        import json

        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise PayloadError("bad_payload", f"payload is not JSON: {exc}") from None
        ms = arrival_ms
        if self.timestamp:
            try:
                ms = timestamp_ms(json_path(doc, self.timestamp), self.timestamp_unit)
            except KeyError:
                raise PayloadError(
                    "bad_timestamp", f"no {self.timestamp!r} in the payload"
                ) from None
        out = []
        skipped = 0
        for path, template in self.fields.items():
            try:
                number = _number(json_path(doc, path))
            except KeyError:
                number = None
            if number is None:
                skipped += 1
                continue
            out.append((_labels(render(template, captures), base), ms, number))
        return out, skipped


def _labels(name: str, labels: Mapping[str, str]) -> Labels:
    if not valid_metric_name(name):
        raise PayloadError("bad_name", f"metric name {name!r} is not valid")
    pairs = {k: v for k, v in labels.items() if v}
    pairs["__name__"] = name
    return tuple(sorted(pairs.items()))


def parse_rules(raw: Sequence[Any], where: str = "ingest.mqtt.rules") -> list[Rule]:
    return [Rule.from_config(r, f"{where}[{i}]") for i, r in enumerate(raw)]
