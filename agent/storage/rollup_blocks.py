"""Rollup blocks: the bucket arrays, their on-disk encoding, block SQL and window math.

A rollup block holds ``BUCKETS_PER_BLOCK`` buckets (count, sum, min, max,
first, last, ...) of one series at one resolution; :class:`RollupManager`
(:mod:`agent.storage.rollup`) decides which blocks to compute, store and
expire, and the query layer combines buckets into windows with
:func:`window_stats`. Kept apart so the block format and its arithmetic
can be read (and tested) without the manager's scheduling.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from agent.model import STALE_NAN_BITS, Labels
from agent.storage.errors import StorageError

INT64_MIN = -(2**63)
BUCKETS_PER_BLOCK = 60
MAX_RESOLUTION_MS = 2**31  # bucket-relative timestamps are stored as uint32
_FORMAT = 1
_HEADER = struct.Struct("<BI")


# --- buckets --------------------------------------------------------------------------------


@dataclass(slots=True)
class Buckets:
    """Bucket arrays of one or more series, sorted by start within each series."""

    start: np.ndarray  # int64 ms, multiple of the resolution
    count: np.ndarray  # int64
    min: np.ndarray  # float64
    max: np.ndarray
    sum: np.ndarray
    first: np.ndarray
    last: np.ndarray
    first_t: np.ndarray  # int64 ms
    last_t: np.ndarray
    integral: np.ndarray  # bool: every value a finite integer

    FIELDS = (
        "start",
        "count",
        "min",
        "max",
        "sum",
        "first",
        "last",
        "first_t",
        "last_t",
        "integral",
    )

    def __len__(self) -> int:
        return int(self.start.size)

    @classmethod
    def empty(cls) -> Buckets:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return cls(i, i, f, f, f, f, f, i, i, np.zeros(0, bool))

    def take(self, idx: np.ndarray) -> Buckets:
        return Buckets(*(getattr(self, n)[idx] for n in self.FIELDS))

    @classmethod
    def concat(cls, parts: Sequence[Buckets]) -> Buckets:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, n) for p in parts]) for n in cls.FIELDS))

    def replace_range(self, lo: int, hi: int, new: Buckets) -> Buckets:
        """These buckets with those starting in ``[lo, hi)`` replaced by ``new``'s."""
        keep = (self.start < lo) | (self.start >= hi)
        merged = Buckets.concat([self.take(np.flatnonzero(keep)), new])
        order = np.argsort(merged.start, kind="stable")
        return merged.take(order)


def compute_buckets(t: np.ndarray, v: np.ndarray, res: int) -> Buckets:
    """Buckets of one series' sorted samples; staleness markers are left out."""
    t = np.asarray(t, dtype=np.int64)
    v = np.asarray(v, dtype=np.float64)
    keep = v.view(np.uint64) != np.uint64(STALE_NAN_BITS)
    if not keep.all():
        t, v = t[keep], v[keep]
    if t.size == 0:
        return Buckets.empty()
    b = (t // res) * res
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    ends = np.append(starts[1:], t.size)
    with np.errstate(invalid="ignore", over="ignore"):
        integral = np.isfinite(v) & (v == np.trunc(v))
        return Buckets(
            start=b[starts],
            count=(ends - starts).astype(np.int64),
            min=np.fmin.reduceat(v, starts),
            max=np.fmax.reduceat(v, starts),
            sum=np.add.reduceat(v, starts),
            first=v[starts],
            last=v[ends - 1],
            first_t=t[starts],
            last_t=t[ends - 1],
            integral=np.logical_and.reduceat(integral, starts),
        )


def encode_block(block_t: int, res: int, bk: Buckets) -> bytes:
    """Pack one block's buckets (all inside ``[block_t, block_t + span)``), then zstd."""
    n = len(bk)
    parts = [
        _HEADER.pack(_FORMAT, n),
        ((bk.start - block_t) // res).astype("<u2").tobytes(),
        bk.count.astype("<u4").tobytes(),
        *(getattr(bk, f).astype("<f8").tobytes() for f in ("min", "max", "sum", "first", "last")),
        (bk.first_t - bk.start).astype("<u4").tobytes(),
        (bk.last_t - bk.start).astype("<u4").tobytes(),
        bk.integral.astype("u1").tobytes(),
    ]
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def decode_block(data: bytes, block_t: int, res: int) -> Buckets:
    raw = zstandard.ZstdDecompressor().decompress(data)
    fmt, n = _HEADER.unpack_from(raw)
    if fmt != _FORMAT:
        raise StorageError(f"unknown rollup block format {fmt}")
    pos = _HEADER.size

    def take(dtype: str, size: int) -> np.ndarray:
        nonlocal pos
        arr = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        pos += size * n
        return arr

    start = block_t + take("<u2", 2).astype(np.int64) * res
    count = take("<u4", 4).astype(np.int64)
    mn, mx, sm, first, last = (take("<f8", 8).astype(np.float64) for _ in range(5))
    first_t = start + take("<u4", 4).astype(np.int64)
    last_t = start + take("<u4", 4).astype(np.int64)
    integral = take("u1", 1).astype(bool)
    return Buckets(start, count, mn, mx, sm, first, last, first_t, last_t, integral)


def _compute_all(
    found: Sequence[tuple[int, np.ndarray, np.ndarray]], res: int
) -> dict[int, Buckets]:
    return {sid: compute_buckets(t, v, res) for sid, t, v in found}


def block_span(res: int) -> int:
    return res * BUCKETS_PER_BLOCK


def floor_to(t: int, step: int) -> int:
    return (t // step) * step


def ceil_to(t: int, step: int) -> int:
    return -((-t) // step) * step


def lowest_block(res: int) -> int:
    """The first block start SQLite can store: data before it is never rolled up.

    Flooring a timestamp within one block of INT64_MIN would leave the int64
    range (``OverflowError`` from sqlite3 on every pass, so no series got
    rollups); ingest refuses such timestamps now, but old databases hold them.
    """
    return ceil_to(INT64_MIN, block_span(res))


# --- SQL -------------------------------------------------------------------------------------


def read_blocks(
    conn: sqlite3.Connection, res: int, series_ids: Sequence[int], lo: int, hi: int
) -> dict[int, Buckets]:
    """Stored buckets starting in ``[lo, hi)`` of the given series, per series."""
    span = block_span(res)
    first_block = max(floor_to(lo, span), INT64_MIN)  # SQLite INTEGER is int64
    out: dict[int, list[Buckets]] = {}
    for i in range(0, len(series_ids), 500):
        ids = list(series_ids[i : i + 500])
        marks = ",".join("?" * len(ids))
        cur = conn.execute(
            "SELECT series_id, block_t, data FROM rollups WHERE resolution_ms = ?"
            f" AND series_id IN ({marks}) AND block_t >= ? AND block_t < ?"
            " ORDER BY series_id, block_t",
            (res, *ids, first_block, hi),
        )
        for sid, block_t, data in cur:
            out.setdefault(sid, []).append(decode_block(data, block_t, res))
    result: dict[int, Buckets] = {}
    for sid, parts in out.items():
        bk = Buckets.concat(parts)
        sel = np.flatnonzero((bk.start >= lo) & (bk.start < hi))
        if sel.size:
            result[sid] = bk.take(sel)
    return result


def merge_block(
    conn: sqlite3.Connection, res: int, sid: int, block_t: int, lo: int, hi: int, new: Buckets
) -> int:
    """Replace the buckets of ``[lo, hi)`` (inside one block) with ``new``; rows changed."""
    row = conn.execute(
        "SELECT data FROM rollups WHERE resolution_ms = ? AND series_id = ? AND block_t = ?",
        (res, sid, block_t),
    ).fetchone()
    if row is None:
        if not len(new):
            return 0
        merged = new
    else:
        merged = decode_block(row[0], block_t, res).replace_range(lo, hi, new)
    if not len(merged):
        conn.execute(
            "DELETE FROM rollups WHERE resolution_ms = ? AND series_id = ? AND block_t = ?",
            (res, sid, block_t),
        )
        return 1
    conn.execute(
        "INSERT INTO rollups(resolution_ms, series_id, block_t, buckets, data)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(resolution_ms, series_id, block_t)"
        " DO UPDATE SET buckets = excluded.buckets, data = excluded.data",
        (res, sid, block_t, len(merged), encode_block(block_t, res, merged)),
    )
    return 1


def expire_blocks(conn: sqlite3.Connection, res: int, cutoff: int) -> tuple[int, int]:
    """Delete buckets that ended at or before ``cutoff``; (rows deleted, rows trimmed)."""
    span = block_span(res)
    deleted = conn.execute(
        "DELETE FROM rollups WHERE resolution_ms = ? AND block_t + ? <= ?", (res, span, cutoff)
    ).rowcount
    trimmed = 0
    rows = conn.execute(
        "SELECT series_id, block_t FROM rollups WHERE resolution_ms = ? AND block_t < ?",
        (res, cutoff),
    ).fetchall()
    for sid, block_t in rows:
        # Buckets [b, b + res) with b + res <= cutoff go: those starting before cutoff - res + 1.
        trimmed += merge_block(conn, res, sid, block_t, block_t, cutoff - res + 1, Buckets.empty())
    return deleted, trimmed


@dataclass(slots=True)
class SeriesBuckets:
    """Buckets of many series, concatenated: series ``i`` owns ``[offsets[i], offsets[i+1])``."""

    ids: list[int]
    labels: list[Labels]
    offsets: np.ndarray
    buckets: Buckets


def _concat_series(
    ids: list[int], labels_of: Callable[[int], Labels], found: dict[int, Buckets]
) -> SeriesBuckets:
    keep = [sid for sid in ids if sid in found and len(found[sid])]
    labs = [labels_of(sid) for sid in keep]
    order = sorted(range(len(keep)), key=labs.__getitem__)
    keep = [keep[i] for i in order]
    labs = [labs[i] for i in order]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum([len(found[s]) for s in keep], out=offsets[1:])
    return SeriesBuckets(keep, labs, offsets, Buckets.concat([found[s] for s in keep]))


# --- combining buckets into windows ---------------------------------------------------------


@dataclass(slots=True)
class WindowStats:
    """Per (series, window): aggregates over whole buckets, shape ``(series, windows)``."""

    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    last: np.ndarray
    integral: np.ndarray  # every bucket integral and the exact-sum bound holds


def window_indices(
    sb: SeriesBuckets, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Global bucket indices ``[i0, i1)`` of buckets starting in ``[lo, hi)`` per window."""
    n = len(sb.ids)
    i0 = np.zeros((n, lo.size), dtype=np.int64)
    i1 = np.zeros((n, lo.size), dtype=np.int64)
    starts = sb.buckets.start
    for i in range(n):
        a, b = int(sb.offsets[i]), int(sb.offsets[i + 1])
        seg = starts[a:b]
        i0[i] = a + np.searchsorted(seg, lo, "left")
        i1[i] = a + np.searchsorted(seg, hi, "left")
    return i0, i1


def _reduce(ufunc: np.ufunc, arr: np.ndarray, i0: np.ndarray, i1: np.ndarray, fill: Any) -> Any:
    out = np.full(i0.shape, fill, dtype=arr.dtype if arr.size else np.float64)
    m = i1 > i0
    if not m.any():
        return out
    ext = np.append(arr, arr[:1] if arr.size else [fill])
    idx = np.empty(2 * int(m.sum()), dtype=np.int64)
    idx[0::2] = i0[m]
    idx[1::2] = i1[m]
    with np.errstate(invalid="ignore", over="ignore"):
        out[m] = ufunc.reduceat(ext, idx)[0::2]
    return out


EXACT_SUM_LIMIT = float(2**53)


def window_stats(sb: SeriesBuckets, i0: np.ndarray, i1: np.ndarray) -> WindowStats:
    bk = sb.buckets
    if not len(bk):
        z = np.zeros(i0.shape)
        return WindowStats(z.astype(np.int64), z + np.nan, z + np.nan, z, z + np.nan, z > 0)
    count = np.concatenate(([0], np.cumsum(bk.count)))
    cnt = count[i1] - count[i0]
    with np.errstate(invalid="ignore", over="ignore"):
        mag = np.fmax(np.abs(bk.min), np.abs(bk.max)) * bk.count
        bound = _reduce(np.add, mag, i0, i1, 0.0)
    all_int = _reduce(np.logical_and, bk.integral, i0, i1, True)
    last = np.where(i1 > i0, bk.last[np.maximum(i1 - 1, 0)], np.nan)
    return WindowStats(
        count=cnt,
        min=_reduce(np.fmin, bk.min, i0, i1, np.nan),
        max=_reduce(np.fmax, bk.max, i0, i1, np.nan),
        sum=_reduce(np.add, bk.sum, i0, i1, 0.0),
        last=last,
        integral=all_int & (bound <= EXACT_SUM_LIMIT),
    )


def bucket_answer(name: str, st: WindowStats) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of an ``*_over_time`` function from whole-bucket window stats."""
    present = st.count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "count_over_time":
            return st.count.astype(np.float64), present
        if name == "min_over_time":
            return st.min, present
        if name == "max_over_time":
            return st.max, present
        if name == "sum_over_time":
            return st.sum, present
        if name == "avg_over_time":
            return st.sum / np.maximum(st.count, 1), present
        if name == "last_over_time":
            return st.last, present
    raise ValueError(f"{name} cannot be answered from rollups")
