"""What the storage writer is asked to do (its request types), its counters, and sample fan-out.

Apart from :mod:`agent.storage.writer` (the task that batches and commits
them) so the request vocabulary reads on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import Labels
from agent.storage.errors import StoreFailed
from agent.storage.options import AppendResult, FlushResult
from agent.storage.series_alloc import Allocation

if TYPE_CHECKING:
    import sqlite3


log = logging.getLogger("agent.storage.writer")


SampleListener = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
"""``fn(series_ids int64, timestamps int64 ms, values float64)``: samples just committed."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def notify_samples(
    listeners: Sequence[SampleListener], sids: np.ndarray, ts: np.ndarray, bits: np.ndarray
) -> None:
    """Hand committed samples to every listener; one failing listener never hurts the rest.

    Runs on the event loop, inline on the write path, so listeners must be
    cheap and must not keep the arrays past the call without copying (they
    are read-only views the writer does not reuse, but may be large).
    """
    values = bits.view(np.float64)
    for listener in list(listeners):
        try:
            listener(sids, ts, values)
        except Exception:
            log.exception("sample listener failed")


def _concat(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


@dataclass(slots=True)
class Counters:
    commits: int = 0
    appends: int = 0
    appended_samples: int = 0
    duplicate_samples: int = 0
    replayed_samples: int = 0
    flushes: int = 0
    flushed_samples: int = 0
    flush_seconds: float = 0.0
    wal_rows: int = 0
    segments: int = 0
    checkpoints: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Append:
    sids: np.ndarray
    ts: np.ndarray
    bits: np.ndarray
    source: str
    client: str | None
    future: asyncio.Future[AppendResult]


@dataclass(slots=True)
class _Create:
    labels: list[Labels]
    future: asyncio.Future[list[int]]


@dataclass(slots=True)
class _Flush:
    all: bool
    future: asyncio.Future[FlushResult]
    remaining: set[int] = field(default_factory=set)
    result: FlushResult = field(default_factory=FlushResult)


@dataclass(slots=True)
class SeriesCreation:
    """New series handed out by ``Writer.creating`` and stored by one job's transaction.

    ``ids`` has one id per label set of ``labels`` (canonical): a new one, or
    the existing series' where someone created it first (its position is then
    in ``existed``). The job given ``creates=`` inserts the new series' rows
    in its own transaction (``committed`` once it has); they reach the index
    when ``Writer.creating`` exits, and if the job failed they never existed.
    """

    labels: list[Labels]
    made: Allocation
    ids: list[int] = field(default_factory=list)
    existed: list[int] = field(default_factory=list)
    committed: bool = False


class CreationGate:
    """Lets one all-or-nothing import hand out series ids outside the writer's commits.

    While it is held the writer keeps committing appends (acknowledgements
    keep flowing) but defers other callers' new series: those would take ids
    or label pairs the import handed out, or reach the index out of order.
    The holder also knows that no create is half-committed.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self.held = False
        self.deferred: list[_Create] = []

    def defer(self, creates: list[_Create]) -> list[_Create]:
        """The creates the writer may commit now (none while the gate is held)."""
        if self.held and creates:
            self.deferred.extend(creates)
            return []
        return creates

    def creating(self, busy: bool) -> None:
        """The writer starts (True) or ends (False) a group commit that creates series."""
        if busy:
            self._idle.clear()
        else:
            self._idle.set()

    async def acquire(self) -> None:
        await self._lock.acquire()
        self.held = True
        await self._idle.wait()

    def release(self, requeue: Callable[[_Create], None] | None) -> None:
        """Open the gate and hand the creates deferred meanwhile back to the writer's
        queue (``requeue``), or fail them when the writer has stopped (None)."""
        self.held = False
        out, self.deferred = self.deferred, []
        self._lock.release()
        for cr in out:
            if requeue is not None:
                requeue(cr)
            elif not cr.future.done():
                cr.future.set_exception(StoreFailed("storage writer stopped"))


@dataclass(slots=True)
class _Job:
    """Maintenance work (rollback, retention, re-encoding) serialised with writes."""

    sql: Callable[[sqlite3.Connection], Any]
    after: Callable[[Any], Any] | None
    future: asyncio.Future[Any]
    creates: SeriesCreation | None = None


@dataclass(slots=True)
class _Checkpoint:
    future: asyncio.Future[int] | None


class _Stop:
    pass


_Item = _Append | _Create | _Flush | _Job | _Checkpoint | _Stop
