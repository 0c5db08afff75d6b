"""InfluxDB line protocol, parsed into samples the Prometheus way.

``measurement[,tag=value...] field=value[,field=value...] [timestamp]``, one
point per line (InfluxDB's line protocol reference). Escapes: ``\\,`` and
``\\ `` in the measurement; ``\\,``, ``\\=`` and ``\\ `` in tag keys, tag values
and field keys; ``\\"`` and ``\\\\`` inside string field values. Lines that are
empty or start with ``#`` are skipped.

Every numeric field becomes its own series, as VictoriaMetrics does:
``<measurement><separator><field>`` (separator ``_`` by default), the tags as
labels. Integers (``12i``), unsigned integers (``12u``), floats and booleans
(``t``/``true``/... as 1, ``f``/``false``/... as 0) are stored as floats;
string fields have no Prometheus equivalent and are skipped (and counted).
Names are made Prometheus-valid the way VictoriaMetrics' ``-usePromCompatibleNaming``
does: every character outside ``[a-zA-Z0-9_:]`` (``[a-zA-Z0-9_]`` for labels)
becomes ``_``, and a leading digit gets a ``_`` in front.

Why hand-written rather than a library: the parser must report the line
number and reason of each bad line and keep the good ones, and a fast path
for the common case (no escapes, no quotes) keeps it within reach of the
remote-write decoder; a key section seen before is not parsed again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# Milliseconds per unit of each precision (v1 and v2 names); ns and us divide.
PRECISIONS: dict[str, tuple[int, int]] = {
    "ns": (1, 1_000_000),
    "n": (1, 1_000_000),
    "us": (1, 1000),
    "u": (1, 1000),
    "µ": (1, 1000),
    "ms": (1, 1),
    "s": (1000, 1),
    "m": (60_000, 1),
    "h": (3_600_000, 1),
}
_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


class LineError(ValueError):
    """A line that cannot be read; the message says why."""


def metric_name(text: str) -> str:
    name = _BAD_METRIC_CHARS.sub("_", text)
    return "_" + name if name[:1].isdigit() else name


def label_name(text: str) -> str:
    name = _BAD_LABEL_CHARS.sub("_", text)
    return "_" + name if name[:1].isdigit() else name


def parse_value(text: str) -> float | None:
    """A field value as a float; None for a string field. Raises LineError."""
    if not text:
        raise LineError("field value is empty")
    first = text[0]
    if first == '"':
        if len(text) < 2 or text[-1] != '"':
            raise LineError(f"unterminated string field value {text[:40]!r}")
        return None
    last = text[-1]
    if last in "iu":
        digits = text[:-1]
        if digits.lstrip("-").isdigit() and not (last == "u" and digits.startswith("-")):
            if len(digits) > 20:  # beyond int64/uint64: InfluxDB refuses it too
                raise LineError(f"integer field value {text[:40]!r} out of range")
            return float(int(digits))
        kind = "integer" if last == "i" else "unsigned integer"
        raise LineError(f"invalid {kind} field value {text[:40]!r}")
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    if _NUMBER.match(text):
        value = float(text)
        if math.isinf(value):
            raise LineError(f"float field value {text[:40]!r} out of range")
        return value
    raise LineError(f"invalid field value {text[:40]!r} (not a number, boolean or string)")


def _split(text: str, sep: str, quotes: bool = False) -> list[str]:
    """Split at unescaped ``sep`` (outside double quotes when ``quotes``); keep escapes."""
    out: list[str] = []
    start = 0
    i = 0
    n = len(text)
    quoted = False
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if quotes and c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise LineError("unterminated string field value")
    out.append(text[start:])
    return out


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ",= \\":
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _pair(text: str, what: str) -> tuple[str, str]:
    parts = _split(text, "=", quotes=what == "field")
    if len(parts) < 2 or not parts[0]:
        raise LineError(f"{what} {text[:40]!r} is not key=value")
    key = _unescape(parts[0])
    value = "=".join(parts[1:])
    return key, value


def parse_key(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``measurement,tag=v,...`` → (measurement, sorted tags as label pairs)."""
    if "\\" in text:
        parts = _split(text, ",")
        measurement = _unescape(parts[0])
        raw_tags = parts[1:]
    else:
        measurement, *raw_tags = text.split(",")
    if not measurement:
        raise LineError("measurement name is empty")
    tags: dict[str, str] = {}
    for raw in raw_tags:
        k, v = _pair(raw, "tag")
        v = _unescape(v)
        name = label_name(k)
        if name.startswith("__"):
            raise LineError(f"tag key {k!r} is reserved (names starting with __)")
        if v:
            tags[name] = v
    return measurement, tuple(sorted(tags.items()))


@dataclass
class Batch:
    """Samples of one request, as (cache key, ms, value); keys map to their labels."""

    keys: list[tuple[str, str]] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    lines: int = 0
    strings_skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


class Parser:
    """Parses request bodies; remembers key sections it has seen (bounded)."""

    def __init__(self, separator: str = "_", cache_size: int = 100_000) -> None:
        self.separator = separator
        self.cache_size = cache_size
        self.keys: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}

    def key(self, text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        parsed = self.keys.get(text)
        if parsed is None:
            parsed = parse_key(text)
            if len(self.keys) >= self.cache_size:
                self.keys.clear()
            self.keys[text] = parsed
        return parsed

    def labels(
        self, key: tuple[str, str], extra: tuple[tuple[str, str], ...] = ()
    ) -> tuple[tuple[str, str], ...]:
        """The label set of a cache key (``(key section, field)``), extra labels below tags."""
        measurement, tags = self.keys.get(key[0]) or parse_key(key[0])
        name = metric_name(f"{measurement}{self.separator}{key[1]}")
        pairs = dict(extra)
        pairs.update(tags)
        pairs["__name__"] = name
        return tuple(sorted(pairs.items()))

    def parse(self, body: str, default_ms: int, precision: str = "ns") -> Batch:
        """Every line of ``body``; bad lines are listed in ``errors``, good ones kept."""
        mul, div = PRECISIONS[precision]
        out = Batch()
        keys, tss, vals = out.keys, out.timestamps, out.values
        for lineno, raw in enumerate(body.split("\n"), 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            out.lines += 1
            try:
                if "\\" in line or '"' in line:
                    parts = [p for p in _split(line, " ", quotes=True) if p]
                else:
                    parts = line.split()
                if len(parts) == 2:
                    key_text, fields_text = parts
                    ms = default_ms
                elif len(parts) == 3:
                    key_text, fields_text, ts_text = parts
                    try:
                        ts = int(ts_text)
                    except ValueError:
                        raise LineError(f"invalid timestamp {ts_text[:40]!r}") from None
                    if not -(2**63) <= ts < 2**63:
                        raise LineError(f"timestamp {ts_text[:40]!r} out of range")
                    ms = ts * mul // div
                else:
                    raise LineError(
                        "expected 'measurement[,tags] fields [timestamp]'"
                        + (", found no fields" if len(parts) < 2 else ", found extra text")
                    )
                if key_text not in self.keys:
                    self.key(key_text)  # validates the key section (and caches it)
                slow = '"' in fields_text or "\\" in fields_text
                if slow:
                    raw_fields = _split(fields_text, ",", quotes=True)
                else:
                    raw_fields = fields_text.split(",")
                found: list[tuple[str, float]] = []
                strings = 0
                for rf in raw_fields:
                    if slow:
                        k, v = _pair(rf, "field")
                    else:
                        k, eq, v = rf.partition("=")
                        if not eq or not k:
                            raise LineError(f"field {rf[:40]!r} is not key=value")
                    number = parse_value(v)
                    if number is None:
                        strings += 1
                    else:
                        found.append((k, number))
            except LineError as exc:
                out.errors.append((lineno, str(exc)))
                continue
            out.strings_skipped += strings
            for k, number in found:
                keys.append((key_text, k))
                tss.append(ms)
                vals.append(number)
        return out
