"""Versioned point writes, their history, and rollback.

``append`` never changes a stored value: a different value at an existing
timestamp is rejected.  ``record_write`` is the deliberate exception: it
replaces the value wherever it lives and keeps the previous one in
``versions``, one row per changed point, next to an audit row naming who did
it.

How a replacement stays true across the head, the log and segments: the edit
runs as a writer job (one transaction, serialised with every append and
flush).  If the series has samples in the head, the job first flushes that
series' head into segments in the same transaction and marks the series
flushed up to its last log row, so replay will never bring the old value back
from the log.  The edit itself then only ever rewrites segment blocks: a
replaced value is changed in every block that holds the timestamp, a new
point is inserted into a block whose time range covers it or written as a
small block of its own.  After the commit the head releases the series.
The cost is a few small segments for series edited while they had head data;
edits are rare, appends are not, so the append path stays untouched.

Rollback undoes, per (series, timestamp), the earliest change at or after the
chosen audit row: a ``versions`` row restores its previous value (or removes
the point if there was none), a point stored by an appended batch (known from
``audit_points``) is removed.  Every point the rollback changes gets its own
``versions`` row, so a rollback can itself be rolled back.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.storage.audit import decode_points, get_row, write_audit
from agent.storage.db import MIGRATIONS
from agent.storage.head import INT64_MIN
from agent.storage.index import encode_labels
from agent.storage.segments import FlushItem, SegmentRow, encode_series
from agent.storage.wal import signed64, unsigned64

if TYPE_CHECKING:
    from agent.storage.head import Head
    from agent.storage.index import SeriesIndex
    from agent.storage.segments import CodecChooser
    from agent.storage.writer import Counters


@MIGRATIONS()
def m005_versions(conn: sqlite3.Connection) -> None:
    # value_bits: the value before the change (NULL: the point did not exist);
    # new_bits: the value after it (NULL: the point was removed);
    # audit_id: the audited operation that made the change;
    # written_by: the audit row that had written value_bits, when known cheaply
    # (NULL for values that came from an appended batch: history() finds that one).
    conn.execute(
        "CREATE TABLE versions ("
        " id INTEGER PRIMARY KEY,"
        " series_id INTEGER NOT NULL,"
        " t INTEGER NOT NULL,"
        " value_bits INTEGER,"
        " new_bits INTEGER,"
        " audit_id INTEGER NOT NULL,"
        " replaced_at_ms INTEGER NOT NULL,"
        " written_by INTEGER)"
    )
    conn.execute("CREATE INDEX versions_by_point ON versions(series_id, t, audit_id)")
    conn.execute("CREATE INDEX versions_by_audit ON versions(audit_id)")


@dataclass(frozen=True, slots=True)
class Version:
    """One value a point has held, with the audit row that wrote it (None: unknown)."""

    value: float
    audit_id: int | None
    user: str | None
    source: str | None
    at_ms: int | None
    current: bool
    value_bits: int = 0
    op: str | None = None


@dataclass(slots=True)
class EditContext:
    """What a job needs from the store; read in the SQL thread, changed only in ``after``."""

    head: Head
    index: SeriesIndex
    chooser: CodecChooser
    block_size: int
    counters: Counters


@dataclass(slots=True)
class SeriesEdit:
    """The outcome of one series' edit, applied to the head after the commit."""

    series_id: int
    ts: np.ndarray
    prev_bits: np.ndarray
    prev_present: np.ndarray
    flushed_max: int | None  # the head was flushed first; its newest timestamp
    max_t: int | None  # newest stored timestamp afterwards; None when nothing is left
    last_bits: int
    segments_delta: int


@dataclass(slots=True)
class _Block:
    id: int
    codec: str
    min_t: int
    max_t: int
    t: np.ndarray
    bits: np.ndarray
    idx: np.ndarray | None = None
    hit: np.ndarray | None = None


def value_bits(value: float) -> int:
    """The float's exact bit pattern (NaN payloads such as the staleness marker included)."""
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def bits_value(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


# --- editing segments (SQL thread, inside a writer job) ---------------------------------


def _flush_head(conn: sqlite3.Connection, ctx: EditContext, sid: int) -> tuple[int, int] | None:
    """Move the series' head into segments; returns (newest timestamp, rows written)."""
    bufs = ctx.head.buffers(sid)
    if bufs is None:
        return None
    item = FlushItem(sid, ctx.chooser.name_for(ctx.index.labels(sid)), *bufs)
    rows, _, mx = encode_series(item, ctx.chooser, ctx.block_size)
    _insert_segments(conn, rows)
    conn.execute(
        "UPDATE series SET flushed_seq = ? WHERE id = ?", (int(ctx.head.last_seq[sid]), sid)
    )
    return mx, len(rows)


def _insert_segments(conn: sqlite3.Connection, rows: list[SegmentRow]) -> None:
    conn.executemany(
        "INSERT INTO segments(series_id, min_t, max_t, count, codec, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def _load_blocks(
    conn: sqlite3.Connection, ctx: EditContext, sid: int, lo: int, hi: int
) -> list[_Block]:
    blocks = []
    for rid, mn, mx, cnt, codec, data in conn.execute(
        "SELECT id, min_t, max_t, count, codec, data FROM segments"
        " WHERE series_id = ? AND max_t >= ? AND min_t <= ? ORDER BY max_t, id",
        (sid, lo, hi),
    ):
        t, v = ctx.chooser.get(codec).decode(data, cnt)
        blocks.append(
            _Block(
                rid,
                codec,
                mn,
                mx,
                np.array(t, dtype=np.int64),
                np.array(v, dtype=np.float64).view(np.uint64),
            )
        )
    return blocks


def edit_series(
    conn: sqlite3.Connection,
    ctx: EditContext,
    sid: int,
    ts: np.ndarray,
    new_bits: np.ndarray,
    present: np.ndarray,
) -> SeriesEdit:
    """Set (``present``) or remove (not ``present``) points of one series.

    ``ts`` must be sorted and unique.  Returns what each point held before, in
    storage order of precedence (the first block in ``max_t`` order, as reads
    see it), so the caller can record versions.
    """
    flushed = _flush_head(conn, ctx, sid)
    delta = flushed[1] if flushed else 0
    n = ts.size
    prev_bits = np.zeros(n, dtype=np.uint64)
    prev_present = np.zeros(n, dtype=bool)
    blocks = _load_blocks(conn, ctx, sid, int(ts[0]), int(ts[-1])) if n else []
    for b in blocks:
        idx = np.searchsorted(b.t, ts)
        inb = idx < b.t.size
        hit = np.zeros(n, dtype=bool)
        hit[inb] = b.t[idx[inb]] == ts[inb]
        first = hit & ~prev_present
        prev_bits[first] = b.bits[idx[first]]
        prev_present |= hit
        b.idx, b.hit = idx, hit
    placed = prev_present.copy()
    for b in blocks:
        assert b.idx is not None and b.hit is not None
        changed = False
        t_new, bits_new = b.t, b.bits
        rep = b.hit & present
        if rep.any():
            pos = b.idx[rep]
            if bool(np.any(bits_new[pos] != new_bits[rep])):
                bits_new = bits_new.copy()
                bits_new[pos] = new_bits[rep]
                changed = True
        rem = b.hit & ~present
        if rem.any():
            keep = np.ones(t_new.size, dtype=bool)
            keep[b.idx[rem]] = False
            t_new, bits_new = t_new[keep], bits_new[keep]
            changed = True
        ins = present & ~placed & (ts >= b.min_t) & (ts <= b.max_t)
        if ins.any():
            placed |= ins
            t_new = np.concatenate((t_new, ts[ins]))
            bits_new = np.concatenate((bits_new, new_bits[ins]))
            order = np.argsort(t_new, kind="stable")
            t_new, bits_new = t_new[order], bits_new[order]
            changed = True
        if not changed:
            continue
        if t_new.size == 0:
            conn.execute("DELETE FROM segments WHERE id = ?", (b.id,))
            delta -= 1
            continue
        data = ctx.chooser.get(b.codec).encode(t_new, bits_new.view(np.float64))
        conn.execute(
            "UPDATE segments SET min_t = ?, max_t = ?, count = ?, data = ? WHERE id = ?",
            (int(t_new[0]), int(t_new[-1]), int(t_new.size), bytes(data), b.id),
        )
    rest = present & ~placed
    if rest.any():
        at = np.ascontiguousarray(ts[rest], dtype=np.int64)
        ab = np.ascontiguousarray(new_bits[rest], dtype=np.uint64)
        item = FlushItem(sid, ctx.chooser.name_for(ctx.index.labels(sid)), at, ab)
        rows, _, _ = encode_series(item, ctx.chooser, ctx.block_size)
        _insert_segments(conn, rows)
        delta += len(rows)
    max_t, last_bits = _newest(conn, ctx, sid)
    conn.execute(
        "UPDATE series SET max_t = ?, last_bits = ? WHERE id = ?",
        (max_t, None if max_t is None else signed64(last_bits), sid),
    )
    return SeriesEdit(
        sid,
        ts,
        prev_bits,
        prev_present,
        None if flushed is None else flushed[0],
        max_t,
        last_bits,
        delta,
    )


def _newest(conn: sqlite3.Connection, ctx: EditContext, sid: int) -> tuple[int | None, int]:
    """Newest stored timestamp and its bits; the head of ``sid`` is empty at this point.

    Recomputed rather than kept: a rollback that removes the newest samples
    lowers it, so corrected data can be appended again in order.
    """
    row = conn.execute(
        "SELECT max_t, count, codec, data FROM segments WHERE series_id = ?"
        " ORDER BY max_t DESC LIMIT 1",
        (sid,),
    ).fetchone()
    if row is None:
        return None, 0
    mx, cnt, codec, data = row
    t, v = ctx.chooser.get(codec).decode(data, cnt)
    i = int(np.searchsorted(t, mx))
    return int(mx), int(np.asarray(v[i : i + 1], dtype=np.float64).view(np.uint64)[0])


def apply_edits(ctx: EditContext, edits: list[SeriesEdit]) -> None:
    """Event-loop side of a job: make the head agree with what was committed."""
    head = ctx.head
    head.forget_newest([e.series_id for e in edits])
    for e in edits:
        sid = e.series_id
        if e.flushed_max is not None:
            head.release([sid], [e.flushed_max])
        newest = INT64_MIN if e.max_t is None else e.max_t
        head.max_t[sid] = newest
        head.last_bits[sid] = e.last_bits
        head.seg_max_t[sid] = newest
        ctx.counters.segments += e.segments_delta


# --- record_write -------------------------------------------------------------------------


def record_write_sql(
    conn: sqlite3.Connection,
    ctx: EditContext,
    sid: int,
    t: int,
    bits: int,
    *,
    user: str | None,
    source: str,
    tags: Mapping[str, Any] | None,
    at_ms: int,
) -> tuple[int, SeriesEdit]:
    """The job body of ``Store.record_write``: edit, audit row, versions row."""
    edit = edit_series(
        conn,
        ctx,
        sid,
        np.array([t], dtype=np.int64),
        np.array([bits], dtype=np.uint64),
        np.array([True]),
    )
    prev = int(edit.prev_bits[0]) if bool(edit.prev_present[0]) else None
    written_by = None
    if prev is not None:
        last = conn.execute(
            "SELECT audit_id, new_bits FROM versions WHERE series_id = ? AND t = ?"
            " ORDER BY audit_id DESC, id DESC LIMIT 1",
            (sid, t),
        ).fetchone()
        if last is not None and last[1] is not None and unsigned64(last[1]) == prev:
            written_by = int(last[0])
    detail: dict[str, Any] = {
        "series_id": sid,
        "labels": encode_labels(ctx.index.labels(sid)),
        "t": t,
        "value_bits": f"{bits:016x}",
        "previous_bits": None if prev is None else f"{prev:016x}",
    }
    if tags:
        detail["tags"] = dict(tags)
    aid = write_audit(
        conn,
        op="write",
        source=source,
        user=user,
        sample_count=1,
        series_count=1,
        min_t=t,
        max_t=t,
        content_hash=hashlib.sha256(struct.pack("<qqQ", sid, t, bits)).digest(),
        detail=detail,
        at_ms=at_ms,
    )
    conn.execute(
        "INSERT INTO versions(series_id, t, value_bits, new_bits, audit_id, replaced_at_ms,"
        " written_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (sid, t, None if prev is None else signed64(prev), signed64(bits), aid, at_ms, written_by),
    )
    return aid, edit


# --- history (reader thread) --------------------------------------------------------------


def find_batch_writer(
    conn: sqlite3.Connection, sid: int, t: int, *, after: int = 0, before: int | None = None
) -> int | None:
    """The newest appended batch in (after, before) that stored (sid, t), or None.

    Only batches whose time range covers ``t`` are decoded; for a series
    scraped in order that is a handful of rows.
    """
    cur = conn.execute(
        "SELECT a.id, p.count, p.data FROM audit a JOIN audit_points p ON p.audit_id = a.id"
        " WHERE a.max_t >= ? AND a.min_t <= ? AND a.id > ? AND a.id < ? ORDER BY a.id DESC",
        (t, t, after, before if before is not None else 2**63 - 1),
    )
    for aid, count, data in cur:
        s, ts = decode_points(bytes(data), count)
        if bool(np.any((s == sid) & (ts == t))):
            cur.close()
            return int(aid)
    return None


def history_states(
    conn: sqlite3.Connection, sid: int, t: int, current: int | None
) -> list[tuple[int, int | None]]:
    """(value bits, writing audit id) of every value (sid, t) has held, oldest first.

    ``current`` is the value stored now (None: absent); a value that appeared
    without a ``versions`` row (an appended batch) is attributed by searching
    the batches' points.
    """
    rows = conn.execute(
        "SELECT value_bits, new_bits, audit_id, written_by FROM versions"
        " WHERE series_id = ? AND t = ? ORDER BY audit_id, id",
        (sid, t),
    ).fetchall()
    states: list[tuple[int, int | None]] = []
    prev_new: int | None = None
    prev_aid = 0
    for vb, nb, aid, written_by in rows:
        old = None if vb is None else unsigned64(vb)
        if old is not None and old != prev_new:
            writer = written_by or find_batch_writer(conn, sid, t, after=prev_aid, before=aid)
            states.append((old, writer))
        prev_new = None if nb is None else unsigned64(nb)
        if prev_new is not None:
            states.append((prev_new, int(aid)))
        prev_aid = int(aid)
    if current is not None and current != prev_new:
        states.append((current, find_batch_writer(conn, sid, t, after=prev_aid)))
    return states


def to_versions(
    conn: sqlite3.Connection, states: list[tuple[int, int | None]], current: int | None
) -> list[Version]:
    out = []
    for i, (b, aid) in enumerate(states):
        row = get_row(conn, aid) if aid is not None else None
        out.append(
            Version(
                value=bits_value(b),
                audit_id=aid,
                user=row.user if row else None,
                source=row.source if row else None,
                at_ms=row.at_ms if row else None,
                current=current is not None and i == len(states) - 1,
                value_bits=b,
                op=row.op if row else None,
            )
        )
    return out
