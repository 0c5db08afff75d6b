"""The export log: how every committed batch reaches exporters, durably and in order.

Why a log table and not a callback after commit: an exporter's destination
(an upstream TSDB, a message queue, a file) can be down for hours, and the
daemon can be killed at any moment. A sample that tsagent acknowledged must
still reach every exporter after that. So every accepted batch (appends and
backfills alike) is copied into ``export_log`` **inside the transaction that
makes it durable** (a store transaction hook), and each exporter consumes the
log from its own durable position, which moves only after the exporter said
the batches are delivered. A batch can therefore never be acknowledged to a
client and be missing from the log, and nothing is skipped across restarts.

Delivery contract (see :class:`agent.plugin_api.BatchExporter`):

* ``export(batches, progress)`` is called with batches in log order, only
  after they were committed, one call at a time per exporter;
* when it returns, the exporter's position moves past those batches in one
  SQLite commit; when it raises, the same batches are offered again after a
  back-off (at-least-once: a crash between the exporter's own success and
  that commit redelivers them);
* an exporter that needs finer progress than "the whole call" (the
  remote-write forwarder's shards) records *lanes* with
  :meth:`ExportProgress.save`: ``(seq, offset)`` per lane, each one commit,
  handed back on the next call (also after a restart) so already-delivered
  parts are not sent again;
* the backlog is bounded per exporter (``max_backlog_samples`` /
  ``max_backlog_age``): the oldest batches are dropped, counted in
  ``tsagent_export_dropped_samples_total{exporter,reason}`` and logged.

Rows are trimmed once every exporter of the running daemon has passed them;
the newest row is always kept so row ids and the running sample total
continue (ids are never reused, which positions rely on). A new exporter
starts at the end of the log: it gets what is written from its first start
on. Record-writes, rollbacks and retention deletions are not exported (they
change history; the log carries batches as ingested).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.clock import Clock, SystemClock
from agent.storage.db import LEGACY_SET, Migrations
from agent.storage.wal import BatchRecord, decode_batch

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agent.storage import Store

from agent.forward.batches import ExportBatch, ExportOptions, ExportStopped, now_ms

log = logging.getLogger("tsagent.export")

__all__ = [
    "BatchExporter",
    "ExportBatch",
    "ExportHub",
    "ExportOptions",
    "ExportProgress",
    "ExportStopped",
    "batch_exporters",
]


@runtime_checkable
class BatchExporter(Protocol):
    """An exporter fed from the durable export log (see :mod:`agent.forward.export_log`).

    The built-in remote-write forwarder is one; a third-party exporter gets
    exactly the same batches the same way. ``name`` must be stable: it keys
    the exporter's durable position.

    ``export(batches, progress)`` is called by the core, one call at a time,
    with committed batches (appends and backfills, as stored) in log order,
    only after ``start`` and never after ``stop``. Returning means
    "delivered": the position then moves past them in one SQLite commit.
    Raising means "not delivered": the same batches come again after a
    back-off, so delivery is at-least-once and in order, and nothing is ever
    skipped, across restarts and SIGKILL too. ``progress`` offers durable
    sub-positions (lanes) for exporters that deliver a call in parts, backlog
    checks, and drop accounting; raising :class:`agent.forward.export_log.ExportStopped`
    when ``progress.stopping`` ends the call without a retry at shutdown.

    Optional attribute ``export_options`` (:class:`agent.forward.export_log.ExportOptions`):
    samples per call, how long to let a call fill up, and backlog bounds
    (drop-oldest, counted in ``tsagent_export_dropped_samples_total``).
    """

    name: str

    async def start(self, ctx: Any) -> None: ...

    async def stop(self) -> None: ...

    async def export(self, batches: Sequence[ExportBatch], progress: ExportProgress) -> None: ...


# Lane '' is an exporter's main position: every row with id <= seq is delivered.
MAIN_LANE = ""
DROP_BACKLOG_SAMPLES = "backlog_samples"
DROP_BACKLOG_AGE = "backlog_age"
# How long a delivery loop sleeps when nothing wakes it (a safety net only:
# commits wake it through a write listener).
IDLE_POLL_S = 1.0
RETRY_MIN_S = 0.1
RETRY_MAX_S = 30.0


MIGRATIONS = Migrations("tsagent.export_log", formerly=LEGACY_SET)


@MIGRATIONS(name="m040_export_log")
def m040_export_log(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT: ids must never be reused, even if every row was trimmed,
    # because exporters' positions are row ids. cum: running total of samples
    # up to and including the row, so backlog sizes are two lookups.
    conn.execute(
        "CREATE TABLE export_log ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " created_ms INTEGER NOT NULL,"
        " op TEXT NOT NULL,"
        " source TEXT NOT NULL,"
        " count INTEGER NOT NULL,"
        " cum INTEGER NOT NULL,"
        " data BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX export_log_by_cum ON export_log(cum)")
    conn.execute("CREATE INDEX export_log_by_created ON export_log(created_ms)")
    conn.execute(
        "CREATE TABLE export_cursors ("
        " consumer TEXT NOT NULL,"
        " lane TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " offset INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL,"
        " PRIMARY KEY (consumer, lane))"
    )


class ExportProgress:
    """Handed to ``export`` with each call: lanes, backlog checks, drop accounting."""

    def __init__(self, sub: _Subscription) -> None:
        self._sub = sub

    @property
    def stopping(self) -> bool:
        """The daemon is shutting down: finish what is in flight, start nothing new."""
        return self._sub.hub.stopping

    def lane(self, name: str) -> tuple[int, int] | None:
        """``(seq, offset)`` last saved for ``name`` since the main position moved, or None."""
        if not name:
            raise ValueError("lane names must not be empty")
        return self._sub.lanes.get(name)

    async def save(self, name: str, seq: int, offset: int) -> None:
        """Durably record that lane ``name`` is done up to (``seq``, ``offset``), one commit.

        The meaning of ``offset`` is the exporter's (the forwarder: raw sample
        index in batch ``seq`` below which this lane's samples are done).
        Returns after the commit.
        """
        if not name:
            raise ValueError("lane names must not be empty")
        await self._sub.hub.save_lane(self._sub, name, seq, offset)

    def overflow(self, batch: ExportBatch) -> str | None:
        """Why ``batch`` is now beyond the backlog bounds (a drop reason), or None.

        For exporters that retry inside ``export``: they check it between
        attempts and give the batch up (``dropped``) rather than holding the
        whole queue behind it.
        """
        return self._sub.overflow(batch.cum_before, batch.created_ms)

    def dropped(self, reason: str, samples: int) -> None:
        """Count samples the exporter gave up on (its own reasons, e.g. a 4xx answer)."""
        if samples:
            self._sub.hub.metrics.dropped.labels(self._sub.name, reason).inc(samples)


@dataclass(eq=False)
class _Subscription:
    hub: ExportHub
    exporter: BatchExporter
    name: str
    options: ExportOptions
    position: int = 0  # main lane seq
    position_cum: int = 0  # cum of the row at position (samples already past)
    lanes: dict[str, tuple[int, int]] = field(default_factory=dict)
    oldest_pending_ms: int | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def overflow(self, cum_before: int, created_ms: int) -> str | None:
        o = self.options
        if o.max_backlog_samples and self.hub.tail_cum - cum_before > o.max_backlog_samples:
            return DROP_BACKLOG_SAMPLES
        if o.max_backlog_age_s and self.hub.now_ms() - created_ms > o.max_backlog_age_s * 1000:
            return DROP_BACKLOG_AGE
        return None


class ExportMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "tsagent_export_dropped_samples",
            "Samples an exporter will never deliver, by exporter and reason "
            "(backlog_samples, backlog_age, or the exporter's own, e.g. http_400).",
            ["exporter", "reason"],
            registry=registry,
        )
        self.delivered = Counter(
            "tsagent_export_delivered_samples",
            "Samples of batches an exporter's export() accepted, by exporter.",
            ["exporter"],
            registry=registry,
        )
        self.failures = Counter(
            "tsagent_export_failures",
            "export() calls that raised (the batches are offered again), by exporter.",
            ["exporter"],
            registry=registry,
        )


class _BacklogCollector(Collector):
    def __init__(self, hub: ExportHub) -> None:
        self.hub = hub

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "tsagent_export_pending_samples",
            "Samples committed but not yet delivered (the batch in flight included), by exporter.",
            labels=["exporter"],
        )
        age = GaugeMetricFamily(
            "tsagent_export_oldest_pending_age_seconds",
            "Age of the oldest undelivered batch (since it was ingested), by exporter; 0 if none.",
            labels=["exporter"],
        )
        now = self.hub.now_ms()
        for sub in self.hub.subscriptions:
            n = max(0, self.hub.tail_cum - sub.position_cum)
            pending.add_metric([sub.name], n)
            oldest = sub.oldest_pending_ms if n else None
            age.add_metric([sub.name], max(0.0, (now - oldest) / 1000) if oldest else 0.0)
        yield pending
        yield age


class ExportHub:
    """Owns the export log for the running daemon: the hook, positions, delivery loops."""

    name = "export-log"

    def __init__(
        self, store: Store, registry: CollectorRegistry, clock: Clock | None = None
    ) -> None:
        self.store = store
        # Batches enter the log at this clock's time; backlog ages and batch deadlines
        # go by it too (a test steps a ManualClock instead of sleeping).
        self.clock: Clock = clock or SystemClock()
        self.subscriptions: list[_Subscription] = []
        self.metrics = ExportMetrics(registry)
        registry.register(_BacklogCollector(self))
        self.tail_id = 0
        self.tail_cum = 0
        self.stopping = False
        self._stop_event = asyncio.Event()
        self._installed = False

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # --- the transaction hook (SQL thread) ----------------------------------------------

    def _hook(self, conn: sqlite3.Connection, records: Sequence[BatchRecord]) -> None:
        """Copy each batch that stored samples into the log, in the batch's own transaction."""
        rows = [r for r in records if r.stored and r.data]
        if not rows:
            return
        last = conn.execute("SELECT id, cum FROM export_log ORDER BY id DESC LIMIT 1").fetchone()
        cum = int(last[1]) if last else 0
        tail_id = int(last[0]) if last else 0
        created_ms = self.now_ms()  # the hub's clock: backlog ages and deadlines agree with it
        for rec in rows:
            cum += rec.stored
            cur = conn.execute(
                "INSERT INTO export_log(created_ms, op, source, count, cum, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (created_ms, rec.op, rec.source, rec.stored, cum, rec.compact()),
            )
            tail_id = int(cur.lastrowid or 0)
        # Published before the commit; if the commit fails the store refuses all
        # further writes, so these figures (used for metrics and backlog checks) never
        # describe a log that later goes on without those rows.
        self.tail_id, self.tail_cum = tail_id, cum

    def _on_written(self, *_: Any) -> None:
        for sub in self.subscriptions:
            sub.wake.set()

    # --- setup ----------------------------------------------------------------------------

    async def open(self, exporters: Sequence[BatchExporter]) -> None:
        """Install the hook and load (or create) each exporter's position, before any ingest."""
        if not self._installed:
            await self.store.attach(MIGRATIONS)
            self.store.add_transaction_hook(self._hook, backfills=True)
            self.store.add_write_listener(self._on_written)
            self._installed = True
        subs = []
        for exp in exporters:
            opts = getattr(exp, "export_options", None) or ExportOptions()
            subs.append(_Subscription(self, exp, exp.name, opts))
        names = [s.name for s in subs]
        if len(set(names)) != len(names):
            raise ValueError(f"exporter names must be unique, found {names}")

        def sql(conn: sqlite3.Connection) -> tuple[int, int, dict[str, list[tuple[str, int, int]]]]:
            last = conn.execute(
                "SELECT id, cum FROM export_log ORDER BY id DESC LIMIT 1"
            ).fetchone()
            tail_id, tail_cum = (int(last[0]), int(last[1])) if last else (0, 0)
            if not last:
                row = conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'export_log'"
                ).fetchone()
                tail_id = int(row[0]) if row else 0
            found: dict[str, list[tuple[str, int, int]]] = {}
            at = now_ms()
            for name in names:
                rows = conn.execute(
                    "SELECT lane, seq, offset FROM export_cursors WHERE consumer = ?", (name,)
                ).fetchall()
                if not rows:
                    conn.execute(
                        "INSERT INTO export_cursors(consumer, lane, seq, offset, updated_ms)"
                        " VALUES (?, ?, ?, 0, ?)",
                        (name, MAIN_LANE, tail_id, at),
                    )
                    rows = [(MAIN_LANE, tail_id, 0)]
                found[name] = [(str(a), int(b), int(c)) for a, b, c in rows]
            return tail_id, tail_cum, found

        tail_id, tail_cum, found = await self.store.run_in_transaction(sql)
        self.tail_id, self.tail_cum = max(self.tail_id, tail_id), max(self.tail_cum, tail_cum)
        for sub in subs:
            for lane, seq, offset in found[sub.name]:
                if lane == MAIN_LANE:
                    sub.position = seq
                else:
                    sub.lanes[lane] = (seq, offset)
            sub.position_cum = await self._cum_at(sub.position)
            self.subscriptions.append(sub)

    async def _cum_at(self, seq: int) -> int:
        """Samples in the log up to and including row ``seq`` (rows may be trimmed)."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT cum FROM export_log WHERE id <= ? ORDER BY id DESC LIMIT 1", (seq,)
            ).fetchone()
            if row is not None:
                return int(row[0])
            nxt = conn.execute(
                "SELECT cum - count FROM export_log WHERE id > ? ORDER BY id LIMIT 1", (seq,)
            ).fetchone()
            return int(nxt[0]) if nxt else self.tail_cum

        return int(await self.store.run_read(read))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sub in self.subscriptions:
            sub.task = loop.create_task(self._deliver(sub), name=f"tsagent-export-{sub.name}")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let calls in flight finish (up to ``grace_s``), then cancel; positions stay durable."""
        self.stopping = True
        self._stop_event.set()
        for sub in self.subscriptions:
            sub.wake.set()
        tasks = [s.task for s in self.subscriptions if s.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    # --- positions --------------------------------------------------------------------------

    async def save_lane(self, sub: _Subscription, lane: str, seq: int, offset: int) -> None:
        def sql(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO export_cursors(consumer, lane, seq, offset, updated_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(consumer, lane)"
                " DO UPDATE SET seq = excluded.seq, offset = excluded.offset,"
                " updated_ms = excluded.updated_ms",
                (sub.name, lane, seq, offset, now_ms()),
            )

        await self.store.run_in_transaction(sql)
        sub.lanes[lane] = (seq, offset)

    async def _advance(self, sub: _Subscription, seq: int, cum: int) -> None:
        """Move the main position to ``seq``, forget lanes, trim what every exporter passed."""
        others = [s.position for s in self.subscriptions if s is not sub]
        trim_to = min([seq, *others])

        def sql(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE export_cursors SET seq = ?, offset = 0, updated_ms = ?"
                " WHERE consumer = ? AND lane = ?",
                (seq, now_ms(), sub.name, MAIN_LANE),
            )
            conn.execute(
                "DELETE FROM export_cursors WHERE consumer = ? AND lane != ?",
                (sub.name, MAIN_LANE),
            )
            # Keep the newest row: ids and the running total continue from it.
            conn.execute(
                "DELETE FROM export_log WHERE id <= ? AND id < (SELECT max(id) FROM export_log)",
                (trim_to,),
            )

        await self.store.run_in_transaction(sql)
        sub.position, sub.position_cum = seq, cum
        sub.lanes.clear()

    # --- delivery ---------------------------------------------------------------------------

    async def _read(self, sub: _Subscription) -> list[ExportBatch]:
        after, limit = sub.position, max(1, sub.options.max_samples)
        labels = self.store.labels

        def read(conn: sqlite3.Connection) -> list[tuple[int, int, str, str, int, int, bytes]]:
            out: list[tuple[int, int, str, str, int, int, bytes]] = []
            total = 0
            for row in conn.execute(
                "SELECT id, created_ms, op, source, count, cum, data FROM export_log"
                " WHERE id > ? ORDER BY id",
                (after,),
            ):
                out.append(row)
                total += int(row[4])
                if total >= limit:
                    break
            return out

        rows = await self.store.run_read(read)
        batches = []
        for seq, created, op, source, count, cum, data in rows:
            sids, ts, bits = decode_batch(data, count)
            batches.append(
                ExportBatch(
                    int(seq),
                    int(created),
                    str(op),
                    str(source),
                    sids,
                    ts,
                    bits.view(np.float64),
                    labels,
                    int(cum) - int(count),
                )
            )
        return batches

    async def _enforce_backlog(self, sub: _Subscription) -> None:
        """Drop the oldest undelivered batches beyond the bounds (counted, logged)."""
        o = sub.options
        if not (o.max_backlog_samples or o.max_backlog_age_s):
            return
        pos, tail_cum = sub.position, self.tail_cum
        age_limit = self.now_ms() - int(o.max_backlog_age_s * 1000) if o.max_backlog_age_s else None
        size_limit = tail_cum - o.max_backlog_samples if o.max_backlog_samples else None

        def find(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
            out = []
            if size_limit is not None and size_limit > sub.position_cum:
                row = conn.execute(
                    "SELECT id, cum FROM export_log WHERE cum <= ? AND id > ?"
                    " ORDER BY cum DESC LIMIT 1",
                    (size_limit, pos),
                ).fetchone()
                if row:
                    out.append((DROP_BACKLOG_SAMPLES, int(row[0]), int(row[1])))
            if age_limit is not None:
                row = conn.execute(
                    "SELECT id, cum FROM export_log WHERE created_ms < ? AND id > ?"
                    " ORDER BY created_ms DESC, id DESC LIMIT 1",
                    (age_limit, pos),
                ).fetchone()
                if row:
                    out.append((DROP_BACKLOG_AGE, int(row[0]), int(row[1])))
            return out

        found = await self.store.run_read(find)
        if not found:
            return
        reason, seq, cum = max(found, key=lambda f: f[1])
        dropped = cum - sub.position_cum
        await self._advance(sub, seq, cum)
        self.metrics.dropped.labels(sub.name, reason).inc(dropped)
        log.warning(
            "exporter %s: dropped the oldest %d samples (backlog over its %s bound)",
            sub.name,
            dropped,
            "size" if reason == DROP_BACKLOG_SAMPLES else "age",
        )

    @staticmethod
    async def _wait(sub: _Subscription, timeout: float) -> None:
        """Until new data is committed (or stop), at most ``timeout`` seconds."""
        sub.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.wake.wait(), timeout)

    async def _pause(self, delay: float) -> None:
        """A back-off that only a stop cuts short (new data must not shorten it)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    async def _deliver(self, sub: _Subscription) -> None:
        backoff = RETRY_MIN_S
        while not self.stopping:
            try:
                delivered = await self._deliver_once(sub)
            except ExportStopped:
                return
            except Exception as exc:  # noqa: BLE001 - exporter or storage trouble: retry
                self.metrics.failures.labels(sub.name).inc()
                log.warning(
                    "exporter %s failed (its batches are offered again in %.1fs): %s",
                    sub.name,
                    backoff,
                    exc,
                )
                await self._pause(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                continue
            if delivered:
                backoff = RETRY_MIN_S

    async def _deliver_once(self, sub: _Subscription) -> bool:
        """One read-and-export round; True when batches were delivered."""
        await self._enforce_backlog(sub)
        if self.tail_id <= sub.position:
            sub.oldest_pending_ms = None
            await self._wait(sub, IDLE_POLL_S)
            return False
        batches = await self._read(sub)
        if not batches:  # the hook ran but its commit is not visible yet
            await self._wait(sub, 0.05)
            return False
        sub.oldest_pending_ms = batches[0].created_ms
        o = sub.options
        if o.max_wait_s and self.tail_cum - sub.position_cum < o.max_samples:
            due = batches[0].created_ms + o.max_wait_s * 1000 - self.now_ms()
            if due > 0:
                await self._wait(sub, min(due / 1000, IDLE_POLL_S))
                return False
        await sub.exporter.export(batches, ExportProgress(sub))
        last = batches[-1]
        await self._advance(sub, last.seq, last.cum_before + len(last))
        self.metrics.delivered.labels(sub.name).inc(sum(len(b) for b in batches))
        return True


def batch_exporters(exporters: Sequence[Any]) -> list[BatchExporter]:
    """The exporters that take batches (have an ``export`` coroutine method)."""
    return [e for e in exporters if callable(getattr(e, "export", None))]
