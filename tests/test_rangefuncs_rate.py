"""``extrapolated_rate`` (rate, increase, delta over every window at once) against Prometheus.

The reference is Prometheus's ``extrapolatedRate`` written out per window, as
in ``promql/functions.go``. Without counter resets the vectorised function
must give the same bits; with resets, Prometheus adds each reset in turn while
the vectorised function adds their sum, so the two may differ in the last bits.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.query.blocks import RangeData, search_upto, search_windows
from agent.query.rangefuncs import extrapolated_rate
from tests.conftest import range_data_of


def reference(
    t: list[int], v: list[float], end: int, range_ms: int, counter: bool, rate: bool
) -> float | None:
    if len(v) < 2:
        return None
    result = v[-1] - v[0]
    if counter:
        for prev, cur in itertools.pairwise(v):
            if cur < prev:
                result += prev
    to_start = (t[0] - (end - range_ms)) / 1000.0
    to_end = (end - t[-1]) / 1000.0
    sampled = (t[-1] - t[0]) / 1000.0
    avg = sampled / (len(v) - 1)
    if to_start >= avg * 1.1:
        to_start = avg / 2
    if counter and result > 0 and v[0] >= 0:
        to_zero = sampled * (v[0] / result)
        if to_zero < to_start:
            to_start = to_zero
    if to_end >= avg * 1.1:
        to_end = avg / 2
    factor = (sampled + to_start + to_end) / sampled
    if rate:
        factor /= range_ms / 1000.0
    return result * factor


SERIES = st.lists(
    st.lists(
        st.tuples(st.integers(0, 300_000), st.floats(-1e6, 1e6, allow_nan=False)),
        max_size=12,
        unique_by=lambda p: p[0],
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(
    series=SERIES,
    range_ms=st.sampled_from([15_000, 60_000, 120_000, 300_000]),
    kind=st.sampled_from(["rate", "increase", "delta"]),
    monotonic=st.booleans(),
)
def test_matches_prometheus(
    series: list[list[tuple[int, float]]], range_ms: int, kind: str, monotonic: bool
) -> None:
    counter, rate = kind != "delta", kind == "rate"
    ts, vs = [], []
    for pts in series:
        pts = sorted(pts)
        t = [p[0] for p in pts]
        v = [p[1] for p in pts]
        if monotonic:
            v = sorted(abs(x) for x in v)
        ts.append(t)
        vs.append(v)
    data = range_data_of(ts, vs)
    ends = np.arange(0, 330_000, 15_000, dtype=np.int64)
    lo, hi = search_windows(data, ends - range_ms, ends)
    got, ok = extrapolated_rate(data, lo, hi, ends, range_ms, counter, rate)
    for i, (t, v) in enumerate(zip(ts, vs, strict=True)):
        for j, end in enumerate(ends.tolist()):
            inside = [k for k, x in enumerate(t) if end - range_ms < x <= end]
            want = reference(
                [t[k] for k in inside], [v[k] for k in inside], end, range_ms, counter, rate
            )
            assert bool(ok[i, j]) == (want is not None)
            if want is None:
                continue
            window = [v[k] for k in inside]
            resets = counter and any(b < a for a, b in itertools.pairwise(window))
            if resets:
                assert np.isclose(got[i, j], want, rtol=1e-9, atol=1e-9, equal_nan=True)
            else:
                assert np.array_equal(got[i, j], want, equal_nan=True), (got[i, j], want)


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.integers(0, 300_000), min_size=1, max_size=12, unique=True),
    seed=st.integers(0, 2**32 - 1),
    range_ms=st.sampled_from([15_000, 60_000, 120_000, 300_000]),
    kind=st.sampled_from(["rate", "increase", "delta"]),
    resets=st.booleans(),
)
def test_shared_timestamps_give_the_same_bits(
    times: list[int], seed: int, range_ms: int, kind: str, resets: bool
) -> None:
    """70 series with the same timestamps: the shared-times path equals the general one."""
    from agent.query import blocks, rangefuncs

    counter, rate = kind != "delta", kind == "rate"
    n, k = 70, len(times)
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.random((n, k)) * 10, axis=1) - rng.random((n, 1)) * 5
    if resets:
        values[::7, k // 2 :] -= 1e3  # some series drop: the general path takes over
    data = RangeData(
        [(("i", str(i)),) for i in range(n)],
        np.zeros(n, dtype=bool),
        np.arange(n + 1, dtype=np.int64) * k,
        np.tile(np.array(sorted(times), dtype=np.int64), n),
        values.ravel(),
    )
    assert data.shared_times == k
    ends = np.arange(0, 330_000, 15_000, dtype=np.int64)
    lo, hi = search_windows(data, ends - range_ms, ends)
    got, ok = extrapolated_rate(data, lo, hi, ends, range_ms, counter, rate)
    real = blocks.SHARED_MIN_SERIES
    try:
        blocks.SHARED_MIN_SERIES = rangefuncs.SHARED_MIN_SERIES = 10**9  # the general path
        lo2, hi2 = search_windows(data, ends - range_ms, ends)
        want, ok2 = extrapolated_rate(data, lo2, hi2, ends, range_ms, counter, rate)
    finally:
        blocks.SHARED_MIN_SERIES = rangefuncs.SHARED_MIN_SERIES = real
    assert lo.tolist() == lo2.tolist() and hi.tolist() == hi2.tolist()
    assert search_upto(data, ends).tolist() == hi2.tolist()  # the shared path of search_upto
    assert ok.tolist() == ok2.tolist()
    same = (got.view(np.int64) == want.view(np.int64)) | (np.isnan(got) & np.isnan(want))
    assert same[ok].all()


def test_shared_times_needs_every_series_alike() -> None:
    t = np.tile(np.array([0, 15_000, 30_000], dtype=np.int64), 3)
    offsets = np.array([0, 3, 6, 9], dtype=np.int64)
    labels = [(("i", str(i)),) for i in range(3)]
    alike = RangeData(labels, np.zeros(3, dtype=bool), offsets, t, np.zeros(9))
    assert alike.shared_times == 3
    t2 = t.copy()
    t2[7] += 1
    assert RangeData(labels, np.zeros(3, dtype=bool), offsets, t2, np.zeros(9)).shared_times is None
    uneven = np.array([0, 2, 6, 9], dtype=np.int64)
    assert RangeData(labels, np.zeros(3, dtype=bool), uneven, t, np.zeros(9)).shared_times is None
