"""Small queries evaluated on the event loop itself, without the hop to a worker thread.

A query over a few hundred series (``count(up)``, ``topk(5, some_gauge)``)
is evaluated in well under a millisecond, but handing it to a worker thread
(:mod:`agent.query.runner`) cost more than that: the submission, a private
event loop, the index look-up sent back to the main loop and the answer sent
back again, each a wake-up of another thread that must win the interpreter
lock from a running one (up to the switch interval each time). Measured over
HTTP with 100,000 series loaded, ``count(up)`` took 2.2-2.5 ms through a
worker and 1.3-1.6 ms evaluated on the loop.

So every query is first tried here, on the loop, under an :class:`InlineBudget`
that stops it as soon as it proves not to be small: a select matching more than
:data:`INLINE_MAX_SERIES` series (checked on the index, before any sample is
read), more than :data:`INLINE_MAX_POINTS` samples loaded or points of series x
steps allocated, or a range function that rollups might answer (their reads are
not counted). It then raises :class:`TooBigInline`, and the caller evaluates
the query again in a worker, from the start. The work thrown away is bounded by
those limits (well under a millisecond of the loop), and a query that runs
inline holds the loop no longer than that either, which is what keeps remote
writes from waiting behind queries (issue 15): heavy queries still run in the
workers, where they yield to writes (:data:`agent.query.limits.WRITES`).

Inline evaluation reads the head without its lock (:meth:`Store.read_selected`
with ``on_loop``): the loop is the only thread that changes the head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from agent.query.limits import QueryBudget, QueryCanceled, QueryTimeout
from agent.query.queryable import select_arrays
from agent.query.runner import LoopBridge, splits_select

if TYPE_CHECKING:
    from agent.model import Matcher
    from agent.query.queryable import Queryable, RollupSource, SelectedArraysLike
    from agent.storage.rollup import SeriesBuckets

T = TypeVar("T")

INLINE_MAX_SERIES = 2_000
"""Series one select of an inline query may match (the head of each is read)."""
INLINE_MAX_POINTS = 100_000
"""Samples loaded plus points allocated, summed over an inline query."""


class TooBigInline(Exception):
    """The query outgrew the inline limits: evaluate it in a worker thread instead."""


class InlineBudget(QueryBudget):
    """A :class:`QueryBudget` that also counts towards the inline limits.

    The query's own limits are checked first, so a query past
    ``query.max_samples`` fails the same way inline as in a worker.
    """

    __slots__ = ("inline_points", "task")

    def __init__(self, timeout_s: float, max_points: int, max_bytes: int) -> None:
        super().__init__(timeout_s, max_points, max_bytes)
        self.inline_points = 0
        self.task: asyncio.Task[Any] | None = None  # the task evaluating, while it does

    def cancel(self) -> None:
        """Stop the evaluation (the service is closing): it waits on the loop, so wake it."""
        super().cancel()
        if self.task is not None:
            self.task.cancel()

    def _count(self, n: int) -> None:
        self.inline_points += n
        if self.inline_points > INLINE_MAX_POINTS:
            raise TooBigInline

    def points(self, n: int, what: str = "") -> None:
        super().points(n, what)
        self._count(n)

    def loaded_samples(self, n: int) -> None:
        super().loaded_samples(n)
        self._count(n)


class InlineBridge(LoopBridge):
    """The store as an inline evaluation reads it: on the loop, the series counted first."""

    def __init__(self, inner: Queryable, budget: InlineBudget) -> None:
        super().__init__(inner, None, budget)

    async def select_arrays(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> SelectedArraysLike:
        return await self._select(matchers, start_ms, end_ms, None)

    async def select_latest(
        self, matchers: list[Matcher], at_ms: int, lookback_ms: int
    ) -> SelectedArraysLike:
        """An instant selector's samples, in (at - lookback, at]: from each series' newest
        sample where the store knows it (``latest_selected``), else read."""
        return await self._select(matchers, at_ms - lookback_ms + 1, at_ms, lookback_ms)

    async def _select(
        self, matchers: list[Matcher], start_ms: int, end_ms: int, lookback_ms: int | None
    ) -> SelectedArraysLike:
        self.budget.check()
        inner = self.inner
        found: SelectedArraysLike | None = None
        if splits_select(inner):
            plan = inner.plan_small(matchers, INLINE_MAX_SERIES)
            if plan is None:
                raise TooBigInline  # counted on the index: nothing ordered or read
            ids, labs = plan
            if lookback_ms is not None:
                found = inner.latest_selected(ids, labs, end_ms, lookback_ms)
            if found is None:
                found = await inner.read_selected(ids, labs, start_ms, end_ms, on_loop=True)
        else:
            found = await select_arrays(inner, matchers, start_ms, end_ms)
        self.budget.loaded_samples(len(found.t))
        return found


class InlineRollups:
    """A :class:`RollupSource` that sends every query rollups could answer to a worker.

    Reading rollup buckets is not counted against any budget, so an inline
    evaluation cannot tell a cheap one from a month of buckets: it gives up at
    the first look-up (``match``), before anything is read.
    """

    def __init__(self, inner: RollupSource) -> None:
        self.resolutions = inner.resolutions
        self.done_to = inner.done_to

    def match(self, matchers: list[Matcher]) -> list[int]:
        raise TooBigInline

    def dirty_spans(self, series_ids: Sequence[int]) -> list[tuple[int, int]]:
        raise TooBigInline

    def retained_from(self, res: int, now_ms: int) -> int:
        raise TooBigInline

    async def stored(self, res: int, series_ids: Sequence[int], lo: int, hi: int) -> SeriesBuckets:
        raise TooBigInline

    async def effective(
        self, res: int, series_ids: Sequence[int], lo: int, hi: int, now_ms: int | None = None
    ) -> SeriesBuckets:
        raise TooBigInline


async def run_inline(work: Coroutine[Any, Any, T], budget: InlineBudget) -> T:
    """``work`` awaited here, on the loop, within the budget's deadline.

    :meth:`InlineBudget.cancel` (the service closing) cancels the awaiting task;
    that ends here as :class:`QueryCanceled`, as it would in a worker.
    """
    task = budget.task = asyncio.current_task()
    try:
        if budget.deadline == float("inf"):
            return await work
        async with asyncio.timeout_at(_loop_time(budget.deadline)):
            return await work
    except TimeoutError:
        raise QueryTimeout("query timed out in expression evaluation") from None
    except asyncio.CancelledError:
        if budget.cancelled and task is not None and task.uncancel() == 0:
            raise QueryCanceled("query was cancelled") from None
        raise
    finally:
        budget.task = None


def _loop_time(deadline: float) -> float:
    """``deadline`` (``time.monotonic``) on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
