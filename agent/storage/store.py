"""The storage facade used by the daemon and the ingestors.

``Store`` wires the pieces together and owns the threads:

* one SQL thread for the write connection (group commits and flushes, see
  :mod:`agent.storage.writer`);
* a small pool of reader threads, each with its own read-only connection, so
  range reads never queue behind a commit;
* one probe connection used synchronously on the event loop, only for the
  rare out-of-order sample that may collide with data already in segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import Labels, Matcher, metric_name
from agent.plugin_api import Codec
from agent.storage import (
    audit,
    backfill,
    bounds,
    db,
    recompress,
    retention,
    rollup,
    space,
    versions,
)
from agent.storage.cardinality import (
    CardinalityOptions,
    CardinalityStats,
    Limiter,
    LimitRule,
    top_stats,
)
from agent.storage.errors import (
    BackPressure,
    CardinalityLimitExceeded,
    StorageError,
    UnknownSeries,
)
from agent.storage.head import INT64_MIN, Head
from agent.storage.index import SeriesIndex, canonical_labels
from agent.storage.lock import DatabaseLock
from agent.storage.options import (
    REJECT_OUT_OF_BOUNDS,
    REJECT_REASONS,
    AppendResult,
    FlushResult,
    SelectedArrays,
    SeriesData,
    StorageOptions,
    StoreStats,
)
from agent.storage.segments import CodecChooser, decode_merge, fetch_segments, probe_segments
from agent.storage.wal import (
    BatchRecord,
    TxnHook,
    decode_batch,
    encode_batch,
    iter_log,
    unsigned64,
)
from agent.storage.writer import Counters, SampleListener, Writer, notify_samples, now_ms

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime, timedelta

    from agent.join import JoinResult
    from agent.query.service import CacheMode, QueryService, StepLike, TimeLike
    from agent.query.values import Result
    from agent.stream import Subscription

log = logging.getLogger(__name__)
# Queued head samples a query worker merges into its read; more are moved into
# the buffers on the loop first (Head.settle), as every select once did.
READ_QUEUE_MAX = 16_384

READER_THREADS = 2
# Longest a clean shutdown spends giving free pages back (see Store.reclaim).
FINAL_RECLAIM_SECONDS = 10.0

WriteListener = Callable[[np.ndarray | None, int, int], None]
"""Called as ``listener(series_ids or None for any, min_t, max_t)`` after data changed."""


class Store:
    def __init__(
        self, path: Path, options: StorageOptions, chooser: CodecChooser, conn: sqlite3.Connection
    ) -> None:
        """Use :meth:`open`; the constructor only assembles already-opened parts."""
        self.path = path
        self.options = options
        self._chooser = chooser
        self._conn = conn
        self._index = SeriesIndex()
        self._limiter = Limiter(
            CardinalityOptions(
                max_active_series=options.max_active_series,
                active_window_ms=options.active_window_ms,
                rules=[
                    LimitRule(metric, label, limit, f"limits.rules[{i}]")
                    for i, (metric, label, limit) in enumerate(options.cardinality_rules)
                ],
            ),
            series_of_metric=lambda metric: self._index.postings("__name__", metric),
            labels_of=self._index.labels,
            max_t=lambda: self._head.max_t,
        )
        self._head = Head(options.out_of_order_window_ms)
        self._bounds = bounds.from_options(options)
        self._counters = Counters(rejected=dict.fromkeys(REJECT_REASONS, 0))
        self._sql_thread = ThreadPoolExecutor(1, thread_name_prefix="tsagent-sql")
        self._read_conns: list[sqlite3.Connection] = []
        self._read_local = threading.local()
        self._read_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="tsagent-read")
        self._probe_conn: sqlite3.Connection | None = None
        self._writer: Writer | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._retention = retention.RetentionPolicy(options.retention_ms, options.retention_rules)
        self._retainer: asyncio.Task[None] | None = None
        self._closed = False
        self._lock: DatabaseLock | None = None
        self._write_listeners: list[WriteListener] = []
        self._sample_listeners: list[SampleListener] = []
        self._backfill_hooks: list[TxnHook] = []
        self._queries: QueryService | None = None
        self.rollups: rollup.RollupManager | None = None
        self._disk = space.DiskUsage()
        self._free_warned = False
        self._loaded_log_bytes = 0

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | Path, options: StorageOptions, codecs: Mapping[str, Codec]
    ) -> Store:
        """Create or migrate the database, then replay the log into the head."""
        options.validate()
        chooser = CodecChooser(codecs, options.default_codec, options.codec_rules)
        path = Path(path)
        lock = DatabaseLock(path)
        lock.acquire()
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(
                None, lambda: db.connect(path, synchronous=options.synchronous)
            )
        except BaseException:
            lock.release()
            raise
        store = cls(path, options, chooser, conn)
        store._lock = lock
        try:
            next_seq, next_id = await loop.run_in_executor(store._sql_thread, store._load)
            store._probe_conn = db.connect(path, synchronous=options.synchronous, readonly=True)
        except BaseException:
            store._shutdown_threads()
            conn.close()
            lock.release()
            raise
        store._writer = Writer(
            conn=conn,
            executor=store._sql_thread,
            head=store._head,
            index=store._index,
            chooser=chooser,
            options=options,
            counters=store._counters,
            probe=store._probe,
            next_seq=next_seq,
            next_series_id=next_id,
        )
        store._writer.sample_listeners = store._sample_listeners  # one list, shared
        store._writer.log_since_checkpoint = store._loaded_log_bytes
        # Always on: every appended batch gets its chained audit row in its own commit.
        store._writer.hooks.append(audit.append_hook)
        store._writer.start()
        await store.refresh_disk_usage()
        store._flusher = loop.create_task(store._periodic_flush(), name="tsagent-flusher")
        if store._retention.enabled:
            store._retainer = loop.create_task(
                retention.run_periodically(store.apply_retention, options.retention_interval_s),
                name="tsagent-retention",
            )
        return store

    def _load(self) -> tuple[int, int]:
        """Runs in the SQL thread before anything else can touch the store."""
        conn = self._conn
        applied = db.MIGRATIONS.apply(conn)
        if applied:
            log.info("storage migrations applied: %s", ", ".join(applied))
        self._limiter.load_api_rules(conn)
        ids: list[int] = []
        flushed: list[int] = []
        max_t: list[int] = []
        last_bits: list[int] = []
        index = self._index
        index.load_pairs(conn.execute("SELECT id, name, value FROM label_pairs ORDER BY id"))
        decode = index.decode_stored
        batch_ids: list[int] = []
        batch_labels: list[Labels] = []
        for sid, blob, fseq, mt, lb in conn.execute(
            "SELECT id, labels, flushed_seq, max_t, last_bits FROM series ORDER BY id"
        ):
            batch_ids.append(sid)
            batch_labels.append(decode(blob))
            if len(batch_ids) >= 10_000:
                index.add_many(batch_ids, batch_labels)
                batch_ids, batch_labels = [], []
            ids.append(sid)
            flushed.append(fseq)
            max_t.append(INT64_MIN if mt is None else mt)
            last_bits.append(0 if lb is None else unsigned64(lb))
        index.add_many(batch_ids, batch_labels)
        head = self._head
        max_id = self._index.max_id
        head.ensure(max_id)
        flushed_seq = np.zeros(head.capacity, dtype=np.int64)
        if ids:
            idx = np.array(ids, dtype=np.int64)
            flushed_seq[idx] = flushed
            head.max_t[idx] = max_t
            head.last_bits[idx] = np.array(last_bits, dtype=np.uint64)
            # Persisted max_t bounds what segments hold: probes for out-of-order
            # duplicates may be needlessly conservative, never wrong.  Not only
            # flushed series: edits and backfills put data in segments of series
            # that never flushed, and raise max_t when they do.
            head.seg_max_t[idx] = max_t
        last_seq = int(flushed_seq.max()) if flushed_seq.size else 0
        c = self._counters
        for seq, created, count, blob in iter_log(conn):
            last_seq = max(last_seq, seq)
            c.wal_rows += 1
            sids, ts, bits = decode_batch(blob, count)
            if sids.size and (int(sids.min()) < 1 or int(sids.max()) > max_id):
                raise StorageError(f"log row {seq} names series unknown to the series table")
            keep = seq > flushed_seq[sids]
            if not keep.all():
                sids, ts, bits = sids[keep], ts[keep], bits[keep]
            if sids.size:
                head.apply(sids, ts, bits, seq, created, replay=True)
                c.replayed_samples += int(sids.size)
        c.segments = conn.execute("SELECT count(*) FROM segments").fetchone()[0]
        self._loaded_log_bytes = int(
            conn.execute("SELECT coalesce(sum(length(data)), 0) FROM wal").fetchone()[0]
        )
        return last_seq + 1, max_id + 1

    async def close(self) -> None:
        """Stop the background tasks and close connections; data is durable already."""
        if self._closed:
            return
        self._closed = True
        if self._queries is not None:
            self._queries.close()  # query worker threads; running ones stop at their next check
        if self.rollups is not None:
            await self.rollups.stop()
        for task in (self._flusher, self._retainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            await self._writer.stop()
        # Readers first: an open read snapshot would keep the -wal from being cut.
        self._readers.shutdown(wait=True)
        readers = [*self._read_conns]
        if self._probe_conn is not None:
            readers.append(self._probe_conn)
        for conn in readers:
            conn.close()
        if self._writer is not None and self._writer.failed is None:
            try:
                await self.reclaim(final=True)
            except Exception:
                log.exception("giving free pages back at shutdown failed")
        self._shutdown_threads()
        self._conn.close()
        if self._lock is not None:
            self._lock.release()

    def _shutdown_threads(self) -> None:
        self._sql_thread.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _periodic_flush(self) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval_s)
            try:
                await self.flush()
                await self.reclaim()
            except StorageError:
                return  # closed or failed: nothing left to flush into
            except Exception:
                log.exception("periodic flush failed")

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

    async def start_rollups(
        self, options: rollup.RollupOptions, *, background: bool = True
    ) -> rollup.RollupManager:
        """Keep rollups of this store (see :mod:`agent.storage.rollup`); returns the manager.

        Registers the manager's write listener (late data marks buckets for
        recomputation), replays audited writes the last process may not have
        rolled up, hands the manager to the query service (PromQL may then
        answer ``*_over_time`` from rollups) and, with ``background``, starts
        a pass every ``options.interval_s``.
        """
        if self.rollups is not None:
            raise StorageError("rollups are already started")
        index = self._index
        manager = rollup.RollupManager(
            self,
            options,
            all_ids=index.all_ids,
            raw_cutoffs=lambda now: self._retention.cutoffs(index, now),
        )
        await self.attach(rollup.MIGRATIONS)
        await manager.load()
        self.add_write_listener(manager.on_write)
        self.rollups = manager
        if self._queries is not None:
            self._queries.rollups = manager
        if background:
            manager.start()
        return manager

    def add_write_listener(self, listener: WriteListener) -> None:
        """Call ``listener(series_ids, min_t, max_t)`` on the event loop after each change.

        Every path that changes stored samples calls it once per committed
        batch, after the commit (append, backfill, record_write, rollback,
        retention; ``series_ids`` None means "any series"). It must be cheap:
        it runs inline on the write path. The query cache invalidates with it.
        """
        self._write_listeners.append(listener)

    def remove_write_listener(self, listener: WriteListener) -> None:
        with contextlib.suppress(ValueError):
            self._write_listeners.remove(listener)

    def notify_written(self, series_ids: np.ndarray | None, min_t: int, max_t: int) -> None:
        """Tell the write listeners that samples in [min_t, max_t] of these series changed."""
        for listener in list(self._write_listeners):
            try:
                listener(series_ids, min_t, max_t)
            except Exception:
                log.exception("write listener failed")

    def add_sample_listener(self, listener: SampleListener) -> None:
        """Call ``listener(series_ids, timestamps, values)`` with the samples of each commit.

        Called on the event loop right after each group commit (appends) and
        each backfill or ``record_write`` commit, in commit order, with
        exactly the samples stored: duplicates and rejected samples are left
        out. Arrays are int64/int64/float64 (values as stored, NaN payloads
        intact) and must not be modified. Costs nothing while no listener is
        registered; a listener must be cheap (live streaming filters with one
        numpy gather, see :mod:`agent.stream`). Rollbacks and retention
        remove data and are reported only to write listeners.
        """
        self._sample_listeners.append(listener)

    def remove_sample_listener(self, listener: SampleListener) -> None:
        with contextlib.suppress(ValueError):
            self._sample_listeners.remove(listener)

    @property
    def sample_listener_count(self) -> int:
        """Registered sample listeners (tests check that disconnects clean up)."""
        return len(self._sample_listeners)

    def add_transaction_hook(self, hook: TxnHook, *, backfills: bool = False) -> None:
        """Run ``hook`` inside every group-commit transaction (e.g. an audit insert).

        With ``backfills`` it also runs inside each backfill's transaction, with
        one record (``op="backfill"``, ``seq`` None) holding the stored samples:
        the export log needs every accepted batch, while the audit hook must
        not see backfills (they write their own audit row).
        """
        self._w.hooks.append(hook)
        if backfills:
            self._backfill_hooks.append(hook)

    async def run_in_transaction(
        self,
        sql: Callable[[sqlite3.Connection], Any],
        after: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run ``sql(conn)`` in its own write transaction, serialised with appends.

        For plugins' own tables (their migrations: a ``db.Migrations`` set of their own,
        applied with :meth:`attach`);
        see :meth:`agent.storage.writer.Writer.job`. Returns after the commit.
        """
        return await self._w.job(sql, after)

    async def attach(self, migrations: db.Migrations) -> list[str]:
        """Apply a subsystem's migration set (what is pending, in name order); returns the
        names applied. Runs on the SQL thread, between writer transactions."""
        applied: list[str] = await asyncio.get_running_loop().run_in_executor(
            self._sql_thread, migrations.apply, self._conn
        )
        if applied:
            log.info("%s migrations applied: %s", migrations.name, ", ".join(applied))
        return applied

    async def run_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` on a reader thread with a read-only connection (a snapshot)."""
        if self._closed:
            raise StorageError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, lambda: fn(self._reader_conn())
        )

    @property
    def _w(self) -> Writer:
        if self._writer is None:
            raise StorageError("store is not open")
        return self._writer

    # --- series -------------------------------------------------------------------------

    def series_id(self, labels: Labels) -> int | None:
        sid = self._index.lookup(labels)
        if sid is None:
            sid = self._index.lookup(canonical_labels(labels))
        return sid

    async def get_or_create_series(self, labels_list: list[Labels]) -> list[int]:
        """Ids for label sets, creating missing series durably before returning.

        Raises :class:`CardinalityLimitExceeded` when a limit refuses some new
        series; ingestors that keep the rest call :meth:`resolve_series`.
        """
        ids, refused = await self.resolve_series(labels_list)
        if refused:
            raise CardinalityLimitExceeded(ids, refused)
        return ids

    async def resolve_series(self, labels_list: list[Labels]) -> tuple[list[int], dict[int, str]]:
        """Ids for label sets (0 where refused) and {position: reason} for the refused.

        Existing series always resolve; only new series are checked against
        the cardinality limits, so traffic on known series keeps flowing.
        """
        out: list[int] = []
        missing: list[int] = []
        wanted: list[Labels] = []
        lookup = self._index.lookup
        too_big: dict[int, str] = {}
        for lab in labels_list:
            sid = lookup(lab)
            if sid is None:
                canon = canonical_labels(lab)
                if not canon:
                    raise ValueError("a series needs at least one non-empty label")
                if canon is not lab:
                    sid = lookup(canon)
                problem = None if sid is not None else bounds.label_problem(self._bounds, canon)
                if problem is not None:
                    too_big[len(out)] = f"label limit: {problem}"
                elif sid is None:
                    missing.append(len(out))
                    wanted.append(canon)
            out.append(sid if sid is not None else 0)
        refused: dict[int, str] = {}
        if wanted:
            dropped = self._limiter.admit(wanted)
            if dropped:
                refused = {missing[i]: reason for i, reason in dropped.items()}
                keep = [i for i in range(len(wanted)) if i not in dropped]
                missing = [missing[i] for i in keep]
                wanted = [wanted[i] for i in keep]
        if wanted:
            try:
                created = await self._w.create(wanted)
            except BaseException:
                self._limiter.forget_reservations(len(wanted))
                raise
            self._limiter.created(created)
            for pos, sid in zip(missing, created, strict=True):
                out[pos] = sid
        return out, refused | too_big

    def timestamp_problems(self, timestamps: Sequence[int] | np.ndarray) -> list[tuple[int, str]]:
        """(position, reason) of timestamps outside ``limits`` (see :mod:`agent.storage.bounds`).

        ``append`` and ``backfill`` refuse those samples anyway; ingestors ask
        first so that no series is created for samples that will be refused,
        and so an all-or-nothing batch creates nothing.
        """
        ts = np.asarray(timestamps, dtype=np.int64)
        return bounds.split_timestamps(self._bounds, ts, now_ms())[1] if ts.size else []

    def out_of_bounds(self, timestamps: np.ndarray) -> np.ndarray | None:
        """Boolean mask of timestamps outside ``limits``, or None when all are inside.

        Vectorised, for callers with millions of samples; the reasons come
        from :meth:`timestamp_problems`.
        """
        lo, hi = bounds.time_window(self._bounds, now_ms())
        bad = (timestamps < lo) | (timestamps > hi)
        return bad if bad.any() else None

    def label_problems(self, labels_list: Sequence[Labels]) -> dict[int, str]:
        """{position: reason} of label sets that would be refused as new series (label limits)."""
        out: dict[int, str] = {}
        for i, lab in enumerate(labels_list):
            if self.series_id(lab) is None:
                problem = bounds.label_problem(self._bounds, canonical_labels(lab))
                if problem is not None:
                    out[i] = f"label limit: {problem}"
        return out

    def cardinality_stats(self, limit: int = 10) -> CardinalityStats:
        """Top label names, values and metrics by series count (``/api/v1/status/tsdb``)."""
        index = self._index
        return top_stats(index.label_names(), index.value_counts, len(index), limit)

    async def limit_cardinality(
        self, series_id_or_metric: int | str, tag_key: str | None, max_values: int
    ) -> None:
        """Cap a metric's distinct values of ``tag_key`` (or, with no key, its series).

        Persisted, so the cap survives a restart; it applies to series created
        from now on (existing series are never cut off).
        """
        if isinstance(series_id_or_metric, int):
            metric = dict(self.labels(series_id_or_metric)).get("__name__", "")
        else:
            metric = series_id_or_metric
        if max_values < 0:
            raise ValueError("max_values must be >= 0")
        label = tag_key or ""
        await self._w.job(lambda conn: Limiter.save_api_rule(conn, metric, label, max_values))
        self._limiter.set_api_rule(metric, label, max_values)

    def labels(self, series_id: int) -> Labels:
        return self._index.labels(series_id)

    def label_names(self) -> list[str]:
        return self._index.label_names()

    def label_values(self, name: str) -> list[str]:
        return self._index.label_values(name)

    def match_series(self, matchers: list[Matcher]) -> list[int]:
        return self._index.match(matchers).tolist()

    def newest_timestamps(self, series_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Newest sample time ever stored per series (INT64_MIN for none), from memory.

        The series and label endpoints use it to leave out series that ended
        before the requested start without reading any samples.
        """
        ids = np.asarray(series_ids, dtype=np.int64)
        max_t = self._head.max_t
        out = np.full(ids.size, INT64_MIN, dtype=np.int64)
        ok = ids < max_t.size
        out[ok] = max_t[ids[ok]]
        return out

    async def time_bounds(self) -> tuple[int, int] | None:
        """(oldest, newest) sample timestamp in segments and head, or None when empty."""

        def run() -> tuple[int | None, int | None]:
            row = self._reader_conn().execute("SELECT min(min_t), max(max_t) FROM segments")
            lo, hi = row.fetchone()
            return lo, hi

        lo, hi = await asyncio.get_running_loop().run_in_executor(self._readers, run)
        head = self._head
        ids = head.series_with_data()
        first = head.earliest(ids.tolist())
        if first is not None:
            lo = first if lo is None else min(lo, first)
            # A series' newest sample is in the head whenever the head holds any of it
            # (out-of-order ones are older), or else in segments: max_t bounds both.
            last = int(head.max_t[ids].max())
            hi = last if hi is None else max(hi, last)
        return None if lo is None or hi is None else (int(lo), int(hi))

    async def earliest_from(self, start_ms: int) -> int | None:
        """The oldest sample timestamp at or after ``start_ms`` (segments and head), or None.

        Lets background passes that walk time (rollups) jump over empty
        spans: a lone sample decades before the rest must not cost one step
        per block in between. Exact, and cheap: an index read for segments
        starting later, a read of only the segments that straddle
        ``start_ms``, and the head from ``start_ms`` on.
        """

        def run() -> tuple[int | None, list[int]]:
            conn = self._reader_conn()
            later = conn.execute(
                "SELECT min(min_t) FROM segments WHERE min_t >= ?", (start_ms,)
            ).fetchone()[0]
            straddle = conn.execute(
                "SELECT DISTINCT series_id FROM segments WHERE min_t < ? AND max_t >= ?",
                (start_ms, start_ms),
            ).fetchall()
            return later, [int(r[0]) for r in straddle]

        later, straddle = await asyncio.get_running_loop().run_in_executor(self._readers, run)
        best = later
        end = 2**63 - 1 if later is None else int(later)
        for _sid, t, _v in await self.read_many(straddle, start_ms, end):
            if t.size:
                best = int(t[0]) if best is None else min(best, int(t[0]))
        head = self._head
        ids = head.series_with_data()
        ids = ids[self.newest_timestamps(ids) >= start_ms]  # only series with data that late
        first = head.earliest(ids.tolist(), start_ms)
        if first is not None and first <= end:
            best = first if best is None else min(best, first)
        return None if best is None else int(best)

    # --- queries (PromQL) ---------------------------------------------------------------

    @property
    def queries(self) -> QueryService:
        """The query service over this store, created on first use (engine, limits, cache)."""
        if self._queries is None:
            from agent.query.service import QueryService

            index = self._index
            service = QueryService(self, name_of=lambda sid: metric_name(index.labels(sid)))
            self.add_write_listener(service.cache.on_write)
            service.rollups = self.rollups
            self._queries = service
        return self._queries

    async def query(
        self,
        expr: str,
        time: TimeLike | None = None,
        *,
        tz: str | None = None,
        dst: str = "reject",
        timeout: float | None = None,
        typed: bool = False,
        cache: CacheMode = "use",
    ) -> dict[str, Any] | Result:
        """Evaluate PromQL ``expr`` at ``time`` (default now), as ``/api/v1/query`` would.

        ``time``: an aware ``datetime``; a naive one (local in ``tz``); an API
        string (RFC 3339, Unix seconds, or a local date-time with ``tz``); or
        a number of Unix **seconds**, the HTTP API's unit. ``tz`` defaults to
        ``query.default_timezone``, else the machine's zone; ``dst``
        (``reject``/``earlier``/``later``) settles DST-ambiguous local times.
        Returns the API's ``data`` dict (plain Python values), or with
        ``typed=True`` the engine's result objects (``Vector``, ``Matrix`` with
        numpy arrays, ``Scalar``, ``String``; warnings in ``.annotations``).
        Raises :class:`agent.query.QueryError` subclasses (``error_type`` is
        the API's). Results are cached; ``cache="refresh"``/``"off"`` as
        ``Cache-Control: no-cache``/``no-store``.
        """
        return await self.queries.query(
            expr, time, tz=tz, dst=dst, timeout=timeout, typed=typed, cache=cache
        )

    async def query_range(
        self,
        expr: str,
        start: TimeLike,
        end: TimeLike,
        step: StepLike,
        *,
        tz: str | None = None,
        dst: str = "reject",
        align: str | None = None,
        timeout: float | None = None,
        typed: bool = False,
        cache: CacheMode = "use",
    ) -> dict[str, Any] | Result:
        """Evaluate ``expr`` from ``start`` to ``end`` every ``step``, as ``/api/v1/query_range``.

        Times as in :meth:`query`; ``step`` a ``timedelta``, a duration string
        (``"5m"``) or seconds. ``align="calendar"`` evaluates at local
        calendar boundaries of ``tz`` (see :func:`agent.query.timezone.calendar_steps`).
        """
        return await self.queries.query_range(
            expr,
            start,
            end,
            step,
            tz=tz,
            dst=dst,
            align=align,
            timeout=timeout,
            typed=typed,
            cache=cache,
        )

    # --- exports, live streams and joins (thin doors to agent.export/stream/join) ---------

    def export_csv(
        self,
        series_ids: Sequence[int] | None = None,
        start: int | datetime | str | None = None,
        end: int | datetime | str | None = None,
        tags_filter: Any = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """CSV export as an async iterator of text pieces; see :func:`agent.export.export_csv`.

        ``start``/``end`` in ms (or aware datetimes / RFC 3339); ``tags_filter``
        matchers, ``{label: value}`` or selector strings. The output imports back
        through ``import_csv`` unchanged (staleness markers are left out).
        """
        from agent.export import export_csv

        return export_csv(self, series_ids, start, end, tags_filter, **options)

    def stream_updates(
        self,
        series: int | Sequence[int] | None = None,
        matchers: Any = None,
        *,
        max_buffer: int = 10_000,
    ) -> Subscription:
        """Samples as they are committed, for ids and/or matchers; see :mod:`agent.stream`.

        ``async with store.stream_updates(matchers='cpu') as s: async for x in s: ...``
        yields ``StreamedSample``s and, when the consumer fell more than
        ``max_buffer`` samples behind, ``Lagged(dropped)`` notices.
        """
        from agent.stream import stream_updates

        return stream_updates(self, series, matchers, max_buffer=max_buffer)

    async def join_series(
        self,
        primary_id: int,
        other_ids: Sequence[int],
        join_type: str | Callable[..., Any] = "inner",
        **options: Any,
    ) -> JoinResult:
        """Align series by timestamp into rows; see :func:`agent.join.join_series`.

        ``join_type`` ``inner``/``left``/``outer``/``asof`` or a callable;
        options ``start``, ``end``, ``tolerance``, ``step`` (all ms) and ``fill``.
        """
        from agent.join import join_series

        return await join_series(self, primary_id, other_ids, join_type, **options)

    def cache_query(self, query_signature: str, ttl: float | str | timedelta | None) -> str:
        """Give one query (any spelling of it) its own cache TTL; returns the signature.

        ``ttl`` seconds, a duration string or a timedelta: ``0`` never caches
        it, ``None`` restores the default policy. Such a query is cached even
        with ``query.cache.enabled: false``.
        """
        return self.queries.cache_query(query_signature, ttl)

    # --- writing -----------------------------------------------------------------------

    async def append(
        self,
        series_ids: Sequence[int] | np.ndarray,
        timestamps: np.ndarray | Sequence[int],
        values: np.ndarray | Sequence[float],
        *,
        source: str = "api",
        client: str | None = None,
    ) -> AppendResult:
        """Append samples; returns once the accepted ones are committed."""
        sids = np.asarray(series_ids, dtype=np.int64)
        ts = np.asarray(timestamps, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float64)
        if not (sids.ndim == ts.ndim == vals.ndim == 1) or not (sids.size == ts.size == vals.size):
            raise ValueError("series_ids, timestamps and values must be 1-d and of equal length")
        if sids.size == 0:
            return AppendResult()
        keep, refused = bounds.split_timestamps(self._bounds, ts, now_ms())
        if keep is not None:
            result = await self.append(
                sids[keep], ts[keep], vals[keep], source=source, client=client
            )
            result.rejected.extend(bounds.rejections(sids, ts, refused))
            self._counters.rejected[REJECT_OUT_OF_BOUNDS] += len(refused)
            return result
        writer = self._w
        if int(sids.min()) < 1 or int(sids.max()) > self._index.max_id:
            bad = sids[(sids < 1) | (sids > self._index.max_id)]
            raise UnknownSeries(f"unknown series id(s): {bad[:5].tolist()}")
        limit = self.options.head_memory_limit_bytes
        if self._head.bytes_estimate() + 24 * writer.queued_samples > limit:
            if not writer.flush_pending:
                fut = writer.flush(all=True)  # relieve the pressure; nobody waits for it
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise BackPressure(f"head memory over {limit} bytes; retry later")
        # Copies: the caller may reuse its arrays before the writer gets to them.
        bits = vals.view(np.uint64).copy()
        result = await writer.append(sids.copy(), ts.copy(), bits, source, client)
        if result.accepted and self._write_listeners:
            self.notify_written(sids, int(ts.min()), int(ts.max()))
        return result

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

        hooks = list(self._backfill_hooks)

        def sql(conn: sqlite3.Connection) -> backfill.BackfillPlan:
            plan = backfill.backfill_sql(
                conn, ctx, s, t, b, source=source, client=client, on_error=on_error, at_ms=at
            )
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
            return plan

        def after(plan: backfill.BackfillPlan) -> backfill.BackfillResult:
            result = backfill.apply_plan(ctx, plan)
            if plan.stored is not None and plan.stored[0].size and self._sample_listeners:
                notify_samples(self._sample_listeners, *plan.stored)
            return result

        try:
            result: backfill.BackfillResult = await self._w.job(sql, after)
        except backfill.BackfillAborted as exc:
            return exc.result
        if self._write_listeners:
            self.notify_written(s, int(t.min()), int(t.max()))
        return result

    async def flush(self, *, all: bool = False) -> FlushResult:
        """Move head data into segments: full or aged series, or everything with ``all``."""
        return await self._w.flush(all=all)

    # --- reading ------------------------------------------------------------------------

    def _probe(self, series_id: int, ts: int) -> int | None:
        assert self._probe_conn is not None
        return probe_segments(self._probe_conn, self._chooser, series_id, ts)

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = db.connect(self.path, synchronous=self.options.synchronous, readonly=True)
            self._read_local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        return conn

    def _read_sync(
        self,
        ids: list[int],
        heads: dict[int, tuple[np.ndarray, np.ndarray]],
        start: int,
        end: int,
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        rows = fetch_segments(self._reader_conn(), ids, start, end)
        out = []
        for sid in ids:
            t, v = decode_merge(rows.get(sid, ()), heads.get(sid), self._chooser, start, end)
            if t.size:
                out.append((sid, t, v))
        return out

    async def _read(
        self, ids: list[int], start: int, end: int
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        if self._closed:
            raise StorageError("store is closed")
        # Head first, segments second: data flushed in between is then seen twice
        # (and deduplicated), never zero times.
        heads = {}
        snap = self._head.snapshot
        for sid in ids:
            h = snap(sid, start, end)
            if h is not None:
                heads[sid] = h
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, ids, heads, start, end)

    async def select(self, matchers: list[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        """Samples in [start_ms, end_ms] of every matching series that has any, by labels."""
        ids = self.match_series(matchers)
        if not ids:
            return []
        found = await self._read(ids, start_ms, end_ms)
        labels = self._index.labels
        out = [SeriesData(sid, labels(sid), t, v) for sid, t, v in found]
        out.sort(key=lambda s: s.labels)
        return out

    async def select_arrays(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> SelectedArrays:
        """What :meth:`select` returns, concatenated: for queries over many series.

        Series are in label order, each with at least one sample; series ``i``
        owns ``t[offsets[i]:offsets[i+1]]``.  Head samples of all series come
        out of one join, and SQL is asked only about series whose segments can
        reach ``start_ms`` (``seg_max_t``), so a select over 50,000 series costs
        a few Python operations per series instead of several numpy calls each.
        """
        ids, labs = self.plan_select(matchers)
        return await self.read_selected(ids, labs, start_ms, end_ms, on_loop=True)

    def plan_select(self, matchers: list[Matcher]) -> tuple[list[int], list[Labels]]:
        """The series :meth:`select_arrays` reads, in label order, and their labels.

        The index part of a select: on the event loop's thread, which owns the
        index. :meth:`read_selected` does the rest from any thread.
        """
        if self._closed:
            raise StorageError("store is closed")
        index = self._index
        ids = index.in_label_order(index.match(matchers))
        self._head.settle(READ_QUEUE_MAX)
        return ids, index.labels_many(ids)

    async def read_selected(
        self,
        ids: list[int],
        labs: list[Labels],
        start_ms: int,
        end_ms: int,
        *,
        on_loop: bool = False,
    ) -> SelectedArrays:
        """:meth:`select_arrays` of series from :meth:`plan_select`, callable in any thread.

        A query worker thread calls it with its own event loop: the head is
        read under its lock (:meth:`Head.read_many`, which changes nothing),
        segments through the reader threads. ``on_loop``: the caller is the
        event loop that owns the head, which may then move the head's queue
        into its buffers first (:meth:`Head.snapshot_many`).
        """
        if self._closed:
            raise StorageError("store is closed")
        head = self._head
        # Head first, segments second, as in _read.
        if on_loop:
            counts, t, v = head.snapshot_many(ids, start_ms, end_ms)
        else:
            counts, t, v = head.read_many(ids, start_ms, end_ms)
        id_arr = np.array(ids, dtype=np.int64)
        smt = head.seg_max_t  # one array: the loop may swap in a grown one meanwhile
        seg_max = smt[np.minimum(id_arr, smt.size - 1)] if ids else id_arr
        maybe = np.flatnonzero((id_arr < smt.size) & (seg_max >= start_ms)).tolist()
        if maybe:
            offs = np.zeros(len(ids) + 1, dtype=np.int64)
            np.cumsum(counts, out=offs[1:])
            want = [ids[i] for i in maybe]
            heads = {
                ids[i]: (t[offs[i] : offs[i + 1]], v[offs[i] : offs[i + 1]])
                for i in maybe
                if counts[i]
            }
            loop = asyncio.get_running_loop()
            merged = await loop.run_in_executor(
                self._readers, self._read_sync, want, heads, start_ms, end_ms
            )
            if merged:
                got = {sid: (mt, mv) for sid, mt, mv in merged}
                tparts, vparts, new_counts = [], [], counts.copy()
                for i, sid in enumerate(ids):
                    if sid in got:
                        mt, mv = got[sid]
                        new_counts[i] = mt.size
                    else:
                        mt, mv = t[offs[i] : offs[i + 1]], v[offs[i] : offs[i + 1]]
                        if sid in heads:
                            new_counts[i] = 0  # it had head data, but merged found none
                            mt, mv = mt[:0], mv[:0]
                    tparts.append(mt)
                    vparts.append(mv)
                counts = new_counts
                t = np.concatenate(tparts) if tparts else t[:0]
                v = np.concatenate(vparts) if vparts else v[:0]
        keep = counts > 0
        if not keep.all():
            labs = [lab for lab, k in zip(labs, keep.tolist(), strict=True) if k]
            counts = counts[keep]
        offsets = np.zeros(len(labs) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return SelectedArrays(labs, offsets, t, v)

    async def read_many(
        self, series_ids: Sequence[int], start_ms: int, end_ms: int
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(id, timestamps, values) in [start_ms, end_ms] of each given series that has any.

        In the order given; one reader-thread round trip for all of them, so
        exports and joins read a chunk of series at the cost of one.
        """
        ids = [int(s) for s in series_ids if self._index.exists(int(s))]
        if not ids:
            return []
        return await self._read(ids, start_ms, end_ms)

    async def read_series(
        self, series_id: int, start_ms: int, end_ms: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self._index.exists(series_id):
            raise UnknownSeries(f"unknown series id {series_id}")
        found = await self._read([series_id], start_ms, end_ms)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return found[0][1], found[0][2]

    # --- maintenance ------------------------------------------------------------------

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

    # --- versioned writes and the audit trail -------------------------------------------

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
            return versions.rollback_sql(
                conn,
                ctx,
                audit_id=audit_id,
                before_ms=before_ms,
                user=user_id,
                source=source,
                at_ms=at,
            )

        touched: list[int] = []

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

    # --- stats ----------------------------------------------------------------------------

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
