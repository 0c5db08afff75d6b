"""Internal value shapes the evaluator passes between nodes.

Every node is evaluated once for all steps of the query, so an instant vector
is a dense ``(series, steps)`` matrix with a presence mask (:class:`Block`), and
a range vector is all samples of all series concatenated with per-series
offsets (:class:`RangeData`).  Windows over range data for every
``(series, step)`` pair come from one :func:`numpy.searchsorted` call on
composite ``(series, time)`` keys, which keeps per-sample Python loops out of
the hot paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from agent.model import METRIC_NAME, STALE_NAN_BITS, Labels
from agent.query.errors import ExecutionError

DUPLICATE_LABELSET = "vector cannot contain metrics with the same labelset"


@dataclass
class Block:
    """An instant vector over all steps: row ``i`` is series ``labels[i]``."""

    labels: list[Labels]
    values: np.ndarray  # float64 (n, steps)
    present: np.ndarray  # bool (n, steps)
    drop: np.ndarray  # bool (n,): the metric name is to be dropped at the end
    sample_ts: np.ndarray | None = None  # int64 (n, steps): original sample times
    # Known: no two rows share (labels, drop), nor would after the names of the rows
    # marked ``drop`` were dropped, so merge_same_labels has nothing to do.  Only
    # set where provable (a plain selector's series); kept by take/compact only.
    distinct: bool = False

    @classmethod
    def empty(cls, steps: int) -> Block:
        return cls(
            [], np.zeros((0, steps)), np.zeros((0, steps), dtype=bool), np.zeros(0, dtype=bool)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | list[int]) -> Block:
        idx = np.asarray(rows, dtype=np.int64)
        return Block(
            [self.labels[i] for i in idx.tolist()],
            self.values[idx],
            self.present[idx],
            self.drop[idx],
            None if self.sample_ts is None else self.sample_ts[idx],
            self.distinct,
        )

    def compact(self) -> Block:
        """Drop rows that are absent at every step."""
        keep = np.flatnonzero(self.present.any(axis=1))
        return self if len(keep) == len(self.labels) else self.take(keep)


SHARED_MIN_SERIES = 64  # from this many series, look for shared timestamps (a cheap check)


@dataclass
class RangeData:
    """Samples of several series: series ``i`` owns ``t[offsets[i]:offsets[i+1]]``."""

    labels: list[Labels]
    drop: np.ndarray  # bool (n,)
    offsets: np.ndarray  # int64 (n+1,)
    t: np.ndarray  # int64
    v: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def series_index(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.labels)), np.diff(self.offsets))

    @cached_property
    def shared_times(self) -> int | None:
        """``k`` when every series holds the same ``k`` timestamps, else None.

        Series written together (one remote-write sender, one scrape target)
        share their timestamps, and then window bounds and most of ``rate()``'s
        arithmetic are the same for every series: computed once per step
        instead of once per series and step. One comparison of every sample's
        time with the first series' (cached: a RangeData's arrays are not
        changed after it is made).
        """
        n, total = len(self.labels), len(self.t)
        k = total // n if n else 0
        if n > 1 and k > 0 and k * n == total and bool((np.diff(self.offsets) == k).all()):
            rows = self.t.reshape(n, k)
            if bool((rows == rows[0]).all()):
                return k
        return None


def is_stale(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint64) == np.uint64(STALE_NAN_BITS)


def search_windows(
    data: RangeData, lows: np.ndarray, highs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Global index bounds ``[lo, hi)`` of samples with ``low < t <= high``.

    ``lows``/``highs`` have one entry per step and apply to every series; the
    result arrays have shape ``(series, steps)``.
    """
    n = len(data)
    steps = len(highs)
    if n == 0:
        z = np.zeros((0, steps), dtype=np.int64)
        return z, z
    if len(data.t) and data.t.max() <= highs.min():
        # Every sample is at or before every window's end (a query at "now"): each
        # window ends at its series' end, and only the starts need a search.
        hi = np.repeat(data.offsets[1:, None], steps, axis=1)
        if data.t.min() > lows.max():
            return np.repeat(data.offsets[:-1, None], steps, axis=1), hi
        return _bounds_at(data, lows), hi
    if n >= SHARED_MIN_SERIES and data.shared_times is not None:
        return _bounds_at(data, lows), _bounds_at(data, highs)
    # A window's start is often an earlier step's end (range a multiple of the
    # step): count each distinct bound once.
    edges, inv = np.unique(np.concatenate([lows, highs]), return_inverse=True)
    pos = count_upto_edges(data, edges)
    inv = inv.ravel()
    # take() keeps rows contiguous (pos[:, idx] does not): the range functions'
    # gathers through these indices ran three times slower on the strided form.
    return pos.take(inv[:steps], axis=1), pos.take(inv[steps:], axis=1)


def count_upto_edges(data: RangeData, edges: np.ndarray) -> np.ndarray:
    """Global index past each series' samples ``<= edges[e]``: shape ``(series, edges)``.

    ``edges`` ascending. Each sample falls between two edges (one binary search
    in the few edges, not one per window in all samples); a histogram of
    samples per series and bucket, summed along the buckets, counts the
    samples at or below each edge. Costs O(samples + series x edges), which
    is the size of the answer anyway.
    """
    n, e = len(data), len(edges)
    bucket = np.searchsorted(edges, data.t, "left")  # edges below each sample
    flat = data.series_index * (e + 1) + bucket
    hist = np.bincount(flat, minlength=n * (e + 1)).reshape(n, e + 1)
    counts = np.cumsum(hist[:, :e], axis=1)
    counts += data.offsets[:-1, None]
    return counts


def _bounds_at(data: RangeData, at: np.ndarray) -> np.ndarray:
    """Global index past each series' samples ``<= at[j]``: shape ``(series, steps)``."""
    k = data.shared_times if len(data) >= SHARED_MIN_SERIES else None
    if k is not None:  # one search in one series' times serves all
        return data.offsets[:-1, None] + np.searchsorted(data.t[:k], at, "right")[None, :]
    edges, inv = np.unique(at, return_inverse=True)
    return count_upto_edges(data, edges).take(inv.ravel(), axis=1)


def search_upto(data: RangeData, highs: np.ndarray) -> np.ndarray:
    """The ``hi`` of :func:`search_windows` alone: past each series' last sample <= high.

    An instant selector needs only the last sample at or before each step and
    whether it is inside the lookback window (``t > step - lookback``), which the
    sample's own time tells: one search instead of two.
    """
    steps = len(highs)
    if not len(data.t) or data.t.max() <= highs.min():  # every sample is at or before each step
        return np.repeat(data.offsets[1:, None], steps, axis=1)
    return _bounds_at(data, highs)


def selector_block(data: RangeData, when: np.ndarray, lookback_ms: int) -> Block:
    """An instant selector's values: each series' last sample at or before each step.

    A cell is present when that sample is the series' own, inside the lookback
    window (``t > step - lookback``) and not a staleness marker. Rows absent at
    every step are dropped. Series that share their timestamps (the usual case
    for a dashboard's range query) take one search in one series' times and
    one gather of the ``(series, steps)`` values, instead of a dozen
    ``(series, steps)`` index computations.
    """
    n, steps = len(data), len(when)
    k = data.shared_times if n >= SHARED_MIN_SERIES and steps > 1 else None
    if k is not None:
        times = data.t[:k]
        j = np.searchsorted(times, when, "right")
        col = np.maximum(j - 1, 0)
        has = (j > 0) & (times[col] > when - lookback_ms)
        values = data.v.reshape(n, k)[:, col]
        stale = is_stale(values)
        present = has & ~stale
        sample_ts = _rows_of(times[col], n)
        block = Block(data.labels, values, present, np.zeros(n, dtype=bool), sample_ts, True)
        return block if has.any() and not stale.any() else block.compact()
    if data.t.max() <= when.min():  # a query at "now": every step's sample is the last
        last = data.offsets[1:] - 1
        t_last = data.t[last]
        values = np.repeat(data.v[last, None], steps, axis=1)
        present = (t_last[:, None] > (when - lookback_ms)[None, :]) & ~is_stale(values)
        held = last >= data.offsets[:-1]
        if not held.all():  # a series without samples (last points into the one before)
            present &= held[:, None]
        sample_ts = t_last[:, None] if steps == 1 else _columns_of(t_last, steps)
        block = Block(data.labels, values, present, np.zeros(n, dtype=bool), sample_ts, True)
        return block if present.all() else block.compact()
    hi = search_upto(data, when)
    idx = np.maximum(hi - 1, 0)
    has = (hi > data.offsets[:-1, None]) & (data.t[idx] > (when - lookback_ms)[None, :])
    idx = np.where(has, idx, 0)
    values = data.v[idx]
    present = has & ~is_stale(values)
    # A selector's series have distinct label sets and keep their names.
    block = Block(data.labels, values, present, np.zeros(n, dtype=bool), data.t[idx], True)
    return block.compact()


def _rows_of(row: np.ndarray, n: int) -> np.ndarray:
    """``row`` repeated ``n`` times as a read-only view (``np.broadcast_to``'s checks cost
    more than the rest of a small selector)."""
    out = np.ndarray((n, row.size), dtype=row.dtype, buffer=row, strides=(0, row.itemsize))
    out.flags.writeable = False
    return out


def _columns_of(col: np.ndarray, steps: int) -> np.ndarray:
    """``col`` repeated ``steps`` times side by side, as a read-only view."""
    out = np.ndarray((col.size, steps), dtype=col.dtype, buffer=col, strides=(col.itemsize, 0))
    out.flags.writeable = False
    return out


def drop_name(labels: Labels) -> Labels:
    if labels and labels[0][0] == METRIC_NAME:  # the usual place in sorted labels: a slice
        return labels[1:]
    return tuple(p for p in labels if p[0] != METRIC_NAME)


def merge_same_labels(block: Block, *, check: bool = True) -> Block:
    """Merge rows whose labels are identical; overlapping presence is an error.

    This is how Prometheus assembles a range result from per-step vectors: a
    series may be produced by different inputs at different steps, but two
    samples for one label set at one step cannot be told apart.
    """
    if block.distinct or len(set(block.labels)) == len(block.labels):
        return block  # the common case, decided by one set of tuples
    first: dict[tuple[Labels, bool], int] = {}
    groups: list[list[int]] = []
    for i, lab in enumerate(block.labels):
        key = (lab, bool(block.drop[i]))
        g = first.get(key)
        if g is None:
            first[key] = len(groups)
            groups.append([i])
        else:
            groups[g].append(i)
    if len(groups) == len(block.labels):
        return block
    rows: list[int] = []
    values: list[np.ndarray] = []
    present: list[np.ndarray] = []
    for members in groups:
        rows.append(members[0])
        if len(members) == 1:
            values.append(block.values[members[0]])
            present.append(block.present[members[0]])
            continue
        pres = block.present[members]
        if check and (pres.sum(axis=0) > 1).any():
            raise ExecutionError(DUPLICATE_LABELSET)
        which = np.argmax(pres, axis=0)
        values.append(block.values[members][which, np.arange(pres.shape[1])])
        present.append(np.asarray(pres.any(axis=0)))
    return Block(
        [block.labels[r] for r in rows],
        np.array(values).reshape(len(rows), block.values.shape[1]),
        np.array(present, dtype=bool).reshape(len(rows), block.values.shape[1]),
        block.drop[rows],
    )
