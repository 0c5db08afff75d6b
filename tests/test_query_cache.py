"""The query result cache: keys, TTL, LRU by bytes, write invalidation, HTTP behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.query.cache import CacheKey, Dependencies, QueryCache, dependencies, signature
from agent.query.parser import parse
from agent.query.values import Matrix, Scalar, Series
from tests.test_api_query import T0, agent_of, api_client, lab, store_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def matrix(points: int) -> Matrix:
    t = np.arange(points, dtype=np.int64)
    return Matrix([Series((("__name__", "m"),), t, t.astype(np.float64))])


def key(sig: str = "q", start: int = 0) -> CacheKey:
    return CacheKey(sig, start, start + 1000, 10, "", 300_000)


DEPS = Dependencies(frozenset({"m"}), 0, 1000)


# --- unit ----------------------------------------------------------------------------------


def test_signature_normalises_spelling_not_meaning() -> None:
    a = signature(parse("sum by (job)(rate(x[5m]))"))
    assert a == signature(parse("sum  by(job) ( rate( x{}[5m] ) )"))
    assert a == signature(parse("sum(rate(x[5m])) by (job)"))
    assert a != signature(parse("sum by (job)(rate(x[1m]))"))
    assert a != signature(parse("sum by (job)(rate(y[5m]))"))


def test_dependencies_cover_offsets_ranges_and_subqueries() -> None:
    d = dependencies(parse("rate(x[5m]) + y offset 1h"), 10_000_000, 20_000_000, 300_000, 60_000)
    assert d.names == frozenset({"x", "y"})
    assert d.lo <= 10_000_000 - 3_600_000 - 300_000 and d.hi >= 20_000_000
    sub = dependencies(parse("max_over_time(x[10m:1m])"), 10_000_000, 10_000_000, 300_000, 60_000)
    assert sub.lo <= 10_000_000 - 600_000 - 60_000 - 300_000
    future = dependencies(parse("x offset -10m"), 0, 1000, 300_000, 60_000)
    assert future.hi >= 1000 + 600_000
    assert dependencies(parse('{job="a"}'), 0, 1, 1, 1).names is None
    pinned = dependencies(parse("x @ 100"), 0, 1, 1, 1)
    assert pinned.lo < -(2**62) and pinned.hi > 2**62
    assert dependencies(parse("time()"), 0, 1, 1, 1).names == frozenset()


def test_ttl_expiry() -> None:
    clock = Clock()
    cache = QueryCache(ttl_s=10, clock=clock)
    cache.put(key(), matrix(3), DEPS, cache.begin(), 10)
    cache.finish()
    assert cache.get(key()) is not None
    clock.now += 9.9
    assert cache.get(key()) is not None
    clock.now += 0.2
    assert cache.get(key()) is None and len(cache) == 0
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


def test_lru_eviction_by_bytes() -> None:
    one = matrix(1000)  # ~16 kB of arrays
    cache = QueryCache(max_bytes=40_000)
    for i in range(3):
        cache.put(key(start=i), matrix(1000), DEPS, cache.begin(), 60)
        cache.finish()
        if i == 1:
            assert cache.get(key(start=0)) is not None  # 0 is now more recent than 1
    assert cache.stats.evictions == 1
    assert cache.get(key(start=1)) is None
    assert cache.get(key(start=0)) is not None and cache.get(key(start=2)) is not None
    assert cache.stats.bytes <= 40_000
    assert one.series[0].values.flags.writeable  # only stored results are frozen
    stored = cache.get(key(start=0))
    assert stored is not None and isinstance(stored.result, Matrix)
    assert not stored.result.series[0].values.flags.writeable
    # Too big for the whole budget: not stored at all, nothing evicted for it.
    assert cache.put(key(start=9), matrix(10_000), DEPS, cache.begin(), 60) is None
    cache.finish()
    assert cache.stats.evictions == 1


def test_invalidation_by_metric_name_and_time() -> None:
    names = {1: "m", 2: "other"}
    cache = QueryCache(name_of=names.__getitem__)
    cache.put(key("a"), matrix(2), DEPS, cache.begin(), 60)
    cache.put(key("b"), matrix(2), Dependencies(None, 0, 1000), cache.begin(), 60)
    cache.finish()
    cache.finish()
    cache.on_write(np.array([2]), 0, 10)  # another metric: only the wildcard entry goes
    assert cache.get(key("a")) is not None and cache.get(key("b")) is None
    cache.on_write(np.array([1]), 5000, 6000)  # same metric, outside the range read
    assert cache.get(key("a")) is not None
    cache.on_write(np.array([1, 2]), 1000, 1000)  # inside (the bound is inclusive)
    assert cache.get(key("a")) is None
    assert cache.stats.invalidations == 2


def test_write_during_evaluation_prevents_storing() -> None:
    cache = QueryCache(name_of=lambda sid: "m")
    token = cache.begin()
    cache.on_write(np.array([7]), 500, 500)  # lands while the query runs
    assert cache.put(key(), matrix(2), DEPS, token, 60) is None
    cache.finish()
    token = cache.begin()
    cache.on_write(np.array([7]), 5000, 5000)  # outside what the query read
    assert cache.put(key(), matrix(2), DEPS, token, 60) is not None
    cache.finish()


def test_pins_and_disabled_cache() -> None:
    cache = QueryCache(enabled=False)
    assert cache.ttl_for("q") is None
    cache.pin("q", 30)
    assert cache.ttl_for("q") == 30 and cache.ttl_for("other") is None
    cache.put(key("q"), Scalar(0, 1.0), DEPS, cache.begin(), 30)
    cache.finish()
    cache.pin("q", 0)  # never cache: the entry goes at once
    assert cache.ttl_for("q") is None and len(cache) == 0
    cache.pin("q", None)
    assert cache.ttl_for("q") is None  # back to the (disabled) default
    with pytest.raises(ValueError):
        cache.pin("q", -1)


# --- over HTTP and through the store --------------------------------------------------------


def cache_metrics(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("tsagent_query_cache_"):
                out[s.name] = s.value
    return out


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    return await api_client(aiohttp_client, make_config)


RANGE = {
    "query": 'sum(http_requests_total{code="200"})',
    "start": str(T0 + 600),
    "end": str(T0 + 900),
    "step": "60",
}


async def fetch(
    client: Any, headers: dict[str, str] | None = None, **params: str
) -> tuple[str, Any]:
    resp = await client.get("/api/v1/query_range", params=params or RANGE, headers=headers)
    assert resp.status == 200
    return resp.headers["X-Tsagent-Cache"], await resp.json()


async def test_hit_miss_and_counters(client: Any) -> None:
    state, first = await fetch(client)
    assert state == "miss"
    state, second = await fetch(client)
    assert state == "hit" and second == first
    # Another spelling of the same query shares the entry.
    state, _ = await fetch(client, **{**RANGE, "query": 'sum ( http_requests_total{code="200"} )'})
    assert state == "hit"
    # Different step: a different entry.
    state, _ = await fetch(client, **{**RANGE, "step": "30"})
    assert state == "miss"
    metrics = cache_metrics(await (await client.get("/metrics")).text())
    assert metrics["tsagent_query_cache_hits_total"] == 2
    assert metrics["tsagent_query_cache_misses_total"] == 2
    assert metrics["tsagent_query_cache_entries"] == 2
    assert metrics["tsagent_query_cache_bytes"] > 0


async def test_cache_control_bypasses(client: Any) -> None:
    await fetch(client)
    state, _ = await fetch(client, headers={"Cache-Control": "no-cache"})
    assert state == "bypass"
    state, _ = await fetch(client, headers={"Cache-Control": "max-age=0, no-store"})
    assert state == "off"
    state, _ = await fetch(client, headers={"Pragma": "no-cache"})
    assert state == "bypass"
    state, _ = await fetch(client)
    assert state == "hit"
    stats = agent_of(client).queries.cache.stats
    assert (stats.hits, stats.misses) == (1, 1)


async def test_new_data_inside_invalidates(client: Any) -> None:
    store, agent = store_of(client), agent_of(client)
    await fetch(client)
    # A write to another metric, or to this one outside the range read, keeps the entry.
    [other] = await store.get_or_create_series([lab("unrelated")])
    await store.append([other], [(T0 + 700) * 1000], [1.0])
    [sid] = await store.get_or_create_series(
        [lab("http_requests_total", job="api", code="200", instance="a")]
    )
    await store.append([sid], [(T0 + 4000) * 1000], [9999.0])
    assert (await fetch(client))[0] == "hit"
    # A change inside the range (record_write replaces a value) invalidates it.
    await store.record_write(sid, (T0 + 900) * 1000, 5.0)
    state, body = await fetch(client)
    assert state == "miss"
    assert body["data"]["result"][0]["values"][-1] == [T0 + 900, "5"]
    assert agent.queries.cache.stats.invalidations == 1


async def test_append_inside_range_invalidates(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, data=False)
    store = store_of(client)
    [sid] = await store.get_or_create_series([lab("fresh")])
    await store.append([sid], [T0 * 1000], [1.0])
    params = {"query": "fresh", "start": str(T0), "end": str(T0 + 120), "step": "60"}
    assert (await fetch(client, **params))[0] == "miss"
    assert (await fetch(client, **params))[0] == "hit"
    await store.append([sid], [(T0 + 60) * 1000], [2.0])
    state, body = await fetch(client, **params)
    assert state == "miss"
    assert body["data"]["result"][0]["values"][1] == [T0 + 60, "2"]


async def test_rollback_retention_and_backfill_invalidate(client: Any) -> None:
    agent = agent_of(client)
    store = store_of(client)
    cache = agent.queries.cache
    [sid] = await store.get_or_create_series(
        [lab("http_requests_total", job="api", code="200", instance="a")]
    )
    await fetch(client)
    audit_id = await store.record_write(sid, (T0 + 3000) * 1000, 1.0)  # outside: entry kept
    assert (await fetch(client))[0] == "hit"
    await store.rollback(audit_id)  # rollbacks count as touching all time of the series
    assert (await fetch(client))[0] == "miss"
    old = {"query": "old_metric", "start": str(T0 - 7200), "end": str(T0 - 7000), "step": "60"}
    assert (await fetch(client, **old))[0] == "miss"
    assert (await fetch(client, **old))[0] == "hit"
    before = cache.stats.invalidations
    await store.backfill([sid], [(T0 - 100_000) * 1000], [1.0])  # long before both ranges
    assert cache.stats.invalidations == before
    await store.backfill([sid], [(T0 + 601) * 1000], [1.0])
    assert (await fetch(client))[0] == "miss"


async def test_retention_invalidates(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, "storage:\n  retention: 1h\n")
    store = store_of(client)
    old = {"query": "old_metric", "start": str(T0 - 7200), "end": str(T0 - 7000), "step": "60"}
    assert (await fetch(client, **old))[0] == "miss"
    assert (await fetch(client, **old))[0] == "hit"
    result = await store.apply_retention(now_ms=(T0 + 3600) * 1000)
    assert result.samples > 0
    state, body = await fetch(client, **old)
    assert state == "miss" and body["data"]["result"] == []


async def test_eviction_counter(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(
        aiohttp_client, make_config, "query:\n  cache:\n    max_bytes: 1500\n"
    )
    for step in ("60", "30", "20"):
        assert (await fetch(client, **{**RANGE, "step": step}))[0] == "miss"
    metrics = cache_metrics(await (await client.get("/metrics")).text())
    assert metrics["tsagent_query_cache_evictions_total"] >= 1
    assert metrics["tsagent_query_cache_bytes"] <= 1500


async def test_disabled_cache_and_python_pin(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(aiohttp_client, make_config, "query:\n  cache:\n    enabled: false\n")
    assert (await fetch(client))[0] == "off"
    assert (await fetch(client))[0] == "off"
    agent = agent_of(client)
    sig = agent.cache_query('sum(http_requests_total{code="200"})', 60)
    assert sig == agent.cache_query('sum (http_requests_total{code="200"})', "1m")
    assert (await fetch(client))[0] == "miss"
    assert (await fetch(client))[0] == "hit"
    agent.cache_query('sum(http_requests_total{code="200"})', 0)
    assert (await fetch(client))[0] == "off"


async def test_ttl_from_config(aiohttp_client: Any, make_config: Any, monkeypatch: Any) -> None:
    client = await api_client(aiohttp_client, make_config, "query:\n  cache:\n    ttl: 30s\n")
    await fetch(client)
    cache = agent_of(client).queries.cache
    [entry] = list(cache)
    assert entry.expires_at - entry.stored_at == pytest.approx(30)
    clock = Clock()
    clock.now = entry.expires_at + 1
    monkeypatch.setattr(cache, "clock", clock)
    assert (await fetch(client))[0] == "miss"


async def test_python_api_shares_the_cache(client: Any) -> None:
    agent = agent_of(client)
    await fetch(client)
    data = await agent.query_range(RANGE["query"], T0 + 600, T0 + 900, 60)
    assert agent.queries.cache.stats.hits == 1
    _, body = await fetch(client)
    assert body["data"] == data


async def test_http_answers_before_storing(client: Any) -> None:
    """The API sends its answer, then stores it: the next request hits, with the
    bytes the first one sent, and nothing stays counted in flight."""
    cache = agent_of(client).queries.cache
    resp = await client.get(
        "/api/v1/query_range", params=RANGE, headers={"Cache-Control": "no-cache"}
    )
    sent = await resp.read()
    assert resp.headers["X-Tsagent-Cache"] == "bypass"
    assert len(cache) == 1 and cache._inflight == 0
    entry = next(iter(cache))
    assert entry.data_json is not None and sent.endswith(entry.data_json + b"}")
    again = await client.get("/api/v1/query_range", params=RANGE)
    assert again.headers["X-Tsagent-Cache"] == "hit" and await again.read() == sent


async def test_deferred_store_waits_for_settle(client: Any) -> None:
    service = agent_of(client).queries
    q = RANGE["query"]
    start, end = int(RANGE["start"]) * 1000, int(RANGE["end"]) * 1000
    answer = await service.range(q, start, end, 60_000, encode_json=True, defer_store=True)
    assert len(service.cache) == 0 and service.cache._inflight == 1
    body = answer.data_json()
    answer.settle()
    answer.settle()  # once only
    assert len(service.cache) == 1 and service.cache._inflight == 0
    assert next(iter(service.cache)).data_json == body
    hit = await service.range(q, start, end, 60_000)
    assert hit.cache == "hit" and hit.data_json() == body
