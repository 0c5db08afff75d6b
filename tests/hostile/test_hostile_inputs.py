"""Malformed and out-of-bounds input through the HTTP API, in process (issue 13, items 7 and 9).

Each answer is a 4xx that names what is wrong; the valid part of a batch is
written; and no series is created for samples that are refused (an
all-or-nothing batch creates nothing at all).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from typing import Any
from urllib.parse import quote

import pytest

from agent.context import context_of
from agent.model import Matcher, MatchOp
from agent.web.app import make_app
from tests.hostile.cases import V1, now_ms, rw_v1


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config("plugins:\n  disabled: [scrape]\n")
    return await aiohttp_client(make_app(config, host))


def names(client: Any) -> set[str]:
    """Metric names of every series that exists (with or without samples)."""
    return set(context_of(client.server.app).require_store().label_values("__name__"))


async def test_remote_write_out_of_bounds_names_the_bound_and_creates_no_series(
    client: Any,
) -> None:
    now = now_ms()
    body = rw_v1(
        [
            ([("__name__", "ancient_only")], [(-(2**62), 1.0)]),
            ([("__name__", "mixed")], [(-(2**62), 1.0), (now, 2.0)]),
            ([("__name__", "min_only")], [(-(2**63), 1.0)]),
        ]
    )
    resp = await client.post("/api/v1/write", data=body, headers=V1)
    text = await resp.text()
    assert resp.status == 400
    assert "out_of_bounds" in text and "limits.min_timestamp" in text
    assert "duplicate_timestamp" not in text
    assert names(client) == {"mixed"}  # written: the valid sample; not created: the others


async def test_text_import_bad_timestamps_keep_valid_lines_and_create_nothing_else(
    client: Any,
) -> None:
    # Timestamps are integers of milliseconds, as Prometheus' text parser reads them:
    # one past int64, one in exponent notation, one before min_timestamp.
    body = b"big_ts 1 9223372036854775808\nhuge_ts 1 1e300\nold_ts 1 -5\nfine 1\n"
    resp = await client.post("/api/v1/import/prometheus", data=body)
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "partial"
    text = json.dumps(report)
    assert "int64" in text and "limits.min_timestamp" in text
    assert "invalid number 1e300" in text
    assert names(client) == {"fine"}


async def test_json_and_csv_abort_create_nothing(client: Any) -> None:
    items = [
        {"metric_name": "a_ok", "value": 1, "timestamp": "2024-01-01T00:00:00Z"},
        {"metric_name": "a_old", "value": 1, "timestamp": "1960-01-01T00:00:00Z"},
    ]
    resp = await client.post("/backfill/import?on_error=abort", data=json.dumps(items))
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted"
    assert "limits.min_timestamp" in json.dumps(report)
    csv_body = b"1704067200,1\n-100,2\n"
    resp = await client.post(
        "/api/v1/import/csv?on_error=abort&format=1:time:unix_s,2:metric:c_ok", data=csv_body
    )
    assert resp.status == 400 and (await resp.json())["status"] == "aborted"
    assert names(client) == set()


async def test_abort_imports_refused_by_a_cardinality_limit_create_no_series(
    client: Any,
) -> None:
    """A cardinality refusal in an on_error=abort CSV or JSON backfill creates nothing:
    not the refused series, and not the import's other new series either."""
    store = context_of(client.server.app).require_store()
    await store.limit_cardinality("capped", "h", 1)
    body = b"1704067200,a,1,2\n1704067260,b,3,4\n"
    resp = await client.post(
        "/api/v1/import/csv?on_error=abort&format=1:time:unix_s,2:label:h,3:metric:capped,"
        "4:metric:fresh",
        data=body,
    )
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted", report
    assert "cardinality limit" in json.dumps(report)
    stamp = "2024-01-01T00:00:00Z"
    items = [
        {"metric_name": "fresh_json", "value": 1, "timestamp": stamp},
        {"metric_name": "capped", "labels": {"h": "x"}, "value": 1, "timestamp": stamp},
        {"metric_name": "capped", "labels": {"h": "y"}, "value": 1, "timestamp": stamp},
    ]
    resp = await client.post("/backfill/import?on_error=abort", data=json.dumps(items))
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted", report
    assert names(client) == set()
    series = await (await client.get('/api/v1/series?match[]={__name__=~".+"}')).json()
    assert series["data"] == []
    # The limit still admits one series afterwards: the refused import reserved nothing.
    resp = await client.post(
        "/api/v1/import/csv?on_error=abort&format=1:time:unix_s,2:label:h,3:metric:capped",
        data=b"1704067200,a,1\n",
    )
    assert resp.status == 200, await resp.text()
    assert names(client) == {"capped"}
    # One new series sent in several items counts once against a limit of one.
    await store.limit_cardinality("single", "", 1)
    items = [
        {"metric_name": "single", "value": v, "timestamp": f"2024-01-01T00:0{v}:00Z"}
        for v in range(3)
    ]
    resp = await client.post("/backfill/import?on_error=abort", data=json.dumps(items))
    assert resp.status == 200, await resp.text()
    assert names(client) == {"capped", "single"}


async def test_abort_imports_conflicting_with_stored_samples_create_no_series(
    client: Any,
) -> None:
    stamp = "2024-01-01T00:00:00Z"
    fmt = "format=1:time:unix_s,2:metric:kept"
    ok = await client.post(f"/api/v1/import/csv?{fmt}", data=b"1704067200,1\n")
    assert ok.status == 200
    resp = await client.post(
        f"/api/v1/import/csv?on_error=abort&{fmt},3:metric:newcsv", data=b"1704067200,2,5\n"
    )
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted", report
    assert "already stored" in json.dumps(report)
    items = [
        {"metric_name": "newjson", "value": 1, "timestamp": "2024-01-01T00:00:00Z"},
        {"metric_name": "kept", "value": 7, "timestamp": "2024-01-01T00:00:00Z"},
    ]
    resp = await client.post("/backfill/import?on_error=abort", data=json.dumps(items))
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted", report
    assert "duplicate_timestamp" in json.dumps(report)
    # Two values at one timestamp of one new series (its labels spelt two ways).
    items = [
        {"metric_name": "newdup", "labels": {"a": "1", "b": "2"}, "value": 1, "timestamp": stamp},
        {"metric_name": "newdup", "labels": {"b": "2", "a": "1"}, "value": 2, "timestamp": stamp},
    ]
    resp = await client.post("/backfill/import?on_error=abort", data=json.dumps(items))
    report = await resp.json()
    assert resp.status == 400 and report["status"] == "aborted", report
    assert names(client) == {"kept"}


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/metrics/ingest", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("/backfill/import", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (
            "/api/v1/import/csv?format=1:time:unix_s,2:metric:m",
            b"1704067200," + b"9" * 3_000_000 + b"\n1704067200,1\n",
            "field larger than field limit",
        ),
        (
            "/api/v1/import/csv?format=1:time:unix_ns,2:metric:m",
            b"99999999999999999999999,1\n",
            "out of range",
        ),
        (
            "/api/v1/import/csv?mapping="
            + quote(json.dumps({"timestamp": {"column": 1, "format": "%d%d"}, "values": [2]})),
            b"1,1\n",
            "invalid strftime pattern",
        ),
    ],
)
async def test_malformed_input_is_a_4xx_naming_the_problem(
    client: Any, path: str, body: bytes, needle: str
) -> None:
    resp = await client.post(path, data=io.BytesIO(body))
    assert 400 <= resp.status < 500
    assert needle in await resp.text()


async def test_csv_export_neutralises_formulas_and_imports_back(client: Any) -> None:
    now = now_ms()
    values = ["=cmd|' /C calc'!A0", "+SUM(1+1)", "@SUM(1+1)", "-1", "\tx", "\rx", "'q", "plain"]
    series = [([("__name__", "f"), ("v", v)], [(now, 1.0)]) for v in values]
    assert (await client.post("/api/v1/write", data=rw_v1(series), headers=V1)).status == 204
    resp = await client.get("/api/v1/export/csv?match[]=f")
    body = await resp.text()
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert resp.status == 200, body
    cells = sorted(r[2] for r in rows[1:])
    assert all(not c or c[0] not in "=+-@\t\r" for c in cells)
    assert cells == sorted("'" + v if v != "plain" else v for v in values)
    raw = await client.get("/api/v1/export/csv?match[]=f&neutralize_formulas=false")
    assert "=cmd|" in await raw.text()
    # Round trip: the importer restores the original values.
    store = context_of(client.server.app).require_store()
    spec = resp.headers["X-Tsagent-Import-Format"].replace("metric:value", "metric:value")
    back = await client.post(
        "/api/v1/import/csv?header=true&extra_label=copy=1&format=" + quote(spec), data=body
    )
    assert back.status == 200, await back.text()
    copies = store.match_series([Matcher("copy", MatchOp.EQ, "1")])
    assert sorted(dict(store.labels(s))["v"] for s in copies) == sorted(values)


async def test_client_disconnect_during_export_is_not_an_error(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    now = now_ms()
    series = [([("__name__", "many"), ("i", str(i))], [(now, 1.0)]) for i in range(3000)]
    assert (await client.post("/api/v1/write", data=rw_v1(series), headers=V1)).status == 204
    with caplog.at_level(logging.INFO):
        resp = await client.get("/api/v1/export/csv?match[]=many")
        await resp.content.read(100)
        resp.close()
        assert (await client.get("/-/healthy")).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
