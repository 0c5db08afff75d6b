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
from agent.storage.options import AppendResult, FlushResult
from agent.storage.series_alloc import SeriesCreation

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
