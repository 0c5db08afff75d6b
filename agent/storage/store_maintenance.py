"""The store's maintenance and edits: disk space, compression, retention, versions, audit, stats."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.model import Labels, metric_name
from agent.storage import (
    audit,
    recompress,
    retention,
    rollback,
    space,
    versions,
)
from agent.storage.errors import (
    StorageError,
    UnknownSeries,
)
from agent.storage.head import INT64_MIN
from agent.storage.options import (
    StoreStats,
)
from agent.storage.store_base import StoreBase
from agent.storage.writer import notify_samples, now_ms

log = logging.getLogger("agent.storage.store")

# Longest a clean shutdown spends giving free pages back (see reclaim).
FINAL_RECLAIM_SECONDS = 10.0


class MaintenanceParts(StoreBase):
    """Part of :class:`agent.storage.store.Store` (see :mod:`agent.storage.store_base`)."""

    async def checkpoint(self) -> int:
        """Rewrite the log as a compact copy of the head now (the writer also does this by
        itself as the log grows); returns the checkpoint's bytes."""
        return await self._w.checkpoint()

    async def reclaim(self, *, final: bool = False) -> space.DiskUsage:
        """Give free pages back and reset the ``-wal`` (see :mod:`agent.storage.space`).

        Each step is its own short job on the SQL thread, so appends are served
        between steps. ``final`` (at shutdown, writer stopped) frees every page
        and truncates the ``-wal`` to zero.
        """
        loop = asyncio.get_running_loop()
        conn, sql = self._conn, self._sql_thread
        min_bytes = self.options.reclaim_min_bytes
        # At shutdown, within a budget: a stop must stay well inside systemd's timeout.
        deadline = time.monotonic() + FINAL_RECLAIM_SECONDS
        if final or await loop.run_in_executor(sql, space.worth_reclaiming, conn, min_bytes):
            while await loop.run_in_executor(sql, space.reclaim_step, conn):
                if (self._closed and not final) or (final and time.monotonic() > deadline):
                    break
        if final:
            await loop.run_in_executor(sql, space.truncate_wal, conn)
        else:
            await loop.run_in_executor(sql, space.checkpoint, conn)
            await self.refresh_disk_usage()
        return self._disk

    async def refresh_disk_usage(self) -> space.DiskUsage:
        """Measure the file (on a reader) for ``stats()``; warn once when free pages pile up."""
        usage: space.DiskUsage = await self.run_read(lambda c: space.measure(c, self.path))
        self._disk = usage
        share = self.options.free_pages_warn_share
        if 0 < share <= usage.free_share and usage.free_bytes >= self.options.reclaim_min_bytes:
            if not self._free_warned:
                self._free_warned = True
                log.warning(
                    "%.0f%% of %s is free pages (%d bytes); storage.free_pages_warn_share is"
                    " %.2f. A database created before auto_vacuum=INCREMENTAL needs one"
                    " `tsagent retention --once --vacuum` with the daemon stopped.",
                    100 * usage.free_share,
                    self.path,
                    usage.free_bytes,
                    share,
                )
        else:
            self._free_warned = False
        return usage

    async def apply_compression(
        self, series_id: int, method: str, block_size: int | None = None
    ) -> recompress.CompressionResult:
        """Re-encode a series' stored segments with ``method`` in one transaction.

        Head samples are not touched. ``block_size`` defaults to the store's.
        Raises ``ValueError`` for an unknown codec, naming the known ones.
        """
        if not self._index.exists(series_id):
            raise UnknownSeries(f"unknown series id {series_id}")
        block = self.options.block_size if block_size is None else block_size
        return await recompress.apply_compression(self._w, self._chooser, series_id, method, block)

    async def apply_retention(self, *, now_ms: int | None = None) -> retention.RetentionResult:
        """Delete what is older than its retention now (or at ``now_ms``); see ``retention``."""
        result = await retention.run_pass(
            self._w, self._index, self._retention, self.options.flush_chunk_series, now_ms
        )
        if result.samples and result.min_t is not None and result.max_t is not None:
            self.notify_written(None, result.min_t, result.max_t)
        return result

    async def vacuum(self) -> int:
        """Full VACUUM (switches an old file to incremental auto_vacuum); returns the mode.

        Rewrites the whole file, so only for maintenance with no other process
        using the database; it runs on the SQL thread between writer jobs.
        """
        w = self._w
        return await asyncio.get_running_loop().run_in_executor(
            w.executor, retention.full_vacuum, w.conn
        )

    async def compression_stats(self) -> recompress.CompressionStats:
        """Bytes per sample per codec and per metric name, over stored segments only."""
        if self._closed:
            raise StorageError("store is closed")
        head_samples = self._head.samples
        loop = asyncio.get_running_loop()
        usage = await loop.run_in_executor(
            self._readers, lambda: recompress.segment_usage(self._reader_conn())
        )
        labels = self._index.labels
        return recompress.summarise(usage, lambda sid: metric_name(labels(sid)), head_samples)

    def _edit_ctx(self) -> versions.EditContext:
        return versions.EditContext(
            self._head, self._index, self._chooser, self.options.block_size, self._counters
        )

    def _known_series(self, series: int | Labels) -> int:
        if isinstance(series, int | np.integer):
            sid: int | None = int(series)
        else:
            sid = self.series_id(series)
        if sid is None or not self._index.exists(sid):
            raise UnknownSeries(f"unknown series {series!r}")
        return sid

    async def record_write(
        self,
        series: int | Labels,
        timestamp: int,
        value: float,
        tags: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        *,
        source: str = "api",
    ) -> int:
        """Write one sample, replacing any value at that timestamp; returns the audit id.

        Unlike ``append`` a different value at an existing timestamp wins; the
        old one is kept in ``versions`` (see :mod:`agent.storage.versions`).
        Labels of a series that does not exist yet create it. ``tags`` (JSON
        values) go into the audit row's detail, not into the labels.
        """
        if isinstance(series, int | np.integer):
            sid = self._known_series(int(series))
        else:
            [sid] = await self.get_or_create_series([series])
        if tags is not None:
            json.dumps(dict(tags))  # fail here, not inside the writer's transaction
        t = int(timestamp)
        bits = versions.value_bits(float(value))
        ctx = self._edit_ctx()
        at = now_ms()

        def sql(conn: sqlite3.Connection) -> tuple[int, versions.SeriesEdit]:
            return versions.record_write_sql(
                conn, ctx, sid, t, bits, user=user_id, source=source, tags=tags, at_ms=at
            )

        def after(res: tuple[int, versions.SeriesEdit]) -> int:
            versions.apply_edits(ctx, [res[1]])
            if self._sample_listeners:
                notify_samples(
                    self._sample_listeners,
                    np.array([sid], dtype=np.int64),
                    np.array([t], dtype=np.int64),
                    np.array([bits], dtype=np.uint64),
                )
            return res[0]

        self._head.forget_newest([sid])  # the job may replace its newest value
        result: int = await self._w.job(sql, after)
        self.notify_written(np.array([sid], dtype=np.int64), t, t)
        return result

    async def history(self, series: int | Labels, timestamp: int) -> list[versions.Version]:
        """Every value the point has held, oldest first, the current one last."""
        sid = self._known_series(series)
        t = int(timestamp)
        # Current value first, history second: a write landing in between then
        # shows up as an extra history entry rather than going missing.
        ts, vals = await self.read_series(sid, t, t)
        current = int(vals[:1].view(np.uint64)[0]) if ts.size else None

        def run() -> list[versions.Version]:
            conn = self._reader_conn()
            states = versions.history_states(conn, sid, t, current)
            return versions.to_versions(conn, states, current)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def rollback(
        self,
        audit_id: int | None = None,
        *,
        before_ms: int | None = None,
        user_id: str | None = None,
        source: str = "api",
    ) -> int:
        """Restore every value as it was before audit row ``audit_id`` (or time ``before_ms``).

        Undoes ``record_write``s and earlier rollbacks and removes samples
        appended since; the rollback is itself audited and versioned, so it can
        be rolled back in turn.  Retention deletions are not undone.  Returns
        the rollback's audit id.
        """
        if (audit_id is None) == (before_ms is None):
            raise ValueError("give exactly one of audit_id and before_ms")
        ctx = self._edit_ctx()
        at = now_ms()

        def sql(conn: sqlite3.Connection) -> tuple[int, list[versions.SeriesEdit]]:
            return rollback.rollback_sql(
                conn,
                ctx,
                audit_id=audit_id,
                before_ms=before_ms,
                user=user_id,
                source=source,
                at_ms=at,
            )

        touched: list[int] = []
        self._head.forget_newest(None)  # any series' newest samples may go or change

        def after(res: tuple[int, list[versions.SeriesEdit]]) -> int:
            versions.apply_edits(ctx, res[1])
            touched.extend(e.series_id for e in res[1])
            return res[0]

        result: int = await self._w.job(sql, after)
        if touched:  # samples at any time may have come back or gone: all time
            self.notify_written(np.array(touched, dtype=np.int64), INT64_MIN, 2**63 - 1)
        return result

    async def verify_audit(self) -> audit.VerifyResult:
        """Check the audit chain on a reader connection (a consistent snapshot)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: audit.verify_chain(self._reader_conn())
        )

    def stats(self) -> StoreStats:
        c = self._counters
        h = self._head
        return StoreStats(
            active_series=h.active,
            total_series=len(self._index),
            head_samples=h.samples,
            head_bytes=h.bytes_estimate(),
            wal_rows=c.wal_rows,
            segments=c.segments,
            flushes=c.flushes,
            flushed_samples=c.flushed_samples,
            flush_seconds=c.flush_seconds,
            commits=c.commits,
            appends=c.appends,
            appended_samples=c.appended_samples,
            duplicate_samples=c.duplicate_samples,
            replayed_samples=c.replayed_samples,
            rejected=dict(c.rejected),
            cardinality_rejected=dict(self._limiter.rejected),
            checkpoints=c.checkpoints,
            disk=self._disk,
        )
