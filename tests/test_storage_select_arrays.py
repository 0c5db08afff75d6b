"""``Store.select_arrays`` (the query engine's bulk read) against ``Store.select``.

The bulk path takes head samples from one join and asks SQL only about series
whose segments can reach the window, so these tests mix series that live only
in the head, only in segments, in both, out-of-order rows, windows cutting
through blocks and the head, staleness markers, and series without samples in
the window; whatever the mix, the concatenation must equal ``select``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.model import STALE_NAN, Matcher, MatchOp
from agent.storage import Store
from agent.storage.head import Head
from tests.conftest import open_store


def labels(i: int) -> tuple[tuple[str, str], ...]:
    # Ids are created in an order unlike label order, so sorting is exercised.
    return (("__name__", "m"), ("i", f"{(i * 7) % 10:02d}"), ("k", str(i)))


async def check_equal(store: Store, matchers: list[Matcher], start: int, end: int) -> int:
    # The query worker's path first (another thread, its own loop), while the head
    # may still hold queued samples that the loop's path moves into its buffers.
    ids, labs = store.plan_select(matchers)
    off_loop = await asyncio.to_thread(
        lambda: asyncio.run(store.read_selected(ids, labs, start, end))
    )
    want = await store.select(matchers, start, end)
    got = await store.select_arrays(matchers, start, end)
    for arrays in (got, off_loop):
        assert_same(arrays, want)
    return len(want)


def assert_same(got: Any, want: list[Any]) -> None:
    assert got.labels == [s.labels for s in want]
    assert got.offsets.tolist() == np.cumsum([0] + [len(s.timestamps) for s in want]).tolist()
    if want:
        assert got.t.tolist() == np.concatenate([s.timestamps for s in want]).tolist()
        want_bits = np.concatenate([s.values for s in want]).view(np.uint64)
        assert got.v.view(np.uint64).tolist() == want_bits.tolist()
    else:
        assert got.t.size == 0 and got.v.size == 0


async def test_select_arrays_equals_select(tmp_path: Path) -> None:
    store = await open_store(tmp_path, block_size=4)
    try:
        ids = await store.get_or_create_series([labels(i) for i in range(10)])
        # Series 0-3: flushed into segments (block_size 4 -> several rows), then more
        # samples in the head; 4-6: head only; 7: segments only; 8: one out-of-order
        # sample flushed after the rest; 9: never written.
        for r in range(10):
            sids = ids[:8]
            ts = [1_000 * (r + 1)] * len(sids)
            vals = [STALE_NAN if (r == 5 and k == 2) else float(r * 10 + k) for k in range(8)]
            await store.append(sids, ts, vals)
            if r == 6:
                await store.flush(all=True)
        await store.flush(all=True)
        await store.append(ids[:7], [12_000] * 7, [1.5] * 7)
        store.options.out_of_order_window_ms = 100_000
        await store.append([ids[8]], [500], [42.0])
        await store.flush(all=True)
        await store.append([ids[8]], [800], [43.0])
        everything = [Matcher.of("__name__", MatchOp.EQ, "m")]
        windows = [(0, 20_000), (3_500, 8_000), (7_000, 7_000), (10_500, 12_000), (30_000, 40_000)]
        seen = 0
        for start, end in windows:
            seen += await check_equal(store, everything, start, end)
            seen += await check_equal(
                store, [Matcher.of("i", MatchOp.RE, "0[0-4]"), *everything], start, end
            )
        assert seen > 20
        assert await check_equal(store, [Matcher.of("__name__", MatchOp.EQ, "nope")], 0, 9) == 0
    finally:
        await store.close()


async def test_many_series_use_the_cached_label_order_and_bulk_head_read(tmp_path: Path) -> None:
    """Over 256 series the label order comes from a cached rank and head reads are
    one masked join; series created after the rank was built must slot in correctly."""
    rng = np.random.default_rng(7)
    store = await open_store(tmp_path, block_size=4)
    try:

        def many(i: int) -> tuple[tuple[str, str], ...]:
            return (("__name__", "big"), ("h", f"{rng.integers(0, 10**6):07d}"), ("n", str(i)))

        first = await store.get_or_create_series([many(i) for i in range(600)])
        ts = np.repeat(np.arange(10, dtype=np.int64) * 1000, len(first))
        ids = np.tile(np.array(first, dtype=np.int64), 10)
        await store.append(ids, ts, rng.normal(size=ids.size))
        selector = [Matcher.of("__name__", MatchOp.EQ, "big")]
        assert await check_equal(store, selector, 2000, 7500) == 600
        # New series after the rank exists (fewer than the rebuild threshold, then more).
        for batch in (50, 1500):
            more = await store.get_or_create_series(
                [many(10_000 + batch + i) for i in range(batch)]
            )
            await store.append(more, [9000] * len(more), [1.0] * len(more))
            await check_equal(store, selector, 0, 20_000)
            await check_equal(store, selector, 8500, 9000)
    finally:
        await store.close()


# --- Head.read_many: the head read of a query worker thread ---------------------------


def _bits(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64).view(np.uint64)


@settings(max_examples=200, deadline=None)
@example(  # queued samples of series without buffered ones, asked in another order
    rounds=[[(1, 10), (2, 10), (3, 10)], [(1, 11), (3, 11)]], window=(0, 70), wanted=[3, 1, 2]
)
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(1, 80), st.integers(0, 60)), max_size=40), max_size=12
    ),
    window=st.tuples(st.integers(-5, 70), st.integers(0, 70)),
    wanted=st.lists(st.integers(1, 90), unique=True, max_size=90),
)
def test_read_many_equals_snapshot_many(
    rounds: list[list[tuple[int, int]]], window: tuple[int, int], wanted: list[int]
) -> None:
    """Batches of (series, timestamp) with repeats and out-of-order samples, some
    series released or trimmed: ``read_many`` (queue left alone) gives exactly what
    ``snapshot_many`` gives after moving the queue in, for any window and series."""
    head = Head(window_ms=30)
    head.ensure(95)
    for seq, batch in enumerate(rounds, start=1):
        sids = np.array([s for s, _ in batch], dtype=np.int64)
        ts = np.array([t for _, t in batch], dtype=np.int64)
        values = [s * 1000 + seq + t / 7 for s, t in batch]  # distinct per series
        head.apply(sids, ts, _bits(values), seq, seq)
        if seq % 5 == 0:
            head.release([3, 4], [10, 10])
            head.drop_before(7, 20)
    start, end = min(window), max(window)
    got = head.read_many(wanted, start, end)
    unlocked = head.read_many(wanted, start, end, locked=False)  # the loop's own read
    pending = head._pending_n
    want = head.snapshot_many(wanted, start, end)
    assert head._pending_n == 0 or pending == 0 or not rounds
    for g, u, w in zip(got, unlocked, want, strict=True):
        assert g.dtype == w.dtype == u.dtype
        assert g.view(np.uint64).tolist() == w.view(np.uint64).tolist()
        assert u.view(np.uint64).tolist() == w.view(np.uint64).tolist()


def test_bulk_read_joins_in_chunks_and_gives_the_same_samples(monkeypatch: Any) -> None:
    """Over ``JOIN_SERIES`` series the head joins their buffers a few thousand at a
    time (the lock is not held for one long copy): the same samples as one join."""
    from agent.storage import head_arrays

    head = Head(window_ms=30)
    head.ensure(300)
    rng = np.random.default_rng(4)
    for seq in range(1, 6):
        sids = np.arange(1, 301, dtype=np.int64)[rng.random(300) < 0.8]
        ts = np.full(len(sids), seq * 10, dtype=np.int64)
        head.apply(sids, ts, _bits([float(s + seq) for s in sids.tolist()]), seq, seq)
    wanted = [int(x) for x in rng.permutation(np.arange(1, 301))]
    whole = head.read_many(wanted, 15, 45)
    monkeypatch.setattr(head_arrays, "JOIN_SERIES", 7)  # 43 chunks, the last of 6
    chunked = head.read_many(wanted, 15, 45)
    for a, b in zip(whole, chunked, strict=True):
        assert a.view(np.uint64).tolist() == b.view(np.uint64).tolist()


def test_read_many_in_another_thread_while_the_loop_writes() -> None:
    """A reader thread never meets a buffer being resized (``BufferError``), and every
    read is consistent: each series' timestamps are 0, 1, ..., n-1, without gaps or
    repeats (series 5 loses its oldest ones to retention now and then)."""
    series = list(range(1, 301))
    head = Head()
    head.ensure(len(series) + 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        try:
            while not stop.is_set():
                counts, t, _ = head.read_many(series, 0, 10**9)
                at = 0
                for sid, c in zip(series, counts.tolist(), strict=True):
                    got = t[at : at + c].tolist()
                    first = got[0] if sid == 5 and got else 0  # series 5 is trimmed
                    assert got == list(range(first, first + c))
                    at += c
                reads += 1
        except (AssertionError, BufferError, IndexError, ValueError) as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave as often as they can
    thread.start()
    try:
        sids = np.array(series, dtype=np.int64)
        for step in range(400):
            ts = np.full(sids.size, step, dtype=np.int64)
            head.apply(sids, ts, _bits([float(step)] * sids.size), step + 1, step)
            if step % 3 == 0:
                head.materialize()  # buffers grow (resize) while the reader copies
            if step % 97 == 96:
                head.drop_before(5, step + 1)  # ... and shrink
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
    assert reads > 0


async def test_plan_select_moves_a_large_head_queue_into_the_buffers(tmp_path: Path) -> None:
    """Workers merge the head's queue into every read; a queue left by a large load
    is moved into the buffers on the loop first, so later queries do not pay for it."""
    from agent.storage.store import READ_QUEUE_MAX

    store = await open_store(tmp_path, block_size=10**6)  # nothing flushes
    try:
        ids = await store.get_or_create_series([labels(i) for i in range(10)])
        selector = [Matcher.of("__name__", MatchOp.EQ, "m")]
        await store.append(ids, [1_000] * 10, [1.0] * 10)
        store.plan_select(selector)
        assert store._head._pending_n == 10  # small: left for the workers to merge
        rounds = READ_QUEUE_MAX // 10 + 1
        for r in range(rounds):
            await store.append(ids, [2_000 + r] * 10, [float(r)] * 10)
        assert store._head._pending_n > READ_QUEUE_MAX
        store.plan_select(selector)
        assert store._head._pending_n == 0
        assert await check_equal(store, selector, 0, 10**9) == 10
    finally:
        await store.close()
