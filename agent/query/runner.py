"""Query evaluation in worker threads, off the event loop that acknowledges writes.

The evaluator is numpy over whole blocks of series x steps, which releases the
GIL for most of its time, so threads give the event loop (remote write,
StatsD flushes, ``/-/healthy``) the CPU back while a heavy query runs; a
process pool would have to copy every selected array across. Each query that
proves too big to answer on the event loop itself (:mod:`agent.query.inline`)
gets a worker thread with its own short-lived event loop. Of the evaluator's reads
of the store (:class:`LoopBridge`), only the series index part is sent back to
the main loop, which owns the index; the head's buffers and the segments are
read in the worker (``Store.read_selected``: the head is read under its lock,
which the loop takes only while it changes a buffer).

At most ``query.max_concurrency`` queries are admitted at once (Prometheus'
default, 20); up to ``query.max_queued`` more wait for a slot, and beyond that
a query is refused at once with 503 ``unavailable``. Of the admitted ones,
``query.cpu_workers`` evaluate at the same time (default: one fewer than the
CPU cores, at least one), the others wait for a worker: Python code holds the
GIL, and every extra runnable thread takes GIL time from the event loop, which
is what made remote-write latency grow under query load. Time spent waiting counts
towards the query's timeout. A query that times out answers 503 immediately;
its worker stops at the next budget check (see :mod:`agent.query.limits`) and
only then frees its slot, so abandoned work can never pile up past the limit.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, runtime_checkable

from agent.query.errors import QueryError
from agent.query.limits import QueryBudget, QueryTimeout, budget_scope, worker_thread
from agent.query.queryable import select_arrays

if TYPE_CHECKING:
    from agent.model import Labels, Matcher
    from agent.query.queryable import Queryable, SelectedArraysLike, SeriesLike
    from agent.query.rollup_select import RollupSource
    from agent.storage.rollup import SeriesBuckets

T = TypeVar("T")
SWITCH_INTERVAL_S = 0.0005
BRIDGE_POLL_S = 0.25


class QueryUnavailable(QueryError):
    """Every slot is busy and the queue is full (503, ``unavailable``)."""

    error_type = "unavailable"


class LoopBridge:
    """A :class:`Queryable` for the worker thread whose reads run on the main loop.

    It also counts the samples loaded against the query's budget (Prometheus
    limits the samples held at once; counting everything loaded is stricter,
    but cheap and needs no cooperation from the evaluator).
    """

    def __init__(
        self, inner: Queryable, loop: asyncio.AbstractEventLoop | None, budget: QueryBudget
    ) -> None:
        self.inner = inner
        self.loop = loop
        self.budget = budget

    async def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        self.budget.check()
        if self.loop is None or self.loop is asyncio.get_running_loop():
            return await make()
        fut = asyncio.run_coroutine_threadsafe(make(), self.loop)
        wrapped = asyncio.wrap_future(fut)
        try:
            while True:
                # Poll the budget while the main loop works: a query cancelled because
                # the daemon is stopping must not wait for a loop that no longer runs.
                done, _ = await asyncio.wait({wrapped}, timeout=BRIDGE_POLL_S)
                if done:
                    return wrapped.result()
                self.budget.check()
        except BaseException:
            fut.cancel()
            raise

    async def select(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> Sequence[SeriesLike]:
        found = await self._on_loop(lambda: _select(self.inner, matchers, start_ms, end_ms))
        self.budget.loaded_samples(sum(len(s.timestamps) for s in found))
        return found

    async def select_arrays(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> SelectedArraysLike:
        """The engine's bulk read (``Store.select_arrays``), counted the same way.

        A queryable that splits its select (:class:`SplitSelect`, the store)
        only has the index part done on the main loop; reading the head and
        the segments happens here, in the worker.
        """
        inner = self.inner
        if splits_select(inner) and self.loop is not None:
            ids, labs = await self._on_loop(lambda: _plan(inner, matchers))
            self.budget.check()
            found: SelectedArraysLike = await inner.read_selected(ids, labs, start_ms, end_ms)
        else:
            found = await self._on_loop(lambda: _arrays(inner, matchers, start_ms, end_ms))
        self.budget.loaded_samples(len(found.t))
        return found


@runtime_checkable
class SplitSelect(Protocol):
    """A bulk select in two parts: the index on the main loop, the reading anywhere."""

    def plan_select(self, matchers: list[Matcher]) -> tuple[list[int], list[Labels]]: ...

    def plan_small(
        self, matchers: list[Matcher], most: int | None
    ) -> tuple[list[int], list[Labels]] | None: ...

    async def read_selected(
        self,
        ids: list[int],
        labs: list[Labels],
        start_ms: int,
        end_ms: int,
        *,
        on_loop: bool = False,
    ) -> SelectedArraysLike: ...

    def latest_selected(
        self, ids: list[int], labs: list[Labels], at_ms: int, lookback_ms: int
    ) -> SelectedArraysLike | None: ...


_SPLITS: dict[type, bool] = {}


def splits_select(queryable: object) -> TypeGuard[SplitSelect]:
    """``isinstance(queryable, SplitSelect)``, remembered per class.

    A runtime-checkable protocol's ``isinstance`` walks the protocol's members
    on every call (12 us, measured): a small query asks once per selector.
    """
    kind = type(queryable)
    known = _SPLITS.get(kind)
    if known is None:
        known = _SPLITS[kind] = isinstance(queryable, SplitSelect)
    return known


async def _plan(inner: SplitSelect, matchers: list[Matcher]) -> tuple[list[int], list[Labels]]:
    return inner.plan_select(matchers)


async def _select(
    inner: Queryable, matchers: list[Matcher], start_ms: int, end_ms: int
) -> Sequence[SeriesLike]:
    return await inner.select(matchers, start_ms, end_ms)


async def _arrays(
    inner: Queryable, matchers: list[Matcher], start_ms: int, end_ms: int
) -> SelectedArraysLike:
    return await select_arrays(inner, matchers, start_ms, end_ms)


class QueryRunner:
    """Runs evaluations in up to ``max_concurrency`` threads with a bounded queue."""

    def __init__(self, max_concurrency: int = 20, max_queued: int = 200, workers: int = 0) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.max_queued = max(0, max_queued)
        self.workers = workers if workers > 0 else default_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None
        self.queued = 0
        self.running = 0
        self._budgets: set[QueryBudget] = set()  # of the admitted queries, to cancel on close

    def configure(self, max_concurrency: int, max_queued: int, workers: int = 0) -> None:
        """Apply new limits (a reload); running queries finish in their old pool."""
        new = (max(1, max_concurrency), max(0, max_queued), workers or default_workers())
        if new == (self.max_concurrency, self.max_queued, self.workers):
            return
        self._drop_pool()
        self.max_concurrency, self.max_queued, self.workers = new

    @contextmanager
    def watching(self, budget: QueryBudget) -> Iterator[None]:
        """Cancel ``budget`` too when the runner closes (a query evaluated elsewhere)."""
        self._budgets.add(budget)
        try:
            yield
        finally:
            self._budgets.discard(budget)

    def close(self) -> None:
        """Stop taking work; running evaluations end at their next budget check."""
        for budget in list(self._budgets):
            budget.cancel()
        self._drop_pool()

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._sem = None
        self._sem_loop = None

    def _slots(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        if self._sem is None or self._sem_loop is not loop:
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._sem_loop = loop
        return self._sem

    async def run(self, make: Callable[[], Awaitable[T]], budget: QueryBudget) -> T:
        """``make()``'s result, awaited in a worker thread under ``budget``."""
        loop = asyncio.get_running_loop()
        slots = self._slots(loop)
        if slots.locked() and self.queued >= self.max_queued:
            raise QueryUnavailable(
                f"too many queries: query.max_concurrency ({self.max_concurrency}) are running"
                f" and query.max_queued ({self.max_queued}) are waiting"
            )
        self.queued += 1
        try:
            async with asyncio.timeout(_remaining(budget)):
                await slots.acquire()
        except TimeoutError:
            raise QueryTimeout("query timed out waiting for an evaluation slot") from None
        finally:
            self.queued -= 1
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="query")
            # A thread waiting for the GIL waits up to the switch interval (5 ms by
            # default) each time; the event loop waits once per wake-up, so with a
            # worker computing it answers a remote write several intervals late.
            if sys.getswitchinterval() > SWITCH_INTERVAL_S:
                sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.running += 1
        self._budgets.add(budget)
        try:
            fut = loop.run_in_executor(self._pool, _work, make, budget)
        except BaseException:
            self.running -= 1
            self._budgets.discard(budget)
            slots.release()
            raise

        def done(f: asyncio.Future[T]) -> None:
            self.running -= 1
            self._budgets.discard(budget)
            slots.release()
            if not f.cancelled():
                f.exception()  # retrieved: an abandoned query's error is not "never retrieved"

        fut.add_done_callback(done)
        try:
            async with asyncio.timeout(_remaining(budget)):
                return await asyncio.shield(fut)
        except TimeoutError:
            budget.cancel()
            raise QueryTimeout("query timed out in expression evaluation") from None
        except asyncio.CancelledError:
            budget.cancel()  # the client went away: stop the work too
            raise


def _remaining(budget: QueryBudget) -> float | None:
    if budget.deadline == float("inf"):
        return None
    return max(0.0, budget.deadline - time.monotonic())


def default_workers() -> int:
    """One fewer than the CPU cores this process may use, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _work(make: Callable[[], Awaitable[T]], budget: QueryBudget) -> T:
    """Thread body: a private event loop for the evaluator's coroutines."""
    budget.check()  # timed out or abandoned while waiting for a worker: do nothing
    loop = asyncio.new_event_loop()
    try:
        with budget_scope(budget), worker_thread():
            return loop.run_until_complete(_bounded(make, budget))
    finally:
        loop.close()


async def _bounded(make: Callable[[], Awaitable[T]], budget: QueryBudget) -> T:
    try:
        async with asyncio.timeout(_remaining(budget)):
            return await make()
    except TimeoutError:
        raise QueryTimeout("query timed out in expression evaluation") from None


class RollupBridge:
    """The engine's :class:`~agent.query.rollup_select.RollupSource`, read on the main loop.

    The rollup manager's state and the series index belong to the main loop's
    thread; the worker asks there (blocking on the answer for the synchronous
    methods, which are index look-ups) instead of reading them concurrently.
    """

    def __init__(self, inner: RollupSource, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.loop = loop
        self.resolutions = inner.resolutions
        self.done_to = inner.done_to

    def _sync(self, fn: Callable[..., T], *args: Any) -> T:
        if _on_loop(self.loop):
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    async def _async(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if _on_loop(self.loop):
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), self.loop))

    def match(self, matchers: list[Matcher]) -> list[int]:
        return self._sync(self.inner.match, matchers)

    def dirty_spans(self, series_ids: Sequence[int]) -> list[tuple[int, int]]:
        return self._sync(self.inner.dirty_spans, series_ids)

    def retained_from(self, res: int, now_ms: int) -> int:
        return self._sync(self.inner.retained_from, res, now_ms)

    async def stored(self, res: int, series_ids: Sequence[int], lo: int, hi: int) -> SeriesBuckets:
        return await self._async(lambda: self.inner.stored(res, series_ids, lo, hi))

    async def effective(
        self, res: int, series_ids: Sequence[int], lo: int, hi: int, now_ms: int | None = None
    ) -> SeriesBuckets:
        return await self._async(lambda: self.inner.effective(res, series_ids, lo, hi, now_ms))


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
