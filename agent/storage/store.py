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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from agent.model import Labels, Matcher, metric_name
from agent.plugin_api import Codec
from agent.storage import audit, db, recompress, retention, versions
from agent.storage.errors import BackPressure, StorageError, UnknownSeries
from agent.storage.head import INT64_MIN, Head
from agent.storage.index import SeriesIndex, canonical_labels, decode_labels
from agent.storage.lock import DatabaseLock
from agent.storage.options import (
    REJECT_REASONS,
    AppendResult,
    FlushResult,
    SeriesData,
    StorageOptions,
    StoreStats,
)
from agent.storage.segments import CodecChooser, decode_merge, fetch_segments, probe_segments
from agent.storage.wal import TxnHook, decode_batch, iter_log, unsigned64
from agent.storage.writer import Counters, Writer, now_ms

log = logging.getLogger(__name__)

READER_THREADS = 2


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
        self._head = Head(options.out_of_order_window_ms)
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
        # Always on: every appended batch gets its chained audit row in its own commit.
        store._writer.hooks.append(audit.append_hook)
        store._writer.start()
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
        ids: list[int] = []
        flushed: list[int] = []
        max_t: list[int] = []
        last_bits: list[int] = []
        for sid, text, fseq, mt, lb in conn.execute(
            "SELECT id, labels, flushed_seq, max_t, last_bits FROM series ORDER BY id"
        ):
            self._index.add(sid, decode_labels(text))
            ids.append(sid)
            flushed.append(fseq)
            max_t.append(INT64_MIN if mt is None else mt)
            last_bits.append(0 if lb is None else unsigned64(lb))
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
            # duplicates may be needlessly conservative, never wrong.
            head.seg_max_t[idx] = np.where(np.array(flushed) > 0, np.array(max_t), INT64_MIN)
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
        return last_seq + 1, max_id + 1

    async def close(self) -> None:
        """Stop the background tasks and close connections; data is durable already."""
        if self._closed:
            return
        self._closed = True
        for task in (self._flusher, self._retainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            await self._writer.stop()
        self._shutdown_threads()
        conns = [self._conn, *self._read_conns]
        if self._probe_conn is not None:
            conns.append(self._probe_conn)
        for conn in conns:
            conn.close()
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
            except StorageError:
                return  # closed or failed: nothing left to flush into
            except Exception:
                log.exception("periodic flush failed")

    def add_transaction_hook(self, hook: TxnHook) -> None:
        """Run ``hook`` inside every group-commit transaction (e.g. an audit insert)."""
        self._w.hooks.append(hook)

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
        """Ids for label sets, creating missing series durably before returning."""
        out: list[int] = []
        missing: list[int] = []
        wanted: list[Labels] = []
        lookup = self._index.lookup
        for lab in labels_list:
            sid = lookup(lab)
            if sid is None:
                canon = canonical_labels(lab)
                if not canon:
                    raise ValueError("a series needs at least one non-empty label")
                sid = lookup(canon)
                if sid is None:
                    missing.append(len(out))
                    wanted.append(canon)
            out.append(sid if sid is not None else 0)
        if wanted:
            created = await self._w.create(wanted)
            for pos, sid in zip(missing, created, strict=True):
                out[pos] = sid
        return out

    def labels(self, series_id: int) -> Labels:
        return self._index.labels(series_id)

    def label_names(self) -> list[str]:
        return self._index.label_names()

    def label_values(self, name: str) -> list[str]:
        return self._index.label_values(name)

    def match_series(self, matchers: list[Matcher]) -> list[int]:
        return self._index.match(matchers).tolist()

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
        return await writer.append(sids.copy(), ts.copy(), bits, source, client)

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
        return await retention.run_pass(
            self._w, self._index, self._retention, self.options.flush_chunk_series, now_ms
        )

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
            return res[0]

        result: int = await self._w.job(sql, after)
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

        def after(res: tuple[int, list[versions.SeriesEdit]]) -> int:
            versions.apply_edits(ctx, res[1])
            return res[0]

        result: int = await self._w.job(sql, after)
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
        )
