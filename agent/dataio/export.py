"""Bulk export of raw samples: CSV (round-trips through the CSV importer) and JSON lines.

Why raw samples and not query results: an export is for moving data (to a
spreadsheet, another tsagent, VictoriaMetrics), so every stored sample goes
out exactly once, at its own timestamp, with nothing evaluated or aligned.

**CSV layout** (one sample per row, the "long" layout)::

    __timestamp__,__name__,host,job,__value__
    2024-01-31T12:00:00.000Z,cpu,a,node,0.25

* ``__timestamp__``: ``rfc3339`` (default; milliseconds and the offset of the
  chosen time zone, ``Z`` for UTC), ``unix_ms`` or ``unix_s`` (with a
  millisecond fraction). All three are exact to the millisecond, the store's
  resolution. The columns are named like VictoriaMetrics' ``__timestamp__``/
  ``__value__`` so that no real label (``__`` names are reserved) can clash.
* ``__name__``, then one column per label name found in the exported series
  (sorted); a series without that label has an empty cell, which the importer
  reads as "no label" (Prometheus' rule: an empty label is an absent one).
* ``__value__``: the shortest text that reads back as the same float64
  (``repr``), so values are bit-identical after import, ``-0.0``, subnormals
  and ``+Inf``/``-Inf`` included. A NaN is written ``NaN`` and comes back as a
  NaN (its payload bits are not kept; PromQL treats all ordinary NaNs alike).
  **Staleness markers are left out** (counted in :class:`ExportStats`): they
  are not measurements, and no CSV reader could tell one from a NaN.

* **Formulas are neutralised** (``neutralize_formulas=True``, the default):
  a label value starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return (OWASP's CSV-injection list), or with ``'``, gets a leading ``'``, so
  a spreadsheet shows it as text instead of running it. The importer removes
  that quote again, so exports still round-trip exactly. Numbers and
  timestamps are written by us and never neutralised (``-1.5`` stays a number).

Rows come series by series (series in label order, each in time order).
Importing back: ``tsagent import-csv --header --format "$(spec)"`` with the
spec from :func:`import_spec` (``1:time:rfc3339,2:label:__name__,...``), or the
mapping from :func:`import_mapping`; the importer takes a ``__name__`` label
column as each row's metric name.

**JSON lines** (VictoriaMetrics' ``/api/v1/export`` format): one object per
series, ``{"metric":{...},"values":[...],"timestamps":[...]}`` with
millisecond timestamps; a NaN is ``null`` (as VictoriaMetrics writes it),
``+Inf``/``-Inf`` are the strings ``"+Inf"``/``"-Inf"`` (JSON has no
infinities), staleness markers are left out.

Memory: both exporters read ``chunk_series`` series at a time (100 by
default) over the whole range, format them, hand the text on and forget
them, so an export of any size needs memory for one chunk only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, TextIO

import numpy as np

from agent.model import METRIC_NAME, STALE_NAN_BITS, Matcher, metric_name, neutralize_cell
from agent.query.errors import BadDataError
from agent.query.numfmt import jsonl_number, text_number
from agent.query.timezone import zone as zone_named

if TYPE_CHECKING:
    from agent.storage import Store

TIME_FORMATS = ("rfc3339", "unix_ms", "unix_s")
TIMESTAMP_COLUMN = "__timestamp__"
VALUE_COLUMN = "__value__"
CHUNK_SERIES = 100
MIN_MS = -(2**62)
MAX_MS = 2**62

TimeArg = int | datetime | str | None
"""An export bound: int **milliseconds** (the store's unit), an aware datetime, or RFC 3339."""

TagsFilter = Sequence[Matcher] | Mapping[str, str] | str | Sequence[str] | None
"""Which series: matchers (all must hold), ``{label: value}`` equalities, a selector
string (``'cpu{host=~"a.*"}'``) or several selector strings (any may match)."""

ProgressFn = Callable[[int, int, int], None]
"""``progress(series_done, series_total, samples_done)``, called after each chunk."""


class ExportError(ValueError):
    """A bad argument (time format, zone, selector); the message names it."""


@dataclass
class ExportStats:
    """What an export wrote; filled in while the generator runs."""

    series: int = 0  # series with at least one exported sample
    samples: int = 0
    stale_skipped: int = 0
    series_total: int = 0  # series matched, with or without samples in range


# --- choosing series --------------------------------------------------------------------


def parse_selector(text: str) -> list[Matcher]:
    """A series selector (``name{label="v"}``) as matchers; ExportError when it is not one."""
    from agent.query import ast
    from agent.query.errors import QueryError
    from agent.query.parser import parse

    try:
        node = ast.unwrap(parse(text))
    except QueryError as exc:
        raise ExportError(f"invalid selector {text!r}: {exc}") from None
    if not isinstance(node, ast.VectorSelector):
        raise ExportError(f"expected a series selector, got {text!r}")
    return list(node.matchers)


def matcher_sets(tags_filter: TagsFilter) -> list[list[Matcher]]:
    """The filter as alternatives of matcher lists (OR of ANDs); [] means "every series"."""
    if tags_filter is None:
        return []
    if isinstance(tags_filter, str):
        return [parse_selector(tags_filter)]
    if isinstance(tags_filter, Mapping):
        return [[Matcher.of(k, "=", v) for k, v in tags_filter.items()]]
    items = list(tags_filter)
    if not items:
        return []
    if all(isinstance(m, Matcher) for m in items):
        return [[m for m in items if isinstance(m, Matcher)]]
    if all(isinstance(m, str) for m in items):
        return [parse_selector(m) for m in items if isinstance(m, str)]
    raise ExportError("tags_filter: expected matchers, a {label: value} mapping or selectors")


def select_series(
    store: Store, series_ids: Sequence[int] | None = None, tags_filter: TagsFilter = None
) -> list[int]:
    """Ids of the chosen series, in label order (both given: those in both)."""
    sets = matcher_sets(tags_filter)
    if sets:
        found: set[int] = set()
        for matchers in sets:
            found.update(store.match_series(matchers))
        ids = found
    elif series_ids is None:
        ids = set(store.match_series([Matcher.of(METRIC_NAME, "=~", ".+")]))
    else:
        ids = None
    if series_ids is not None:
        given = {int(s) for s in series_ids}
        ids = given if ids is None else ids & given
    assert ids is not None
    labels = store.labels
    out = []
    for sid in ids:
        try:
            out.append((labels(sid), sid))
        except (KeyError, IndexError):
            continue  # an unknown id given explicitly: nothing to export
    out.sort()
    return [sid for _, sid in out]


def time_bound(value: TimeArg, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ExportError(f"{name}: expected milliseconds, a datetime or RFC 3339")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ExportError(f"{name}: a naive datetime is ambiguous; attach a time zone")
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if isinstance(value, str):
        from agent.dataio.importer import parse_rfc3339

        try:
            return parse_rfc3339(value)
        except ValueError as exc:
            raise ExportError(f"{name}: {exc}") from None
    raise ExportError(f"{name}: unsupported time {value!r}")


def zone_of(name: str | tzinfo | None) -> tzinfo:
    if name is None or name in ("", "UTC", "Z"):
        return UTC
    if isinstance(name, tzinfo):
        return name
    try:
        return zone_named(name)
    except BadDataError:
        raise ExportError(f"unknown time zone {name!r}") from None


# --- formatting -------------------------------------------------------------------------


def _offsets_ms(ts: np.ndarray, zone: tzinfo) -> np.ndarray:
    """UTC offset (ms) of ``zone`` at each timestamp, with a few zone lookups per hour spanned.

    Offsets only change at transitions, so each distinct hour is looked up at
    its start and end; only hours where the two differ (a transition inside)
    are resolved sample by sample.
    """
    if zone is UTC or ts.size == 0:
        return np.zeros(ts.size, dtype=np.int64)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def off(ms: int) -> int:
        delta = (epoch + timedelta(milliseconds=ms)).astimezone(zone).utcoffset()
        return 0 if delta is None else delta // timedelta(milliseconds=1)

    hours, inverse = np.unique(ts // 3_600_000, return_inverse=True)
    first = np.array([off(int(h) * 3_600_000) for h in hours], dtype=np.int64)
    last = np.array([off(int(h) * 3_600_000 + 3_599_999) for h in hours], dtype=np.int64)
    out = first[inverse]
    mixed = (first != last)[inverse]
    for i in np.flatnonzero(mixed).tolist():
        out[i] = off(int(ts[i]))
    return out


def format_times(ts: np.ndarray, fmt: str, zone: tzinfo = UTC) -> list[str]:
    """Timestamps (ms) as text in ``fmt``; vectorised with numpy's datetime64 for RFC 3339."""
    if fmt == "unix_ms":
        return [str(t) for t in ts.tolist()]
    if fmt == "unix_s":
        out = []
        for t in ts.tolist():
            sign = "-" if t < 0 else ""
            a = -t if t < 0 else t
            out.append(f"{sign}{a // 1000}.{a % 1000:03d}")
        return out
    if fmt != "rfc3339":
        raise ExportError(f"time format {fmt!r}: expected one of {', '.join(TIME_FORMATS)}")
    offs = _offsets_ms(ts, zone)
    # Offsets with seconds (historic local mean time) cannot be written as +hh:mm;
    # such samples are written in UTC instead, which names the same instant.
    odd = offs % 60_000 != 0
    if odd.any():
        offs = np.where(odd, 0, offs)
    local = np.datetime_as_string((ts + offs).astype("datetime64[ms]"), unit="ms")
    utc_z = zone is UTC
    suffixes: dict[int, str] = {}
    out = []
    for text, o, z in zip(local.tolist(), offs.tolist(), odd.tolist(), strict=True):
        if utc_z or z:
            out.append(text + "Z")
            continue
        suffix = suffixes.get(o)
        if suffix is None:
            sign = "-" if o < 0 else "+"
            minutes = abs(o) // 60_000
            suffix = suffixes[o] = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        out.append(text + suffix)
    return out


def _not_stale(v: np.ndarray) -> np.ndarray:
    return v.view(np.uint64) != np.uint64(STALE_NAN_BITS)


def _csv_cell(text: str) -> str:
    """RFC 4180 quoting where needed (delimiter, quote, CR or LF inside)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def label_columns(store: Store, ids: Sequence[int]) -> list[str]:
    """Label names (without ``__name__``) used by any of the series, sorted."""
    names: set[str] = set()
    labels = store.labels
    for sid in ids:
        names.update(k for k, _ in labels(sid))
    names.discard(METRIC_NAME)
    return sorted(names)


def import_spec(label_names: Sequence[str], time_format: str = "rfc3339") -> str:
    """The VictoriaMetrics-style column spec that imports an export back (``--format``)."""
    cols = [f"1:time:{time_format}", "2:label:__name__"]
    cols += [f"{i}:label:{name}" for i, name in enumerate(label_names, 3)]
    cols.append(f"{len(label_names) + 3}:metric:value")
    return ",".join(cols)


def import_mapping(label_names: Sequence[str], time_format: str = "rfc3339") -> dict[str, object]:
    """The importer mapping (``--mapping`` YAML as a dict) for an export with these labels."""
    return {
        "header": True,
        "timestamp": {"column": TIMESTAMP_COLUMN, "format": time_format},
        "labels": [METRIC_NAME, *label_names],
        "values": [VALUE_COLUMN],
    }


async def _chunks(
    store: Store, ids: list[int], start: int, end: int, chunk_series: int
) -> AsyncIterator[list[tuple[int, np.ndarray, np.ndarray]]]:
    for i in range(0, len(ids), max(chunk_series, 1)):
        yield await store.read_many(ids[i : i + chunk_series], start, end)


async def export_csv(
    store: Store,
    series_ids: Sequence[int] | None = None,
    start: TimeArg = None,
    end: TimeArg = None,
    tags_filter: TagsFilter = None,
    *,
    time_format: str = "rfc3339",
    timezone: str | tzinfo | None = None,
    header: bool = True,
    chunk_series: int = CHUNK_SERIES,
    stats: ExportStats | None = None,
    progress: ProgressFn | None = None,
    neutralize_formulas: bool = True,
) -> AsyncIterator[str]:
    """Yield the CSV export of the chosen series as text pieces (one per chunk of series).

    ``series_ids`` and/or ``tags_filter`` choose the series (neither: every
    series); ``start``/``end`` bound the samples (inclusive; ms, aware
    datetime or RFC 3339; default all time). ``timezone`` (IANA name) applies
    to ``rfc3339`` timestamps. Pass an :class:`ExportStats` to learn what was
    written. Layout and value spelling: see the module docstring. Write the
    pieces to a file with :func:`write_csv`.
    """
    if time_format not in TIME_FORMATS:
        raise ExportError(f"time format {time_format!r}: expected one of {', '.join(TIME_FORMATS)}")
    zone = zone_of(timezone)
    lo = time_bound(start, MIN_MS, "start")
    hi = time_bound(end, MAX_MS, "end")
    if hi < lo:
        raise ExportError("end: must not be before start")
    stats = stats if stats is not None else ExportStats()
    ids = select_series(store, series_ids, tags_filter)
    stats.series_total = len(ids)
    names = label_columns(store, ids)
    position = {name: i for i, name in enumerate(names)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow([TIMESTAMP_COLUMN, METRIC_NAME, *names, VALUE_COLUMN])
        yield buf.getvalue()
    done = 0
    async for chunk in _chunks(store, ids, lo, hi, chunk_series):
        buf.seek(0)
        buf.truncate()
        for sid, t, v in chunk:
            keep = _not_stale(v)
            if not keep.all():
                stats.stale_skipped += int(t.size - int(keep.sum()))
                t, v = t[keep], v[keep]
            if t.size == 0:
                continue
            labs = store.labels(sid)
            cells = [""] * len(names)
            for k, val in labs:
                if k != METRIC_NAME:
                    cells[position[k]] = neutralize_cell(val) if neutralize_formulas else val
            # Label cells are formatted once per series; timestamps and values never
            # need quoting. By hand rather than csv.writer: with "\n" line endings
            # the csv module leaves a "\r" inside a value unquoted, which breaks rows.
            middle = ",".join(_csv_cell(x) for x in (metric_name(labs), *cells))
            times = format_times(t, time_format, zone)
            buf.write(
                "".join(
                    f"{tt},{middle},{text_number(x)}\n"
                    for tt, x in zip(times, v.tolist(), strict=True)
                )
            )
            stats.series += 1
            stats.samples += int(t.size)
        done += chunk_series
        if progress is not None:
            progress(min(done, len(ids)), len(ids), stats.samples)
        text = buf.getvalue()
        if text:
            yield text


async def write_csv(
    store: Store,
    out: TextIO,
    series_ids: Sequence[int] | None = None,
    start: TimeArg = None,
    end: TimeArg = None,
    tags_filter: TagsFilter = None,
    *,
    time_format: str = "rfc3339",
    timezone: str | tzinfo | None = None,
    chunk_series: int = CHUNK_SERIES,
    progress: ProgressFn | None = None,
) -> ExportStats:
    """Write :func:`export_csv` to a text file (opened with ``newline=""``); returns the stats."""
    stats = ExportStats()
    async for piece in export_csv(
        store,
        series_ids,
        start,
        end,
        tags_filter,
        time_format=time_format,
        timezone=timezone,
        chunk_series=chunk_series,
        stats=stats,
        progress=progress,
    ):
        out.write(piece)
    return stats


async def export_jsonl(
    store: Store,
    series_ids: Sequence[int] | None = None,
    start: TimeArg = None,
    end: TimeArg = None,
    tags_filter: TagsFilter = None,
    *,
    chunk_series: int = CHUNK_SERIES,
    stats: ExportStats | None = None,
) -> AsyncIterator[str]:
    """Yield VictoriaMetrics JSON lines, one line per series with samples in range."""
    lo = time_bound(start, MIN_MS, "start")
    hi = time_bound(end, MAX_MS, "end")
    stats = stats if stats is not None else ExportStats()
    ids = select_series(store, series_ids, tags_filter)
    stats.series_total = len(ids)
    async for chunk in _chunks(store, ids, lo, hi, chunk_series):
        lines = []
        for sid, t, v in chunk:
            keep = _not_stale(v)
            if not keep.all():
                stats.stale_skipped += int(t.size - int(keep.sum()))
                t, v = t[keep], v[keep]
            if t.size == 0:
                continue
            values = v.tolist()
            if not np.isfinite(v).all():
                values = [jsonl_number(x) for x in values]
            line = {"metric": dict(store.labels(sid)), "values": values, "timestamps": t.tolist()}
            lines.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False))
            stats.series += 1
            stats.samples += int(t.size)
        if lines:
            yield "\n".join(lines) + "\n"
