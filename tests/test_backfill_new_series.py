"""``Store.backfill(..., new_series=...)``: an all-or-nothing import creates its new series
in its own transaction, so an import that aborts leaves none behind (issue 13), whatever
lands between its checks and its commit."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.model import Labels, Matcher, MatchOp
from agent.storage import Store
from agent.storage.backfill import Prepared
from tests.conftest import open_store

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path, cardinality_rules=[("imp", "", 60)])
    yield s
    await s.close()


@pytest.fixture(params=["one job", "prepared off the writer"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways an abort-mode backfill runs: one writer job, or prepared in groups
    on reader threads and committed by a short job (from 20 series here)."""
    from agent.storage import backfill_staged as bf

    if request.param == "prepared off the writer":
        monkeypatch.setattr(bf, "OFF_WRITER_SERIES", 20)
        monkeypatch.setattr(bf, "PREPARE_GROUP_SERIES", 10)
    else:
        monkeypatch.setattr(bf, "OFF_WRITER_SERIES", 10**9)
        monkeypatch.setattr(bf, "OFF_WRITER_SAMPLES", 10**9)
    return str(request.param)


def stored_series(db: Path) -> tuple[int, int]:
    """(series rows, label pair rows) in the database file."""
    with sqlite3.connect(db) as conn:
        series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        pairs = conn.execute("SELECT count(*) FROM label_pairs").fetchone()[0]
    return int(series), int(pairs)


async def read(store: Store, sid: int) -> list[int]:
    t, _ = await store.read_series(sid, -(2**62), 2**62)
    return list(t.tolist())


def imp_names(store: Store) -> list[Labels]:
    return [store.labels(i) for i in store.match_series([Matcher("__name__", MatchOp.EQ, "imp")])]


async def test_new_series_are_created_by_the_backfill(
    store: Store, tmp_path: Path, path: str
) -> None:
    [old] = await store.get_or_create_series([lab("imp", i="old")])
    labels = [lab("imp", i="old"), *[lab("imp", i=str(k)) for k in range(30)]]
    # A second spelling of one new series (unsorted labels): one series, one key.
    labels.append((("i", "7"), ("__name__", "imp")))
    keys, new = await store.series_keys(labels)
    assert keys[0] == old and len(new) == 30 and keys[-1] == keys[8] < 0
    sids = np.repeat(keys, 2)
    ts = np.tile(np.array([T0 - 60_000, T0 - 30_000], dtype=np.int64), keys.size)
    res = await store.backfill(sids, ts, np.ones(sids.size), on_error="abort", new_series=new)
    assert not res.aborted and res.stored == 2 * 31 and res.duplicates == 2 and res.series == 31
    assert len(imp_names(store)) == 31
    sid7 = store.series_id(lab("imp", i="7"))
    assert sid7 is not None and await read(store, sid7) == [T0 - 60_000, T0 - 30_000]
    await store.close()
    again = await open_store(tmp_path)
    try:
        sid7 = again.series_id(lab("imp", i="7"))
        assert sid7 is not None and await read(again, sid7) == [T0 - 60_000, T0 - 30_000]
        assert len(imp_names(again)) == 31
    finally:
        await again.close()


async def test_a_conflict_aborts_and_creates_no_series(
    store: Store, tmp_path: Path, path: str
) -> None:
    [old] = await store.get_or_create_series([lab("imp", i="old")])
    await store.backfill([old], [T0 - 60_000], [5.0])
    before = stored_series(tmp_path / "tsagent.db")
    pairs_before, next_id = store._index.pair_count, store._index.max_id + 1
    labels = [lab("imp", i="old"), *[lab("imp", i=str(k), new="yes") for k in range(30)]]
    keys, new = await store.series_keys(labels)
    sids = np.repeat(keys, 2)
    ts = np.tile(np.array([T0 - 60_000, T0 - 30_000], dtype=np.int64), keys.size)
    res = await store.backfill(sids, ts, np.ones(sids.size), on_error="abort", new_series=new)
    assert res.aborted and [(r.series_id, r.timestamp) for r in res.rejected] == [
        (old, T0 - 60_000)
    ]
    assert imp_names(store) == [lab("imp", i="old")]
    assert store.label_values("new") == []
    assert stored_series(tmp_path / "tsagent.db") == before
    # The ids and label pairs handed out for the aborted commit are handed out again.
    assert store._index.pair_count == pairs_before
    [nxt] = await store.get_or_create_series([lab("other")])
    assert nxt == next_id
    # The cardinality rule (60 series of "imp") counts none of the aborted 30.
    ok = await store.get_or_create_series([lab("imp", i=str(k)) for k in range(59)])
    assert len(ok) == 59


async def test_a_conflicting_write_between_checks_and_commit_leaves_no_series(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race issue 13 left open: the import is checked and encoded off the writer;
    an append with a different value at one of its timestamps lands before the commit.
    The commit job re-checks, aborts, and the new series were never created."""
    from agent.storage import backfill_staged as bf

    monkeypatch.setattr(bf, "OFF_WRITER_SERIES", 20)
    monkeypatch.setattr(bf, "PREPARE_GROUP_SERIES", 10)
    [old] = await store.get_or_create_series([lab("imp", i="old")])
    real = bf.prepare_in_groups
    raced = []

    async def racing(*args: object, **kw: object) -> Prepared:
        prep = await real(*args, **kw)  # type: ignore[arg-type]
        raced.append((await store.append([old], [T0 - 30_000], [9.0])).accepted)
        return prep

    monkeypatch.setattr(bf, "prepare_in_groups", racing)
    before = stored_series(tmp_path / "tsagent.db")
    labels = [lab("imp", i="old"), *[lab("imp", i=str(k)) for k in range(40)]]
    keys, new = await store.series_keys(labels)
    sids = np.repeat(keys, 2)
    ts = np.tile(np.array([T0 - 60_000, T0 - 30_000], dtype=np.int64), keys.size)
    res = await store.backfill(sids, ts, np.ones(sids.size), on_error="abort", new_series=new)
    assert raced == [1]
    assert res.aborted and [(r.series_id, r.timestamp) for r in res.rejected] == [
        (old, T0 - 30_000)
    ]
    assert imp_names(store) == [lab("imp", i="old")]
    series, _ = stored_series(tmp_path / "tsagent.db")
    assert series == before[0]
    assert await read(store, old) == [T0 - 30_000]
    await store.close()
    again = await open_store(tmp_path)
    try:
        assert imp_names(again) == [lab("imp", i="old")]
    finally:
        await again.close()


@pytest.mark.parametrize("conflict", [False, True])
async def test_a_new_series_created_meanwhile_is_checked_as_existing(
    store: Store, monkeypatch: pytest.MonkeyPatch, conflict: bool
) -> None:
    """Someone else creates one of the import's new series (and writes to it) while the
    import is prepared: the commit finds it, and the import is checked against it."""
    from agent.storage import backfill_staged as bf

    monkeypatch.setattr(bf, "OFF_WRITER_SERIES", 20)
    monkeypatch.setattr(bf, "PREPARE_GROUP_SERIES", 10)
    real = bf.prepare_in_groups
    theirs: list[int] = []

    async def racing(*args: object, **kw: object) -> Prepared:
        prep = await real(*args, **kw)  # type: ignore[arg-type]
        if not theirs:
            [sid] = await store.get_or_create_series([lab("imp", i="3")])
            await store.backfill([sid], [T0 - 60_000], [9.0 if conflict else 1.0])
            theirs.append(sid)
        return prep

    monkeypatch.setattr(bf, "prepare_in_groups", racing)
    keys, new = await store.series_keys([lab("imp", i=str(k)) for k in range(30)])
    sids = np.repeat(keys, 2)
    ts = np.tile(np.array([T0 - 60_000, T0 - 30_000], dtype=np.int64), keys.size)
    res = await store.backfill(sids, ts, np.ones(sids.size), on_error="abort", new_series=new)
    [sid] = theirs
    if conflict:
        # Named by the key the caller knows it by.
        assert res.aborted and [(r.series_id, r.timestamp) for r in res.rejected] == [
            (int(keys[3]), T0 - 60_000)
        ]
        assert imp_names(store) == [lab("imp", i="3")]
        assert await read(store, sid) == [T0 - 60_000]
    else:
        assert not res.aborted and res.duplicates == 1 and res.stored == 59
        assert len(imp_names(store)) == 30
        assert await read(store, sid) == [T0 - 60_000, T0 - 30_000]
    # Reservations: the rule allows 60 "imp" series, whichever way this went.
    have = len(imp_names(store))
    more = await store.get_or_create_series([lab("imp", j=str(k)) for k in range(60 - have)])
    assert len(more) == 60 - have


async def test_refused_new_series_are_named_by_key(store: Store, path: str) -> None:
    labels = [lab("imp", i=str(k)) for k in range(61)]  # the rule allows 60
    keys, new = await store.series_keys(labels)
    res = await store.backfill(
        keys, np.full(keys.size, T0), np.ones(keys.size), on_error="abort", new_series=new
    )
    assert res.aborted and list(res.refused_series) == [int(keys[60])]
    assert "cardinality limit" in res.refused_series[int(keys[60])]
    assert imp_names(store) == []
    too_long = [lab("imp", i="x" * 70_000)]
    keys, new = await store.series_keys(too_long)
    res = await store.backfill(keys, [T0], [1.0], on_error="abort", new_series=new)
    assert res.aborted and "label limit" in res.refused_series[-1]


async def test_new_series_need_abort_mode(store: Store) -> None:
    keys, new = await store.series_keys([lab("imp", i="1")])
    with pytest.raises(ValueError, match="abort"):
        await store.backfill(keys, [T0], [1.0], new_series=new)


async def test_other_new_series_wait_for_the_import_and_appends_do_not(store: Store) -> None:
    """While an import holds ids for its new series, other callers' new series wait
    (they would take the same ids or register out of order) and appends go on."""
    import asyncio

    [old] = await store.get_or_create_series([lab("old")])
    a, b, c = lab("imp", i="a"), lab("imp", i="b"), lab("other")
    async with store._w.creating([a, b]) as creation:
        waiting = asyncio.create_task(store.get_or_create_series([a, c]))
        assert (await store.append([old], [T0], [1.0])).accepted == 1
        assert not waiting.done()  # the append's commit left the create deferred
        await store._w.job(lambda conn: None, creates=creation)
    assert await waiting == [creation.ids[0], creation.ids[1] + 1]
    assert store.series_id(b) == creation.ids[1]


async def test_ids_of_an_import_that_did_not_commit_are_handed_out_again(
    store: Store, tmp_path: Path
) -> None:
    import asyncio

    before = stored_series(tmp_path / "tsagent.db")
    first = store._index.max_id + 1
    with pytest.raises(RuntimeError, match="abort"):
        async with store._w.creating([lab("imp", i="a", new="pair")]) as creation:
            assert creation.ids == [first]
            waiting = asyncio.create_task(store.get_or_create_series([lab("imp", i="z")]))

            def fail(conn: sqlite3.Connection) -> None:
                raise RuntimeError("abort")

            await store._w.job(fail, creates=creation)
    assert await waiting == [first]
    assert store.series_id(lab("imp", i="a", new="pair")) is None
    assert store.label_values("new") == []
    assert stored_series(tmp_path / "tsagent.db") == (before[0] + 1, before[1] + 2)
