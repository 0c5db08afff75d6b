"""Series, labels, label values, metadata and the status endpoints of the HTTP API."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from agent.web.app import CONTEXT_KEY
from plugins.remote_write.wire import Metadata
from tests.test_api_query import T0, api_client, get_json, post_json


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    return await api_client(aiohttp_client, make_config)


# --- /api/v1/series ------------------------------------------------------------------------


async def test_series_union_of_matchers_sorted(client: Any) -> None:
    status, body = await post_json(
        client,
        "/api/v1/series",
        [("match[]", 'up{job="db"}'), ("match[]", "temp_celsius"), ("match[]", "up")],
    )
    assert status == 200
    assert body["data"] == [
        {"__name__": "temp_celsius", "room": "x"},
        {"__name__": "up", "instance": "a", "job": "api"},
        {"__name__": "up", "instance": "b", "job": "db"},
    ]


async def test_series_time_range_and_limit(client: Any) -> None:
    _, everything = await get_json(client, "/api/v1/series", **{"match[]": '{job=~".+"}'})
    assert {s["__name__"] for s in everything["data"]} == {
        "http_requests_total",
        "up",
        "old_metric",
    }
    _, recent = await get_json(
        client,
        "/api/v1/series",
        **{"match[]": '{job=~".+"}', "start": str(T0), "end": str(T0 + 60)},
    )
    assert "old_metric" not in {s["__name__"] for s in recent["data"]}
    assert len(recent["data"]) == 4
    _, limited = await get_json(client, "/api/v1/series", **{"match[]": "up", "limit": "1"})
    assert len(limited["data"]) == 1 and limited["warnings"] == ["results truncated due to limit"]
    _, exact = await get_json(client, "/api/v1/series", **{"match[]": "up", "limit": "2"})
    assert len(exact["data"]) == 2 and "warnings" not in exact


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "no match[] parameter provided"),
        ({"match[]": "up{"}, 'invalid parameter "match[]"'),
        ({"match[]": "sum(up)"}, 'invalid parameter "match[]"'),
        ({"match[]": "up", "start": "soon"}, 'invalid parameter "start"'),
        ({"match[]": "up", "start": "10", "end": "5"}, "end timestamp must not be before"),
        ({"match[]": "up", "limit": "-1"}, 'invalid parameter "limit"'),
        ({"match[]": "up", "limit": "many"}, 'invalid parameter "limit"'),
    ],
)
async def test_series_bad_requests(client: Any, params: dict[str, str], message: str) -> None:
    status, body = await get_json(client, "/api/v1/series", **params)
    assert status == 400 and body["errorType"] == "bad_data" and message in body["error"]


# --- /api/v1/labels and /api/v1/label/<name>/values ------------------------------------------


async def test_label_names(client: Any) -> None:
    _, body = await get_json(client, "/api/v1/labels")
    assert body["data"] == ["__name__", "code", "instance", "job", "room"]
    _, matched = await post_json(client, "/api/v1/labels", [("match[]", "temp_celsius")])
    assert matched["data"] == ["__name__", "room"]
    _, limited = await get_json(client, "/api/v1/labels", limit="2")
    assert limited["data"] == ["__name__", "code"] and limited["warnings"]


async def test_label_names_time_range_drops_ended_series(client: Any) -> None:
    await store_add_ended_label(client)
    _, all_time = await get_json(client, "/api/v1/labels")
    assert "legacy" in all_time["data"]
    _, recent = await get_json(client, "/api/v1/labels", start=str(T0), end=str(T0 + 3600))
    assert "legacy" not in recent["data"] and "job" in recent["data"]


async def store_add_ended_label(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    labels = (("__name__", "ancient"), ("legacy", "yes"))
    await ctx.append_samples([(labels, (T0 - 86400) * 1000, 1.0)], source="test")


async def test_label_values(client: Any) -> None:
    _, names = await get_json(client, "/api/v1/label/__name__/values")
    assert names["data"] == ["http_requests_total", "old_metric", "temp_celsius", "up"]
    _, jobs = await get_json(client, "/api/v1/label/job/values", **{"match[]": "up"})
    assert jobs["data"] == ["api", "db"]
    _, codes = await get_json(client, "/api/v1/label/code/values")
    assert codes["data"] == ["200", "500"]
    _, none = await get_json(client, "/api/v1/label/nosuch/values")
    assert none == {"status": "success", "data": []}
    _, recent = await get_json(client, "/api/v1/label/job/values", start=str(T0))
    assert recent["data"] == ["api", "db"]  # "gone" ended two hours before T0
    _, limited = await get_json(client, "/api/v1/label/__name__/values", limit="1")
    assert limited["data"] == ["http_requests_total"] and limited["warnings"]
    status, bad = await get_json(client, "/api/v1/label/job/values", **{"match[]": "up{"})
    assert status == 400 and bad["errorType"] == "bad_data"


async def test_label_values_utf8_escaped_name(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    await ctx.append_samples(
        [((("__name__", "m"), ("service.name", "shop")), T0 * 1000, 1.0)], source="test"
    )
    _, body = await get_json(client, "/api/v1/label/U__service_2e_name/values")
    assert body["data"] == ["shop"]


# --- /api/v1/metadata -------------------------------------------------------------------------


async def test_metadata_from_the_shared_table(client: Any) -> None:
    table = client.app[CONTEXT_KEY].metadata
    table.add(Metadata("up", "gauge", "Target is up.", ""))
    table.add(Metadata("http_requests_total", "counter", "Requests.", ""))
    table.add(Metadata("http_requests_total", "counter", "Requests served.", ""))
    _, body = await get_json(client, "/api/v1/metadata")
    assert body["data"] == {
        "http_requests_total": [
            {"type": "counter", "help": "Requests served.", "unit": ""},
            {"type": "counter", "help": "Requests.", "unit": ""},
        ],
        "up": [{"type": "gauge", "help": "Target is up.", "unit": ""}],
    }
    _, one = await get_json(client, "/api/v1/metadata", metric="up", limit_per_metric="1")
    assert list(one["data"]) == ["up"]
    _, per = await get_json(client, "/api/v1/metadata", limit_per_metric="1")
    assert len(per["data"]["http_requests_total"]) == 1
    _, lim = await get_json(client, "/api/v1/metadata", limit="1")
    assert list(lim["data"]) == ["http_requests_total"]
    status, bad = await get_json(client, "/api/v1/metadata", limit="x")
    assert status == 400 and bad["errorType"] == "bad_data"


# --- status -----------------------------------------------------------------------------------


async def test_runtimeinfo(client: Any) -> None:
    status, body = await get_json(client, "/api/v1/status/runtimeinfo")
    assert status == 200
    data = body["data"]
    for key in (
        "startTime",
        "CWD",
        "reloadConfigSuccess",
        "lastConfigTime",
        "goroutineCount",
        "GOMAXPROCS",
        "storageRetention",
        "corruptionCount",
    ):
        assert key in data
    assert data["CWD"] == os.getcwd()
    assert data["reloadConfigSuccess"] is True
    assert data["storageRetention"] == "unlimited"
    assert data["startTime"].endswith("Z") and data["goroutineCount"] >= 1


async def test_tsdb_status_cardinality(client: Any) -> None:
    status, body = await get_json(client, "/api/v1/status/tsdb")
    assert status == 200
    data = body["data"]
    head = data["headStats"]
    assert head["numSeries"] == 6
    # __name__ x4, job x3 (api, db, gone), code x2, instance x2, room x1
    assert head["numLabelPairs"] == 12
    assert head["minTime"] == (T0 - 7200) * 1000 and head["maxTime"] == (T0 + 3600) * 1000
    assert head["chunkCount"] >= 1
    assert data["seriesCountByMetricName"][:2] == [
        {"name": "http_requests_total", "value": 2},
        {"name": "up", "value": 2},
    ]
    by_name = {r["name"]: r["value"] for r in data["labelValueCountByLabelName"]}
    assert by_name["__name__"] == 4 and by_name["job"] == 3
    pairs = {r["name"]: r["value"] for r in data["seriesCountByLabelValuePair"]}
    assert pairs["job=api"] == 3
    assert {r["name"] for r in data["memoryInBytesByLabelName"]} >= {"__name__", "job"}
    _, top1 = await get_json(client, "/api/v1/status/tsdb", limit="1")
    assert len(top1["data"]["seriesCountByMetricName"]) == 1
    status, bad = await get_json(client, "/api/v1/status/tsdb", limit="0")
    assert status == 400 and bad["errorType"] == "bad_data"


async def test_tsdb_status_of_an_empty_store(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, data=False)
    _, body = await get_json(client, "/api/v1/status/tsdb")
    assert body["data"]["headStats"]["numSeries"] == 0
    assert body["data"]["seriesCountByMetricName"] == []


# --- exemplars and formatting -------------------------------------------------------------------


async def test_query_exemplars_is_empty_but_validates(client: Any) -> None:
    _, body = await get_json(
        client, "/api/v1/query_exemplars", query="up", start=str(T0), end=str(T0 + 60)
    )
    assert body == {"status": "success", "data": []}
    status, bad = await post_json(client, "/api/v1/query_exemplars", [("query", "up{")])
    assert status == 400 and bad["errorType"] == "bad_data"


async def test_format_query(client: Any) -> None:
    status, body = await post_json(
        client, "/api/v1/format_query", [("query", "sum(rate(x[5m]))by(job)")]
    )
    assert status == 200 and body["data"] == "sum by (job) (rate(x[5m]))"
    status, bad = await get_json(client, "/api/v1/format_query", query="sum(")
    assert status == 400 and 'invalid parameter "query"' in bad["error"]


async def test_store_not_open_is_503(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, data=False)
    ctx = client.app[CONTEXT_KEY]
    agent, ctx.agent = ctx.agent, None
    try:
        status, body = await get_json(client, "/api/v1/query", query="1")
    finally:
        ctx.agent = agent
    assert status == 503 and body["errorType"] == "unavailable"
