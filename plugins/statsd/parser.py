"""The StatsD / DogStatsD line format.

A line is ``name:value|type[|@rate][|#tag:v,tag2:v2]`` with the DogStatsD
extensions ``name:1:2:3|type`` (several values of one metric) and the extra
fields ``|c:container``, ``|e:external-data``, ``|card:...`` and ``|T<unix>``,
which are accepted and ignored (we aggregate per flush interval, so a client
timestamp has nowhere to go).

Parsing is split in two because it is the hot path: everything after the
value (type, rate, tags) together with the name forms a *key* that repeats
from line to line, so the aggregator parses a key once (:func:`parse_key`)
and caches the result; per line it then only converts the value
(:func:`parse_value`). :func:`parse_line` composes the two for tests and
tools, so what the tests check is exactly what the listener does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from agent.plugin_api import Labels

COUNTER = "counter"
GAUGE = "gauge"
TIMER = "timer"
SET = "set"

# StatsD type code -> (kind, whether values are milliseconds).
TYPES: dict[bytes, tuple[str, bool]] = {
    b"c": (COUNTER, False),
    b"g": (GAUGE, False),
    b"ms": (TIMER, True),
    b"h": (TIMER, False),
    b"d": (TIMER, False),
    b"s": (SET, False),
}

# Malformed-line reasons (label values of tsagent_statsd_malformed_lines_total).
MISSING_COLON = "missing_colon"
MISSING_TYPE = "missing_type"
EMPTY_NAME = "empty_name"
INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
NEGATIVE_COUNTER = "negative_counter"
INVALID_SAMPLE_RATE = "invalid_sample_rate"
INVALID_FIELD = "invalid_field"
INVALID_UTF8 = "invalid_utf8"
LINE_TOO_LONG = "line_too_long"

REASONS = (
    MISSING_COLON,
    MISSING_TYPE,
    EMPTY_NAME,
    INVALID_TYPE,
    INVALID_VALUE,
    NEGATIVE_COUNTER,
    INVALID_SAMPLE_RATE,
    INVALID_FIELD,
    INVALID_UTF8,
    LINE_TOO_LONG,
)

# DogStatsD fields that carry nothing we can use; skipped silently.
_IGNORED_FIELD_PREFIXES = (b"c:", b"e:", b"card:", b"T")


class Malformed(ValueError):
    """A line that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def escape_name(name: str) -> str:
    """A valid Prometheus metric/label name, the way statsd_exporter escapes.

    Every character other than ``[a-zA-Z0-9_]`` becomes ``_`` (so dots,
    dashes and spaces do) and a leading digit gets a ``_`` prefix.
    """
    out = _INVALID_NAME_CHARS.sub("_", name)
    if out[:1].isdigit():
        out = "_" + out
    return out


@dataclass(frozen=True, slots=True)
class LineKey:
    """What a line says apart from its value: the part that repeats."""

    name: str
    kind: str
    milliseconds: bool
    rate: float
    tags: Labels  # escaped tag names, in the order sent; duplicates: the last wins later
    bad_tags: int  # tags without a value or with a reserved name, dropped


def parse_tags(text: str) -> tuple[Labels, int]:
    """``k:v,k2:v2`` into escaped (name, value) pairs, counting unusable tags.

    A tag without ``:`` (DogStatsD allows bare tags) has no Prometheus
    equivalent, and names starting with ``__`` are reserved; both are
    dropped rather than failing the line, as statsd_exporter does.
    """
    out: list[tuple[str, str]] = []
    bad = 0
    for tag in text.split(","):
        key, sep, value = tag.partition(":")
        if not sep or not key:
            bad += 1
            continue
        key = escape_name(key)
        if key.startswith("__"):
            bad += 1
            continue
        out.append((key, value))
    return tuple(out), bad


def parse_key(name: bytes, tail: bytes) -> LineKey:
    """Parse a line's name and its part after the value (``|c|@0.5|#a:b``).

    :raises Malformed: with the reason the line is unusable.
    """
    if not name:
        raise Malformed(EMPTY_NAME)
    try:
        name_text = name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(INVALID_UTF8) from exc
    fields = tail.rstrip(b"\r").split(b"|")
    # fields[0] is the (empty) text between the value and the first '|'.
    if len(fields) < 2 or not fields[1]:
        raise Malformed(MISSING_TYPE)
    kind = TYPES.get(fields[1])
    if kind is None:
        raise Malformed(INVALID_TYPE, repr(fields[1][:20]))
    rate = 1.0
    tags: Labels = ()
    bad_tags = 0
    for field in fields[2:]:
        first = field[:1]
        if first == b"@":
            try:
                rate = float(field[1:])
            except ValueError as exc:
                raise Malformed(INVALID_SAMPLE_RATE) from exc
            if not 0.0 < rate <= 1.0:  # also rejects NaN
                raise Malformed(INVALID_SAMPLE_RATE)
        elif first == b"#":
            try:
                tag_text = field[1:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Malformed(INVALID_UTF8) from exc
            more, bad = parse_tags(tag_text)
            tags += more
            bad_tags += bad
        elif not field.startswith(_IGNORED_FIELD_PREFIXES):
            raise Malformed(INVALID_FIELD, repr(field[:20]))
    return LineKey(name_text, kind[0], kind[1], rate, tags, bad_tags)


def parse_number(raw: bytes) -> float:
    """A finite float; StatsD has no use for NaN or infinities."""
    value = float(raw)
    if not math.isfinite(value):
        raise Malformed(INVALID_VALUE)
    return value


def parse_value(kind: str, raw: bytes) -> float | bytes:
    """The value of one sample as the aggregator will use it.

    Counters must be non-negative (a Prometheus counter only goes up); a
    gauge value keeps its sign *prefix* in ``raw`` (the caller decides
    between set and delta); a set member is any non-empty byte string.
    """
    if kind == SET:
        if not raw:
            raise Malformed(INVALID_VALUE)
        return raw
    try:
        value = parse_number(raw)
    except Malformed:
        raise
    except ValueError as exc:
        raise Malformed(INVALID_VALUE) from exc
    if kind == COUNTER and value < 0:
        raise Malformed(NEGATIVE_COUNTER)
    return value


@dataclass(frozen=True, slots=True)
class ParsedLine:
    key: LineKey
    raw_values: tuple[bytes, ...]  # as sent (gauge deltas keep their sign)
    values: tuple[float | bytes, ...]


def split_line(line: bytes) -> tuple[int, int]:
    """Positions of the name/value ``:`` and of the ``|`` after the value."""
    colon = line.find(b":")
    if colon < 0:
        raise Malformed(MISSING_COLON)
    bar = line.find(b"|", colon + 1)
    if bar < 0:
        raise Malformed(MISSING_TYPE)
    return colon, bar


def parse_line(line: bytes) -> ParsedLine:
    """One complete line (without its newline).

    :raises Malformed: with the reason it cannot be used.
    """
    colon, bar = split_line(line)
    key = parse_key(line[:colon], line[bar:])
    raws = tuple(line[colon + 1 : bar].split(b":"))
    return ParsedLine(key, raws, tuple(parse_value(key.kind, r) for r in raws))
