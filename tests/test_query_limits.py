"""Properties of the query-side helpers of issue 13/15: sorted-id set operations
used by series selection, and the pre-parse text scan."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model import Matcher
from agent.query import limits
from agent.query.aggregation import group_labels, make_grouping
from agent.query.errors import BadDataError
from agent.query.limits import (
    WRITES,
    ParseLimits,
    QueryBudget,
    QueryCanceled,
    budget_scope,
    check_query_text,
    worker_thread,
)
from agent.query.parser import parse
from agent.query.queryable import MemoryQueryable
from agent.query.service import QueryOptions, QueryService
from agent.storage.index import SeriesIndex, difference_sorted, intersect_sorted

ids = st.lists(st.integers(1, 400), max_size=120).map(
    lambda xs: np.unique(np.array(xs, dtype=np.int64))
)


@given(ids, ids)
def test_sorted_set_operations_match_numpy(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(intersect_sorted(a, b), np.intersect1d(a, b, assume_unique=True))
    assert np.array_equal(difference_sorted(a, b), np.setdiff1d(a, b, assume_unique=True))


def test_selection_intersects_from_the_smallest_postings() -> None:
    index = SeriesIndex()
    sid = 0
    for host in range(50):
        for mode in ("idle", "user", "system", "iowait"):
            sid += 1
            index.add(sid, (("__name__", "cpu"), ("host", str(host)), ("mode", mode)))
    for host in range(50):
        sid += 1
        index.add(sid, (("__name__", "up"), ("host", str(host))))
    got = index.match([Matcher.of("__name__", "=", "cpu"), Matcher.of("mode", "=", "idle")])
    assert [index.labels(int(s))[2] for s in got] == [("mode", "idle")] * 50
    got = index.match([Matcher.of("__name__", "=", "cpu"), Matcher.of("mode", "!=", "idle")])
    assert len(got) == 150 and all(index.labels(int(s))[2][1] != "idle" for s in got)


@given(st.text(alphabet="()[]{}+-*/^%=!<>\"'`\\ab1 ,~", max_size=60))
def test_text_scan_never_crashes_and_bounds_what_parses(text: str) -> None:
    limits = ParseLimits(max_length=60, max_depth=4, max_binary_ops=4)
    try:
        check_query_text(text, limits)
    except BadDataError as exc:
        assert "query.max_query" in str(exc)
        return
    with contextlib.suppress(BadDataError):  # a 400 is fine; anything else is a bug
        parse(text)


@pytest.mark.parametrize("depth", [1, 10, 100, 256])
def test_depth_up_to_the_limit_parses(depth: int) -> None:
    expr = "(" * depth + "1" + ")" * depth
    check_query_text(expr)
    parse(expr)


class _Held(MemoryQueryable):
    """Reads wait for ``gate``: a store whose reads hang (e.g. a daemon stopping)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().select(matchers, start_ms, end_ms)


async def test_closing_the_service_cancels_a_query_waiting_on_a_read() -> None:
    held = _Held()
    held.add({"__name__": "up"}, [0], [1.0])
    service = QueryService(held)
    task = asyncio.ensure_future(service.instant("up", 0, cache="off"))
    await held.entered.wait()
    service.close()
    with pytest.raises(QueryCanceled):
        await task
    held.gate.set()


async def test_queries_answer_from_worker_threads_in_order_of_admission() -> None:
    mem = MemoryQueryable()
    mem.add({"__name__": "up", "i": "a"}, [0, 15_000], [1.0, 2.0])
    service = QueryService(mem, QueryOptions(max_concurrency=2, max_queued=10))
    service.inline = False  # these would answer on the loop (agent.query.inline)
    answers = await asyncio.gather(
        *(service.instant(f"up * {k}", 15_000, cache="off") for k in range(8))
    )
    assert [a.data()["result"][0]["value"][1] for a in answers] == [str(2 * k) for k in range(8)]
    assert service.runner.running == 0 and service.runner.queued == 0
    service.close()


label_sets = st.lists(
    st.dictionaries(
        st.sampled_from(["__name__", "a", "b", "mode", "z"]),
        st.sampled_from(["x", "y", "idle"]),
        max_size=5,
    ).map(lambda d: tuple(sorted(d.items()))),
    max_size=40,
)


@given(label_sets, st.lists(st.sampled_from(["a", "b", "mode", "z", "q"]), max_size=3))
def test_fast_groupings_match_the_reference(labels: list[Any], by: list[str]) -> None:
    grouping = tuple(sorted(by))
    grp = make_grouping(labels, grouping, False)
    index: dict[Any, int] = {}
    expect = [index.setdefault(group_labels(lab, grouping, False), len(index)) for lab in labels]
    assert grp.keys == list(index)
    assert grp.group_of.tolist() == expect


@given(
    st.lists(st.lists(st.integers(-50, 50), max_size=12, unique=True), min_size=1, max_size=8),
    st.lists(st.integers(-60, 60), min_size=1, max_size=10),
    st.integers(0, 40),
)
def test_window_search_matches_searchsorted_per_series(
    series: list[list[int]], highs: list[int], width: int
) -> None:
    from agent.query.blocks import search_upto, search_windows
    from tests.conftest import range_data_of

    ts = [sorted(t) for t in series]
    data = range_data_of(ts)
    offsets = data.offsets
    hi_at = np.array(highs, dtype=np.int64)
    lo_at = hi_at - width
    lo, hi = search_windows(data, lo_at, hi_at)
    for i, t in enumerate(ts):
        row = np.array(t, dtype=np.int64)
        assert lo[i].tolist() == (offsets[i] + np.searchsorted(row, lo_at, "right")).tolist()
        assert hi[i].tolist() == (offsets[i] + np.searchsorted(row, hi_at, "right")).tolist()
    assert search_upto(data, hi_at).tolist() == hi.tolist()


def test_query_workers_wait_while_writes_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's budget check sleeps while a write is in flight; the loop's never does."""
    monkeypatch.setattr(limits, "YIELD_MAX_S", 600.0)  # wait for the write, however long
    budget = QueryBudget(6000, 10**6, 10**9)
    budget.started -= 3000  # ... as a query that has worked long enough may
    checked = threading.Event()

    def worker() -> None:
        with budget_scope(budget), worker_thread():
            budget.check()
        checked.set()

    thread = threading.Thread(target=worker)
    with WRITES.writing():
        budget.check()  # not a worker thread (the event loop's): returns at once
        thread.start()
        assert not checked.wait(0.2)  # the worker waits for the write...
    assert checked.wait(60)  # ... and goes on once it is done
    thread.join()
    assert WRITES.active == 0
    assert budget.yielded_s > 0


def test_query_workers_yield_at_most_half_their_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that stays in flight (a slow client) never stops queries."""
    monkeypatch.setattr(limits, "YIELD_MAX_S", 600.0)
    budget = QueryBudget(6000, 10**6, 10**9)
    budget.started -= 3000
    budget.yielded_s = 1600.0  # longer than it has worked: no more yielding
    with WRITES.writing(), budget_scope(budget), worker_thread():
        budget.check()  # returns at once (pytest-timeout would stop a 600 s wait)
    assert budget.yielded_s == 1600.0
