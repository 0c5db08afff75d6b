"""Small queries answer on the event loop, big ones in a worker (``agent.query.inline``).

Whichever way a query runs, its answer must be the same bytes; what differs is
where the evaluation happens: a query over few series and points on the loop,
one that proves bigger (series matched, samples loaded, points allocated, a
range function rollups might answer) starts over in a worker thread, where it
still lets writes go first.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model import Matcher
from agent.query import inline, limits
from agent.query.blocks import RangeData, search_upto, search_windows
from agent.query.inline import InlineBudget, InlineRollups, TooBigInline
from agent.query.limits import WRITES
from agent.query.queryable import MemoryQueryable
from agent.query.service import QueryService, encode_data
from agent.storage import Store
from tests.conftest import open_store


class _Threads(MemoryQueryable):
    """Records the thread of every read."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    async def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> Any:
        self.threads.append(threading.get_ident())
        return await super().select(matchers, start_ms, end_ms)


def _memory(series: int) -> _Threads:
    mem = _Threads()
    for i in range(series):
        mem.add({"__name__": "up", "i": f"{i:04d}"}, [0, 15_000, 30_000], [1.0, i, 2.5 * i])
    return mem


async def _both(service: QueryService, expr: str, *, step: int = 0) -> tuple[bytes, bytes]:
    """The answer evaluated inline and in a worker, as API JSON."""
    out = []
    for inline_on in (True, False):
        service.inline = inline_on
        if step:
            answer = await service.range(expr, 0, 30_000, step, cache="off")
        else:
            answer = await service.instant(expr, 30_000, cache="off")
        out.append(encode_data(answer.result))
    service.inline = True
    return out[0], out[1]


async def test_small_queries_run_on_the_loop_with_the_same_answer() -> None:
    mem = _memory(5)
    service = QueryService(mem)
    try:
        for expr in ("up", "count(up)", "topk(2, up)", "quantile(0.9, up)", "rate(up[1m])"):
            on_loop, in_worker = await _both(service, expr)
            assert on_loop == in_worker
        assert service.ran_inline == 5 and service.ran_in_worker == 5
        service.ran_inline = service.ran_in_worker = 0
        mem.threads.clear()
        await service.instant("sum(up)", 30_000, cache="off")
        assert service.ran_inline == 1 and service.ran_in_worker == 0
        assert mem.threads == [threading.get_ident()]  # read on the loop's thread
    finally:
        service.close()


async def test_queries_past_the_inline_limits_run_in_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mem = _memory(30)
    service = QueryService(mem)
    try:
        monkeypatch.setattr(inline, "INLINE_MAX_POINTS", 40)  # 30 series x 3 samples
        mem.threads.clear()
        answer = await service.instant("count(up)", 30_000, cache="off")
        assert answer.data()["result"][0]["value"][1] == "30"
        assert service.ran_inline == 0 and service.ran_in_worker == 1
        assert len(mem.threads) == 2  # tried on the loop first, then again in a worker
        # A range query's series x steps count as well; the answer is the same bytes.
        monkeypatch.setattr(inline, "INLINE_MAX_POINTS", 10_000)
        on_loop, in_worker = await _both(service, "up * 2", step=1_000)
        assert on_loop == in_worker
        monkeypatch.setattr(inline, "INLINE_MAX_POINTS", 500)
        before = service.ran_in_worker
        await service.range("up * 2", 0, 30_000, 1_000, cache="off")  # 30 x 31 points
        assert service.ran_in_worker == before + 1
    finally:
        service.close()


async def test_a_select_of_many_series_goes_to_a_worker_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the store, the series count decides on the index, before the head is read."""
    store = await open_store(tmp_path)
    service = QueryService(store)
    reads: list[bool] = []
    real = store.read_selected

    async def counted(*args: Any, on_loop: bool = False) -> Any:
        reads.append(on_loop)
        return await real(*args, on_loop=on_loop)

    monkeypatch.setattr(store, "read_selected", counted)
    try:
        ids = await store.get_or_create_series(
            [(("__name__", "up"), ("i", str(i))) for i in range(10)]
        )
        await store.append(ids, [1_000] * 10, [float(i) for i in range(10)])
        await store.append(ids, [3_000] * 10, [0.0] * 10)
        # At 2,000 ms the newest samples are later: read, not answered from them.
        small = await service.instant("sum(up)", 2_000, cache="off")
        assert reads == [True] and service.ran_inline == 1
        monkeypatch.setattr(inline, "INLINE_MAX_SERIES", 9)
        big = await service.instant("sum(up)", 2_000, cache="off")
        assert reads == [True, False] and service.ran_in_worker == 1  # not read on the loop
        assert encode_data(small.result) == encode_data(big.result)
    finally:
        service.close()
        await store.close()


async def test_writes_still_go_first_for_queries_in_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A query sent to a worker waits for a write in flight, as before; the loop never waits."""
    monkeypatch.setattr(inline, "INLINE_MAX_POINTS", 1)
    monkeypatch.setattr(limits, "YIELD_MAX_S", 0.05)
    service = QueryService(_memory(3))
    real_check = limits.QueryBudget.check
    started = asyncio.get_running_loop().time()

    def aged(self: limits.QueryBudget) -> None:
        self.started = min(self.started, started - 60)  # has worked long enough to yield
        real_check(self)

    monkeypatch.setattr(limits.QueryBudget, "check", aged)
    waited = WRITES.waited_s
    try:
        with WRITES.writing():
            answer = await service.instant("count(up)", 30_000, cache="off")
        assert answer.data()["result"][0]["value"][1] == "3"
        assert service.ran_in_worker == 1
        assert WRITES.waited_s > waited
    finally:
        service.close()


async def test_rollup_candidates_leave_the_loop() -> None:
    class Source:
        resolutions = (60_000,)
        done_to: dict[int, int | None] = {60_000: None}

    shy = InlineRollups(Source())  # type: ignore[arg-type]
    assert shy.resolutions == (60_000,)
    with pytest.raises(TooBigInline):
        shy.match([])
    with pytest.raises(TooBigInline):
        await shy.effective(60_000, [1], 0, 1)


def test_the_query_limits_come_first() -> None:
    """Past ``query.max_samples`` a query fails inline exactly as in a worker."""
    budget = InlineBudget(10, 5, 10**9)
    with pytest.raises(limits.TooManySamples):
        budget.loaded_samples(6)
    budget = InlineBudget(10, 10**9, 10**9)
    with pytest.raises(TooBigInline):
        budget.points(inline.INLINE_MAX_POINTS + 1)


async def test_closing_cancels_an_inline_query(tmp_path: Path) -> None:
    store: Store = await open_store(tmp_path)
    service = QueryService(store)
    gate = asyncio.Event()
    real = store.read_selected

    async def held(*args: Any, **kw: Any) -> Any:
        await gate.wait()
        return await real(*args, **kw)

    store.read_selected = held  # type: ignore[method-assign]
    try:
        ids = await store.get_or_create_series([(("__name__", "up"),)])
        await store.append(ids, [1_000], [1.0])
        await store.append(ids, [3_000], [1.0])  # later than the query: its head is read
        task = asyncio.ensure_future(service.instant("up", 2_000, cache="off"))
        await asyncio.sleep(0.01)
        service.close()
        with pytest.raises(limits.QueryCanceled):
            await task
    finally:
        gate.set()
        await store.close()


def test_small_selects_are_remembered_until_a_series_is_added() -> None:
    from agent.storage.index import SeriesIndex

    index = SeriesIndex()
    for sid in range(1, 6):
        index.add(sid, (("__name__", "up"), ("i", str(10 - sid))))
    up = [Matcher.of("__name__", "=", "up")]
    assert index.select(up, 4) is None  # past `most`: nothing ordered
    plan = index.select(up)
    assert plan is not None
    ids, labs = plan
    assert ids == [5, 4, 3, 2, 1] and labs == [index.labels(s) for s in ids]
    ids.append(99)  # the caller's own list: the remembered answer is unchanged
    assert index.select(up) == ([5, 4, 3, 2, 1], labs)
    index.add(6, (("__name__", "up"), ("i", "0")))
    assert index.select(up, 6) == (
        [6, 5, 4, 3, 2, 1],
        [index.labels(s) for s in (6, 5, 4, 3, 2, 1)],
    )


series_samples = st.lists(st.lists(st.integers(0, 60), max_size=8), min_size=1, max_size=6)


@given(series_samples, st.lists(st.integers(-10, 80), min_size=1, max_size=5))
def test_search_upto_is_the_upper_bound_of_search_windows(
    samples: list[list[int]], highs: list[int]
) -> None:
    ts = [np.unique(np.array(s, dtype=np.int64)) for s in samples]
    offsets = np.cumsum([0] + [len(t) for t in ts])
    flat = np.concatenate(ts) if any(len(t) for t in ts) else np.zeros(0, np.int64)
    if flat.size == 0:
        return
    data = RangeData(
        [(("i", str(i)),) for i in range(len(ts))],
        np.zeros(len(ts), bool),
        offsets.astype(np.int64),
        flat,
        np.zeros(flat.size),
    )
    h = np.array(highs, dtype=np.int64)
    _, want = search_windows(data, h - 5, h)
    assert search_upto(data, h).tolist() == want.tolist()


def test_the_daemon_collects_garbage_less_often() -> None:
    import gc

    from agent.daemon import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
    finally:
        gc.set_threshold(*before)
