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
import time
from collections.abc import Callable, Sequence

import numpy as np

from agent.model import Matcher
from agent.storage.audit import decode_points
from agent.storage.db import LEGACY_SET, Migrations
from agent.storage.errors import StoreClosed, StoreFailed
from agent.storage.rollup_blocks import (
    BUCKETS_PER_BLOCK as BUCKETS_PER_BLOCK,
)
from agent.storage.rollup_blocks import (
    EXACT_SUM_LIMIT as EXACT_SUM_LIMIT,
)
from agent.storage.rollup_blocks import (
    INT64_MIN,
    _compute_all,
    _concat_series,
)
from agent.storage.rollup_blocks import (
    MAX_RESOLUTION_MS as MAX_RESOLUTION_MS,
)
from agent.storage.rollup_blocks import (
    Buckets as Buckets,
)
from agent.storage.rollup_blocks import (
    SeriesBuckets as SeriesBuckets,
)
from agent.storage.rollup_blocks import (
    WindowStats as WindowStats,
)
from agent.storage.rollup_blocks import (
    block_span as block_span,
)
from agent.storage.rollup_blocks import (
    bucket_answer as bucket_answer,
)
from agent.storage.rollup_blocks import (
    ceil_to as ceil_to,
)
from agent.storage.rollup_blocks import (
    compute_buckets as compute_buckets,
)
from agent.storage.rollup_blocks import (
    decode_block as decode_block,
)
from agent.storage.rollup_blocks import (
    encode_block as encode_block,
)
from agent.storage.rollup_blocks import (
    expire_blocks as expire_blocks,
)
from agent.storage.rollup_blocks import (
    floor_to as floor_to,
)
from agent.storage.rollup_blocks import (
    lowest_block as lowest_block,
)
from agent.storage.rollup_blocks import (
    merge_block as merge_block,
)
from agent.storage.rollup_blocks import (
    read_blocks as read_blocks,
)
from agent.storage.rollup_blocks import (
    window_indices as window_indices,
)
from agent.storage.rollup_blocks import (
    window_stats as window_stats,
)
from agent.storage.rollup_options import RollupHost as RollupHost
from agent.storage.rollup_options import RollupOptions as RollupOptions
from agent.storage.rollup_options import RollupResult as RollupResult

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
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
        store: RollupHost,
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
