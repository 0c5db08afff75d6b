"""Retention: delete samples older than a per-metric age, and give the space back.

Why it is shaped this way:

* Age is judged only here, against the wall clock at the time of a pass.  The
  append path never rejects a sample for being old, so backfilling 1970 data
  works (with retention 0 it is kept forever; otherwise the next pass removes
  it, which is what the operator asked for).
* Each pass is cut into writer jobs of at most ``flush_chunk_series`` series,
  each one IMMEDIATE transaction serialised with appends and flushes, so
  appends wait for one chunk, never for a whole pass, and every deletion is
  atomic and audited in the transaction that makes it.
* Segments entirely older than the cutoff are deleted; a segment straddling
  it is re-encoded (same codec) with the newer samples only.
* Head samples older than the cutoff are dropped from memory *and* from the
  log rows that would replay them, in the same transaction as the segment
  deletions.  Rewriting the log (instead of remembering a per-series "deleted
  before" mark for replay) keeps replay unchanged and never hides a sample
  that is backfilled after the pass.  The head is only touched in the job's
  ``after`` step, on the event loop, after the commit.
* Space: new databases use ``auto_vacuum=INCREMENTAL`` (set in
  :func:`agent.storage.db.connect`) and each pass that deleted something runs
  ``PRAGMA incremental_vacuum``.  A database created before that setting
  existed reports ``auto_vacuum=NONE``; converting it needs a full ``VACUUM``
  (it rewrites the whole file, so it is not done in a migration at startup):
  run ``tsagent retention --once --vacuum`` once with the daemon stopped.
  Until then freed pages are reused by new data but the file does not shrink.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import METRIC_NAME, Matcher, metric_name
from agent.storage.audit import prune_points, write_audit
from agent.storage.errors import StorageError, StoreClosed, StoreFailed
from agent.storage.head import INT64_MIN
from agent.storage.wal import decode_batch, pack_batch

if TYPE_CHECKING:
    from agent.storage.head import Head
    from agent.storage.index import SeriesIndex
    from agent.storage.segments import CodecChooser
    from agent.storage.writer import Writer

log = logging.getLogger(__name__)

_MAX_FIRST_DELAY_S = 60.0


class RetentionPolicy:
    """Retention per metric name: the first rule whose regex matches the whole name wins."""

    def __init__(self, default_ms: int, rules: Sequence[tuple[str, int]]) -> None:
        try:
            self._rules = [(re.compile(pat), int(ms)) for pat, ms in rules]
        except re.error as exc:
            raise StorageError(f"invalid retention rule regex: {exc}") from exc
        self.default_ms = int(default_ms)
        self._cache: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        """False when nothing can ever expire, so the store runs no background task."""
        return self.default_ms > 0 or any(ms > 0 for _, ms in self._rules)

    def retention_for(self, metric: str) -> int:
        ms = self._cache.get(metric)
        if ms is None:
            ms = self.default_ms
            for rx, rule_ms in self._rules:
                if rx.fullmatch(metric):
                    ms = rule_ms
                    break
            self._cache[metric] = ms
        return ms

    def cutoffs(self, index: SeriesIndex, now_ms: int) -> np.ndarray:
        """Per series id, the oldest timestamp kept (INT64_MIN: keep everything).

        Works per metric name through the postings, not per series, because a
        store has far fewer names than series.
        """
        out = np.full(index.max_id + 1, INT64_MIN, dtype=np.int64)
        if self.default_ms > 0:
            out[index.all_ids()] = now_ms - self.default_ms
        for name in [*index.label_values(METRIC_NAME), ""]:
            ms = self.retention_for(name)
            if ms == self.default_ms:
                continue
            # ``__name__ = ""`` selects the series without a name, as in Prometheus.
            ids = index.match([Matcher.of(METRIC_NAME, "=", name)])
            out[ids] = now_ms - ms if ms > 0 else INT64_MIN
        return out


@dataclass(slots=True)
class RetentionResult:
    """What one pass deleted; counts are samples unless named otherwise."""

    now_ms: int
    samples: int = 0
    series: int = 0
    segments_deleted: int = 0
    segments_trimmed: int = 0
    head_samples: int = 0
    wal_rows_rewritten: int = 0
    wal_rows_deleted: int = 0
    audit_points_pruned: int = 0
    versions_deleted: int = 0
    transactions: int = 0
    min_t: int | None = None
    max_t: int | None = None
    audit_ids: list[int] = field(default_factory=list)
    by_metric: dict[str, int] = field(default_factory=dict)
    # Pages handed back by incremental_vacuum; None when auto_vacuum is off for this file.
    pages_freed: int | None = None
    bytes_freed: int | None = None


@dataclass(slots=True)
class _Chunk:
    """The SQL thread's findings for one chunk, applied to the head in ``after``."""

    samples: int = 0
    segments_deleted: int = 0
    segments_trimmed: int = 0
    head_samples: int = 0
    wal_rows_rewritten: int = 0
    wal_rows_deleted: int = 0
    min_t: int | None = None
    max_t: int | None = None
    per_series: dict[int, int] = field(default_factory=dict)
    head_cuts: list[tuple[int, int]] = field(default_factory=list)
    points_pruned: int = 0
    versions_deleted: int = 0
    audit_id: int | None = None

    def note(self, sid: int, ts: np.ndarray, digest: Any) -> None:
        """Count and hash deleted samples (ids, timestamps; values are hashed by the caller)."""
        n = int(ts.size)
        if not n:
            return
        self.samples += n
        self.per_series[sid] = self.per_series.get(sid, 0) + n
        lo, hi = int(ts.min()), int(ts.max())
        self.min_t = lo if self.min_t is None else min(self.min_t, lo)
        self.max_t = hi if self.max_t is None else max(self.max_t, hi)
        digest.update(np.int64(sid).tobytes())
        digest.update(np.int64(n).tobytes())
        digest.update(ts.astype("<i8", copy=False).tobytes())


def _hash_values(digest: Any, vals: np.ndarray) -> None:
    digest.update(np.asarray(vals, dtype=np.float64).view(np.uint64).astype("<u8").tobytes())


def enforce_chunk(
    conn: sqlite3.Connection,
    chooser: CodecChooser,
    head: Head,
    cut: np.ndarray,
    sids: np.ndarray,
    now_ms: int,
    prune_below: int | None = None,
) -> _Chunk:
    """Runs in the SQL thread inside the job's transaction: delete what ``cut`` expires.

    ``cut[sid]`` is the oldest timestamp kept; ``sids`` are this chunk's
    series (all with a real cutoff).  The head is read, never written, here:
    the writer task is parked on this job, so nothing can change it meanwhile.
    """
    res = _Chunk()
    digest = hashlib.sha256()
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS retention_cutoff"
        " (series_id INTEGER PRIMARY KEY, cutoff INTEGER NOT NULL)"
    )
    conn.execute("DELETE FROM temp.retention_cutoff")
    conn.executemany(
        "INSERT INTO temp.retention_cutoff(series_id, cutoff) VALUES (?, ?)",
        zip(sids.tolist(), cut[sids].tolist(), strict=True),
    )
    # Iterated, not fetched: a first pass over a long history may expire gigabytes.
    # Rows are only changed after the cursor is exhausted.  CROSS JOIN pins the chunk's
    # series as the outer loop (one index range per series, never a scan of all
    # segments), and the ORDER BY is the index order, so SQLite sorts nothing.
    rows = conn.execute(
        "SELECT s.id, s.series_id, s.max_t, s.count, s.codec, s.data, c.cutoff"
        " FROM temp.retention_cutoff c CROSS JOIN segments s ON s.series_id = c.series_id"
        " WHERE s.min_t < c.cutoff ORDER BY c.series_id, s.max_t, s.min_t"
    )
    gone: list[tuple[int]] = []
    trimmed: list[tuple[int, int, bytes, int]] = []
    for seg_id, sid, max_t, count, codec_name, data, cutoff in rows:
        codec = chooser.get(codec_name)
        ts, vals = codec.decode(data, count)
        if max_t < cutoff:
            res.note(sid, ts, digest)
            _hash_values(digest, vals)
            gone.append((seg_id,))
            continue
        k = int(np.searchsorted(ts, cutoff, "left"))
        res.note(sid, ts[:k], digest)
        _hash_values(digest, vals[:k])
        keep_t, keep_v = ts[k:], vals[k:]
        trimmed.append(
            (int(keep_t[0]), int(keep_t.size), bytes(codec.encode(keep_t, keep_v)), seg_id)
        )
    if gone:
        conn.executemany("DELETE FROM segments WHERE id = ?", gone)
    if trimmed:
        conn.executemany("UPDATE segments SET min_t = ?, count = ?, data = ? WHERE id = ?", trimmed)
    res.segments_deleted = len(gone)
    res.segments_trimmed = len(trimmed)

    # Head samples of these series that are older than their cutoff.
    first_seq: int | None = None
    for sid in sids[head.count[sids] > 0].tolist():
        bufs = head.buffers(sid)
        if bufs is None or bufs[0][0] >= cut[sid]:
            continue
        t = np.frombuffer(bufs[0], dtype=np.int64)
        k = int(np.searchsorted(t, cut[sid], "left"))
        res.note(sid, t[:k], digest)
        digest.update(np.frombuffer(bufs[1], dtype="<u8")[:k].tobytes())
        res.head_samples += k
        res.head_cuts.append((sid, int(cut[sid])))
        fs = int(head.first_seq[sid])
        first_seq = fs if first_seq is None else min(first_seq, fs)
        del t
    if first_seq is not None:
        _rewrite_log(conn, cut, sids, first_seq, res)

    # Earlier values of expired points go too: keeping them would keep the data, and a
    # rollback could otherwise restore a point that retention deleted.
    res.versions_deleted = conn.execute(
        "DELETE FROM versions WHERE id IN (SELECT v.id FROM temp.retention_cutoff c"
        " CROSS JOIN versions v ON v.series_id = c.series_id WHERE v.t < c.cutoff)"
    ).rowcount
    if prune_below is not None:
        res.points_pruned = prune_points(conn, prune_below)
    if res.samples:
        res.audit_id = write_audit(
            conn,
            op="retention",
            source="retention",
            user=None,
            sample_count=res.samples,
            series_count=len(res.per_series),
            min_t=res.min_t,
            max_t=res.max_t,
            content_hash=digest.digest(),
            detail={
                "now_ms": now_ms,
                "segments_deleted": res.segments_deleted,
                "segments_trimmed": res.segments_trimmed,
                "head_samples": res.head_samples,
                "audit_points_pruned": res.points_pruned,
                "versions_deleted": res.versions_deleted,
                "cutoffs": sorted({int(c) for c in cut[sids].tolist()}),
            },
        )
    return res


def _rewrite_log(
    conn: sqlite3.Connection, cut: np.ndarray, sids: np.ndarray, first_seq: int, res: _Chunk
) -> None:
    """Remove expired head samples from the log rows that would replay them.

    Only rows from the oldest head sequence of the affected series on can
    hold their head samples.  Rows are rewritten in place (same ``seq``) so
    the flush marks and log trim keep working unchanged.
    """
    mine = np.full(cut.size, INT64_MIN, dtype=np.int64)
    mine[sids] = cut[sids]
    rows = conn.execute(
        "SELECT seq, count, data FROM wal WHERE seq >= ? ORDER BY seq", (first_seq,)
    ).fetchall()
    updates: list[tuple[int, bytes, int]] = []
    deletes: list[tuple[int]] = []
    for seq, count, blob in rows:
        ids, ts, bits = decode_batch(blob, count)
        known = ids < mine.size
        expired = np.zeros(ids.size, dtype=bool)
        expired[known] = ts[known] < mine[ids[known]]
        if not expired.any():
            continue
        keep = ~expired
        if not keep.any():
            deletes.append((seq,))
        else:
            updates.append((int(keep.sum()), pack_batch(ids[keep], ts[keep], bits[keep]), seq))
    if updates:
        conn.executemany("UPDATE wal SET count = ?, data = ? WHERE seq = ?", updates)
    if deletes:
        conn.executemany("DELETE FROM wal WHERE seq = ?", deletes)
    res.wal_rows_rewritten = len(updates)
    res.wal_rows_deleted = len(deletes)


def incremental_vacuum(conn: sqlite3.Connection) -> tuple[int | None, int]:
    """Hand free pages back to the file system; (pages freed or None, page size).

    ``executescript`` because the sqlite3 module steps a statement without
    result columns only once, and each step of this PRAGMA frees one page.
    It runs outside any transaction, on the SQL thread, between writer jobs.
    """
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
        return None, page_size
    before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if before:
        conn.executescript("PRAGMA incremental_vacuum;")
    after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return before - after, page_size


def full_vacuum(conn: sqlite3.Connection) -> int:
    """Rewrite the file; also switches an old database to auto_vacuum=INCREMENTAL."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])


async def run_pass(
    writer: Writer,
    index: SeriesIndex,
    policy: RetentionPolicy,
    chunk_series: int,
    now_ms: int | None = None,
) -> RetentionResult:
    """One retention pass over every series, as a sequence of writer jobs."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    result = RetentionResult(now_ms=now)
    if not policy.enabled:
        return result
    cut = policy.cutoffs(index, now)
    candidates = np.flatnonzero(cut > INT64_MIN)
    # Rollback points of batches older than every series' cutoff describe only deleted
    # samples; with any series kept forever, no batch is known to be all gone.
    kept_all = cut[1:] == INT64_MIN
    prune_below = int(cut[1:].min()) if cut.size > 1 and not kept_all.any() else None
    head = writer.head
    head.forget_newest(candidates)  # their newest samples may be deleted from now on
    deleted_per_series: dict[int, int] = {}
    for i in range(0, candidates.size, chunk_series):
        sids = candidates[i : i + chunk_series]
        last = i + chunk_series >= candidates.size

        def sql(conn: sqlite3.Connection, sids: np.ndarray = sids, last: bool = last) -> _Chunk:
            return enforce_chunk(
                conn, writer.chooser, head, cut, sids, now, prune_below if last else None
            )

        def after(chunk: _Chunk, sids: np.ndarray = sids) -> _Chunk:
            head.forget_newest(sids)
            for sid, cutoff in chunk.head_cuts:
                head.drop_before(sid, cutoff)
            writer.counters.segments -= chunk.segments_deleted
            writer.counters.wal_rows -= chunk.wal_rows_deleted
            return chunk

        chunk: _Chunk = await writer.job(sql, after)
        result.transactions += 1
        result.samples += chunk.samples
        result.segments_deleted += chunk.segments_deleted
        result.segments_trimmed += chunk.segments_trimmed
        result.head_samples += chunk.head_samples
        result.wal_rows_rewritten += chunk.wal_rows_rewritten
        result.wal_rows_deleted += chunk.wal_rows_deleted
        result.audit_points_pruned += chunk.points_pruned
        result.versions_deleted += chunk.versions_deleted
        if chunk.min_t is not None and chunk.max_t is not None:
            result.min_t = chunk.min_t if result.min_t is None else min(result.min_t, chunk.min_t)
            result.max_t = chunk.max_t if result.max_t is None else max(result.max_t, chunk.max_t)
        if chunk.audit_id is not None:
            result.audit_ids.append(chunk.audit_id)
        deleted_per_series.update(chunk.per_series)
    result.series = len(deleted_per_series)
    for sid, n in deleted_per_series.items():
        name = metric_name(index.labels(sid))
        result.by_metric[name] = result.by_metric.get(name, 0) + n
    if result.samples:
        loop = asyncio.get_running_loop()
        pages, page_size = await loop.run_in_executor(
            writer.executor, incremental_vacuum, writer.conn
        )
        result.pages_freed = pages
        result.bytes_freed = None if pages is None else pages * page_size
    if result.samples:
        log.info(
            "retention deleted samples",
            extra={
                "samples": result.samples,
                "series": result.series,
                "segments_deleted": result.segments_deleted,
                "bytes_freed": result.bytes_freed,
            },
        )
    return result


async def run_periodically(
    one_pass: Callable[[], Awaitable[object]],
    interval_s: float,
    *,
    first_delay_s: float | None = None,
) -> None:
    """The store's background task: a first pass soon after start, then every interval.

    Soon rather than immediately, so opening the store (and a daemon start)
    does not wait behind a possibly long first pass; capped at a minute so a
    daemon restarted more often than the interval still enforces retention.
    """
    delay = min(interval_s, _MAX_FIRST_DELAY_S) if first_delay_s is None else first_delay_s
    while True:
        await asyncio.sleep(delay)
        delay = interval_s
        try:
            await one_pass()
        except (StoreClosed, StoreFailed):
            return  # nothing left to delete from; a reopen starts a new task
        except Exception:
            # E.g. a segment naming a codec that is no longer installed: keep trying,
            # the operator sees the error every interval until it is fixed.
            log.exception("retention pass failed")
