"""Backfill: bulk import of historical samples, written straight into segments.

Why a separate path from ``append``: the head only accepts samples newer than
a series' newest (or inside ``out_of_order_window``), which is right for live
traffic and wrong for an import of last year's CSV export.  A backfill accepts
any timestamp (1970 included) and keeps every other promise of ``append``:

* **durable before returning**: the whole call is one writer job, i.e. one
  ``BEGIN IMMEDIATE`` transaction on the SQL thread, serialised with appends
  and flushes, committed before the caller's future resolves;
* **all or nothing**: with ``on_error="abort"`` any rejected sample raises
  inside the transaction, which rolls it back, so nothing (not even the audit
  row) is left; with ``"skip"`` the valid samples are written;
* **exactly once**: backfilled samples never enter the log, so replay cannot
  bring them back a second time; an exact re-send (same timestamp, same value
  bits) is counted as a duplicate and stored once, a different value at an
  existing timestamp is rejected as ``duplicate_timestamp``, whether the
  existing sample lives in the head, in segments or earlier in the same call;
* **audited**: one ``audit`` row with op ``backfill`` per call, plus its
  (series, timestamp) points in ``audit_points``, exactly as for an appended
  batch, so ``Store.rollback`` removes a backfill like any other write and
  ``Store.history`` attributes its points.

Where the samples go: per series, new points that fall inside the time range
of an existing block are merged into that block (decode, merge, re-encode,
replace the row), so repeated small backfills do not litter the table with
tiny blocks; the rest become new blocks of at most ``block_size`` samples.
Blocks may still overlap (the head, or points between two blocks), which the
read path handles: :func:`agent.storage.segments.decode_merge` sorts and
dedupes, and equal timestamps always carry equal bits because conflicts are
rejected here.

Bookkeeping that keeps later writes correct: the series' persisted
``max_t``/``last_bits`` are raised when the backfill goes past them (so a
restart still knows the newest stored sample), and in memory ``max_t`` (the
in-order frontier of appends) and ``seg_max_t`` (the bound below which
out-of-order appends and later backfills must probe segments) are raised too.
Samples newer than the head's newest are written to segments as well, not to
the head: one transaction for the whole call is what makes abort exact, and
appends after it continue from the raised frontier.

Cost: the work is vectorised per series (numpy sorts and searches; one Python
iteration per series, not per sample).  Existing blocks are read only for
series whose ``seg_max_t`` reaches the backfilled range, so importing history
older than anything stored, or into new series, touches no old rows.  The
call holds all its samples in memory (~40 bytes each plus the encoded blocks)
and blocks other writers while it runs, so very large imports should be split
into calls of some millions of samples; each call is then atomic on its own.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from agent.model import Labels
from agent.storage.audit import encode_points, write_audit
from agent.storage.options import REJECT_DUPLICATE_TIMESTAMP, AppendResult, Rejection
from agent.storage.recompress import encode_blocks
from agent.storage.segments import SegmentRow
from agent.storage.wal import encode_batch, signed64

if TYPE_CHECKING:
    from agent.storage.versions import EditContext

OnError = Literal["skip", "abort"]
ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "abort")

_INSERT = (
    "INSERT INTO segments(series_id, min_t, max_t, count, codec, data) VALUES (?, ?, ?, ?, ?, ?)"
)
# Segment rows are inserted in slices so a huge call does not hold every blob twice.
_INSERT_BATCH = 2000


@dataclass(slots=True)
class BackfillResult(AppendResult):
    """An :class:`AppendResult` plus what the backfill did to storage.

    ``accepted`` counts stored samples plus exact duplicates (as for append);
    ``stored`` only the new ones.  ``aborted`` is True when ``on_error="abort"``
    met a rejection: then nothing was written and ``rejected`` says why.
    """

    stored: int = 0
    series: int = 0
    segments_written: int = 0
    segments_replaced: int = 0
    audit_id: int | None = None
    aborted: bool = False
    # {key of a new series (-(j + 1), see Store.backfill's new_series): why it was refused}
    refused_series: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class BackfillPlan:
    """What the SQL side committed, for the event-loop side to mirror in memory."""

    result: BackfillResult
    # (series id, newest stored timestamp, its value bits) per series that got samples
    newest: list[tuple[int, int, int]] = field(default_factory=list)
    segments_delta: int = 0
    # The samples stored (series ids, timestamps, value bits), for the store's sample listeners.
    stored: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class BackfillRaced(Exception):
    """A block a prepared backfill was to merge into changed before the commit."""


class BackfillAborted(Exception):
    """Raised inside the job to roll the transaction back; carries the report."""

    def __init__(self, result: BackfillResult) -> None:
        super().__init__(f"backfill aborted: {len(result.rejected)} samples rejected")
        self.result = result


def existing_samples(
    conn: sqlite3.Connection, ctx: EditContext, head: HeadLike, sid: int, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, np.ndarray, np.ndarray]]]:
    """Bits already stored at each of ``t`` (sorted, unique), whether present, and the blocks.

    Blocks are those overlapping [t[0], t[-1]], decoded, in read-precedence
    order; they are returned so the caller can merge new points into them.
    """
    n = t.size
    bits = np.zeros(n, dtype=np.uint64)
    present = np.zeros(n, dtype=bool)
    bufs = head.buffers(sid)
    if bufs is not None:
        # Copies, not views: a live array('q') must never be left exporting its buffer.
        ht = np.array(bufs[0], dtype=np.int64)
        if ht.size and ht[0] <= t[-1] and ht[-1] >= t[0]:
            hb = np.array(bufs[1], dtype=np.uint64)
            idx = np.searchsorted(ht, t)
            inb = idx < ht.size
            hit = np.zeros(n, dtype=bool)
            hit[inb] = ht[idx[inb]] == t[inb]
            bits[hit] = hb[idx[hit]]
            present |= hit
    blocks: list[tuple[int, int, int, np.ndarray, np.ndarray]] = []
    if int(head.seg_max_t[sid]) < int(t[0]):
        return bits, present, blocks  # nothing in segments can reach this range
    for rid, mn, mx, cnt, codec, data in conn.execute(
        "SELECT id, min_t, max_t, count, codec, data FROM segments"
        " WHERE series_id = ? AND max_t >= ? AND min_t <= ? ORDER BY max_t, id",
        (sid, int(t[0]), int(t[-1])),
    ):
        bt, bv = ctx.chooser.get(codec).decode(data, cnt)
        bt = np.asarray(bt, dtype=np.int64)
        bb = np.asarray(bv, dtype=np.float64).view(np.uint64)
        blocks.append((rid, mn, mx, bt, bb))
        lo = int(np.searchsorted(t, mn, "left"))
        hi = int(np.searchsorted(t, mx, "right"))
        if lo >= hi:
            continue
        sub = t[lo:hi]
        idx = np.searchsorted(bt, sub)
        inb = idx < bt.size
        hit = np.zeros(hi - lo, dtype=bool)
        hit[inb] = bt[idx[inb]] == sub[inb]
        fresh = hit & ~present[lo:hi]
        bits[lo:hi][fresh] = bb[idx[fresh]]
        present[lo:hi] |= hit
    return bits, present, blocks


@dataclass(slots=True)
class Prepared:
    """The encoded outcome of a backfill, before anything is written."""

    rows: list[SegmentRow] = field(default_factory=list)
    replaced: list[tuple[int]] = field(default_factory=list)
    newest: list[tuple[int, int, int]] = field(default_factory=list)
    stored_s: list[np.ndarray] = field(default_factory=list)
    stored_t: list[np.ndarray] = field(default_factory=list)
    stored_b: list[np.ndarray] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rows_written: int = 0


class HeadLike(Protocol):
    seg_max_t: np.ndarray

    def buffers(self, sid: int) -> tuple[np.ndarray, np.ndarray] | None: ...


def _sort_dedupe(
    sids: np.ndarray, ts: np.ndarray, bits: np.ndarray, prep: Prepared
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (series, time); repeats inside the call: the first of each run is the
    candidate, an identical repeat a duplicate, a different one a conflict."""
    n = sids.size
    if n > 1:
        ds = np.diff(sids)
        if not bool(np.all((ds > 0) | ((ds == 0) & (np.diff(ts) >= 0)))):
            order = np.lexsort((ts, sids))
            sids, ts, bits = sids[order], ts[order], bits[order]
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = (sids[1:] == sids[:-1]) & (ts[1:] == ts[:-1])
    if same.any():
        run_head = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
        batch_dup = same & (bits == bits[run_head])
        batch_conflict = same & ~batch_dup
        prep.duplicates += int(batch_dup.sum())
        prep.rejected.extend(
            Rejection(s, t, REJECT_DUPLICATE_TIMESTAMP)
            for s, t in zip(sids[batch_conflict].tolist(), ts[batch_conflict].tolist(), strict=True)
        )
        keep = ~same
        sids, ts, bits = sids[keep], ts[keep], bits[keep]
    return sids, ts, bits


def series_runs(sids: np.ndarray) -> tuple[list[int], list[int]]:
    if not sids.size:
        return [], []
    brk = np.flatnonzero(sids[1:] != sids[:-1]) + 1
    return np.concatenate(([0], brk)).tolist(), np.concatenate((brk, [sids.size])).tolist()


def prepare(
    conn: sqlite3.Connection,
    ctx: EditContext,
    sids: np.ndarray,
    ts: np.ndarray,
    bits: np.ndarray,
    *,
    on_error: OnError,
    head: HeadLike | None = None,
    sink: Callable[[list[SegmentRow]], None] | None = None,
    check_only: bool = False,
    new_series: Sequence[Labels] = (),
) -> Prepared:
    """Check a backfill against what is stored and encode its blocks, writing nothing.

    ``head`` replaces ``ctx.head`` (a :class:`HeadView` when run off the
    writer); ``sink`` receives the rows every ``_INSERT_BATCH`` (else they are
    kept in the result); ``check_only`` stops after the conflict checks.
    A negative id ``-(j + 1)`` names ``new_series[j]``, a series created only
    when the backfill commits (see :func:`remap_prepared`): nothing is stored
    for it, so it is only encoded.
    """
    prep = Prepared()
    sids, ts, bits = _sort_dedupe(sids, ts, bits, prep)
    live: HeadLike = head if head is not None else ctx.head
    block = ctx.block_size
    rows = prep.rows
    starts, ends = series_runs(sids)
    # Series with nothing stored in the range (no head samples, segments ending before
    # it: new series, or history older than anything stored) need no reads: found
    # vectorised, so each costs only its encoding.
    first = np.asarray(starts, dtype=np.int64)
    run_sids = sids[first] if first.size else first
    fresh = np.zeros(first.size, dtype=bool)
    known = (run_sids >= 0) & (run_sids < live.seg_max_t.size)
    fresh[known] = live.seg_max_t[run_sids[known]] < ts[first[known]]
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        sid = int(sids[lo])
        t, b = ts[lo:hi], bits[lo:hi]
        if sid < 0 or (fresh[k] and live.buffers(sid) is None):
            if check_only or (on_error == "abort" and prep.rejected):
                continue
            labels = new_series[-sid - 1] if sid < 0 else ctx.index.labels(sid)
            codec = ctx.chooser.name_for(labels)
            rows.extend(encode_blocks(sid, t, b.view(np.float64), codec, ctx.chooser, block))
            prep.stored_s.append(sids[lo:hi])
            prep.stored_t.append(t)
            prep.stored_b.append(b)
            prep.newest.append((sid, int(t[-1]), int(b[-1])))
            if sink is not None and len(rows) >= _INSERT_BATCH:
                prep.rows_written += len(rows)
                sink(rows)
                rows.clear()
            continue
        old_bits, present, blocks = existing_samples(conn, ctx, live, sid, t)
        if present.any():
            dup = present & (old_bits == b)
            conflict = present & ~dup
            prep.duplicates += int(dup.sum())
            if conflict.any():
                prep.rejected.extend(
                    Rejection(sid, x, REJECT_DUPLICATE_TIMESTAMP) for x in t[conflict].tolist()
                )
            new = ~present
            t, b = t[new], b[new]
        if t.size == 0 or check_only:
            continue
        if on_error == "abort" and prep.rejected:
            continue  # will roll back anyway; only the report still matters
        codec = ctx.chooser.name_for(ctx.index.labels(sid))
        free = np.ones(t.size, dtype=bool)
        for rid, mn, mx, bt, bb in blocks:
            a = int(np.searchsorted(t, mn, "left"))
            z = int(np.searchsorted(t, mx, "right"))
            if a >= z:
                continue
            take = free[a:z]
            if not take.any():
                continue
            mt = np.concatenate((bt, t[a:z][take]))
            mb = np.concatenate((bb, b[a:z][take]))
            order = np.argsort(mt, kind="stable")
            mt, mb = mt[order], mb[order]
            free[a:z] = False
            prep.replaced.append((rid,))
            rows.extend(encode_blocks(sid, mt, mb.view(np.float64), codec, ctx.chooser, block))
        if free.any():
            ft, fb = t[free], b[free]
            rows.extend(encode_blocks(sid, ft, fb.view(np.float64), codec, ctx.chooser, block))
        prep.stored_s.append(np.full(t.size, sid, dtype=np.int64))
        prep.stored_t.append(t)
        prep.stored_b.append(b)
        prep.newest.append((sid, int(t[-1]), int(b[-1])))
        if sink is not None and len(rows) >= _INSERT_BATCH:
            prep.rows_written += len(rows)
            sink(rows)
            rows.clear()
    return prep


def create_stage(conn: sqlite3.Connection, prefix: str) -> None:
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {prefix}_rows (series_id INTEGER, min_t INTEGER,"
        " max_t INTEGER, count INTEGER, codec TEXT, data BLOB)"
    )
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {prefix}_newest (id INTEGER PRIMARY KEY,"
        " max_t INTEGER, last_bits INTEGER)"
    )


def backfill_sql(
    conn: sqlite3.Connection,
    ctx: EditContext,
    sids: np.ndarray,
    ts: np.ndarray,
    bits: np.ndarray,
    *,
    source: str,
    client: str | None,
    on_error: OnError,
    at_ms: int,
    new_series: Sequence[Labels] = (),
    new_ids: Sequence[int] = (),
) -> BackfillPlan:
    """The job body of ``Store.backfill`` (SQL thread, inside the job's transaction).

    Reads the head without changing it: the writer task is parked on this job,
    so no append or flush can run meanwhile. Negative ids name ``new_series``,
    created in this transaction with ``new_ids``.
    """
    ids = np.asarray(new_ids, dtype=np.int64)

    def sink(rows: list[SegmentRow]) -> None:
        _insert(conn, remap_rows(rows, ids) if ids.size else rows)

    prep = prepare(conn, ctx, sids, ts, bits, on_error=on_error, sink=sink, new_series=new_series)
    if ids.size and not (on_error == "abort" and prep.rejected):
        remap_prepared(prep, ids)
    return commit_sql(conn, prep, source=source, client=client, on_error=on_error, at_ms=at_ms)


def real_ids(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Series keys as ids: ``-(j + 1)`` becomes ``ids[j]``, ids stay as they are."""
    neg = keys < 0
    if not neg.any():
        return keys
    out = keys.copy()
    out[neg] = ids[-keys[neg] - 1]
    return out


def remap_rows(rows: list[SegmentRow], ids: np.ndarray) -> list[SegmentRow]:
    return [(int(ids[-r[0] - 1]), *r[1:]) if r[0] < 0 else r for r in rows]


def remap_prepared(prep: Prepared, ids: np.ndarray) -> None:
    """Give the series a prepared backfill names by key (new series) their ids.

    The ids exist only once the commit job has started (the writer hands
    them out in write order), after the samples were checked and encoded.
    """
    prep.rows = remap_rows(prep.rows, ids)
    prep.newest = [(int(ids[-s - 1]) if s < 0 else s, t, b) for s, t, b in prep.newest]
    prep.stored_s = [real_ids(a, ids) for a in prep.stored_s]


def _insert(conn: sqlite3.Connection, rows: list[SegmentRow]) -> None:
    conn.executemany(_INSERT, rows)


def joined(prep: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored samples as three arrays (joined once; kept joined in ``prep``)."""
    if not prep.stored_s:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, np.uint64)
    if len(prep.stored_s) > 1:
        prep.stored_s = [np.concatenate(prep.stored_s)]
        prep.stored_t = [np.concatenate(prep.stored_t)]
        prep.stored_b = [np.concatenate(prep.stored_b)]
    return prep.stored_s[0], prep.stored_t[0], prep.stored_b[0]


def commit_sql(
    conn: sqlite3.Connection,
    prep: Prepared,
    *,
    source: str,
    client: str | None,
    on_error: OnError,
    at_ms: int,
    staged: str | None = None,
    staged_first_new: int | None = None,
) -> BackfillPlan:
    """Write what :func:`prepare` encoded, the series' new frontiers and the audit row.

    With ``staged`` (a :func:`stage_sql` prefix) the encoded blocks and new
    frontiers are copied from the staging tables in two statements; staged
    rows of new series, keyed ``-(j + 1)``, get the id ``staged_first_new + j``
    on the way (their ids were handed out in order, after they were staged),
    and their frontiers were stored with their rows (``Writer.creating``).
    """
    result = BackfillResult()
    plan = BackfillPlan(result)
    plan.newest = prep.newest
    rejected, duplicates = prep.rejected, prep.duplicates
    result.rejected = rejected
    result.duplicates = duplicates
    if on_error == "abort" and rejected:
        raise BackfillAborted(
            BackfillResult(rejected=rejected, duplicates=duplicates, aborted=True)
        )
    result.segments_written = prep.rows_written
    rows = prep.rows
    for lo in range(0, len(rows), _INSERT_BATCH):
        conn.executemany(_INSERT, rows[lo : lo + _INSERT_BATCH])
    result.segments_written += len(rows)
    first = 1 if staged_first_new is None else staged_first_new  # keys are never < 0 then
    if staged is not None:  # rows and frontiers staged in temp tables by stage_sql
        create_stage(conn, staged)
        conn.execute(
            "INSERT INTO segments(series_id, min_t, max_t, count, codec, data)"
            " SELECT CASE WHEN series_id < 0 THEN ? - 1 - series_id ELSE series_id END,"
            f" min_t, max_t, count, codec, data FROM temp.{staged}_rows",
            (first,),
        )
    replaced = prep.replaced
    if replaced:
        conn.executemany("DELETE FROM segments WHERE id = ?", replaced)
    result.segments_replaced = len(replaced)
    plan.segments_delta = result.segments_written - len(replaced)
    if staged is not None:
        # New series (keys < 0) were stored with their frontiers (Writer.creating).
        conn.execute(
            f"UPDATE series SET max_t = n.max_t, last_bits = n.last_bits FROM temp.{staged}_newest"
            " AS n WHERE n.id > 0 AND series.id = n.id"
            " AND (series.max_t IS NULL OR series.max_t < n.max_t)"
        )
    elif plan.newest:
        # Raise the persisted newest sample where the backfill went past it, so a
        # restart knows (via max_t) that segments reach that far.
        conn.executemany(
            "UPDATE series SET max_t = ?, last_bits = ? WHERE id = ? AND"
            " (max_t IS NULL OR max_t < ?)",
            [(mt, signed64(mb), sid, mt) for sid, mt, mb in plan.newest],
        )

    s_all, t_all, b_all = joined(prep)
    stored = int(s_all.size)
    result.stored = stored
    plan.stored = (s_all, t_all, b_all)
    result.series = len(plan.newest)
    result.accepted = stored + duplicates
    blob = encode_batch(s_all, t_all, b_all) if stored else b""
    result.audit_id = write_audit(
        conn,
        op="backfill",
        source=source,
        user=client,
        sample_count=stored,
        series_count=result.series,
        min_t=int(t_all.min()) if stored else None,
        max_t=int(t_all.max()) if stored else None,
        content_hash=hashlib.sha256(blob).digest(),
        detail={
            "accepted": result.accepted,
            "duplicates": duplicates,
            "rejected": len(rejected),
            "segments_written": result.segments_written,
            "segments_replaced": result.segments_replaced,
            "on_error": on_error,
        },
        at_ms=at_ms,
    )
    if stored:
        conn.execute(
            "INSERT INTO audit_points(audit_id, count, data) VALUES (?, ?, ?)",
            (result.audit_id, stored, encode_points(s_all, t_all)),
        )
    return plan


def apply_plan(ctx: EditContext, plan: BackfillPlan) -> BackfillResult:
    """Event-loop side: raise the in-memory frontiers to what was committed."""
    head = ctx.head
    head.forget_newest([x[0] for x in plan.newest])
    if len(plan.newest) < 64:
        for sid, mt, mb in plan.newest:
            if mt > int(head.max_t[sid]):
                head.max_t[sid] = mt
                head.last_bits[sid] = mb
            if mt > int(head.seg_max_t[sid]):
                head.seg_max_t[sid] = mt
    else:  # one entry per series: vectorised (a Python step each costs ~1.5 µs on the loop)
        n = len(plan.newest)
        sids = np.fromiter((x[0] for x in plan.newest), dtype=np.int64, count=n)
        mts = np.fromiter((x[1] for x in plan.newest), dtype=np.int64, count=n)
        mbs = np.fromiter((x[2] for x in plan.newest), dtype=np.uint64, count=n)
        up = mts > head.max_t[sids]
        head.max_t[sids[up]] = mts[up]
        head.last_bits[sids[up]] = mbs[up]
        up = mts > head.seg_max_t[sids]
        head.seg_max_t[sids[up]] = mts[up]
    ctx.counters.segments += plan.segments_delta
    return plan.result
