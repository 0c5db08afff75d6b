"""An instant selector over series sharing timestamps answers as the general path does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import STALE_NAN, STALE_NAN_BITS
from agent.query import blocks
from agent.query.blocks import RangeData, selector_block
from tests.conftest import range_data_of

VALUES = st.sampled_from([1.0, -2.5, 0.0, np.inf, np.nan, STALE_NAN, 7.0])


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    n=st.integers(64, 90),
    k=st.integers(1, 8),
    steps=st.integers(2, 6),
    lookback=st.sampled_from([1, 15, 40, 300]),
)
def test_shared_path_equals_the_general_one(
    data: st.DataObject, n: int, k: int, steps: int, lookback: int
) -> None:
    times = sorted(data.draw(st.sets(st.integers(0, 200), min_size=k, max_size=k)))
    values = [data.draw(st.lists(VALUES, min_size=k, max_size=k)) for _ in range(n)]
    when = np.array(
        sorted(data.draw(st.lists(st.integers(-20, 260), min_size=steps, max_size=steps)))
    )
    rd = range_data_of([times] * n, values)
    assert rd.shared_times == k
    fast = selector_block(rd, when, lookback)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(blocks, "SHARED_MIN_SERIES", 10**9)
        slow = selector_block(range_data_of([times] * n, values), when, lookback)
    assert fast.labels == slow.labels
    assert np.array_equal(fast.present, slow.present)
    p = fast.present
    assert np.array_equal(fast.values[p].view(np.uint64), slow.values[p].view(np.uint64))
    assert fast.sample_ts is not None and slow.sample_ts is not None
    assert np.array_equal(fast.sample_ts[p], slow.sample_ts[p])
    assert fast.distinct and not fast.drop.any()


def _reference(rd: RangeData, when: np.ndarray, lookback: int) -> tuple[np.ndarray, ...]:
    """The selector as the engine computed it before its shortcuts: (present, values, times)."""
    n, steps = len(rd), len(when)
    pos = np.array(
        [
            [np.searchsorted(rd.t[rd.offsets[i] : rd.offsets[i + 1]], w, "right") for w in when]
            for i in range(n)
        ],
        dtype=np.int64,
    ).reshape(n, steps)
    idx = np.maximum(rd.offsets[:-1, None] + pos - 1, 0)
    has = (pos > 0) & (rd.t[idx] > (when - lookback)[None, :])
    vals = rd.v[idx]
    present = has & (vals.view(np.uint64) != np.uint64(STALE_NAN_BITS))
    return present, vals, rd.t[idx]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 80),
    steps=st.integers(1, 5),
    lookback=st.sampled_from([1, 15, 40, 300]),
    now=st.booleans(),
)
def test_every_path_equals_the_reference(
    data: st.DataObject, n: int, steps: int, lookback: int, now: bool
) -> None:
    """Series with their own times (some with none); ``now``: every step after every sample."""
    times = [sorted(data.draw(st.sets(st.integers(0, 200), max_size=6))) for _ in range(n)]
    values = [data.draw(st.lists(VALUES, min_size=len(t), max_size=len(t))) for t in times]
    lo = 200 if now else -20
    when = np.array(
        sorted(data.draw(st.lists(st.integers(lo, 260), min_size=steps, max_size=steps)))
    )
    rd = range_data_of(times, values)
    if len(rd.t) == 0:
        return  # the engine answers an empty block before asking
    got = selector_block(rd, when, lookback)
    present, vals, ts = _reference(rd, when, lookback)
    rows = np.flatnonzero(present.any(axis=1))
    assert got.labels == [rd.labels[i] for i in rows]
    assert np.array_equal(got.present, present[rows])
    p = got.present
    assert np.array_equal(got.values[p].view(np.uint64), vals[rows][p].view(np.uint64))
    assert got.sample_ts is not None
    assert np.array_equal(got.sample_ts[p], ts[rows][p])
