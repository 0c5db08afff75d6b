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
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from agent.storage.db import transaction
from agent.storage.segments import SegmentRow

_FMT_I4 = 1  # series ids as int32: 20 bytes per sample instead of 24
_FMT_I8 = 2
_FMT_PACKED = 3  # the log's own format: see pack_batch
_I4_MAX = 2**31 - 1
# Level 1: the transforms leave zstd long runs of equal bytes, which every level
# finds; higher levels bought under 5 % on remote-write batches at 3x the CPU.
_ZSTD_LEVEL = 1
_COMPRESS = threading.local()


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


def _planes(a: np.ndarray) -> bytes:
    """The 8 byte planes of an 8-byte column, lowest first: runs of equal bytes for zstd."""
    return a.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8).T.tobytes()


def _unplanes(raw: bytes, offset: int, count: int) -> np.ndarray:
    planes = np.frombuffer(raw, dtype=np.uint8, count=8 * count, offset=offset).reshape(8, count)
    return np.ascontiguousarray(planes.T).view("<u8").reshape(count)


def _same_series_order(sids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable order by series, in that order: does a sample follow one of its own series)."""
    order = np.argsort(sids, kind="stable")
    ordered = sids[order]
    same = np.zeros(sids.size, dtype=bool)
    same[1:] = ordered[1:] == ordered[:-1]
    return order, same


def pack_batch(sids: np.ndarray, ts: np.ndarray, bits: np.ndarray) -> bytes:
    """The compact log encoding of one batch (format 3), in the order given.

    Replay needs the samples exactly as stored, in the same order, so every
    transform is reversible and order-preserving: series ids and timestamps as
    deltas from the previous sample (a remote-write round is runs of +1 ids
    and one timestamp), values XORed with the previous value of the same
    series within the batch (a backfill or catch-up batch holds many samples
    per series), then the byte planes of the three columns go through zstd.
    No state outside the batch is used, so any row decodes on its own: a
    trimmed or rewritten neighbour can never make a row unreadable.
    """
    n = int(sids.size)
    if n == 0:
        return bytes((_FMT_PACKED,))
    s64 = sids.astype(np.int64, copy=False)
    t64 = ts.astype(np.int64, copy=False)
    b64 = bits.astype(np.uint64, copy=False)
    ds = np.diff(s64, prepend=np.int64(0))
    dt = np.diff(t64, prepend=np.int64(0))
    order, same = _same_series_order(s64)
    ob = b64[order]
    x = ob.copy()
    x[1:][same[1:]] ^= ob[:-1][same[1:]]
    xb = np.empty_like(x)
    xb[order] = x
    comp = getattr(_COMPRESS, "c", None)
    if comp is None:
        comp = _COMPRESS.c = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    body = comp.compress(b"".join((_planes(ds), _planes(dt), _planes(xb))))
    return bytes((_FMT_PACKED,)) + body


def _unpack_batch(blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.uint64)
    want = 24 * count
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[1:], max_output_size=want)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt log row (format 3, {len(blob)} bytes: {exc})") from exc
    if len(raw) != want:
        raise ValueError(f"corrupt log row (format 3, {len(raw)} bytes for {count} samples)")
    sids = np.cumsum(_unplanes(raw, 0, count).view(np.int64))
    ts = np.cumsum(_unplanes(raw, 8 * count, count).view(np.int64))
    xb = _unplanes(raw, 16 * count, count)
    order, same = _same_series_order(sids)
    ox = xb[order]
    # XOR is its own inverse: a running XOR over the series-ordered column, with the
    # running value just before each series' first sample XORed back out.
    cum = np.bitwise_xor.accumulate(ox)
    start = np.maximum.accumulate(np.where(same, 0, np.arange(count)))
    base = np.where(start > 0, cum[np.maximum(start - 1, 0)], np.uint64(0))
    ob = cum ^ base
    bits = np.empty_like(ob)
    bits[order] = ob
    return sids, ts, bits


def decode_batch(blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples of a log row, export-log row or audit blob, in any of the three formats."""
    if not blob:
        raise ValueError("corrupt log row (empty)")
    fmt = blob[0]
    if fmt == _FMT_PACKED:
        return _unpack_batch(blob, count)
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
    # The same samples in the log's compact format (pack_batch), when already made.
    packed: bytes | None = None

    def compact(self) -> bytes | None:
        """The stored samples in the compact format, for tables that keep a copy."""
        if self.packed is None and self.data:
            self.packed = pack_batch(*decode_batch(self.data, self.stored))
        return self.packed


# Runs inside the group-commit transaction, in the writer thread; raising aborts the commit.
TxnHook = Callable[[sqlite3.Connection, Sequence[BatchRecord]], None]

# id, label pair ids (see SeriesIndex.encode_new), created_ms
SeriesRow = tuple[int, bytes, int]
# id, name, value
PairRow = tuple[int, str, str]
# seq, created_ms, count, blob
WalRow = tuple[int, int, int, bytes]
# flushed_seq, max_t, last_bits (signed), series id
SeriesUpdate = tuple[int, int, int, int]


def insert_series(
    conn: sqlite3.Connection, pair_rows: Sequence[PairRow], series_rows: Sequence[SeriesRow]
) -> None:
    """New label pairs and series rows (inside the caller's transaction)."""
    if pair_rows:
        conn.executemany("INSERT INTO label_pairs(id, name, value) VALUES (?, ?, ?)", pair_rows)
    if series_rows:
        conn.executemany("INSERT INTO series(id, labels, created_ms) VALUES (?, ?, ?)", series_rows)


# Rows a job stages at a time for an all-or-nothing import's new series (a few tens of ms).
STAGE_SERIES_ROWS = 20_000


def stage_series(
    conn: sqlite3.Connection,
    pair_rows: Sequence[PairRow],
    series_rows: Sequence[SeriesRow],
    frontiers: Sequence[tuple[int | None, int | None]] = (),
) -> None:
    """Keep new series' rows in TEMP tables until the job that stores them commits.

    An import that creates 200,000 series would otherwise bind every row
    inside its commit job while appends wait; staged, that job copies them
    with two ``INSERT ... SELECT`` (see :func:`insert_staged_series`).
    ``frontiers`` (newest timestamp and value bits, signed, per row) spare
    the job updating the rows it has just inserted.
    """
    _create_series_stage(conn)
    conn.executemany("INSERT INTO temp.new_pairs VALUES (?, ?, ?)", pair_rows)
    if frontiers:
        rows = [(*r, *f) for r, f in zip(series_rows, frontiers, strict=True)]
    else:
        rows = [(*r, None, None) for r in series_rows]
    conn.executemany("INSERT INTO temp.new_series VALUES (?, ?, ?, ?, ?)", rows)


def _create_series_stage(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS new_pairs (id INTEGER, name TEXT, value TEXT)")
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS new_series (id INTEGER, labels BLOB, created_ms INTEGER,"
        " max_t INTEGER, last_bits INTEGER)"
    )


def insert_staged_series(conn: sqlite3.Connection) -> None:
    """Store the rows :func:`stage_series` kept (inside the caller's transaction)."""
    _create_series_stage(conn)
    conn.execute("INSERT INTO label_pairs(id, name, value) SELECT * FROM temp.new_pairs")
    conn.execute(
        "INSERT INTO series(id, labels, created_ms, max_t, last_bits) SELECT * FROM temp.new_series"
    )


def unstage_series(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.new_pairs")
    conn.execute("DROP TABLE IF EXISTS temp.new_series")


def write_group(
    conn: sqlite3.Connection,
    pair_rows: Sequence[PairRow],
    series_rows: Sequence[SeriesRow],
    wal_rows: Sequence[WalRow],
    records: Sequence[BatchRecord],
    hooks: Sequence[TxnHook],
) -> None:
    with transaction(conn):
        insert_series(conn, pair_rows, series_rows)
        if wal_rows:
            conn.executemany(
                "INSERT INTO wal(seq, created_ms, count, data) VALUES (?, ?, ?, ?)", wal_rows
            )
        for hook in hooks:
            hook(conn, records)


def write_checkpoint(
    conn: sqlite3.Connection,
    joined: Callable[[list[int]], tuple[np.ndarray, np.ndarray, np.ndarray]],
    chunks: Sequence[np.ndarray],
    first: int,
    ts_now: int,
) -> tuple[int, int]:
    """The head's samples as log rows ``first``, ``first + 1``, ... (one per chunk of
    series), replacing every older row in one transaction; (bytes, rows deleted).

    ``joined`` is the head's (counts, timestamps, value bits) of some series;
    the writer task waits meanwhile, so the head does not change under it.
    """
    rows: list[WalRow] = []
    size = 0
    for k, chunk in enumerate(chunks):
        counts, ts, vb = joined(chunk.tolist())
        blob = pack_batch(np.repeat(chunk, counts), ts, vb)
        rows.append((first + k, ts_now, int(counts.sum()), blob))
        size += len(blob)
    with transaction(conn):
        deleted = conn.execute("DELETE FROM wal WHERE seq < ?", (first,)).rowcount
        conn.executemany("INSERT INTO wal(seq, created_ms, count, data) VALUES (?, ?, ?, ?)", rows)
    return size, int(deleted)


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
