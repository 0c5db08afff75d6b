"""Hostile queries (issue 13, read group): each is refused with a 4xx or answered correctly.

The daemon's app runs in-process over a real store. The cases are the ones the
security review fired: parser-quadratic nesting and operator chains,
catastrophic regexes, tiny subquery and join steps, a query past its timeout,
more queries than slots, and a heavy query while ``/-/healthy`` must answer.
Allocation cases are watched with ``tracemalloc`` (numpy's buffers are traced),
so "no memory blow-up" is asserted as a peak, not as a wall time.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent.model import Labels
from agent.query.engine import Engine
from agent.query.errors import QueryError
from agent.query.limits import (
    ParseLimits,
    QueryBudget,
    QueryCanceled,
    QueryTimeout,
    check_query_text,
)
from agent.query.queryable import MemoryQueryable
from agent.query.runner import LoopBridge, QueryRunner
from agent.storage import Store
from agent.web.app import CONTEXT_KEY, make_app

T0 = 1_700_000_000  # seconds
STEP = 15
# sum_over_time over a day of 1 s subquery steps walks 86,400 window positions in
# Python-level Kahan sums: heavy enough to still be running while other requests
# are served, and it checks its budget between positions.
HEAVY = "sum_over_time(vector(1)[7d:1s])"
MIB = 1024 * 1024


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def _client(aiohttp_client: Any, make_config: Callable[..., Any], text: str = "") -> Any:
    config, host = make_config(text)
    client = await aiohttp_client(make_app(config, host))
    ctx = client.app[CONTEXT_KEY]
    rows: list[tuple[Labels, int, float]] = []
    for i in range(241):
        t = (T0 + i * STEP) * 1000
        rows.append((lab("up", job="api", instance="a"), t, 1.0))
        rows.append((lab("cpu", v="a" * 40 + "!"), t, 1.0))
        rows.append((lab("cpu", v="a" * 40), t, 2.0))
    result = await ctx.append_samples(rows, source="test")
    assert result.accepted == len(rows)
    return client


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    return await _client(aiohttp_client, make_config)


def store_of(client: Any) -> Store:
    store: Store = client.app[CONTEXT_KEY].require_store()
    return store


async def query(client: Any, expr: str, **params: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/v1/query", data={"query": expr, "time": T0 + 3600, **params})
    return resp.status, await resp.json()


async def query_range(client: Any, expr: str, **params: Any) -> tuple[int, dict[str, Any]]:
    form = {"query": expr, "start": T0, "end": T0 + 3600, "step": 60, **params}
    resp = await client.post("/api/v1/query_range", data=form)
    return resp.status, await resp.json()


async def peak_mib(run: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        got = await run()
        return got, tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


async def healthy(client: Any) -> None:
    resp = await client.get("/-/healthy")
    assert resp.status == 200


# --- the query text: refused before the parser sees it -----------------------------------


@pytest.mark.parametrize(
    ("expr", "limit"),
    [
        ("(" * 5000 + "1" + ")" * 5000, "query.max_query_depth"),
        ("(" * 10000 + "up" + ")" * 10000, "query.max_query_depth"),
        ("sum(" * 2000 + "up" + ")" * 2000, "query.max_query_depth"),
        ("+".join(["1"] * 5000), "query.max_query_operators"),
        (" or ".join(["up"] * 3000), "query.max_query_operators"),
        ("up{" + ",".join(f'l{i}="{"x" * 50}"' for i in range(2000)) + "}", "max_query_length"),
    ],
    ids=["parens-5000", "parens-10000", "calls-2000", "plus-5000", "or-3000", "long"],
)
async def test_nesting_and_length_are_refused_before_parsing(
    client: Any, expr: str, limit: str
) -> None:
    status, body = await query(client, expr)
    assert status == 400, body
    assert body["errorType"] == "bad_data"
    assert limit in body["error"]
    await healthy(client)


def test_text_limits_count_what_the_parser_nests() -> None:
    limits = ParseLimits(max_length=1000, max_depth=3, max_binary_ops=2)
    check_query_text("sum(rate(x[5m]))", limits)  # depth 3 passes
    check_query_text('a + b{l="((((++++"} - c', limits)  # strings are skipped
    for bad in ("((((1))))", "a + b - c * d", "a and b or c unless d"):
        with pytest.raises(QueryError, match="max_query"):
            check_query_text(bad, limits)


async def test_ordinary_dashboard_queries_pass_the_limits(client: Any) -> None:
    expr = (
        'sum by (job) (rate(up{job=~"api|db", instance!=""}[5m])) / ignoring(x) '
        "group_left sum by (job) (up offset 1h) * 100 > bool 0.5"
    )
    status, body = await query(client, expr)
    assert status == 200, body


# --- regexes: linear time, Prometheus' anchoring and syntax ------------------------------


async def test_catastrophic_regex_is_answered_correctly(client: Any) -> None:
    status, body = await query(client, 'cpu{v=~"(a+)+$"}')
    assert status == 200, body
    assert [r["metric"]["v"] for r in body["data"]["result"]] == ["a" * 40]
    status, body = await query(client, 'cpu{v!~"(a|a)*(a|aa)+$"}')
    assert status == 200, body
    assert [r["metric"]["v"] for r in body["data"]["result"]] == ["a" * 40 + "!"]
    status, body = await query(
        client, 'label_replace(cpu, "w", "$1", "v", "((a+)+)!")', time=T0 + 3600
    )
    assert status == 200, body
    got = sorted(r["metric"].get("w", "") for r in body["data"]["result"])
    assert got == ["", "a" * 40]
    await healthy(client)


async def test_regexes_are_fully_anchored_with_go_syntax(client: Any) -> None:
    status, body = await query(client, 'cpu{v=~"a+"}')
    assert [r["metric"]["v"] for r in body["data"]["result"]] == ["a" * 40]
    # Go's regexp (RE2) has no backreferences or lookaround: a 400, as in Prometheus.
    for bad in ['cpu{v=~"(a)\\\\1"}', 'cpu{v=~"(?=a)a"}']:
        status, body = await query(client, bad)
        assert status == 400, body
        assert body["errorType"] == "bad_data"


# --- points estimated before they are allocated ------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "sum_over_time(vector(1)[30d:1ms])",
        "max_over_time(up[30d:1ms])",
        "count_over_time((up + up)[3650d:1ms])",
    ],
)
async def test_tiny_subquery_steps_are_refused_before_allocating(client: Any, expr: str) -> None:
    (status, body), peak = await peak_mib(lambda: query(client, expr))
    assert status == 422, body
    assert body["errorType"] == "execution"
    assert "too many samples" in body["error"]
    assert peak < 64, f"{peak:.0f} MiB traced while refusing {expr}"
    await healthy(client)


async def test_series_times_steps_past_max_samples_is_refused(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    client = await _client(aiohttp_client, make_config, "query:\n  max_samples: 1000\n")
    # 3 series x 11,001 steps: more points than allowed, though few samples are loaded.
    status, body = await query_range(
        client, '{__name__=~"up|cpu"}', start=T0, end=T0 + 11000, step=1
    )
    assert status == 422, body
    assert "too many samples" in body["error"]
    status, body = await query(client, "up")
    assert status == 200 and len(body["data"]["result"]) == 1


async def test_memory_budget_names_the_limit(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    client = await _client(aiohttp_client, make_config, "query:\n  max_memory_bytes: 100000\n")
    status, body = await query_range(client, "up + up + up + up", start=T0, end=T0 + 3600, step=1)
    assert status == 422, body
    assert "query.max_memory_bytes" in body["error"]


async def test_join_with_tiny_steps_is_refused_before_allocating(client: Any) -> None:
    store = store_of(client)
    ids = store.match_series([m for m in _matchers("cpu")])
    params = [
        ("id", str(ids[0])),
        ("id", str(ids[1])),
        ("start", "0"),
        ("end", str(100 * 365 * 86400)),
        ("step", "1ms"),
    ]
    resp, peak = await peak_mib(lambda: client.get("/api/v1/join", params=params))
    assert 400 <= resp.status < 500, await resp.text()
    assert "join_max_rows" in (await resp.json())["error"]
    assert peak < 64
    day = [*params[:2], ("start", str(T0)), ("end", str(T0 + 86400)), ("step", "1ms")]
    resp = await client.get("/api/v1/join", params=day)
    assert 400 <= resp.status < 500
    await healthy(client)


def _matchers(name: str) -> list[Any]:
    from agent.model import Matcher

    return [Matcher.of("__name__", "=", name)]


# --- time: a timeout that stops the work, slots, and a loop that keeps answering --------


async def test_timeout_interrupts_evaluation_and_frees_the_slot() -> None:
    mem = MemoryQueryable()
    mem.add({"__name__": "up"}, [0], [1.0])
    runner = QueryRunner(max_concurrency=1, max_queued=0)
    budget = QueryBudget(0.05, 10**9, 10**12)
    engine = Engine(LoopBridge(mem, asyncio.get_running_loop(), budget), budget=budget)
    outcome: list[str] = []

    async def evaluate() -> Any:
        try:
            result = await engine.range(HEAVY, 0, 3_600_000, 60_000)
        except QueryError as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append("finished")
        return result

    with pytest.raises(QueryTimeout):
        await runner.run(evaluate, budget)
    while runner.running:  # the worker stops at its next budget check
        await asyncio.sleep(0.01)
    assert outcome in (["QueryTimeout"], ["QueryCanceled"])
    runner.close()


async def test_cancelled_budget_stops_a_running_evaluation() -> None:
    mem = MemoryQueryable()
    budget = QueryBudget(0, 10**9, 10**12)
    budget.cancel()
    engine = Engine(mem, budget=budget)
    with pytest.raises(QueryCanceled):
        await engine.instant(HEAVY, 0)


async def test_slow_query_times_out_while_healthy_answers(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    client = await _client(aiohttp_client, make_config, "query:\n  timeout: 30s\n")
    task = asyncio.ensure_future(query_range(client, HEAVY, timeout="1s"))
    answered_meanwhile = 0
    while not task.done():
        await healthy(client)
        answered_meanwhile += 1
        await asyncio.sleep(0.02)
    status, body = task.result()
    assert status == 503, body
    assert body["errorType"] == "timeout"
    assert answered_meanwhile >= 2
    status, body = await query(client, "up")
    assert status == 200 and body["data"]["result"][0]["value"][1] == "1"


async def test_more_queries_than_slots_and_queue_are_refused(
    aiohttp_client: Any, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await _client(
        aiohttp_client, make_config, "query:\n  max_concurrency: 1\n  max_queued: 1\n"
    )
    store = store_of(client)
    # Small queries answer on the event loop without a slot (agent.query.inline): these
    # stand for big ones, which take slots in the workers.
    client.app[CONTEXT_KEY].require_agent().queries.inline = False
    # The read is held in the query worker thread (its own event loop): thread events.
    gate = threading.Event()
    entered = threading.Event()
    real = store.read_selected

    async def held(*args: Any, **kw: Any) -> Any:
        entered.set()
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return await real(*args, **kw)

    monkeypatch.setattr(store, "read_selected", held)
    first = asyncio.ensure_future(query(client, "up", nocache="1"))
    while not entered.is_set():  # the one slot is taken
        await asyncio.sleep(0.005)
    second = asyncio.ensure_future(query(client, "up + 1"))
    runner = client.app[CONTEXT_KEY].require_agent().queries.runner
    while runner.queued < 1:
        await asyncio.sleep(0.005)
    status, body = await query(client, "up * 2")  # slot busy, queue full
    assert status == 503, body
    assert body["errorType"] == "unavailable"
    assert "query.max_concurrency" in body["error"]
    await healthy(client)
    gate.set()
    for task in (first, second):
        status, body = await task
        assert status == 200, body
