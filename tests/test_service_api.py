"""The metrics service's API as its users wrote it: status endpoints, the
``{"metrics": [...]}`` import, the generator's names and ``--base-url``, and
``/anomaly/detect`` with ``metric_name/start_time/end_time/threshold``."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from agent.analytics.generate import generate, pattern_values
from agent.model import Matcher
from agent.web.app import context_of, make_app

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config()
    return await aiohttp_client(make_app(config, host))


async def test_health_db_status_and_names(client: Any) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    assert health["status"] == "healthy" and health["version"]
    empty = (await (await client.get("/db/status")).json())["database"]
    assert empty["reachable"] is True and empty["series"] == 0 and empty["samples"] == 0
    assert empty["oldest_timestamp"] is None
    body = {
        "metrics": [
            {"metric_name": "cpu_usage", "value": i, "timestamp": iso(T0 + timedelta(seconds=i))}
            for i in range(5)
        ]
        + [{"metric_name": "mem_used", "value": 1, "timestamp": iso(T0), "labels": {"h": "a"}}]
    }
    resp = await client.post("/backfill/import", json=body)
    assert resp.status == 200, await resp.text()
    status = await (await client.get("/db/status")).json()
    db = status["database"]
    assert status["status"] == "ok"
    assert db["series"] == 2 and db["samples"] == 6
    assert db["file_size_bytes"] > 0 and db["path"].endswith("tsagent.db")
    assert db["oldest_timestamp"] == "2026-12-01T12:00:00Z"
    assert db["newest_timestamp"] == "2026-12-01T12:00:04Z"
    names = await (await client.get("/metrics/names")).json()
    assert names == {"status": "ok", "names": ["cpu_usage", "mem_used"], "count": 2}
    assert (await (await client.get("/metrics/names?prefix=mem")).json())["names"] == ["mem_used"]


async def test_backfill_metrics_shape_keeps_valid_items(client: Any) -> None:
    body = {
        "metrics": [
            {"metric_name": "t", "value": 1.5, "timestamp": iso(T0), "labels": {"room": "a"}},
            {"metric_name": "t", "value": "x", "timestamp": iso(T0)},
        ]
    }
    resp = await client.post("/backfill/import", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["status"] == "partial" and answer["stored"] == 1
    assert answer["errors"][0]["index"] == 1 and answer["errors"][0]["field"] == "value"
    # The forms that worked before still do.
    item = {"metric_name": "t", "value": 2, "timestamp": iso(T0 + timedelta(seconds=1))}
    for form in ([item], {"items": [item]}):
        assert (await client.post("/backfill/import", json=form)).status == 200
    bad = await client.post("/backfill/import", json={"metrics": [], "extra": 1})
    assert bad.status == 400 and "metrics" in (await bad.json())["error"]


async def test_anomaly_detect_flags_spike_loaded_as_metrics(client: Any) -> None:
    rng = np.random.default_rng(3)
    values = 50 + rng.normal(0, 1, 120)
    values[100] = 95.0
    body = {
        "metrics": [
            {
                "metric_name": "cpu_usage",
                "value": float(v),
                "timestamp": iso(T0 + timedelta(seconds=5 * i)),
                "labels": {"host": "web-1"},
            }
            for i, v in enumerate(values)
        ]
    }
    assert (await client.post("/backfill/import", json=body)).status == 200
    resp = await client.get(
        "/anomaly/detect",
        params={
            "metric_name": "cpu_usage",
            "start_time": iso(T0),
            "end_time": iso(T0 + timedelta(minutes=10)),
            "threshold": "3.0",
        },
    )
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    [series] = data["series"]
    flagged = [p["timestamp"] for p in series["points"] if p["is_anomaly"]]
    assert flagged == [(T0 + timedelta(seconds=500)).timestamp()]


def test_pattern_aliases() -> None:
    x = np.arange(10, dtype=np.float64)
    rng = np.random.default_rng(0)
    from agent.analytics.generate import PatternOptions

    opts = PatternOptions()
    np.testing.assert_array_equal(
        pattern_values("sine_wave", x, rng, opts), pattern_values("sine", x, rng, opts)
    )
    np.testing.assert_array_equal(
        pattern_values("linear_trend", x, rng, opts), pattern_values("linear", x, rng, opts)
    )


async def test_generate_base_url_as_documented(client: Any) -> None:
    """``tsagent generate --metric cpu_usage --pattern sine_wave --duration 300 --interval 5
    --base-url URL`` writes 60 samples through the running agent's JSON endpoint."""
    base = str(client.make_url("/")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        "generate",
        "--metric",
        "cpu_usage",
        "--pattern",
        "sine_wave",
        "--duration",
        "300",
        "--interval",
        "5",
        "--base-url",
        base,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "60 samples" in out.decode()
    store = context_of(client.server.app).require_store()
    [s] = await store.select([Matcher.of("__name__", "=", "cpu_usage")], 0, 2**62)
    [expected] = generate(
        "cpu_usage", "sine", start_ms=int(s.timestamps[0]), duration_s=300, interval_s=5
    )
    np.testing.assert_allclose(s.values, expected.values)
    assert s.timestamps.size == 60
