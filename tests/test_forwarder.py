"""The remote-write forwarder against a local upstream that records (and refuses) requests.

The upstream is an aiohttp app decoding every request with the generated
``agent/prompb`` classes; a script of answers (status codes, Retry-After,
dropped connections) drives the failure cases. tsagent runs in-process with
``make_app`` on a temporary data directory, so "restart" is closing the app
and opening another on the same directory.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cramjam
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.config import ConfigError
from agent.context import AgentContext, context_of
from agent.prompb import remote_pb2
from agent.web.app import make_app
from plugins.forwarder.encode import compress, encode_labels, encode_request
from plugins.forwarder.exporter import RemoteWriteExporter, parse_retry_after
from tests.conftest import wait_until

T0 = 1_700_000_000_000
STALE_BITS = 0x7FF0000000000002
Key = tuple[tuple[str, str], ...]


def bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


# --- the upstream ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 204
    retry_after: str | None = None
    body: str = ""
    drop: bool = False  # close the connection without an answer


@dataclass
class Upstream:
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    attempts: list[remote_pb2.WriteRequest] = field(default_factory=list)
    accepted: list[remote_pb2.WriteRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    delay: Callable[[], float] | None = None
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        req = remote_pb2.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(raw)))
        self.attempts.append(req)
        self.headers.append(dict(request.headers))
        answer = self.script.pop(0) if self.script else self.default
        if self.delay is not None:
            await asyncio.sleep(self.delay())
        if answer.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=204)
        if 200 <= answer.status < 300:
            self.accepted.append(req)
        headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
        return web.Response(status=answer.status, text=answer.body, headers=headers)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/api/v1/write"

    def samples(self) -> dict[Key, list[tuple[int, int]]]:
        """Acknowledged samples per series, in arrival order, values as bits."""
        out: dict[Key, list[tuple[int, int]]] = {}
        for req in self.accepted:
            for ts in req.timeseries:
                key = tuple((lab.name, lab.value) for lab in ts.labels)
                out.setdefault(key, []).extend((s.timestamp, bits(s.value)) for s in ts.samples)
        return out

    def count(self) -> int:
        return sum(len(v) for v in self.samples().values())


@pytest.fixture
async def upstream() -> Any:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/api/v1/write", up.handle)
    up.server = TestServer(app, host="127.0.0.1")
    await up.server.start_server()
    yield up
    await up.server.close()


def upstream_yaml(url: str, queue: str = "", extra: str = "", name: str = "up1") -> str:
    q = queue or "{batch_send_deadline: 20ms, min_backoff: 1ms, max_backoff: 10ms}"
    return f"""
export:
  remote_write:
    - name: {name}
      url: {url}
      queue: {q}
{extra}"""


class Agent:
    """tsagent in-process; ``restart`` reopens on the same data directory."""

    def __init__(self, make_config: Any, text: str, clock: ManualClock | None = None) -> None:
        self.make_config = make_config
        self.text = text
        self.clock = clock
        self.client: TestClient | None = None

    async def start(self) -> Agent:
        config, host = self.make_config(self.text)
        self.client = TestClient(TestServer(make_app(config, host, clock=self.clock)))
        await self.client.start_server()
        return self

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    @property
    def ctx(self) -> AgentContext:
        assert self.client is not None
        return context_of(self.client.server.app)

    def exporter(self, name: str = "up1") -> RemoteWriteExporter:
        [exp] = [e for e in self.ctx.exporters if e.name == f"remote_write:{name}"]
        assert isinstance(exp, RemoteWriteExporter)
        return exp

    async def ingest(self, rows: list[tuple[Key, int, float]]) -> None:
        result = await self.ctx.append_samples(rows, source="test")
        assert result.accepted == len(rows), result

    async def metrics(self) -> dict[tuple[str, Key], float]:
        assert self.client is not None
        text = await (await self.client.get("/metrics")).text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }


@pytest.fixture
async def agents() -> Any:
    started: list[Agent] = []
    yield started
    for a in started:
        await a.stop()


async def start(
    agents: list[Agent], make_config: Any, text: str, clock: ManualClock | None = None
) -> Agent:
    agent = await Agent(make_config, text, clock).start()
    agents.append(agent)
    return agent


def series(name: str, **labels: str) -> Key:
    return tuple(sorted({"__name__": name, **labels}.items()))


PENDING = "tsagent_export_pending_samples"


# --- encoding --------------------------------------------------------------------------


def test_encoder_matches_generated_classes() -> None:
    labels = [encode_labels(series("a", job="x")), encode_labels(series("b", é="ü"[:0] or "v"))]
    out = np.array([1, 0, 1, 0], dtype=np.int64)
    ts = np.array([-5, T0, 2**62, T0 + 1], dtype=np.int64)
    vals = np.array([math.inf, -0.0, 1.5, 0.0]).view(np.uint64).copy()
    vals[3] = STALE_BITS
    body = encode_request(labels, out, ts, vals)
    req = remote_pb2.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(compress(body))))
    got = [
        (
            [(lab.name, lab.value) for lab in t.labels],
            [(s.timestamp, bits(s.value)) for s in t.samples],
        )
        for t in req.timeseries
    ]
    assert got == [
        (list(series("a", job="x")), [(T0, bits(-0.0)), (T0 + 1, STALE_BITS)]),
        (list(series("b", é="v")), [(-5, bits(math.inf)), (2**62, bits(1.5))]),
    ]


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


# --- configuration ---------------------------------------------------------------------


def test_config_errors_name_their_key(make_config: Any) -> None:
    text = """
export:
  remote_write:
    - name: a
      url: ftp://x
      match: ['up{']
      write_relabel_configs: [{action: hashmod, target_label: x}]
      external_labels: {1bad: x}
      headers: {Content-Type: x}
      bearer_token: t
      basic_auth: {username: u, password: p}
      queue: {min_backoff: 1s, max_backoff: 10ms}
    - name: a
      url: http://ok
    - url: http://ok
"""
    with pytest.raises(ConfigError) as info:
        make_config(text)
    msg = str(info.value)
    for needle in (
        "export.remote_write[0].url: expected an http:// or https:// URL",
        "export.remote_write[0].match[0]:",
        "export.remote_write[0].write_relabel_configs[0].modulus:",
        "export.remote_write[0].external_labels.1bad: invalid label name",
        "export.remote_write[0].headers.Content-Type: reserved",
        "export.remote_write[0]: at most one of basic_auth, bearer_token",
        "export.remote_write[0].queue.max_backoff: must be >= min_backoff",
        "export.remote_write[1].name: 'a' is already used by remote_write[0]",
        "export.remote_write[2].name: required",
    ):
        assert needle in msg, (needle, msg)
    # Types and ranges are the schema's, checked first, with the same key paths.
    with pytest.raises(ConfigError, match=r"export.remote_write\[0\].queue.shards: must be > 0"):
        make_config("export: {remote_write: [{name: a, url: 'http://x', queue: {shards: 0}}]}")


# --- forwarding --------------------------------------------------------------------------


async def test_forwards_with_external_labels_relabel_and_match(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    extra = """      match: ['{job="keep"}', 'other']
      external_labels: {agent: edge-1, job: ignored}
      write_relabel_configs:
        - {source_labels: [__name__], regex: 'drop_.*', action: drop}
        - {regex: secret, action: labeldrop}
        - {source_labels: [zone], regex: '(.+)', target_label: region, replacement: 'r-$1'}
      bearer_token: s3cret
"""
    agent = await start(agents, make_config, upstream_yaml(upstream.url, extra=extra))
    stale = struct.unpack("<d", struct.pack("<Q", STALE_BITS))[0]
    await agent.ingest(
        [
            (series("m", job="keep", secret="x", zone="eu"), T0, 1.0),
            (series("m", job="keep", secret="x", zone="eu"), T0 + 1, stale),
            (series("drop_me", job="keep"), T0, 2.0),
            (series("m", job="skip"), T0, 3.0),  # no selector matches
            (series("other"), T0, 4.0),
        ]
    )
    await wait_until("2 series upstream", lambda: upstream.count() == 3)
    got = upstream.samples()
    assert got == {
        (
            ("__name__", "m"),
            ("agent", "edge-1"),
            ("job", "keep"),
            ("region", "r-eu"),
            ("zone", "eu"),
        ): [
            (T0, bits(1.0)),
            (T0 + 1, STALE_BITS),
        ],
        (("__name__", "other"), ("agent", "edge-1"), ("job", "ignored")): [(T0, bits(4.0))],
    }
    h = upstream.headers[0]
    assert h["Content-Encoding"] == "snappy"
    assert h["Content-Type"] == "application/x-protobuf"
    assert h["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert h["User-Agent"].startswith("tsagent/")
    assert h["Authorization"] == "Bearer s3cret"
    m = await agent.metrics()
    assert m[("tsagent_forwarder_sent_samples_total", (("upstream", "up1"),))] == 3
    await wait_until("pending 0", lambda: agent.ctx.exporters != [])


async def test_backfills_reach_the_forwarder(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    agent = await start(agents, make_config, upstream_yaml(upstream.url))
    [sid] = await agent.ctx.require_store().get_or_create_series([series("hist")])
    result = await agent.ctx.backfill(
        [sid, sid], [T0 - 10_000, T0 - 5_000], [1.0, 2.0], source="bf"
    )
    assert result.accepted == 2
    await wait_until("backfill upstream", lambda: upstream.count() == 2)
    assert upstream.samples() == {
        series("hist"): [(T0 - 10_000, bits(1.0)), (T0 - 5_000, bits(2.0))]
    }


async def test_batch_is_in_the_queue_when_append_returns(
    upstream: Upstream, make_config: Any, agents: list[Agent], data_dir: Any
) -> None:
    upstream.default = Answer(503)
    agent = await start(agents, make_config, upstream_yaml(upstream.url))
    await agent.ingest([(series("q"), T0, 1.0), (series("q"), T0 + 1, 2.0)])
    # Read with a separate connection: committed, i.e. durable, before append returned.
    conn = sqlite3.connect(data_dir / "tsagent.db")
    try:
        rows = conn.execute("SELECT op, source, count FROM export_log").fetchall()
    finally:
        conn.close()
    assert ("append", "test", 2) in rows


async def test_batching_by_size_and_deadline(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    queue = "{max_samples_per_send: 100, batch_send_deadline: 400ms, shards: 1}"
    clock = ManualClock(time.time())
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue), clock)
    rows = [(series("s", i=str(i)), T0, float(i)) for i in range(250)]
    await agent.ingest(rows)
    # More than max_samples_per_send is there: sent at once, in full requests first.
    await wait_until("250 samples", lambda: upstream.count() == 250)
    assert [sum(len(t.samples) for t in r.timeseries) for r in upstream.accepted] == [100, 100, 50]

    # A lone sample waits for batch_send_deadline on the agent's clock, however long the
    # wall clock runs (this wait cannot make the test flaky: only a bug would send it).
    await agent.ingest([(series("s", i="x"), T0, 1.0)] * 1)
    await asyncio.sleep(0.5)
    assert upstream.count() == 250
    clock.advance(0.399)
    await asyncio.sleep(0.5)
    assert upstream.count() == 250
    clock.advance(0.002)
    await wait_until("the lone sample after the deadline", lambda: upstream.count() == 251)


async def test_per_series_order_with_concurrent_shards(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    import random

    rng = random.Random(7)
    upstream.delay = lambda: rng.random() * 0.004
    # Every 5th attempt fails once: retries must not reorder anything either.
    upstream.script = [Answer(503) if i % 5 == 4 else Answer() for i in range(40)]
    queue = "{max_samples_per_send: 7, batch_send_deadline: 5ms, shards: 4, min_backoff: 1ms}"
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    want: dict[Key, list[tuple[int, int]]] = {}
    for r in range(15):
        rows = [(series("o", s=str(s)), T0 + r * 1000, float(r)) for s in range(12)]
        for key, t, v in rows:
            want.setdefault(key, []).append((t, bits(v)))
        await agent.ingest(rows)
    await wait_until("all samples", lambda: upstream.count() == 180, timeout=10)
    assert upstream.samples() == want  # arrival order per series == stored order
    assert len(upstream.attempts) > len(upstream.accepted)


async def test_retries_with_exponential_backoff(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    upstream.script = [Answer(500), Answer(503), Answer(drop=True), Answer(429), Answer(502)]
    queue = "{shards: 1, batch_send_deadline: 5ms, min_backoff: 30ms, max_backoff: 100ms}"
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    agent.exporter().sleep = record
    await agent.ingest([(series("r"), T0, 1.0)])
    await wait_until("delivery", lambda: upstream.count() == 1)
    assert delays == [0.03, 0.06, 0.1, 0.1, 0.1]  # doubling, capped at max_backoff
    assert len(upstream.attempts) == 6 and len(upstream.accepted) == 1
    m = await agent.metrics()
    failures = {
        dict(k[1])["status"]: v for k, v in m.items() if k[0] == "tsagent_forwarder_failures_total"
    }
    assert failures == {"500": 1, "503": 1, "network": 1, "429": 1, "502": 1}
    assert m[("tsagent_forwarder_retries_total", (("upstream", "up1"),))] == 5
    assert m[("tsagent_forwarder_send_duration_seconds_count", (("upstream", "up1"),))] == 6


async def test_retry_after_is_honoured(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    upstream.script = [Answer(429, retry_after="7"), Answer(503, retry_after="2"), Answer(503)]
    queue = "{shards: 1, batch_send_deadline: 5ms, min_backoff: 30ms}"
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    agent.exporter().sleep = record
    await agent.ingest([(series("ra"), T0, 1.0)])
    await wait_until("delivery", lambda: upstream.count() == 1)
    assert delays == [7.0, 2.0, 0.12]  # the back-off keeps doubling underneath


async def test_4xx_is_not_retried_and_dropped(
    upstream: Upstream, make_config: Any, agents: list[Agent], caplog: Any
) -> None:
    upstream.script = [Answer(400, body="label name 'x' is bad")]
    queue = "{shards: 1, batch_send_deadline: 5ms}"
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    await agent.ingest([(series("bad"), T0, 1.0), (series("bad2"), T0, 1.0)])
    await wait_until("the refusal", lambda: len(upstream.attempts) == 1)
    await agent.ingest([(series("good"), T0, 1.0)])
    await wait_until("the next batch", lambda: upstream.count() == 1)
    assert len(upstream.attempts) == 2  # the 400 was not retried
    assert upstream.samples() == {series("good"): [(T0, bits(1.0))]}
    m = await agent.metrics()
    dropped = (
        "tsagent_export_dropped_samples_total",
        (("exporter", "remote_write:up1"), ("reason", "http_400")),
    )
    assert m[dropped] == 2
    assert m[("tsagent_forwarder_failures_total", (("status", "400"), ("upstream", "up1")))] == 1
    assert "label name 'x' is bad" in caplog.text


async def test_429_dropped_when_retry_disabled(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    upstream.script = [Answer(429, retry_after="1")]
    queue = "{shards: 1, batch_send_deadline: 5ms, retry_on_http_429: false}"
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    await agent.ingest([(series("x"), T0, 1.0)])
    await wait_until("the refusal", lambda: len(upstream.attempts) == 1)
    await agent.ingest([(series("y"), T0, 1.0)])
    await wait_until("the second batch", lambda: upstream.count() == 1)
    assert upstream.samples() == {series("y"): [(T0, bits(1.0))]}
    assert len(upstream.attempts) == 2


async def test_backlog_bounded_by_size_drops_oldest(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    upstream.default = Answer(503)
    queue = (
        "{shards: 1, max_samples_per_send: 10, batch_send_deadline: 5ms, min_backoff: 1ms,"
        " max_backoff: 5ms, max_backlog_samples: 100}"
    )
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue))
    order: list[tuple[Key, int]] = []
    for r in range(10):
        rows = [(series("b", s=str(s)), T0 + r, 1.0) for s in range(30)]
        order.extend((k, t) for k, t, _ in rows)
        await agent.ingest(rows)
    dropped_key = "tsagent_export_dropped_samples_total"

    async def dropped() -> float:
        m = await agent.metrics()
        return sum(v for k, v in m.items() if k[0] == dropped_key)

    async def all_dropped() -> bool:
        return await dropped() >= 200

    await wait_until("200 samples dropped", all_dropped, 5, 0.02)
    m = await agent.metrics()
    assert m[(PENDING, (("exporter", "remote_write:up1"),))] <= 100
    upstream.default = Answer()
    await until_pending_zero(agent)
    got = [(k, t) for req in upstream.accepted for k, t in _flat(req)]
    assert len(got) + await dropped() == 300
    assert len(got) <= 100
    assert sorted(got) == sorted(order[len(order) - len(got) :])  # the newest were kept


def _flat(req: remote_pb2.WriteRequest) -> list[tuple[Key, int]]:
    return [
        (tuple((lab.name, lab.value) for lab in ts.labels), s.timestamp)
        for ts in req.timeseries
        for s in ts.samples
    ]


async def until_pending_zero(agent: Agent, name: str = "remote_write:up1") -> None:
    async def zero() -> bool:
        return (await agent.metrics()).get((PENDING, (("exporter", name),))) == 0

    await wait_until(f"{name}: no pending samples", zero, 5, 0.02)


async def test_backlog_bounded_by_age_drops_oldest(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    upstream.default = Answer(503)
    queue = (
        "{shards: 1, batch_send_deadline: 5ms, min_backoff: 1ms, max_backoff: 20ms,"
        " max_backlog_age: 500ms}"
    )
    clock = ManualClock(time.time())
    agent = await start(agents, make_config, upstream_yaml(upstream.url, queue), clock)
    await agent.ingest([(series("old"), T0, 1.0)])
    clock.advance(0.01)  # past batch_send_deadline: the old batch goes out, and fails
    await wait_until("a refused attempt", lambda: len(upstream.attempts) >= 1)
    clock.advance(0.8)  # the old batch is now older than max_backlog_age
    key = (
        "tsagent_export_dropped_samples_total",
        (("exporter", "remote_write:up1"), ("reason", "backlog_age")),
    )

    async def dropped() -> bool:
        return (await agent.metrics()).get(key) == 1

    await wait_until("the old batch dropped for its age", dropped)
    await agent.ingest([(series("new"), T0, 2.0)])
    clock.advance(0.01)
    upstream.default = Answer()
    await wait_until("the new batch", lambda: upstream.count() >= 1)
    await until_pending_zero(agent)
    assert upstream.samples() == {series("new"): [(T0, bits(2.0))]}
    assert (await agent.metrics())[key] == 1


async def test_restart_during_outage_resumes_exactly(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    queue = "{shards: 3, max_samples_per_send: 4, batch_send_deadline: 5ms, min_backoff: 1ms}"
    text = upstream_yaml(upstream.url, queue)
    agent = await start(agents, make_config, text)
    want: dict[Key, list[tuple[int, int]]] = {}

    async def ingest_round(a: Agent, r: int) -> None:
        rows = [(series("rs", s=str(s)), T0 + r * 1000, float(r * 10 + s)) for s in range(9)]
        for k, t, v in rows:
            want.setdefault(k, []).append((t, bits(v)))
        await a.ingest(rows)

    for r in range(3):
        await ingest_round(agent, r)
    await wait_until("first rounds", lambda: upstream.count() == 27)
    # Outage: the upstream accepts a few more requests (some shards progress, their
    # lanes are saved), then fails everything.
    upstream.script = [Answer(), Answer(), Answer()]
    upstream.default = Answer(503)
    for r in range(3, 8):
        await ingest_round(agent, r)
    await wait_until("the partial progress", lambda: len(upstream.attempts) >= 8)
    before = (await agent.metrics())[(PENDING, (("exporter", "remote_write:up1"),))]
    assert before > 0
    await agent.stop()

    upstream.default = Answer()
    agent = await start(agents, make_config, text)
    await ingest_round(agent, 8)
    await wait_until("everything", lambda: upstream.count() >= 81, timeout=10)
    await until_pending_zero(agent)
    got = upstream.samples()
    dupes = {k: [x for x, n in Counter(v).items() if n > 1] for k, v in got.items()}
    assert not any(dupes.values()), dupes
    assert got == want


async def test_two_upstreams_have_independent_queues(
    upstream: Upstream, make_config: Any, agents: list[Agent]
) -> None:
    other = Upstream(default=Answer(503))
    app = web.Application()
    app.router.add_post("/api/v1/write", other.handle)
    other.server = TestServer(app, host="127.0.0.1")
    await other.server.start_server()
    try:
        q = "{batch_send_deadline: 5ms, min_backoff: 1ms, max_backoff: 5ms}"
        text = f"""
export:
  remote_write:
    - {{name: a, url: {upstream.url}, queue: {q}}}
    - {{name: b, url: {other.url}, queue: {q}}}
"""
        agent = await start(agents, make_config, text)
        await agent.ingest([(series("two"), T0, 1.0)])
        await wait_until("a", lambda: upstream.count() == 1)
        await wait_until("b failing", lambda: len(other.attempts) >= 2)
        await until_pending_zero(agent, "remote_write:a")
        m = await agent.metrics()
        assert m[(PENDING, (("exporter", "remote_write:b"),))] == 1
        other.default = Answer()
        await wait_until("b", lambda: other.count() == 1)
        await until_pending_zero(agent, "remote_write:b")
        # Rows are trimmed once both passed them (the newest row always stays).
        conn = agent.ctx.require_store()
        n = await conn.run_read(
            lambda c: c.execute("SELECT count(*) FROM export_log").fetchone()[0]
        )
        assert n == 1
    finally:
        await other.server.close()
