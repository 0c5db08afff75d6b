"""Storage engine behaviour through the public ``Store`` API."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from agent.model import NORMAL_NAN_BITS, STALE_NAN, STALE_NAN_BITS, Labels, Matcher
from agent.storage import (
    BackPressure,
    BatchRecord,
    StorageOptions,
    Store,
    StoreFailed,
    UnknownSeries,
)
from tests.conftest import open_store, wait_until
from tests.storage_helpers.raw_codec import codecs

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def bits(values: np.ndarray | Sequence[float]) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.uint64).tolist()


async def test_append_read_round_trip(store: Store) -> None:
    ids = await store.get_or_create_series([lab("up", job="a"), lab("up", job="b")])
    assert ids == [1, 2]
    ts = [T0 + i * 1000 for i in range(10)]
    res = await store.append([ids[0]] * 10 + [ids[1]] * 10, ts + ts, [float(i) for i in range(20)])
    assert res.accepted == 20 and not res.rejected
    t, v = await store.read_series(ids[0], T0 + 2000, T0 + 5000)  # inclusive both ends
    assert t.tolist() == ts[2:6]
    assert v.tolist() == [2.0, 3.0, 4.0, 5.0]
    got = await store.select([Matcher.of("__name__", "=", "up")], T0, T0 + 9000)
    assert [s.labels for s in got] == [lab("up", job="a"), lab("up", job="b")]
    assert got[1].values.tolist() == [float(i) for i in range(10, 20)]
    assert got[0].timestamps.dtype == np.int64 and got[0].values.dtype == np.float64
    assert await store.select([Matcher.of("job", "=", "a")], T0 + 20_000, T0 + 30_000) == []


async def test_series_ids_stable_and_creation_deduplicated(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    a = lab("m", x="1")
    # Concurrent creators of the same new series must agree on one id.
    r1, r2 = await asyncio.gather(
        s.get_or_create_series([a, lab("m", x="2")]), s.get_or_create_series([a])
    )
    assert r1[0] == r2[0]
    # Unsorted input and empty values are canonicalised like make_labels.
    assert await s.get_or_create_series([(("x", "1"), ("__name__", "m"), ("y", ""))]) == [r1[0]]
    assert s.series_id((("x", "1"), ("__name__", "m"))) == r1[0]
    assert s.series_id(lab("nope")) is None
    await s.close()
    s = await open_store(tmp_path)
    assert s.series_id(a) == r1[0]
    assert s.labels(r1[1]) == lab("m", x="2")
    assert await s.get_or_create_series([lab("m", x="3")]) == [3]
    await s.close()


async def test_unknown_series_rejected(store: Store) -> None:
    with pytest.raises(UnknownSeries):
        await store.append([7], [T0], [1.0])
    with pytest.raises(ValueError):
        await store.append([1, 2], [T0], [1.0])


async def test_label_names_and_values_sorted(store: Store) -> None:
    await store.get_or_create_series(
        [lab("b_metric", zone="z2"), lab("a_metric", zone="z1", app="x"), lab("c", zone="z0")]
    )
    assert store.label_names() == ["__name__", "app", "zone"]
    assert store.label_values("zone") == ["z0", "z1", "z2"]
    assert store.label_values("__name__") == ["a_metric", "b_metric", "c"]
    assert store.label_values("missing") == []


@pytest.fixture
async def matcher_store(store: Store) -> tuple[Store, dict[str, int]]:
    sets = {
        "up_a": lab("up", job="api", env="prod"),
        "up_b": lab("up", job="apiserver", env="dev"),
        "up_c": lab("up", job="db"),  # no env label
        "req_a": lab("http_requests_total", job="api", env="prod", code="200"),
        "req_b": lab("http_requests_total", job="api", env="prod", code="500"),
        "dot": lab("up", job="a.b"),
    }
    ids = await store.get_or_create_series(list(sets.values()))
    return store, dict(zip(sets, ids, strict=True))


def names(ids: list[int], by_name: dict[str, int]) -> set[str]:
    rev = {v: k for k, v in by_name.items()}
    return {rev[i] for i in ids}


async def test_matchers_four_ops(matcher_store: tuple[Store, dict[str, int]]) -> None:
    s, ids = matcher_store

    def m(*ms: tuple[str, str, str]) -> set[str]:
        got = s.match_series([Matcher.of(*x) for x in ms])
        assert got == sorted(got)
        return names(got, ids)

    assert m(("__name__", "=", "up")) == {"up_a", "up_b", "up_c", "dot"}
    assert m(("__name__", "=", "up"), ("job", "!=", "api")) == {"up_b", "up_c", "dot"}
    # Regexes are anchored: "api" must not match "apiserver".
    assert m(("job", "=~", "api")) == {"up_a", "req_a", "req_b"}
    assert m(("job", "=~", "api.*")) == {"up_a", "up_b", "req_a", "req_b"}
    assert m(("job", "=~", "api|db")) == {"up_a", "up_c", "req_a", "req_b"}
    assert m(("job", "=~", "a\\.b")) == {"dot"}
    assert m(("job", "=~", "a.b")) == {"dot"}
    assert m(("__name__", "=", "up"), ("job", "!~", "api.*")) == {"up_c", "dot"}
    assert m(("code", "=~", "5..")) == {"req_b"}
    assert m(("__name__", "=", "nope")) == set()
    assert m(("nolabel", "=", "x")) == set()


async def test_matchers_empty_value_semantics(matcher_store: tuple[Store, dict[str, int]]) -> None:
    s, ids = matcher_store

    def m(*ms: tuple[str, str, str]) -> set[str]:
        return names(s.match_series([Matcher.of(*x) for x in ms]), ids)

    up = ("__name__", "=", "up")
    # A matcher that matches "" also selects series lacking the label.
    assert m(up, ("env", "=", "")) == {"up_c", "dot"}
    assert m(up, ("env", "!=", "prod")) == {"up_b", "up_c", "dot"}
    assert m(up, ("env", "=~", "dev|")) == {"up_b", "up_c", "dot"}
    assert m(up, ("env", "!~", ".+")) == {"up_c", "dot"}
    assert m(up, ("env", "=~", ".*")) == {"up_a", "up_b", "up_c", "dot"}
    # ... and one that does not match "" requires the label.
    assert m(up, ("env", "!=", "")) == {"up_a", "up_b"}
    assert m(up, ("env", "=~", ".+")) == {"up_a", "up_b"}
    assert m(("env", "!~", "prod")) == {"up_b", "up_c", "dot"}  # only empty-matching: all minus


async def test_selective_matchers_never_touch_all_series(
    matcher_store: tuple[Store, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, ids = matcher_store
    index = s._index

    def boom() -> np.ndarray:
        raise AssertionError("scanned all series although a matcher was selective")

    monkeypatch.setattr(type(index), "all_ids", lambda self: boom())
    got = s.match_series([Matcher.of("job", "=~", "api.*"), Matcher.of("env", "!=", "dev")])
    assert names(got, ids) == {"up_a", "req_a", "req_b"}
    got = s.match_series([Matcher.of("__name__", "=", "up"), Matcher.of("env", "=", "")])
    assert names(got, ids) == {"up_c", "dot"}
    with pytest.raises(AssertionError):
        s.match_series([Matcher.of("env", "!=", "dev")])


def test_regex_literal_analysis() -> None:
    from agent.storage.index import regex_literals

    assert regex_literals("foo.*") == ("foo", None)
    assert regex_literals("foo") == ("", ["foo"])
    assert regex_literals("a|bc|d") == ("", ["a", "bc", "d"])
    assert regex_literals("a\\.b") == ("", ["a.b"])
    assert regex_literals("fo?x") == ("f", None)
    assert regex_literals("ab*") == ("a", None)
    assert regex_literals("ab+") == ("ab", None)
    assert regex_literals("foo.*|bar") == ("", None)
    assert regex_literals("(a|b)c") == ("", None)
    assert regex_literals("x(a|b)c") == ("x", None)
    assert regex_literals("[ab]c") == ("", None)
    assert regex_literals("a\\d") == ("a", None)
    assert regex_literals("(?i)abc") == ("", None)


async def test_matchers_agree_with_brute_force(store: Store) -> None:
    rng = np.random.default_rng(7)
    vals = ["", "a", "ab", "abc", "b", "ba", "api", "apiserver", "x.y", "xzy"]
    sets = []
    for i in range(300):
        kv = {k: vals[int(rng.integers(len(vals)))] for k in ("job", "env", "zone")}
        sets.append(lab(f"m{i % 5}", **kv, i=str(i)))
    ids = await store.get_or_create_series(sets)
    patterns = ["a.*", "ab?", "a|b", "x\\.y", "x.y", ".*", ".+", "", "api", "(a|b)a", "a[bc]*"]
    for name in ("job", "env", "zone", "missing"):
        for op in ("=", "!=", "=~", "!~"):
            for p in patterns if "~" in op else vals:
                ms = [Matcher.of(name, op, p), Matcher.of("__name__", "=~", "m[0-3]")]
                expected = sorted(
                    sid
                    for sid, ls in zip(ids, sets, strict=True)
                    if all(m.matches(dict(ls).get(m.name, "")) for m in ms)
                )
                assert store.match_series(ms) == expected, (name, op, p)
                alone = sorted(
                    sid
                    for sid, ls in zip(ids, sets, strict=True)
                    if ms[0].matches(dict(ls).get(name, ""))
                )
                assert store.match_series(ms[:1]) == alone, (name, op, p)


async def test_out_of_order_rejected_by_default(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    assert (await store.append([sid], [T0 + 10], [1.0])).accepted == 1
    res = await store.append([sid, sid], [T0 + 5, T0 + 20], [2.0, 3.0])
    assert res.accepted == 1
    assert [(r.series_id, r.timestamp, r.reason) for r in res.rejected] == [
        (sid, T0 + 5, "out_of_order")
    ]
    assert res.rejected_by_reason["out_of_order"] == 1
    # Flushing must not forget the newest timestamp.
    await store.flush(all=True)
    res = await store.append([sid], [T0 + 15], [9.0])
    assert res.out_of_order == 1
    assert store.stats().rejected["out_of_order"] == 2
    t, _ = await store.read_series(sid, 0, T0 + 100)
    assert t.tolist() == [T0 + 10, T0 + 20]


async def test_out_of_order_window(tmp_path: Path) -> None:
    s = await open_store(tmp_path, out_of_order_window_ms=1000)
    [sid] = await s.get_or_create_series([lab("m")])
    await s.append([sid] * 3, [T0 + 1000, T0 + 2000, T0 + 3000], [1.0, 2.0, 3.0])
    res = await s.append([sid] * 3, [T0 + 2500, T0 + 2001, T0 + 1999], [4.0, 5.0, 6.0])
    assert res.accepted == 2
    assert [(r.timestamp, r.reason) for r in res.rejected] == [(T0 + 1999, "too_old")]
    await s.flush(all=True)
    # Inside the window again, now overlapping data that lives in a segment.
    res = await s.append([sid] * 2, [T0 + 2200, T0 + 2000], [7.0, 8.0])
    assert res.accepted == 1 and res.duplicate_timestamp == 1  # 2000 holds 2.0 already
    res = await s.append([sid], [T0 + 2000], [2.0])
    assert res.accepted == 1 and res.duplicates == 1 and not res.rejected
    expected_t = [T0 + 1000, T0 + 2000, T0 + 2001, T0 + 2200, T0 + 2500, T0 + 3000]
    expected_v = [1.0, 2.0, 5.0, 7.0, 4.0, 3.0]
    t, v = await s.read_series(sid, 0, T0 + 10_000)
    assert (t.tolist(), v.tolist()) == (expected_t, expected_v)
    await s.flush(all=True)  # a second, overlapping segment
    await s.close()
    s = await open_store(tmp_path, out_of_order_window_ms=1000)
    t, v = await s.read_series(sid, 0, T0 + 10_000)
    assert (t.tolist(), v.tolist()) == (expected_t, expected_v)
    t, v = await s.read_series(sid, T0 + 1500, T0 + 2200)
    assert t.tolist() == expected_t[1:4]
    assert s.stats().segments == 2
    await s.close()


async def test_duplicates(store: Store) -> None:
    [sid] = await store.get_or_create_series([lab("m")])
    await store.append([sid, sid], [T0, T0 + 1], [1.0, 2.0])
    res = await store.append([sid, sid], [T0 + 1, T0 + 2], [2.0, 3.0])  # resend + new
    assert res.accepted == 2 and res.duplicates == 1 and not res.rejected
    res = await store.append([sid], [T0 + 2], [4.0])
    assert [(r.timestamp, r.reason) for r in res.rejected] == [(T0 + 2, "duplicate_timestamp")]
    # Inside one batch: exact repeats collapse; a conflicting repeat loses to the first.
    res = await store.append([sid] * 4, [T0 + 5, T0 + 5, T0 + 5, T0 + 6], [5.0, 5.0, 9.0, 6.0])
    assert res.accepted == 3 and res.duplicates == 1
    assert [(r.timestamp, r.reason) for r in res.rejected] == [(T0 + 5, "duplicate_timestamp")]
    # NaN payloads are compared by bits: the same NaN twice is a duplicate, not a conflict.
    res = await store.append([sid, sid], [T0 + 7, T0 + 7], [STALE_NAN, STALE_NAN])
    assert res.accepted == 2 and res.duplicates == 1
    t, v = await store.read_series(sid, 0, T0 + 100)
    assert t.tolist() == [T0, T0 + 1, T0 + 2, T0 + 5, T0 + 6, T0 + 7]
    assert bits(v[:5]) == bits([1.0, 2.0, 3.0, 5.0, 6.0])
    assert store.stats().head_samples == 6


async def test_staleness_and_special_bits_survive_flush_and_reopen(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    [sid] = await s.get_or_create_series([lab("m")])
    normal_nan = struct.unpack("<d", struct.pack("<Q", NORMAL_NAN_BITS))[0]
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF0000000000ABC))[0]
    vals = [1.5, STALE_NAN, normal_nan, -0.0, float("inf"), odd_nan]
    want = bits(vals)
    assert want[1] == STALE_NAN_BITS
    ts = [T0 + i for i in range(len(vals))]
    await s.append([sid] * len(vals), ts, vals)
    assert bits((await s.read_series(sid, 0, T0 + 99))[1]) == want  # head
    await s.close()
    s = await open_store(tmp_path)
    assert bits((await s.read_series(sid, 0, T0 + 99))[1]) == want  # replayed log
    await s.flush(all=True)
    assert bits((await s.read_series(sid, 0, T0 + 99))[1]) == want  # segments
    await s.close()
    s = await open_store(tmp_path)
    got = await s.select([Matcher.of("__name__", "=", "m")], 0, T0 + 99)
    assert bits(got[0].values) == want
    # The last value's bits persist too: resending it is an exact duplicate.
    assert (await s.append([sid], [ts[-1]], [odd_nan])).duplicates == 1
    await s.close()


async def test_group_commit(store: Store) -> None:
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(50)])
    before = store.stats().commits
    results = await asyncio.gather(
        *(store.append([sid] * 20, [T0 + k for k in range(20)], [1.0] * 20) for sid in ids)
    )
    assert all(r.accepted == 20 for r in results)
    commits = store.stats().commits - before
    assert 1 <= commits <= 5, commits
    assert store.stats().wal_rows == 50  # still one log row per batch


async def test_replay_exactly_once(tmp_path: Path) -> None:
    s = await open_store(tmp_path, block_size=8)
    ids = await s.get_or_create_series([lab("m", i=str(i)) for i in range(3)])
    expected: dict[int, list[int]] = {sid: [] for sid in ids}

    async def put(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            await s.append(ids, [T0 + k] * 3, [float(k)] * 3)
            for sid in ids:
                expected[sid].append(T0 + k)

    await put(0, 5)
    await s.close()  # closed without flushing
    s = await open_store(tmp_path, block_size=8)
    assert s.stats().replayed_samples == 15
    await put(5, 12)  # crosses block_size: the writer flushes those series itself
    await wait_until("the writer's own flush", lambda: s.stats().flushes)
    assert s.stats().segments > 0
    await put(12, 14)  # head data after the flush
    in_head = s.stats().head_samples
    assert 0 < in_head < 3 * 14
    await s.close()
    s = await open_store(tmp_path, block_size=8)
    for sid in ids:
        t, v = await s.read_series(sid, 0, T0 + 1000)
        assert t.tolist() == expected[sid]
        assert v.tolist() == [float(x - T0) for x in expected[sid]]
    assert s.stats().replayed_samples == in_head  # flushed samples are skipped
    await s.flush(all=True)
    assert s.stats().wal_rows == 0 and s.stats().head_samples == 0
    await s.close()
    s = await open_store(tmp_path, block_size=8)
    assert s.stats().replayed_samples == 0
    for sid in ids:
        assert (await s.read_series(sid, 0, T0 + 1000))[0].tolist() == expected[sid]
    await s.close()


async def test_log_trimmed_only_past_every_series(tmp_path: Path) -> None:
    s = await open_store(tmp_path, block_size=4)
    a, b = await s.get_or_create_series([lab("a"), lab("b")])
    await s.append([a, b], [T0, T0], [1.0, 1.0])  # one row shared by both series
    await s.append([a] * 4, [T0 + 1, T0 + 2, T0 + 3, T0 + 4], [2.0] * 4)  # a hits block_size
    await wait_until("the writer's own flush", lambda: s.stats().flushes)
    assert s.stats().flushes == 1
    # Row 1 still holds b's only sample, so it must survive the trim, and rows are
    # trimmed below the oldest still-needed one: row 2 stays too but is skipped on replay.
    assert s.stats().wal_rows == 2
    await s.close()
    s = await open_store(tmp_path, block_size=4)
    assert (await s.read_series(a, 0, T0 + 9))[0].size == 5
    assert (await s.read_series(b, 0, T0 + 9))[0].tolist() == [T0]
    assert s.stats().replayed_samples == 1
    await s.close()


async def test_age_based_periodic_flush(tmp_path: Path) -> None:
    options = StorageOptions(flush_interval_s=0.05, flush_age_ms=0)
    s = await Store.open(tmp_path / "db", options, codecs())
    [sid] = await s.get_or_create_series([lab("m")])
    await s.append([sid], [T0], [1.0])
    await wait_until("an empty head", lambda: s.stats().head_samples == 0)
    assert s.stats().head_samples == 0 and s.stats().segments == 1
    assert (await s.read_series(sid, 0, T0))[1].tolist() == [1.0]
    await s.close()


async def test_codec_rules(tmp_path: Path) -> None:
    s = await open_store(tmp_path, codec_rules=[("node_.*", "shift")])
    ids = await s.get_or_create_series([lab("node_cpu"), lab("xnode_cpu"), lab("up")])
    await s.append(ids, [T0] * 3, [1.0, 2.0, 3.0])
    await s.flush(all=True)
    await s.close()
    with sqlite3.connect(tmp_path / "tsagent.db") as conn:
        rows = dict(conn.execute("SELECT series_id, codec FROM segments").fetchall())
    conn.close()
    assert rows == {ids[0]: "shift", ids[1]: "raw", ids[2]: "raw"}
    s = await open_store(tmp_path)
    assert (await s.read_series(ids[0], 0, T0))[1].tolist() == [1.0]
    await s.close()


async def test_back_pressure(tmp_path: Path) -> None:
    s = await open_store(tmp_path, head_memory_limit_bytes=60 * 1024)
    ids = await s.get_or_create_series([lab("m", i=str(i)) for i in range(100)])
    sids = np.repeat(ids, 30)
    ts = T0 + np.tile(np.arange(30), 100)
    await s.append(sids, ts, np.ones(sids.size))  # under the limit when checked
    with pytest.raises(BackPressure):
        await s.append(ids, [T0 + 100] * 100, [1.0] * 100)
    # The store relieves the pressure by flushing; then appends go through again.
    await wait_until("an empty head", lambda: s.stats().head_samples == 0)
    res = await s.append(ids, [T0 + 100] * 100, [1.0] * 100)
    assert res.accepted == 100
    await s.close()


async def test_transaction_hook_shares_the_commit(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    seen: list[BatchRecord] = []

    def hook(conn: sqlite3.Connection, records: Sequence[BatchRecord]) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS audit_probe (seq INTEGER, source TEXT)")
        conn.executemany(
            "INSERT INTO audit_probe VALUES (?, ?)", [(r.seq, r.source) for r in records]
        )
        seen.extend(records)
        if any(r.source == "explode" for r in records):
            raise RuntimeError("hook failed")

    s.add_transaction_hook(hook)
    [sid] = await s.get_or_create_series([lab("m")])
    await s.append([sid], [T0], [1.0], source="remote_write", client="10.0.0.1")
    assert seen[-1].source == "remote_write" and seen[-1].client == "10.0.0.1"
    assert seen[-1].stored == 1 and seen[-1].seq is not None
    with pytest.raises(StoreFailed):
        await s.append([sid], [T0 + 1], [2.0], source="explode")
    with pytest.raises(StoreFailed):  # refuses writes after a failed commit
        await s.append([sid], [T0 + 2], [3.0])
    await s.close()
    s = await open_store(tmp_path)
    # The failed batch rolled back with its hook rows; the earlier one is intact.
    assert (await s.read_series(sid, 0, T0 + 9))[0].tolist() == [T0]
    with sqlite3.connect(tmp_path / "tsagent.db") as conn:
        assert conn.execute("SELECT source FROM audit_probe").fetchall() == [("remote_write",)]
    conn.close()
    await s.close()


async def test_migrations_recorded_once(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    await s.close()
    s = await open_store(tmp_path)
    await s.close()
    with sqlite3.connect(tmp_path / "tsagent.db") as conn:
        rows = conn.execute("SELECT name FROM _migrations ORDER BY name").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    from agent.storage.db import MIGRATIONS

    # Every registered migration exactly once (later features append their own).
    assert [r[0] for r in rows] == sorted(m.name for m in MIGRATIONS)
    assert [r[0] for r in rows][:5] == [
        "m001_series",
        "m002_wal",
        "m003_segments",
        "m004_audit",
        "m005_versions",
    ]
    assert mode == "wal"


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = await open_store(tmp_path)
    [sid] = await s.get_or_create_series([lab("m")])
    await s.close()
    with pytest.raises(Exception, match="closed"):
        await s.append([sid], [T0], [1.0])


async def test_reads_during_flushes_see_everything_once(tmp_path: Path) -> None:
    """Reads race flushes: acknowledged samples must never vanish or show up twice."""
    s = await open_store(tmp_path, block_size=5)
    ids = await s.get_or_create_series([lab("m", i=str(i)) for i in range(20)])
    acked = 0
    done = False

    async def writer() -> None:
        nonlocal acked, done
        for k in range(200):
            await s.append(ids, [T0 + k] * len(ids), [float(k)] * len(ids))
            acked = k + 1
            if k % 7 == 0:
                await s.flush()
            await asyncio.sleep(0)
        done = True

    async def reader() -> int:
        checks = 0
        while not done:
            floor = acked
            got = await s.select([Matcher.of("__name__", "=", "m")], T0, T0 + 10_000)
            for series in got:
                t = series.timestamps
                assert t.size >= floor
                assert t.tolist() == list(range(T0, T0 + t.size))
            checks += 1
        return checks

    _, checks = await asyncio.gather(writer(), reader())
    assert checks > 5 and s.stats().flushes > 5
    await s.close()


async def test_a_cancelled_writer_is_not_logged_as_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling the writer task (a loop shutting down) is not our fault: no ERROR
    line; requests still waiting are failed, not left hanging."""
    import logging

    s = await open_store(tmp_path)
    [sid] = await s.get_or_create_series([(("__name__", "m"),)])
    writer = s._writer
    assert writer is not None and writer._task is not None
    with caplog.at_level(logging.INFO):
        writer._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer._task
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("writer cancelled" in r.getMessage() for r in caplog.records)
    from agent.storage.errors import StorageError

    with pytest.raises(StorageError):
        await s.append([sid], [1000], [1.0])
    await s.close()
