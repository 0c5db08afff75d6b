"""Abort-mode backfills of many series, prepared off the writer (issue 13).

An ``on_error="abort"`` backfill must write everything or nothing, which used
to mean one writer transaction doing all the per-series work while every
other write waited. Here the checks against stored data, the merges and the
encoding run on the store's reader threads, a group of series at a time,
against a :class:`HeadView` (a copy of the head taken on the event loop);
each group's blocks and new frontiers are staged in TEMP tables on the
writer's connection by one short writer job; the commit job
(:func:`agent.storage.backfill.commit_sql` with ``staged``) re-checks the
series written meanwhile (:func:`recheck_sql`) and copies the staged rows
with two statements. TEMP tables live outside the database file, so readers
never see staged rows and a crash forgets them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np

from agent.model import Labels
from agent.storage.backfill import (
    BackfillRaced,
    Prepared,
    create_stage,
    existing_samples,
    joined,
    prepare,
    series_runs,
)
from agent.storage.options import REJECT_DUPLICATE_TIMESTAMP, Rejection
from agent.storage.wal import signed64

if TYPE_CHECKING:
    from agent.storage.head import Head
    from agent.storage.versions import EditContext


class HeadView:
    """A copy of what the head holds for some series (taken on the event loop).

    Lets :func:`prepare` run on a reader thread, off the writer: the live
    head's buffers must only be touched on the loop.
    """

    def __init__(self, head: Head, sids: np.ndarray) -> None:
        uniq = np.unique(sids)
        uniq = uniq[(uniq >= 0) & (uniq < head.capacity)]
        have = uniq[head.count[uniq] > 0]
        self._bufs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if have.size:
            counts, t, b = head.joined(have.tolist())
            cut = np.cumsum(counts)[:-1]
            for sid, ct, cb in zip(have.tolist(), np.split(t, cut), np.split(b, cut), strict=True):
                if ct.size:
                    self._bufs[sid] = (ct, cb)
        self.seg_max_t = head.seg_max_t.copy()

    def buffers(self, sid: int) -> tuple[np.ndarray, np.ndarray] | None:
        return self._bufs.get(sid)


# An abort-mode backfill of at least this many series (or samples) is prepared off
# the writer (:func:`prepare_in_groups`), in groups of PREPARE_GROUP_SERIES series.
OFF_WRITER_SERIES = 1_000
OFF_WRITER_SAMPLES = 200_000
PREPARE_GROUP_SERIES = 2_000


def prepare_off_writer(sids: np.ndarray) -> bool:
    """Whether a backfill is big enough to prepare off the writer."""
    if sids.size >= OFF_WRITER_SAMPLES:
        return True
    return sids.size >= OFF_WRITER_SERIES and np.unique(sids).size >= OFF_WRITER_SERIES


async def prepare_in_groups(
    executor: Executor,
    reader: Callable[[], sqlite3.Connection],
    ctx: EditContext,
    sids: np.ndarray,
    ts: np.ndarray,
    bits: np.ndarray,
    *,
    stage: Callable[[Prepared], Awaitable[int]] | None = None,
    new_series: Sequence[Labels] = (),
) -> Prepared:
    """:func:`prepare` on reader threads, ``PREPARE_GROUP_SERIES`` series at a time.

    Each group gets a :class:`HeadView` copied on the event loop just before;
    the checks read segments through the thread's reader connection. After
    the first rejection the remaining groups are only checked (for the report).
    """
    order = np.lexsort((ts, sids))
    sids, ts, bits = sids[order], ts[order], bits[order]
    starts, _ = series_runs(sids)
    cuts = [*starts[PREPARE_GROUP_SERIES::PREPARE_GROUP_SERIES], int(sids.size)]
    loop = asyncio.get_running_loop()
    total = Prepared()
    lo = 0
    for hi in cuts:
        gs, gt, gb = sids[lo:hi], ts[lo:hi], bits[lo:hi]
        view = HeadView(ctx.head, gs)
        only = bool(total.rejected)

        def run(
            gs: np.ndarray = gs,
            gt: np.ndarray = gt,
            gb: np.ndarray = gb,
            view: HeadView = view,
            only: bool = only,
        ) -> Prepared:
            conn = reader()
            conn.execute("BEGIN")  # one snapshot for the group's reads
            try:
                part = prepare(
                    conn,
                    ctx,
                    gs,
                    gt,
                    gb,
                    on_error="abort",
                    head=view,
                    check_only=only,
                    new_series=new_series,
                )
            finally:
                conn.execute("ROLLBACK")
            joined(part)
            return part

        part = await loop.run_in_executor(executor, run)
        if stage is not None and not total.rejected and not part.rejected and part.rows:
            total.rows_written += await stage(part)
            part.rows = []
        _merge(total, part)
        lo = hi
    return total


def stage_sql(conn: sqlite3.Connection, prefix: str, part: Prepared) -> int:
    """Writer job: keep a group's encoded blocks and new frontiers in temp tables.

    TEMP tables live on the writer's connection only, outside the database
    file: readers never see them, and a crash simply forgets them. Staging
    them a group at a time keeps the final commit to two ``INSERT … SELECT``
    style statements, instead of binding every row while the writer waits.
    """
    create_stage(conn, prefix)
    conn.executemany(f"INSERT INTO temp.{prefix}_rows VALUES (?, ?, ?, ?, ?, ?)", part.rows)
    conn.executemany(
        f"INSERT INTO temp.{prefix}_newest VALUES (?, ?, ?)",
        [(sid, mt, signed64(mb)) for sid, mt, mb in part.newest],
    )
    return len(part.rows)


def unstage_sql(conn: sqlite3.Connection, prefix: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS temp.{prefix}_rows")
    conn.execute(f"DROP TABLE IF EXISTS temp.{prefix}_newest")


def _merge(total: Prepared, part: Prepared) -> None:
    total.rows.extend(part.rows)
    total.replaced.extend(part.replaced)
    total.newest.extend(part.newest)
    total.stored_s.extend(part.stored_s)
    total.stored_t.extend(part.stored_t)
    total.stored_b.extend(part.stored_b)
    total.duplicates += part.duplicates
    total.rejected.extend(part.rejected)


def recheck_sql(
    conn: sqlite3.Connection, ctx: EditContext, prep: Prepared, touched: np.ndarray
) -> None:
    """Inside the commit job: re-check the prepared samples of series written meanwhile.

    A prepared backfill was checked against a snapshot; series that got
    writes since (``touched``, from the store's write listener) are checked
    again against the live head and segments. A conflict is added to
    ``prep.rejected``; an exact duplicate stays (stored twice, read once).
    A block that a merge was to replace must still exist, else the backfill
    is refused as a conflict with what replaced it.
    """
    if prep.replaced:
        ids = [r[0] for r in prep.replaced]
        found: set[int] = set()
        for lo in range(0, len(ids), 500):
            part = ids[lo : lo + 500]
            marks = ",".join("?" * len(part))
            found.update(
                r[0] for r in conn.execute(f"SELECT id FROM segments WHERE id IN ({marks})", part)
            )
        gone = [i for i in ids if i not in found]
        if gone:
            raise BackfillRaced(f"{len(gone)} block(s) changed while the backfill was prepared")
    if not touched.size or not prep.stored_s:
        return
    s_all, t_all, b_all = joined(prep)  # sorted by series (prepare_in_groups sorts)
    idx = np.minimum(np.searchsorted(s_all, touched), max(s_all.size - 1, 0))
    for sid in np.unique(touched[s_all[idx] == touched]).tolist():
        lo = int(np.searchsorted(s_all, sid, "left"))
        hi = int(np.searchsorted(s_all, sid, "right"))
        t, b = t_all[lo:hi], b_all[lo:hi]
        old_bits, present, _ = existing_samples(conn, ctx, ctx.head, sid, t)
        conflict = present & (old_bits != b)
        if conflict.any():
            prep.rejected.extend(
                Rejection(sid, x, REJECT_DUPLICATE_TIMESTAMP) for x in t[conflict].tolist()
            )
