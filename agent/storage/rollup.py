"""Rollups (downsampling): per series and aligned bucket, min/max/sum/count/first/last.

Why it is shaped this way:

* **Buckets** are aligned half-open intervals ``[t, t + res)`` with ``t`` a
  multiple of the resolution (Unix epoch aligned, so every tsagent agrees on
  them). Each stores ``count``, ``min``, ``max``, ``sum``, the ``first`` and
  ``last`` value with their timestamps, and whether every value was a finite
  integer (``integral``): integer sums are exact in any order, which is what
  lets the PromQL engine prove that a rollup answer equals the raw one.
* **What is rolled up**: staleness markers never (range functions ignore them
  too); NaN values are ordinary samples: they count, ``min``/``max`` skip
  them unless every value of the bucket is NaN (``fmin``/``fmax``, as
  ``min_over_time`` does), and they make ``sum`` NaN, as ``sum_over_time`` does.
* **Storage**: one row per (resolution, series, block of ``BUCKETS_PER_BLOCK``
  buckets), the bucket arrays packed and zstd-compressed: ~23 bytes a bucket
  with table and index pages counted, against ~90 for one ``WITHOUT ROWID``
  row per bucket (``benchmarks/bench_rollup.py``, 10 s gauges). Blocks are
  written whole, once, when they are closed, so the cost of rewriting a blob
  is paid only for late data.
* **When**: a background pass (``storage.rollups.interval``) rolls up every
  block that ended more than ``delay`` ago: a global watermark ``done_to`` per
  resolution says "every bucket before this is computed". Data is read
  through the store's normal merged read (segments and head), so closed
  buckets are rolled up whether or not the head has been flushed yet.
* **Late data**: every write path calls the store's write listeners after its
  commit (append, backfill, ``record_write``, rollback). A change below the
  watermark marks (series, time range) dirty in memory and the next pass
  recomputes those buckets from raw data. Until then, queries treat them as
  missing (the PromQL engine falls back to raw). If the process dies before
  that pass, the audit trail (written in the same transactions as the data)
  is replayed from a persisted cursor at the next start, so no mark is lost.
* **Retention**: rollups have their own retention per resolution. The raw
  retention pass does not touch these tables, and a recomputation never
  rewrites a bucket that starts before the raw retention cutoff of its
  series (its raw samples may be gone; the rollup is then the only record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard

from agent.model import STALE_NAN_BITS, Labels, Matcher
from agent.storage.audit import decode_points
from agent.storage.db import LEGACY_SET, Migrations
from agent.storage.errors import StorageError, StoreClosed, StoreFailed

if TYPE_CHECKING:
    from agent.storage.store import Store

log = logging.getLogger(__name__)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
BUCKETS_PER_BLOCK = 60
MAX_RESOLUTION_MS = 2**31  # bucket-relative timestamps are stored as uint32
_FORMAT = 1
_HEADER = struct.Struct("<BI")
_SERIES_CHUNK = 1000
# A dirty span wider than this many blocks is walked by the blocks that hold data
# (raw samples or stored rollups), not block by block: its cost follows the data.
_WIDE_BLOCKS = 16
# Audit operations that change samples (retention and re-encoding do not need recomputing).
_DATA_OPS = ("append", "backfill", "write", "rollback")


MIGRATIONS = Migrations("tsagent.rollups", formerly=LEGACY_SET)


@MIGRATIONS(name="m050_rollups")
def m050_rollups(conn: sqlite3.Connection) -> None:
    # A rowid table (not WITHOUT ROWID): rows hold kilobyte blobs, which SQLite keeps
    # best in a rowid b-tree; the unique index is the lookup key.
    conn.execute(
        "CREATE TABLE rollups ("
        " id INTEGER PRIMARY KEY,"
        " resolution_ms INTEGER NOT NULL,"
        " series_id INTEGER NOT NULL,"
        " block_t INTEGER NOT NULL,"
        " buckets INTEGER NOT NULL,"
        " data BLOB NOT NULL)"
    )
    conn.execute("CREATE UNIQUE INDEX rollups_key ON rollups(resolution_ms, series_id, block_t)")
    conn.execute(
        "CREATE TABLE rollup_state (resolution_ms INTEGER PRIMARY KEY, done_to INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE rollup_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")


# --- buckets --------------------------------------------------------------------------------


@dataclass(slots=True)
class Buckets:
    """Bucket arrays of one or more series, sorted by start within each series."""

    start: np.ndarray  # int64 ms, multiple of the resolution
    count: np.ndarray  # int64
    min: np.ndarray  # float64
    max: np.ndarray
    sum: np.ndarray
    first: np.ndarray
    last: np.ndarray
    first_t: np.ndarray  # int64 ms
    last_t: np.ndarray
    integral: np.ndarray  # bool: every value a finite integer

    FIELDS = (
        "start",
        "count",
        "min",
        "max",
        "sum",
        "first",
        "last",
        "first_t",
        "last_t",
        "integral",
    )

    def __len__(self) -> int:
        return int(self.start.size)

    @classmethod
    def empty(cls) -> Buckets:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return cls(i, i, f, f, f, f, f, i, i, np.zeros(0, bool))

    def take(self, idx: np.ndarray) -> Buckets:
        return Buckets(*(getattr(self, n)[idx] for n in self.FIELDS))

    @classmethod
    def concat(cls, parts: Sequence[Buckets]) -> Buckets:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, n) for p in parts]) for n in cls.FIELDS))

    def replace_range(self, lo: int, hi: int, new: Buckets) -> Buckets:
        """These buckets with those starting in ``[lo, hi)`` replaced by ``new``'s."""
        keep = (self.start < lo) | (self.start >= hi)
        merged = Buckets.concat([self.take(np.flatnonzero(keep)), new])
        order = np.argsort(merged.start, kind="stable")
        return merged.take(order)


def compute_buckets(t: np.ndarray, v: np.ndarray, res: int) -> Buckets:
    """Buckets of one series' sorted samples; staleness markers are left out."""
    t = np.asarray(t, dtype=np.int64)
    v = np.asarray(v, dtype=np.float64)
    keep = v.view(np.uint64) != np.uint64(STALE_NAN_BITS)
    if not keep.all():
        t, v = t[keep], v[keep]
    if t.size == 0:
        return Buckets.empty()
    b = (t // res) * res
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    ends = np.append(starts[1:], t.size)
    with np.errstate(invalid="ignore", over="ignore"):
        integral = np.isfinite(v) & (v == np.trunc(v))
        return Buckets(
            start=b[starts],
            count=(ends - starts).astype(np.int64),
            min=np.fmin.reduceat(v, starts),
            max=np.fmax.reduceat(v, starts),
            sum=np.add.reduceat(v, starts),
            first=v[starts],
            last=v[ends - 1],
            first_t=t[starts],
            last_t=t[ends - 1],
            integral=np.logical_and.reduceat(integral, starts),
        )


def encode_block(block_t: int, res: int, bk: Buckets) -> bytes:
    """Pack one block's buckets (all inside ``[block_t, block_t + span)``), then zstd."""
    n = len(bk)
    parts = [
        _HEADER.pack(_FORMAT, n),
        ((bk.start - block_t) // res).astype("<u2").tobytes(),
        bk.count.astype("<u4").tobytes(),
        *(getattr(bk, f).astype("<f8").tobytes() for f in ("min", "max", "sum", "first", "last")),
        (bk.first_t - bk.start).astype("<u4").tobytes(),
        (bk.last_t - bk.start).astype("<u4").tobytes(),
        bk.integral.astype("u1").tobytes(),
    ]
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def decode_block(data: bytes, block_t: int, res: int) -> Buckets:
    raw = zstandard.ZstdDecompressor().decompress(data)
    fmt, n = _HEADER.unpack_from(raw)
    if fmt != _FORMAT:
        raise StorageError(f"unknown rollup block format {fmt}")
    pos = _HEADER.size

    def take(dtype: str, size: int) -> np.ndarray:
        nonlocal pos
        arr = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        pos += size * n
        return arr

    start = block_t + take("<u2", 2).astype(np.int64) * res
    count = take("<u4", 4).astype(np.int64)
    mn, mx, sm, first, last = (take("<f8", 8).astype(np.float64) for _ in range(5))
    first_t = start + take("<u4", 4).astype(np.int64)
    last_t = start + take("<u4", 4).astype(np.int64)
    integral = take("u1", 1).astype(bool)
    return Buckets(start, count, mn, mx, sm, first, last, first_t, last_t, integral)


def _compute_all(
    found: Sequence[tuple[int, np.ndarray, np.ndarray]], res: int
) -> dict[int, Buckets]:
    return {sid: compute_buckets(t, v, res) for sid, t, v in found}


def block_span(res: int) -> int:
    return res * BUCKETS_PER_BLOCK


def floor_to(t: int, step: int) -> int:
    return (t // step) * step


def ceil_to(t: int, step: int) -> int:
    return -((-t) // step) * step


def lowest_block(res: int) -> int:
    """The first block start SQLite can store: data before it is never rolled up.

    Flooring a timestamp within one block of INT64_MIN would leave the int64
    range (``OverflowError`` from sqlite3 on every pass, so no series got
    rollups); ingest refuses such timestamps now, but old databases hold them.
    """
    return ceil_to(INT64_MIN, block_span(res))


# --- SQL -------------------------------------------------------------------------------------


def read_blocks(
    conn: sqlite3.Connection, res: int, series_ids: Sequence[int], lo: int, hi: int
) -> dict[int, Buckets]:
    """Stored buckets starting in ``[lo, hi)`` of the given series, per series."""
    span = block_span(res)
    first_block = max(floor_to(lo, span), INT64_MIN)  # SQLite INTEGER is int64
    out: dict[int, list[Buckets]] = {}
    for i in range(0, len(series_ids), 500):
        ids = list(series_ids[i : i + 500])
        marks = ",".join("?" * len(ids))
        cur = conn.execute(
            "SELECT series_id, block_t, data FROM rollups WHERE resolution_ms = ?"
            f" AND series_id IN ({marks}) AND block_t >= ? AND block_t < ?"
            " ORDER BY series_id, block_t",
            (res, *ids, first_block, hi),
        )
        for sid, block_t, data in cur:
            out.setdefault(sid, []).append(decode_block(data, block_t, res))
    result: dict[int, Buckets] = {}
    for sid, parts in out.items():
        bk = Buckets.concat(parts)
        sel = np.flatnonzero((bk.start >= lo) & (bk.start < hi))
        if sel.size:
            result[sid] = bk.take(sel)
    return result


def merge_block(
    conn: sqlite3.Connection, res: int, sid: int, block_t: int, lo: int, hi: int, new: Buckets
) -> int:
    """Replace the buckets of ``[lo, hi)`` (inside one block) with ``new``; rows changed."""
    row = conn.execute(
        "SELECT data FROM rollups WHERE resolution_ms = ? AND series_id = ? AND block_t = ?",
        (res, sid, block_t),
    ).fetchone()
    if row is None:
        if not len(new):
            return 0
        merged = new
    else:
        merged = decode_block(row[0], block_t, res).replace_range(lo, hi, new)
    if not len(merged):
        conn.execute(
            "DELETE FROM rollups WHERE resolution_ms = ? AND series_id = ? AND block_t = ?",
            (res, sid, block_t),
        )
        return 1
    conn.execute(
        "INSERT INTO rollups(resolution_ms, series_id, block_t, buckets, data)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(resolution_ms, series_id, block_t)"
        " DO UPDATE SET buckets = excluded.buckets, data = excluded.data",
        (res, sid, block_t, len(merged), encode_block(block_t, res, merged)),
    )
    return 1


def expire_blocks(conn: sqlite3.Connection, res: int, cutoff: int) -> tuple[int, int]:
    """Delete buckets that ended at or before ``cutoff``; (rows deleted, rows trimmed)."""
    span = block_span(res)
    deleted = conn.execute(
        "DELETE FROM rollups WHERE resolution_ms = ? AND block_t + ? <= ?", (res, span, cutoff)
    ).rowcount
    trimmed = 0
    rows = conn.execute(
        "SELECT series_id, block_t FROM rollups WHERE resolution_ms = ? AND block_t < ?",
        (res, cutoff),
    ).fetchall()
    for sid, block_t in rows:
        # Buckets [b, b + res) with b + res <= cutoff go: those starting before cutoff - res + 1.
        trimmed += merge_block(conn, res, sid, block_t, block_t, cutoff - res + 1, Buckets.empty())
    return deleted, trimmed


# --- options and results ------------------------------------------------------------------------


@dataclass(frozen=True)
class RollupOptions:
    # Only 1h by default: a bucket costs ~23 bytes, which at a 15 s scrape interval is
    # more than the compressed raw samples of a 1m or 5m bucket (see the config's help).
    resolutions_ms: tuple[int, ...] = (3_600_000,)
    # Per resolution; 0 or absent keeps that resolution's buckets forever.
    retention_ms: dict[int, int] = field(default_factory=dict)
    interval_s: float = 60.0
    # Blocks are rolled up once they ended this long ago, so ordinary scrape delays
    # land before the pass instead of causing recomputations.
    delay_ms: int = 60_000

    def validate(self) -> None:
        if not self.resolutions_ms:
            raise StorageError("rollups need at least one resolution")
        for res in self.resolutions_ms:
            if res < 1000 or res > MAX_RESOLUTION_MS or res % 1000:
                raise StorageError(f"rollup resolution {res} ms: whole seconds up to 24 days")
        if len(set(self.resolutions_ms)) != len(self.resolutions_ms):
            raise StorageError("rollup resolutions must be distinct")
        if self.interval_s <= 0 or self.delay_ms < 0:
            raise StorageError("rollup interval must be > 0 and delay >= 0")


@dataclass(slots=True)
class RollupResult:
    """What one pass did."""

    now_ms: int
    buckets_written: int = 0
    rows_written: int = 0
    blocks_rolled: int = 0
    series_recomputed: int = 0
    rows_expired: int = 0
    rows_trimmed: int = 0
    transactions: int = 0
    seconds: float = 0.0
    done_to: dict[int, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "now_ms": self.now_ms,
            "buckets_written": self.buckets_written,
            "rows_written": self.rows_written,
            "blocks_rolled": self.blocks_rolled,
            "series_recomputed": self.series_recomputed,
            "rows_expired": self.rows_expired,
            "rows_trimmed": self.rows_trimmed,
            "transactions": self.transactions,
            "seconds": round(self.seconds, 3),
            "done_to": {str(k): v for k, v in self.done_to.items()},
        }


@dataclass(slots=True)
class SeriesBuckets:
    """Buckets of many series, concatenated: series ``i`` owns ``[offsets[i], offsets[i+1])``."""

    ids: list[int]
    labels: list[Labels]
    offsets: np.ndarray
    buckets: Buckets


def _concat_series(
    ids: list[int], labels_of: Callable[[int], Labels], found: dict[int, Buckets]
) -> SeriesBuckets:
    keep = [sid for sid in ids if sid in found and len(found[sid])]
    labs = [labels_of(sid) for sid in keep]
    order = sorted(range(len(keep)), key=labs.__getitem__)
    keep = [keep[i] for i in order]
    labs = [labs[i] for i in order]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum([len(found[s]) for s in keep], out=offsets[1:])
    return SeriesBuckets(keep, labs, offsets, Buckets.concat([found[s] for s in keep]))


def _merge_span(spans: dict[int, tuple[int, int]], sid: int, lo: int, hi: int) -> None:
    old = spans.get(sid)
    spans[sid] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


# --- the manager ----------------------------------------------------------------------------------


class RollupManager:
    """Computes, stores, expires and serves rollups of one store.

    Created by :meth:`agent.storage.store.Store.start_rollups`, which also
    registers :meth:`on_write` as a write listener.
    """

    def __init__(
        self,
        store: Store,
        options: RollupOptions,
        *,
        all_ids: Callable[[], np.ndarray],
        raw_cutoffs: Callable[[int], np.ndarray],
    ) -> None:
        options.validate()
        self.store = store
        self.options = options
        self.resolutions = tuple(sorted(options.resolutions_ms))
        self._all_ids = all_ids
        self._raw_cutoffs = raw_cutoffs
        self.done_to: dict[int, int | None] = dict.fromkeys(self.resolutions)
        # Up to where a pass may have read data: writes below it must be recomputed.
        self._frontier: int | None = None
        self._dirty: dict[int, tuple[int, int]] = {}
        self._dirty_all: list[tuple[int, int]] = []
        self._inflight: dict[int, tuple[int, int]] = {}
        self._inflight_all: list[tuple[int, int]] = []
        self._audit_cursor = 0
        self._audit_seen = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.last_result: RollupResult | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def load(self) -> None:
        """Read the watermarks and replay late writes the last process may not have rolled."""

        def run(conn: sqlite3.Connection) -> tuple[dict[int, int], int, int]:
            state = dict(conn.execute("SELECT resolution_ms, done_to FROM rollup_state"))
            row = conn.execute("SELECT value FROM rollup_meta WHERE key = 'audit_cursor'")
            found = row.fetchone()
            top = conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0]
            return state, int(found[0]) if found else 0, int(top)

        state, cursor, top = await self.store.run_read(run)
        for res in self.resolutions:
            if res in state:
                self.done_to[res] = int(state[res])
        self._audit_cursor = cursor
        self._audit_seen = top
        self._update_frontier()
        if self._frontier is not None and top > cursor:
            await self._replay_audit(cursor, self._frontier)

    async def _replay_audit(self, cursor: int, below: int) -> None:
        """Mark dirty what audited writes after ``cursor`` changed below the watermark."""

        def run(conn: sqlite3.Connection) -> list[tuple[np.ndarray | None, int, int]]:
            marks: list[tuple[np.ndarray | None, int, int]] = []
            marks_sql = ",".join("?" * len(_DATA_OPS))
            rows = conn.execute(
                f"SELECT a.id, a.min_t, a.max_t, p.count, p.data FROM audit a"
                f" LEFT JOIN audit_points p ON p.audit_id = a.id"
                f" WHERE a.id > ? AND a.op IN ({marks_sql}) AND (a.min_t IS NULL OR a.min_t < ?)",
                (cursor, *_DATA_OPS, below),
            ).fetchall()
            for _aid, lo, hi, count, data in rows:
                lo = INT64_MIN if lo is None else int(lo)
                hi = INT64_MAX if hi is None else int(hi)
                sids: np.ndarray | None = None
                if data is not None:
                    sids, _ts = decode_points(bytes(data), int(count))
                marks.append((sids, lo, hi))
            return marks

        for sids, lo, hi in await self.store.run_read(run):
            if sids is None:
                self._dirty_all.append((lo, hi))
            else:
                self.on_write(sids, lo, hi)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tsagent-rollups")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        delay = min(self.options.interval_s, 30.0)
        while True:
            await asyncio.sleep(delay)
            delay = self.options.interval_s
            try:
                await self.run_once()
            except (StoreClosed, StoreFailed):
                return
            except Exception:
                log.exception("rollup pass failed")

    # --- dirty tracking ----------------------------------------------------------------

    def _update_frontier(self) -> None:
        known = [d for d in self.done_to.values() if d is not None]
        if known:
            top = max(known)
            self._frontier = top if self._frontier is None else max(self._frontier, top)

    def on_write(self, series_ids: np.ndarray | None, min_t: int, max_t: int) -> None:
        """Write listener: remember late changes (below what was rolled up) for the next pass.

        ``None`` series come only from raw retention, whose deletions must
        not reach the rollups (they outlive raw data by design).
        """
        if series_ids is None or self._frontier is None or min_t >= self._frontier:
            return
        for sid in np.unique(np.asarray(series_ids, dtype=np.int64)).tolist():
            _merge_span(self._dirty, sid, int(min_t), int(max_t))

    def dirty_spans(self, series_ids: Sequence[int]) -> list[tuple[int, int]]:
        """Time spans (inclusive) of these series whose rollups await recomputation."""
        out = list(self._dirty_all) + list(self._inflight_all)
        for spans in (self._dirty, self._inflight):
            if not spans:
                continue
            for sid in series_ids:
                span = spans.get(sid)
                if span is not None:
                    out.append(span)
        return out

    def retained_from(self, res: int, now_ms: int) -> int:
        """Buckets starting at or after this are guaranteed not expired (rollup retention)."""
        ret = self.options.retention_ms.get(res, 0)
        return ceil_to(now_ms - ret, res) if ret > 0 else INT64_MIN

    # --- the pass -----------------------------------------------------------------------

    async def run_once(self, *, now_ms: int | None = None) -> RollupResult:
        """One pass: recompute dirty buckets, roll up closed blocks, expire old rollups."""
        async with self._lock:
            started = time.perf_counter()
            now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
            result = RollupResult(now_ms=now)
            top = await self.store.run_read(
                lambda c: int(c.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0])
            )
            dirty, self._dirty = self._dirty, {}
            dirty_all, self._dirty_all = self._dirty_all, []
            self._inflight, self._inflight_all = dirty, dirty_all
            try:
                await self._pass(now, dirty, dirty_all, result)
                # The cursor lags one pass: a write committed just before this pass read
                # ``top`` may have reached the listener only after the swap above.
                cursor = self._audit_seen
                await self.store.run_in_transaction(
                    lambda c: c.execute(
                        "INSERT INTO rollup_meta(key, value) VALUES ('audit_cursor', ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (cursor,),
                    )
                )
                self._audit_cursor, self._audit_seen = cursor, top
                result.transactions += 1
            except BaseException:
                for sid, (lo, hi) in dirty.items():
                    _merge_span(self._dirty, sid, lo, hi)
                self._dirty_all.extend(dirty_all)
                raise
            finally:
                self._inflight, self._inflight_all = {}, []
            result.done_to = dict(self.done_to)
            result.seconds = time.perf_counter() - started
            self.passes += 1
            self.last_result = result
            return result

    async def _pass(
        self,
        now: int,
        dirty: dict[int, tuple[int, int]],
        dirty_all: list[tuple[int, int]],
        result: RollupResult,
    ) -> None:
        earliest: int | None = None
        if (
            any(d is None for d in self.done_to.values())
            or dirty_all
            or any(lo == INT64_MIN for lo, _ in dirty.values())
        ):
            bounds = await self.store.time_bounds()
            earliest = None if bounds is None else bounds[0]
        raw_cut = self._raw_cutoffs(now) if dirty or dirty_all else None
        all_ids = self._all_ids()
        if dirty_all:
            for lo, hi in dirty_all:
                for sid in all_ids.tolist():
                    _merge_span(dirty, sid, lo, hi)
        if dirty:
            result.series_recomputed = len(dirty)
        for res in self.resolutions:
            span = block_span(res)
            horizon = floor_to(now - self.options.delay_ms, span)
            if self.done_to[res] is None:
                first = None if earliest is None else max(earliest, lowest_block(res))
                start = horizon if first is None else min(floor_to(first, span), horizon)
                self.done_to[res] = start
                self._update_frontier()
            done = self.done_to[res]
            assert done is not None
            if dirty and raw_cut is not None:
                await self._recompute(res, done, dirty, raw_cut, earliest, now, result)
            probe = False
            while done < horizon:
                ids = all_ids[self.store.newest_timestamps(all_ids) >= done]
                # No series has data this recent: every block up to the horizon is empty.
                block_end = done + span if ids.size else horizon
                if ids.size and probe:
                    # The last block was empty: jump to the next one holding data, so a
                    # lone ancient sample costs one step, not one per block since then.
                    nxt = await self.store.earliest_from(done)
                    if nxt is None or nxt >= done + span:
                        block_end = horizon if nxt is None else min(floor_to(nxt, span), horizon)
                        ids = ids[:0]
                before = result.buckets_written
                self._frontier = max(self._frontier or block_end, block_end)
                await self._roll(res, done, done, block_end, ids.tolist(), result, block_end)
                result.blocks_rolled += (block_end - done) // span if ids.size else 0
                probe = result.buckets_written == before
                done = block_end
            ret = self.options.retention_ms.get(res, 0)
            if ret > 0:

                def expire(
                    conn: sqlite3.Connection, res: int = res, cutoff: int = now - ret
                ) -> tuple[int, int]:
                    return expire_blocks(conn, res, cutoff)

                deleted, trimmed = await self.store.run_in_transaction(expire)
                result.rows_expired += deleted
                result.rows_trimmed += trimmed
                result.transactions += 1

    async def _recompute(
        self,
        res: int,
        done: int,
        dirty: dict[int, tuple[int, int]],
        raw_cut: np.ndarray,
        earliest: int | None,
        now: int,
        result: RollupResult,
    ) -> None:
        """Rewrite dirty buckets below the watermark, never below raw retention."""
        span = block_span(res)
        floor_keep = self.retained_from(res, now)
        tasks: dict[tuple[int, int, int], list[int]] = {}
        wide: list[tuple[int, int, int]] = []
        for sid, (lo, hi) in dirty.items():
            if lo == INT64_MIN:
                if earliest is None:
                    continue
                lo = earliest
            cut = int(raw_cut[sid]) if sid < raw_cut.size else INT64_MIN
            a = max(floor_to(lo, res), ceil_to(cut, res) if cut > INT64_MIN else INT64_MIN)
            a = max(a, floor_keep, lowest_block(res))
            b = min(floor_to(min(hi, INT64_MAX - res), res) + res, done)
            if b - a > _WIDE_BLOCKS * span:
                wide.append((sid, a, b))
                continue
            t = a
            while t < b:
                block_t = floor_to(t, span)
                end = min(block_t + span, b)
                tasks.setdefault((block_t, t, end), []).append(sid)
                t = end
        for sid, a, b in wide:
            for block_t in await self._blocks_holding(res, sid, a, b):
                key = (block_t, max(a, block_t), min(block_t + span, b))
                tasks.setdefault(key, []).append(sid)
        for (block_t, a, b), sids in sorted(tasks.items()):
            await self._roll(res, block_t, a, b, sids, result, None)

    async def _blocks_holding(self, res: int, sid: int, a: int, b: int) -> list[int]:
        """Starts of the blocks overlapping ``[a, b)`` that hold raw samples or stored rollups.

        Both, because a recomputation must also clear buckets whose samples
        were removed. Reads one series' samples of the span: cost follows the
        data, whatever the span (``a`` is at or above :func:`lowest_block`,
        so flooring stays inside int64).
        """
        span = block_span(res)
        starts: set[int] = set()
        for _sid, t, _v in await self.store.read_many([sid], a, b - 1):
            starts.update(np.unique((t // span) * span).tolist())

        def stored(conn: sqlite3.Connection) -> list[int]:
            return [
                int(r[0])
                for r in conn.execute(
                    "SELECT block_t FROM rollups WHERE resolution_ms = ? AND series_id = ?"
                    " AND block_t > ? AND block_t < ?",
                    (res, sid, max(a - span, INT64_MIN), b),
                )
            ]

        starts.update(await self.store.run_read(stored))
        return sorted(starts)

    async def _roll(
        self,
        res: int,
        block_t: int,
        a: int,
        b: int,
        sids: list[int],
        result: RollupResult,
        new_done: int | None,
    ) -> None:
        """Compute buckets ``[a, b)`` of one block for these series and store them."""
        loop = asyncio.get_running_loop()
        chunks = [sids[i : i + _SERIES_CHUNK] for i in range(0, len(sids), _SERIES_CHUNK)] or [[]]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            found = await self.store.read_many(chunk, a, b - 1) if chunk else []
            computed = await loop.run_in_executor(None, _compute_all, found, res)
            done_value = new_done if last else None

            def sql(
                conn: sqlite3.Connection,
                chunk: list[int] = chunk,
                computed: dict[int, Buckets] = computed,
                done_value: int | None = done_value,
            ) -> int:
                rows = 0
                empty = Buckets.empty()
                for sid in chunk:
                    rows += merge_block(conn, res, sid, block_t, a, b, computed.get(sid, empty))
                if done_value is not None:
                    conn.execute(
                        "INSERT INTO rollup_state(resolution_ms, done_to) VALUES (?, ?)"
                        " ON CONFLICT(resolution_ms) DO UPDATE SET done_to = excluded.done_to",
                        (res, done_value),
                    )
                return rows

            result.rows_written += await self.store.run_in_transaction(sql)
            result.buckets_written += sum(len(bk) for bk in computed.values())
            result.transactions += 1
            if done_value is not None:
                self.done_to[res] = done_value

    # --- reading --------------------------------------------------------------------------

    def match(self, matchers: list[Matcher]) -> list[int]:
        return self.store.match_series(matchers)

    async def stored(self, res: int, series_ids: Sequence[int], lo: int, hi: int) -> SeriesBuckets:
        """Stored buckets starting in ``[lo, hi)``, series in label order (rollup tables only)."""
        ids = list(series_ids)
        found = await self.store.run_read(lambda c: read_blocks(c, res, ids, lo, hi)) if ids else {}
        return _concat_series(ids, self.store.labels, found)

    async def effective(
        self, res: int, series_ids: Sequence[int], lo: int, hi: int, now_ms: int | None = None
    ) -> SeriesBuckets:
        """Buckets starting in ``[lo, hi)`` as all committed data makes them now.

        Stored rollups where they are current; buckets not rolled up yet
        (after the watermark) and buckets awaiting recomputation are computed
        from raw samples on the fly, except below the raw retention cutoff,
        where the stored rollup is the only record left.
        """
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        ids = list(series_ids)
        if not ids:
            return _concat_series([], self.store.labels, {})
        # Bucket starts are multiples of res: these bounds select the same buckets, and
        # raw reads then cover whole buckets.
        lo, hi = ceil_to(lo, res), ceil_to(hi, res)
        done = self.done_to.get(res)
        top = lo if done is None else max(lo, min(hi, done))
        found = await self.store.run_read(lambda c: read_blocks(c, res, ids, lo, top))
        if top < hi:
            for sid, t, v in await self.store.read_many(ids, top, hi - 1):
                fresh = compute_buckets(t, v, res)
                old = found.get(sid, Buckets.empty())
                found[sid] = old.replace_range(top, hi, fresh)
        spans = {sid: self.dirty_spans([sid]) for sid in ids}
        if any(spans.values()):
            cut = self._raw_cutoffs(now)
            for sid, sp in spans.items():
                c = int(cut[sid]) if sid < cut.size else INT64_MIN
                floor = ceil_to(c, res) if c > INT64_MIN else INT64_MIN
                for s_lo, s_hi in sp:
                    a = max(lo, floor, floor_to(max(s_lo, INT64_MIN + res), res))
                    b = min(top, floor_to(min(s_hi, INT64_MAX - res), res) + res)
                    if a >= b:
                        continue
                    t, v = await self.store.read_series(sid, a, b - 1)
                    old = found.get(sid, Buckets.empty())
                    found[sid] = old.replace_range(a, b, compute_buckets(t, v, res))
        return _concat_series(ids, self.store.labels, found)

    async def storage_stats(self) -> dict[int, dict[str, int]]:
        """Rows, buckets and bytes per resolution (for the benchmark and the docs)."""

        def run(conn: sqlite3.Connection) -> dict[int, dict[str, int]]:
            out: dict[int, dict[str, int]] = {}
            for res, rows, buckets, size in conn.execute(
                "SELECT resolution_ms, count(*), sum(buckets), sum(length(data)) FROM rollups"
                " GROUP BY resolution_ms"
            ):
                out[int(res)] = {"rows": rows, "buckets": buckets, "bytes": size}
            return out

        result: dict[int, dict[str, int]] = await self.store.run_read(run)
        return result


# --- combining buckets into windows ---------------------------------------------------------


@dataclass(slots=True)
class WindowStats:
    """Per (series, window): aggregates over whole buckets, shape ``(series, windows)``."""

    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    last: np.ndarray
    integral: np.ndarray  # every bucket integral and the exact-sum bound holds


def window_indices(
    sb: SeriesBuckets, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Global bucket indices ``[i0, i1)`` of buckets starting in ``[lo, hi)`` per window."""
    n = len(sb.ids)
    i0 = np.zeros((n, lo.size), dtype=np.int64)
    i1 = np.zeros((n, lo.size), dtype=np.int64)
    starts = sb.buckets.start
    for i in range(n):
        a, b = int(sb.offsets[i]), int(sb.offsets[i + 1])
        seg = starts[a:b]
        i0[i] = a + np.searchsorted(seg, lo, "left")
        i1[i] = a + np.searchsorted(seg, hi, "left")
    return i0, i1


def _reduce(ufunc: np.ufunc, arr: np.ndarray, i0: np.ndarray, i1: np.ndarray, fill: Any) -> Any:
    out = np.full(i0.shape, fill, dtype=arr.dtype if arr.size else np.float64)
    m = i1 > i0
    if not m.any():
        return out
    ext = np.append(arr, arr[:1] if arr.size else [fill])
    idx = np.empty(2 * int(m.sum()), dtype=np.int64)
    idx[0::2] = i0[m]
    idx[1::2] = i1[m]
    with np.errstate(invalid="ignore", over="ignore"):
        out[m] = ufunc.reduceat(ext, idx)[0::2]
    return out


EXACT_SUM_LIMIT = float(2**53)


def window_stats(sb: SeriesBuckets, i0: np.ndarray, i1: np.ndarray) -> WindowStats:
    bk = sb.buckets
    if not len(bk):
        z = np.zeros(i0.shape)
        return WindowStats(z.astype(np.int64), z + np.nan, z + np.nan, z, z + np.nan, z > 0)
    count = np.concatenate(([0], np.cumsum(bk.count)))
    cnt = count[i1] - count[i0]
    with np.errstate(invalid="ignore", over="ignore"):
        mag = np.fmax(np.abs(bk.min), np.abs(bk.max)) * bk.count
        bound = _reduce(np.add, mag, i0, i1, 0.0)
    all_int = _reduce(np.logical_and, bk.integral, i0, i1, True)
    last = np.where(i1 > i0, bk.last[np.maximum(i1 - 1, 0)], np.nan)
    return WindowStats(
        count=cnt,
        min=_reduce(np.fmin, bk.min, i0, i1, np.nan),
        max=_reduce(np.fmax, bk.max, i0, i1, np.nan),
        sum=_reduce(np.add, bk.sum, i0, i1, 0.0),
        last=last,
        integral=all_int & (bound <= EXACT_SUM_LIMIT),
    )


def bucket_answer(name: str, st: WindowStats) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of an ``*_over_time`` function from whole-bucket window stats."""
    present = st.count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "count_over_time":
            return st.count.astype(np.float64), present
        if name == "min_over_time":
            return st.min, present
        if name == "max_over_time":
            return st.max, present
        if name == "sum_over_time":
            return st.sum, present
        if name == "avg_over_time":
            return st.sum / np.maximum(st.count, 1), present
        if name == "last_over_time":
            return st.last, present
    raise ValueError(f"{name} cannot be answered from rollups")
