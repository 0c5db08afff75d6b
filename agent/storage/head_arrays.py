"""Array helpers of the head: searching, splitting and growing its per-series buffers.

Module-level functions of :mod:`agent.storage.head`, apart so the ``Head``
class reads on its own.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from operator import itemgetter, methodcaller
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


SPLIT_VIEWS_BYTES = 1 << 20  # up to this much, times and values stay views of the joined bytes


def _columns_of_pairs(raw: bytes | bytearray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_split` without its two copies: strided views of ``raw`` (which they keep)."""
    pairs = np.frombuffer(raw, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1].view(np.float64)


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
    raw = bytearray().join(bufs)
    if len(raw) <= SPLIT_VIEWS_BYTES:
        t, vals = _columns_of_pairs(raw)
    else:
        t, vals = _split(raw)
    return lens, t, vals


JOIN_SERIES = 4_096  # buffers joined per call in a bulk read (see window_of_buffers)


def window_of_buffers(
    buf: list[array[int] | None], sids: Sequence[int], start: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, times and values in [start, end] of many buffers, concatenated.

    Whole buffers joined and cut by one mask (no Python step per series
    beyond fetching its buffer: each buffer is sorted, so the samples of a
    series inside [start, end] are one run of the mask), unless the window
    holds a small part of long buffers (a query about the last minutes of a
    head holding hours): then only each buffer's last samples are joined
    (:func:`_tails`), or, where those do not reach back to the window's start,
    each buffer is searched (:func:`_cut_buffers`).
    """
    tail = _tail_needed(buf, sids, start, end)
    if tail is not None:
        got = _tails(buf, sids, start, end, tail)
        return got if got is not None else _cut_buffers(buf, sids, start, end)
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
    return _masked(lens, t, vals, start, end)


def _masked(
    lens: np.ndarray, t: np.ndarray, vals: np.ndarray, start: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samples in [start, end] of concatenated sorted runs of ``lens`` samples."""
    keep = (t >= start) & (t <= end)
    bounds = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=bounds[1:])
    idx = np.flatnonzero(keep)
    counts = np.diff(np.searchsorted(idx, bounds))
    return counts, t[idx], vals[idx]


CUT_MIN_SAMPLES = 64  # buffers this long on average may be cut before they are joined
CUT_MAX_SHARE = 0.25  # ... when the window holds at most this share of their samples
_PROBES = 8  # buffers looked at to decide


def _tail_needed(
    buf: list[array[int] | None], sids: Sequence[int], start: int, end: int
) -> int | None:
    """Samples to take from each buffer's end, when a few buffers (spread over ``sids``)
    are long and the window holds a small share of them; None to join them whole.

    With two hours of head at 15 s (480 samples a series), a 1-minute
    ``rate()`` at "now" needs 5 of them: joining whole buffers copied and
    masked 100 times the samples used (10,000 series: 56 ms instead of 6 ms
    for ``sum(rate(cpu[1m]))``). The tail is twice the most any probed buffer
    holds in the window, and more where the window ends before a buffer does.
    """
    probes = [a for a in map(buf.__getitem__, sids[:: max(1, len(sids) // _PROBES)]) if a]
    held = sum(map(len, probes)) // 2
    if held < CUT_MIN_SAMPLES * max(1, len(probes)):
        return None  # short buffers (a young head): joined whole, nothing searched
    inside = most = 0
    for a in probes:
        ts = memoryview(a)[::2]
        hi = bisect_right(ts, end)
        n = hi - bisect_left(ts, start, 0, hi)
        inside += n
        most = max(most, n + len(ts) - hi)  # what lies after the window comes too
    if inside > CUT_MAX_SHARE * held:
        return None
    return 2 * most + 2


def _tails(
    buf: list[array[int] | None], sids: Sequence[int], start: int, end: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`window_of_buffers` from the last ``k`` samples of each buffer, or None
    where some buffer's window reaches further back than that.

    The slices, their lengths and the join run in C (``map``), with no Python
    step per series: ~0.15 us a series against ~1.1 us for a search in each.
    """
    n = len(sids)
    got: tuple[array[int] | None, ...] = (
        itemgetter(*sids)(buf) if n > 1 else tuple(buf[s] for s in sids)
    )
    try:  # len(None) fails: cheaper than looking for None first
        bufs = cast("list[array[int]]", got)
        held = np.fromiter(map(len, bufs), dtype=np.int64, count=n) // 2
    except TypeError:
        bufs = [b or NO_SAMPLES for b in got]
        held = np.fromiter(map(len, bufs), dtype=np.int64, count=n) // 2
    last = methodcaller("__getitem__", slice(-2 * k, None))
    tails = list(map(last, bufs))
    lens = np.fromiter(map(len, tails), dtype=np.int64, count=n) // 2
    t, vals = _split(bytearray().join(tails))
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=first[1:])
    cut = lens < held  # buffers whose older samples were left out
    if cut.any() and bool((t[first[:-1][cut]] >= start).any()):
        return None  # the window may begin before the tail: search those buffers instead
    return _masked(lens, t, vals, start, end)


def _cut_buffers(
    buf: list[array[int] | None], sids: Sequence[int], start: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`window_of_buffers` by a search in each buffer (on a view of its timestamps,
    galloping back from the newest sample, then bisecting in C) and one join of the
    parts inside: ~1 us a series, whatever the head holds.

    The views pin the buffers (an append would fail) only until the join: the
    caller holds the head's lock, or is the event loop, which alone appends.
    """
    counts: list[int] = []
    parts: list[memoryview] = []
    for sid in sids:
        a = buf[sid]
        if not a or a[0] > end or a[-2] < start:
            counts.append(0)
            continue
        whole = memoryview(a)
        ts = whole[::2]
        n = len(ts)
        lo = 0
        if a[0] < start:  # gallop back from the end, where a query about "now" starts
            k = 1
            while k <= n and ts[n - k] >= start:
                k *= 2
            lo = bisect_left(ts, start, max(0, n - k), n - k // 2)
        hi = n if a[-2] <= end else bisect_right(ts, end, lo)
        counts.append(hi - lo)
        parts.append(whole[2 * lo : 2 * hi])
    raw = bytearray().join(parts)
    parts.clear()
    t, vals = _split(raw)
    return np.array(counts, dtype=np.int64), t, vals
