"""Bulk import of CSV files (and the shared report types of every push endpoint).

Why this lives in the core and not in a plugin: the same import runs from the
Python API (:func:`import_csv`), from ``tsagent import-csv`` with the daemon
stopped, and behind ``POST /api/v1/import/csv`` in the daemon; all three must
parse, validate and report identically.

The pipeline, built for about a million rows per second of parsing:

1. the ``csv`` module reads records in chunks of :data:`CHUNK_ROWS`;
2. per chunk, columns are pulled out with list comprehensions and converted
   with numpy (one ``np.array(..., dtype=float64)`` per value column; only a
   chunk that fails falls back to per-cell parsing to find the bad cells);
   textual timestamps are parsed once per distinct string (a dict cache), which
   makes RFC 3339 and strftime columns cheap when many series share a time;
3. label cells become a tuple key, mapped to a dense index with a dict, so
   series are resolved once per distinct label set, not per row;
4. conflicting duplicates inside the file (same series and timestamp,
   different value) are found with one sort and reported by row;
5. everything valid goes to :meth:`agent.storage.Store.backfill` in one call:
   one transaction, durable, audited, any timestamp accepted.

Bad rows never stop the parse: each is reported with its row number (the
line number in the file, counting the header; they differ only after a
quoted field that spans lines) and the reason.  ``on_error="skip"`` imports
every valid row; ``"abort"`` imports nothing if anything was wrong, and does
not even create series.

Time zones: RFC 3339 and unix timestamps carry their own.  A strftime pattern
(or a VictoriaMetrics ``custom:`` Go layout) without ``%z`` is read as local
time in ``timestamp.timezone`` (default UTC) with :mod:`zoneinfo`, so DST is
applied per date.  A local time that does not exist (the hour skipped when
clocks move forward) is always rejected; one that exists twice (clocks move
back) is rejected unless ``timestamp.ambiguous`` is ``earlier`` (the first
occurrence, ``fold=0``) or ``later``.  Nothing is shifted silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import METRIC_NAME, Labels, restore_cell, valid_label_name, valid_metric_name
from agent.model import metric_name as metric_name_of
from agent.query.errors import BadDataError
from agent.query.timezone import local_candidates
from agent.query.timezone import zone as zone_named
from agent.rejections import rejection_positions
from agent.storage.backfill import ON_ERROR_CHOICES, OnError

if TYPE_CHECKING:
    from agent.storage import BackfillResult, Store

    BackfillFn = Callable[..., Awaitable[BackfillResult]]

CHUNK_ROWS = 50_000
# Imports of at least this many samples check bounds and label limits in a thread.
OFF_LOOP_SAMPLES = 10_000
MAX_PROBLEMS = 1000  # problems kept in a report; the total is always counted
UNIX_FORMATS = ("unix_s", "unix_ms", "unix_ns")
TIME_FORMATS = (*UNIX_FORMATS, "rfc3339")
AMBIGUOUS_CHOICES = ("reject", "earlier", "later")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Beyond this a millisecond timestamp is nonsense (and int64 arithmetic would wrap).
_MAX_ABS_MS = 2**62

Column = str | int  # a header name, or a 1-based position


class MappingError(ValueError):
    """The mapping itself is wrong (not a row); the message names the key."""


# --- reports ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One rejected row, item or line, and why.

    ``kind`` is ``row`` (CSV, ``at`` is the line number), ``item`` (JSON list,
    ``at`` is the 0-based index) or ``line`` (text exposition, line number).
    """

    at: int | None
    field: str | None
    message: str
    kind: str = "row"

    def __str__(self) -> str:
        if self.kind == "item":
            if self.at is None:  # a single-sample body
                return f"{self.field or 'body'}: {self.message}"
            where = f"items[{self.at}]" + (f".{self.field}" if self.field else "")
            return f"{where}: {self.message}"
        where = self.kind if self.at is None else f"{self.kind} {self.at}"
        if self.field:
            where += f", column {self.field!r}" if self.kind == "row" else f", {self.field}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        key = {"row": "row", "item": "index", "line": "line"}.get(self.kind, "at")
        return {key: self.at, "field": self.field, "error": str(self)}


@dataclass(slots=True)
class ImportReport:
    """What an import did; also the JSON body of the HTTP endpoints (``to_dict``).

    ``received`` counts rows, items or lines read; ``rejected`` those refused
    (with ``problems``, at most :data:`MAX_PROBLEMS` of them kept, and
    ``problems_total``); ``samples`` the samples taken from valid input;
    ``stored`` the new ones written, ``duplicates`` the exact re-sends.
    """

    received: int = 0
    rejected: int = 0
    samples: int = 0
    stored: int = 0
    duplicates: int = 0
    series: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0
    store_rejected: int = 0  # samples the store refused (conflicts with stored data)
    aborted: bool = False
    audit_id: int | None = None
    seconds: float = 0.0

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return self.problems_total == 0 and not self.aborted

    def to_dict(self, max_problems: int = MAX_PROBLEMS) -> dict[str, Any]:
        if self.aborted:
            status = "aborted"
        elif self.problems_total:
            status = "partial" if self.samples else "error"
        else:
            status = "success"
        return {
            "status": status,
            "received": self.received,
            "rejected": self.rejected,
            "samples": self.samples,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "series": self.series,
            "aborted": self.aborted,
            "audit_id": self.audit_id,
            "errors_total": self.problems_total,
            "errors": [p.to_dict() for p in self.problems[:max_problems]],
        }


# --- timestamps ----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> int:
    """Milliseconds since the epoch; ValueError naming what RFC 3339 wants.

    Stricter than ``datetime.fromisoformat`` on purpose: an offset is required
    (a naive time would silently mean the server's zone) and ISO basic format
    is refused.  Fractions beyond milliseconds are truncated.
    """
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError(
            f"expected RFC 3339 like 2024-01-31T12:00:00Z or 2024-01-31T13:00:00+01:00,"
            f" found {text!r}"
        )
    date, clock, frac, off = m.groups()
    off = "+00:00" if off in ("Z", "z") else off
    dt = datetime.fromisoformat(f"{date}T{clock}{off}")
    ms = (dt - _EPOCH) // _MS
    if frac:
        ms += int(frac[:3].ljust(3, "0"))
    return int(ms)


def localize(naive: datetime, zone: tzinfo, ambiguous: str = "reject") -> datetime:
    """Attach ``zone`` to a wall-clock time, refusing times DST makes doubtful.

    The candidates come from :func:`agent.query.timezone.local_candidates` (the one
    DST resolver). Non-existent (skipped by a spring-forward) → ValueError always. Ambiguous
    (repeated by a fall-back) → ValueError unless ``ambiguous`` picks the
    ``earlier`` (fold=0) or ``later`` (fold=1) occurrence.
    """
    found = local_candidates(naive, zone)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            f"local time {naive.isoformat(' ')} does not exist in {zone}"
            " (skipped when clocks moved forward)"
        )
    if ambiguous == "earlier":
        return found[0]
    if ambiguous == "later":
        return found[1]
    raise ValueError(
        f"local time {naive.isoformat(' ')} is ambiguous in {zone} (it occurs twice when"
        " clocks move back); set timestamp.ambiguous to earlier or later to choose"
    )


_GO_TOKENS = [
    ("January", "%B"),
    ("Monday", "%A"),
    ("Z07:00", "%z"),
    ("-07:00", "%z"),
    ("Z0700", "%z"),
    ("-0700", "%z"),
    ("2006", "%Y"),
    ("Jan", "%b"),
    ("Mon", "%a"),
    ("MST", "%Z"),
    ("01", "%m"),
    ("02", "%d"),
    ("15", "%H"),
    ("03", "%I"),
    ("04", "%M"),
    ("05", "%S"),
    ("06", "%y"),
    ("PM", "%p"),
]
_GO_FRACTION = re.compile(r"[.,](0+|9+)(?![0-9])")


def go_layout_to_strptime(layout: str) -> str:
    """Translate a Go reference-time layout (VictoriaMetrics ``custom:``) to strptime.

    Covers the usual tokens (2006 01 02 15 04 05, Jan/January, Mon/Monday, PM,
    MST, -0700/-07:00/Z07:00 and fractional seconds .000/.999); unpadded
    variants (1, 2, 3, _2) are not supported and raise.
    """
    out: list[str] = []
    i = 0
    while i < len(layout):
        m = _GO_FRACTION.match(layout, i)
        if m and i > 0:
            out.append(layout[i] + "%f")
            i = m.end()
            continue
        for token, repl in _GO_TOKENS:
            if layout.startswith(token, i):
                out.append(repl)
                i += len(token)
                break
        else:
            ch = layout[i]
            if ch in "123456789" or layout.startswith("_2", i):
                raise MappingError(
                    f"custom time layout {layout!r}: unsupported Go token at {layout[i:]!r}"
                    " (use zero-padded 01 02 15 03 04 05)"
                )
            out.append("%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class TimeFormat:
    """How one timestamp column is read; ``parse`` returns epoch ms or raises ValueError."""

    kind: str  # unix_s | unix_ms | unix_ns | rfc3339 | strptime
    pattern: str = ""
    zone: tzinfo = UTC
    ambiguous: str = "reject"

    @classmethod
    def of(cls, spec: str, timezone: str | None = None, ambiguous: str = "reject") -> TimeFormat:
        if ambiguous not in AMBIGUOUS_CHOICES:
            raise MappingError(f"timestamp.ambiguous: expected one of {AMBIGUOUS_CHOICES}")
        zone: tzinfo = UTC
        if timezone:
            try:
                zone = zone_named(timezone)
            except BadDataError as exc:
                raise MappingError(f"timestamp.timezone: unknown time zone {timezone!r}") from exc
        if spec in TIME_FORMATS:
            return cls(spec, zone=zone, ambiguous=ambiguous)
        if spec.startswith("custom:"):
            return cls("strptime", go_layout_to_strptime(spec[7:]), zone, ambiguous)
        if "%" in spec:
            try:
                datetime.now().strftime(spec)
                _compile_strptime(spec)
            except (ValueError, re.error) as exc:
                raise MappingError(f"timestamp.format: invalid strftime pattern: {exc}") from exc
            return cls("strptime", spec, zone, ambiguous)
        raise MappingError(
            f"timestamp.format: unknown format {spec!r}; expected one of {', '.join(TIME_FORMATS)},"
            " a strftime pattern such as '%Y-%m-%d %H:%M:%S', or custom:<Go layout>"
        )

    def parse_one(self, text: str) -> int:
        if self.kind == "rfc3339":
            return parse_rfc3339(text)
        if self.kind == "strptime":
            try:
                dt = datetime.strptime(text.strip(), self.pattern)
            except (ValueError, re.error):
                raise ValueError(f"does not match the pattern {self.pattern!r}: {text!r}") from None
            if dt.tzinfo is None:
                dt = localize(dt, self.zone, self.ambiguous)
            return int((dt - _EPOCH) // _MS)
        return int(self.parse_unix([text])[0][0])

    def parse_unix(self, col: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Vectorised unix timestamps: (ms array, {position: problem})."""
        bad: dict[int, str] = {}
        if self.kind == "unix_ns":
            try:
                raw = np.array(col, dtype=np.int64)
            except (ValueError, OverflowError):
                vals = []
                for i, s in enumerate(col):
                    try:
                        v = int(s)
                    except ValueError:
                        bad[i] = f"expected an integer unix time in nanoseconds, found {s!r}"
                        v = 0
                    if not -(2**63) <= v < 2**63:
                        bad[i] = f"timestamp out of range: {s[:40]!r}"
                        v = 0
                    vals.append(v)
                raw = np.array(vals, dtype=np.int64)
            return raw // 1_000_000, bad
        scale = 1000.0 if self.kind == "unix_s" else 1.0
        try:
            f = np.array(col, dtype=np.float64)
        except ValueError:
            unit = "seconds" if self.kind == "unix_s" else "milliseconds"
            f = np.zeros(len(col), dtype=np.float64)
            for i, s in enumerate(col):
                try:
                    f[i] = float(s)
                except ValueError:
                    bad[i] = f"expected a unix time in {unit}, found {s!r}"
        ms = f * scale
        wrong = ~np.isfinite(ms) | (np.abs(ms) > _MAX_ABS_MS)
        if wrong.any():
            for i in np.flatnonzero(wrong).tolist():
                bad.setdefault(i, f"timestamp out of range: {col[i]!r}")
            ms[wrong] = 0
        return np.rint(ms).astype(np.int64), bad

    def parse_column(
        self, col: Sequence[str], cache: dict[str, int | str]
    ) -> tuple[np.ndarray, dict[int, str]]:
        """(ms array, {position: problem}); textual formats go through ``cache``."""
        if self.kind in UNIX_FORMATS:
            return self.parse_unix(col)
        get = cache.get
        found: list[int | str | None] = [get(s) for s in col]
        bad: dict[int, str] = {}
        if None in found:
            for i, s in enumerate(col):
                if found[i] is None:
                    v: int | str
                    try:
                        ms = self.parse_one(s)
                        v = ms if abs(ms) <= _MAX_ABS_MS else f"timestamp out of range: {s!r}"
                    except ValueError as exc:
                        v = str(exc)
                    cache[s] = v
                    found[i] = v
            if len(cache) > 1_000_000:
                cache.clear()
        out = np.zeros(len(col), dtype=np.int64)
        if any(isinstance(v, str) for v in found):
            for i, x in enumerate(found):
                if isinstance(x, str):
                    bad[i] = x
                elif x is not None:
                    out[i] = x
        else:
            out = np.array(found, dtype=np.int64)
        return out, bad


# --- the mapping ---------------------------------------------------------------------


@dataclass
class CsvMapping:
    """Which CSV columns are the time, the labels and the values.

    Columns are header names or 1-based positions.  Each value column becomes
    one metric per row; its name is ``metric`` with ``{column}`` replaced by
    the column's header name (or position), unless ``value_columns`` maps the
    column to an explicit name.  ``timestamp_column`` None means "now" for
    every row (as VictoriaMetrics does without a ``time`` column).
    """

    value_columns: list[tuple[Column, str | None]]
    timestamp_column: Column | None = None
    time_format: TimeFormat = field(default_factory=lambda: TimeFormat("unix_s"))
    label_columns: list[tuple[str, Column]] = field(default_factory=list)
    metric: str = "{column}"
    header: bool = True
    delimiter: str = ","
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CsvMapping:
        """Build from the YAML/JSON mapping; every mistake raises MappingError naming its key.

        ::

            header: true            # first record names the columns
            delimiter: ","
            timestamp: {column: time, format: rfc3339}   # or unix_s/ms/ns, '%d.%m.%Y %H:%M'
            #           timezone: Europe/Berlin, ambiguous: reject|earlier|later
            labels: [host, {dc: datacenter}]   # label = column, or label: column
            #       a __name__ column holds each row's metric name (one value column then;
            #       the layout of `tsagent export-csv`)
            values: [cpu, mem]                 # or {cpu: node_cpu_ratio}
            metric: "node_{column}"
            extra_labels: {job: import}
        """
        if not isinstance(data, Mapping):
            raise MappingError("mapping: expected a mapping with at least a 'values' key")
        known = {"header", "delimiter", "timestamp", "labels", "values", "metric", "extra_labels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MappingError(f"mapping: unknown key(s) {unknown}; known: {sorted(known)}")
        header = data.get("header", True)
        if not isinstance(header, bool):
            raise MappingError("header: expected true or false")
        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise MappingError("delimiter: expected a single character")
        ts_col: Column | None = None
        fmt = TimeFormat("unix_s")
        ts = data.get("timestamp")
        if ts is not None:
            if isinstance(ts, str | int) and not isinstance(ts, bool):
                ts = {"column": ts}
            if not isinstance(ts, Mapping) or "column" not in ts:
                raise MappingError("timestamp: expected {column: ..., format: ...}")
            extra = sorted(set(ts) - {"column", "format", "timezone", "ambiguous"})
            if extra:
                raise MappingError(f"timestamp: unknown key(s) {extra}")
            ts_col = _column(ts["column"], "timestamp.column")
            spec = ts.get("format", "unix_s")
            if not isinstance(spec, str):
                raise MappingError("timestamp.format: expected a string")
            fmt = TimeFormat.of(spec, ts.get("timezone"), ts.get("ambiguous", "reject"))
        labels: list[tuple[str, Column]] = []
        raw_labels = data.get("labels") or []
        if isinstance(raw_labels, Mapping):
            raw_labels = [{k: v} for k, v in raw_labels.items()]
        if not isinstance(raw_labels, list):
            raise MappingError("labels: expected a list of columns or a mapping label: column")
        for i, item in enumerate(raw_labels):
            if isinstance(item, Mapping) and len(item) == 1:
                ((name, col),) = item.items()
                labels.append((str(name), _column(col, f"labels[{i}]")))
            elif isinstance(item, str):
                labels.append((item, item))
            else:
                raise MappingError(f"labels[{i}]: expected a column name or {{label: column}}")
        for name, _ in labels:
            # __name__ is allowed: a column of metric names (see _Resolved.name_column).
            if not valid_label_name(name):
                raise MappingError(f"labels: {name!r} is not a valid label name")
        raw_values = data.get("values")
        values: list[tuple[Column, str | None]] = []
        if isinstance(raw_values, Mapping):
            for col, metric in raw_values.items():
                values.append((_column(col, "values"), None if metric is None else str(metric)))
        elif isinstance(raw_values, list):
            values = [(_column(c, f"values[{i}]"), None) for i, c in enumerate(raw_values)]
        if not values:
            raise MappingError("values: name at least one value column (a list or column: metric)")
        metric = data.get("metric", "{column}")
        if not isinstance(metric, str) or "{" in metric.replace("{column}", ""):
            raise MappingError("metric: expected a template string; only {column} is replaced")
        extra_labels = data.get("extra_labels") or {}
        if not isinstance(extra_labels, Mapping):
            raise MappingError("extra_labels: expected a mapping label: value")
        mapping = cls(
            value_columns=values,
            timestamp_column=ts_col,
            time_format=fmt,
            label_columns=labels,
            metric=metric,
            header=header,
            delimiter=delimiter,
            extra_labels={str(k): str(v) for k, v in extra_labels.items()},
        )
        mapping.check_extra_labels()
        return mapping

    @classmethod
    def from_vm_format(cls, spec: str, *, header: bool = False) -> CsvMapping:
        """VictoriaMetrics' ``format`` query arg: ``1:time:unix_s,2:label:host,3:metric:cpu``.

        Positions are 1-based, one ``time`` column at most (none: now), at
        least one ``metric``; ``time`` formats are unix_s, unix_ms, unix_ns,
        rfc3339 and ``custom:<Go layout>`` (which may itself contain ':').
        """
        if not spec:
            raise MappingError("format: empty column spec")
        ts_col: Column | None = None
        fmt = TimeFormat("unix_s")
        labels: list[tuple[str, Column]] = []
        values: list[tuple[Column, str | None]] = []
        seen: set[int] = set()
        for n, entry in enumerate(spec.split(","), 1):
            parts = entry.split(":", 2)
            if len(parts) != 3:
                raise MappingError(
                    f"format: entry #{n} {entry!r} must look like <column_pos>:<type>:<extension>"
                )
            pos_text, kind, ext = parts
            try:
                pos = int(pos_text)
            except ValueError:
                raise MappingError(f"format: entry #{n} {entry!r}: bad column position") from None
            if pos < 1:
                raise MappingError(f"format: entry #{n} {entry!r}: positions start at 1")
            if pos in seen:
                raise MappingError(f"format: entry #{n} {entry!r}: column {pos} used twice")
            seen.add(pos)
            if kind == "time":
                if ts_col is not None:
                    raise MappingError(f"format: entry #{n} {entry!r}: a second time column")
                ts_col = pos
                fmt = TimeFormat.of(ext)
            elif kind == "label":
                if not ext or not valid_label_name(ext):
                    raise MappingError(f"format: entry #{n} {entry!r}: invalid label name")
                labels.append((ext, pos))
            elif kind == "metric":
                if not ext:
                    raise MappingError(f"format: entry #{n} {entry!r}: empty metric name")
                values.append((pos, ext))
            else:
                raise MappingError(
                    f"format: entry #{n} {entry!r}: unknown type {kind!r};"
                    " allowed: time, label, metric"
                )
        if not values:
            raise MappingError(f"format: no 'metric' column in {spec!r}")
        return cls(values, ts_col, fmt, labels, "{column}", header, ",")

    def check_extra_labels(self) -> None:
        for k in self.extra_labels:
            if not valid_label_name(k) or k == METRIC_NAME:
                raise MappingError(f"extra_labels: {k!r} is not a valid label name")


def _column(value: Any, where: str) -> Column:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(f"{where}: expected a column name or a 1-based position")
    if isinstance(value, int) and value < 1:
        raise MappingError(f"{where}: column positions start at 1")
    return value


def load_mapping(path: str | Path) -> CsvMapping:
    """A mapping file (YAML, or JSON, which YAML reads too)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return CsvMapping.from_dict(data or {})
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from exc


def parse_extra_labels(items: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings (``extra_label`` query args, ``--extra-label``) into a dict."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not valid_label_name(k) or k == METRIC_NAME:
            raise MappingError(f"extra_label {item!r}: expected name=value with a valid label name")
        out[k] = v
    return out


# --- parsing ---------------------------------------------------------------------------


@dataclass(slots=True)
class ParsedCsv:
    """Valid samples of a CSV, keyed by a dense series index, plus the report so far."""

    label_sets: list[Labels]
    series_idx: np.ndarray  # index into label_sets, per sample
    timestamps: np.ndarray
    values: np.ndarray
    rows: np.ndarray  # line number per sample, for reporting store rejections
    columns: np.ndarray  # value column index per sample
    column_names: list[str]
    report: ImportReport


class _Resolved:
    """The mapping's columns as 0-based indices, once the header (if any) is known."""

    def __init__(self, mapping: CsvMapping, header: list[str] | None) -> None:
        def idx(col: Column, where: str) -> int:
            if isinstance(col, int):
                return col - 1
            if header is None:
                raise MappingError(
                    f"{where}: column {col!r} is a name, but the file has no header"
                    " (use 1-based positions or header: true)"
                )
            try:
                return header.index(col)
            except ValueError:
                raise MappingError(
                    f"{where}: column {col!r} is not in the header {header}"
                ) from None

        self.ts = (
            None
            if mapping.timestamp_column is None
            else idx(mapping.timestamp_column, "timestamp.column")
        )
        self.labels = [(name, idx(c, f"labels.{name}")) for name, c in mapping.label_columns]
        self.values = [idx(c, "values") for c, _ in mapping.value_columns]
        # A label column named __name__ holds each row's metric name (the long layout
        # that `tsagent export-csv` writes); then one value column, whose name is unused.
        self.name_column = any(name == METRIC_NAME for name, _ in self.labels)
        if self.name_column and len(self.values) != 1:
            raise MappingError(
                "labels: a __name__ column takes each row's metric name from the cell,"
                " so exactly one value column is allowed with it"
            )
        self.value_names: list[str] = []
        self.metrics: list[str] = []
        for (col, explicit), i in zip(mapping.value_columns, self.values, strict=True):
            colname = header[i] if header is not None and i < len(header) else str(i + 1)
            self.value_names.append(colname)
            metric = (
                explicit if explicit is not None else mapping.metric.replace("{column}", colname)
            )
            if not self.name_column and not valid_metric_name(metric):
                raise MappingError(
                    f"values: column {col!r} gives metric name {metric!r}, which is not valid"
                    f" (template {mapping.metric!r})"
                )
            self.metrics.append(metric)
        used = [i for i in [self.ts, *(i for _, i in self.labels), *self.values] if i is not None]
        if len(set(used)) != len(used):
            raise MappingError("mapping: a column is used twice")
        self.width = max(used) + 1


def _floats(col: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(values, present mask, {position: problem}); empty cells are absent, not errors."""
    try:
        return np.array(col, dtype=np.float64), np.ones(len(col), dtype=bool), {}
    except ValueError:
        pass
    out = np.zeros(len(col), dtype=np.float64)
    present = np.ones(len(col), dtype=bool)
    bad: dict[int, str] = {}
    for i, s in enumerate(col):
        if not s.strip():
            present[i] = False
            continue
        try:
            out[i] = float(s)
        except ValueError:
            bad[i] = f"not a number: {s!r}"
    return out, present, bad


ProgressFn = Callable[[int], None]  # called after each chunk with the rows read so far


def parse_csv(
    lines: Iterable[str],
    mapping: CsvMapping,
    *,
    now_ms: int | None = None,
    progress: ProgressFn | None = None,
) -> ParsedCsv:
    """Parse CSV text into sample arrays; never raises for a bad row (see the report).

    Raises :class:`MappingError` only when the mapping does not fit the file
    (a named column missing from the header).
    """
    started = time.perf_counter()
    report = ImportReport()
    reader = _tolerant(csv.reader(lines, delimiter=mapping.delimiter), report)
    row_no = 0
    header: list[str] | None = None
    if mapping.header:
        for rec in reader:
            row_no += 1
            if rec:
                header = [h.strip() for h in rec]
                break
        if header is None:
            header = []
    res = _Resolved(mapping, header)
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    nval = len(res.values)
    key_index: dict[Any, int] = {}
    ts_cache: dict[str, int | str] = {}
    parts_key: list[np.ndarray] = []
    parts_ts: list[np.ndarray] = []
    parts_vals: list[np.ndarray] = []
    parts_present: list[np.ndarray] = []
    parts_rows: list[np.ndarray] = []
    label_idx = [i for _, i in res.labels]
    while True:
        chunk = list(islice(reader, CHUNK_ROWS))
        if not chunk:
            break
        first_row = row_no + 1
        row_no += len(chunk)
        lens = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))
        nonblank = lens > 0
        short = nonblank & (lens < res.width)
        for i in np.flatnonzero(short).tolist():
            report.add(
                Problem(
                    first_row + i,
                    None,
                    f"has {int(lens[i])} columns, the mapping needs at least {res.width}",
                )
            )
        report.received += int(nonblank.sum())
        report.rejected += int(short.sum())
        good = np.flatnonzero(nonblank & ~short)
        if good.size == 0:
            continue
        rows = chunk if good.size == len(chunk) else [chunk[i] for i in good.tolist()]
        line_nos = good + first_row
        n = len(rows)
        bad_row = np.zeros(n, dtype=bool)
        if res.ts is None:
            ts = np.full(n, now_ms, dtype=np.int64)
        else:
            ti = res.ts
            ts, tbad = mapping.time_format.parse_column([r[ti] for r in rows], ts_cache)
            for i, msg in tbad.items():
                bad_row[i] = True
                report.add(Problem(int(line_nos[i]), _name(header, ti), msg))
        vals = np.empty((n, nval), dtype=np.float64)
        present = np.empty((n, nval), dtype=bool)
        for j, ci in enumerate(res.values):
            v, p, vbad = _floats([r[ci] for r in rows])
            vals[:, j] = v
            present[:, j] = p
            for i, msg in vbad.items():
                if not bad_row[i]:
                    report.add(Problem(int(line_nos[i]), res.value_names[j], msg))
                bad_row[i] = True
        if not label_idx:
            keys: list[int] = [key_index.setdefault((), 0)] * n
        elif len(label_idx) == 1:
            li = label_idx[0]
            sd = key_index.setdefault
            keys = [sd(r[li], len(key_index)) for r in rows]
        else:
            sd = key_index.setdefault
            keys = [
                sd(k, len(key_index))
                for k in zip(*([r[i] for r in rows] for i in label_idx), strict=True)
            ]
        ok = ~bad_row
        report.rejected += int(bad_row.sum())
        parts_key.append(np.array(keys, dtype=np.int64)[ok])
        parts_ts.append(ts[ok])
        parts_vals.append(vals[ok])
        parts_present.append(present[ok])
        parts_rows.append(line_nos[ok])
        if progress is not None:
            progress(report.received)

    if parts_key:
        key = np.concatenate(parts_key)
        ts_all = np.concatenate(parts_ts)
        vals_all = np.concatenate(parts_vals)
        present_all = np.concatenate(parts_present)
        rows_all = np.concatenate(parts_rows)
    else:
        key = ts_all = rows_all = np.zeros(0, dtype=np.int64)
        vals_all = np.zeros((0, nval), dtype=np.float64)
        present_all = np.zeros((0, nval), dtype=bool)
    # One sample per present cell; series = (label key, value column).
    rr, cc = np.nonzero(present_all)
    series_idx = key[rr] * nval + cc
    s_ts = ts_all[rr]
    s_vals = vals_all[rr, cc]
    s_rows = rows_all[rr]

    key_labels: list[tuple[tuple[str, str], ...]] = []
    names = [n for n, _ in res.labels]
    extra = tuple(mapping.extra_labels.items())
    for k in key_index:
        cells = () if not label_idx else ((k,) if len(label_idx) == 1 else k)
        cells = tuple(restore_cell(c) for c in cells)  # exports neutralise formulas
        key_labels.append(tuple(zip(names, cells, strict=True)) + extra)
    label_sets: list[Labels] = []
    for kl in key_labels:
        for metric in res.metrics:
            pairs = dict(kl)
            if not res.name_column:
                pairs[METRIC_NAME] = metric
            label_sets.append(tuple(sorted((k, v) for k, v in pairs.items() if v != "")))
    parsed = ParsedCsv(label_sets, series_idx, s_ts, s_vals, s_rows, cc, res.value_names, report)
    if res.name_column:
        _drop_bad_names(parsed, _name(header, dict(res.labels)[METRIC_NAME]))
    _drop_conflicts(parsed)
    report.problems.sort(key=_row_order)
    report.samples = int(parsed.series_idx.size)
    report.seconds = time.perf_counter() - started
    return parsed


def _compile_strptime(spec: str) -> None:
    """Raise ``re.error`` for a pattern strptime cannot compile (``%d%d``: a repeated group).

    strftime accepts such patterns, strptime fails at the first row with
    ``re.error``, which used to escape as a 500 (issue 13).
    """
    with contextlib.suppress(ValueError):  # compiled; "" just does not match
        datetime.strptime("", spec)


def _tolerant(reader: Iterator[list[str]], report: ImportReport) -> Iterator[list[str]]:
    """Rows of ``reader``; a record csv cannot read (a field over the size limit, a
    bad quote) becomes a problem naming its record and a blank row, and reading goes on."""
    record = 0
    while True:
        record += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.add(Problem(record, None, f"unreadable CSV record: {exc}"))
            report.received += 1
            report.rejected += 1
            row = []
        yield row


def _row_order(p: Problem) -> int:
    return -1 if p.at is None else p.at


def _name(header: list[str] | None, i: int) -> str:
    return header[i] if header is not None and i < len(header) else str(i + 1)


def _drop_bad_names(parsed: ParsedCsv, column: str) -> None:
    """Report and drop rows whose ``__name__`` cell is not a valid metric name."""
    bad = np.array(
        [not valid_metric_name(metric_name_of(lab)) for lab in parsed.label_sets], dtype=bool
    )
    if not bad.any():
        return
    hit = bad[parsed.series_idx] if parsed.series_idx.size else bad[:0]
    for i in np.flatnonzero(hit).tolist():
        name = metric_name_of(parsed.label_sets[int(parsed.series_idx[i])])
        parsed.report.add(
            Problem(int(parsed.rows[i]), column, f"{name!r} is not a valid metric name")
        )
    parsed.report.rejected += int(hit.sum())
    keep = ~hit
    parsed.series_idx = parsed.series_idx[keep]
    parsed.timestamps = parsed.timestamps[keep]
    parsed.values = parsed.values[keep]
    parsed.rows = parsed.rows[keep]
    parsed.columns = parsed.columns[keep]


def _drop_conflicts(parsed: ParsedCsv) -> None:
    """Report and drop samples that repeat a (series, timestamp) with a different value.

    The first occurrence in the file wins, as the store would decide; exact
    repeats stay (the store counts them as duplicates and stores one).
    """
    s, t = parsed.series_idx, parsed.timestamps
    n = s.size
    if n < 2:
        return
    # Stable sort: equal (series, timestamp) keep file order, so the first row wins.
    order = np.lexsort((t, s))
    ss, st = s[order], t[order]
    same = np.zeros(n, dtype=bool)
    same[1:] = (ss[1:] == ss[:-1]) & (st[1:] == st[:-1])
    if not same.any():
        return
    bits = parsed.values.view(np.uint64)[order]
    run_head = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    conflict = same & (bits != bits[run_head])
    if not conflict.any():
        return
    rows_sorted = parsed.rows[order]
    cols_sorted = parsed.columns[order]
    for i in np.flatnonzero(conflict).tolist():
        parsed.report.add(
            Problem(
                int(rows_sorted[i]),
                parsed.column_names[int(cols_sorted[i])],
                f"duplicate timestamp {int(st[i])} for this series with a different value"
                f" than row {int(rows_sorted[run_head[i]])}",
            )
        )
    parsed.report.rejected += int(np.unique(rows_sorted[conflict]).size)
    keep = np.ones(n, dtype=bool)
    keep[order[conflict]] = False
    parsed.series_idx = s[keep]
    parsed.timestamps = t[keep]
    parsed.values = parsed.values[keep]
    parsed.rows = parsed.rows[keep]
    parsed.columns = parsed.columns[keep]


# --- storing -------------------------------------------------------------------------


async def store_parsed(
    store: Store,
    parsed: ParsedCsv,
    *,
    on_error: OnError = "skip",
    source: str = "csv_import",
    client: str | None = None,
    backfill: BackfillFn | None = None,
) -> ImportReport:
    """Create the series and backfill the samples of a parsed CSV in one transaction.

    ``backfill`` replaces ``store.backfill`` (the daemon passes
    ``AgentContext.backfill`` so the samples are counted in ``/metrics``).
    """
    report = parsed.report
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}")
    if on_error == "abort" and report.problems_total:
        report.aborted = True
        return report
    started = time.perf_counter()
    if parsed.series_idx.size >= OFF_LOOP_SAMPLES:  # label checks cost ~4 us a series
        if await asyncio.to_thread(_drop_out_of_bounds, store, parsed, on_error):
            return report
    elif parsed.series_idx.size and _drop_out_of_bounds(store, parsed, on_error):
        return report
    if parsed.series_idx.size:
        used, inverse = np.unique(parsed.series_idx, return_inverse=True)
        labels = [parsed.label_sets[i] for i in used.tolist()]
        if on_error == "abort":
            # All or nothing, series included: conflicts with stored samples and the
            # cardinality limits are checked before any series is created.
            keys, clash = await store.backfill_conflicts(
                labels, inverse, parsed.timestamps, parsed.values
            )
            if clash:
                _report_rejections(parsed, keys, clash)
                report.aborted = True
                return report
            ids, refused = await store.resolve_series_all_or_nothing(labels)
        else:
            ids, refused = await resolve_chunked(store, labels)
        sids = np.asarray(ids, dtype=np.int64)[inverse]
        if refused:
            _report_refused(parsed, sids, inverse, refused)
            if on_error == "abort":
                report.aborted = True
                return report
            keep = sids > 0
            sids = sids[keep]
            parsed.timestamps = parsed.timestamps[keep]
            parsed.values = parsed.values[keep]
            parsed.rows = parsed.rows[keep]
            parsed.columns = parsed.columns[keep]
            parsed.series_idx = parsed.series_idx[keep]
        result = await (backfill or store.backfill)(
            sids,
            parsed.timestamps,
            parsed.values,
            source=source,
            client=client,
            on_error=on_error,
        )
        report.stored = result.stored
        report.duplicates = result.duplicates
        report.series = result.series
        report.audit_id = result.audit_id
        report.aborted = result.aborted
        if result.rejected:
            _report_rejections(parsed, sids, result.rejected)
    report.seconds += time.perf_counter() - started
    return report


async def resolve_chunked(
    store: Store, labels_list: Sequence[Labels], chunk: int = 5_000
) -> tuple[list[int], dict[int, str]]:
    """``Store.resolve_series`` a chunk at a time, so that a request creating hundreds
    of thousands of series lets the event loop serve others in between."""
    if len(labels_list) <= chunk:
        return await store.resolve_series(list(labels_list))
    ids: list[int] = []
    refused: dict[int, str] = {}
    for lo in range(0, len(labels_list), chunk):
        part, why = await store.resolve_series(list(labels_list[lo : lo + chunk]))
        ids.extend(part)
        refused.update((lo + pos, reason) for pos, reason in why.items())
    return ids, refused


def _drop_out_of_bounds(store: Store, parsed: ParsedCsv, on_error: OnError) -> bool:
    """Report and drop samples whose timestamp or new series the store's bounds refuse.

    Before any series is created: so no series is left without samples, and
    an ``abort`` import creates nothing. True when the import is aborted.
    """
    report = parsed.report
    refused = np.zeros(parsed.timestamps.size, dtype=bool)
    for pos, why in store.timestamp_problems(parsed.timestamps):
        refused[pos] = True
        col = parsed.column_names[int(parsed.columns[pos])]
        report.add(Problem(int(parsed.rows[pos]), col, f"{why} (out_of_bounds)"))
    used = np.unique(parsed.series_idx)
    labels = store.label_problems([parsed.label_sets[i] for i in used.tolist()])
    for k, why in labels.items():
        hit = np.flatnonzero(parsed.series_idx == used[k])
        refused[hit] = True
        i = int(hit[0])
        report.add(Problem(int(parsed.rows[i]), parsed.column_names[int(parsed.columns[i])], why))
    if not refused.any():
        return False
    report.rejected += int(np.unique(parsed.rows[refused]).size)
    report.store_rejected += int(refused.sum())
    report.samples -= int(refused.sum())
    report.problems.sort(key=_row_order)
    if on_error == "abort":
        report.aborted = True
        return True
    keep = ~refused
    parsed.timestamps = parsed.timestamps[keep]
    parsed.values = parsed.values[keep]
    parsed.rows = parsed.rows[keep]
    parsed.columns = parsed.columns[keep]
    parsed.series_idx = parsed.series_idx[keep]
    return False


def _report_refused(
    parsed: ParsedCsv, sids: np.ndarray, inverse: np.ndarray, refused: Mapping[int, str]
) -> None:
    """Rows whose series a cardinality limit refused (existing series keep flowing)."""
    report = parsed.report
    hit = np.flatnonzero(sids == 0)
    for i in hit.tolist():
        reason = refused.get(int(inverse[i]), "refused by a cardinality limit")
        report.add(
            Problem(
                int(parsed.rows[i]),
                parsed.column_names[int(parsed.columns[i])],
                f"new series refused: {reason}",
            )
        )
    report.rejected += int(np.unique(parsed.rows[hit]).size)
    report.store_rejected += int(hit.size)
    report.samples -= int(hit.size)
    report.problems.sort(key=_row_order)


def _report_rejections(parsed: ParsedCsv, sids: np.ndarray, rejected: Sequence[Any]) -> None:
    """Name the row of each sample the store refused (a conflict with stored data)."""
    bad_rows: set[int] = set()
    for r, i in zip(rejected, rejection_positions(rejected, sids, parsed.timestamps), strict=True):
        if i is not None:
            row = int(parsed.rows[i])
            bad_rows.add(row)
            parsed.report.add(
                Problem(
                    row,
                    parsed.column_names[int(parsed.columns[i])],
                    f"a different value is already stored at timestamp {r.timestamp} ({r.reason})",
                )
            )
    parsed.report.rejected += len(bad_rows)
    parsed.report.store_rejected += len(rejected)
    parsed.report.problems.sort(key=_row_order)


async def import_csv(
    store: Store,
    file_path: str | Path,
    mapping_config: CsvMapping | Mapping[str, Any] | str | Path,
    *,
    on_error: OnError = "skip",
    source: str = "csv_import",
    client: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    encoding: str = "utf-8",
) -> ImportReport:
    """Import a CSV file into ``store`` (a backfill: any timestamp, one transaction).

    ``mapping_config`` is a :class:`CsvMapping`, the mapping as a dict (see
    :meth:`CsvMapping.from_dict`), a path to a YAML mapping file, or a
    VictoriaMetrics column spec string such as ``"1:time:unix_s,2:label:host,3:metric:cpu"``.
    Parsing runs in a worker thread so a daemon's event loop keeps serving;
    ``progress(bytes_read, rows_read)`` is called from that thread per chunk.
    """
    import asyncio

    mapping = as_mapping(mapping_config)
    path = Path(file_path)

    def parse() -> ParsedCsv:
        with path.open("rb") as raw, io.TextIOWrapper(raw, encoding, newline="") as fh:
            tick = None
            if progress is not None:
                report_to = progress

                # The byte position of the buffer under the text layer: exact to a
                # few KiB, and free (no per-line wrapper).
                def tick(rows: int) -> None:
                    report_to(raw.tell(), rows)

            return parse_csv(fh, mapping, progress=tick)

    parsed = await asyncio.get_running_loop().run_in_executor(None, parse)
    return await store_parsed(store, parsed, on_error=on_error, source=source, client=client)


def as_mapping(mapping_config: CsvMapping | Mapping[str, Any] | str | Path) -> CsvMapping:
    """Accept every form :func:`import_csv` documents."""
    if isinstance(mapping_config, CsvMapping):
        return mapping_config
    if isinstance(mapping_config, Mapping):
        return CsvMapping.from_dict(mapping_config)
    text = str(mapping_config)
    if isinstance(mapping_config, str) and re.match(r"^\d+:(time|label|metric):", text):
        return CsvMapping.from_vm_format(text)
    return load_mapping(text)


def parse_csv_text(text: str, mapping: CsvMapping, *, now_ms: int | None = None) -> ParsedCsv:
    """:func:`parse_csv` over an in-memory body (the HTTP endpoint)."""
    return parse_csv(io.StringIO(text, newline=""), mapping, now_ms=now_ms)


def mapping_from_json(text: str) -> CsvMapping:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f"mapping: not valid JSON: {exc}") from exc
    except RecursionError:
        raise MappingError("mapping: JSON nested too deeply") from None
    return CsvMapping.from_dict(data)
