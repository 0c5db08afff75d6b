"""Array helpers of the head: searching, splitting and growing its per-series buffers.

Module-level functions of :mod:`agent.storage.head`, apart so the ``Head``
class reads on its own.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from operator import itemgetter
from typing import cast

import numpy as np

INT64_MIN = int(np.iinfo(np.int64).min)
# The array object plus its over-allocation, per series that holds head data.


def _grow(a: np.ndarray, size: int, fill: int) -> np.ndarray:
    out = np.full(size, fill, dtype=a.dtype)
    out[: a.size] = a
    return out


def _bisect_t(a: array[int], t: int, side: str) -> int:
    """Position of ``t`` among the timestamps (even slots) of an interleaved buffer."""
    lo, hi = 0, len(a) // 2
    if side == "left":
        while lo < hi:
            mid = (lo + hi) // 2
            if a[2 * mid] < t:
                lo = mid + 1
            else:
                hi = mid
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if t < a[2 * mid]:
                hi = mid
            else:
                lo = mid + 1
    return lo


def _split(raw: bytes | bytearray) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved (t, bits) bytes -> contiguous int64 timestamps and float64 values."""
    pairs = np.frombuffer(raw, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]).view(np.float64)


def _columns(a: array[int]) -> tuple[np.ndarray, np.ndarray]:
    t, vals = _split(a.tobytes())
    return t, vals.view(np.uint64)


def _reject(
    out: list[tuple[int, int, str]], mask: np.ndarray, sids: np.ndarray, ts: np.ndarray, reason: str
) -> None:
    if mask.any():
        out.extend(
            (s, t, reason) for s, t in zip(sids[mask].tolist(), ts[mask].tolist(), strict=True)
        )


def _runs(sids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique ids, run starts, run ends) of a sorted id array."""
    if sids.size == 0:
        return sids, sids, sids
    brk = np.flatnonzero(sids[1:] != sids[:-1]) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [sids.size]))
    return sids[starts], starts, ends


NO_SAMPLES: array[int] = array("q")


def joined_buffers(
    buf: list[array[int] | None], sids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample counts, times and values of whole head buffers, in ``sids`` order."""
    if len(sids) < 2:  # itemgetter of one returns the item, of none fails
        got: tuple[array[int] | None, ...] = tuple(buf[sid] for sid in sids)
    else:  # itemgetter fetches them in C: a Python step each cost as much as the join
        got = itemgetter(*sids)(buf)
    try:  # len(None) fails: cheaper than looking for None first (an == per buffer)
        bufs = cast("list[array[int]]", got)
        lens = np.fromiter(map(len, bufs), dtype=np.int64, count=len(bufs)) // 2
    except TypeError:
        bufs = [b or NO_SAMPLES for b in got]
        lens = np.fromiter(map(len, bufs), dtype=np.int64, count=len(bufs)) // 2
    t, vals = _split(bytearray().join(bufs))
    return lens, t, vals


JOIN_SERIES = 4_096  # buffers joined per call in a bulk read (see window_of_buffers)


def window_of_buffers(
    buf: list[array[int] | None], sids: Sequence[int], start: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, times and values in [start, end] of many whole buffers, joined, cut by one mask.

    No Python step per series beyond fetching its buffer: each buffer is
    sorted, so the samples of a series inside [start, end] are one run of
    the mask.
    """
    if len(sids) <= JOIN_SERIES:
        lens, t, vals = joined_buffers(buf, sids)
    else:
        # bytes.join holds the interpreter lock for its whole copy (16 MB for
        # 52,000 series of 20 samples: 7 ms in which the event loop, which
        # acknowledges writes, cannot run): join a few thousand at a time.
        parts = [
            joined_buffers(buf, sids[a : a + JOIN_SERIES]) for a in range(0, len(sids), JOIN_SERIES)
        ]
        lens = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
        vals = np.concatenate([p[2] for p in parts])
    if not t.size or (t.min() >= start and t.max() <= end):  # the usual instant query
        return lens, t, vals
    keep = (t >= start) & (t <= end)
    bounds = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=bounds[1:])
    idx = np.flatnonzero(keep)
    counts = np.diff(np.searchsorted(idx, bounds))
    return counts, t[idx], vals[idx]
