"""Live samples as they are committed, and PromQL results that follow new data.

Why a hub per store: the write path must stay cheap however many streams are
open, so the store gets one sample listener (registered only while there is
at least one subscription, removed with the last) and every subscription
filters each committed batch with one numpy gather into a boolean mask
indexed by series id. Which series a selector matches is computed once; a
series created later is classified the first time an id above everything
seen so far shows up in a batch (ids are dense and increasing), so no
per-sample matcher ever runs and the per-commit cost is one vectorised
lookup plus work proportional to the matching samples.

Why a bounded buffer that drops the oldest samples: a consumer that cannot
keep up must neither grow memory without bound nor slow ingestion. Each
subscription keeps at most ``max_buffer`` samples; when more arrive, the
oldest are dropped and counted, and the consumer's next read is a
:class:`Lagged` event saying how many it lost, after which it continues with
the newest data (as Tokio's broadcast channels do).

Typical use::

    async with store.stream_updates(matchers='cpu{host="a"}') as updates:
        async for item in updates:
            if isinstance(item, Lagged):
                print("lagged,", item.dropped, "samples dropped")
            else:
                print(item.labels, item.timestamp, item.value)

Leaving the ``async with`` (or calling :meth:`Subscription.close`) removes
the subscription; a subscription that is garbage-collected unclosed is
removed too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.dataio.export import TagsFilter, matcher_sets
from agent.model import Labels, Matcher

if TYPE_CHECKING:
    from agent.query.service import QueryService
    from agent.storage import Store

DEFAULT_BUFFER = 10_000


@dataclass(frozen=True, slots=True)
class StreamedSample:
    """One committed sample (``timestamp`` in ms, ``value`` as stored)."""

    series_id: int
    labels: Labels
    timestamp: int
    value: float


@dataclass(frozen=True, slots=True)
class Lagged:
    """The consumer fell behind: ``dropped`` samples were discarded, oldest first."""

    dropped: int

    @property
    def message(self) -> str:
        return f"lagged, {self.dropped} samples dropped"


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of one or more commits, in commit order (arrays of equal length)."""

    series_ids: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.series_ids.size)


def _matches(labels: Labels, matchers: Sequence[Matcher]) -> bool:
    have = dict(labels)
    return all(m.matches(have.get(m.name, "")) for m in matchers)


class Selection:
    """The series a subscription wants, as a boolean mask by series id.

    Fixed ids never grow; matcher alternatives (OR of ANDs) classify each
    series id once, new ones lazily when a batch first names them.
    """

    def __init__(
        self, store: Store, ids: Sequence[int] | None, alternatives: list[list[Matcher]]
    ) -> None:
        self._store = store
        self._alternatives = alternatives
        chosen: set[int] = set()
        if ids is not None:
            chosen.update(int(i) for i in ids)
        for matchers in alternatives:
            chosen.update(store.match_series(matchers))
        top = max(chosen, default=0)
        self.mask = np.zeros(max(top + 1, 64), dtype=bool)
        if chosen:
            self.mask[np.fromiter(chosen, dtype=np.int64, count=len(chosen))] = True
        # Ids up to here are classified; matchers never run again for them.
        self.known = top if alternatives else 2**62
        self.count = len(chosen)

    def _classify_up_to(self, upto: int) -> None:
        if upto >= self.mask.size:
            grown = np.zeros(max(upto + 1, 2 * self.mask.size), dtype=bool)
            grown[: self.mask.size] = self.mask
            self.mask = grown
        labels = self._store.labels
        for sid in range(self.known + 1, upto + 1):
            try:
                lab = labels(sid)
            except KeyError:
                continue
            if any(_matches(lab, ms) for ms in self._alternatives):
                self.mask[sid] = True
                self.count += 1
        self.known = upto

    def select(self, sids: np.ndarray) -> np.ndarray:
        """Boolean keep-mask for a batch of series ids."""
        top = int(sids.max())
        if top > self.known:
            self._classify_up_to(top)
        if top < self.mask.size:
            return self.mask[sids]
        keep = np.zeros(sids.size, dtype=bool)
        inside = sids < self.mask.size
        keep[inside] = self.mask[sids[inside]]
        return keep


class StreamHub:
    """Fans committed samples out to a store's subscriptions (one store listener in all)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._registered = False

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, sub: Subscription) -> None:
        self._subs.add(sub)
        if not self._registered:
            self.store.add_sample_listener(self._on_samples)
            self._registered = True

    def discard(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if not self._subs and self._registered:
            self.store.remove_sample_listener(self._on_samples)
            self._registered = False

    def _on_samples(self, sids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        subs = list(self._subs)
        if not subs:  # the last one was garbage-collected without close()
            self.store.remove_sample_listener(self._on_samples)
            self._registered = False
            return
        for sub in subs:
            sub.offer(sids, ts, values)


class Subscription:
    """Committed samples of the selected series, buffered up to ``max_buffer`` samples.

    Iterate it for :class:`StreamedSample` and :class:`Lagged` items, or call
    :meth:`next_batch` for whole batches (what the HTTP streams do).
    """

    def __init__(self, hub: StreamHub, selection: Selection, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self._hub = hub
        self.selection = selection
        self.max_buffer = max_buffer
        self._parts: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self._buffered = 0
        self._dropped = 0
        self.dropped_total = 0
        self._wake = asyncio.Event()
        self.closed = False
        hub.add(self)

    # --- producer side (event loop, inside the store's commit notification) ---------------

    def offer(self, sids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        if self.closed or sids.size == 0:
            return
        keep = self.selection.select(sids)
        n = int(np.count_nonzero(keep))
        if n == 0:
            return
        s, t, v = sids[keep], ts[keep], values[keep]  # copies: the batch is not ours
        cap = self.max_buffer
        if n >= cap:
            self._drop(self._buffered + n - cap)
            self._parts.clear()
            self._buffered = 0
            s, t, v = s[n - cap :], t[n - cap :], v[n - cap :]
            n = cap
        over = self._buffered + n - cap
        if over > 0:
            self._drop(over)
            while over > 0:
                ps, pt, pv = self._parts[0]
                if ps.size <= over:
                    self._parts.popleft()
                    self._buffered -= int(ps.size)
                    over -= int(ps.size)
                else:
                    self._parts[0] = (ps[over:], pt[over:], pv[over:])
                    self._buffered -= over
                    over = 0
        self._parts.append((s, t, v))
        self._buffered += n
        self._wake.set()

    def _drop(self, n: int) -> None:
        self._dropped += n
        self.dropped_total += n

    # --- consumer side ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._buffered

    async def next_batch(self, timeout: float | None = None) -> SampleBatch | Lagged | None:
        """The next :class:`Lagged` notice or everything buffered; None on timeout or close."""
        while not self._parts and not self._dropped:
            if self.closed:
                return None
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        if self._dropped:
            lagged = Lagged(self._dropped)
            self._dropped = 0
            return lagged
        parts = list(self._parts)
        self._parts.clear()
        self._buffered = 0
        if len(parts) == 1:
            return SampleBatch(*parts[0])
        return SampleBatch(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )

    def discard_pending(self) -> None:
        """Forget buffered samples and drop counts (a live query only needs "something came")."""
        self._parts.clear()
        self._buffered = 0
        self._dropped = 0

    def close(self) -> None:
        """Stop receiving; idempotent. Wakes a consumer waiting in :meth:`next_batch`."""
        if not self.closed:
            self.closed = True
            self._hub.discard(self)
            self._wake.set()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[StreamedSample | Lagged]:
        return self._items()

    async def _items(self) -> AsyncIterator[StreamedSample | Lagged]:
        labels = self._hub.store.labels
        while True:
            item = await self.next_batch()
            if item is None:
                return
            if isinstance(item, Lagged):
                yield item
                continue
            for sid, t, v in zip(
                item.series_ids.tolist(),
                item.timestamps.tolist(),
                item.values.tolist(),
                strict=True,
            ):
                yield StreamedSample(sid, labels(sid), t, v)


def stream_updates(
    hub: StreamHub,
    series: int | Sequence[int] | None = None,
    matchers: TagsFilter = None,
    *,
    max_buffer: int = DEFAULT_BUFFER,
) -> Subscription:
    """Subscribe to samples committed from now on, of ``series`` ids and/or ``matchers``.

    ``matchers`` takes what export filters take (matchers, ``{label: value}``,
    a selector string or several). Registered before this returns, so any
    sample committed afterwards is delivered (or counted as dropped).
    """
    ids = [series] if isinstance(series, int) else (None if series is None else list(series))
    alternatives = matcher_sets(matchers)
    if ids is None and not alternatives:
        raise ValueError("stream_updates: give series ids or matchers")
    return Subscription(hub, Selection(hub.store, ids, alternatives), max_buffer)


# --- live query results ----------------------------------------------------------------------


def selectors_of(node: Any) -> list[list[Matcher]]:
    """The matchers of every vector selector in a query tree (what the query reads)."""
    from agent.query import ast

    found: list[list[Matcher]] = []

    def walk(n: Any) -> None:
        if isinstance(n, ast.VectorSelector):
            found.append(list(n.matchers))
            return
        if isinstance(n, tuple | list):
            for item in n:
                walk(item)
            return
        if isinstance(n, ast.Node) and dataclasses.is_dataclass(n):
            for f in dataclasses.fields(n):
                walk(getattr(n, f.name))

    walk(node)
    return found


async def live_query(
    hub: StreamHub,
    queries: QueryService,
    expr: str,
    interval_s: float,
    *,
    idle_tick_s: float | None = None,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Evaluate ``expr`` now, then again whenever data it reads arrives, at most once per interval.

    Yields the Prometheus API response object (``{"status": "success",
    "data": {...}}`` or the error envelope) per evaluation. With
    ``idle_tick_s`` it also yields None after that long without news, which
    lets a server check its connection. A query reading no series (``time()``)
    is re-evaluated every interval. Raises the query's parse error at once.
    """
    from agent.query.errors import QueryError
    from agent.query.service import parsed
    from agent.web.api.errors import error_body

    node, _sig = parsed(expr)  # raises BadDataError for a bad query, before anything streams
    alternatives = selectors_of(node)
    sub = Subscription(hub, Selection(hub.store, None, alternatives), 1) if alternatives else None
    interval = max(interval_s, 0.0)

    async def evaluate() -> dict[str, Any]:
        try:
            answer = await queries.instant(expr, time.time_ns() // 1_000_000, cache="off")
        except QueryError as exc:
            return error_body(exc.error_type, str(exc))
        out: dict[str, Any] = {"status": "success", "data": answer.data()}
        annos = answer.annotations
        if annos.warnings:
            out["warnings"] = list(annos.warnings)
        return out

    try:
        last = time.monotonic()
        yield await evaluate()
        while True:
            if sub is None:
                wait = interval if idle_tick_s is None else min(interval, idle_tick_s)
                await asyncio.sleep(max(wait, 0.01))
                if time.monotonic() - last < interval:
                    yield None
                    continue
            else:
                item = await sub.next_batch(timeout=idle_tick_s)
                if item is None:
                    if sub.closed:
                        return
                    yield None
                    continue
                pause = interval - (time.monotonic() - last)
                if pause > 0:
                    await asyncio.sleep(pause)
                sub.discard_pending()  # what arrived during the pause: this evaluation sees it
            last = time.monotonic()
            yield await evaluate()
    finally:
        if sub is not None:
            sub.close()
