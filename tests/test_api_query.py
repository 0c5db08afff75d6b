"""``/api/v1/query`` and ``/api/v1/query_range`` over real data in a real store.

Envelopes, error types and status codes are Prometheus's; the helpers here
(``api_client``, ``load``) are shared by the other ``test_api_*`` files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from agent.context import AgentContext
from agent.model import Labels
from agent.root import Agent
from agent.storage import Store
from agent.web.app import CONTEXT_KEY, make_app

T0 = 1_700_000_000  # seconds; 2023-11-14T22:13:20Z
STEP = 15


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def load(ctx: AgentContext) -> None:
    """One hour of 15 s samples from T0, plus a series that ended two hours before T0."""
    rows: list[tuple[Labels, int, float]] = []
    for i in range(241):
        t = (T0 + i * STEP) * 1000
        rows.append((lab("http_requests_total", job="api", code="200", instance="a"), t, i * 10.0))
        rows.append((lab("http_requests_total", job="api", code="500", instance="a"), t, i * 1.0))
        rows.append((lab("up", job="api", instance="a"), t, 1.0))
        rows.append((lab("up", job="db", instance="b"), t, 0.0))
        rows.append((lab("temp_celsius", room="x"), t, 20.0 + i % 3))
    for i in range(10):
        rows.append((lab("old_metric", job="gone"), (T0 - 7200 + i * STEP) * 1000, 1.0))
    rows.sort(key=lambda r: r[1])
    result = await ctx.append_samples(rows, source="test")
    assert result.accepted == len(rows)


async def api_client(
    aiohttp_client: Any, make_config: Callable[..., Any], text: str = "", data: bool = True
) -> Any:
    config, host = make_config(text)
    client = await aiohttp_client(make_app(config, host))
    if data:
        await load(client.app[CONTEXT_KEY])
    return client


def slow_reads(store: Store, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every read path of the engine (``select``, bulk ``select_arrays``, and its
    part in the query worker, ``read_selected``) slow."""
    for name in ("select", "select_arrays", "read_selected"):
        real = getattr(store, name)

        async def slow(*args: Any, real: Any = real, **kw: Any) -> Any:
            await asyncio.sleep(seconds)
            return await real(*args, **kw)

        monkeypatch.setattr(store, name, slow)


def agent_of(client: Any) -> Agent:
    """The daemon app's composition root (query service, streams, rules)."""
    return client.app[CONTEXT_KEY].require_agent()


def store_of(client: Any) -> Store:
    store: Store = client.app[CONTEXT_KEY].require_store()
    return store


async def get_json(client: Any, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get(path, params=params)
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.status, await resp.json()


async def post_json(
    client: Any, path: str, form: Sequence[tuple[str, str]], **kw: Any
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, data=list(form), **kw)
    return resp.status, await resp.json()


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    return await api_client(aiohttp_client, make_config)


# --- instant queries --------------------------------------------------------------------


async def test_instant_vector_envelope_and_values(client: Any) -> None:
    status, body = await get_json(
        client,
        "/api/v1/query",
        query="sum by (code) (rate(http_requests_total[5m]))",
        time=T0 + 1800,
    )
    assert status == 200
    assert list(body) == ["status", "data"]  # no warnings/infos keys when there are none
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector"
    got = {r["metric"]["code"]: r["value"] for r in body["data"]["result"]}
    # 10 per 15 s is 2/3 per second; 1 per 15 s is 1/15.
    assert got["200"][0] == T0 + 1800 and float(got["200"][1]) == pytest.approx(2 / 3)
    assert float(got["500"][1]) == pytest.approx(1 / 15)


async def test_instant_scalar_string_and_matrix_results(client: Any) -> None:
    _, scalar = await get_json(client, "/api/v1/query", query="1 + 2", time="1700000000.5")
    assert scalar["data"] == {"resultType": "scalar", "result": [1700000000.5, "3"]}
    _, string = await get_json(client, "/api/v1/query", query='"hi"', time=T0)
    assert string["data"] == {"resultType": "string", "result": [T0, "hi"]}
    _, matrix = await get_json(
        client, "/api/v1/query", query='up{job="db"}[1m]', time="2023-11-14T22:23:20Z"
    )
    assert matrix["data"]["resultType"] == "matrix"
    [series] = matrix["data"]["result"]
    assert series["metric"] == {"__name__": "up", "instance": "b", "job": "db"}
    # Left-open window (T-60 s, T]: four samples at 15 s spacing.
    assert [p[0] for p in series["values"]] == [T0 + 555, T0 + 570, T0 + 585, T0 + 600]


async def test_rfc3339_with_nanoseconds_and_offset(client: Any) -> None:
    a = await get_json(client, "/api/v1/query", query="time()", time="2023-11-14T23:13:20.5+01:00")
    b = await get_json(
        client, "/api/v1/query", query="time()", time="2023-11-14T22:13:20.500000001Z"
    )
    assert a[1]["data"]["result"] == b[1]["data"]["result"] == [T0 + 0.5, "1700000000.5"]


async def test_post_form_body_equals_get(client: Any) -> None:
    query = 'sum(up{job=~"api|db"})'
    _, via_get = await get_json(client, "/api/v1/query", query=query, time=T0 + 60)
    status, via_post = await post_json(
        client, "/api/v1/query", [("query", query), ("time", str(T0 + 60))]
    )
    assert status == 200 and via_post == via_get
    assert via_post["data"]["result"][0]["value"] == [T0 + 60, "1"]


async def test_lookback_delta_parameter(client: Any) -> None:
    late = T0 + 3600 + 120  # two minutes after the last sample
    _, default = await get_json(client, "/api/v1/query", query="up", time=late)
    assert len(default["data"]["result"]) == 2
    _, short = await get_json(client, "/api/v1/query", query="up", time=late, lookback_delta="1m")
    assert short["data"]["result"] == []


# --- range queries ----------------------------------------------------------------------


async def test_range_query_values_and_step_forms(client: Any) -> None:
    query = 'http_requests_total{code="500"}'
    results = []
    for step in ("60", "1m", "60.0"):
        status, body = await get_json(
            client, "/api/v1/query_range", query=query, start=T0, end=T0 + 300, step=step
        )
        assert status == 200
        results.append(body)
    assert results[0] == results[1] == results[2]
    [series] = results[0]["data"]["result"]
    assert series["values"] == [[T0 + 60 * k, str(4 * k)] for k in range(6)]


async def test_range_query_post_form(client: Any) -> None:
    form = [
        ("query", "sum(rate(http_requests_total[5m]))"),
        ("start", str(T0 + 600)),
        ("end", str(T0 + 900)),
        ("step", "150"),
    ]
    status, body = await post_json(client, "/api/v1/query_range", form)
    assert status == 200
    [series] = body["data"]["result"]
    assert series["metric"] == {}
    assert [p[0] for p in series["values"]] == [T0 + 600, T0 + 750, T0 + 900]
    assert all(float(v) == pytest.approx(11 / 15) for _, v in series["values"])


async def test_warnings_and_infos_reach_the_envelope(client: Any) -> None:
    _, info = await get_json(client, "/api/v1/query", query="rate(temp_celsius[5m])", time=T0 + 600)
    assert info["infos"] and "might not be a counter" in info["infos"][0]
    assert "warnings" not in info
    _, warn = await get_json(
        client, "/api/v1/query_range", query="sort(up)", start=T0, end=T0 + 60, step=30
    )
    assert warn["warnings"] and "sort is ineffective" in warn["warnings"][0]
    assert warn["status"] == "success" and len(warn["data"]["result"]) == 2


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/v1/query", {"query": "sum("}, 'invalid parameter "query": parse error'),
        ("/api/v1/query", {}, 'invalid parameter "query"'),
        ("/api/v1/query", {"query": "up", "time": "yesterday"}, 'invalid parameter "time"'),
        ("/api/v1/query", {"query": "up", "timeout": "soon"}, 'invalid parameter "timeout"'),
        ("/api/v1/query", {"query": "up", "tz": "Mars/Olympus"}, 'invalid parameter "tz"'),
        ("/api/v1/query", {"query": "up", "dst": "sideways"}, 'invalid parameter "dst"'),
        ("/api/v1/query_range", {"query": "up", "end": "1", "step": "1"}, '"start"'),
        ("/api/v1/query_range", {"query": "up", "start": "1", "step": "1"}, '"end"'),
        ("/api/v1/query_range", {"query": "up", "start": "1", "end": "2"}, '"step"'),
        (
            "/api/v1/query_range",
            {"query": "up", "start": "10", "end": "5", "step": "1"},
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range",
            {"query": "up", "start": "1", "end": "2", "step": "0"},
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            "/api/v1/query_range",
            {"query": "up", "start": "0", "end": "11001", "step": "1"},
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            "/api/v1/query_range",
            {"query": "up[5m]", "start": "0", "end": "60", "step": "15"},
            'invalid expression type "range vector" for range query',
        ),
    ],
)
async def test_bad_data_is_400(
    client: Any, path: str, params: dict[str, str], message: str
) -> None:
    status, body = await get_json(client, path, **params)
    assert status == 400, body
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    assert message in body["error"]
    assert "data" not in body


async def test_step_limit_allows_exactly_11000_intervals(client: Any) -> None:
    status, body = await get_json(
        client, "/api/v1/query_range", query="1", start=0, end=11000, step=1
    )
    assert status == 200 and len(body["data"]["result"][0]["values"]) == 11001


async def test_execution_error_is_422(client: Any) -> None:
    status, body = await get_json(
        client,
        "/api/v1/query",
        query='label_replace(vector(1), "x", "$1", "y", "(")',
        time=T0,
    )
    assert status == 422
    assert body["errorType"] == "execution" and body["status"] == "error"


async def test_max_samples_is_422(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, "query:\n  max_samples: 100\n")
    status, body = await get_json(
        client, "/api/v1/query", query='http_requests_total{code="200"}[1h]', time=T0 + 3600
    )
    assert status == 422
    assert body == {
        "status": "error",
        "errorType": "execution",
        "error": "query processing would load too many samples into memory in query execution",
    }
    # Below the limit the same server answers.
    ok, _ = await get_json(
        client, "/api/v1/query", query='http_requests_total{code="200"}[5m]', time=T0 + 3600
    )
    assert ok == 200


async def test_timeout_is_503(
    aiohttp_client: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await api_client(aiohttp_client, make_config, "query:\n  timeout: 50ms\n")
    slow_reads(store_of(client), monkeypatch, 1.0)
    status, body = await get_json(client, "/api/v1/query", query="up", time=T0)
    assert status == 503
    assert body["errorType"] == "timeout" and "timed out" in body["error"]
    # A request may lower the configured timeout but not raise it.
    status, body = await get_json(client, "/api/v1/query", query="up", time=T0, timeout="1h")
    assert status == 503 and body["errorType"] == "timeout"


async def test_store_closing_mid_query_is_503_canceled(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.storage import StoreClosed

    async def closed(*args: Any, **kw: Any) -> Any:
        raise StoreClosed("store is closed")

    for name in ("select", "select_arrays", "read_selected"):
        monkeypatch.setattr(store_of(client), name, closed)
    status, body = await get_json(client, "/api/v1/query", query="up", time=T0)
    assert status == 503 and body["errorType"] == "canceled"


async def test_query_api_is_in_the_read_group(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(
        aiohttp_client, make_config, "auth:\n  read:\n    bearer_tokens: [r]\n", data=False
    )
    assert (await client.get("/api/v1/query", params={"query": "1"})).status == 401
    ok = await client.get(
        "/api/v1/query", params={"query": "1"}, headers={"Authorization": "Bearer r"}
    )
    assert ok.status == 200
    # A path with a variable part is still matched to its group, not to "admin".
    path = "/api/v1/label/job/values"
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer r"})).status == 200


# --- Grafana ---------------------------------------------------------------------------------


async def test_grafana_request_sequence(client: Any) -> None:
    """What Grafana's Prometheus data source sends when a dashboard opens (POST forms)."""
    start, end = str(T0), str(T0 + 3600)
    hdr = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.get("/api/v1/status/buildinfo")
    assert resp.status == 200 and (await resp.json())["data"]["version"]
    status, labels = await post_json(client, "/api/v1/labels", [("start", start), ("end", end)])
    assert status == 200 and "__name__" in labels["data"] and "job" in labels["data"]
    status, names = await get_json(client, "/api/v1/label/__name__/values", start=start, end=end)
    assert names["data"] == ["http_requests_total", "temp_celsius", "up"]  # old_metric ended
    status, series = await post_json(
        client,
        "/api/v1/series",
        [("match[]", '{__name__="up"}'), ("start", start), ("end", end)],
        headers=hdr,
    )
    assert status == 200 and len(series["data"]) == 2
    status, meta = await get_json(client, "/api/v1/metadata")
    assert status == 200 and meta == {"status": "success", "data": {}}
    status, rng = await post_json(
        client,
        "/api/v1/query_range",
        [
            ("query", "sum by (job) (rate(http_requests_total[1m]))"),
            ("start", start),
            ("end", end),
            ("step", "60"),
        ],
        headers=hdr,
    )
    assert status == 200 and rng["data"]["resultType"] == "matrix"
    assert len(rng["data"]["result"][0]["values"]) == 60  # none at T0: one sample in (T0-1m, T0]
    status, inst = await post_json(
        client, "/api/v1/query", [("query", "count(up)"), ("time", end)], headers=hdr
    )
    assert status == 200 and inst["data"]["result"][0]["value"] == [T0 + 3600, "2"]


async def test_response_is_compact_json_like_prometheus(client: Any) -> None:
    resp = await client.get("/api/v1/query", params={"query": "vector(1)", "time": str(T0)})
    raw = await resp.read()
    assert raw == (
        b'{"status":"success","data":{"resultType":"vector","result":'
        b'[{"metric":{},"value":[1700000000,"1"]}]}}'
    )
    assert json.loads(raw)["data"]["result"][0]["value"][1] == "1"


async def test_numpy_free_output_for_special_values(client: Any) -> None:
    _, body = await get_json(client, "/api/v1/query", query="vector(1) / 0", time=T0)
    assert body["data"]["result"][0]["value"][1] == "+Inf"
    _, body = await get_json(client, "/api/v1/query", query="-(vector(0) / 0)", time=T0)
    assert body["data"]["result"][0]["value"][1] == "NaN"
    assert np.isnan(float(body["data"]["result"][0]["value"][1]))
