"""The audit trail, versioned writes, history and rollback, on real SQLite files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.model import STALE_NAN, STALE_NAN_BITS, Labels
from agent.storage import Store
from agent.storage.audit import (
    decode_points,
    encode_points,
    recent_rows,
    verify_chain,
    write_audit,
)
from agent.storage.db import connect, transaction
from agent.storage.wal import decode_batch, encode_batch
from tests.conftest import open_store

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tsagent.db"


def audit_rows(path: Path) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, op, source, user, sample_count, series_count, min_t, max_t,"
            " content_hash, detail FROM audit ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


async def values(store: Store, sid: int, start: int = T0, end: int = T0 + 10**9) -> list[int]:
    """Timestamps and value bits as plain lists (bit-exact, NaN-safe comparisons)."""
    t, v = await store.read_series(sid, start, end)
    return list(zip(t.tolist(), v.view(np.uint64).tolist(), strict=True))  # type: ignore[arg-type]


def b(x: float) -> int:
    return int(np.float64(x).view(np.uint64))


def tamper_conn(path: Path) -> sqlite3.Connection:
    """A connection that can edit the audit table, as an attacker with file access could."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


# --- the chain ----------------------------------------------------------------------------


async def test_one_chained_row_per_batch_with_counts_and_hash(store: Store, tmp_path: Path) -> None:
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(3)])
    await store.append(ids, [T0, T0 + 5, T0 + 9], [1.0, 2.0, 3.0], source="scrape", client="c1")
    await store.append([ids[0], ids[0]], [T0 + 20, T0 + 30], [4.0, 5.0], client="bob")
    # An exact re-send stores nothing but is still an audited write attempt.
    await store.append([ids[0]], [T0 + 30], [5.0])
    conn = sqlite3.connect(db_path(tmp_path))
    # The content hash covers the samples in their canonical (raw) encoding, whatever
    # compact form the log keeps them in.
    wal_blobs = [
        encode_batch(*decode_batch(bytes(r[0]), r[1]))
        for r in conn.execute("SELECT data, count FROM wal ORDER BY seq")
    ]
    conn.close()
    rows = audit_rows(db_path(tmp_path))
    assert [r[:8] for r in rows] == [
        (1, "append", "scrape", "c1", 3, 3, T0, T0 + 9),
        (2, "append", "api", "bob", 2, 1, T0 + 20, T0 + 30),
        (3, "append", "api", None, 0, 0, None, None),
    ]
    assert rows[0][8] == hashlib.sha256(wal_blobs[0]).digest()
    assert rows[1][8] == hashlib.sha256(wal_blobs[1]).digest()
    assert '"duplicates":1' in rows[2][9]
    res = await store.verify_audit()
    assert res.ok and res.rows_checked == 3 and res.first_broken_id is None
    # Series creation alone writes no audit row; further batches keep extending the chain.
    await store.get_or_create_series([lab("other")])
    await store.append([ids[1]], [T0 + 40], [1.0])
    assert len(audit_rows(db_path(tmp_path))) == 4
    assert (await store.verify_audit()).rows_checked == 4


async def test_batch_points_round_trip_exactly(store: Store, tmp_path: Path) -> None:
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(50)])
    rng = np.random.default_rng(3)
    sids = np.repeat(ids, 4)
    ts = T0 + rng.integers(0, 10**6, sids.size)
    ts = np.sort(ts.reshape(50, 4), axis=1).ravel()
    await store.append(sids, ts, rng.random(sids.size))
    conn = sqlite3.connect(db_path(tmp_path))
    (count, data), (wal,) = (
        conn.execute("SELECT count, data FROM audit_points").fetchone(),
        conn.execute("SELECT data FROM wal").fetchone(),
    )
    conn.close()
    s, t = decode_points(bytes(data), count)
    ws, wt, _ = decode_batch(bytes(wal), count)
    assert s.tolist() == ws.tolist() and t.tolist() == wt.tolist()
    # Extreme values survive the delta encoding (wrapping arithmetic).
    big = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0], dtype=np.int64)
    s2, t2 = decode_points(encode_points(np.array([1, 2**40, 3]), big), 3)
    assert s2.tolist() == [1, 2**40, 3] and t2.tolist() == big.tolist()


async def test_update_and_delete_on_audit_are_rejected(store: Store, tmp_path: Path) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    await store.append([sid], [T0], [1.0])
    conn = sqlite3.connect(db_path(tmp_path), isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET sample_count = 99 WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
        # REPLACE would delete without firing the DELETE trigger; the INSERT trigger stops it.
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("INSERT OR REPLACE INTO audit SELECT * FROM audit WHERE id = 1")
    finally:
        conn.close()
    assert audit_rows(db_path(tmp_path))[0][4] == 1
    assert (await store.verify_audit()).ok


def test_write_audit_requires_a_transaction_and_chains(tmp_path: Path) -> None:
    from agent.storage.db import MIGRATIONS

    conn = connect(db_path(tmp_path))
    MIGRATIONS.apply(conn)
    kw = dict(
        op="retention",
        source="retention",
        user=None,
        sample_count=10,
        series_count=2,
        min_t=1,
        max_t=5,
        content_hash=b"\x01" * 32,
    )
    with pytest.raises(RuntimeError, match="transaction"):
        write_audit(conn, **kw)  # type: ignore[arg-type]
    with transaction(conn):
        first = write_audit(conn, **kw, detail={"b": 1, "a": [1, 2]})  # type: ignore[arg-type]
        second = write_audit(conn, **kw)  # type: ignore[arg-type]
    # A rolled-back write leaves no trace and the next row still chains on the last one.
    with pytest.raises(ZeroDivisionError), transaction(conn):
        write_audit(conn, **kw)  # type: ignore[arg-type]
        _ = 1 / 0
    with transaction(conn):
        third = write_audit(conn, **kw)  # type: ignore[arg-type]
    assert (first, second, third) == (1, 2, 3)
    prev, h = conn.execute("SELECT prev_hash, hash FROM audit WHERE id = 2").fetchone()
    assert prev == conn.execute("SELECT hash FROM audit WHERE id = 1").fetchone()[0]
    assert conn.execute("SELECT prev_hash FROM audit WHERE id = 3").fetchone()[0] == h
    assert recent_rows(conn, 2)[0].id == 2 and recent_rows(conn, 2)[1].id == 3
    assert recent_rows(conn, 5)[0].detail == {"a": [1, 2], "b": 1}
    assert verify_chain(conn).ok
    conn.close()


async def _chain_of(store: Store, n: int) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    for i in range(n):
        await store.append([sid], [T0 + i], [float(i)])


@pytest.mark.parametrize(
    ("edit", "broken", "checked", "reason"),
    [
        ("UPDATE audit SET sample_count = 7 WHERE id = 3", 3, 2, "does not match its contents"),
        ("UPDATE audit SET user = 'mallory' WHERE id = 2", 2, 1, "does not match its contents"),
        ("DELETE FROM audit WHERE id = 3", 4, 2, "rows 3..3 are missing"),
        ("DELETE FROM audit WHERE id = 1", 2, 0, "before id 2 are missing"),
        ("UPDATE audit SET content_hash = x'00' WHERE id = 4", 4, 3, "does not match"),
        ("UPDATE audit SET hash = x'00' WHERE id = 4", 4, 3, "does not match"),
        ("UPDATE audit SET prev_hash = x'00' WHERE id = 5", 5, 4, "prev_hash does not match"),
        ("UPDATE audit SET sample_count = 'x' WHERE id = 2", 2, 1, "wrong type"),
    ],
)
async def test_tampering_is_detected_at_the_first_broken_row(
    tmp_path: Path, edit: str, broken: int, checked: int, reason: str
) -> None:
    s = await open_store(tmp_path)
    await _chain_of(s, 5)
    await s.close()
    conn = tamper_conn(db_path(tmp_path))
    conn.execute(edit)
    conn.close()
    ro = sqlite3.connect(f"file:{db_path(tmp_path)}?mode=ro", uri=True)
    res = verify_chain(ro)
    ro.close()
    assert (res.ok, res.first_broken_id, res.rows_checked) == (False, broken, checked)
    assert res.reason is not None and reason in res.reason


async def test_rehashed_edit_breaks_the_next_row(tmp_path: Path) -> None:
    """Editing a row and fixing its own hash still breaks the link from the next row."""
    from agent.storage.audit import row_hash

    s = await open_store(tmp_path)
    await _chain_of(s, 4)
    await s.close()
    conn = tamper_conn(db_path(tmp_path))
    rid, at, op, src, user, _, series, mn, mx, chash, detail, prev = conn.execute(
        "SELECT id, at_ms, op, source, user, sample_count, series_count, min_t, max_t,"
        " content_hash, detail, prev_hash FROM audit WHERE id = 2"
    ).fetchone()
    forged = row_hash(prev, rid, at, op, src, user, 1000, series, mn, mx, chash, detail)
    conn.execute("UPDATE audit SET sample_count = 1000, hash = ? WHERE id = 2", (forged,))
    res = verify_chain(conn)
    conn.close()
    assert (res.ok, res.first_broken_id) == (False, 3)
    assert res.reason == "prev_hash does not match the hash of row 2"


# --- versioned writes ---------------------------------------------------------------------


async def test_record_write_replaces_and_keeps_versions(store: Store, tmp_path: Path) -> None:
    [sid] = await store.get_or_create_series([lab("temp", room="a")])
    await store.append([sid] * 3, [T0, T0 + 10, T0 + 20], [1.0, 2.0, 3.0], client="scraper")
    # Append would reject a different value at an existing timestamp ...
    res = await store.append([sid], [T0 + 10], [99.0])
    assert res.accepted == 0 and res.out_of_order == 1
    # ... record_write replaces it, in the head, visible at once.
    a1 = await store.record_write(sid, T0 + 10, 20.0, tags={"ticket": "OPS-1"}, user_id="alice")
    assert await values(store, sid) == [(T0, b(1.0)), (T0 + 10, b(20.0)), (T0 + 20, b(3.0))]
    a2 = await store.record_write(lab("temp", room="a"), T0 + 10, 21.0, user_id="bob")
    assert a2 == a1 + 1
    # A point that did not exist is written as a new sample, also versioned.
    a3 = await store.record_write(sid, T0 + 15, 7.0, user_id="carol")
    assert await values(store, sid) == [
        (T0, b(1.0)),
        (T0 + 10, b(21.0)),
        (T0 + 15, b(7.0)),
        (T0 + 20, b(3.0)),
    ]
    hist = await store.history(sid, T0 + 10)
    assert [(h.value, h.user, h.op, h.current) for h in hist] == [
        (2.0, "scraper", "append", False),
        (20.0, "alice", "write", False),
        (21.0, "bob", "write", True),
    ]
    assert hist[0].audit_id == 1 and hist[1].audit_id == a1 and hist[2].audit_id == a2
    assert all(h.at_ms is not None and h.source == "api" for h in hist)
    assert [(h.value, h.audit_id, h.current) for h in await store.history(sid, T0 + 15)] == [
        (7.0, a3, True)
    ]
    assert [(h.value, h.audit_id) for h in await store.history(sid, T0 + 20)] == [(3.0, 1)]
    assert await store.history(sid, T0 + 5) == []
    row = next(r for r in audit_rows(db_path(tmp_path)) if r[0] == a1)
    assert row[1:8] == ("write", "api", "alice", 1, 1, T0 + 10, T0 + 10)
    assert '"tags":{"ticket":"OPS-1"}' in row[9]
    assert f'"previous_bits":"{b(2.0):016x}"' in row[9]
    # The newest timestamp's value was not touched, so in-order appends carry on.
    assert (await store.append([sid], [T0 + 30], [4.0])).accepted == 1
    assert (await store.verify_audit()).ok


async def test_record_write_rejects_bad_input(store: Store) -> None:
    from agent.storage import UnknownSeries

    with pytest.raises(UnknownSeries):
        await store.record_write(42, T0, 1.0)
    [sid] = await store.get_or_create_series([lab("m")])
    with pytest.raises(TypeError):
        await store.record_write(sid, T0, 1.0, tags={"x": object()})
    with pytest.raises(UnknownSeries):
        await store.history(lab("nope"), T0)
    # Labels of a new series create it.
    await store.record_write(lab("fresh"), T0, 5.0, user_id="u")
    sid2 = store.series_id(lab("fresh"))
    assert sid2 is not None and await values(store, sid2) == [(T0, b(5.0))]


async def test_replace_survives_flush_reopen_and_log_replay(tmp_path: Path) -> None:
    s = await open_store(tmp_path, block_size=4)
    ids = await s.get_or_create_series([lab("m", i="1"), lab("m", i="2")])
    sid, other = ids
    ts = [T0 + i * 10 for i in range(10)]
    await s.append([sid] * 10, ts, [float(i) for i in range(10)])
    await s.flush(all=True)  # segments: the replacement must rewrite a block
    await s.append([sid] * 3 + [other], [T0 + 100, T0 + 110, T0 + 120, T0], [10.0, 11.0, 12, 0])
    # One in a segment, one in the head (the log still holds the old value).
    await s.record_write(sid, T0 + 30, 30.5, user_id="u1")
    await s.record_write(sid, T0 + 110, 110.5, user_id="u2")
    # The other series' head is untouched by the edit: it still lives in the log.
    assert s.stats().head_samples == 1
    expect = [(t, b(float(i))) for i, t in enumerate(ts)] + [
        (T0 + 100, b(10.0)),
        (T0 + 110, b(110.5)),
        (T0 + 120, b(12.0)),
    ]
    expect[3] = (T0 + 30, b(30.5))
    assert await values(s, sid) == expect
    await s.close()  # no flush at close: the other series comes back through replay

    s = await open_store(tmp_path, block_size=4)
    assert s.stats().replayed_samples == 1
    assert await values(s, sid) == expect
    assert await values(s, other) == [(T0, b(0.0))]
    hist = await s.history(sid, T0 + 110)
    assert [(h.value, h.user, h.current) for h in hist] == [
        (11.0, None, False),
        (110.5, "u2", True),
    ]
    assert hist[0].op == "append"
    # Exact re-send of the new value is a duplicate, the old one a conflict.
    res = await s.append([sid, sid], [T0 + 120, T0 + 120], [12.0, 12.0])
    assert res.duplicates == 2
    await s.record_write(sid, T0 + 120, 120.5)
    res = await s.append([sid], [T0 + 120], [12.0])
    assert res.duplicate_timestamp == 1
    assert (await s.append([sid], [T0 + 120], [120.5])).duplicates == 1
    await s.flush(all=True)
    await s.close()
    s = await open_store(tmp_path, block_size=4)
    expect[-1] = (T0 + 120, b(120.5))
    assert await values(s, sid) == expect
    assert (await s.verify_audit()).ok
    await s.close()


async def test_staleness_nan_bits_survive_versions(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    await store.append([sid, sid], [T0, T0 + 10], [STALE_NAN, 1.0])
    await store.record_write(sid, T0, 5.0)
    await store.record_write(sid, T0 + 10, STALE_NAN)
    hist = await store.history(sid, T0)
    assert [h.value_bits for h in hist] == [STALE_NAN_BITS, b(5.0)]
    hist = await store.history(sid, T0 + 10)
    assert [h.value_bits for h in hist] == [b(1.0), STALE_NAN_BITS]
    assert await values(store, sid) == [(T0, b(5.0)), (T0 + 10, STALE_NAN_BITS)]
    rid = await store.rollback(hist[1].audit_id)
    # Restoring the stale marker must restore the exact payload, not any NaN.
    await store.rollback(rid - 2)  # the write at T0 and everything after it
    assert await values(store, sid) == [(T0, STALE_NAN_BITS), (T0 + 10, b(1.0))]
    assert [h.value_bits for h in await store.history(sid, T0)] == [
        STALE_NAN_BITS,
        b(5.0),
        STALE_NAN_BITS,
    ]


# --- rollback -----------------------------------------------------------------------------


async def test_rollback_by_id_undoes_writes_and_later_batches(store: Store, tmp_path: Path) -> None:
    ids = await store.get_or_create_series([lab("m", i="1"), lab("m", i="2")])
    a, c = ids
    await store.append([a, c], [T0, T0], [1.0, 1.0])  # audit 1
    await store.append([a, c], [T0 + 10, T0 + 10], [2.0, 2.0])  # audit 2
    await store.flush(all=True)
    w1 = await store.record_write(a, T0, 100.0, user_id="x")  # audit 3
    await store.append([a, c], [T0 + 20, T0 + 20], [3.0, 3.0])  # audit 4
    await store.record_write(a, T0 + 10, 200.0)  # audit 5
    await store.record_write(c, T0 + 5, 50.0)  # audit 6: a new point
    await store.append([a], [T0 + 30], [4.0])  # audit 7
    rb = await store.rollback(w1, user_id="admin")
    assert rb == 8
    assert await values(store, a) == [(T0, b(1.0)), (T0 + 10, b(2.0))]
    assert await values(store, c) == [(T0, b(1.0)), (T0 + 10, b(2.0))]
    row = audit_rows(db_path(tmp_path))[-1]
    assert row[1:8] == ("rollback", "api", "admin", 6, 2, T0, T0 + 30)
    assert '"removed":4' in row[9] and '"restored":2' in row[9] and '"target_audit_id":3' in row[9]
    hist = await store.history(a, T0)
    assert [(h.value, h.op, h.current) for h in hist] == [
        (1.0, "append", False),
        (100.0, "write", False),
        (1.0, "rollback", True),
    ]
    # The newest sample was removed, so the series accepts corrected data in order again.
    assert (await store.append([a], [T0 + 20], [3.5])).accepted == 1
    assert (await store.verify_audit()).ok
    # The rollback is itself undoable: back to just before it, removing the append too.
    await store.rollback(rb)
    assert await values(store, a) == [
        (T0, b(100.0)),
        (T0 + 10, b(200.0)),
        (T0 + 20, b(3.0)),
        (T0 + 30, b(4.0)),
    ]
    assert await values(store, c) == [
        (T0, b(1.0)),
        (T0 + 5, b(50.0)),
        (T0 + 10, b(2.0)),
        (T0 + 20, b(3.0)),
    ]


async def test_rollback_by_time_and_across_restart(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    [sid] = await s.get_or_create_series([lab("m")])
    await s.append([sid], [T0], [1.0])
    await s.record_write(sid, T0, 2.0)
    await s.close()
    # Pin times: rows so far are "old", later ones "new".
    conn = sqlite3.connect(db_path(tmp_path), isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.close()
    s = await open_store(tmp_path)
    cut = int(1e13)  # far in the future: the rows written from here on are not before it
    await s.append([sid] * 2, [T0 + 10, T0 + 20], [3.0, 4.0])
    await s.record_write(sid, T0, 5.0)
    conn = sqlite3.connect(db_path(tmp_path), isolation_level=None)
    conn.execute("UPDATE audit SET at_ms = ? WHERE id >= 3", (cut,))
    conn.close()
    rid = await s.rollback(before_ms=cut, user_id="ops")
    assert await values(s, sid) == [(T0, b(2.0))]
    # A time after everything rolls back nothing, but is still audited.
    rid2 = await s.rollback(before_ms=cut * 10)
    assert rid2 == rid + 1
    assert await values(s, sid) == [(T0, b(2.0))]
    await s.close()
    s = await open_store(tmp_path)  # removal and restore survive replay
    assert await values(s, sid) == [(T0, b(2.0))]
    assert (await s.append([sid], [T0 + 10], [3.0])).accepted == 1
    await s.close()


async def test_rollback_of_head_only_data_survives_replay(tmp_path: Path) -> None:
    """Removed samples that only ever lived in the log must not come back on replay."""
    s = await open_store(tmp_path)
    ids = await s.get_or_create_series([lab("m", i="1"), lab("m", i="2")])
    await s.append(ids, [T0, T0], [1.0, 1.0])
    first_bad = (await s.append(ids, [T0 + 10, T0 + 10], [9.0, 9.0])).accepted
    assert first_bad == 2
    await s.rollback(2)
    assert await values(s, ids[0]) == [(T0, b(1.0))]
    await s.close()
    s = await open_store(tmp_path)
    assert await values(s, ids[0]) == [(T0, b(1.0))]
    assert await values(s, ids[1]) == [(T0, b(1.0))]
    await s.close()


async def test_rollback_rejects_unknown_target(store: Store) -> None:
    with pytest.raises(ValueError, match="no audit row"):
        await store.rollback(5)
    with pytest.raises(ValueError, match="exactly one"):
        await store.rollback()
    with pytest.raises(ValueError, match="exactly one"):
        await store.rollback(1, before_ms=1)


async def test_out_of_order_points_are_rolled_back_exactly(tmp_path: Path) -> None:
    """An out-of-order batch interleaves with older data; only its own points go."""
    s = await open_store(tmp_path, out_of_order_window_ms=1000)
    [sid] = await s.get_or_create_series([lab("m")])
    await s.append([sid] * 3, [T0, T0 + 20, T0 + 40], [1.0, 2.0, 3.0])
    await s.flush(all=True)
    res = await s.append([sid] * 3, [T0 + 10, T0 + 30, T0 + 50], [1.5, 2.5, 3.5])
    assert res.accepted == 3
    await s.rollback(2)
    assert await values(s, sid) == [(T0, b(1.0)), (T0 + 20, b(2.0)), (T0 + 40, b(3.0))]
    await s.close()


@pytest.mark.parametrize("seed", [7, 11, 23])
async def test_random_edits_match_a_model(tmp_path: Path, seed: int) -> None:
    """Appends, record_writes, flushes, restarts and rollbacks against a dict model.

    The model snapshots the whole state before every audited operation; a
    rollback to audit id X must give back exactly the snapshot taken before X.
    """
    rng = np.random.default_rng(seed)
    s = await open_store(tmp_path, block_size=3)
    ids = await s.get_or_create_series([lab("m", i=str(i)) for i in range(3)])
    state: dict[tuple[int, int], int] = {}
    before: dict[int, dict[tuple[int, int], int]] = {}
    next_id = 1

    def newest(sid: int) -> int:
        return max((t for (q, t) in state if q == sid), default=T0 - 10)

    try:
        for step in range(120):
            op = rng.choice(["append", "append", "write", "flush", "rollback", "reopen"])
            if op == "append":
                chosen = [i for i in ids if rng.random() < 0.7] or [ids[0]]
                ts = [newest(i) + 10 * int(rng.integers(1, 3)) for i in chosen]
                vals = rng.random(len(chosen)).round(3)
                before[next_id] = dict(state)
                res = await s.append(chosen, ts, vals)
                assert res.accepted == len(chosen) and not res.rejected
                for i, t, v in zip(chosen, ts, vals.tolist(), strict=True):
                    state[(i, t)] = b(v)
                next_id += 1
            elif op == "write":
                sid = int(rng.choice(ids))
                t = newest(sid) - 10 * int(rng.integers(-1, 4))
                v = STALE_NAN if rng.random() < 0.2 else round(float(rng.random()), 3)
                before[next_id] = dict(state)
                assert await s.record_write(sid, t, v, user_id=f"u{step}") == next_id
                state[(sid, t)] = b(v)
                next_id += 1
            elif op == "flush":
                await s.flush(all=bool(rng.random() < 0.5))
            elif op == "reopen":
                await s.close()
                s = await open_store(tmp_path, block_size=3)
            elif next_id > 1:
                target = int(rng.integers(1, next_id))
                before[next_id] = dict(state)
                assert await s.rollback(target) == next_id
                state = dict(before[target])
                next_id += 1
            for i in ids:
                want = sorted((t, v) for (q, t), v in state.items() if q == i)
                assert await values(s, i, 0, 2**62) == want, (step, op, i)
        assert (await s.verify_audit()).rows_checked == next_id - 1
    finally:
        await s.close()
