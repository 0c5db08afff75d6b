"""What a rollup pass is told (options), what it reports (results), and what it needs of the store.

Apart from the manager (:mod:`agent.storage.rollup`) so the daemon's config
code and the query layer can name them without the scheduling machinery.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.model import Labels, Matcher
from agent.storage.errors import StorageError
from agent.storage.rollup_blocks import MAX_RESOLUTION_MS


class RollupHost(Protocol):
    """What the rollup manager needs of the store (:class:`agent.storage.store.Store`).

    A protocol rather than an import: the store creates the manager
    (``Store.start_rollups``), so the manager must not import the store back.
    """

    async def run_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

    async def run_in_transaction(
        self,
        sql: Callable[[sqlite3.Connection], Any],
        after: Callable[[Any], Any] | None = None,
    ) -> Any: ...

    async def time_bounds(self) -> tuple[int, int] | None: ...

    async def earliest_from(self, start_ms: int) -> int | None: ...

    def newest_timestamps(self, series_ids: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def match_series(self, matchers: list[Matcher]) -> list[int]: ...

    def labels(self, series_id: int) -> Labels: ...

    async def read_many(
        self, series_ids: Sequence[int], start_ms: int, end_ms: int
    ) -> list[tuple[int, np.ndarray, np.ndarray]]: ...

    async def read_series(
        self, series_id: int, start_ms: int, end_ms: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class RollupOptions:
    # Only 1h by default: a bucket costs ~23 bytes, which at a 15 s scrape interval is
    # more than the compressed raw samples of a 1m or 5m bucket (see the config's help).
    resolutions_ms: tuple[int, ...] = (3_600_000,)
    # Per resolution; 0 or absent keeps that resolution's buckets forever.
    retention_ms: dict[int, int] = field(default_factory=dict)
    interval_s: float = 60.0
    # Blocks are rolled up once they ended this long ago, so ordinary scrape delays
    # land before the pass instead of causing recomputations.
    delay_ms: int = 60_000

    def validate(self) -> None:
        if not self.resolutions_ms:
            raise StorageError("rollups need at least one resolution")
        for res in self.resolutions_ms:
            if res < 1000 or res > MAX_RESOLUTION_MS or res % 1000:
                raise StorageError(f"rollup resolution {res} ms: whole seconds up to 24 days")
        if len(set(self.resolutions_ms)) != len(self.resolutions_ms):
            raise StorageError("rollup resolutions must be distinct")
        if self.interval_s <= 0 or self.delay_ms < 0:
            raise StorageError("rollup interval must be > 0 and delay >= 0")


@dataclass(slots=True)
class RollupResult:
    """What one pass did."""

    now_ms: int
    buckets_written: int = 0
    rows_written: int = 0
    blocks_rolled: int = 0
    series_recomputed: int = 0
    rows_expired: int = 0
    rows_trimmed: int = 0
    transactions: int = 0
    seconds: float = 0.0
    done_to: dict[int, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "now_ms": self.now_ms,
            "buckets_written": self.buckets_written,
            "rows_written": self.rows_written,
            "blocks_rolled": self.blocks_rolled,
            "series_recomputed": self.series_recomputed,
            "rows_expired": self.rows_expired,
            "rows_trimmed": self.rows_trimmed,
            "transactions": self.transactions,
            "seconds": round(self.seconds, 3),
            "done_to": {str(k): v for k, v in self.done_to.items()},
        }
