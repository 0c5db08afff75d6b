"""The storage engine's footprint: compact log rows, compact series rows, space given back.

Sizes are asserted as bounds on bytes (deterministic for given data), never on time.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from array import array
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Labels, Matcher
from agent.storage import StorageOptions, Store, space
from agent.storage.index import canonical_labels
from agent.storage.wal import decode_batch, encode_batch, pack_batch
from tests.conftest import open_store
from tests.storage_helpers.raw_codec import codecs

T0 = 1_700_000_000_000


def node_labels(i: int) -> Labels:
    host, slot = divmod(i, 200)
    return (
        ("__name__", f"node_metric_{slot % 10}"),
        ("cpu", str(slot // 10)),
        ("env", ("prod", "staging", "dev")[host % 3]),
        ("instance", f"10.0.{host // 256}.{host % 256}:9100"),
        ("job", "node"),
        ("mode", ("idle", "user", "system")[slot % 3]),
        ("region", ("eu-west-1", "us-east-1")[host % 2]),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "f.db")
    yield s
    await s.close()


# --- the log's compact format ----------------------------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**40), int64s, st.integers(0, 2**64 - 1)), max_size=300))
def test_packed_log_rows_round_trip_exactly(rows: list[tuple[int, int, int]]) -> None:
    sids = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    bits = np.array([r[2] for r in rows], dtype=np.uint64)
    blob = pack_batch(sids, ts, bits)
    got = decode_batch(blob, len(rows))
    assert got[0].tolist() == sids.tolist()
    assert got[1].tolist() == ts.tolist()
    assert got[2].tolist() == bits.tolist()
    # The raw format (what the audit trail hashes) still decodes the same way.
    raw = decode_batch(encode_batch(sids, ts, bits), len(rows))
    assert [a.tolist() for a in raw] == [a.tolist() for a in got]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 50))
def test_corrupt_packed_rows_are_refused_not_misread(junk: bytes, count: int) -> None:
    blob = bytes((3,)) + junk
    try:
        sids, ts, bits = decode_batch(blob, count)
    except ValueError:
        return
    assert sids.size == ts.size == bits.size == count


def test_a_remote_write_round_costs_little_in_the_log() -> None:
    """One sample per series at one timestamp: ids and timestamps cost ~nothing."""
    n = 2000
    sids = np.arange(5000, 5000 + n, dtype=np.int64)
    ts = np.full(n, T0, dtype=np.int64)
    counters = np.round(np.cumsum(np.random.default_rng(1).random(n)) * 1e4)
    blob = pack_batch(sids, ts, counters.view(np.uint64))
    assert len(blob) < 4 * n  # the raw format takes 20 bytes a sample
    # A backfill-like batch (many samples per series) XORs values within each series.
    sids = np.repeat(np.arange(1, 21, dtype=np.int64), 100)
    ts = np.tile(T0 + 15_000 * np.arange(100, dtype=np.int64), 20)
    vals = np.tile(np.arange(100, dtype=np.float64), 20)
    assert len(pack_batch(sids, ts, vals.view(np.uint64))) < 1 * sids.size


# --- series rows -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=6))
def test_canonical_labels_fast_path_agrees_with_the_definition(
    pairs: list[tuple[str, str]],
) -> None:
    want = tuple(sorted((k, v) for k, v in pairs if v != ""))
    assert canonical_labels(tuple(pairs)) == want
    assert canonical_labels(want) == want


async def test_series_are_stored_once_and_small(store: Store, tmp_path: Path) -> None:
    n = 10_000
    ids = await store.get_or_create_series([node_labels(i) for i in range(n)])
    await store.append(ids, np.full(n, T0), np.ones(n))
    conn = sqlite3.connect(tmp_path / "f.db")
    try:
        indexes = [r[0] for r in conn.execute("PRAGMA index_list(series)")]
        assert indexes == []  # uniqueness lives in memory: no second copy of every label set
        usage = space.measure(conn, tmp_path / "f.db")
    finally:
        conn.close()
    assert 0 < usage.series_bytes <= 100 * n


async def test_series_survive_reopen_with_shared_label_pairs(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    labels = [node_labels(i) for i in range(500)] + [(("__name__", "ünï"), ("k", 'v="1"'))]
    s = await Store.open(path, StorageOptions(), codecs())
    ids = await s.get_or_create_series(labels)
    await s.close()
    s = await Store.open(path, StorageOptions(), codecs())
    try:
        assert [s.labels(i) for i in ids] == labels
        assert await s.get_or_create_series(labels[::-1]) == ids[::-1]
        assert s.match_series([Matcher.of("job", "=", "node")]) == ids[:500]
    finally:
        await s.close()


# --- migration from the JSON series table ----------------------------------------------------


def _downgrade_to_json_series(path: Path) -> None:
    """Rewrite a current database into the format before m006 (JSON labels, UNIQUE index,
    raw log rows), exactly as m001/m002 defined it."""
    conn = sqlite3.connect(path, isolation_level=None)
    pairs = {pid: (k, v) for pid, k, v in conn.execute("SELECT id, name, value FROM label_pairs")}
    rows = []
    for sid, blob, created, fseq, max_t, last_bits in conn.execute("SELECT * FROM series"):
        ids = array("I")
        ids.frombytes(blob)
        if sys.byteorder == "big":
            ids.byteswap()
        text = json.dumps([pairs[i] for i in ids], ensure_ascii=False, separators=(",", ":"))
        rows.append((sid, text, created, fseq, max_t, last_bits))
    log = [
        (seq, encode_batch(*decode_batch(data, count)))
        for seq, data, count in conn.execute("SELECT seq, data, count FROM wal")
    ]
    conn.execute("BEGIN")
    conn.execute("DROP TABLE series")
    conn.execute("DROP TABLE label_pairs")
    conn.execute(
        "CREATE TABLE series (id INTEGER PRIMARY KEY, labels TEXT NOT NULL UNIQUE,"
        " created_ms INTEGER NOT NULL, flushed_seq INTEGER NOT NULL DEFAULT 0,"
        " max_t INTEGER, last_bits INTEGER)"
    )
    conn.executemany("INSERT INTO series VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("UPDATE wal SET data = ? WHERE seq = ?", [(b, s) for s, b in log])
    conn.execute("DELETE FROM _migrations WHERE name = 'm006_series_label_pairs'")
    conn.execute("COMMIT")
    conn.close()


async def test_a_database_from_the_previous_release_migrates_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    labels = [node_labels(i) for i in range(300)] + [(("__name__", "ünï"), ("q", '"x"'))]
    rng = np.random.default_rng(7)
    s = await Store.open(path, StorageOptions(block_size=8), codecs())
    ids = await s.get_or_create_series(labels)
    for k in range(12):  # some series flush to segments (block_size 8), the rest stay in the log
        n = len(ids) if k < 6 else len(ids) // 2
        await s.append(ids[:n], np.full(n, T0 + 15_000 * k), rng.random(n))
    everything = Matcher.of("__name__", "=~", ".+")
    before = {
        tuple(x.labels): (x.timestamps.tolist(), x.values.tolist())
        for x in await s.select([everything], 0, 2 * T0)
    }
    await s.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM wal").fetchone()[0] > 0
    _downgrade_to_json_series(path)

    s = await Store.open(path, StorageOptions(block_size=8), codecs())
    try:
        after = {
            tuple(x.labels): (x.timestamps.tolist(), x.values.tolist())
            for x in await s.select([everything], 0, 2 * T0)
        }
        assert after == before
        assert [s.labels(i) for i in ids] == labels
        # New series continue the id sequence and new samples append as before.
        new = await s.get_or_create_series([(("__name__", "fresh"),)])
        assert new[0] == max(ids) + 1
    finally:
        await s.close()
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("PRAGMA index_list(series)")] == []
    conn.close()


def test_migrations_apply_in_name_order(tmp_path: Path) -> None:
    from agent.storage.db import Migrations, connect

    order: list[str] = []
    ms = Migrations("test")
    for name in ("m050_late", "m004_early", "m010_mid"):
        ms(name=name)(lambda conn, name=name: order.append(name))
    conn = connect(tmp_path / "m.db")
    assert ms.apply(conn) == ["m004_early", "m010_mid", "m050_late"]
    assert order == ["m004_early", "m010_mid", "m050_late"]
    conn.close()


# --- space given back ------------------------------------------------------------------------


async def test_a_burst_is_given_back_after_it_is_flushed(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    s = await Store.open(path, StorageOptions(flush_interval_s=3600), codecs())
    try:
        n = 5000
        ids = await s.get_or_create_series([node_labels(i) for i in range(n)])
        rng = np.random.default_rng(3)
        for k in range(60):
            await s.append(ids, np.full(n, T0 + 15_000 * k), rng.random(n) * 1e6)
        grown = await s.refresh_disk_usage()
        assert grown.log_bytes > 1 << 20
        await s.flush(all=True)
        flushed = await s.refresh_disk_usage()
        assert flushed.log_bytes < 1 << 16
        assert flushed.free_bytes > grown.log_bytes // 2  # the trimmed log, not yet given back
        usage = await s.reclaim()
        assert usage.free_bytes < StorageOptions().reclaim_min_bytes
        assert (
            usage.file_bytes
            <= flushed.file_bytes - flushed.free_bytes + StorageOptions().reclaim_min_bytes
        )
        assert s.stats().disk == usage
    finally:
        await s.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


async def test_free_pages_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "w.db"
    s = await Store.open(path, StorageOptions(free_pages_warn_share=0.1), codecs())
    try:
        ids = await s.get_or_create_series([node_labels(i) for i in range(5000)])
        for k in range(60):
            await s.append(ids, np.full(5000, T0 + k), np.random.default_rng(k).random(5000))
        await s.flush(all=True)
        await s.refresh_disk_usage()  # measured before anything is given back
        assert any("free pages" in r.getMessage() for r in caplog.records)
        await s.reclaim()
        assert s.stats().free_bytes < StorageOptions().reclaim_min_bytes
    finally:
        await s.close()


# --- head checkpoints ------------------------------------------------------------------------


async def _everything(s: Store) -> dict[Labels, tuple[list[int], list[float]]]:
    found = await s.select([Matcher.of("__name__", "=~", ".+")], 0, 2 * T0)
    return {x.labels: (x.timestamps.tolist(), x.values.tolist()) for x in found}


async def test_a_checkpoint_compacts_the_log_and_replays_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    opts = StorageOptions(block_size=50, flush_interval_s=3600)
    rng = np.random.default_rng(11)
    s = await Store.open(path, opts, codecs())
    ids = await s.get_or_create_series([node_labels(i) for i in range(1000)])
    walk = rng.random(len(ids)) * 1e6
    for k in range(40):  # 40 samples a series: below block_size, all in the head
        walk += 1.0
        await s.append(ids, np.full(len(ids), T0 + 15_000 * k), walk)
    before_bytes = (await s.refresh_disk_usage()).log_bytes
    size = await s.checkpoint()
    assert 0 < size < before_bytes // 3
    assert s.stats().wal_rows == 1
    # Half the series get more samples and flush past the checkpoint (block_size 50).
    for k in range(40, 52):
        walk[:500] += 1.0
        await s.append(ids[:500], np.full(500, T0 + 15_000 * k), walk[:500])
    want = await _everything(s)
    await s.close()  # no flush at close: the checkpoint row and later rows replay

    s = await Store.open(path, opts, codecs())
    try:
        assert await _everything(s) == want
        await s.flush(all=True)
        assert s.stats().wal_rows == 0
    finally:
        await s.close()
    s = await Store.open(path, opts, codecs())
    try:
        assert s.stats().replayed_samples == 0
        assert await _everything(s) == want
        conn = sqlite3.connect(path)
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT series_id, min_t FROM segments"
            " GROUP BY series_id, min_t HAVING count(*) > 1)"
        ).fetchone()[0]
        conn.close()
        assert dupes == 0
    finally:
        await s.close()


async def test_the_writer_checkpoints_by_itself_as_the_log_grows(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "a.db", StorageOptions(flush_interval_s=3600), codecs())
    try:
        ids = await s.get_or_create_series([node_labels(i) for i in range(4000)])
        rng = np.random.default_rng(5)
        k = 0
        while s.stats().checkpoints == 0 and k < 400:
            await s.append(ids, np.full(len(ids), T0 + 15_000 * k), rng.random(len(ids)))
            k += 1
        assert s.stats().checkpoints >= 1
        assert (await s.refresh_disk_usage()).log_bytes < 3 * StorageOptions().checkpoint_min_bytes
    finally:
        await s.close()


# --- the head's queued in-order appends --------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "read", "release", "drop"]),
            st.lists(st.tuples(st.integers(1, 6), st.integers(0, 60)), max_size=12),
        ),
        max_size=30,
    )
)
def test_head_reads_see_every_queued_append(ops: list[tuple[str, list[tuple[int, int]]]]) -> None:
    """Appends queue in-order samples; every read, release and retention cut must see them."""
    from agent.storage import head as head_mod

    h = head_mod.Head(window_ms=30)
    h.ensure(8)
    model: dict[int, dict[int, int]] = {sid: {} for sid in range(1, 7)}
    for seq, (op, points) in enumerate(ops, start=1):
        if op == "append" and points:
            sids = np.array([p[0] for p in points], dtype=np.int64)
            ts = np.array([p[1] for p in points], dtype=np.int64)
            bits = (ts * 7 + sids).astype(np.uint64)
            out = h.apply(sids, ts, bits, seq, 0)
            for s, t, b in zip(
                out.stored_sids.tolist(),
                out.stored_ts.tolist(),
                out.stored_bits.tolist(),
                strict=True,
            ):
                model[s][t] = b
        elif op == "release" and points:
            sid = points[0][0]
            h.release([sid], [0])
            model[sid] = {}
        elif op == "drop" and points:
            sid, cut = points[0]
            h.drop_before(sid, cut)
            model[sid] = {t: b for t, b in model[sid].items() if t >= cut}
        for sid in range(1, 7):
            want = sorted(model[sid].items())
            snap = h.snapshot(sid, -(2**62), 2**62) if op == "read" or sid == 1 else None
            if snap is not None or (op == "read" and want):
                assert snap is not None
                assert snap[0].tolist() == [t for t, _ in want]
                assert snap[1].view(np.uint64).tolist() == [b for _, b in want]
    for start in (-(2**62), 10, 30):
        later = [t for m in model.values() for t in m if t >= start]
        assert h.earliest(list(range(1, 7)), start) == (min(later) if later else None)
    counts, _, _ = h.snapshot_many(list(range(1, 7)), -(2**62), 2**62)
    assert counts.tolist() == [len(model[s]) for s in range(1, 7)]
    assert int(h.count[1:7].sum()) == sum(len(m) for m in model.values())


def test_a_subsystem_set_skips_what_was_recorded_before_it_had_a_set(tmp_path: Path) -> None:
    """Databases of earlier releases recorded every subsystem's migrations in the storage set."""
    from agent.storage.db import LEGACY_SET, Migrations, connect

    conn = connect(tmp_path / "m.db")
    old = Migrations(LEGACY_SET)
    old(name="m040_thing")(lambda c: c.execute("CREATE TABLE thing (x)"))
    assert old.apply(conn) == ["m040_thing"]
    new = Migrations("tsagent.things", formerly=LEGACY_SET)
    new(name="m040_thing")(lambda c: c.execute("CREATE TABLE thing (x)"))  # would fail twice
    new(name="m041_more")(lambda c: c.execute("CREATE TABLE more (y)"))
    assert new.apply(conn) == ["m041_more"]
    conn.close()
