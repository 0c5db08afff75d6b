"""The store's backfills: historical imports of any age, one audited transaction each.

All-or-nothing backfills (``on_error="abort"``) of many series are prepared off
the writer (:mod:`agent.storage.backfill_staged`) and committed in one short
job; the rest go through :func:`agent.storage.backfill.plan` in one writer job.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

import numpy as np

from agent.storage import (
    backfill,
    backfill_staged,
    bounds,
    versions,
)
from agent.storage.backfill import BackfillPlan, BackfillResult
from agent.storage.errors import (
    UnknownSeries,
)
from agent.storage.options import REJECT_OUT_OF_BOUNDS
from agent.storage.store_base import StoreBase
from agent.storage.wal import BatchRecord, TxnHook, encode_batch
from agent.storage.writer import notify_samples, now_ms

log = logging.getLogger("agent.storage.store")


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
    ) -> backfill.BackfillResult:
        """Import historical samples of any age, bypassing the out-of-order window.

        Durable, audited (one ``backfill`` audit row per call) and atomic: one
        writer job, one transaction.  Exact duplicates are idempotent; a
        different value at an existing timestamp is rejected
        (``duplicate_timestamp``); with ``on_error="abort"`` any rejection
        leaves nothing written and the result has ``aborted=True``.  See
        :mod:`agent.storage.backfill` for how samples reach segments.
        """
        if on_error not in backfill.ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {backfill.ON_ERROR_CHOICES}")
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
        if int(sids.min()) < 1 or int(sids.max()) > self._index.max_id:
            bad = sids[(sids < 1) | (sids > self._index.max_id)]
            raise UnknownSeries(f"unknown series id(s): {bad[:5].tolist()}")
        ctx = self._edit_ctx()
        at = now_ms()
        # Copies: the job runs later, on another thread, and the caller may reuse its arrays.
        s, t, b = sids.copy(), ts.copy(), vals.view(np.uint64).copy()
        if on_error == "abort" and backfill_staged.prepare_off_writer(s):
            staged = await self._backfill_prepared(s, t, b, source=source, client=client, at=at)
            if staged is not None:
                return staged

        hooks = list(self._backfill_hooks)

        def sql(conn: sqlite3.Connection) -> backfill.BackfillPlan:
            plan = backfill.backfill_sql(
                conn, ctx, s, t, b, source=source, client=client, on_error=on_error, at_ms=at
            )
            self._backfill_hooks_run(hooks, conn, plan, source, client, at)
            return plan

        def after(plan: backfill.BackfillPlan) -> backfill.BackfillResult:
            return self._backfill_applied(ctx, plan)

        try:
            result: backfill.BackfillResult = await self._w.job(sql, after)
        except backfill.BackfillAborted as exc:
            return exc.result
        if self._write_listeners:
            self.notify_written(s, int(t.min()), int(t.max()))
        return result

    async def _backfill_prepared(
        self,
        s: np.ndarray,
        t: np.ndarray,
        b: np.ndarray,
        *,
        source: str,
        client: str | None,
        at: int,
    ) -> BackfillResult | None:
        """An all-or-nothing backfill that keeps the writer free while it is prepared.

        The checks against stored data, the merges and the encoding run on
        reader threads, a group of series at a time, against a copy of the
        head; the writer then runs one short job that re-checks the series
        written meanwhile, inserts the encoded blocks and the audit row.
        Returns None when a block to merge into changed meanwhile: the caller
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
            )
            if prep.rejected:
                return backfill.BackfillResult(
                    rejected=prep.rejected, duplicates=prep.duplicates, aborted=True
                )
            hooks = list(self._backfill_hooks)

            def sql(conn: sqlite3.Connection) -> backfill.BackfillPlan:
                seen = (
                    np.unique(s)
                    if anything[0]
                    else np.unique(np.concatenate(touched))
                    if touched
                    else np.zeros(0, dtype=np.int64)
                )
                backfill_staged.recheck_sql(conn, ctx, prep, seen)
                plan = backfill.commit_sql(
                    conn,
                    prep,
                    source=source,
                    client=client,
                    on_error="abort",
                    at_ms=at,
                    staged=prefix,
                )
                backfill_staged.unstage_sql(conn, prefix)
                self._backfill_hooks_run(hooks, conn, plan, source, client, at)
                return plan

            def after(plan: backfill.BackfillPlan) -> backfill.BackfillResult:
                return self._backfill_applied(ctx, plan)

            try:
                result: backfill.BackfillResult = await self._w.job(sql, after)
            except backfill.BackfillAborted as exc:
                return exc.result
            except backfill.BackfillRaced as exc:
                log.info("backfill: %s; running it as one writer job", exc)
                return None
        finally:
            self.remove_write_listener(listener)
            if not self._closed and self._writer is not None:
                await self._w.job(lambda c: backfill_staged.unstage_sql(c, prefix))
        if self._write_listeners:
            self.notify_written(s, int(t.min()), int(t.max()))
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

    def _backfill_applied(self, ctx: versions.EditContext, plan: BackfillPlan) -> BackfillResult:
        result = backfill.apply_plan(ctx, plan)
        if plan.stored is not None and plan.stored[0].size and self._sample_listeners:
            notify_samples(self._sample_listeners, *plan.stored)
        return result
