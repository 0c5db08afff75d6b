"""Rollups: buckets against a numpy reference, late data, retention tiers, PromQL, HTTP, CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.model import STALE_NAN, STALE_NAN_BITS, Labels
from agent.query.values import Matrix, Vector
from agent.root import Agent
from agent.storage import StorageOptions, Store
from agent.storage.rollup import Buckets, RollupOptions, decode_block, encode_block
from agent.web.app import CONTEXT_KEY, make_app
from plugins.codecs import all_codecs
from tests.conftest import tsagent_cmd

MIN = 60_000
M5 = 300_000
H = 3_600_000
DAY = 24 * H
T0 = 1_699_999_200_000  # a multiple of 1h
NOW = T0 + 10 * DAY  # every block of the data below is closed by then
RES = (MIN, M5, H)


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def open_store(path: Path, **opts: Any) -> Store:
    opts.setdefault("retention_interval_s", 3600.0)
    opts.setdefault("flush_interval_s", 3600.0)
    return await Store.open(
        path / "tsagent.db", StorageOptions(**opts), {c.name: c for c in all_codecs()}
    )


def reference(t: np.ndarray, v: np.ndarray, res: int) -> dict[int, dict[str, float]]:
    """Buckets computed the slow, obvious way: one Python pass per bucket."""
    ok = v.view(np.uint64) != np.uint64(STALE_NAN_BITS)
    t, v = t[ok], v[ok]
    out: dict[int, dict[str, float]] = {}
    for b in sorted({int(x) // res * res for x in t.tolist()}):
        sel = (t >= b) & (t < b + res)
        vals = v[sel]
        real = vals[~np.isnan(vals)]
        out[b] = {
            "count": float(vals.size),
            "min": float(real.min()) if real.size else float("nan"),
            "max": float(real.max()) if real.size else float("nan"),
            "sum": float(np.sum(vals)),
            "first": float(vals[0]),
            "last": float(vals[-1]),
            "first_t": float(t[sel][0]),
            "last_t": float(t[sel][-1]),
        }
    return out


def as_dict(bk: Buckets) -> dict[int, dict[str, float]]:
    return {
        int(bk.start[i]): {
            "count": float(bk.count[i]),
            "min": float(bk.min[i]),
            "max": float(bk.max[i]),
            "sum": float(bk.sum[i]),
            "first": float(bk.first[i]),
            "last": float(bk.last[i]),
            "first_t": float(bk.first_t[i]),
            "last_t": float(bk.last_t[i]),
        }
        for i in range(len(bk))
    }


def assert_same(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]]) -> None:
    assert sorted(got) == sorted(want)
    for b, w in want.items():
        for key, value in w.items():
            np.testing.assert_allclose(got[b][key], value, rtol=1e-12, err_msg=f"{b} {key}")


def sample_data(seed: int = 1, hours: int = 6) -> tuple[np.ndarray, list[np.ndarray]]:
    """10 s scrapes with jitter, some exactly on minute boundaries; NaNs and stale markers."""
    rng = np.random.default_rng(seed)
    base = T0 + np.arange(0, hours * H, 10_000, dtype=np.int64)
    jitter = rng.integers(0, 900, base.size)
    jitter[::6] = 0  # every minute boundary is hit exactly
    t = base + jitter
    floats = rng.normal(50, 10, t.size).round(3)
    floats[rng.integers(0, t.size, 5)] = np.nan
    floats[rng.integers(0, t.size, 5)] = STALE_NAN
    ints = rng.integers(0, 1000, t.size).astype(np.float64)
    counter = np.cumsum(rng.integers(0, 20, t.size)).astype(np.float64)
    return t, [floats, ints, counter]


SERIES = [lab("gauge", job="a"), lab("gauge", job="b"), lab("requests_total", job="a")]


async def load_store(store: Store, t: np.ndarray, values: list[np.ndarray]) -> list[int]:
    ids = await store.get_or_create_series(SERIES)
    for sid, v in zip(ids, values, strict=True):
        res = await store.append(np.full(t.size, sid), t, v)
        assert res.accepted == t.size
    await store.flush(all=True)
    return ids


async def check_against_raw(store: Store, ids: list[int]) -> None:
    assert store.rollups is not None
    for res in RES:
        done = store.rollups.done_to[res]
        assert done is not None
        for sid in ids:
            t, v = await store.read_series(sid, 0, done - 1)
            sb = await store.rollups.stored(res, [sid], 0, done)
            assert_same(as_dict(sb.buckets), reference(t, v, res))


def test_block_encoding_round_trips() -> None:
    t = np.array([T0 + 5, T0 + 70_000, T0 + 71_000, T0 + 59 * MIN + 59_999], dtype=np.int64)
    v = np.array([1.5, np.nan, -np.inf, 2.0])
    from agent.storage.rollup import compute_buckets

    bk = compute_buckets(t, v, MIN)
    back = decode_block(encode_block(T0, MIN, bk), T0, MIN)
    for name in Buckets.FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(bk, name))
    assert back.integral.tolist() == [False, False, True]


async def test_rollups_equal_reference_and_survive_restart(tmp_path: Path) -> None:
    t, values = sample_data()
    store = await open_store(tmp_path)
    ids = await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    result = await manager.run_once(now_ms=NOW)
    assert result.blocks_rolled > 0 and result.buckets_written > 0
    await check_against_raw(store, ids)
    again = await manager.run_once(now_ms=NOW)
    assert again.blocks_rolled == 0 and again.buckets_written == 0  # nothing new
    await store.close()
    store = await open_store(tmp_path)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    assert manager.done_to == result.done_to
    assert not manager.dirty_spans(ids)
    await check_against_raw(store, ids)
    await store.close()


async def test_late_data_backfill_record_write_and_rollback_recompute(tmp_path: Path) -> None:
    t, values = sample_data(hours=3)
    store = await open_store(tmp_path)
    ids = await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    await manager.run_once(now_ms=NOW)

    # Backfill between existing samples (and a new, older series), then edit and roll back.
    late_t = T0 + H + np.arange(5, 600_000, 20_000, dtype=np.int64)
    before = await store.backfill(np.full(late_t.size, ids[0]), late_t, np.full(late_t.size, 1e6))
    assert before.accepted == late_t.size
    [old] = await store.get_or_create_series([lab("gauge", job="history")])
    hist_t = T0 - 3 * DAY + np.arange(0, 2 * H, 15_000, dtype=np.int64)
    await store.backfill(np.full(hist_t.size, old), hist_t, np.arange(hist_t.size, dtype=float))
    assert manager.dirty_spans([ids[0]]) and manager.dirty_spans([old])
    await manager.run_once(now_ms=NOW)
    assert not manager.dirty_spans([ids[0], old])
    await check_against_raw(store, [*ids, old])

    audit_id = await store.record_write(ids[1], int(t[100]), -5.0)
    await manager.run_once(now_ms=NOW)
    await check_against_raw(store, ids)
    await store.rollback(audit_id)
    await manager.run_once(now_ms=NOW)
    await check_against_raw(store, ids)
    await store.close()


async def test_out_of_order_window_appends_are_recomputed(tmp_path: Path) -> None:
    store = await open_store(tmp_path, out_of_order_window_ms=DAY)
    [sid] = await store.get_or_create_series([lab("ooo")])
    t = T0 + np.arange(0, 2 * H, 30_000, dtype=np.int64)
    await store.append(np.full(t.size, sid), t, np.ones(t.size))
    manager = await store.start_rollups(
        RollupOptions(resolutions_ms=RES, delay_ms=0), background=False
    )
    await manager.run_once(now_ms=T0 + 2 * H)  # the 1m rollup covers the first 2 hours
    assert manager.done_to[MIN] == T0 + 2 * H
    res = await store.append([sid], [T0 + 90 * MIN + 1], [7.0])  # out of order, inside the window
    assert res.accepted == 1
    assert manager.dirty_spans([sid]) == [(T0 + 90 * MIN + 1, T0 + 90 * MIN + 1)]
    await manager.run_once(now_ms=T0 + 2 * H)
    sb = await manager.stored(MIN, [sid], T0 + 90 * MIN, T0 + 91 * MIN)
    assert sb.buckets.count.tolist() == [3] and sb.buckets.max.tolist() == [7.0]
    await store.close()


async def test_crash_before_recompute_is_recovered_from_the_audit(tmp_path: Path) -> None:
    t, values = sample_data(hours=2)
    store = await open_store(tmp_path)
    ids = await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    await manager.run_once(now_ms=NOW)
    await manager.run_once(now_ms=NOW)  # the audit cursor lags one pass
    late = T0 + 30 * MIN + 7
    await store.backfill([ids[2]], [late], [123.0])
    await store.close()  # no pass: only the audit knows

    store = await open_store(tmp_path)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    assert manager.dirty_spans([ids[2]])
    await manager.run_once(now_ms=NOW)
    await check_against_raw(store, ids)
    sb = await manager.stored(MIN, [ids[2]], T0 + 30 * MIN, T0 + 31 * MIN)
    assert sb.buckets.min.tolist() == [123.0]  # the late sample is in its bucket
    await store.close()


async def test_retention_tiers(tmp_path: Path) -> None:
    t, values = sample_data(hours=6)
    store = await open_store(tmp_path, retention_ms=2 * DAY)
    ids = await load_store(store, t, values)
    opts = RollupOptions(
        resolutions_ms=RES, retention_ms={MIN: 9 * DAY + 21 * H}
    )  # 1m keeps the newest 3 hours
    manager = await store.start_rollups(opts, background=False)
    raw = {sid: await store.read_series(sid, 0, NOW) for sid in ids}
    await manager.run_once(now_ms=NOW)
    removed = await store.apply_retention(now_ms=NOW)  # raw retention: every raw sample goes
    assert removed.samples > 0
    for sid in ids:
        assert (await store.read_series(sid, 0, NOW))[0].size == 0
    # Rollups outlive raw data, and a rollback (all time) after it rewrites nothing.
    await store.rollback(before_ms=0)
    await manager.run_once(now_ms=NOW)
    cut = NOW - opts.retention_ms[MIN]
    for sid in ids:
        t_raw, v_raw = raw[sid]
        for res in (M5, H):
            sb = await manager.stored(res, [sid], 0, NOW)
            assert_same(as_dict(sb.buckets), reference(t_raw, v_raw, res))
        sb = await manager.stored(MIN, [sid], 0, NOW)
        want = {b: w for b, w in reference(t_raw, v_raw, MIN).items() if b + MIN > cut}
        assert want and len(want) < 6 * 60
        assert_same(as_dict(sb.buckets), want)
    await store.close()


# --- PromQL -----------------------------------------------------------------------------------


QUERIES = [
    "max_over_time(gauge[1h])",
    "min_over_time(gauge[5m])",
    "count_over_time(gauge[1h])",
    "last_over_time(requests_total[5m])",
    "sum_over_time(requests_total[1h])",
    "avg_over_time(gauge{job='b'}[1h])",
    "sum by (job) (max_over_time({__name__=~'gauge|requests_total', job='b'}[2h]))",
    "sum_over_time(gauge[1h])",  # float gauge: falls back to raw where not provable
]


async def evaluate(agent: Agent, expr: str, start: int, end: int, step: int) -> Any:
    return await agent.queries.range(expr, start, end, step, cache="off")


def same_result(a: Any, b: Any) -> None:
    assert isinstance(a.result, Matrix) and isinstance(b.result, Matrix)
    assert [s.labels for s in a.result.series] == [s.labels for s in b.result.series]
    for x, y in zip(a.result.series, b.result.series, strict=True):
        np.testing.assert_array_equal(x.timestamps, y.timestamps)
        np.testing.assert_array_equal(x.values, y.values)  # bit-for-bit, NaN included


@pytest.mark.parametrize("expr", QUERIES)
async def test_promql_uses_rollups_only_when_identical(
    tmp_path: Path, expr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t, values = sample_data(hours=8)
    store = await open_store(tmp_path)
    await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    agent = Agent(store)
    await manager.run_once(now_ms=T0 + 6 * H + 2 * MIN)  # 1m/5m done to +6h/+5h, not 1h
    calls: list[int] = []
    real = manager.stored

    async def spy(res: int, *args: Any) -> Any:
        calls.append(res)
        return await real(res, *args)

    monkeypatch.setattr(manager, "stored", spy)
    for start, end, step in ((T0 + H, T0 + 8 * H, H), (T0, T0 + 8 * H, 5 * MIN)):
        with_rollups = await evaluate(agent, expr, start, end, step)
        agent.queries.rollups = None
        raw = await evaluate(agent, expr, start, end, step)
        agent.queries.rollups = manager
        same_result(with_rollups, raw)
        assert not with_rollups.result.annotations.infos
    assert calls  # the rollup path answered some steps (the rest came from raw)
    await agent.close()
    await store.close()


async def test_promql_dirty_buckets_go_to_raw(tmp_path: Path) -> None:
    t, values = sample_data(hours=3)
    store = await open_store(tmp_path)
    ids = await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    agent = Agent(store)
    await manager.run_once(now_ms=NOW)
    await store.backfill([ids[0]], [T0 + 90 * MIN + 3], [1e9])  # not recomputed yet
    expr = "max_over_time(gauge[1h])"
    got = await evaluate(agent, expr, T0 + H, T0 + 3 * H, H)
    agent.queries.rollups = None
    want = await evaluate(agent, expr, T0 + H, T0 + 3 * H, H)
    same_result(got, want)
    assert 1e9 in got.result.series[0].values.tolist()
    await agent.close()
    await store.close()


async def test_instant_query_at_aligned_time_uses_rollup(tmp_path: Path) -> None:
    t, values = sample_data(hours=3)
    store = await open_store(tmp_path)
    await load_store(store, t, values)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    agent = Agent(store)
    await manager.run_once(now_ms=NOW)
    for expr in ("max_over_time(gauge[1h])", "count_over_time(requests_total[2h])"):
        got = await agent.queries.instant(expr, T0 + 2 * H, cache="off")
        agent.queries.rollups = None
        want = await agent.queries.instant(expr, T0 + 2 * H, cache="off")
        agent.queries.rollups = manager
        assert isinstance(got.result, Vector) and isinstance(want.result, Vector)
        assert [(s.labels, s.v) for s in got.result.samples] == [
            (s.labels, s.v) for s in want.result.samples
        ]
    await agent.close()
    await store.close()


# --- HTTP -----------------------------------------------------------------------------------------


async def http_client(aiohttp_client: Any, make_config: Callable[..., Any]) -> tuple[Any, Store]:
    config, host = make_config(
        "storage:\n  rollups:\n    interval: 1h\n    resolutions: [1m, 5m, 1h]\n"
    )
    client = await aiohttp_client(make_app(config, host))
    store: Store = client.app[CONTEXT_KEY].require_store()
    return client, store


async def test_http_rollup_and_raw_endpoints(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    client, store = await http_client(aiohttp_client, make_config)
    t, values = sample_data(hours=3)
    ids = await load_store(store, t, values)
    assert store.rollups is not None
    whole = {"metric_name": "gauge", "start_time": str(T0 / 1000), "window": "10m"}
    whole["end_time"] = str((T0 + 3 * H) / 1000)
    before = await (await client.get("/query/rollup", params=whole)).json()
    await store.rollups.run_once(now_ms=T0 + 2 * H + 2 * MIN)  # the third hour stays raw
    after = await (await client.get("/query/rollup", params=whole)).json()
    assert before == after and len(after["data"]["series"]) == 2  # no pass yet: all raw
    start, end = T0 + 30 * MIN, T0 + 3 * H - 1
    cases = (("5m", M5, "rollup:5m"), ("10m", 2 * M5, "rollup:5m"), ("7m", 7 * MIN, "rollup:1m"))
    for window, step, source in (*cases, ("90s", 90_000, "raw")):
        resp = await client.get(
            "/query/rollup",
            params={
                "metric_name": "gauge",
                "match[]": '{job="a"}',
                "start_time": str(start / 1000),
                "end_time": "2023-11-15T01:59:59.999Z",
                "window": window,
            },
        )
        assert resp.status == 200, await resp.text()
        data = (await resp.json())["data"]
        assert data["source"] == source
        [series] = data["series"]
        assert series["labels"] == {"__name__": "gauge", "job": "a"}
        raw_t, raw_v = await store.read_series(ids[0], 0, NOW)
        want = reference(raw_t, raw_v, step)
        lo, hi = start // step * step, end // step * step + step
        want = {b: w for b, w in want.items() if lo <= b < hi}
        got = {round(b["timestamp"] * 1000): b for b in series["buckets"]}
        assert sorted(got) == sorted(want)
        for b, w in want.items():
            g = got[b]
            assert g["count"] == w["count"]
            for key in ("min", "max", "sum", "last"):
                if np.isnan(w[key]):
                    assert g[key] == "NaN"
                else:
                    np.testing.assert_allclose(g[key], w[key], rtol=1e-12)
            if not np.isnan(w["sum"]):
                np.testing.assert_allclose(g["avg"], w["sum"] / w["count"], rtol=1e-12)

    resp = await client.get(
        "/query/raw",
        params={
            "metric_name": "requests_total",
            "start_time": str(T0 / 1000),
            "end_time": str((T0 + 10 * MIN) / 1000),
        },
    )
    assert resp.status == 200
    [series] = (await resp.json())["data"]["series"]
    sel = (t >= T0) & (t <= T0 + 10 * MIN)
    assert [s[0] for s in series["samples"]] == (t[sel] / 1000).tolist()
    assert [s[1] for s in series["samples"]] == values[2][sel].tolist()

    bad = await client.get("/query/rollup", params={"start_time": "x"})
    assert bad.status == 400


async def test_http_query_range_resolution_parameter(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    client, store = await http_client(aiohttp_client, make_config)
    t, values = sample_data(hours=3)
    await load_store(store, t, values)
    assert store.rollups is not None
    await store.rollups.run_once(now_ms=NOW)
    params = {
        "query": "max_over_time(gauge[10m])",
        "start": str((T0 + H + 7_000) / 1000),  # unaligned: only approximate is possible
        "end": str((T0 + 2 * H + 7_000) / 1000),
        "step": "600",
        "resolution": "5m",
    }
    resp = await client.get("/api/v1/query_range", params=params)
    body = await resp.json()
    assert resp.status == 200, body
    assert any("5m rollup" in info for info in body["infos"])
    raw_t, raw_v = await store.read_series(store.series_id(SERIES[0]) or 0, 0, NOW)
    ref = reference(raw_t, raw_v, M5)
    first = next(s for s in body["data"]["result"] if s["metric"] == {"job": "a"})
    ts, val = first["values"][0]
    e = round(ts * 1000)
    want = max(ref[b]["max"] for b in ref if e - 10 * MIN <= b < e)
    assert float(val) == want
    params["resolution"] = "2m"
    resp = await client.get("/api/v1/query_range", params=params)
    assert resp.status == 400
    assert "not a rollup resolution" in (await resp.json())["error"]


# --- CLI ------------------------------------------------------------------------------------------


async def test_cli_rollup_once(tmp_path: Path, subprocess_env: dict[str, Any]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = await open_store(data)
    t, values = sample_data(hours=2)
    await load_store(store, t, values)
    cmd = [*tsagent_cmd(), "rollup", "--once", "--data-dir", str(data), "--json"]
    locked = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert locked.returncode == 1
    assert "in use by another process" in locked.stderr and "daemon" in locked.stderr
    await store.close()

    done = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The default config rolls up 1h buckets only: 3 series x 2 hours.
    assert report["blocks_rolled"] > 0 and report["buckets_written"] >= 3 * 2
    store = await open_store(data)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    # The default config builds 1h buckets only (1m and 5m are opt-in).
    assert manager.done_to[H] is not None
    for labels in SERIES:
        sid = store.series_id(labels) or 0
        raw_t, raw_v = await store.read_series(sid, 0, manager.done_to[H] - 1)
        sb = await manager.stored(H, [sid], 0, manager.done_to[H])
        assert_same(as_dict(sb.buckets), reference(raw_t, raw_v, H))
        assert not len((await manager.stored(MIN, [sid], 0, manager.done_to[MIN] or 0)).buckets)
    await store.close()
