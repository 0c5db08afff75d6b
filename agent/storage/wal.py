"""The log: one ``wal`` row per appended batch, written in the group commit.

A row holds only the samples the head *stored* (not the rejected ones, not
exact re-sends), so replay never has to re-judge anything.  Rows are trimmed
once every series with samples in them has flushed past them; a series' own
``flushed_seq`` makes replay skip what already lives in segments, which is
what makes replay exactly-once even when a crash lands between a flush and
the trim of the rows it covered (both happen in one transaction anyway).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from agent.storage.db import transaction
from agent.storage.segments import SegmentRow

_FMT_I4 = 1  # series ids as int32: 20 bytes per sample instead of 24
_FMT_I8 = 2
_I4_MAX = 2**31 - 1


def encode_batch(sids: np.ndarray, ts: np.ndarray, bits: np.ndarray) -> bytes:
    if sids.size and int(sids.max()) > _I4_MAX:
        head, ids = bytes((_FMT_I8,)), sids.astype("<i8", copy=False)
    else:
        head, ids = bytes((_FMT_I4,)), sids.astype("<i4")
    return b"".join(
        (
            head,
            ids.tobytes(),
            ts.astype("<i8", copy=False).tobytes(),
            bits.astype("<u8", copy=False).tobytes(),
        )
    )


def decode_batch(blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fmt = blob[0]
    width = 4 if fmt == _FMT_I4 else 8
    if fmt not in (_FMT_I4, _FMT_I8) or len(blob) != 1 + count * (width + 16):
        raise ValueError(f"corrupt log row (format {fmt}, {len(blob)} bytes for {count} samples)")
    off = 1 + count * width
    sids = np.frombuffer(blob, dtype="<i4" if width == 4 else "<i8", count=count, offset=1)
    ts = np.frombuffer(blob, dtype="<i8", count=count, offset=off)
    bits = np.frombuffer(blob, dtype="<u8", count=count, offset=off + 8 * count)
    return sids.astype(np.int64), ts.astype(np.int64), bits.astype(np.uint64)


@dataclass(slots=True)
class BatchRecord:
    """One appended batch as seen by transaction hooks (the audit log plugs in here)."""

    seq: int | None  # None when nothing of the batch was stored
    source: str
    client: str | None
    created_ms: int
    accepted: int
    stored: int
    duplicates: int
    rejected: int
    # The log blob of the stored samples (encode_batch format), for content hashes.
    data: bytes | None = None
    # "append" from a group commit; "backfill" for hooks registered with backfills=True.
    op: str = "append"


# Runs inside the group-commit transaction, in the writer thread; raising aborts the commit.
TxnHook = Callable[[sqlite3.Connection, Sequence[BatchRecord]], None]

# id, canonical labels text, created_ms
SeriesRow = tuple[int, str, int]
# seq, created_ms, count, blob
WalRow = tuple[int, int, int, bytes]
# flushed_seq, max_t, last_bits (signed), series id
SeriesUpdate = tuple[int, int, int, int]


def write_group(
    conn: sqlite3.Connection,
    series_rows: Sequence[SeriesRow],
    wal_rows: Sequence[WalRow],
    records: Sequence[BatchRecord],
    hooks: Sequence[TxnHook],
) -> None:
    with transaction(conn):
        if series_rows:
            conn.executemany(
                "INSERT INTO series(id, labels, created_ms) VALUES (?, ?, ?)", series_rows
            )
        if wal_rows:
            conn.executemany(
                "INSERT INTO wal(seq, created_ms, count, data) VALUES (?, ?, ?, ?)", wal_rows
            )
        for hook in hooks:
            hook(conn, records)


def write_flush(
    conn: sqlite3.Connection,
    segment_rows: Sequence[SegmentRow],
    series_updates: Sequence[SeriesUpdate],
    trim_below: int,
) -> int:
    """Segments, per-series flush marks and the log trim, all in one transaction."""
    with transaction(conn):
        conn.executemany(
            "INSERT INTO segments(series_id, min_t, max_t, count, codec, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            segment_rows,
        )
        conn.executemany(
            "UPDATE series SET flushed_seq = ?, max_t = ?, last_bits = ? WHERE id = ?",
            series_updates,
        )
        deleted = conn.execute("DELETE FROM wal WHERE seq < ?", (trim_below,)).rowcount
    return int(deleted)


def iter_log(conn: sqlite3.Connection) -> Iterator[tuple[int, int, int, bytes]]:
    yield from conn.execute("SELECT seq, created_ms, count, data FROM wal ORDER BY seq")


def signed64(bits: int) -> int:
    """uint64 bit pattern -> the int64 SQLite can store."""
    return bits - (1 << 64) if bits >= 1 << 63 else bits


def unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value
