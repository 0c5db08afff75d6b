"""The single writer: group commit for appends and series creation, and flushes.

One asyncio task owns every mutation of the head and the index and runs on
the event loop; SQL runs on one dedicated thread (the only user of the write
connection).  While a commit is in that thread (the GIL is released during
SQLite's work and fsync), new ``append`` calls keep queueing; the next round
drains them all into one transaction.  That is the whole group-commit
mechanism: no timers, so an idle store commits a lone batch immediately.

Because the task is sequential, a flush never races an append: the head
cannot change while a flush transaction is in flight, so the buffers it
encodes (in the SQL thread) are exactly the ones released after the commit.
Large flushes are cut into chunks, with queued appends served between chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agent.model import Labels
from agent.storage.db import transaction
from agent.storage.errors import StoreClosed, StoreFailed
from agent.storage.options import AppendResult, FlushResult, Rejection, StorageOptions
from agent.storage.segments import CodecChooser, FlushItem, SegmentRow, encode_series
from agent.storage.series_alloc import (
    CreationGate,
    SeriesCreation,
    allocate,
    creating,
    register,
)
from agent.storage.wal import (
    BatchRecord,
    SeriesUpdate,
    TxnHook,
    WalRow,
    encode_batch,
    insert_staged_series,
    pack_batch,
    signed64,
    write_checkpoint,
    write_flush,
    write_group,
)

if TYPE_CHECKING:
    import sqlite3

    from agent.storage.head import Head, SegmentProbe
    from agent.storage.index import SeriesIndex

from agent.storage.writer_requests import (
    Counters,
    SampleListener,
    _Append,
    _Checkpoint,
    _concat,
    _Create,
    _Flush,
    _Item,
    _Job,
    _Stop,
    notify_samples,
    now_ms,
)

__all__ = [
    "Counters",
    "SampleListener",
    "SeriesCreation",
    "Writer",
    "notify_samples",
    "now_ms",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


# Bound on samples per group transaction, so one commit's latency stays bounded.
GROUP_SAMPLE_BUDGET = 250_000

# Series per checkpoint row (see Writer.checkpoint).
CHECKPOINT_CHUNK_SERIES = 4000


class Writer:
    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        head: Head,
        index: SeriesIndex,
        chooser: CodecChooser,
        options: StorageOptions,
        counters: Counters,
        probe: SegmentProbe,
        next_seq: int,
        next_series_id: int,
    ) -> None:
        self.conn = conn
        self.executor = executor
        self.head = head
        self.index = index
        self.chooser = chooser
        self.options = options
        self.counters = counters
        self.probe = probe
        self.next_seq = next_seq
        self.next_series_id = next_series_id
        self.hooks: list[TxnHook] = []
        self.gate = CreationGate()
        # Called as fn(series_ids, timestamps, values) after each group commit with the
        # samples it stored (duplicates and rejections left out); shared with the Store.
        self.sample_listeners: list[SampleListener] = []
        self.failed: BaseException | None = None
        self.queued_samples = 0
        self._queued_flushes = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._backlog: dict[int, None] = {}  # ordered set of series waiting for a flush
        self._flush_waiters: list[_Flush] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Log bytes written since the last head checkpoint, and that checkpoint's size.
        self.log_since_checkpoint = 0
        self.last_checkpoint_bytes = 0

    # --- requests (event loop side) ------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tsagent-writer")

    def _check_open(self) -> None:
        if self.failed is not None:
            raise StoreFailed(f"store failed earlier and must be reopened: {self.failed!r}")
        if self._stopping:
            raise StoreClosed("store is closed")

    def append(
        self, sids: np.ndarray, ts: np.ndarray, bits: np.ndarray, source: str, client: str | None
    ) -> asyncio.Future[AppendResult]:
        self._check_open()
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.queued_samples += int(sids.size)
        self._queue.put_nowait(_Append(sids, ts, bits, source, client, fut))
        return fut

    def create(self, labels: list[Labels]) -> asyncio.Future[list[int]]:
        self._check_open()
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Create(labels, fut))
        return fut

    def flush(self, *, all: bool) -> asyncio.Future[FlushResult]:
        self._check_open()
        fut: asyncio.Future[FlushResult] = asyncio.get_running_loop().create_future()
        self._queued_flushes += 1
        self._queue.put_nowait(_Flush(all, fut))
        return fut

    def job(
        self,
        sql: Callable[[sqlite3.Connection], T],
        after: Callable[[T], Any] | None = None,
        *,
        creates: SeriesCreation | None = None,
    ) -> asyncio.Future[Any]:
        """Run ``sql(conn)`` in one IMMEDIATE transaction on the SQL thread, in write order.

        Nothing else writes while it runs: appends queued before it are
        committed first, those queued after it wait. ``after(result)`` then
        runs on the event loop (still inside the writer task), which is where
        the head and index may be changed to match what was committed. The
        future resolves to ``after``'s return value, or ``sql``'s when there is
        no ``after``.

        With ``creates``, the series it names are created in the same
        transaction (``creates.ids`` is filled before ``sql`` runs) and exist
        only if ``sql`` returns: an all-or-nothing import that aborts inside
        ``sql`` leaves no series behind.
        """
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(sql, after, fut, creates))
        return fut

    def checkpoint(self) -> asyncio.Future[int]:
        """Rewrite the log as a compact copy of the head now; resolves to its bytes."""
        self._check_open()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Checkpoint(fut))
        return fut

    def _checkpoint_due(self) -> bool:
        """Once the rows written since the last checkpoint outweigh both the option and that
        checkpoint: the work stays in proportion to what was appended, and the log within
        about twice the head's compact size."""
        floor = max(self.options.checkpoint_min_bytes, self.last_checkpoint_bytes)
        return self.log_since_checkpoint > floor

    async def _run_checkpoint(self, req: _Checkpoint) -> None:
        """Replace every log row by the head's samples, grouped by series.

        The log's rows are written per batch, so a value can only be compared
        with the previous value of its series inside the same batch; a live
        remote-write round (one sample per series) then costs ~6-8 bytes a
        sample for noisy values. Grouped by series, the same samples pack like
        segments. The head is exactly the samples not yet in segments, so the
        checkpoint rows (new sequence numbers, after every existing row) hold
        everything the old rows would replay, and the old rows go in the same
        transaction. Each series' first and last sequence become its
        checkpoint row's, so a later flush marks it flushed past that row and
        replay stays exactly-once. Runs inside the writer task: nothing
        changes the head while the SQL thread reads its buffers.
        """
        if self.failed is not None:
            if req.future is not None and not req.future.done():
                req.future.set_exception(StoreFailed(f"store failed earlier: {self.failed!r}"))
            return
        head = self.head
        sids = head.series_with_data()
        chunks = [
            sids[i : i + CHECKPOINT_CHUNK_SERIES]
            for i in range(0, sids.size, CHECKPOINT_CHUNK_SERIES)
        ]
        first = self.next_seq
        try:
            size, _ = await asyncio.get_running_loop().run_in_executor(
                self.executor, write_checkpoint, self.conn, head.joined, chunks, first, now_ms()
            )
        except Exception as exc:  # the old rows are intact: report and go on
            log.exception("log checkpoint failed")
            if req.future is not None and not req.future.done():
                req.future.set_exception(exc)
            return
        for k, chunk in enumerate(chunks):
            head.first_seq[chunk] = first + k
            head.last_seq[chunk] = first + k
        self.next_seq = first + len(chunks)
        self.counters.wal_rows = len(chunks)
        self.counters.checkpoints += 1
        self.log_since_checkpoint = 0
        self.last_checkpoint_bytes = size
        if req.future is not None and not req.future.done():
            req.future.set_result(size)

    async def _run_job(self, job: _Job) -> None:
        made = job.creates.made if job.creates is not None else None

        def run() -> Any:
            with transaction(self.conn):
                if made is not None:
                    insert_staged_series(self.conn)
                return job.sql(self.conn)

        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, run)
            if job.creates is not None and made is not None:
                job.creates.committed = True
                if made.new_ids:  # `after` may set the new series' frontiers
                    self.head.ensure(made.new_ids[-1])
            if job.after is not None:
                result = job.after(result)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, writer lives on
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    def creating(
        self, labels: list[Labels], frontiers: Sequence[tuple[int | None, int | None]] = ()
    ) -> AbstractAsyncContextManager[SeriesCreation]:
        """Ids for an all-or-nothing import's new series (see :func:`series_alloc.creating`)."""
        return creating(self, labels, frontiers)

    def check_open(self) -> None:
        self._check_open()

    @property
    def accepting(self) -> bool:
        return not self._stopping and self.failed is None

    def release_gate(self) -> None:
        """Open the creation gate; its deferred creates go back to the queue (or fail)."""
        running = self._task is not None and not self._task.done()
        self.gate.release(self._queue.put_nowait if running else None)

    @property
    def flush_pending(self) -> bool:
        return bool(self._backlog) or self._queued_flushes > 0

    async def stop(self) -> None:
        """Finish everything queued (including flush backlog), then end the task."""
        if self._task is None or self._task.done():
            return  # ended already (cancelled or crashed: reported when it happened)
        if not self._stopping:
            self._stopping = True
            self._queue.put_nowait(_Stop())
        await asyncio.shield(self._task)

    # --- the task ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except BaseException as exc:
            # A bug here must not leave callers awaiting forever.
            self.failed = exc
            if isinstance(exc, asyncio.CancelledError):
                # Cancelled (the loop shutting down), not a fault: what was acknowledged
                # is in the log already; whoever still waits is told below.
                log.warning("storage writer cancelled with %d requests queued", self._queue.qsize())
                err = StoreFailed("storage writer cancelled")
            else:
                log.exception("storage writer crashed")
                err = StoreFailed(f"storage writer crashed: {exc!r}")
            while not self._queue.empty():
                item = self._queue.get_nowait()
                fut = getattr(item, "future", None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            for w in self._flush_waiters:
                if not w.future.done():
                    w.future.set_exception(err)
            for cr in self.gate.deferred:
                if not cr.future.done():
                    cr.future.set_exception(err)
            if not isinstance(exc, Exception):
                raise

    async def _loop(self) -> None:
        stop = False
        while True:
            items: list[_Item] = []
            if self._queue.empty() and not self._backlog:
                if stop:
                    return
                items.append(await self._queue.get())
            budget = GROUP_SAMPLE_BUDGET
            while not self._queue.empty() and budget > 0:
                nxt = self._queue.get_nowait()
                if isinstance(nxt, _Append):
                    budget -= int(nxt.sids.size)
                items.append(nxt)
            creates = self.gate.defer([i for i in items if isinstance(i, _Create)])
            appends = [i for i in items if isinstance(i, _Append)]
            for ap in appends:
                self.queued_samples -= int(ap.sids.size)
            if any(isinstance(i, _Stop) for i in items):
                stop = True
            if creates or appends:
                self.gate.creating(bool(creates))  # an import waits for it to register
                try:
                    await self._commit_group(creates, appends)
                finally:
                    self.gate.creating(False)
            for req in items:
                if isinstance(req, _Flush):
                    self._queued_flushes -= 1
                    self._schedule_flush(req)
                elif isinstance(req, _Job):
                    await self._run_job(req)
                elif isinstance(req, _Checkpoint):
                    await self._run_checkpoint(req)
            if self._backlog:
                try:
                    await self._flush_chunk()
                except Exception as exc:  # keep the writer alive; data is still in the log
                    log.exception("flush failed")
                    self._fail_flush_waiters(exc)
            self._resolve_flush_waiters()
            if self._checkpoint_due() and not self._backlog and not stop:
                await self._run_checkpoint(_Checkpoint(None))

    async def _commit_group(self, creates: list[_Create], appends: list[_Append]) -> None:
        loop = asyncio.get_running_loop()
        if self.failed is not None:
            exc = StoreFailed(f"store failed earlier and must be reopened: {self.failed!r}")
            for cr in creates:
                if not cr.future.done():
                    cr.future.set_exception(exc)
            for ap in appends:
                if not ap.future.done():
                    ap.future.set_exception(exc)
            return
        ts_now = now_ms()
        made = allocate(self.index, self.next_series_id, [cr.labels for cr in creates], ts_now)
        self.next_series_id = made.next_id

        wal_rows: list[WalRow] = []
        records: list[BatchRecord] = []
        results: list[AppendResult] = []
        touched: list[np.ndarray] = []
        # What was stored, for the sample listeners; collected only when someone listens.
        stored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = (
            [] if self.sample_listeners else None
        )
        head = self.head
        try:
            self._apply_appends(appends, ts_now, wal_rows, records, results, touched, stored)
            await loop.run_in_executor(
                self.executor,
                write_group,
                self.conn,
                made.pair_rows,
                made.series_rows,
                wal_rows,
                records,
                list(self.hooks),
            )
        except BaseException as exc:
            # The head may already hold these samples; acknowledging anything on top
            # of that would be a lie, so stop accepting writes until a reopen.
            self.failed = exc
            log.error("group commit failed; store refuses further writes: %r", exc)
            err = StoreFailed(f"commit failed: {exc!r}")
            for cr in creates:
                if not cr.future.done():
                    cr.future.set_exception(err)
            for ap in appends:
                if not ap.future.done():
                    ap.future.set_exception(err)
            if not isinstance(exc, Exception):
                raise
            return
        c = self.counters
        c.commits += 1
        c.wal_rows += len(wal_rows)
        register(self.index, self.head, made)
        for cr, ids in zip(creates, made.ids, strict=True):
            if not cr.future.done():
                cr.future.set_result(ids)
        for a, res in zip(appends, results, strict=True):
            c.appends += 1
            c.appended_samples += res.accepted
            c.duplicate_samples += res.duplicates
            for rej in res.rejected:
                c.rejected[rej.reason] = c.rejected.get(rej.reason, 0) + 1
            if not a.future.done():
                a.future.set_result(res)
        block = self.options.block_size
        for t in touched:
            for sid in head.over_block_size(t, block).tolist():
                self._backlog[sid] = None
        if stored and self.sample_listeners:
            notify_samples(self.sample_listeners, *_concat(stored))

    def _apply_appends(
        self,
        appends: list[_Append],
        ts_now: int,
        wal_rows: list[WalRow],
        records: list[BatchRecord],
        results: list[AppendResult],
        touched: list[np.ndarray],
        stored_out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        head = self.head
        for a in appends:
            seq = self.next_seq
            out = head.apply(a.sids, a.ts, a.bits, seq, ts_now, probe=self.probe)
            stored = int(out.stored_sids.size)
            blob: bytes | None = None
            packed: bytes | None = None
            if stored and stored_out is not None:
                stored_out.append((out.stored_sids, out.stored_ts, out.stored_bits))
            if stored:
                # The raw form is what the audit trail hashes (its content hashes stay
                # comparable across log formats); the log keeps the compact form.
                blob = encode_batch(out.stored_sids, out.stored_ts, out.stored_bits)
                packed = pack_batch(out.stored_sids, out.stored_ts, out.stored_bits)
                wal_rows.append((seq, ts_now, stored, packed))
                self.log_since_checkpoint += len(packed)
                self.next_seq += 1
                touched.append(out.touched)
            records.append(
                BatchRecord(
                    seq if stored else None,
                    a.source,
                    a.client,
                    ts_now,
                    out.accepted,
                    stored,
                    out.duplicates,
                    len(out.rejected),
                    blob,
                    packed=packed,
                )
            )
            results.append(
                AppendResult(
                    accepted=out.accepted,
                    rejected=[Rejection(s, t, r) for s, t, r in out.rejected],
                    duplicates=out.duplicates,
                )
            )

    # --- flushing --------------------------------------------------------------------

    def _schedule_flush(self, req: _Flush) -> None:
        head = self.head
        if req.all:
            sids = head.series_with_data()
        else:
            aged = head.older_than(now_ms() - self.options.flush_age_ms)
            full = head.over_block_size(head.series_with_data(), self.options.block_size)
            sids = np.union1d(aged, full)
        for sid in sids.tolist():
            self._backlog[sid] = None
        req.remaining = set(sids.tolist())
        self._flush_waiters.append(req)

    def _resolve_flush_waiters(self) -> None:
        still = []
        for w in self._flush_waiters:
            if w.remaining:
                still.append(w)
            elif not w.future.done():
                w.future.set_result(w.result)
        self._flush_waiters = still

    def _fail_flush_waiters(self, exc: Exception) -> None:
        for w in self._flush_waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        self._flush_waiters = []

    async def _flush_chunk(self) -> None:
        chunk: list[int] = []
        for sid in self._backlog:
            chunk.append(sid)
            if len(chunk) >= self.options.flush_chunk_series:
                break
        for sid in chunk:
            del self._backlog[sid]
        head = self.head
        items: list[FlushItem] = []
        updates: list[SeriesUpdate] = []
        for sid in chunk:
            bufs = head.buffers(sid)
            if bufs is None:
                continue
            items.append(FlushItem(sid, self.chooser.name_for(self.index.labels(sid)), *bufs))
            updates.append(
                (
                    int(head.last_seq[sid]),
                    int(head.max_t[sid]),
                    signed64(int(head.last_bits[sid])),
                    sid,
                )
            )
        result = FlushResult()
        if items:
            started = time.perf_counter()
            flushing = np.array([it.series_id for it in items], dtype=np.int64)
            bound = head.trim_bound(flushing, self.next_seq)
            result, seg_max = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._flush_sync, items, updates, bound
            )
            head.release([it.series_id for it in items], seg_max)
            c = self.counters
            c.flushes += 1
            c.flushed_samples += result.samples
            c.segments += result.segments
            c.wal_rows -= result.wal_rows_deleted
            c.flush_seconds += time.perf_counter() - started
        done = set(chunk)
        for w in self._flush_waiters:
            if w.remaining:
                w.remaining -= done
                w.result.add(result)

    def _flush_sync(
        self, items: Sequence[FlushItem], updates: Sequence[SeriesUpdate], bound: int
    ) -> tuple[FlushResult, list[int]]:
        """Runs in the SQL thread: encode (CPU) then one transaction."""
        rows: list[SegmentRow] = []
        seg_max: list[int] = []
        samples = 0
        block = self.options.block_size
        for it in items:
            r, n, mx = encode_series(it, self.chooser, block)
            rows.extend(r)
            samples += n
            seg_max.append(mx)
        deleted = write_flush(self.conn, rows, updates, bound)
        return FlushResult(len(items), samples, len(rows), deleted, 1), seg_max
