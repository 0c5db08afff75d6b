"""Configuration and result types of the storage API.

Plain dataclasses so the daemon can build them from its config and expose
them (stats) without importing any of the engine's internals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from agent.model import Labels
from agent.storage.space import DiskUsage

REJECT_OUT_OF_ORDER = "out_of_order"
REJECT_DUPLICATE_TIMESTAMP = "duplicate_timestamp"
REJECT_TOO_OLD = "too_old"
REJECT_CARDINALITY = "cardinality_limit"
# Outside limits.min_timestamp .. now + limits.max_future (agent.storage.bounds).
REJECT_OUT_OF_BOUNDS = "out_of_bounds"
REJECT_REASONS = (
    REJECT_OUT_OF_ORDER,
    REJECT_DUPLICATE_TIMESTAMP,
    REJECT_TOO_OLD,
    REJECT_OUT_OF_BOUNDS,
)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclass
class StorageOptions:
    # NORMAL with SQLite's WAL journal survives a process kill; FULL also a power loss.
    synchronous: str = "NORMAL"
    # 0 rejects every sample older than the series' newest, as Prometheus does by default.
    out_of_order_window_ms: int = 0
    block_size: int = 720
    flush_age_ms: int = 2 * 3600 * 1000
    flush_interval_s: float = 60.0
    head_memory_limit_bytes: int = 512 * 1024 * 1024
    default_codec: str = "raw"
    # (metric-name regex, codec name); the regex must match the whole name; first match wins.
    codec_rules: list[tuple[str, str]] = field(default_factory=list)
    # Upper bound of series flushed in one transaction, so appends queued behind a
    # large flush wait for one chunk, not for the whole head.
    flush_chunk_series: int = 2000
    # Samples older than now minus this are deleted; 0 keeps everything.  Never used to
    # reject a sample on arrival: backfilled history is accepted and expires later.
    retention_ms: int = 0
    # (metric-name regex, retention ms); fullmatch, first match wins, 0 keeps everything.
    retention_rules: list[tuple[str, int]] = field(default_factory=list)
    # How often the background task enforces retention (when any retention is set).
    retention_interval_s: float = 300.0
    # Cardinality caps (see agent.storage.cardinality); 0 / empty: none.
    max_active_series: int = 0
    active_window_ms: int = 3600_000
    # (metric-name regex, label or "" for series per metric, max values or series)
    cardinality_rules: list[tuple[str, str, int]] = field(default_factory=list)
    # Log a warning when free pages are at least this share of the file (0: never).
    free_pages_warn_share: float = 0.5
    # Free pages are given back once they are at least this many bytes (and 2 % of the file).
    reclaim_min_bytes: int = 1 << 20
    # The log is rewritten as a compact copy of the head once the rows written since the
    # last checkpoint exceed this and that checkpoint's size (see Writer.checkpoint).
    checkpoint_min_bytes: int = 4 << 20
    # Timestamp and label bounds checked where samples and series enter (agent.storage.bounds).
    min_timestamp_ms: int = 0
    max_future_ms: int = 2 * 86_400_000
    max_labels_per_series: int = 40
    max_label_name_length: int = 256
    max_label_value_length: int = 4096
    max_metric_name_length: int = 4096

    def validate(self) -> None:
        from agent.storage.errors import StorageError

        if self.synchronous.upper() not in SYNCHRONOUS_MODES:
            raise StorageError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        if self.block_size < 1:
            raise StorageError("block_size must be >= 1")
        if self.out_of_order_window_ms < 0:
            raise StorageError("out_of_order_window_ms must be >= 0")
        if self.flush_interval_s <= 0:
            raise StorageError("flush_interval_s must be > 0")
        if self.flush_chunk_series < 1:
            raise StorageError("flush_chunk_series must be >= 1")
        if self.retention_ms < 0 or any(ms < 0 for _, ms in self.retention_rules):
            raise StorageError("retention must be >= 0")
        if self.retention_interval_s <= 0:
            raise StorageError("retention_interval_s must be > 0")
        for pattern, _ in self.retention_rules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise StorageError(f"invalid retention rule regex {pattern!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Rejection:
    series_id: int  # 0 when the series itself was refused (a cardinality limit)
    timestamp: int
    reason: str
    detail: str = ""  # human-readable, for the sender (which limit, which label)


@dataclass(slots=True)
class AppendResult:
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # Exact re-sends (same timestamp, same value bits): counted in ``accepted``, stored once.
    duplicates: int = 0

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        counts = dict.fromkeys(REJECT_REASONS, 0)
        for r in self.rejected:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts

    @property
    def out_of_order(self) -> int:
        return self.rejected_by_reason[REJECT_OUT_OF_ORDER]

    @property
    def duplicate_timestamp(self) -> int:
        return self.rejected_by_reason[REJECT_DUPLICATE_TIMESTAMP]

    @property
    def too_old(self) -> int:
        return self.rejected_by_reason[REJECT_TOO_OLD]


@dataclass(slots=True)
class SeriesData:
    series_id: int
    labels: Labels
    timestamps: np.ndarray
    values: np.ndarray


@dataclass(slots=True)
class SelectedArrays:
    """Many series' samples concatenated (``Store.select_arrays``), for the query engine.

    Series ``i`` is ``labels[i]`` and owns ``t[offsets[i]:offsets[i+1]]``.
    """

    labels: list[Labels]
    offsets: np.ndarray  # int64 (n+1,)
    t: np.ndarray  # int64 milliseconds
    v: np.ndarray  # float64, staleness markers included


@dataclass(slots=True)
class FlushResult:
    series: int = 0
    samples: int = 0
    segments: int = 0
    wal_rows_deleted: int = 0
    transactions: int = 0

    def add(self, other: FlushResult) -> None:
        self.series += other.series
        self.samples += other.samples
        self.segments += other.segments
        self.wal_rows_deleted += other.wal_rows_deleted
        self.transactions += other.transactions


@dataclass(slots=True)
class StoreStats:
    active_series: int
    total_series: int
    head_samples: int
    head_bytes: int
    wal_rows: int
    segments: int
    flushes: int
    flushed_samples: int
    flush_seconds: float
    commits: int
    appends: int
    appended_samples: int
    duplicate_samples: int
    replayed_samples: int
    rejected: dict[str, int]
    # New series refused by a cardinality limit, by the rule that refused them.
    cardinality_rejected: dict[str, int] = field(default_factory=dict)
    # Head checkpoints written (the log rewritten as a compact copy of the head).
    checkpoints: int = 0
    # Where the file's bytes are, as of the last flush interval (agent.storage.space).
    disk: DiskUsage = field(default_factory=DiskUsage)

    @property
    def file_bytes(self) -> int:
        return self.disk.file_bytes

    @property
    def sqlite_wal_bytes(self) -> int:
        return self.disk.wal_file_bytes

    @property
    def free_bytes(self) -> int:
        return self.disk.free_bytes

    @property
    def log_bytes(self) -> int | None:
        return self.disk.log_bytes if self.disk.log_bytes >= 0 else None

    @property
    def series_bytes(self) -> int | None:
        return self.disk.series_bytes if self.disk.series_bytes >= 0 else None
