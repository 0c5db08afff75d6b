"""tsagent's storage engine: SQLite-backed, with an in-memory head and a log.

Import from here; the submodules are internal and may be reorganised.
"""

from __future__ import annotations

from agent.storage.backfill import BackfillResult
from agent.storage.errors import (
    BackPressure,
    CardinalityLimitExceeded,
    StorageError,
    StoreClosed,
    StoreFailed,
    StoreLocked,
    UnknownSeries,
)
from agent.storage.options import (
    REJECT_DUPLICATE_TIMESTAMP,
    REJECT_OUT_OF_ORDER,
    REJECT_REASONS,
    REJECT_TOO_OLD,
    AppendResult,
    FlushResult,
    Rejection,
    SeriesData,
    StorageOptions,
    StoreStats,
)
from agent.storage.recompress import CodecUsage, CompressionResult, CompressionStats
from agent.storage.retention import RetentionResult
from agent.storage.store import Store
from agent.storage.wal import BatchRecord, TxnHook

__all__ = [
    "REJECT_DUPLICATE_TIMESTAMP",
    "REJECT_OUT_OF_ORDER",
    "REJECT_REASONS",
    "REJECT_TOO_OLD",
    "AppendResult",
    "BackPressure",
    "BackfillResult",
    "BatchRecord",
    "CardinalityLimitExceeded",
    "CodecUsage",
    "CompressionResult",
    "CompressionStats",
    "FlushResult",
    "Rejection",
    "RetentionResult",
    "SeriesData",
    "StorageError",
    "StorageOptions",
    "Store",
    "StoreClosed",
    "StoreFailed",
    "StoreLocked",
    "StoreStats",
    "TxnHook",
    "UnknownSeries",
]
