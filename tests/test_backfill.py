"""``Store.backfill``: any timestamp, exactly once, atomic, audited, survives a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.model import Labels, Matcher
from agent.storage import StorageOptions, Store
from agent.storage.backfill import Prepared
from plugins.codecs import all_codecs

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def open_store(path: Path, **opts: object) -> Store:
    options = StorageOptions(
        flush_interval_s=3600,
        default_codec="zstd-xor",
        block_size=100,
        **opts,  # type: ignore[arg-type]
    )
    return await Store.open(path / "tsagent.db", options, {c.name: c for c in all_codecs()})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path)
    yield s
    await s.close()


async def read(store: Store, sid: int) -> tuple[list[int], list[float]]:
    t, v = await store.read_series(sid, -(2**62), 2**62)
    return t.tolist(), v.tolist()


async def test_older_than_head_and_1970(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("temp", room="lab")])
    live = await store.append([sid] * 3, [T0, T0 + 1000, T0 + 2000], [1.0, 2.0, 3.0])
    assert live.accepted == 3
    # The head refuses history ...
    refused = await store.append([sid], [T0 - 5000], [9.0])
    assert refused.out_of_order == 1
    # ... backfill takes it, down to the epoch (limits.min_timestamp), not before.
    res = await store.backfill([sid] * 3, [0, -1000, T0 - 5000], [7.0, 6.0, 9.0], source="t")
    assert (res.accepted, res.stored, res.duplicates) == (2, 2, 0)
    assert [(r.timestamp, r.reason) for r in res.rejected] == [(-1000, "out_of_bounds")]
    assert res.audit_id is not None
    t, v = await read(store, sid)
    assert t == [0, T0 - 5000, T0, T0 + 1000, T0 + 2000]
    assert v == [7.0, 9.0, 1.0, 2.0, 3.0]
    # Appends continue from the live frontier, unaffected by the older backfill.
    assert (await store.append([sid], [T0 + 3000], [4.0])).accepted == 1


async def test_duplicates_against_head_segments_and_batch(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    ts = np.arange(250, dtype=np.int64) * 1000
    first = await store.backfill([sid] * 250, ts, ts.astype(float))
    assert first.stored == 250 and first.segments_written == 3  # block_size 100
    await store.append([sid], [10**9], [1.0])  # lives in the head
    again = await store.backfill(
        [sid] * 5,
        [0, 1000, 10**9, 5000, 2_000_000],
        [0.0, 99.0, 1.0, 5000.0, 7.0],
    )
    # 0 and 5000 identical (segments), 10**9 identical (head), 1000 conflicts, one new.
    assert again.stored == 1 and again.duplicates == 3
    assert [(r.timestamp, r.reason) for r in again.rejected] == [(1000, "duplicate_timestamp")]
    conflict_head = await store.backfill([sid], [10**9], [2.0])
    assert [r.reason for r in conflict_head.rejected] == ["duplicate_timestamp"]
    inside = await store.backfill([sid] * 3, [3_000_000] * 3, [1.0, 1.0, 2.0])
    assert inside.stored == 1 and inside.duplicates == 1 and len(inside.rejected) == 1
    t, v = await read(store, sid)
    assert len(t) == len(set(t)) == 250 + 1 + 1 + 1
    assert v[t.index(1000)] == 1000.0 and v[t.index(3_000_000)] == 1.0


async def test_idempotent_reimport_and_merge_into_blocks(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    ts = np.arange(0, 150_000, 1000, dtype=np.int64)  # two blocks of 75
    await store.backfill([sid] * ts.size, ts, np.ones(ts.size))
    segs = store.stats().segments
    res = await store.backfill([sid] * ts.size, ts, np.ones(ts.size))
    assert res.stored == 0 and res.duplicates == ts.size and store.stats().segments == segs
    # A point inside an existing block's range is merged into that block, not a new runt.
    res = await store.backfill([sid], [1500], [5.0])
    assert res.segments_replaced == 1 and res.segments_written == 1
    assert store.stats().segments == segs
    t, v = await read(store, sid)
    assert t[:3] == [0, 1000, 1500] and v[2] == 5.0 and len(t) == ts.size + 1


async def test_abort_writes_nothing(store: Store, tmp_path: Path) -> None:
    [a, b] = await store.get_or_create_series([lab("a"), lab("b")])
    await store.backfill([a], [1000], [1.0])
    audit_rows = (await store.verify_audit()).rows_checked
    res = await store.backfill([b, b, a], [1, 2, 1000], [1.0, 2.0, 3.0], on_error="abort")
    assert res.aborted and res.stored == 0 and len(res.rejected) == 1
    assert await read(store, b) == ([], [])
    assert (await store.verify_audit()).rows_checked == audit_rows
    ok = await store.backfill([b, b, a], [1, 2, 1000], [1.0, 2.0, 1.0], on_error="abort")
    assert not ok.aborted and ok.stored == 2 and ok.duplicates == 1


async def test_audit_row_points_and_rollback(store: Store, tmp_path: Path) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    await store.append([sid], [T0], [1.0])
    res = await store.backfill([sid] * 3, [10, 20, 30], [1.0, 2.0, 3.0], source="csv", client="me")
    conn = sqlite3.connect(tmp_path / "tsagent.db")
    try:
        row = conn.execute(
            "SELECT op, source, user, sample_count, series_count, min_t, max_t FROM audit"
            " WHERE id = ?",
            (res.audit_id,),
        ).fetchone()
        points = conn.execute(
            "SELECT count FROM audit_points WHERE audit_id = ?", (res.audit_id,)
        ).fetchone()
    finally:
        conn.close()
    assert row == ("backfill", "csv", "me", 3, 1, 10, 30)
    assert points == (3,)
    assert (await store.verify_audit()).ok
    hist = await store.history(sid, 20)
    assert hist[-1].audit_id == res.audit_id and hist[-1].op == "backfill"
    assert res.audit_id is not None
    await store.rollback(res.audit_id)
    assert await read(store, sid) == ([T0], [1.0])


async def test_restart_keeps_data_and_duplicate_detection(tmp_path: Path) -> None:
    store = await open_store(tmp_path, out_of_order_window_ms=10**13)
    [sid] = await store.get_or_create_series([lab("m")])
    await store.append([sid], [T0], [1.0])  # head only, never flushed
    await store.backfill([sid] * 2, [1000, 2000], [1.0, 2.0])
    newer = await store.backfill([sid], [T0 + 10_000], [5.0])  # raises the frontier
    assert newer.stored == 1
    assert (await store.append([sid], [T0 + 5000], [3.0])).accepted == 1  # OOO window
    await store.close()

    store = await open_store(tmp_path, out_of_order_window_ms=10**13)
    try:
        t, _ = await read(store, sid)
        assert t == [1000, 2000, T0, T0 + 5000, T0 + 10_000]
        # After the restart the backfilled points are still known to the duplicate checks,
        # for appends inside the out-of-order window and for backfills alike.
        ooo = await store.append([sid, sid], [2000, T0 + 10_000], [9.0, 5.0])
        assert ooo.duplicate_timestamp == 1 and ooo.duplicates == 1
        bf = await store.backfill([sid, sid], [1000, 2000], [1.0, 8.0])
        assert bf.duplicates == 1 and len(bf.rejected) == 1
        assert (await store.append([sid], [T0 + 11_000], [6.0])).accepted == 1
        assert len((await read(store, sid))[0]) == 6
    finally:
        await store.close()


async def test_select_round_trip_many_series(store: Store) -> None:
    labels = [lab("cpu", host=f"h{i}") for i in range(50)]
    ids = await store.get_or_create_series(labels)
    sids = np.repeat(np.array(ids), 300)
    ts = np.tile(np.arange(300, dtype=np.int64) * 15_000, 50)
    rng = np.random.default_rng(1)
    vals = rng.random(sids.size)
    order = rng.permutation(sids.size)  # any input order
    res = await store.backfill(sids[order], ts[order], vals[order])
    assert res.stored == sids.size and res.series == 50
    got = await store.select([Matcher.of("host", "=~", "h1.*")], 0, 10**12)
    assert [s.labels for s in got] == sorted(lab("cpu", host=f"h{i}") for i in [1, *range(10, 20)])
    for s in got:
        k = ids.index(s.series_id)
        assert s.timestamps.tolist() == ts[:300].tolist()
        assert s.values.tolist() == vals[k * 300 : (k + 1) * 300].tolist()


async def test_the_agent_backfills_many_series_in_calls_of_bounded_size(
    make_config: object, aiohttp_client: object
) -> None:
    """Skip mode: one store transaction (and audit row) per BACKFILL_CHUNK_SERIES series,
    so live appends are acknowledged between them; abort mode stays one call."""
    from agent import context as context_mod
    from agent.context import CONTEXT_KEY
    from agent.web.app import make_app

    config, host = make_config()  # type: ignore[operator]
    client = await aiohttp_client(make_app(config, host))  # type: ignore[operator]
    ctx = client.app[CONTEXT_KEY]
    store = ctx.require_store()
    n = 2 * context_mod.BACKFILL_CHUNK_SERIES + 10
    ids = await store.get_or_create_series([lab("bf", i=str(i)) for i in range(n)])
    sids = [s for s in ids for _ in range(3)]
    ts = [T0 - 60_000 * (k + 1) for _ in ids for k in range(3)]
    res = await ctx.backfill(sids, ts, [float(t) for t in ts], source="t")
    assert res.accepted == res.stored == 3 * n and not res.rejected
    assert res.series == n
    audit = await store.run_read(
        lambda c: c.execute("SELECT count(*) FROM audit WHERE op = 'backfill'").fetchone()[0]
    )
    assert audit == 3  # three calls of at most BACKFILL_CHUNK_SERIES series
    for sid in (ids[0], ids[-1]):
        assert (await read(store, sid))[0] == sorted(ts[:3])
    again = await ctx.backfill(sids, ts, [float(t) for t in ts], source="t", on_error="abort")
    assert again.duplicates == 3 * n and not again.aborted
    audit = await store.run_read(
        lambda c: c.execute("SELECT count(*) FROM audit WHERE op = 'backfill'").fetchone()[0]
    )
    assert audit == 4  # abort mode: one call, all or nothing


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prepare abort-mode backfills off the writer from 20 series on, 10 series a group."""
    from agent.storage import backfill_staged as bf

    monkeypatch.setattr(bf, "OFF_WRITER_SERIES", 20)
    monkeypatch.setattr(bf, "PREPARE_GROUP_SERIES", 10)


async def _audit_count(store: Store) -> int:
    return int(
        await store.run_read(lambda c: c.execute("SELECT count(*) FROM audit").fetchone()[0])
    )


async def test_abort_backfill_prepared_off_the_writer(store: Store, small_groups: None) -> None:
    """A large abort-mode backfill is checked and encoded on reader threads: a live
    append queued after it is acknowledged before it ends; it commits as one audit row,
    merges into stored blocks, and counts duplicates against head and segments."""
    import asyncio

    ids = await store.get_or_create_series([lab("bf", i=str(i)) for i in range(200)])
    old = np.arange(0, 50_000, 1000, dtype=np.int64)  # one block per series, 0..49 s
    await store.backfill(np.repeat(ids[:5], old.size), np.tile(old, 5), np.ones(5 * old.size))
    [live] = await store.get_or_create_series([lab("live")])
    await store.append([ids[7]], [T0], [3.0])  # in the head: an exact duplicate below
    audits = await _audit_count(store)
    sids = np.repeat(ids, 3)
    ts = np.tile(np.array([1500, 60_000, 70_000], dtype=np.int64), len(ids))
    vals = np.full(sids.size, 2.0)
    sids = np.append(sids, ids[7])
    ts = np.append(ts, T0)
    vals = np.append(vals, 3.0)
    task = asyncio.create_task(store.backfill(sids, ts, vals, on_error="abort"))
    await asyncio.sleep(0)
    ack = await store.append([live], [T0], [1.0])
    assert ack.accepted == 1 and not task.done()  # acknowledged while the backfill is prepared
    res = await task
    assert not res.aborted and res.stored == 3 * len(ids) and res.duplicates == 1
    assert res.segments_replaced == 5  # 1500 fell inside the five stored blocks
    assert await _audit_count(store) == audits + 2  # the append's row and one for the backfill
    t, v = await read(store, ids[0])
    assert t[:3] == [0, 1000, 1500] and v[2] == 2.0 and t[-2:] == [60_000, 70_000]
    assert (await read(store, ids[7]))[0] == [1500, 60_000, 70_000, T0]


async def test_abort_backfill_prepared_refuses_a_conflict_and_writes_nothing(
    store: Store, small_groups: None
) -> None:
    ids = await store.get_or_create_series([lab("bf", i=str(i)) for i in range(50)])
    await store.backfill([ids[40]], [5000], [1.0])
    audits, segments = await _audit_count(store), store.stats().segments
    sids = np.repeat(ids, 2)
    ts = np.tile(np.array([5000, 6000], dtype=np.int64), len(ids))
    res = await store.backfill(sids, ts, np.full(sids.size, 2.0), on_error="abort")
    assert res.aborted and [(r.series_id, r.timestamp) for r in res.rejected] == [(ids[40], 5000)]
    assert await _audit_count(store) == audits and store.stats().segments == segments
    assert (await read(store, ids[0]))[0] == []


async def test_abort_backfill_rechecks_series_written_while_it_was_prepared(
    store: Store, small_groups: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conflicting append that lands between the preparation and the commit aborts
    the whole backfill (the commit job re-checks the series written meanwhile)."""
    from agent.storage import backfill_staged as bf

    ids = await store.get_or_create_series([lab("bf", i=str(i)) for i in range(50)])
    real = bf.prepare_in_groups

    async def racing(*args: object, **kw: object) -> Prepared:
        prep = await real(*args, **kw)  # type: ignore[arg-type]
        assert (await store.append([ids[3]], [6000], [9.0])).accepted == 1
        return prep

    monkeypatch.setattr(bf, "prepare_in_groups", racing)
    audits = await _audit_count(store)
    sids = np.repeat(ids, 2)
    ts = np.tile(np.array([5000, 6000], dtype=np.int64), len(ids))
    res = await store.backfill(sids, ts, np.full(sids.size, 2.0), on_error="abort")
    assert res.aborted and [(r.series_id, r.timestamp) for r in res.rejected] == [(ids[3], 6000)]
    assert await _audit_count(store) == audits + 1  # only the racing append's
    assert (await read(store, ids[0]))[0] == []
    assert await read(store, ids[3]) == ([6000], [9.0])


async def test_abort_backfill_falls_back_when_a_block_changed_meanwhile(
    store: Store, small_groups: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.storage import backfill_staged as bf

    ids = await store.get_or_create_series([lab("bf", i=str(i)) for i in range(30)])
    await store.backfill([ids[0]] * 3, [1000, 2000, 3000], [1.0] * 3)
    real = bf.prepare_in_groups

    async def racing(*args: object, **kw: object) -> Prepared:
        prep = await real(*args, **kw)  # type: ignore[arg-type]
        # Rewrite the block the backfill is to merge into (as recompression would).
        await store.run_in_transaction(
            lambda c: c.execute("UPDATE segments SET id = id + 1000 WHERE series_id = ?", (ids[0],))
        )
        return prep

    monkeypatch.setattr(bf, "prepare_in_groups", racing)
    res = await store.backfill(
        np.array(ids, dtype=np.int64), np.full(len(ids), 1500), np.ones(len(ids)), on_error="abort"
    )
    assert not res.aborted and res.stored == len(ids)
    assert (await read(store, ids[0]))[0] == [1000, 1500, 2000, 3000]
