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
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from agent.model import Labels, Matcher
from agent.storage import (
    audit,
    bounds,
    db,
    retention,
    rollup,
    space,
)
from agent.storage.cardinality import (
    CardinalityOptions,
    Limiter,
    LimitRule,
)
from agent.storage.codec import Codec, RawCodec
from agent.storage.errors import (
    BackPressure,
    StorageError,
    UnknownSeries,
)
from agent.storage.head import INT64_MIN, Head
from agent.storage.index import SeriesIndex
from agent.storage.lock import DatabaseLock
from agent.storage.options import (
    REJECT_OUT_OF_BOUNDS,
    REJECT_REASONS,
    AppendResult,
    FlushResult,
    SelectedArrays,
    SeriesData,
    StorageOptions,
)
from agent.storage.segments import CodecChooser, decode_merge, fetch_segments, probe_segments
from agent.storage.store_backfill import BackfillParts
from agent.storage.store_base import WriteListener as WriteListener
from agent.storage.store_listeners import ListenerParts
from agent.storage.store_maintenance import MaintenanceParts
from agent.storage.store_series import SeriesParts
from agent.storage.wal import (
    TxnHook,
    decode_batch,
    iter_log,
    unsigned64,
)
from agent.storage.writer import Counters, SampleListener, Writer, now_ms

log = logging.getLogger(__name__)
# Queued head samples a query worker merges into its read; more are moved into
# the buffers on the loop first (Head.settle), as every select once did.
READ_QUEUE_MAX = 16_384

READER_THREADS = 2


class Store(SeriesParts, BackfillParts, MaintenanceParts, ListenerParts):
    """The storage facade (module docstring); its parts live in the store_* modules."""

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
        self._staging = 0  # names the temp tables of prepared backfills
        self.rollups: rollup.RollupManager | None = None
        self._disk = space.DiskUsage()
        self._free_warned = False
        self._loaded_log_bytes = 0

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | Path, options: StorageOptions, codecs: Mapping[str, Codec]
    ) -> Store:
        """Create or migrate the database, then replay the log into the head.

        ``raw`` is always available (:class:`agent.storage.codec.RawCodec`), so a
        store opens with no codec plugin at all; a plugin's ``raw`` wins.
        """
        options.validate()
        codecs = {RawCodec.name: RawCodec(), **codecs}
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

    async def start_rollups(
        self, options: rollup.RollupOptions, *, background: bool = True
    ) -> rollup.RollupManager:
        """Keep rollups of this store (see :mod:`agent.storage.rollup`); returns the manager.

        Registers the manager's write listener (late data marks buckets for
        recomputation), replays audited writes the last process may not have
        rolled up and, with ``background``, starts a pass every
        ``options.interval_s``. (:class:`agent.root.Agent` hands the manager to
        its query service, so PromQL may answer ``*_over_time`` from rollups.)
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
        if background:
            manager.start()
        return manager

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
        plan = self.plan_small(matchers, None)
        assert plan is not None
        return plan

    def plan_small(
        self, matchers: list[Matcher], most: int | None
    ) -> tuple[list[int], list[Labels]] | None:
        """:meth:`plan_select`, or None past ``most`` series, found before ordering them."""
        if self._closed:
            raise StorageError("store is closed")
        plan = self._index.select(matchers, most)
        self._head.settle(READ_QUEUE_MAX)
        return plan

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
        event loop that owns the head, which reads it without the lock (the
        loop is the only thread that changes it), so a small query evaluated
        on the loop never waits for a worker's copy.
        """
        if self._closed:
            raise StorageError("store is closed")
        head = self._head
        # Head first, segments second, as in _read.
        id_arr = np.array(ids, dtype=np.int64)
        top = int(id_arr.max()) if ids else None
        counts, t, v = head.read_many(ids, start_ms, end_ms, locked=not on_loop, top=top)
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
