"""The store's backfills: historical imports of any age, one audited transaction each.

All-or-nothing backfills (``on_error="abort"``) of many series are prepared off
the writer (:mod:`agent.storage.backfill_staged`) and committed in one short
job; the rest go through :func:`agent.storage.backfill.plan` in one writer job.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import numpy as np

from agent.model import Labels
from agent.storage import (
    backfill,
    backfill_staged,
    bounds,
    versions,
)
from agent.storage.backfill import BackfillPlan, BackfillResult, OnError
from agent.storage.errors import (
    UnknownSeries,
)
from agent.storage.index import canonical_labels
from agent.storage.options import REJECT_OUT_OF_BOUNDS, Rejection
from agent.storage.store_base import StoreBase
from agent.storage.wal import BatchRecord, TxnHook, encode_batch, signed64
from agent.storage.writer import SeriesCreation, notify_samples, now_ms

log = logging.getLogger("agent.storage.store")


def _as_keys(rejected: list[Rejection], to_key: dict[int, int]) -> list[Rejection]:
    """Rejections of series the backfill named by key, named by that key again."""
    if not to_key:
        return rejected
    return [
        Rejection(to_key.get(r.series_id, r.series_id), r.timestamp, r.reason, r.detail)
        for r in rejected
    ]


class BackfillParts(StoreBase):
    """Part of :class:`agent.storage.store.Store` (see :mod:`agent.storage.store_base`)."""

    async def backfill(
        self,
        series_ids: Sequence[int] | np.ndarray,
        timestamps: np.ndarray | Sequence[int],
        values: np.ndarray | Sequence[float],
        *,
        source: str = "backfill",
        client: str | None = None,
        on_error: backfill.OnError = "skip",
        new_series: Sequence[Labels] = (),
    ) -> backfill.BackfillResult:
        """Import historical samples of any age, bypassing the out-of-order window.

        Durable, audited (one ``backfill`` audit row per call) and atomic: one
        writer job, one transaction.  Exact duplicates are idempotent; a
        different value at an existing timestamp is rejected
        (``duplicate_timestamp``); with ``on_error="abort"`` any rejection
        leaves nothing written and the result has ``aborted=True``.  See
        :mod:`agent.storage.backfill` for how samples reach segments.

        ``new_series`` (``on_error="abort"`` only): label sets of series that
        may not exist yet, named in ``series_ids`` by the key ``-(j + 1)``
        for ``new_series[j]`` (see :meth:`series_keys`). They are checked
        against the label and cardinality limits (refusals in
        ``refused_series``, by key) and created in the backfill's own
        transaction: an aborted backfill creates no series, whatever lands
        between the checks and the commit. Rejections name them by key.
        """
        if on_error not in backfill.ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {backfill.ON_ERROR_CHOICES}")
        if new_series and on_error != "abort":
            raise ValueError('new_series needs on_error="abort"')
        sids = np.asarray(series_ids, dtype=np.int64)
        ts = np.asarray(timestamps, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float64)
        if not (sids.ndim == ts.ndim == vals.ndim == 1) or not (sids.size == ts.size == vals.size):
            raise ValueError("series_ids, timestamps and values must be 1-d and of equal length")
        if sids.size == 0:
            return backfill.BackfillResult()
        keep, refused = bounds.split_timestamps(self._bounds, ts, now_ms())
        if keep is not None:
            self._counters.rejected[REJECT_OUT_OF_BOUNDS] += len(refused)
            out_of_bounds = bounds.rejections(sids, ts, refused)
            if on_error == "abort":
                return backfill.BackfillResult(rejected=out_of_bounds, aborted=True)
            kept = await self.backfill(
                sids[keep], ts[keep], vals[keep], source=source, client=client, on_error=on_error
            )
            kept.rejected.extend(out_of_bounds)
            return kept
        lowest = -len(new_series) if new_series else 1
        if int(sids.min()) < lowest or int(sids.max()) > self._index.max_id or (0 in sids):
            bad = sids[(sids < lowest) | (sids > self._index.max_id) | (sids == 0)]
            raise UnknownSeries(f"unknown series id(s): {bad[:5].tolist()}")
        # Copies: the job runs later, on another thread, and the caller may reuse its arrays.
        s, t, b = sids.copy(), ts.copy(), vals.view(np.uint64).copy()
        if not new_series:
            return await self._backfill(s, t, b, source, client, on_error, ())
        new = [canonical_labels(lab) for lab in new_series]
        why = {j: f"label limit: {r}" for j, r in self.label_problems(new).items()}
        if not why:
            why = self._limiter.admit_all_or_nothing(new)
        if why:
            return backfill.BackfillResult(
                aborted=True, refused_series={-(j + 1): r for j, r in why.items()}
            )
        result: BackfillResult | None = None
        try:
            result = await self._backfill(s, t, b, source, client, on_error, new)
        finally:
            if result is None or result.aborted:
                self._limiter.release(new)
        return result

    async def _backfill(
        self,
        s: np.ndarray,
        t: np.ndarray,
        b: np.ndarray,
        source: str,
        client: str | None,
        on_error: OnError,
        new: list[Labels] | tuple[()],
    ) -> BackfillResult:
        ctx = self._edit_ctx()
        at = now_ms()
        # Values may be replaced: no newest-sample answers for these series until
        # their next in-order append (see Head.forget_newest).
        self._head.forget_newest(s[s > 0])
        if on_error == "abort" and backfill_staged.prepare_off_writer(s):
            staged = await self._backfill_prepared(
                s, t, b, new, source=source, client=client, at=at
            )
            if staged is not None:
                return staged

        hooks = list(self._backfill_hooks)
        mapped = [s]
        async with self._creating(new) as creation:

            def sql(conn: sqlite3.Connection) -> backfill.BackfillPlan:
                s_use, to_key = s, {}
                if creation is not None and creation.existed:
                    # Created by someone else since the keys were taken: checked as theirs.
                    s_use = s.copy()
                    for j in creation.existed:
                        s_use[s == -(j + 1)] = creation.ids[j]
                        to_key[creation.ids[j]] = -(j + 1)
                try:
                    plan = backfill.backfill_sql(
                        conn,
                        ctx,
                        s_use,
                        t,
                        b,
                        source=source,
                        client=client,
                        on_error=on_error,
                        at_ms=at,
                        new_series=new,
                        new_ids=creation.ids if creation is not None else (),
                    )
                except backfill.BackfillAborted as exc:
                    exc.result.rejected = _as_keys(exc.result.rejected, to_key)
                    raise
                if creation is not None:
                    mapped[0] = backfill.real_ids(s, np.asarray(creation.ids, dtype=np.int64))
                self._backfill_hooks_run(hooks, conn, plan, source, client, at)
                return plan

            result, plan = await self._commit(ctx, sql, creation)
            if plan is None:
                return result
        if creation is not None:
            self._series_created(creation)
        self._backfilled(plan, mapped[0], t)
        return result

    async def _commit(
        self,
        ctx: versions.EditContext,
        sql: Callable[[sqlite3.Connection], BackfillPlan],
        creation: SeriesCreation | None,
    ) -> tuple[BackfillResult, BackfillPlan | None]:
        """Run a backfill's writer job: (result, plan), or (report, None) if it aborted."""
        plans: list[BackfillPlan] = []

        def after(plan: BackfillPlan) -> BackfillResult:
            plans.append(plan)
            return backfill.apply_plan(ctx, plan)

        try:
            result: BackfillResult = await self._w.job(sql, after, creates=creation)
        except backfill.BackfillAborted as exc:
            return exc.result, None
        return result, plans[0]

    @asynccontextmanager
    async def _creating(
        self, new: Sequence[Labels], frontiers: Sequence[tuple[int | None, int | None]] = ()
    ) -> AsyncIterator[SeriesCreation | None]:
        """``Writer.creating`` for the new series of a backfill, if it has any."""
        if not new:
            yield None
            return
        async with self._w.creating(list(new), frontiers) as creation:
            yield creation

    def _backfilled(self, plan: BackfillPlan, sids: np.ndarray, t: np.ndarray) -> None:
        """Tell the listeners what a backfill stored (once its new series are indexed)."""
        if plan.stored is not None and plan.stored[0].size and self._sample_listeners:
            notify_samples(self._sample_listeners, *plan.stored)
        if self._write_listeners:
            self.notify_written(sids, int(t.min()), int(t.max()))

    def _series_created(self, creation: SeriesCreation) -> None:
        """A backfill created series: the limiter's reservations become series."""
        existed = set(creation.existed)
        if existed:
            self._limiter.release([creation.labels[j] for j in existed])
        self._limiter.created(i for j, i in enumerate(creation.ids) if j not in existed)

    async def _backfill_prepared(
        self,
        s: np.ndarray,
        t: np.ndarray,
        b: np.ndarray,
        new: list[Labels] | tuple[()],
        *,
        source: str,
        client: str | None,
        at: int,
    ) -> BackfillResult | None:
        """An all-or-nothing backfill that keeps the writer free while it is prepared.

        The checks against stored data, the merges and the encoding run on
        reader threads, a group of series at a time, against a copy of the
        head; the writer then runs one short job that creates the new series,
        re-checks the series written meanwhile, inserts the encoded blocks and
        the audit row. Returns None when a block to merge into changed
        meanwhile, or a new series was created by someone else: the caller
        then falls back to the single-job path.
        """
        ctx = self._edit_ctx()
        touched: list[np.ndarray] = []
        anything = [False]
        self._staging += 1
        prefix = f"backfill_{self._staging}"

        def listener(series_ids: np.ndarray | None, _lo: int, _hi: int) -> None:
            if series_ids is None:
                anything[0] = True
            else:
                touched.append(np.asarray(series_ids, dtype=np.int64))

        self.add_write_listener(listener)
        mapped = [s]
        try:
            prep = await backfill_staged.prepare_in_groups(
                self._readers,
                self._reader_conn,
                ctx,
                s,
                t,
                b,
                stage=lambda part: self._w.job(
                    lambda c: backfill_staged.stage_sql(c, prefix, part)
                ),
                new_series=new,
            )
            if prep.rejected:
                return backfill.BackfillResult(
                    rejected=prep.rejected, duplicates=prep.duplicates, aborted=True
                )
            hooks = list(self._backfill_hooks)
            frontiers: list[tuple[int | None, int | None]] = [(None, None)] * len(new)
            for key, mt, mb in prep.newest:
                if key < 0:
                    frontiers[-key - 1] = (mt, signed64(mb))
            async with self._creating(new, frontiers) as creation:
                first = creation.ids[0] if creation is not None and creation.ids else None
                if creation is not None and (
                    creation.existed or creation.ids[-1] - creation.ids[0] != len(new) - 1
                ):
                    log.info("backfill: a new series was created meanwhile; one writer job")
                    return None

                def sql(conn: sqlite3.Connection) -> backfill.BackfillPlan:
                    seen = (
                        np.unique(s)
                        if anything[0]
                        else np.unique(np.concatenate(touched))
                        if touched
                        else np.zeros(0, dtype=np.int64)
                    )
                    backfill_staged.recheck_sql(conn, ctx, prep, seen)
                    if creation is not None and not prep.rejected:
                        ids = np.asarray(creation.ids, dtype=np.int64)
                        backfill.remap_prepared(prep, ids)
                        mapped[0] = backfill.real_ids(s, ids)
                    plan = backfill.commit_sql(
                        conn,
                        prep,
                        source=source,
                        client=client,
                        on_error="abort",
                        at_ms=at,
                        staged=prefix,
                        staged_first_new=first,
                    )
                    backfill_staged.unstage_sql(conn, prefix)
                    self._backfill_hooks_run(hooks, conn, plan, source, client, at)
                    return plan

                try:
                    result, plan = await self._commit(ctx, sql, creation)
                except backfill.BackfillRaced as exc:
                    log.info("backfill: %s; running it as one writer job", exc)
                    return None
                if plan is None:
                    return result
        finally:
            self.remove_write_listener(listener)
            if not self._closed and self._writer is not None:
                await self._w.job(lambda c: backfill_staged.unstage_sql(c, prefix))
        if creation is not None:
            self._series_created(creation)
        self._backfilled(plan, mapped[0], t)
        return result

    @staticmethod
    def _backfill_hooks_run(
        hooks: list[TxnHook],
        conn: sqlite3.Connection,
        plan: BackfillPlan,
        source: str,
        client: str | None,
        at: int,
    ) -> None:
        """The backfill transaction hooks, in the backfill's own transaction."""
        if hooks and plan.stored is not None and plan.stored[0].size:
            res, stored = plan.result, int(plan.stored[0].size)
            record = BatchRecord(
                None,
                source,
                client,
                at,
                res.accepted,
                stored,
                res.duplicates,
                len(res.rejected),
                encode_batch(*plan.stored),
                op="backfill",
            )
            for hook in hooks:  # same transaction: committed together or not at all
                hook(conn, [record])
