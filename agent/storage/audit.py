"""The audit trail: an append-only, hash-chained record of every write operation.

Each row describes one operation (an appended batch, a ``record_write``, a
rollback, a retention deletion, a re-encoding): when, by whom, how many
samples and series, the time range touched and a hash of the content.  Every
row also carries the hash of the row before it, and its own hash covers its
fields plus that previous hash, so editing, deleting or reordering any row
breaks the chain from that row on and :func:`verify_chain` names the first
broken one.

What this protects against, and what not: triggers make ``UPDATE`` and
``DELETE`` fail, which stops accidents and careless tools.  Someone able to
write the file can drop the triggers, edit rows and recompute every later
hash; there is no secret key, so the chain then verifies again.  Truncating
the newest rows cannot be seen from the chain alone either.  Anchoring the
newest hash outside the database (a log line, a remote service) closes both
gaps; :func:`chain_head` returns what to anchor.

Appended batches additionally keep the exact (series, timestamp) points they
stored in ``audit_points`` (delta-encoded, zstd-compressed), which is what lets
``rollback`` remove them after the log that held them was trimmed.  That side
table is not part of the chain (the content hash already pins the batch), so
it can be pruned together with the data it describes: see :func:`prune_points`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from agent.storage.db import MIGRATIONS
from agent.storage.wal import BatchRecord, decode_batch

GENESIS_HASH = bytes(32)
_HASH_DOMAIN = b"tsagent-audit-v1\x00"
_POINTS_FORMAT = 1
# Level 3 (zstd's default): for a typical scrape batch the deltas are runs of equal
# numbers and compress to a few dozen bytes in microseconds; jittered timestamps
# cost ~2-3 bytes a point at ~100 us per 5,000 points.
_ZSTD_LEVEL = 3

APPEND_ONLY_MESSAGE = "audit is append-only"

AUDIT_COLUMNS = (
    "id, at_ms, op, source, user, sample_count, series_count, min_t, max_t,"
    " content_hash, detail, prev_hash, hash"
)


@MIGRATIONS()
def m004_audit(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE audit ("
        " id INTEGER PRIMARY KEY,"
        " at_ms INTEGER NOT NULL,"
        " op TEXT NOT NULL,"
        " source TEXT NOT NULL,"
        " user TEXT,"
        " sample_count INTEGER NOT NULL,"
        " series_count INTEGER NOT NULL,"
        " min_t INTEGER,"
        " max_t INTEGER,"
        " content_hash BLOB NOT NULL,"
        " detail TEXT,"
        " prev_hash BLOB NOT NULL,"
        " hash BLOB NOT NULL)"
    )
    # history() looks for the batch that first wrote a (series, timestamp).
    conn.execute("CREATE INDEX audit_by_time ON audit(max_t, min_t)")
    conn.execute("CREATE INDEX audit_by_at ON audit(at_ms)")
    for event in ("UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER audit_no_{event.lower()} BEFORE {event} ON audit"
            f" BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )
    # INSERT OR REPLACE would delete the old row without firing the DELETE trigger
    # (recursive_triggers is off), so inserts may only ever extend the table.
    conn.execute(
        "CREATE TRIGGER audit_no_rewrite BEFORE INSERT ON audit"
        " WHEN NEW.id <= (SELECT max(id) FROM audit)"
        f" BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
    )
    conn.execute(
        "CREATE TABLE audit_points ("
        " audit_id INTEGER PRIMARY KEY,"
        " count INTEGER NOT NULL,"
        " data BLOB NOT NULL)"
    )


# --- the chain --------------------------------------------------------------------------


def _encode_detail(detail: dict[str, Any] | None) -> str | None:
    if detail is None:
        return None
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def row_hash(
    prev_hash: bytes,
    row_id: int,
    at_ms: int,
    op: str,
    source: str,
    user: str | None,
    sample_count: int,
    series_count: int,
    min_t: int | None,
    max_t: int | None,
    content_hash: bytes,
    detail_text: str | None,
) -> bytes:
    """sha256 over a canonical encoding of the row and the previous row's hash.

    The id is included so rows cannot be renumbered; the detail is hashed as
    the exact text stored, so verification never depends on how JSON is
    re-serialised.
    """
    fields = [
        row_id,
        at_ms,
        op,
        source,
        user,
        sample_count,
        series_count,
        min_t,
        max_t,
        content_hash.hex(),
        detail_text,
    ]
    payload = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(_HASH_DOMAIN + prev_hash + payload).digest()


def chain_head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(id, hash) of the newest row, or (0, GENESIS_HASH) for an empty trail."""
    row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return 0, GENESIS_HASH
    return int(row[0]), bytes(row[1])


def write_audit(
    conn: sqlite3.Connection,
    *,
    op: str,
    source: str,
    user: str | None,
    sample_count: int,
    series_count: int,
    min_t: int | None,
    max_t: int | None,
    content_hash: bytes,
    detail: dict[str, Any] | None = None,
    at_ms: int | None = None,
) -> int:
    """Append one chained row; returns its id.  Must run inside an open transaction.

    The previous hash is read from the table each time rather than cached: it is
    one lookup at the end of the rowid b-tree per operation, and a cache would
    go stale whenever a transaction that wrote a row is rolled back.
    """
    if not conn.in_transaction:
        raise RuntimeError("write_audit must be called inside a transaction")
    if at_ms is None:
        at_ms = time.time_ns() // 1_000_000
    last_id, prev = chain_head(conn)
    row_id = last_id + 1
    detail_text = _encode_detail(detail)
    content_hash = bytes(content_hash)
    fields = (
        row_id,
        at_ms,
        op,
        source,
        user,
        sample_count,
        series_count,
        min_t,
        max_t,
        content_hash,
        detail_text,
    )
    h = row_hash(prev, *fields)
    conn.execute(
        f"INSERT INTO audit({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields, prev, h),
    )
    return row_id


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    rows_checked: int
    first_broken_id: int | None = None
    reason: str | None = None


def verify_chain(conn: sqlite3.Connection) -> VerifyResult:
    """Recompute the chain from the first row; stop at the first row that does not fit.

    One SELECT, so on a WAL database it reads one consistent snapshot even
    while the daemon keeps appending.
    """
    expected_prev = GENESIS_HASH
    expected_id = 1
    checked = 0
    cur = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
    for row in cur:
        rid, chash, detail, prev, h = row[0], row[9], row[10], row[11], row[12]
        problem = _check_row(row, expected_id, expected_prev)
        if problem is None:
            # The stored columns, in the order write_audit hashed them.
            computed = row_hash(bytes(prev), *[*row[:9], bytes(chash), detail])
            if computed != bytes(h):
                problem = "row hash does not match its contents (row was modified)"
        if problem is not None:
            cur.close()
            return VerifyResult(False, checked, int(rid), problem)
        checked += 1
        expected_prev = bytes(h)
        expected_id = rid + 1
    return VerifyResult(True, checked)


def _check_row(row: Sequence[Any], expected_id: int, expected_prev: bytes) -> str | None:
    rid, at_ms, op, source, _user, samples, series, mn, mx, chash, detail, prev, h = row
    if not isinstance(rid, int):
        return "id is not an integer"
    if rid != expected_id:
        if expected_id == 1:
            return f"rows before id {rid} are missing (the chain starts at id 1)"
        return f"rows {expected_id}..{rid - 1} are missing"
    types_ok = (
        isinstance(at_ms, int)
        and isinstance(op, str)
        and isinstance(source, str)
        and isinstance(samples, int)
        and isinstance(series, int)
        and (mn is None or isinstance(mn, int))
        and (mx is None or isinstance(mx, int))
        and isinstance(chash, bytes)
        and (detail is None or isinstance(detail, str))
        and isinstance(prev, bytes)
        and isinstance(h, bytes)
    )
    if not types_ok:
        return "a column has the wrong type (row was modified)"
    if prev != expected_prev:
        if expected_id == 1:
            return "prev_hash of the first row is not the genesis hash"
        return f"prev_hash does not match the hash of row {rid - 1}"
    return None


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at_ms: int
    op: str
    source: str
    user: str | None
    sample_count: int
    series_count: int
    min_t: int | None
    max_t: int | None
    content_hash: bytes
    detail: dict[str, Any] | None
    hash: bytes


def _row(values: Sequence[Any]) -> AuditRow:
    rid, at_ms, op, source, user, samples, series, mn, mx, chash, detail, _prev, h = values
    return AuditRow(
        rid,
        at_ms,
        op,
        source,
        user,
        samples,
        series,
        mn,
        mx,
        bytes(chash),
        json.loads(detail) if detail else None,
        bytes(h),
    )


def get_row(conn: sqlite3.Connection, audit_id: int) -> AuditRow | None:
    found = conn.execute(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id = ?", (audit_id,)).fetchone()
    return None if found is None else _row(found)


def recent_rows(conn: sqlite3.Connection, limit: int = 20) -> list[AuditRow]:
    """The newest ``limit`` rows, oldest first (for ``tsagent audit log``)."""
    rows = conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_row(r) for r in reversed(rows)]


# --- per-batch points -------------------------------------------------------------------


def encode_points(sids: np.ndarray, ts: np.ndarray) -> bytes:
    """Delta-encode both columns, then zstd: scrape batches become runs of equal numbers."""
    s = np.asarray(sids, dtype=np.int64)
    t = np.asarray(ts, dtype=np.int64)
    ds = np.diff(s, prepend=np.int64(0)).astype("<i8", copy=False)
    dt = np.diff(t, prepend=np.int64(0)).astype("<i8", copy=False)
    raw = ds.tobytes() + dt.tobytes()
    return bytes((_POINTS_FORMAT,)) + _compressor().compress(raw)


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One per thread (they are not thread-safe); creating one costs ~15 us per batch."""
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None:
        comp = _local.zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return comp


def decode_points(blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    if not blob or blob[0] != _POINTS_FORMAT:
        raise ValueError("unknown audit points format")
    raw = zstandard.ZstdDecompressor().decompress(blob[1:], max_output_size=16 * count)
    if len(raw) != 16 * count:
        raise ValueError(f"audit points blob holds {len(raw)} bytes for {count} points")
    ds = np.frombuffer(raw, dtype="<i8", count=count)
    dt = np.frombuffer(raw, dtype="<i8", count=count, offset=8 * count)
    # Wrapping int64 arithmetic makes the round trip exact for any timestamps.
    return np.cumsum(ds, dtype=np.int64), np.cumsum(dt, dtype=np.int64)


def iter_points(
    conn: sqlite3.Connection, first_id: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(audit id, series ids, timestamps) of every batch from ``first_id`` on."""
    cur = conn.execute(
        "SELECT audit_id, count, data FROM audit_points WHERE audit_id >= ? ORDER BY audit_id",
        (first_id,),
    )
    for aid, count, data in cur:
        s, t = decode_points(bytes(data), count)
        yield int(aid), s, t


def prune_points(conn: sqlite3.Connection, older_than_t: int) -> int:
    """Drop the points of batches whose newest sample is older than ``older_than_t``.

    Meant for retention: once the samples are gone there is nothing for a
    rollback to remove.  The audit rows themselves stay.
    """
    cur = conn.execute(
        "DELETE FROM audit_points WHERE audit_id IN (SELECT id FROM audit WHERE max_t < ?)",
        (older_than_t,),
    )
    return int(cur.rowcount)


# --- the group-commit hook --------------------------------------------------------------


def append_hook(conn: sqlite3.Connection, records: Sequence[BatchRecord]) -> None:
    """One audit row (and one points row) per appended batch, in the commit's transaction.

    Runs in the SQL thread, so hashing and compression do not hold up the event
    loop; both release the GIL for large inputs.  A batch that stored nothing
    (all duplicates or rejected) still gets a row with zero counts: it was a
    write operation, and the trail should show that it was attempted.
    """
    for rec in records:
        detail: dict[str, Any] = {
            "accepted": rec.accepted,
            "duplicates": rec.duplicates,
            "rejected": rec.rejected,
        }
        if rec.seq is not None:
            detail["seq"] = rec.seq
        data = rec.data if rec.stored else None
        if not data:
            write_audit(
                conn,
                op="append",
                source=rec.source,
                user=rec.client,
                sample_count=0,
                series_count=0,
                min_t=None,
                max_t=None,
                content_hash=hashlib.sha256(b"").digest(),
                detail=detail,
                at_ms=rec.created_ms,
            )
            continue
        sids, ts, _ = decode_batch(data, rec.stored)
        if sids.size > 1 and bool(np.all(sids[1:] >= sids[:-1])):
            series = int(np.count_nonzero(sids[1:] != sids[:-1])) + 1
        else:
            series = int(np.unique(sids).size)
        aid = write_audit(
            conn,
            op="append",
            source=rec.source,
            user=rec.client,
            sample_count=rec.stored,
            series_count=series,
            min_t=int(ts.min()),
            max_t=int(ts.max()),
            content_hash=hashlib.sha256(data).digest(),
            detail=detail,
            at_ms=rec.created_ms,
        )
        conn.execute(
            "INSERT INTO audit_points(audit_id, count, data) VALUES (?, ?, ?)",
            (aid, rec.stored, encode_points(sids, ts)),
        )
