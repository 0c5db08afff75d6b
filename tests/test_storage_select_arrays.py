"""``Store.select_arrays`` (the query engine's bulk read) against ``Store.select``.

The bulk path takes head samples from one join and asks SQL only about series
whose segments can reach the window, so these tests mix series that live only
in the head, only in segments, in both, out-of-order rows, windows cutting
through blocks and the head, staleness markers, and series without samples in
the window; whatever the mix, the concatenation must equal ``select``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.model import STALE_NAN, Matcher, MatchOp
from agent.storage import Store
from tests.conftest import open_store


def labels(i: int) -> tuple[tuple[str, str], ...]:
    # Ids are created in an order unlike label order, so sorting is exercised.
    return (("__name__", "m"), ("i", f"{(i * 7) % 10:02d}"), ("k", str(i)))


async def check_equal(store: Store, matchers: list[Matcher], start: int, end: int) -> int:
    want = await store.select(matchers, start, end)
    got = await store.select_arrays(matchers, start, end)
    assert got.labels == [s.labels for s in want]
    assert got.offsets.tolist() == np.cumsum([0] + [len(s.timestamps) for s in want]).tolist()
    if want:
        assert got.t.tolist() == np.concatenate([s.timestamps for s in want]).tolist()
        want_bits = np.concatenate([s.values for s in want]).view(np.uint64)
        assert got.v.view(np.uint64).tolist() == want_bits.tolist()
    else:
        assert got.t.size == 0 and got.v.size == 0
    return len(want)


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
