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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from agent.model import Labels, Matcher
from agent.plugin_api import Codec
from agent.storage import db
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
from agent.storage.writer import Counters, Writer

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
        store._writer.start()
        store._flusher = loop.create_task(store._periodic_flush(), name="tsagent-flusher")
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
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
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
