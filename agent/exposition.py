"""Exposition parsing: Prometheus text 0.0.4 (own, cache-aware) and OpenMetrics.

The one text-exposition parser: scraping (``plugins/scrape``) parses pages
with :func:`parse`, the push endpoint ``/api/v1/import/prometheus``
(``plugins/text_import``) one line at a time with :func:`parse_text` and
:func:`parse_series`; plugins reach it as ``agent.plugin_api.exposition``.

Why our own text parser: prometheus-client's text parser takes ~40 ms for a
2,600-line node-exporter page here, is documented as laxer than Prometheus
(``foo 1 2 3`` passes), and renames a counter sample ``foo`` to ``foo_total``,
which Prometheus does not, so series would be stored under other names than a
Prometheus scraping the same target. This parser follows Prometheus' text
grammar and splits each line into the *series text* (``name{labels}``), the
value and the optional timestamp without looking inside the braces, which is
all a scrape needs for a series it has seen before (the scraper caches series
text -> series id, as Prometheus' scrape cache does). Labels are parsed only
for new series text, by :func:`parse_series`. Tests compare it with
prometheus-client on valid input.

OpenMetrics (``application/openmetrics-text``) goes to prometheus-client's
OpenMetrics parser, which is strict (``# EOF`` required, types checked);
exemplars are ignored, ``_created`` samples are kept as series (Prometheus'
default without created-timestamp ingestion).

Any syntax error fails the whole scrape, as in Prometheus: a target that
serves a broken page is down, rather than half-ingested. (The push endpoint
instead reports each bad line and stores the others.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.model import METRIC_NAME

# (series text, value, explicit timestamp in ms or None)
Row = tuple[str, float, int | None]
ExposedLabels = dict[str, str]

TEXT_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_PAIR_RE = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*')
_ESCAPE_RE = re.compile(r"\\(.)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_WS = " \t"


class ParseError(ValueError):
    """The exposition is malformed; the scrape fails."""


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    # Prometheus replaces only \\, \" and \n; any other escape stays as written.
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw)


def parse_float(token: str) -> float:
    """A sample value as Go's ``strconv.ParseFloat`` reads it (NaN, ±Inf, decimals)."""
    if not token.isascii() or "_" in token:
        raise ValueError(token)
    return float(token)


def parse_timestamp_ms(token: str) -> int:
    digits = token[1:] if token[:1] in "+-" else token
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(token)
    return int(token)


def parse_series(text: str) -> ExposedLabels:
    """``name{a="b",...}`` into a label dict with ``__name__``; raises :class:`ParseError`."""
    m = _METRIC_NAME_RE.match(text)
    if m is None:
        raise ParseError(f"invalid metric name in {text[:80]!r}")
    labels: ExposedLabels = {METRIC_NAME: m.group()}
    pos = m.end()
    end = len(text)
    while pos < end and text[pos] in _WS:
        pos += 1
    if pos == end:
        return labels
    if text[pos] != "{":
        raise ParseError(f"unexpected {text[pos]!r} after the metric name in {text[:80]!r}")
    pos += 1
    while True:
        while pos < end and text[pos] in _WS:
            pos += 1
        if pos < end and text[pos] == "}":
            pos += 1
            break
        pair = _LABEL_PAIR_RE.match(text, pos)
        if pair is None:
            raise ParseError(f"invalid label at offset {pos} in {text[:80]!r}")
        name = pair.group(1)
        if name in labels:
            raise ParseError(f"label {name!r} appears twice in {text[:80]!r}")
        labels[name] = _unescape(pair.group(2))
        pos = pair.end()
        if pos < end and text[pos] == ",":
            pos += 1
            continue
        if pos < end and text[pos] == "}":
            pos += 1
            break
        raise ParseError(f"expected ',' or '}}' at offset {pos} in {text[:80]!r}")
    if text[pos:].strip(_WS):
        raise ParseError(f"unexpected text after the labels in {text[:80]!r}")
    return labels


def _check_comment(line: str, lineno: int, at: Callable[[int], str]) -> None:
    if line[1:2] not in (" ", "\t"):
        return  # "#HELP" without a blank is an ordinary comment to Prometheus too
    parts = line[1:].split(None, 2)
    if not parts or parts[0] not in ("HELP", "TYPE"):
        return  # an ordinary comment
    if len(parts) < 2 or not _METRIC_NAME_RE.fullmatch(parts[1].split(None, 1)[0]):
        raise ParseError(f"{at(lineno)}# {parts[0]} needs a valid metric name")
    if parts[0] == "TYPE":
        rest = line[1:].split()
        if len(rest) != 3 or rest[2] not in TEXT_TYPES:
            raise ParseError(f"{at(lineno)}invalid # TYPE line {line[:80]!r}")


def _line_prefix(lineno: int) -> str:
    return f"line {lineno}: "


def _no_prefix(lineno: int) -> str:
    return ""


def parse_text(body: str, *, number_lines: bool = True) -> list[Row]:
    """Split a Prometheus text page into rows; labels are left unparsed (see module doc).

    Errors name the line (``line 7: ...``) unless ``number_lines`` is false,
    for a caller that parses one line at a time and names it itself.
    """
    at = _line_prefix if number_lines else _no_prefix
    rows: list[Row] = []
    append = rows.append
    for lineno, raw_line in enumerate(body.split("\n"), 1):
        line = raw_line.strip(" \t\r")
        if not line:
            continue
        if line[0] == "#":
            _check_comment(line, lineno, at)
            continue
        close = line.rfind("}")
        if close != -1:
            series = line[: close + 1]
            fields = line[close + 1 :].split()
        else:
            cut = len(line)
            for ws in _WS:
                i = line.find(ws)
                if i != -1 and i < cut:
                    cut = i
            series = line[:cut]
            fields = line[cut:].split()
        if not 1 <= len(fields) <= 2:
            raise ParseError(f"{at(lineno)}expected a value and an optional timestamp")
        try:
            value = parse_float(fields[0])
            ts = parse_timestamp_ms(fields[1]) if len(fields) == 2 else None
        except ValueError as exc:
            raise ParseError(f"{at(lineno)}invalid number {exc}") from None
        append((series, value, ts))
    return rows


@dataclass
class Parsed:
    """A parsed page: rows plus how to get the labels of a row's series text."""

    rows: list[Row]
    labels_of: Callable[[str], ExposedLabels]


def parse_openmetrics(body: str) -> Parsed:
    """OpenMetrics via prometheus-client (strict); series text is built from the labels."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    rows: list[Row] = []
    by_key: dict[str, ExposedLabels] = {}
    try:
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.value is None:  # native histogram samples: not stored yet
                    continue
                key = s.name + "".join(f"\xff{k}\xfe{v}" for k, v in sorted(s.labels.items()))
                if key not in by_key:
                    by_key[key] = {METRIC_NAME: s.name, **s.labels}
                ts = None
                if s.timestamp is not None:
                    sec = getattr(s.timestamp, "sec", None)
                    if sec is not None:
                        ts = sec * 1000 + s.timestamp.nsec // 1_000_000
                    else:
                        ts = round(float(s.timestamp) * 1000)
                rows.append((key, float(s.value), ts))
    except Exception as exc:  # noqa: BLE001 - the parser raises assorted types on bad input
        raise ParseError(f"invalid OpenMetrics: {exc}") from None
    return Parsed(rows, by_key.__getitem__)


def parse(body: bytes, content_type: str) -> Parsed:
    """Pick the parser from the response's Content-Type (text format when unknown)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"the page is not valid UTF-8 ({exc})") from None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/openmetrics-text":
        return parse_openmetrics(text)
    return Parsed(parse_text(text), parse_series)
