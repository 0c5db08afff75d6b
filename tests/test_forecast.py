"""Forecasts: the slope and season are recovered, intervals cover about as often as
they claim, and ``/api/v1/forecast`` and ``/anomaly/detect`` answer over real data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from agent.analytics.forecast import (
    forecast_series,
    holt_winters_forecast,
    linear_forecast,
    t_quantile,
)
from agent.model import make_labels
from agent.query.errors import BadDataError
from agent.web.app import CONTEXT_KEY, make_app

T0 = 1_700_000_000_000
STEP = 300_000  # 5 minutes
SEASON = 288  # a day of 5-minute steps


def test_t_quantile_matches_tables() -> None:
    for dof, p, table in (
        (5, 0.975, 2.571),
        (10, 0.975, 2.228),
        (30, 0.95, 1.697),
        (100, 0.975, 1.984),
    ):
        assert t_quantile(p, dof) == pytest.approx(table, abs=5e-3)


def test_linear_recovers_the_slope_and_its_interval_covers_about_95_percent() -> None:
    inside = total = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        t = T0 + np.arange(120, dtype=np.int64) * 60_000
        y = 5 + 0.02 * (t - T0) / 1000 + rng.normal(0, 2, t.size)
        future = t[-1] + np.arange(1, 31, dtype=np.int64) * 60_000
        fc = linear_forecast(t, y, future, level=0.95)
        assert fc.model["slope_per_second"] == pytest.approx(0.02, abs=0.002)
        truth = 5 + 0.02 * (future - T0) / 1000 + rng.normal(0, 2, future.size)
        inside += int(((truth >= fc.lower) & (truth <= fc.upper)).sum())
        total += future.size
        width = fc.upper - fc.lower
        assert (np.diff(width) > 0).all()  # further out, less certain
    assert 0.90 <= inside / total <= 0.99


def seasonal_series(seed: int, days: int = 4) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(days * SEASON, dtype=np.int64) * STEP

    def truth(tt: np.ndarray) -> np.ndarray:
        k = (tt - T0) // STEP
        return 100 + 0.05 * k + 20 * np.sin(2 * np.pi * k / SEASON)

    return t, (truth, truth(t) + rng.normal(0, 1.5, t.size), rng)


def test_holt_winters_recovers_trend_and_season() -> None:
    inside = total = 0
    for seed in range(6):
        t, (truth, y, rng) = seasonal_series(seed)
        future = t[-1] + np.arange(1, SEASON + 1, dtype=np.int64) * STEP
        fc = holt_winters_forecast(t, y, future, SEASON)
        assert fc.model["trend_per_step"] == pytest.approx(0.05, abs=0.02)
        expected = truth(future)
        assert np.abs(fc.mean - expected).mean() < 1.5  # a whole day ahead, peaks in place
        assert np.corrcoef(fc.mean, expected)[0, 1] > 0.99  # the season's shape and phase
        actual = expected + rng.normal(0, 1.5, future.size)
        inside += int(((actual >= fc.lower) & (actual <= fc.upper)).sum())
        total += future.size
    assert 0.85 <= inside / total <= 1.0
    # a line cannot follow the season: Holt-Winters must beat it clearly
    t, (truth, y, _rng) = seasonal_series(9)
    lin = forecast_series(t, y, step_ms=STEP, horizon_ms=SEASON * STEP)
    hw = forecast_series(
        t, y, step_ms=STEP, horizon_ms=SEASON * STEP, method="holt_winters", season_ms=SEASON * STEP
    )
    err = lambda f: np.abs(f.mean - truth(f.timestamps)).mean()  # noqa: E731
    assert err(hw) * 5 < err(lin)


def test_forecast_series_fills_gaps_and_checks_its_input() -> None:
    t, (_truth, y, _rng) = seasonal_series(1, days=3)
    keep = np.ones(t.size, dtype=bool)
    keep[100:110] = False  # a range result skips steps with no sample
    fc = forecast_series(
        t[keep],
        y[keep],
        step_ms=STEP,
        horizon_ms=3600_000,
        method="holt_winters",
        season_ms=SEASON * STEP,
    )
    assert fc.timestamps[0] == t[-1] + STEP and fc.timestamps.size == 12
    with pytest.raises(BadDataError, match="two seasons"):
        forecast_series(
            t[:300],
            y[:300],
            step_ms=STEP,
            horizon_ms=STEP,
            method="holt_winters",
            season_ms=SEASON * STEP,
        )
    with pytest.raises(BadDataError, match="season"):
        forecast_series(t, y, step_ms=STEP, horizon_ms=STEP, method="holt_winters")
    with pytest.raises(BadDataError, match="whole number"):
        forecast_series(
            t, y, step_ms=STEP, horizon_ms=STEP, method="holt_winters", season_ms=STEP * 2 + 1
        )
    with pytest.raises(BadDataError, match="level"):
        linear_forecast(t, y, t[-1:] + STEP, level=1.5)


# --- HTTP -----------------------------------------------------------------------------------------


async def app_with(
    aiohttp_client: Any, make_config: Callable[..., Any], rows: dict[str, Any]
) -> Any:
    config, host = make_config()
    client = await aiohttp_client(make_app(config, host))
    store = client.app[CONTEXT_KEY].require_store()
    for labels, (t, v) in rows.items():
        [sid] = await store.get_or_create_series([make_labels(dict(labels))])
        await store.append(np.full(len(t), sid), t, v)
    return client


async def test_forecast_endpoint(aiohttp_client: Any, make_config: Callable[..., Any]) -> None:
    rng = np.random.default_rng(0)
    t = T0 + np.arange(240, dtype=np.int64) * 15_000
    rows = {
        (("__name__", "disk_used"), ("dev", "a")): (
            t,
            1000 + 2.0 * (t - T0) / 1000 + rng.normal(0, 1, t.size),
        ),
    }
    client = await app_with(aiohttp_client, make_config, rows)
    end = (T0 + 239 * 15_000) / 1000
    resp = await client.get(
        "/api/v1/forecast",
        params={
            "query": "disk_used",
            "horizon": "10m",
            "lookback": "1h",
            "step": "15s",
            "time": str(end),
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "success"
    data = body["data"]
    assert data["resultType"] == "matrix" and data["method"] == "linear" and data["level"] == 0.95
    [series] = data["result"]
    assert series["metric"] == {"__name__": "disk_used", "dev": "a"}
    assert len(series["values"]) == 40 and series["values"][0][0] == end + 15
    assert series["model"]["slope_per_second"] == pytest.approx(2.0, abs=0.01)
    first = float(series["values"][0][1])
    assert float(series["lower"][0][1]) < first < float(series["upper"][0][1])
    assert first == pytest.approx(1000 + 2.0 * 240 * 15, abs=3)
    # too few points (two steps of 40 minutes) is a warning per series, not an error
    resp = await client.get(
        "/api/v1/forecast",
        params={
            "query": "disk_used",
            "horizon": "1h",
            "lookback": "1h",
            "step": "40m",
            "time": str(end),
        },
    )
    body = await resp.json()
    assert body["data"]["result"] == []
    assert any("'dev': 'a'" in w and "at least 3 points" in w for w in body["warnings"])
    # form POST as Grafana sends it; holt_winters needs a season
    resp = await client.post(
        "/api/v1/forecast", data={"query": "disk_used", "horizon": "5m", "method": "holt_winters"}
    )
    assert resp.status == 400
    assert (await resp.json())["errorType"] == "bad_data"
    for params in (
        {"horizon": "5m"},
        {"query": "disk_used"},
        {"query": "disk_used(", "horizon": "1m"},
    ):
        assert (await client.get("/api/v1/forecast", params=params)).status == 400


async def test_anomaly_detect_endpoint(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    rng = np.random.default_rng(1)
    t = T0 + np.arange(400, dtype=np.int64) * 15_000
    v = 20 + rng.normal(0, 1, t.size)
    v[350] = 45.0
    client = await app_with(
        aiohttp_client,
        make_config,
        {
            (("__name__", "temp"), ("room", "a")): (t, v),
            (("__name__", "temp"), ("room", "b")): (t, 20 + rng.normal(0, 1, t.size)),
        },
    )
    params = {
        "metric_name": "temp",
        "start_time": str((T0 + 300 * 15_000) / 1000),
        "end_time": str((T0 + 399 * 15_000) / 1000),
        "threshold": "5",
        "method": "mad",
        "window": "15m",
    }
    resp = await client.get("/anomaly/detect", params=params)
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert data["method"] == "mad" and data["threshold"] == 5.0
    a, b = data["series"]
    assert a["metric"] == {"__name__": "temp", "room": "a"} and b["metric"]["room"] == "b"
    assert len(a["points"]) == 100 and a["anomalies"] == 1 and b["anomalies"] == 0
    [spike] = [p for p in a["points"] if p["is_anomaly"]]
    assert spike["timestamp"] == (T0 + 350 * 15_000) / 1000 and spike["value"] == 45.0
    assert spike["lower"] < spike["expected"] < spike["upper"] < 45.0
    # match[] narrows; only_anomalies trims the points
    resp = await client.get(
        "/anomaly/detect", params={**params, "match[]": 'temp{room="a"}', "only_anomalies": "true"}
    )
    [only] = (await resp.json())["data"]["series"]
    assert [p["value"] for p in only["points"]] == [45.0]
    # the seasonal method's parameters, and errors as Prometheus shapes them
    resp = await client.get(
        "/anomaly/detect",
        params={**params, "method": "seasonal", "period": "1h", "tz": "Europe/Berlin"},
    )
    assert (await resp.json())["data"]["series"][0]["params"]["tz"] == "Europe/Berlin"
    for bad in (
        {"method": "fft"},
        {"threshold": "-1"},
        {"tz": "Mars/Olympus"},
        {"metric_name": ""},
    ):
        resp = await client.get("/anomaly/detect", params={**params, **bad})
        assert resp.status == 400, bad
        assert (await resp.json())["errorType"] == "bad_data"


async def test_promql_functions_reach_the_daemons_engine(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    t = T0 + np.arange(10, dtype=np.int64) * 15_000
    v = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 9.0]
    client = await app_with(aiohttp_client, make_config, {(("__name__", "q"),): (t, v)})
    assert "zscore_over_time" in client.app[CONTEXT_KEY].query_functions
    resp = await client.get(
        "/api/v1/query", params={"query": "zscore_over_time(q[5m])", "time": str(t[-1] / 1000)}
    )
    body = await resp.json()
    assert body["status"] == "success", body
    base = np.array(v[:-1])
    assert float(body["data"]["result"][0]["value"][1]) == pytest.approx(
        (9 - base.mean()) / base.std(ddof=1)
    )
