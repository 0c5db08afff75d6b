"""Functions over range vectors (``rate``, ``*_over_time``, ``deriv``, ...).

Each function receives all windows of all series at once: ``lo``/``hi`` are
``(series, steps)`` arrays of global sample indices (see
:func:`agent.query.blocks.search_windows`).  Simple reductions use
``ufunc.reduceat`` or prefix sums; order-dependent ones (Kahan sums, Welford,
smoothing) iterate over the *position inside the window*, vectorised across
every window, so the Python loop runs ``max(window length)`` times rather than
once per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from agent.query.blocks import SHARED_MIN_SERIES, RangeData
from agent.query.errors import ExecutionError
from agent.query.limits import checkpoint

Arr = np.ndarray


def kahan_inc(inc: Arr, s: Arr, c: Arr) -> tuple[Arr, Arr]:
    """Prometheus's Kahan-Neumaier increment, elementwise."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = s + inc
        big = np.abs(s) >= np.abs(inc)
        c = np.where(np.isinf(t), 0.0, c + np.where(big, (s - t) + inc, (inc - t) + s))
    return t, c


def _positions(lo: Arr, hi: Arr, start: int = 0) -> Iterator[tuple[int, Arr, Arr]]:
    """Yield ``(j, mask, index)`` for the j-th sample of every window that has one."""
    cnt = hi - lo
    top = int(cnt.max()) if cnt.size else 0
    for j in range(start, top):
        if j & 63 == 0:
            checkpoint()  # a window of millions of samples loops as long: stay interruptible
        mask = cnt > j
        yield j, mask, np.where(mask, lo + j, 0)


def _reduceat(ufunc: np.ufunc, arr: Arr, lo: Arr, hi: Arr, fill: float) -> Arr:
    out = np.full(lo.shape, fill, dtype=np.float64)
    m = hi > lo
    if not m.any():
        return out
    ext = np.append(arr, 0.0)
    idx = np.empty(2 * int(m.sum()), dtype=np.int64)
    idx[0::2] = lo[m]
    idx[1::2] = hi[m]
    with np.errstate(invalid="ignore", over="ignore"):
        out[m] = ufunc.reduceat(ext, idx)[0::2]
    return out


def _pair_flags(data: RangeData, flag: Arr) -> Arr:
    """Prefix sums of a per-sample flag that compares a sample with its predecessor.

    ``flag[k]`` describes the pair ``(k-1, k)``; pairs crossing a series boundary
    are zeroed so that windows never count them.
    """
    f = np.zeros(len(data.v), dtype=np.float64)
    if len(f) > 1:
        f[1:] = flag
        starts = data.offsets[:-1]
        f[starts[starts < len(f)]] = 0.0
    return np.concatenate([[0.0], np.cumsum(f)])


def _inner_pairs(prefix: Arr, lo: Arr, hi: Arr) -> Arr:
    """Sum of the pair flags for pairs entirely inside each window."""
    a = np.minimum(lo + 1, hi)
    return prefix[hi] - prefix[a]


def extrapolated_rate(
    data: RangeData, lo: Arr, hi: Arr, ends: Arr, range_ms: int, counter: bool, rate: bool
) -> tuple[Arr, Arr]:
    """Prometheus's ``extrapolatedRate`` for every window: ``(value, ok)``.

    The same operations in the same order as Prometheus (so the same bits),
    written with in-place numpy steps: with 52,000 series x 16 steps each
    temporary array is 6.6 MB, and allocating a fresh one per step cost a
    third of the function's time. Counter resets are looked for among the
    samples first; most windows have none.
    """
    v, t = data.v, data.t
    if len(data) >= SHARED_MIN_SERIES and (k := data.shared_times) is not None:
        done = _rate_shared_times(data, k, lo, hi, ends, range_ms, counter, rate)
        if done is not None:
            return done
    cnt = hi - lo
    ok = cnt >= 2
    if len(v) == 0:
        return np.zeros(lo.shape), ok
    first_i = np.where(ok, lo, 0)
    last_i = np.where(ok, hi - 1, 0)
    first, last = v.take(first_i), v.take(last_i)
    first_t, last_t = t.take(first_i), t.take(last_i)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        result = last - first
        if counter:
            below = v[1:] < v[:-1]  # below[k-1]: sample k is below sample k-1
            inner = data.offsets[1:-1]
            below[inner[(inner > 0) & (inner < len(v))] - 1] = False  # not across series
            drops = np.flatnonzero(below) + 1
            if drops.size:
                resets = np.zeros(len(v))
                resets[drops] = v[drops - 1]
                result += _reduceat(np.add, resets, np.minimum(lo + 1, hi), hi, 0.0)
            else:
                result += 0.0  # what adding no corrections gives (-0.0 -> 0.0)
        tmp = np.empty(lo.shape, dtype=np.int64)
        to_start = np.subtract(first_t, (ends - range_ms)[None, :], out=tmp) / 1000.0
        to_end = np.subtract(ends[None, :], last_t, out=tmp) / 1000.0
        sampled = np.subtract(last_t, first_t, out=tmp) / 1000.0
        np.subtract(cnt, 1, out=tmp)
        np.maximum(tmp, 1, out=tmp)
        avg = sampled / tmp
        threshold = avg * 1.1
        half = avg
        half /= 2  # avg is not needed after this
        np.copyto(to_start, half, where=to_start >= threshold)
        if counter:
            to_zero = first / result
            to_zero *= sampled
            np.copyto(to_start, to_zero, where=(to_zero < to_start) & (result > 0) & (first >= 0))
        np.copyto(to_end, half, where=to_end >= threshold)
        _scale(result, sampled, to_start, to_end, range_ms, rate)
    return result, ok


def _scale(
    result: Arr, sampled: Arr, to_start: Arr, to_end: Arr, range_ms: int, rate: bool
) -> None:
    """``result *= (sampled + to_start + to_end) / sampled`` (``/ range`` for a rate), in place.

    Prometheus's order of operations; ``to_start`` (one row per series) is
    overwritten.
    """
    factor = np.add(sampled, to_start, out=to_start)
    factor += to_end
    factor /= sampled
    if rate:
        factor /= range_ms / 1000.0
    result *= factor


def _rate_shared_times(
    data: RangeData,
    k: int,
    lo: Arr,
    hi: Arr,
    ends: Arr,
    range_ms: int,
    counter: bool,
    rate: bool,
) -> tuple[Arr, Arr] | None:
    """:func:`extrapolated_rate` when every series has the same ``k`` timestamps.

    The windows then hold the same positions in every series, so the times
    (durations to the window's edges, the average interval, the threshold)
    are worked out once per step; per series and step only the values remain.
    Each element sees the same operations on the same operands as in the
    general path, so the bits are the same. None (the general path) when a
    counter resets somewhere.
    """
    n = lo.shape[0]
    v = data.v
    below = v[1:] < v[:-1]
    if counter and below.any():
        inner = data.offsets[1:-1]
        below[inner[(inner > 0) & (inner < len(v))] - 1] = False
        if below.any():
            return None
    base = int(data.offsets[0])
    lo0, hi0 = lo[0] - base, hi[0] - base
    cnt0 = hi0 - lo0
    ok0 = cnt0 >= 2
    f0 = np.where(ok0, lo0, 0)
    l0 = np.where(ok0, hi0 - 1, 0)
    rows = v.reshape(n, k)
    first, last = rows.take(f0, axis=1), rows.take(l0, axis=1)
    row_t = data.t[:k]
    first_t, last_t = row_t[f0], row_t[l0]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        result = last - first
        if counter:
            result += 0.0  # what adding no corrections gives (-0.0 -> 0.0)
        to_start = (first_t - (ends - range_ms)) / 1000.0
        to_end = (ends - last_t) / 1000.0
        sampled = (last_t - first_t) / 1000.0
        avg = sampled / np.maximum(cnt0 - 1, 1)
        threshold = avg * 1.1
        to_start = np.where(to_start >= threshold, avg / 2, to_start)
        to_end = np.where(to_end >= threshold, avg / 2, to_end)
        if counter:
            to_zero = first / result
            to_zero *= sampled
            starts = np.repeat(to_start[None, :], n, axis=0)
            np.copyto(starts, to_zero, where=(to_zero < starts) & (result > 0) & (first >= 0))
            _scale(result, sampled, starts, to_end, range_ms, rate)
        else:
            shared = (sampled + to_start + to_end) / sampled
            if rate:
                shared = shared / (range_ms / 1000.0)
            result *= shared
    return result, np.repeat(ok0[None, :], n, axis=0)


def instant_value(data: RangeData, lo: Arr, hi: Arr, rate: bool) -> tuple[Arr, Arr]:
    ok = (hi - lo) >= 2
    if len(data.v) == 0:
        return np.zeros(lo.shape), ok
    i1 = np.where(ok, hi - 1, 0)
    i0 = np.where(ok, hi - 2, 0)
    v1, v0 = data.v[i1], data.v[i0]
    dt = data.t[i1] - data.t[i0]
    ok = ok & (dt != 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        res = v1 - v0
        if rate:
            res = np.where(v1 < v0, v1, res) / (dt / 1000.0)
    return res, ok


def sum_over_time(data: RangeData, lo: Arr, hi: Arr) -> Arr:
    s = np.zeros(lo.shape)
    c = np.zeros(lo.shape)
    for _, mask, idx in _positions(lo, hi):
        ns, nc = kahan_inc(data.v[idx], s, c)
        s = np.where(mask, ns, s)
        c = np.where(mask, nc, c)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(s), s, s + c)


def avg_over_time(data: RangeData, lo: Arr, hi: Arr) -> Arr:
    shape = lo.shape
    if len(data.v) == 0:
        return np.zeros(shape)
    s = data.v[np.where(hi > lo, lo, 0)].astype(np.float64)
    c = np.zeros(shape)
    mean = np.zeros(shape)
    incr = np.zeros(shape, dtype=bool)
    count = np.ones(shape)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for j, mask, idx in _positions(lo, hi, start=1):
            f = data.v[idx]
            cnt = float(j + 1)
            ns, nc = kahan_inc(f, s, c)
            switch = mask & ~incr & np.isinf(ns)
            stay = mask & ~incr & ~np.isinf(ns)
            s = np.where(stay, ns, s)
            c = np.where(stay, nc, c)
            mean = np.where(switch, s / (cnt - 1), mean)
            c = np.where(switch, c / (cnt - 1), c)
            incr = incr | switch
            q = (cnt - 1) / cnt
            nm, nc2 = kahan_inc(f / cnt, q * mean, q * c)
            upd = mask & incr
            mean = np.where(upd, nm, mean)
            c = np.where(upd, nc2, c)
            count = np.where(mask, cnt, count)
        return np.where(incr, mean + c, s / count + c / count)


def variance_over_time(data: RangeData, lo: Arr, hi: Arr) -> Arr:
    shape = lo.shape
    count = np.zeros(shape)
    mean, cmean = np.zeros(shape), np.zeros(shape)
    aux, caux = np.zeros(shape), np.zeros(shape)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for _, mask, idx in _positions(lo, hi):
            f = data.v[idx]
            cnt = count + 1
            delta = f - (mean + cmean)
            nm, ncm = kahan_inc(delta / cnt, mean, cmean)
            na, nca = kahan_inc(delta * (f - (nm + ncm)), aux, caux)
            count = np.where(mask, cnt, count)
            mean, cmean = np.where(mask, nm, mean), np.where(mask, ncm, cmean)
            aux, caux = np.where(mask, na, aux), np.where(mask, nca, caux)
        return (aux + caux) / count


def linear_regression(data: RangeData, lo: Arr, hi: Arr, intercept_t: Arr) -> tuple[Arr, Arr]:
    """Least-squares slope and intercept at ``intercept_t`` (shape ``(series, steps)``)."""
    shape = lo.shape
    n = np.zeros(shape)
    sx, cx, sy, cy = (np.zeros(shape) for _ in range(4))
    sxy, cxy, sx2, cx2 = (np.zeros(shape) for _ in range(4))
    init_y = data.v[np.where(hi > lo, lo, 0)] if len(data.v) else np.zeros(shape)
    const_y = np.ones(shape, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for _, mask, idx in _positions(lo, hi):
            y = data.v[idx]
            x = (data.t[idx] - intercept_t) / 1e3
            const_y &= ~mask | (y == init_y)
            n = np.where(mask, n + 1, n)
            for acc, comp, inc in ((0, 1, x), (2, 3, y), (4, 5, x * y), (6, 7, x * x)):
                pair = [sx, cx, sy, cy, sxy, cxy, sx2, cx2]
                ns, nc = kahan_inc(inc, pair[acc], pair[comp])
                pair[acc] = np.where(mask, ns, pair[acc])
                pair[comp] = np.where(mask, nc, pair[comp])
                sx, cx, sy, cy, sxy, cxy, sx2, cx2 = pair
        sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
        cov = sxy - sx * sy / n
        varx = sx2 - sx * sx / n
        slope = cov / varx
        intercept = sy / n - slope * sx / n
        inf_y = np.isinf(init_y)
        slope = np.where(const_y, np.where(inf_y, np.nan, 0.0), slope)
        intercept = np.where(const_y, np.where(inf_y, np.nan, init_y), intercept)
    return slope, intercept


def extreme_over_time(data: RangeData, lo: Arr, hi: Arr, want_max: bool) -> Arr:
    return _reduceat(np.fmax if want_max else np.fmin, data.v, lo, hi, np.nan)


def ts_of_extreme(data: RangeData, lo: Arr, hi: Arr, want_max: bool) -> Arr:
    best = np.full(lo.shape, np.nan)
    best_t = np.zeros(lo.shape)
    with np.errstate(invalid="ignore"):
        for j, mask, idx in _positions(lo, hi):
            f = data.v[idx]
            better = (f >= best) if want_max else (f <= best)
            take = mask & ((j == 0) | better | np.isnan(best))
            best = np.where(take, f, best)
            best_t = np.where(take, data.t[idx] / 1000.0, best_t)
    return best_t


def changes_or_resets(data: RangeData, lo: Arr, hi: Arr, resets: bool) -> Arr:
    v = data.v
    if len(v) < 2:
        return np.zeros(lo.shape)
    with np.errstate(invalid="ignore"):
        if resets:
            flag = (v[1:] < v[:-1]).astype(np.float64)
        else:
            flag = ((v[1:] != v[:-1]) & ~(np.isnan(v[1:]) & np.isnan(v[:-1]))).astype(np.float64)
    return _inner_pairs(_pair_flags(data, flag), lo, hi)


def quantile_values(q: float, values: Arr) -> float:
    """Prometheus's ``quantile``: NaN sorts first, linear interpolation between ranks."""
    if len(values) == 0 or np.isnan(q):
        return float("nan")
    if q < 0:
        return float("-inf")
    if q > 1:
        return float("inf")
    nan = np.isnan(values)
    ordered = np.concatenate([values[nan], np.sort(values[~nan])])
    n = len(ordered)
    rank = q * (n - 1)
    lower = max(0, int(np.floor(rank)))
    upper = min(n - 1, lower + 1)
    weight = rank - np.floor(rank)
    return float(ordered[lower] * (1 - weight) + ordered[upper] * weight)


def per_window(data: RangeData, lo: Arr, hi: Arr, fn: Callable[[Arr, int], float]) -> Arr:
    """Apply ``fn(values, step)`` to each non-empty window (for sort-based functions)."""
    out = np.full(lo.shape, np.nan)
    rows, cols = np.nonzero(hi > lo)
    for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if k & 255 == 0:
            checkpoint()  # one sort per window: quantile_over_time(...[2d]) can take minutes
        out[r, c] = fn(data.v[lo[r, c] : hi[r, c]], c)
    return out


def quantile_over_time(data: RangeData, lo: Arr, hi: Arr, qs: Arr) -> Arr:
    return per_window(data, lo, hi, lambda vals, step: quantile_values(float(qs[step]), vals))


def mad_over_time(data: RangeData, lo: Arr, hi: Arr) -> Arr:
    def mad(vals: Arr, _step: int) -> float:
        if np.isnan(vals).any():
            return float("nan")
        median = quantile_values(0.5, vals)
        return quantile_values(0.5, np.abs(vals - median))

    with np.errstate(invalid="ignore"):
        return per_window(data, lo, hi, mad)


def double_exponential_smoothing(
    data: RangeData, lo: Arr, hi: Arr, sf: Arr, tf: Arr
) -> tuple[Arr, Arr]:
    bad_sf = (sf <= 0) | (sf >= 1)
    bad_tf = (tf <= 0) | (tf >= 1)
    ok = (hi - lo) >= 2
    used = ok.any(axis=0) if ok.size else np.zeros(len(sf), dtype=bool)
    if (bad_sf & used).any():
        raise ExecutionError(
            f"invalid smoothing factor. Expected: 0 < sf < 1, got: {sf[bad_sf & used][0]:f}"
        )
    if (bad_tf & used).any():
        raise ExecutionError(
            f"invalid trend factor. Expected: 0 < tf < 1, got: {tf[bad_tf & used][0]:f}"
        )
    if len(data.v) == 0:
        return np.zeros(lo.shape), ok
    sfb, tfb = sf[None, :], tf[None, :]
    s1 = data.v[np.where(ok, lo, 0)]
    b = data.v[np.where(ok, lo + 1, 0)] - s1
    s0 = np.zeros(lo.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for j, mask, idx in _positions(lo, hi, start=1):
            x = sfb * data.v[idx]
            if j > 1:
                b = np.where(mask, tfb * (s1 - s0) + (1 - tfb) * b, b)
            y = (1 - sfb) * (s1 + b)
            s0, s1 = np.where(mask, s1, s0), np.where(mask, x + y, s1)
    return s1, ok
