"""Live samples: the Python API, Server-Sent Events and WebSocket, lag, cleanup, live queries."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from agent.dataio.stream import Lagged, SampleBatch, StreamedSample
from agent.model import STALE_NAN, Labels
from agent.root import Agent
from agent.storage import Store
from agent.web.app import CONTEXT_KEY, make_app
from tests.conftest import wait_until

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def test_python_api_yields_committed_samples_of_matching_series(
    store: Store, agent: Agent
) -> None:
    a, b = await store.get_or_create_series([lab("cpu", host="a"), lab("cpu", host="b")])
    got: list[StreamedSample | Lagged] = []
    async with agent.stream_updates(matchers='cpu{host="a"}') as updates:
        await store.append([a, b, a], [T0, T0, T0 + 1], [1.0, 2.0, STALE_NAN])
        # A series created after subscribing that matches is picked up too.
        [a2] = await store.get_or_create_series([lab("cpu", host="a", core="1")])
        await store.append([b, a2], [T0 + 2, T0 + 2], [3.0, 4.0])
        # Duplicates are not re-delivered; backfills and record_write are.
        await store.append([a], [T0], [1.0])
        await store.backfill([a], [T0 - 1000], [0.5])
        await store.record_write(a, T0 + 5, 9.0)
        async for item in updates:
            got.append(item)
            if len(got) == 5:
                break
    assert [(s.series_id, s.timestamp) for s in got if isinstance(s, StreamedSample)] == [
        (a, T0),
        (a, T0 + 1),
        (a2, T0 + 2),
        (a, T0 - 1000),
        (a, T0 + 5),
    ]
    first = got[0]
    assert isinstance(first, StreamedSample) and first.labels == lab("cpu", host="a")
    stale = got[1]
    assert isinstance(stale, StreamedSample) and math.isnan(stale.value)
    assert np.float64(stale.value).view(np.uint64) == np.float64(STALE_NAN).view(np.uint64)
    assert store.sample_listener_count == 0 and len(agent.streams) == 0


async def test_by_series_id_and_bounded_buffer(store: Store, agent: Agent) -> None:
    a, b = await store.get_or_create_series([lab("m", i="a"), lab("m", i="b")])
    sub = agent.stream_updates(a, max_buffer=5)
    t = np.arange(8, dtype=np.int64) + T0
    await store.append(np.full(8, a), t, np.arange(8.0))
    await store.append(np.full(8, b), t, np.arange(8.0))
    await store.append([a, a], [T0 + 8, T0 + 9], [8.0, 9.0])
    # Ten samples of ``a`` arrived, the buffer holds five: the oldest five are dropped.
    assert sub.buffered == 5
    assert await sub.next_batch(timeout=1) == Lagged(5)
    batch = await sub.next_batch(timeout=1)
    assert isinstance(batch, SampleBatch)
    assert batch.timestamps.tolist() == [T0 + 5, T0 + 6, T0 + 7, T0 + 8, T0 + 9]
    assert batch.values.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert await sub.next_batch(timeout=0.01) is None
    assert Lagged(3).message == "lagged, 3 samples dropped"
    sub.close()
    assert await sub.next_batch() is None
    assert store.sample_listener_count == 0
    with pytest.raises(ValueError, match="series ids or matchers"):
        agent.stream_updates()


async def test_abandoned_subscription_goes_away(store: Store, agent: Agent) -> None:
    [a] = await store.get_or_create_series([lab("m")])
    agent.stream_updates(a)  # never closed, never referenced
    import gc

    gc.collect()
    await store.append([a], [T0], [1.0])  # the hub notices it has nobody left
    assert store.sample_listener_count == 0


# --- over HTTP ------------------------------------------------------------------------------


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Parse a text/event-stream body into (event, parsed data) pairs."""
    name, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config(
        "export_http:\n  stream_buffer_samples: 3\n  stream_query_min_interval: 50ms\n"
    )
    return await aiohttp_client(make_app(config, host))


async def test_sse_receives_live_samples_and_cleans_up(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    store = ctx.require_store()
    baseline = store.sample_listener_count
    resp = await client.get("/api/v1/stream", params={"match[]": 'up{job="a"}'})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = sse_events(resp)
    assert await anext(events) == ("subscribed", {"series": 0})
    await ctx.append_samples(
        [(lab("up", job="a"), T0, 1.0), (lab("up", job="b"), T0, 0.0)], source="test"
    )
    name, data = await anext(events)
    assert name == "samples"
    assert data["resultType"] == "matrix"
    [series] = data["result"]
    assert series["metric"] == {"__name__": "up", "job": "a"}
    assert series["values"] == [[T0 / 1000, "1"]]  # as /api/v1/query_range writes it
    # More than the buffer (3) at once: the client is told what it lost.
    sid = store.series_id(lab("up", job="a"))
    assert sid is not None
    await store.append(np.full(5, sid), np.arange(5) + T0 + 1, np.arange(5.0))
    name, data = await anext(events)
    assert (name, data) == ("lagged", {"dropped": 2, "message": "lagged, 2 samples dropped"})
    name, data = await anext(events)
    assert [v[1] for v in data["result"][0]["values"]] == ["2", "3", "4"]
    resp.close()
    await wait_until(
        "store.sample_listener_count == baseline", lambda: store.sample_listener_count == baseline
    )
    assert len(client.app[CONTEXT_KEY].streams) == 0


async def test_websocket_receives_live_samples_and_cleans_up(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    store = ctx.require_store()
    baseline = store.sample_listener_count
    ws = await client.ws_connect("/api/v1/stream?match[]=temp")
    hello = await ws.receive_json(timeout=5)
    assert hello == {"type": "subscribed", "series": 0}
    for i in range(3):
        await ctx.append_samples([(lab("temp", room="x"), T0 + i, 20.0 + i)], source="test")
    seen: list[float] = []
    while len(seen) < 3:
        msg = await ws.receive_json(timeout=5)
        assert msg["type"] == "samples"
        seen += [float(v[1]) for s in msg["result"] for v in s["values"]]
    assert seen == [20.0, 21.0, 22.0]
    await ws.close()
    await wait_until(
        "store.sample_listener_count == baseline", lambda: store.sample_listener_count == baseline
    )


async def test_live_query_reevaluates_on_new_data(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    now = time.time_ns() // 1_000_000
    await ctx.append_samples([(lab("load", host="a"), now - 1000, 1.0)], source="test")
    resp = await client.get(
        "/api/v1/stream/query", params={"query": "sum(load)", "interval": "0.05"}
    )
    assert resp.status == 200
    events = sse_events(resp)
    name, first = await anext(events)
    assert name == "result" and first["status"] == "success"
    assert first["data"]["resultType"] == "vector"
    assert first["data"]["result"][0]["value"][1] == "1"
    await ctx.append_samples([(lab("load", host="b"), now, 2.0)], source="test")
    _, second = await anext(events)
    assert second["data"]["result"][0]["value"][1] == "3"
    resp.close()
    await wait_until("no subscription left", lambda: len(ctx.streams) == 0)

    bad = await client.get("/api/v1/stream/query", params={"query": "sum("})
    assert bad.status == 400 and (await bad.json())["errorType"] == "bad_data"
    missing = await client.get("/api/v1/stream")
    assert missing.status == 400
