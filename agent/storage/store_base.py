"""What the parts of :class:`agent.storage.store.Store` share: its state, declared once.

The store is one object split by concern into mixins (series and the index,
maintenance and versioned edits, change listeners) so that no module holds
all of it; ``StoreBase`` declares the attributes ``Store.__init__`` sets and
the methods one part calls on another, so each part type-checks alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import Labels
from agent.storage import bounds, retention, rollup, space, versions
from agent.storage.cardinality import Limiter
from agent.storage.head import Head
from agent.storage.index import SeriesIndex
from agent.storage.lock import DatabaseLock
from agent.storage.options import StorageOptions
from agent.storage.segments import CodecChooser
from agent.storage.wal import TxnHook
from agent.storage.writer import Counters, SampleListener, Writer

WriteListener = Callable[[np.ndarray | None, int, int], None]
"""Called as ``listener(series_ids or None for any, min_t, max_t)`` after data changed."""


class StoreBase:
    """The state of a store (set by ``Store.__init__``), for its parts to share."""

    path: Path
    options: StorageOptions
    rollups: rollup.RollupManager | None
    _chooser: CodecChooser
    _conn: sqlite3.Connection
    _index: SeriesIndex
    _limiter: Limiter
    _head: Head
    _bounds: bounds.Bounds
    _counters: Counters
    _sql_thread: ThreadPoolExecutor
    _read_conns: list[sqlite3.Connection]
    _read_local: threading.local
    _read_lock: threading.Lock
    _readers: ThreadPoolExecutor
    _probe_conn: sqlite3.Connection | None
    _writer: Writer | None
    _flusher: asyncio.Task[None] | None
    _retention: retention.RetentionPolicy
    _retainer: asyncio.Task[None] | None
    _closed: bool
    _lock: DatabaseLock | None
    _write_listeners: list[WriteListener]
    _sample_listeners: list[SampleListener]
    _backfill_hooks: list[TxnHook]
    _disk: space.DiskUsage
    _free_warned: bool
    _loaded_log_bytes: int
    _staging: int

    if TYPE_CHECKING:  # defined by the parts; declared here for the others

        @property
        def _w(self) -> Writer: ...

        def _reader_conn(self) -> sqlite3.Connection: ...

        def _edit_ctx(self) -> versions.EditContext: ...

        async def run_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any: ...

        def series_id(self, labels: Labels) -> int | None: ...

        def labels(self, series_id: int) -> Labels: ...

        def label_problems(self, labels_list: Sequence[Labels]) -> dict[int, str]: ...

        async def get_or_create_series(self, labels_list: list[Labels]) -> list[int]: ...

        def notify_written(self, series_ids: np.ndarray | None, min_t: int, max_t: int) -> None: ...

        def add_write_listener(self, listener: WriteListener) -> None: ...

        def remove_write_listener(self, listener: WriteListener) -> None: ...

        async def refresh_disk_usage(self) -> space.DiskUsage: ...

        async def read_many(
            self, series_ids: Sequence[int], start_ms: int, end_ms: int
        ) -> list[tuple[int, np.ndarray, np.ndarray]]: ...

        async def read_series(
            self, series_id: int, start_ms: int, end_ms: int
        ) -> tuple[np.ndarray, np.ndarray]: ...
