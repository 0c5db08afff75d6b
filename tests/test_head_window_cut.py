"""Reading a window of long head buffers from their tails, or by searching each, equals
joining them whole."""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.storage import head_arrays
from agent.storage.head_arrays import window_of_buffers
from tests.conftest import open_store


def _buffers(lengths: list[int], step: int, seed: int) -> list[array[int] | None]:
    rng = np.random.default_rng(seed)
    out: list[array[int] | None] = [None]
    for n in lengths:
        if n == 0:
            out.append(None if rng.random() < 0.5 else array("q"))
            continue
        t = np.cumsum(rng.integers(1, 2 * step, n)) + 1_000
        pairs = np.empty((n, 2), dtype=np.int64)
        pairs[:, 0] = t
        pairs[:, 1] = rng.integers(-(2**62), 2**62, n)
        out.append(array("q", pairs.ravel().tolist()))
    return out


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
    lo=st.integers(-100, 5_000),
    width=st.integers(0, 6_000),
    order=st.randoms(use_true_random=False),
    k=st.integers(1, 40),
)
def test_tails_and_cut_equal_whole(
    lengths: list[int], seed: int, lo: int, width: int, order: object, k: int
) -> None:
    buf = _buffers(lengths, 10, seed)
    sids = list(range(1, len(buf)))
    order.shuffle(sids)  # type: ignore[attr-defined]
    start, end = lo, lo + width
    with pytest.MonkeyPatch.context() as m:
        m.setattr(head_arrays, "_tail_needed", lambda *a: None)
        whole = window_of_buffers(buf, sids, start, end)
    tails = head_arrays._tails(buf, sids, start, end, k)
    for got in (head_arrays._cut_buffers(buf, sids, start, end), tails):
        if got is None:  # some window reaches back past k samples: the caller searches
            continue
        for a, b in zip(got, whole, strict=True):
            assert a.dtype == b.dtype
            assert a.view(np.uint64).tolist() == b.view(np.uint64).tolist()
    assert window_of_buffers(buf, sids, start, end)[0].tolist() == whole[0].tolist()


def _scraped(series: int, samples: int) -> list[array[int] | None]:
    """Series scraped together every 15 s (a second apart), up to the same moment."""
    out: list[array[int] | None] = [None]
    for i in range(series):
        t = np.arange(samples, dtype=np.int64) * 15_000 + i * 1_000
        out.append(array("q", np.stack([t, t]).T.ravel().tolist()))
    return out


def test_long_buffers_and_a_short_window_are_cut() -> None:
    """Two hours at 15 s and a 1-minute window: the tails; twenty samples: joined whole."""
    long = _scraped(100, 480)
    sids = list(range(1, 101))
    t_last = max(a[-2] for a in long if a)
    k = head_arrays._tail_needed(long, sids, t_last - 60_000, t_last)
    assert k is not None and k < 30
    assert head_arrays._tails(long, sids, t_last - 60_000, t_last, k) is not None
    assert head_arrays._tail_needed(long, sids, 0, t_last) is None
    short = _scraped(100, 20)
    assert head_arrays._tail_needed(short, sids, t_last - 60_000, t_last) is None


async def test_queries_over_a_long_head_answer_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries about the last minutes of a head holding 300 samples a series: the same
    bytes whether the head's buffers are read from their tails or joined whole."""
    from agent.query.service import QueryService

    store = await open_store(tmp_path, block_size=10_000, flush_age_ms=10 * 3_600_000)
    ids = np.array(
        await store.get_or_create_series([(("__name__", "c"), ("i", str(i))) for i in range(80)])
    )
    t0 = 1_700_000_000_000
    for r in range(300):
        await store.append(ids, np.full(80, t0 + r * 15_000), np.arange(80) * 1.0 + r)
    service = QueryService(store)
    last = t0 + 299 * 15_000
    tails_taken: list[int] = []
    real = head_arrays._tail_needed

    def counted(*args: object) -> int | None:
        k = real(*args)  # type: ignore[arg-type]
        if k is not None:
            tails_taken.append(k)
        return k

    monkeypatch.setattr(head_arrays, "_tail_needed", counted)
    try:
        for q in ("sum(rate(c[1m]))", "rate(c[2m])", "c", "max_over_time(c[10m])"):
            for at in (last + 1, last - 30_000, t0 + 100 * 15_000):
                answers = []
                for tails in (True, False):
                    with pytest.MonkeyPatch.context() as m:
                        if not tails:
                            m.setattr(head_arrays, "_tail_needed", lambda *a: None)
                        inst = await service.instant(q, at, cache="off", encode_json=True)
                        rng = await service.range(
                            q, at - 600_000, at, 60_000, cache="off", encode_json=True
                        )
                        answers.append((inst.data_json(), rng.data_json()))
                assert answers[0] == answers[1], (q, at)
                assert b'"result":[{' in answers[0][1]  # samples were there to answer
        assert tails_taken
    finally:
        service.close()
        await store.close()
