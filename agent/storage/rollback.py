"""Rollback: undo audited writes after a point, restoring the values they replaced.

Runs on the SQL thread inside a writer job, with the versioned-edit helpers
of :mod:`agent.storage.versions` (kept apart so each module reads on its own).
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from agent.storage.audit import chain_head, get_row, iter_points, write_audit
from agent.storage.wal import signed64, unsigned64

if TYPE_CHECKING:
    pass


from agent.storage.versions import EditContext, SeriesEdit, edit_series


def first_audit_at(conn: sqlite3.Connection, before_ms: int) -> int:
    """The first audit id at or after ``before_ms``; past the end when there is none.

    Ids, not times, order the trail: if the clock stepped back, rows written
    after this one with earlier times are rolled back too.
    """
    row = conn.execute("SELECT min(id) FROM audit WHERE at_ms >= ?", (before_ms,)).fetchone()
    if row[0] is not None:
        return int(row[0])
    return chain_head(conn)[0] + 1


def rollback_sql(
    conn: sqlite3.Connection,
    ctx: EditContext,
    *,
    audit_id: int | None,
    before_ms: int | None,
    user: str | None,
    source: str,
    at_ms: int,
) -> tuple[int, list[SeriesEdit]]:
    """The job body of ``Store.rollback``; returns (new audit id, edits for the head).

    Cost: it decodes the points of every batch appended since the target, so
    rolling back far into the past at a high ingest rate reads and holds a lot
    (~25 bytes of memory per point); it also blocks writes while it runs.
    """
    if audit_id is not None:
        if get_row(conn, audit_id) is None:
            raise ValueError(f"no audit row {audit_id}")
        first = audit_id
    elif before_ms is not None:
        first = first_audit_at(conn, before_ms)
    else:
        raise ValueError("rollback needs an audit id or a time")
    last_id = chain_head(conn)[0]

    parts_s: list[np.ndarray] = []
    parts_t: list[np.ndarray] = []
    parts_e: list[np.ndarray] = []
    parts_b: list[np.ndarray] = []
    parts_p: list[np.ndarray] = []
    vrows = conn.execute(
        "SELECT series_id, t, value_bits, audit_id FROM versions WHERE audit_id >= ?"
        " ORDER BY audit_id, id",
        (first,),
    ).fetchall()
    if vrows:
        parts_s.append(np.array([r[0] for r in vrows], dtype=np.int64))
        parts_t.append(np.array([r[1] for r in vrows], dtype=np.int64))
        parts_e.append(np.array([r[3] for r in vrows], dtype=np.int64))
        parts_b.append(
            np.array([0 if r[2] is None else unsigned64(r[2]) for r in vrows], dtype=np.uint64)
        )
        parts_p.append(np.array([r[2] is not None for r in vrows], dtype=bool))
    batches = 0
    for aid, s, t in iter_points(conn, first):
        batches += 1
        parts_s.append(s)
        parts_t.append(t)
        parts_e.append(np.full(s.size, aid, dtype=np.int64))
        parts_b.append(np.zeros(s.size, dtype=np.uint64))
        parts_p.append(np.zeros(s.size, dtype=bool))

    edits: list[SeriesEdit] = []
    ch_s: list[np.ndarray] = []
    ch_t: list[np.ndarray] = []
    ch_old: list[np.ndarray] = []
    ch_oldp: list[np.ndarray] = []
    ch_new: list[np.ndarray] = []
    ch_newp: list[np.ndarray] = []
    if parts_s:
        sids = np.concatenate(parts_s)
        ts = np.concatenate(parts_t)
        eids = np.concatenate(parts_e)
        target = np.concatenate(parts_b)
        tpresent = np.concatenate(parts_p)
        # Per (series, timestamp) the earliest change since the target decides.
        order = np.lexsort((eids, ts, sids))
        sids, ts, target, tpresent = sids[order], ts[order], target[order], tpresent[order]
        first_of = np.ones(sids.size, dtype=bool)
        first_of[1:] = (sids[1:] != sids[:-1]) | (ts[1:] != ts[:-1])
        sids, ts, target, tpresent = (
            sids[first_of],
            ts[first_of],
            target[first_of],
            tpresent[first_of],
        )
        brk = np.flatnonzero(sids[1:] != sids[:-1]) + 1
        starts = np.concatenate(([0], brk)).tolist()
        ends = np.concatenate((brk, [sids.size])).tolist()
        for lo, hi in zip(starts, ends, strict=True):
            sid = int(sids[lo])
            e = edit_series(conn, ctx, sid, ts[lo:hi], target[lo:hi], tpresent[lo:hi])
            edits.append(e)
            newp = tpresent[lo:hi]
            changed = (e.prev_present != newp) | (
                e.prev_present & newp & (e.prev_bits != target[lo:hi])
            )
            if changed.any():
                ch_s.append(np.full(int(changed.sum()), sid, dtype=np.int64))
                ch_t.append(ts[lo:hi][changed])
                ch_old.append(e.prev_bits[changed])
                ch_oldp.append(e.prev_present[changed])
                ch_new.append(target[lo:hi][changed])
                ch_newp.append(newp[changed])

    if ch_s:
        cs, ct = np.concatenate(ch_s), np.concatenate(ch_t)
        cold, coldp = np.concatenate(ch_old), np.concatenate(ch_oldp)
        cnew, cnewp = np.concatenate(ch_new), np.concatenate(ch_newp)
    else:
        cs = ct = np.zeros(0, dtype=np.int64)
        cold = cnew = np.zeros(0, dtype=np.uint64)
        coldp = cnewp = np.zeros(0, dtype=bool)
    digest = hashlib.sha256()
    for arr in (cs, ct, cnew, cnewp):
        digest.update(np.ascontiguousarray(arr).tobytes())
    removed = int(np.count_nonzero(~cnewp))
    rid = write_audit(
        conn,
        op="rollback",
        source=source,
        user=user,
        sample_count=int(cs.size),
        series_count=int(np.unique(cs).size),
        min_t=int(ct.min()) if ct.size else None,
        max_t=int(ct.max()) if ct.size else None,
        content_hash=digest.digest(),
        detail={
            "target_audit_id": first,
            "before_ms": before_ms,
            "undone_ids": [first, last_id] if first <= last_id else None,
            "batches": batches,
            "restored": int(cs.size) - removed,
            "removed": removed,
        },
        at_ms=at_ms,
    )
    if cs.size:
        conn.executemany(
            "INSERT INTO versions(series_id, t, value_bits, new_bits, audit_id, replaced_at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                (s, t, signed64(ob) if op else None, signed64(nb) if np_ else None, rid, at_ms)
                for s, t, ob, op, nb, np_ in zip(
                    cs.tolist(),
                    ct.tolist(),
                    cold.tolist(),
                    coldp.tolist(),
                    cnew.tolist(),
                    cnewp.tolist(),
                    strict=True,
                )
            ),
        )
    return rid, edits
