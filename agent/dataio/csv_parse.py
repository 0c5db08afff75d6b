"""Parsing CSV into arrays: chunked, numpy-converted, each bad row reported with its reason."""

from __future__ import annotations

import csv
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.dataio.csv_mapping import Column, CsvMapping
from agent.dataio.import_report import ImportReport, MappingError, Problem
from agent.model import METRIC_NAME, Labels, restore_cell, valid_metric_name
from agent.model import metric_name as metric_name_of

if TYPE_CHECKING:
    from agent.storage import BackfillResult

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


CHUNK_ROWS = 50_000


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
