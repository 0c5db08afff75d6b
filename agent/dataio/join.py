"""Aligning several series by timestamp into rows (a table): joins and resampling.

Why a join next to PromQL: PromQL aligns series on an evaluation grid and
only by labels; a table of raw samples "CPU and memory at the same moments"
(for a spreadsheet, a notebook, a model) needs row alignment by time, with
SQL-like control over which moments become rows.

Everything is vectorised with numpy: rows come from ``np.unique`` (union),
``np.intersect1d`` (intersection) or the primary's timestamps, and each
series is placed into the rows with one ``np.searchsorted``; no Python loop
runs per sample. Joining ten series of 100,000 samples each takes a few
milliseconds (``benchmarks/bench_join.py``).

Join types (series 0 is the *primary*):

* ``inner``: rows at timestamps present in every series;
* ``left``: rows at the primary's timestamps; others where they have a
  sample at exactly that time, else missing;
* ``outer``: rows at every timestamp of any series; missing where absent;
* ``asof``: rows at the primary's timestamps; each other series gives its
  latest sample at or before the row's time, if not older than
  ``tolerance`` ms (no tolerance: any age);
* a Python callable (custom join; see :data:`CustomJoin`).

Resampling (``step`` ms, optional) happens per series *before* the join:
the grid is ``start, start+step, ...`` up to ``end`` (default: the earliest
and latest sample of all series), and a series' value at grid time ``g`` is

* ``fill="null"``: its latest sample in ``(g - step, g]``, else missing;
* ``fill="previous"``: its latest sample at or before ``g`` (carried forward);
* ``fill="linear"``: interpolated between its samples around ``g`` (exact
  where a sample sits on ``g``), missing before its first or after its last.

Missing cells are kept apart from NaN values (``present`` masks), so a
stored NaN stays a NaN and an absent value becomes ``null``/an empty cell.
Staleness markers are not values and are dropped when reading.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agent.model import STALE_NAN_BITS, Labels, format_labels
from agent.query.numfmt import json_number, text_number

if TYPE_CHECKING:
    from agent.storage import Store

JoinType = Literal["inner", "left", "outer", "asof"]
JOIN_TYPES: tuple[str, ...] = ("inner", "left", "outer", "asof")
Fill = Literal["null", "previous", "linear"]
FILLS: tuple[str, ...] = ("null", "previous", "linear")

SeriesArrays = tuple[np.ndarray, np.ndarray]  # (int64 ms timestamps, float64 values), sorted

CustomJoin = Callable[
    [list[SeriesArrays]],
    "np.ndarray | tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]",
]
"""``fn(series) -> row_timestamps`` (each series then placed exactly, missing where it has
no sample at a row), or ``-> (row_timestamps, values, present)`` with one float64 value
array and one boolean presence array per series, used as they are."""


class JoinError(ValueError):
    """A bad join argument; the message names it."""


@dataclass
class JoinResult:
    """Rows of aligned values: ``values[i][r]`` is series ``i`` at ``timestamps[r]``.

    ``present[i][r]`` False means series ``i`` has no value in row ``r``
    (``values`` holds NaN there, but test ``present``, not NaN).
    """

    timestamps: np.ndarray
    values: list[np.ndarray]
    present: list[np.ndarray]
    labels: list[Labels] = field(default_factory=list)
    series_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.timestamps.size)

    def matrix(self) -> np.ndarray:
        """(rows, series) float64 array, NaN where missing (loses the NaN/missing difference)."""
        out = np.full((len(self), len(self.values)), np.nan)
        for i, (v, p) in enumerate(zip(self.values, self.present, strict=True)):
            out[p, i] = v[p]
        return out

    def rows(self) -> list[tuple[int, ...]]:
        """``(timestamp_ms, value or None, ...)`` per row, for tests and small tables."""
        cols = [
            [x if ok else None for x, ok in zip(v.tolist(), p.tolist(), strict=True)]
            for v, p in zip(self.values, self.present, strict=True)
        ]
        return [tuple(r) for r in zip(self.timestamps.tolist(), *cols, strict=True)]

    def column_names(self) -> list[str]:
        if self.labels:
            return [format_labels(lab) for lab in self.labels]
        return [f"series_{i}" for i in range(len(self.values))]

    def to_json(self) -> dict[str, Any]:
        """The API ``data`` object: series, column names and rows (seconds, values or null)."""
        cols = [
            [json_number(x) if ok else None for x, ok in zip(v.tolist(), p.tolist(), strict=True)]
            for v, p in zip(self.values, self.present, strict=True)
        ]
        secs = (self.timestamps / 1000).tolist()
        return {
            "series": [
                {"id": sid, "metric": dict(lab)}
                for sid, lab in zip(self.series_ids, self.labels, strict=False)
            ],
            "columns": ["timestamp", *self.column_names()],
            "rows": [list(r) for r in zip(secs, *cols, strict=True)],
        }

    def to_csv(self, time_format: str = "rfc3339", timezone: str | None = None) -> str:
        """Header ``timestamp,<series>...``; values spelled as in the CSV export; missing: empty."""
        from agent.dataio.export import format_times, zone_of

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["timestamp", *self.column_names()])
        times = format_times(self.timestamps, time_format, zone_of(timezone))
        cols = [
            [text_number(x) if ok else "" for x, ok in zip(v.tolist(), p.tolist(), strict=True)]
            for v, p in zip(self.values, self.present, strict=True)
        ]
        w.writerows(zip(times, *cols, strict=True))
        return buf.getvalue()


# --- placing one series into rows ----------------------------------------------------------------


def align_exact(rows: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of (t, v) at exactly ``rows`` and whether each exists."""
    idx = np.searchsorted(t, rows)
    ok = idx < t.size
    ok[ok] = t[idx[ok]] == rows[ok]
    out = np.full(rows.size, np.nan)
    out[ok] = v[idx[ok]]
    return out, ok


def align_asof(
    rows: np.ndarray, t: np.ndarray, v: np.ndarray, tolerance: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Latest value of (t, v) at or before each row, if at most ``tolerance`` ms older."""
    idx = np.searchsorted(t, rows, side="right") - 1
    ok = idx >= 0
    if tolerance is not None:
        ok[ok] = rows[ok] - t[idx[ok]] <= tolerance
    out = np.full(rows.size, np.nan)
    out[ok] = v[idx[ok]]
    return out, ok


def resample(
    t: np.ndarray, v: np.ndarray, grid: np.ndarray, step: int, fill: str
) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of one series on ``grid`` (see the module docstring for ``fill``)."""
    if fill == "null":
        return align_asof(grid, t, v, step - 1)
    if fill == "previous":
        return align_asof(grid, t, v, None)
    if fill == "linear":
        out = np.full(grid.size, np.nan)
        if t.size == 0:
            return out, np.zeros(grid.size, dtype=bool)
        ok = (grid >= t[0]) & (grid <= t[-1])
        g = grid[ok]
        hi = np.searchsorted(t, g, side="left")  # first sample at or after g
        exact = t[np.minimum(hi, t.size - 1)] == g
        lo = np.maximum(hi - 1, 0)
        hi = np.minimum(hi, t.size - 1)
        t0, t1 = t[lo].astype(np.float64), t[hi].astype(np.float64)
        v0, v1 = v[lo], v[hi]
        span = np.where(t1 > t0, t1 - t0, 1.0)
        with np.errstate(invalid="ignore"):
            vals = v0 + (v1 - v0) * (g - t0) / span
        vals = np.where(exact, v[hi], vals)
        out[ok] = vals
        return out, ok
    raise JoinError(f"fill: expected one of {', '.join(FILLS)}, not {fill!r}")


# --- the join ------------------------------------------------------------------------------------


def join_arrays(
    series: Sequence[SeriesArrays],
    join_type: str | CustomJoin = "inner",
    *,
    tolerance: int | None = None,
    step: int | None = None,
    fill: str = "null",
    start: int | None = None,
    end: int | None = None,
    max_rows: int | None = None,
) -> JoinResult:
    """Join sorted (timestamps, values) arrays; series 0 is the primary. Times in ms.

    ``max_rows`` refuses a ``step`` grid of more rows before it is allocated
    (a day at ``step=1ms`` is 86 million rows per series).
    """
    if not series:
        raise JoinError("join needs at least one series")
    if tolerance is not None and tolerance < 0:
        raise JoinError("tolerance: must be >= 0")
    if fill not in FILLS:
        raise JoinError(f"fill: expected one of {', '.join(FILLS)}, not {fill!r}")
    data = [(np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64)) for t, v in series]
    if start is not None or end is not None:
        lo = -(2**62) if start is None else start
        hi = 2**62 if end is None else end
        data = [_clip(t, v, lo, hi) for t, v in data]
    if step is not None:
        if step <= 0:
            raise JoinError("step: must be positive")
        data = _resampled(data, step, fill, start, end, max_rows)
    if callable(join_type):
        return _custom(join_type, data)
    if join_type not in JOIN_TYPES:
        raise JoinError(f"join: expected one of {', '.join(JOIN_TYPES)} or a callable")
    times = [t for t, _ in data]
    if join_type == "inner":
        rows = times[0]
        for t in times[1:]:
            rows = np.intersect1d(rows, t, assume_unique=True)
    elif join_type == "outer":
        rows = np.unique(np.concatenate(times)) if len(times) > 1 else times[0]
    else:  # left, asof: the primary's timestamps
        rows = times[0]
    values: list[np.ndarray] = []
    present: list[np.ndarray] = []
    for i, (t, v) in enumerate(data):
        if join_type == "asof" and i > 0:
            col, ok = align_asof(rows, t, v, tolerance)
        else:
            col, ok = align_exact(rows, t, v)
        values.append(col)
        present.append(ok)
    return JoinResult(rows, values, present)


def _clip(t: np.ndarray, v: np.ndarray, lo: int, hi: int) -> SeriesArrays:
    a, z = np.searchsorted(t, lo, "left"), np.searchsorted(t, hi, "right")
    return t[a:z], v[a:z]


def _resampled(
    data: list[SeriesArrays],
    step: int,
    fill: str,
    start: int | None,
    end: int | None,
    max_rows: int | None = None,
) -> list[SeriesArrays]:
    """Each series on the common grid, keeping only grid points where it has a value."""
    firsts = [int(t[0]) for t, _ in data if t.size]
    lasts = [int(t[-1]) for t, _ in data if t.size]
    if not firsts and (start is None or end is None):
        return [(t[:0], v[:0]) for t, v in data]
    g0 = min(firsts) if start is None else start
    g1 = max(lasts) if end is None else end
    if g1 < g0:
        return [(t[:0], v[:0]) for t, v in data]
    rows = (g1 - g0) // step + 1
    if max_rows is not None and rows > max_rows:
        raise JoinError(
            f"step: the grid from start to end has {rows} rows, more than join_max_rows"
            f" ({max_rows}); narrow start/end or use a coarser step"
        )
    grid = np.arange(g0, g1 + 1, step, dtype=np.int64)
    out = []
    for t, v in data:
        vals, ok = resample(t, v, grid, step, fill)
        out.append((grid[ok], vals[ok]))
    return out


def _custom(fn: CustomJoin, data: list[SeriesArrays]) -> JoinResult:
    got = fn(data)
    if isinstance(got, tuple):
        rows, values, present = got
        rows = np.asarray(rows, dtype=np.int64)
        values = [np.asarray(x, dtype=np.float64) for x in values]
        present = [np.asarray(x, dtype=bool) for x in present]
        if len(values) != len(data) or len(present) != len(data):
            raise JoinError("custom join: return one value and one presence array per series")
        if any(x.shape != rows.shape for x in (*values, *present)):
            raise JoinError("custom join: every array must have one entry per row")
        return JoinResult(rows, values, present)
    rows = np.asarray(got, dtype=np.int64)
    if rows.ndim != 1:
        raise JoinError("custom join: row timestamps must be a 1-d array")
    placed = [align_exact(rows, t, v) for t, v in data]
    return JoinResult(rows, [p[0] for p in placed], [p[1] for p in placed])


async def join_series(
    store: Store,
    primary_id: int,
    other_ids: Sequence[int],
    join_type: str | CustomJoin = "inner",
    *,
    start: int | None = None,
    end: int | None = None,
    tolerance: int | None = None,
    step: int | None = None,
    fill: str = "null",
    max_rows: int | None = None,
) -> JoinResult:
    """Read the series (ms bounds, default all time) and join them; see :func:`join_arrays`."""
    ids = [int(primary_id), *(int(i) for i in other_ids)]
    for sid in ids:
        try:
            store.labels(sid)
        except KeyError:
            raise JoinError(f"unknown series id {sid}") from None
    lo = -(2**62) if start is None else start
    hi = 2**62 if end is None else end
    found = {sid: (t, v) for sid, t, v in await store.read_many(sorted(set(ids)), lo, hi)}
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
    data = []
    for sid in ids:
        t, v = found.get(sid, empty)
        fresh = v.view(np.uint64) != np.uint64(STALE_NAN_BITS)
        data.append((t, v) if fresh.all() else (t[fresh], v[fresh]))
    result = join_arrays(
        data,
        join_type,
        tolerance=tolerance,
        step=step,
        fill=fill,
        start=start,
        end=end,
        max_rows=max_rows,
    )
    result.series_ids = ids
    result.labels = [store.labels(sid) for sid in ids]
    return result
