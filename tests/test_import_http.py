"""The push endpoints over real HTTP: CSV import, JSON ingest/backfill, Prometheus text."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.model import Labels, Matcher
from agent.web.app import CONTEXT_KEY, make_app

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def everything(client: Any) -> dict[Labels, list[tuple[int, float]]]:
    store = client.app[CONTEXT_KEY].require_store()
    found = await store.select([Matcher.of("__name__", "=~", ".+")], -(2**62), 2**62)
    return {
        s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True)) for s in found
    }


async def make_client(aiohttp_client: Any, make_config: Any, text: str = "") -> Any:
    config, host = make_config(text)
    return await aiohttp_client(make_app(config, host))


# --- CSV ---------------------------------------------------------------------------------


async def test_csv_vm_format_and_mapping(
    aiohttp_client: Any, make_config: Any, data_dir: Path
) -> None:
    client = await make_client(aiohttp_client, make_config)
    body = "1700000000,GOOG,1.5\n1700000015,GOOG,oops\n1700000030,MSFT,2.5\n"
    resp = await client.post(
        "/api/v1/import/csv?format=1:time:unix_s,2:label:ticker,3:metric:ask&extra_label=src=vm",
        data=body,
    )
    report = await resp.json()
    assert resp.status == 400
    assert report["status"] == "partial" and report["stored"] == 2
    assert report["errors"] == [
        {"row": 2, "field": "3", "error": "row 2, column '3': not a number: 'oops'"}
    ]
    data = await everything(client)
    assert data[lab("ask", ticker="GOOG", src="vm")] == [(1_700_000_000_000, 1.5)]
    conn = sqlite3.connect(data_dir / "tsagent.db")
    try:
        row = conn.execute(
            "SELECT op, source, user, sample_count FROM audit WHERE op = 'backfill'"
        ).fetchone()
    finally:
        conn.close()
    assert row == ("backfill", "csv_import", "127.0.0.1", 2)

    mapping = {
        "timestamp": {"column": "t", "format": "rfc3339"},
        "labels": ["host"],
        "values": ["cpu"],
    }
    q = quote(json.dumps(mapping))
    resp = await client.post(
        f"/api/v1/import/csv?mapping={q}&on_error=abort",
        data="t,host,cpu\n1970-01-01T00:00:01Z,h,1\n",
    )
    assert resp.status == 200 and (await resp.json())["status"] == "success"
    assert (await everything(client))[lab("cpu", host="h")] == [(1000, 1.0)]

    resp = await client.post(
        f"/api/v1/import/csv?mapping={q}&on_error=abort",
        data="t,host,cpu\n1970-01-01T00:00:02Z,h,1\nnot-a-time,h,2\n",
    )
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted" and report["stored"] == 0
    assert len((await everything(client))[lab("cpu", host="h")]) == 1

    bad = await client.post("/api/v1/import/csv?format=1:time:unix_s", data="1\n")
    assert bad.status == 400 and "no 'metric' column" in (await bad.json())["error"]
    both = await client.post(f"/api/v1/import/csv?format=1:metric:x&mapping={q}", data="1\n")
    assert both.status == 400 and "exactly one of" in (await both.json())["error"]


async def test_body_limit_applies(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(aiohttp_client, make_config, "server:\n  max_body_bytes: 100\n")
    body = "1700000000,a,1\n" * 20
    resp = await client.post(
        "/api/v1/import/csv?format=1:time:unix_s,2:label:h,3:metric:x", data=body
    )
    assert resp.status == 413
    resp = await client.post("/api/v1/import/prometheus", data="x 1\n" * 40)
    assert resp.status == 413


# --- JSON ----------------------------------------------------------------------------------


async def test_json_ingest_single(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(aiohttp_client, make_config)
    sample = {
        "metric_name": "room_temp",
        "value": 21.5,
        "timestamp": "2023-11-14T22:13:20Z",
        "labels": {"room": "lab"},
    }
    resp = await client.post("/metrics/ingest", json=sample)
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    assert first["stored"] == 1
    assert first["series"] == 1  # a brand-new series counts, as in the text push
    assert (await everything(client))[lab("room_temp", room="lab")] == [(T0, 21.5)]
    # Same again: an idempotent duplicate; older: refused with a pointer to backfill.
    assert (await (await client.post("/metrics/ingest", json=sample)).json())["duplicates"] == 1
    old = await client.post("/metrics/ingest", json={**sample, "timestamp": "2020-01-01T00:00:00Z"})
    body = await old.json()
    assert old.status == 400
    assert body["errors"][0]["field"] == "timestamp"
    assert "POST /backfill/import" in body["errors"][0]["error"]
    bad = await client.post(
        "/metrics/ingest", json={"metric_name": "1x", "value": True, "timestmap": "x"}
    )
    errors = [e["error"] for e in (await bad.json())["errors"]]
    assert bad.status == 400
    assert errors == [
        "timestmap: unknown field; expected metric_name, value, timestamp, labels",
        "metric_name: expected a metric name like http_requests_total, found '1x'",
        "value: expected a number, found True",
        "timestamp: expected an RFC 3339 string like 2024-01-31T12:00:00Z, found missing",
    ]
    not_json = await client.post("/metrics/ingest", data=b"{nope")
    assert not_json.status == 400 and "not valid JSON" in (await not_json.json())["error"]


async def test_json_backfill_list(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(aiohttp_client, make_config)
    items: list[Any] = [
        {"metric_name": "m", "value": 1, "timestamp": "1970-01-01T00:00:00Z"},
        {"metric_name": "m", "value": "NaN", "timestamp": "2024-01-01T00:00:00+01:00"},
        {"metric_name": "m", "value": 3, "timestamp": "2024-01-01 00:00:00"},
        {"metric_name": "m", "value": 4, "timestamp": "2024-01-01T00:00:01Z", "labels": {"a": 1}},
        "nope",
        {"metric_name": "m", "value": 5, "timestamp": "1970-01-01T00:00:00Z"},
    ]
    resp = await client.post("/backfill/import", json=items)
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "partial"
    assert [(e["index"], e["field"]) for e in report["errors"]] == [
        (2, "timestamp"),
        (3, "labels.a"),
        (4, None),
        (5, "timestamp"),
    ]
    assert report["errors"][0]["error"].startswith("items[2].timestamp: expected RFC 3339")
    assert "items[5].timestamp: a different value is already stored" in report["errors"][3]["error"]
    assert report["stored"] == 2 and report["audit_id"] is not None
    got = (await everything(client))[lab("m")]
    assert got[0] == (0, 1.0) and got[1][0] == 1_704_063_600_000 and got[1][1] != got[1][1]

    abort = await client.post("/backfill/import?on_error=abort", json={"items": items[:3]})
    assert abort.status == 400 and (await abort.json())["status"] == "aborted"
    ok = await client.post("/backfill/import", json={"items": items[:2]})
    assert ok.status == 200 and (await ok.json())["duplicates"] == 2


async def test_json_backfill_abort_refused_series_and_conflicts_create_nothing(
    aiohttp_client: Any, make_config: Any
) -> None:
    """An aborted JSON backfill creates none of its series: neither when a cardinality
    limit refuses one of them nor when a value conflicts with a stored one."""
    client = await make_client(aiohttp_client, make_config)
    store = client.app[CONTEXT_KEY].require_store()
    await store.limit_cardinality("m", "host", 2)
    t = "2024-01-01T00:00:00Z"
    items = [
        {"metric_name": "m", "value": k, "timestamp": t, "labels": {"host": h}}
        for k, h in enumerate("abc")
    ]
    resp = await client.post("/backfill/import?on_error=abort", json=items)
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted" and report["stored"] == 0
    assert [(e["index"], e["field"]) for e in report["errors"]] == [(2, "labels")]
    assert "new series refused" in report["errors"][0]["error"]
    assert store.label_values("host") == []  # no series, not even empty ones
    ok = await client.post("/backfill/import", json=items[:1])
    assert ok.status == 200
    clash = [{**items[0], "value": 9}, items[1]]
    resp = await client.post("/backfill/import?on_error=abort", json=clash)
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted"
    assert [(e["index"], e["field"]) for e in report["errors"]] == [(0, "timestamp")]
    assert store.label_values("host") == ["a"]


# --- Prometheus text ------------------------------------------------------------------------


TEXT = """# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/"} 10 1700000000000
http_requests_total{code="500",path="/"} 2
bad line here
temperature 21.5
9bad_name 1
up{job="x"} notanumber
"""


async def test_prometheus_text_push(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(aiohttp_client, make_config)
    resp = await client.post("/api/v1/import/prometheus?extra_label=instance=i1", data=TEXT)
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "partial"
    assert [e["line"] for e in report["errors"]] == [5, 7, 8]
    assert report["received"] == 6 and report["stored"] == 3
    data = await everything(client)
    assert data[lab("http_requests_total", code="200", path="/", instance="i1")] == [(T0, 10.0)]
    now_ts = data[lab("temperature", instance="i1")][0][0]
    assert now_ts > T0  # no timestamp: the arrival time
    # Older than what the series holds: refused by the live path, per line ...
    old = await client.post(
        "/api/v1/import/prometheus?extra_label=instance=i1",
        data='http_requests_total{code="200",path="/"} 9 1600000000000\n',
    )
    assert old.status == 400 and (await old.json())["errors"][0]["line"] == 1
    # ... and accepted as a backfill.
    back = await client.post(
        "/api/v1/import/prometheus?extra_label=instance=i1&backfill=true",
        data='http_requests_total{code="200",path="/"} 9 1600000000000\n',
    )
    assert back.status == 200
    # Pushgateway-style path labels.
    push = await client.post(
        "/api/v1/import/prometheus/metrics/job/batch/instance/n1", data="done 1\n"
    )
    assert push.status == 200
    assert lab("done", job="batch", instance="n1") in await everything(client)


async def test_openmetrics_push(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(aiohttp_client, make_config)
    body = (
        '# TYPE jobs counter\njobs_total{kind="a"} 3 1700000000.250\njobs_total{kind=b} 4\n# EOF\n'
    )
    resp = await client.post(
        "/api/v1/import/prometheus",
        data=body,
        headers={"Content-Type": "application/openmetrics-text; version=1.0.0"},
    )
    report = await resp.json()
    assert resp.status == 400 and [e["line"] for e in report["errors"]] == [3]
    assert (await everything(client))[lab("jobs_total", kind="a")] == [(T0 + 250, 3.0)]


async def test_back_pressure_is_429(aiohttp_client: Any, make_config: Any) -> None:
    client = await make_client(
        aiohttp_client,
        make_config,
        "storage:\n  head_memory_limit_bytes: 1\ningest:\n  prometheus_text:\n"
        "    retry_after_seconds: 7\n",
    )
    resp = await client.post("/api/v1/import/prometheus", data="x 1\n")
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    resp = await client.post(
        "/metrics/ingest",
        json={"metric_name": "x", "value": 1, "timestamp": "2024-01-01T00:00:00Z"},
    )
    assert resp.status == 429 and resp.headers["Retry-After"] == "5"
