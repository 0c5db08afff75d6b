"""The in-memory head: recent samples per series, not yet in segments.

Layout, chosen for memory and for a vectorised append path:

* per series, one typed buffer: an ``array('q')`` of (timestamp, value bits)
  pairs, interleaved (bits, never Python floats, so NaN payloads such as the
  staleness marker cannot be altered by a float round trip). One object per
  series rather than one per column saves ~90 bytes a series, and an append
  extends one buffer;
* every other per-series field lives in one numpy array indexed by series id
  (newest timestamp, its value bits, head count, first/last log sequence,
  arrival time), so a batch updates them with fancy indexing instead of
  touching a Python object per series.

In-order samples are not copied into the per-series buffers at once: a
batch's (series, timestamp, bits) arrays are queued, and the queue is moved
into the buffers (one stable sort, then one ``frombytes`` per series for all
its queued samples) when anything reads a buffer or the queue grows past
``PENDING_MAX``. A live remote-write round brings one sample per series, so
moving them per batch was one Python step per sample; now it is one per
series per read or per ~250k samples. Everything else per series (newest
timestamp and bits, counts, log sequences) is updated at append time with
numpy, so validation never needs the buffers. Per-sample Python work happens
only for out-of-order samples inside the window, which are rare by nature.
Only the event loop writes to the head; query worker threads read it
(:meth:`Head.read_many`) without changing it. ``lock`` is held by the loop
around every change of a buffer (queue moves, out-of-order inserts, releases,
retention) and by a reader while it copies buffers and the queue's list: no
buffer is resized while exported, and a queued sample is seen exactly once.
In-order appends only append to the queue's list and take no lock.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.storage.head_arrays import INT64_MIN as INT64_MIN
from agent.storage.head_arrays import (
    _bisect_t,
    _columns,
    _grow,
    _reject,
    _runs,
    _split,
    joined_buffers,
    window_of_buffers,
)
from agent.storage.options import (
    REJECT_DUPLICATE_TIMESTAMP,
    REJECT_OUT_OF_ORDER,
    REJECT_TOO_OLD,
)

# The array object plus its over-allocation, per series that holds head data.

SERIES_BUFFER_OVERHEAD = 80 + 16
SAMPLE_BYTES = 16

# Queued in-order samples moved into the buffers at the latest at this many.
PENDING_MAX = 1 << 18

# (series_id, timestamp) -> value bits stored in segments, or None.
SegmentProbe = Callable[[int, int], "int | None"]


@dataclass(slots=True)
class ApplyOutcome:
    """What one batch did to the head; the stored arrays go to the log as they are."""

    stored_sids: np.ndarray
    stored_ts: np.ndarray
    stored_bits: np.ndarray
    accepted: int
    duplicates: int
    touched: np.ndarray  # series that received samples, for the block-size trigger
    rejected: list[tuple[int, int, str]] = field(default_factory=list)


class Head:
    __slots__ = (
        "_pending",
        "_pending_n",
        "active",
        "buf",
        "count",
        "first_arrival",
        "first_seq",
        "last_bits",
        "last_seq",
        "lock",
        "max_t",
        "newest_known",
        "samples",
        "seg_max_t",
        "window_ms",
    )

    def __init__(self, window_ms: int = 0) -> None:
        self.window_ms = window_ms
        # buf[sid]: t0, b0, t1, b1, ... (bits as signed int64), sorted by timestamp.
        self.buf: list[array[int] | None] = []
        # In-order (series ids, (n, 2) timestamp/bits pairs) not yet in ``buf``.
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self.max_t = np.zeros(0, dtype=np.int64)
        self.last_bits = np.zeros(0, dtype=np.uint64)
        # newest_known[sid]: (max_t, last_bits) is the newest sample the series holds
        # now (head or segments). Set by in-order appends only, cleared by anything
        # that may delete or change stored samples (see forget_newest).
        self.newest_known = np.zeros(0, dtype=bool)
        self.count = np.zeros(0, dtype=np.int64)
        self.first_seq = np.zeros(0, dtype=np.int64)
        self.last_seq = np.zeros(0, dtype=np.int64)
        self.first_arrival = np.zeros(0, dtype=np.int64)
        self.seg_max_t = np.zeros(0, dtype=np.int64)
        self.samples = 0
        self.active = 0
        # Held by the loop while it changes a buffer, by a reader while it copies.
        self.lock = threading.RLock()

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def ensure(self, max_id: int) -> None:
        """Make room for ids up to ``max_id``, doubling so growth stays amortised."""
        if max_id < self.capacity:
            return
        size = max(16, self.capacity * 2, max_id + 1)
        extra = size - self.capacity
        self.buf.extend([None] * extra)
        self.max_t = _grow(self.max_t, size, INT64_MIN)
        self.last_bits = _grow(self.last_bits, size, 0)
        self.newest_known = _grow(self.newest_known, size, False)
        self.count = _grow(self.count, size, 0)
        self.first_seq = _grow(self.first_seq, size, 0)
        self.last_seq = _grow(self.last_seq, size, 0)
        self.first_arrival = _grow(self.first_arrival, size, 0)
        self.seg_max_t = _grow(self.seg_max_t, size, INT64_MIN)

    def bytes_estimate(self) -> int:
        state = sum(
            a.nbytes
            for a in (
                self.max_t,
                self.last_bits,
                self.count,
                self.first_seq,
                self.last_seq,
                self.first_arrival,
                self.seg_max_t,
            )
        )
        return self.samples * SAMPLE_BYTES + self.active * SERIES_BUFFER_OVERHEAD + state

    # --- writing ------------------------------------------------------------------

    def apply(
        self,
        sids: np.ndarray,
        ts: np.ndarray,
        bits: np.ndarray,
        seq: int,
        now_ms: int,
        *,
        replay: bool = False,
        probe: SegmentProbe | None = None,
    ) -> ApplyOutcome:
        """Validate one batch against the head and add what is accepted.

        Samples of one batch are treated as a set: they are ordered by
        (series, timestamp) first, so a batch need not be sorted.  In ``replay``
        mode the batch was validated when it was first written; nothing is
        rejected then (the out-of-order window may have changed since).
        """
        n = sids.size
        if n == 0:
            return ApplyOutcome(sids, ts, bits, 0, 0, sids)
        if n > 1:
            ds = np.diff(sids)
            if not bool(np.all((ds > 0) | ((ds == 0) & (np.diff(ts) >= 0)))):
                order = np.lexsort((ts, sids))
                sids, ts, bits = sids[order], ts[order], bits[order]

        # Repeats inside the batch: compare each repeat with the first of its run.
        same = np.zeros(n, dtype=bool)
        if n > 1:
            same[1:] = (sids[1:] == sids[:-1]) & (ts[1:] == ts[:-1])
        if same.any():
            run_head = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
            batch_dup = same & (bits == bits[run_head])
            batch_conflict = same & ~batch_dup
        else:
            batch_dup = batch_conflict = same
        first = ~same

        mt = self.max_t[sids]
        inorder = first & (ts > mt)
        at_max = first & (ts == mt)
        dup_last = at_max & (bits == self.last_bits[sids])
        conflict_last = at_max & ~dup_last
        older = first & (ts < mt)

        rejected: list[tuple[int, int, str]] = []
        if replay:
            ooo = older
        else:
            _reject(rejected, batch_conflict | conflict_last, sids, ts, REJECT_DUPLICATE_TIMESTAMP)
            if self.window_ms <= 0:
                ooo = np.zeros(n, dtype=bool)
                _reject(rejected, older, sids, ts, REJECT_OUT_OF_ORDER)
            else:
                too_old = older & (ts < mt - self.window_ms)
                ooo = older & ~too_old
                _reject(rejected, too_old, sids, ts, REJECT_TOO_OLD)
        duplicates = int(batch_dup.sum()) + int(dup_last.sum())

        parts_s: list[np.ndarray] = []
        parts_t: list[np.ndarray] = []
        parts_b: list[np.ndarray] = []
        if ooo.any():
            with self.lock:
                o_s, o_t, o_b, o_dups, o_rej = self._insert_out_of_order(
                    sids[ooo], ts[ooo], bits[ooo], seq, now_ms, replay, probe
                )
            duplicates += o_dups
            rejected.extend(o_rej)
            if o_s.size:
                parts_s.append(o_s)
                parts_t.append(o_t)
                parts_b.append(o_b)

        if inorder.any():
            i_s, i_t, i_b = sids[inorder], ts[inorder], bits[inorder]
            self._append_in_order(i_s, i_t, i_b, seq, now_ms)
            parts_s.append(i_s)
            parts_t.append(i_t)
            parts_b.append(i_b)

        if not parts_s:
            stored_s, stored_t, stored_b = sids[:0], ts[:0], bits[:0]
        elif len(parts_s) == 1:
            stored_s, stored_t, stored_b = parts_s[0], parts_t[0], parts_b[0]
        else:
            stored_s = np.concatenate(parts_s)
            stored_t = np.concatenate(parts_t)
            stored_b = np.concatenate(parts_b)
        touched = np.unique(stored_s) if len(parts_s) > 1 else _runs(stored_s)[0]
        return ApplyOutcome(
            stored_s,
            stored_t,
            stored_b,
            accepted=int(stored_s.size) + duplicates,
            duplicates=duplicates,
            touched=touched,
            rejected=rejected,
        )

    def _append_in_order(
        self, sids: np.ndarray, ts: np.ndarray, bits: np.ndarray, seq: int, now_ms: int
    ) -> None:
        uniq, starts, ends = _runs(sids)
        pairs = np.empty((sids.size, 2), dtype=np.int64)
        pairs[:, 0] = ts
        pairs[:, 1] = bits.view(np.int64)
        self._pending.append((sids, pairs))
        self._pending_n += int(sids.size)
        if self._pending_n >= PENDING_MAX:
            # Not while a worker copies buffers: the next batch tries (up to 4x).
            self._materialize_unless_read(self._pending_n < 4 * PENDING_MAX)
        last = ends - 1
        self.max_t[uniq] = ts[last]
        self.last_bits[uniq] = bits[last]
        self.newest_known[uniq] = True  # the sample just queued is the newest there is
        self._note_added(uniq, ends - starts, seq, now_ms)

    def forget_newest(self, sids: np.ndarray | Sequence[int] | None) -> None:
        """Stop answering "newest sample" questions for ``sids`` (None: every series).

        Called before and after any change other than an in-order append
        (retention, record_write, rollback, backfill): ``max_t``/``last_bits``
        then describe the newest sample ever accepted, which may be gone or
        changed. A series is known again at its next in-order append.
        """
        if sids is None:
            self.newest_known[:] = False
        else:
            self.newest_known[np.asarray(sids, dtype=np.int64)] = False

    def settle(self, most: int) -> None:
        """Move a queue of over ``most`` samples into the buffers, unless a reader
        holds the lock: on the loop before a worker reads, which would otherwise
        merge a large load's queue into every read (:meth:`read_many`)."""
        if self._pending_n > most:
            self._materialize_unless_read(True)

    def _materialize_unless_read(self, optional: bool) -> None:
        if not self.lock.acquire(blocking=not optional):
            return  # a reader holds the lock; the queue waits for the next chance
        try:
            if self._pending:
                self._materialize()
        finally:
            self.lock.release()

    def materialize(self) -> None:
        """Move the queued in-order samples into the per-series buffers."""
        if not self._pending:
            return
        with self.lock:
            self._materialize()

    def _materialize(self) -> None:
        parts, self._pending, self._pending_n = self._pending, [], 0
        if len(parts) == 1:
            sids, pairs = parts[0]
        else:
            sids = np.concatenate([p[0] for p in parts])
            pairs = np.concatenate([p[1] for p in parts])
            # Stable: a series' samples keep their batch order, which is time order.
            order = np.argsort(sids, kind="stable")
            sids, pairs = sids[order], pairs[order]
        uniq, starts, ends = _runs(sids)
        mem = memoryview(pairs.tobytes())
        bl = self.buf
        for sid, s, e in zip(
            uniq.tolist(), (starts * 16).tolist(), (ends * 16).tolist(), strict=True
        ):
            a = bl[sid]
            if a is None:
                a = bl[sid] = array("q")
            a.frombytes(mem[s:e])

    def _note_added(self, uniq: np.ndarray, counts: np.ndarray, seq: int, now_ms: int) -> None:
        fresh = uniq[self.count[uniq] == 0]
        self.count[uniq] += counts
        self.samples += int(counts.sum())
        if fresh.size:
            self.first_seq[fresh] = seq
            self.first_arrival[fresh] = now_ms
            self.active += int(fresh.size)
        self.last_seq[uniq] = seq

    def _insert_out_of_order(
        self,
        sids: np.ndarray,
        ts: np.ndarray,
        bits: np.ndarray,
        seq: int,
        now_ms: int,
        replay: bool,
        probe: SegmentProbe | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[tuple[int, int, str]]]:
        self.materialize()
        keep: list[int] = []
        dups = 0
        rejected: list[tuple[int, int, str]] = []
        seg_max = self.seg_max_t
        for i, (sid, t, b) in enumerate(
            zip(sids.tolist(), ts.tolist(), bits.view(np.int64).tolist(), strict=True)
        ):
            a = self.buf[sid]
            pos = 0
            if a is not None:
                pos = _bisect_t(a, t, "left")
                if pos < len(a) // 2 and a[2 * pos] == t:
                    if a[2 * pos + 1] == b or replay:
                        dups += 1
                    else:
                        rejected.append((sid, t, REJECT_DUPLICATE_TIMESTAMP))
                    continue
            if not replay and probe is not None and t <= int(seg_max[sid]):
                existing = probe(sid, t)
                if existing is not None:
                    if existing == (b & _U64):
                        dups += 1
                    else:
                        rejected.append((sid, t, REJECT_DUPLICATE_TIMESTAMP))
                    continue
            if a is None:
                a = self.buf[sid] = array("q")
            a[2 * pos : 2 * pos] = array("q", (t, b))
            if self.count[sid] == 0:
                self.first_seq[sid] = seq
                self.first_arrival[sid] = now_ms
                self.active += 1
            self.count[sid] += 1
            self.last_seq[sid] = seq
            self.samples += 1
            keep.append(i)
        idx = np.array(keep, dtype=np.int64)
        return sids[idx], ts[idx], bits[idx], dups, rejected

    # --- flushing -------------------------------------------------------------------

    def series_with_data(self) -> np.ndarray:
        return np.flatnonzero(self.count > 0)

    def over_block_size(self, sids: np.ndarray, block_size: int) -> np.ndarray:
        return sids[self.count[sids] >= block_size]

    def older_than(self, cutoff_ms: int) -> np.ndarray:
        return np.flatnonzero((self.count > 0) & (self.first_arrival <= cutoff_ms))

    def buffers(self, sid: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Copies of the series' timestamps (int64) and value bits (uint64), or None."""
        self.materialize()
        a = self.buf[sid]
        if a is None or len(a) == 0:
            return None
        return _columns(a)

    def joined(self, sids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts, timestamps, value bits) of these series' whole buffers, concatenated."""
        self.materialize()
        counts, t, vals = joined_buffers(self.buf, sids)
        return counts, t, vals.view(np.uint64)

    def earliest(self, sids: Sequence[int], start: int = INT64_MIN) -> int | None:
        """Oldest head timestamp at or after ``start`` among these series (None: none).

        One list pass over the buffers' first timestamps; a binary search only
        for the series whose buffer straddles ``start``. Background passes call
        this over every series, on the event loop.
        """
        self.materialize()
        bl = self.buf
        bufs = [a for a in (bl[s] for s in sids) if a]
        if not bufs:
            return None
        firsts = np.fromiter((a[0] for a in bufs), dtype=np.int64, count=len(bufs))
        ok = firsts >= start
        best = int(firsts[ok].min()) if ok.any() else None
        for k in np.flatnonzero(~ok).tolist():
            a = bufs[k]
            pos = _bisect_t(a, start, "left")
            if 2 * pos < len(a) and (best is None or a[2 * pos] < best):
                best = a[2 * pos]
        return best

    def trim_bound(self, flushing: np.ndarray, next_seq: int) -> int:
        """Smallest log sequence still needed once ``flushing`` is in segments."""
        fs = self.first_seq
        if flushing.size:
            fs = fs.copy()
            fs[flushing] = 0
        live = fs[fs > 0]
        return int(live.min()) if live.size else next_seq

    def release(self, sids: Sequence[int], seg_max: Sequence[int]) -> None:
        """Drop head data that is now durable in segments."""
        with self.lock:  # a reader sees the buffer or the new seg_max_t (then asks SQL)
            self.materialize()  # queued samples of these series are part of what was flushed
            for sid, smax in zip(sids, seg_max, strict=True):
                n = int(self.count[sid])
                if n:
                    self.samples -= n
                    self.active -= 1
                if smax > self.seg_max_t[sid]:
                    self.seg_max_t[sid] = smax
                self.buf[sid] = None
                self.count[sid] = 0
                self.first_seq[sid] = 0
                self.first_arrival[sid] = 0

    def drop_before(self, sid: int, cutoff: int) -> int:
        """Remove samples older than ``cutoff`` (retention); returns how many went.

        ``max_t``/``last_bits`` stay: they describe the newest sample ever
        accepted, which keeps out-of-order checks unchanged by a deletion.
        ``first_seq`` stays too when samples remain; it then only bounds the log
        trim more conservatively than needed.
        """
        with self.lock:
            self.materialize()
            a = self.buf[sid]
            if a is None or len(a) == 0 or a[0] >= cutoff:
                return 0
            k = _bisect_t(a, cutoff, "left")
            if 2 * k == len(a):
                self.release([sid], [INT64_MIN])
                return k
            del a[: 2 * k]
            self.count[sid] -= k
            self.samples -= k
            return k

    # --- reading ----------------------------------------------------------------------

    def snapshot_many(
        self, sids: Sequence[int], start: int, end: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head samples of many series in [start, end], concatenated: ``(counts, t, v)``.

        ``counts[i]`` samples of ``sids[i]`` follow those of ``sids[i-1]``.  One
        join over the head's buffers instead of two numpy arrays per series: for
        queries over tens of thousands of series the per-series numpy calls of
        :meth:`snapshot` cost more than the copying.  Never a view of a live buffer.
        """
        self.materialize()
        return self._snapshot_many(sids, start, end)

    def read_many(
        self,
        sids: Sequence[int],
        start: int,
        end: int,
        *,
        locked: bool = True,
        top: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`snapshot_many` from any thread: the same samples, nothing changed.

        Queued samples go after each series' buffered ones: they are newer (the
        queue holds in-order appends; out-of-order inserts move it in first).
        ``locked=False`` only on the event loop, the one thread that changes the
        head: it need not wait for a worker that holds the lock while copying.
        ``top``: the largest of ``sids``, when the caller knows it already.
        """
        if locked:
            with self.lock:
                pending = list(self._pending)
                counts, t, v = self._snapshot_many(sids, start, end, top)
        else:
            pending = list(self._pending)
            counts, t, v = self._snapshot_many(sids, start, end, top)
        if not pending or not len(sids):
            return counts, t, v
        if len(pending) == 1:
            psids, pairs = pending[0]
        else:
            psids = np.concatenate([p[0] for p in pending])
            pairs = np.concatenate([p[1] for p in pending])
        sel = np.asarray(sids, dtype=np.int64)
        order = np.argsort(sel, kind="stable")
        ordered = sel[order]
        at = np.minimum(np.searchsorted(ordered, psids), ordered.size - 1)
        pt = pairs[:, 0]
        hit = (ordered[at] == psids) & (pt >= start) & (pt <= end)
        if not hit.any():
            return counts, t, v
        pos = order[at[hit]]
        # By series position (stable: a series' samples keep queue order), so that
        # series without buffered samples, which share an insertion point, follow
        # each other in position order.
        by_pos = np.argsort(pos, kind="stable")
        pos = pos[by_pos]
        where = np.cumsum(counts)[pos]  # after the series' buffered samples
        t = np.insert(t, where, pt[hit][by_pos])
        v = np.insert(v, where, pairs[hit, 1][by_pos].view(np.float64))
        return counts + np.bincount(pos, minlength=counts.size), t, v

    def _snapshot_many(
        self, sids: Sequence[int], start: int, end: int, top: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cap = len(self.buf)
        if len(sids) >= 64 and (max(sids) if top is None else top) < cap:
            return self._snapshot_whole(sids, start, end)
        counts: list[int] = []
        parts: list[array[int]] = []
        bl = self.buf
        for sid in sids:
            a = bl[sid] if sid < cap else None
            if a is None or not a or a[0] > end or a[-2] < start:
                counts.append(0)
            elif a[0] >= start and a[-2] <= end:
                counts.append(len(a) // 2)
                parts.append(a)
            else:
                lo, hi = _bisect_t(a, start, "left"), _bisect_t(a, end, "right")
                counts.append(hi - lo)
                parts.append(a[2 * lo : 2 * hi])
        t, vals = _split(bytearray().join(parts))
        return np.array(counts, dtype=np.int64), t, vals

    def _snapshot_whole(
        self, sids: Sequence[int], start: int, end: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return window_of_buffers(self.buf, sids, start, end)

    def snapshot(self, sid: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Copy of the head samples of ``sid`` in [start, end]; never a view of a live buffer."""
        if sid >= self.capacity:
            return None
        self.materialize()
        a = self.buf[sid]
        if a is None or len(a) == 0:
            return None
        if a[0] > end or a[-2] < start:
            return None
        lo, hi = _bisect_t(a, start, "left"), _bisect_t(a, end, "right")
        t, vals = _split(a[2 * lo : 2 * hi].tobytes())
        return t, vals


_U64 = (1 << 64) - 1
