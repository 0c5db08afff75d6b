"""Retention: deletion by age (global and per metric), log replay, space, audit, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli import _overrides, build_parser
from agent.config import load_config
from agent.model import STALE_NAN_BITS, Labels
from agent.storage import StorageError, Store
from agent.storage.audit import verify_chain
from tests.conftest import ROOT, open_store, tsagent_cmd, wait_until

T = 1_700_000_000_000
H = 3_600_000
MIN10 = 600_000
ALL = (-(2**63), 2**63 - 1)


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def values_for(ts: np.ndarray) -> np.ndarray:
    """Distinct values per timestamp, with staleness markers mixed in (bit-exactness)."""
    bits = (ts // 1000).astype(np.float64).view(np.uint64).copy()
    bits[(ts // 1000) % 7 == 3] = STALE_NAN_BITS
    return bits.view(np.float64)


def grid(start: int, end: int, step: int = MIN10) -> np.ndarray:
    return np.arange(start, end + 1, step, dtype=np.int64)


def assert_exact(got: tuple[np.ndarray, np.ndarray], ts: np.ndarray) -> None:
    assert got[0].tolist() == ts.tolist()
    assert got[1].view(np.uint64).tolist() == values_for(ts).view(np.uint64).tolist()


def db_query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path / "tsagent.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("codec", ["raw", "gorilla", "zstd-xor", "delta-rle"])
async def test_global_retention_deletes_exactly_the_old_samples(tmp_path: Path, codec: str) -> None:
    now = T + 24 * H
    cutoff = now - 10 * H  # == T + 14h, on the 10-minute grid: that sample is kept
    store = await open_store(
        tmp_path, retention_ms=10 * H, block_size=100, default_codec=codec, all_codecs=True
    )
    flushed, head_mixed, head_old, head_new = await store.get_or_create_series(
        [lab("flushed"), lab("head_mixed"), lab("head_old"), lab("head_new")]
    )
    ts_f = grid(T, T + 24 * H)  # 145 samples -> 2 blocks, the second straddles the cutoff
    await store.append([flushed] * ts_f.size, ts_f, values_for(ts_f))
    await store.flush(all=True)
    # Head-only series (fewer samples than block_size), appended in shared batches so
    # one log row holds samples of several series.
    ts_m = grid(T + 10 * H, T + 20 * H)
    ts_o = grid(T, T + 2 * H)
    ts_n = grid(T + 15 * H, T + 16 * H)
    ids = np.concatenate([[head_mixed] * ts_m.size, [head_old] * ts_o.size, [head_new] * ts_n.size])
    tss = np.concatenate([ts_m, ts_o, ts_n])
    res = await store.append(ids, tss, values_for(tss))
    assert res.accepted == tss.size
    straddling = db_query(
        tmp_path, "SELECT count(*) FROM segments WHERE min_t < ? AND max_t >= ?", cutoff, cutoff
    )[0][0]
    assert straddling == 1
    segments_before = store.stats().segments

    result = await store.apply_retention(now_ms=now)

    keep = {
        sid: t[t >= cutoff] for sid, t in [(flushed, ts_f), (head_mixed, ts_m), (head_new, ts_n)]
    }
    expected_deleted = int((ts_f < cutoff).sum() + (ts_m < cutoff).sum() + ts_o.size)
    assert result.samples == expected_deleted
    assert result.series == 3
    assert result.head_samples == int((ts_m < cutoff).sum()) + ts_o.size
    assert result.segments_trimmed == 1
    assert result.segments_deleted == segments_before - store.stats().segments > 0
    assert (result.min_t, result.max_t) == (T, cutoff - MIN10)
    assert result.by_metric == {
        "flushed": int((ts_f < cutoff).sum()),
        "head_mixed": int((ts_m < cutoff).sum()),
        "head_old": ts_o.size,
    }
    assert db_query(tmp_path, "SELECT count(*) FROM segments WHERE min_t < ?", cutoff) == [(0,)]

    async def check(s: Store) -> None:
        for sid, t in keep.items():
            assert_exact(await s.read_series(sid, *ALL), t)
        assert_exact(await s.read_series(head_old, *ALL), ts_o[:0])

    await check(store)
    assert store.stats().head_samples == keep[head_mixed].size + keep[head_new].size
    # A second pass at the same instant finds nothing.
    assert (await store.apply_retention(now_ms=now)).samples == 0
    await store.close()
    # Restart: the log replays into the head, and what retention deleted stays deleted.
    store = await open_store(tmp_path, block_size=100, default_codec=codec, all_codecs=True)
    await check(store)
    assert store.stats().replayed_samples == keep[head_mixed].size + keep[head_new].size
    await store.flush(all=True)
    await store.close()
    store = await open_store(tmp_path, default_codec=codec, all_codecs=True)
    await check(store)
    await store.close()


async def test_per_metric_rules_first_match_wins(tmp_path: Path) -> None:
    now = T + 48 * H
    store = await open_store(
        tmp_path,
        retention_ms=24 * H,
        retention_rules=[("keep_.*", 0), ("short|keep_short", 2 * H), ("sh.*", 12 * H)],
        block_size=50,
        all_codecs=True,
    )
    names = ["keep_me", "keep_short", "short", "shorter", "other"]
    ids = await store.get_or_create_series([lab(n, x="1") for n in names])
    nameless = (await store.get_or_create_series([(("job", "x"),)]))[0]
    ts = grid(T, now, 30 * MIN10)
    for sid in [*ids, nameless]:
        await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)
    backfill = np.array([0, 1000, 2000], dtype=np.int64)  # 1970, into a kept-forever metric
    [old] = await store.get_or_create_series([lab("keep_me", x="1970")])
    assert (await store.append([old] * 3, backfill, values_for(backfill))).accepted == 3

    result = await store.apply_retention(now_ms=now)

    retention = {"keep_me": None, "keep_short": None, "short": 2, "shorter": 12, "other": 24}
    deleted = 0
    for name, sid in zip(names, ids, strict=True):
        hours = retention[name]
        want = ts if hours is None else ts[ts >= now - hours * H]
        deleted += ts.size - want.size
        assert_exact(await store.read_series(sid, *ALL), want)
    want = ts[ts >= now - 24 * H]  # no __name__: the default applies
    deleted += ts.size - want.size
    assert_exact(await store.read_series(nameless, *ALL), want)
    assert_exact(await store.read_series(old, *ALL), backfill)
    assert result.samples == deleted
    assert set(result.by_metric) == {"short", "shorter", "other", ""}
    await store.close()


async def test_backfill_of_1970_with_retention_zero(tmp_path: Path) -> None:
    store = await open_store(tmp_path, retention_ms=0, block_size=4, all_codecs=True)
    [sid] = await store.get_or_create_series([lab("history")])
    ts = np.arange(0, 10_000, 1000, dtype=np.int64)
    res = await store.append([sid] * ts.size, ts, values_for(ts))
    assert res.accepted == ts.size and not res.rejected
    await store.flush(all=True)
    await store.append([sid] * 2, [10_000, 11_000], values_for(np.array([10_000, 11_000])))
    result = await store.apply_retention()  # wall clock: 1970 is very old, and still kept
    assert result.samples == 0 and result.transactions == 0
    await store.close()
    store = await open_store(tmp_path, all_codecs=True)
    assert_exact(await store.read_series(sid, *ALL), np.arange(0, 12_000, 1000))
    await store.close()


async def test_old_samples_are_accepted_with_retention_and_survive_until_a_pass(
    tmp_path: Path,
) -> None:
    """No age check on arrival; a backfill after a pass is not hidden on replay either."""
    store = await open_store(tmp_path, retention_ms=H, all_codecs=True)
    a, b = await store.get_or_create_series([lab("a"), lab("b")])
    await store.append([a], [T], [1.0])
    assert (await store.apply_retention(now_ms=T + 2 * H)).samples == 1
    res = await store.append([b, b], [T - H, T], values_for(np.array([T - H, T])))
    assert res.accepted == 2 and not res.rejected
    await store.close()
    store = await open_store(tmp_path, retention_ms=H, all_codecs=True)
    assert_exact(await store.read_series(b, *ALL), np.array([T - H, T]))
    assert (await store.read_series(a, *ALL))[0].size == 0
    await store.close()


async def test_incremental_vacuum_returns_space(tmp_path: Path) -> None:
    store = await open_store(tmp_path, retention_ms=H, block_size=500, all_codecs=True)
    ids = await store.get_or_create_series([lab("big", i=str(i)) for i in range(40)])
    ts = grid(T, T + 5000 * 1000, 1000)
    for sid in ids:
        await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)
    assert db_query(tmp_path, "PRAGMA auto_vacuum") == [(2,)]  # incremental, on a new file
    pages_before = db_query(tmp_path, "PRAGMA page_count")[0][0]
    free_before = db_query(tmp_path, "PRAGMA freelist_count")[0][0]  # the flushed log's pages

    result = await store.apply_retention(now_ms=T + 5000 * 1000 + H - 60_000)

    assert result.samples == 40 * (ts.size - 61)
    assert result.pages_freed is not None and result.pages_freed > 0.8 * pages_before
    data_pages = 40 * (ts.size - 61) * 16 // 4096
    assert result.pages_freed >= free_before + data_pages
    assert result.bytes_freed == result.pages_freed * 4096
    assert db_query(tmp_path, "PRAGMA freelist_count") == [(0,)]
    await store.close()
    size_after = os.path.getsize(tmp_path / "tsagent.db")
    assert size_after < 0.2 * pages_before * 4096


async def test_old_database_without_auto_vacuum_is_converted_by_vacuum(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "tsagent.db")
    conn.execute("CREATE TABLE predates_auto_vacuum (x)")  # fixes auto_vacuum=NONE
    conn.close()
    store = await open_store(tmp_path, retention_ms=H, block_size=100, all_codecs=True)
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(20)])
    ts = grid(T, T + 4000 * 1000, 1000)
    for sid in ids:
        await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)
    result = await store.apply_retention(now_ms=T + 2000 * 1000 + H)
    assert result.samples == 20 * 2000 and result.pages_freed is None
    free = db_query(tmp_path, "PRAGMA freelist_count")[0][0]
    assert free > 20 * 2000 * 16 // 4096  # reusable, but not handed back
    assert await store.vacuum() == 2
    assert db_query(tmp_path, "PRAGMA freelist_count") == [(0,)]
    assert_exact(await store.read_series(ids[0], *ALL), ts[ts >= T + 2000 * 1000])
    result = await store.apply_retention(now_ms=T + 3000 * 1000 + H)
    assert result.pages_freed is not None and result.pages_freed > 0
    await store.close()


async def test_deletion_is_audited(tmp_path: Path) -> None:
    store = await open_store(
        tmp_path, retention_ms=H, block_size=10, flush_chunk_series=2, all_codecs=True
    )
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(3)])
    ts = grid(T, T + 3 * H)
    for sid in ids:
        await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)
    assert (await store.apply_retention(now_ms=T)).audit_ids == []  # nothing to delete

    result = await store.apply_retention(now_ms=T + 3 * H + H // 2)

    assert len(result.audit_ids) == 2  # two chunks of at most two series, one row each
    rows = db_query(
        tmp_path,
        "SELECT id, op, source, user, sample_count, series_count, min_t, max_t,"
        " length(content_hash), detail FROM audit WHERE op = 'retention' ORDER BY id",
    )
    assert [r[0] for r in rows] == result.audit_ids
    assert sum(r[4] for r in rows) == result.samples == 3 * int((ts < T + 2 * H + H // 2).sum())
    assert [r[5] for r in rows] == [2, 1]
    assert all(r[1:4] == ("retention", "retention", None) for r in rows)
    assert all((r[6], r[7]) == (T, T + 2 * H + 2 * MIN10) for r in rows)
    assert all(r[8] == 32 for r in rows)
    detail = json.loads(rows[0][9])
    assert detail["cutoffs"] == [T + 2 * H + H // 2]
    conn = sqlite3.connect(tmp_path / "tsagent.db")
    try:
        assert verify_chain(conn).ok
    finally:
        conn.close()
    await store.close()


async def test_content_hash_depends_on_what_was_deleted(tmp_path: Path) -> None:
    hashes = []
    for i, value in enumerate([1.0, 2.0, 1.0]):
        d = tmp_path / str(i)
        d.mkdir()
        store = await open_store(d, retention_ms=H, all_codecs=True)
        [sid] = await store.get_or_create_series([lab("m")])
        await store.append([sid, sid], [T, T + 1], [value, 5.0])
        result = await store.apply_retention(now_ms=T + 2 * H)
        hashes.append(db_query(d, "SELECT content_hash FROM audit WHERE id = ?", *result.audit_ids))
        await store.close()
    assert hashes[0] == hashes[2] != hashes[1]


async def test_background_task_enforces_retention(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    store = await open_store(tmp_path, retention_ms=H, retention_interval_s=0.05, all_codecs=True)
    [sid] = await store.get_or_create_series([lab("m")])
    ts = grid(now - 3 * H - 5 * 60_000, now)  # no sample within 5 minutes of the cutoff
    await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)

    async def trimmed() -> bool:
        got = (await store.read_series(sid, *ALL))[0]
        return bool(got.size) and got[0] >= now - H

    await wait_until("the background retention pass", trimmed, 10, 0.05)
    assert_exact(await store.read_series(sid, *ALL), ts[ts >= now - H])
    await store.close()


async def test_invalid_retention_options(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="retention rule regex"):
        await open_store(tmp_path, retention_rules=[("(", H)], all_codecs=True)
    with pytest.raises(StorageError, match="retention must be >= 0"):
        await open_store(tmp_path, retention_ms=-1, all_codecs=True)
    with pytest.raises(StorageError, match="retention_interval_s"):
        await open_store(tmp_path, retention_interval_s=0, all_codecs=True)
    store = await open_store(tmp_path, all_codecs=True)
    await store.close()


def test_retention_flag_and_config_reach_the_store_options(tmp_path: Path) -> None:
    from agent.configured_store import storage_options
    from agent.context import AgentContext
    from agent.metrics import AgentMetrics
    from agent.plugins import get_plugin_manager

    args = build_parser().parse_args(["run", "--retention", "36h", "--data-dir", str(tmp_path)])
    cfg_file = tmp_path / "tsagent.yaml"
    cfg_file.write_text(
        "storage:\n"
        "  retention: 7d\n"
        "  retention_interval: 90s\n"
        "  retention_rules:\n"
        "    - {match: 'debug_.*', retention: 1h}\n"
        "    - {match: 'audit_.*', retention: 0}\n"
    )
    config = load_config(cfg_file, overrides=_overrides(args))
    host = get_plugin_manager()
    ctx = AgentContext(config=config, plugins=host, metrics=AgentMetrics())
    for codecs in host.pm.hook.register_codecs():
        for codec in codecs or []:
            ctx.codecs[codec.name] = codec
    opts = storage_options(ctx)
    assert opts.retention_ms == 36 * H  # the flag wins over the file
    assert opts.retention_rules == [("debug_.*", H), ("audit_.*", 0)]
    assert opts.retention_interval_s == 90.0


async def _seed(data_dir: Path, now: int) -> tuple[np.ndarray, list[int]]:
    store = await open_store(data_dir, block_size=50, all_codecs=True)
    ids = await store.get_or_create_series([lab("cpu"), lab("debug_x")])
    ts = grid(now - 5 * H, now - 60_000)
    for sid in ids:
        await store.append([sid] * ts.size, ts, values_for(ts))
    await store.flush(all=True)
    await store.close()
    return ts, ids


def test_cli_retention_once(tmp_path: Path, subprocess_env: dict[str, Any]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    now = time.time_ns() // 1_000_000
    ts, ids = asyncio.run(_seed(data_dir, now))
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("storage:\n  retention_rules:\n    - {match: 'debug_.*', retention: 1h}\n")
    cmd = [*tsagent_cmd(), "retention", "--once", "-c", str(cfg), "--data-dir", str(data_dir)]
    proc = subprocess.run(
        [*cmd, "--retention", "3h", "--json"],
        cwd=ROOT,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    started = report["now_ms"]
    cpu_gone = int((ts < started - 3 * H).sum())
    debug_gone = int((ts < started - H).sum())
    assert report["by_metric"] == {"cpu": cpu_gone, "debug_x": debug_gone}
    assert report["samples"] == cpu_gone + debug_gone
    assert report["auto_vacuum"] == "incremental" and report["bytes_freed"] >= 0
    assert len(report["audit_ids"]) == 1

    async def check() -> None:
        store = await open_store(data_dir, all_codecs=True)
        try:
            assert_exact(await store.read_series(ids[0], *ALL), ts[ts >= started - 3 * H])
            assert_exact(await store.read_series(ids[1], *ALL), ts[ts >= started - H])
            # While a store owns the database, the CLI refuses instead of racing it.
            locked = subprocess.run(
                cmd, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60
            )
            assert locked.returncode == 1
            assert "in use by another process" in locked.stderr
        finally:
            await store.close()

    asyncio.run(check())
    # Human-readable output; nothing left to delete at the same retention.
    proc = subprocess.run(
        [*cmd, "--retention", "3h"],
        cwd=ROOT,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deleted 0 samples of 0 series" in proc.stdout
    assert str(data_dir / "tsagent.db") in proc.stdout


def test_cli_retention_requires_once() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retention"])


async def test_expired_points_lose_their_versions_and_rollback_does_not_restore_them(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, retention_ms=H, all_codecs=True)
    [sid] = await store.get_or_create_series([lab("edited")])
    await store.append([sid, sid], [T, T + 2 * H], [1.0, 5.0])
    write_id = await store.record_write(sid, T, 2.0, user_id="alice")
    await store.record_write(sid, T + 2 * H, 6.0, user_id="alice")
    assert db_query(tmp_path, "SELECT count(*) FROM versions") == [(2,)]

    result = await store.apply_retention(now_ms=T + 2 * H + H // 2)

    assert result.samples == 1 and result.versions_deleted == 1
    assert db_query(tmp_path, "SELECT t FROM versions") == [(T + 2 * H,)]
    await store.rollback(write_id)
    got = await store.read_series(sid, *ALL)
    assert got[0].tolist() == [T + 2 * H] and got[1].tolist() == [5.0]
    await store.close()
