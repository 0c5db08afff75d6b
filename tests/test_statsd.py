"""StatsD over real sockets: real client libraries, raw packets, the running app.

Each test starts the application with pytest-aiohttp, the statsd plugin
listening on free UDP and TCP ports and a flush interval long enough never
to fire by itself; tests call ``flush()`` and read what was stored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest
import statsd
from datadog.dogstatsd.base import DogStatsd

from agent.config import ConfigError
from agent.model import Matcher, MatchOp, is_stale_nan
from agent.storage.errors import StorageError
from agent.web.app import CONTEXT_KEY, StartupError, make_app
from plugins.statsd import StatsdIngestor
from tests.conftest import free_port, wait_until
from tests.test_app import samples as parse_metrics

END = 2**62


def statsd_yaml(udp: int, tcp: int, extra: str = "") -> str:
    text = (
        "ingest:\n  statsd:\n    enabled: true\n"
        f"    udp_listen: 127.0.0.1:{udp}\n    tcp_listen: 127.0.0.1:{tcp}\n"
        "    flush_interval: 1h\n"
    )
    return text + "".join(f"    {line}\n" for line in extra.strip("\n").splitlines())


class Harness:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.ctx = client.app[CONTEXT_KEY]
        [self.ing] = [i for i in self.ctx.ingestors if isinstance(i, StatsdIngestor)]
        assert self.ing.udp_address is not None and self.ing.tcp_address is not None
        self.udp_port = self.ing.udp_address[1]
        self.tcp_port = self.ing.tcp_address[1]

    def handled(self) -> int:
        agg = self.ing.agg
        return self.ing.udp_lines + self.ing.tcp_lines + sum(agg.malformed.values())

    async def wait_lines(self, n: int, timeout: float = 10.0) -> None:
        """UDP is fire and forget: wait until the listener has seen ``n`` lines in total."""
        await wait_until(
            f"{n} lines at the listener",
            lambda: self.handled() >= n,
            timeout,
            0.005,
            detail=lambda: f"only {self.handled()} arrived",
        )

    async def wait_read(self, reads_before: int) -> None:
        """Until the TCP server has read again since it had done ``reads_before`` reads."""
        await wait_until("a TCP read", lambda: self.ing.tcp_reads > reads_before)

    async def series(self, name: str) -> dict[tuple[tuple[str, str], ...], list[float]]:
        """Stored values of every series named ``name``, by its other labels."""
        found = await self.ctx.require_store().select(
            [Matcher("__name__", MatchOp.EQ, name)], 0, END
        )
        return {
            tuple(kv for kv in s.labels if kv[0] != "__name__"): s.values.tolist() for s in found
        }

    async def value(self, name: str, **labels: str) -> list[float]:
        return (await self.series(name))[tuple(sorted(labels.items()))]

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(await (await self.client.get("/metrics")).text())


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Any]) -> Callable[..., Any]:
    async def go(extra: str = "") -> Harness:
        config, host = make_config(statsd_yaml(free_port(), free_port(), extra))
        return Harness(await aiohttp_client(make_app(config, host)))

    return go


def raw_udp(port: int, *packets: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in packets:
            s.sendto(p, ("127.0.0.1", port))


async def test_statsd_client_counters_gauges_sets_and_sample_rates(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await start()
    c = statsd.StatsClient("127.0.0.1", h.udp_port)
    c.incr("api.hits")
    c.incr("api.hits", 4)
    # The client samples by itself; make it send the line (with its @0.1) every time.
    monkeypatch.setattr("statsd.client.base.random.random", lambda: 0.0)
    c.incr("sampled", 1, rate=0.1)
    c.incr("sampled", 2, rate=0.5)
    c.gauge("temperature", 10)
    c.gauge("temperature", -3, delta=True)
    c.gauge("temperature", 2.5, delta=True)
    with c.pipeline() as pipe:  # several lines in one datagram
        for user in ("ann", "bob", "ann", "cy"):
            pipe.set("users.active", user)
        pipe.decr("api.hits", 0)
    await h.wait_lines(12)
    assert h.ing.udp_packets == 8  # the pipeline was one packet

    assert await h.ing.flush() == 4
    assert await h.value("api_hits") == [5.0]
    assert await h.value("sampled") == [14.0]  # 1/0.1 + 2/0.5
    assert await h.value("temperature") == [9.5]
    assert await h.value("users_active") == [3.0]

    # Counters keep counting across flushes; gauges keep their value; a set starts over.
    c.incr("api.hits", 2)
    c.set("users.active", "dan")
    await h.wait_lines(14)
    await h.ing.flush()
    assert await h.value("api_hits") == [5.0, 7.0]
    assert await h.value("temperature") == [9.5, 9.5]
    assert await h.value("users_active") == [3.0, 1.0]
    await h.ing.flush()  # no new lines: still exported, the set empty
    assert await h.value("api_hits") == [5.0, 7.0, 7.0]
    assert await h.value("users_active") == [3.0, 1.0, 0.0]
    m = await h.metrics()
    assert m[("tsagent_statsd_lines_total", (("transport", "udp"),))] == 14
    assert m[("tsagent_samples_ingested_total", (("source", "statsd"),))] == 12


async def test_dogstatsd_tags_histograms_and_distributions(start: Any) -> None:
    h = await start("timer_type: histogram\nbuckets: [0.5, 1, 10]")
    dog = DogStatsd(
        "127.0.0.1",
        h.udp_port,
        disable_telemetry=True,
        origin_detection_enabled=False,
        constant_tags=["team:core"],
    )
    dog.increment("page.views", tags=["env:prod", "page:home"])
    dog.increment("page.views", 2, tags=["page:home", "env:prod"])  # tag order does not matter
    dog.increment("page.views", tags=["env:dev", "page:home", "bare", "__name__:x"])
    dog.histogram("payload.size", 0.2, tags=["env:prod"])
    dog.distribution("payload.size", 7, tags=["env:prod"])
    dog.histogram("payload.size", 100, tags=["env:prod"])
    dog.gauge("queue.depth", 4, tags=["queue:a"])
    dog.close_socket()
    raw_udp(h.udp_port, b"multi:1:2:3|c|#env:prod\nmulti.g:5:+1:-2|g")
    await h.wait_lines(9)
    await h.ing.flush()

    views = await h.series("page_views")
    assert views == {
        (("env", "prod"), ("page", "home"), ("team", "core")): [3.0],
        (("env", "dev"), ("page", "home"), ("team", "core")): [1.0],
    }
    assert h.ing.agg.dropped_tags == 2  # "bare" has no value, "__name__" is reserved
    tags = {"env": "prod", "team": "core"}
    buckets = await h.series("payload_size_bucket")
    assert {dict(k)["le"]: v for k, v in buckets.items()} == {
        "0.5": [1.0],
        "1.0": [1.0],
        "10.0": [2.0],
        "+Inf": [3.0],
    }
    assert await h.value("payload_size_sum", **tags) == [107.2]
    assert await h.value("payload_size_count", **tags) == [3.0]
    assert await h.value("queue_depth", queue="a", team="core") == [4.0]
    assert await h.value("multi", env="prod") == [6.0]
    assert await h.value("multi_g") == [4.0]


async def test_timers_as_summary_quantiles_sum_count(start: Any) -> None:
    h = await start("quantiles: [0.5, 0.9, 0.99]")
    c = statsd.StatsClient("127.0.0.1", h.udp_port)
    with c.pipeline() as pipe:
        for ms in range(1, 101):
            pipe.timing("db.query", ms)
    raw_udp(h.udp_port, b"db.query:1000|ms|@0.5")  # counts twice in _count and _sum
    await h.wait_lines(101)
    await h.ing.flush()
    # Nearest rank over the 101 observations of the interval (0.001 .. 0.1 and 1.0).
    assert await h.value("db_query", quantile="0.5") == [0.051]
    assert await h.value("db_query", quantile="0.9") == [0.091]
    assert await h.value("db_query", quantile="0.99") == [0.1]
    assert await h.value("db_query_count") == [102.0]
    assert (await h.value("db_query_sum"))[0] == pytest.approx(5.05 + 2.0)

    # An interval without observations: no quantile sample, _sum/_count carry on.
    await h.ing.flush()
    assert len(await h.value("db_query", quantile="0.5")) == 1
    assert await h.value("db_query_count") == [102.0, 102.0]
    raw_udp(h.udp_port, b"db.query:7|ms")
    await h.wait_lines(102)
    await h.ing.flush()
    assert await h.value("db_query", quantile="0.5") == [0.051, 0.007]
    assert await h.value("db_query_count") == [102.0, 102.0, 103.0]


async def test_timers_as_histogram_cumulative_across_flushes(start: Any) -> None:
    h = await start("timer_type: histogram\nbuckets: [0.01, 0.1, 1]")
    c = statsd.StatsClient("127.0.0.1", h.udp_port)
    for ms in (5, 10, 50, 2000):  # 10 ms is exactly on a bound: le is inclusive
        c.timing("rpc", ms)
    await h.wait_lines(4)
    await h.ing.flush()
    raw_udp(h.udp_port, b"rpc:20|ms|@0.25")
    await h.wait_lines(5)
    await h.ing.flush()
    assert await h.value("rpc_bucket", le="0.01") == [2.0, 2.0]
    assert await h.value("rpc_bucket", le="0.1") == [3.0, 7.0]
    assert await h.value("rpc_bucket", le="1.0") == [3.0, 7.0]
    assert await h.value("rpc_bucket", le="+Inf") == [4.0, 8.0]
    assert await h.value("rpc_count") == [4.0, 8.0]
    assert await h.value("rpc_sum") == pytest.approx([2.065, 2.145])


async def test_tcp_client_partial_lines_and_line_limit(start: Any) -> None:
    h = await start("max_line_bytes: 100")
    tcp = statsd.TCPStatsClient("127.0.0.1", h.tcp_port)
    tcp.incr("tcp.count", 3)
    tcp.gauge("tcp.gauge", 42)
    tcp.close()

    _reader, writer = await asyncio.open_connection("127.0.0.1", h.tcp_port)
    for piece in (b"split.co", b"unter:4|", b"c\nsplit.counter:1|c\r\nnext:1", b"|g\n"):
        reads = h.ing.tcp_reads
        writer.write(piece)
        await writer.drain()
        await h.wait_read(reads)  # each piece in reads of its own on the server
    reads = h.ing.tcp_reads
    writer.write(b"long." + b"x" * 150 + b":1|c\n")  # over max_line_bytes in one read
    writer.write(b"longer." + b"y" * 120)  # over the limit before its newline arrives
    await writer.drain()
    await h.wait_read(reads)
    writer.write(b"yyy:1|c\nafter.long:1|c\nat.eof:9|g")  # no newline before closing
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await h.wait_lines(9)
    await h.ing.flush()

    assert await h.value("tcp_count") == [3.0]
    assert await h.value("tcp_gauge") == [42.0]
    assert await h.value("split_counter") == [5.0]
    assert await h.value("next") == [1.0]
    assert await h.value("after_long") == [1.0]
    assert await h.value("at_eof") == [9.0]
    assert h.ing.agg.malformed == {"line_too_long": 2}
    assert not any(n.startswith("long") for n in h.ctx.require_store().label_values("__name__"))
    assert h.ing.tcp_connections_total == 2
    assert (await h.metrics())[("tsagent_statsd_tcp_connections", ())] == 0


async def test_many_tcp_connections_at_once(start: Any) -> None:
    h = await start()

    async def sender(i: int) -> None:
        _, w = await asyncio.open_connection("127.0.0.1", h.tcp_port)
        for _ in range(50):
            w.write(b"conc:1|c\nconc.g:%d|g|#conn:%d\n" % (i, i))
        await w.drain()
        w.close()
        await w.wait_closed()

    await asyncio.gather(*(sender(i) for i in range(20)))
    await h.wait_lines(2000)
    await h.ing.flush()
    assert await h.value("conc") == [1000.0]
    assert len(await h.series("conc_g")) == 20


async def test_malformed_lines_counted_logged_and_the_rest_kept(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start("log_interval: 1h")
    caplog.set_level(logging.WARNING, logger="tsagent.statsd")
    packet = b"\n".join(
        [
            b"good.one:1|c",
            b"no_colon_here",
            b"no.type:1",
            b":5|c",
            b"bad.type:1|zz",
            b"bad.value:abc|c",
            b"bad.value:nan|g",
            b"neg.counter:-1|c",
            b"bad.rate:1|c|@2",
            b"bad.rate:1|c|@x",
            b"bad.field:1|c|?what",
            b"\xff\xfe:1|c",
            b"good.two:2|g|#k:v",
            b"bad.multi:1:x|c",
            b"",
            b"good.three:3|ms",
        ]
    )
    raw_udp(h.udp_port, packet, packet)
    raw_udp(h.udp_port, b"\x00\x01\x02garbage", b"good.one:1|c|@1|c:ci-123|T1700000000")
    await h.wait_lines(32)
    await h.ing.flush()
    assert await h.value("good_one") == [3.0]
    assert await h.value("good_two", k="v") == [2.0]
    assert await h.value("good_three_count") == [2.0]
    assert h.ing.agg.malformed == {
        "missing_colon": 3,
        "missing_type": 2,
        "empty_name": 2,
        "invalid_type": 2,
        "invalid_value": 6,
        "negative_counter": 2,
        "invalid_sample_rate": 4,
        "invalid_field": 2,
        "invalid_utf8": 2,
    }
    for bad in ("bad_type", "bad_value", "neg_counter", "bad_rate", "bad_field", "bad_multi"):
        assert await h.series(bad) == {}, bad
    m = await h.metrics()
    assert m[("tsagent_statsd_malformed_lines_total", (("reason", "invalid_value"),))] == 6
    # Rate-limited: one log line per reason however many lines were bad.
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(logged) == 9
    assert any("(invalid_sample_rate)" in x and "bad.rate" in x for x in logged)


async def test_mapping_glob_regex_drop_and_match_metric_type(start: Any) -> None:
    h = await start(
        """
mappings:
  - match: api.*.requests
    name: api_requests_total
    labels: {service: "$1"}
  - match: 'test\\.(\\w+)\\.timing\\.(\\w+)$'
    match_type: regex
    name: "${1}_duration"
    labels: {outcome: "$2", job: "${1}_server"}
    timer_type: histogram
    buckets: [0.1, 1]
  - match: debug.*
    action: drop
  - match: typed.*
    match_metric_type: gauge
    name: typed_gauge
    labels: {which: "$1"}
"""
    )
    c = statsd.StatsClient("127.0.0.1", h.udp_port)
    c.incr("api.users.requests", 2)
    c.incr("api.orders.requests")
    c.incr("api.orders.v2.requests")  # * stays within one component: unmapped
    c.timing("test.search.timing.ok", 50)
    c.incr("debug.noise", 100)
    c.gauge("typed.a", 1)
    c.incr("typed.a")  # a counter: the gauge-only rule does not apply
    raw_udp(h.udp_port, b"api.web.requests:1|c|#service:spoofed,region:eu")
    await h.wait_lines(8)
    await h.ing.flush()

    assert await h.series("api_requests_total") == {
        (("service", "users"),): [2.0],
        (("service", "orders"),): [1.0],
        (("region", "eu"), ("service", "web")): [1.0],  # the rule's label wins over the tag
    }
    assert await h.value("api_orders_v2_requests") == [1.0]
    assert await h.value("search_duration_bucket", job="search_server", le="0.1", outcome="ok") == [
        1.0
    ]
    assert await h.value("search_duration_count", job="search_server", outcome="ok") == [1.0]
    assert await h.series("debug_noise") == {}
    assert h.ing.agg.dropped == {"mapping_drop": 1}
    assert await h.value("typed_gauge", which="a") == [1.0]
    assert await h.value("typed_a") == [1.0]


async def test_type_conflict_and_metric_limit(start: Any) -> None:
    h = await start("max_metrics: 2")
    raw_udp(h.udp_port, b"same:1|c\nsame:5|g\nsecond:1|g\nthird:1|g\nsame:1|c")
    await h.wait_lines(5)
    await h.ing.flush()
    assert await h.value("same") == [2.0]
    assert await h.value("second") == [1.0]
    assert await h.series("third") == {}
    assert h.ing.agg.dropped == {"type_conflict": 1, "metric_limit": 1}


async def test_ttl_expiry_writes_a_staleness_marker(start: Any) -> None:
    h = await start("ttl: 30s\nmappings:\n  - {match: keep.*, name: kept, ttl: 0}")
    now = [1000.0]
    h.ing.agg.clock = lambda: now[0]
    raw_udp(h.udp_port, b"fleeting:1|c\nkeep.me:2|g")
    await h.wait_lines(2)
    await h.ing.flush()
    now[0] += 20
    await h.ing.flush()  # within the ttl: still exported as statsd_exporter does
    now[0] += 20
    await h.ing.flush()  # 40 s without an update: expired
    values = await h.value("fleeting")
    assert values[:2] == [1.0, 1.0] and len(values) == 3 and is_stale_nan(values[2])
    assert await h.value("kept") == [2.0, 2.0, 2.0]
    now[0] += 20
    await h.ing.flush()
    assert len(await h.value("fleeting")) == 3  # nothing more after the marker
    # It comes back from zero when lines arrive again.
    raw_udp(h.udp_port, b"fleeting:4|c")
    await h.wait_lines(3)
    await h.ing.flush()
    assert (await h.value("fleeting"))[3:] == [4.0]
    assert (await h.metrics())[("tsagent_statsd_expired_metrics_total", ())] == 1


async def test_stop_flushes_what_was_aggregated(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    config, host = make_config(statsd_yaml(free_port(), free_port()))
    app = make_app(config, host)
    client = await aiohttp_client(app)
    h = Harness(client)
    raw_udp(h.udp_port, b"last.words:1|c")
    await h.wait_lines(1)
    store = h.ctx.require_store()
    await h.ing.stop()
    found = await store.select([Matcher("__name__", MatchOp.EQ, "last_words")], 0, END)
    assert [s.values.tolist() for s in found] == [[1.0]]


async def test_flush_loop_runs_by_itself(start: Any) -> None:
    h = await start("flush_interval: 0.05")
    raw_udp(h.udp_port, b"auto:1|c")
    await h.wait_lines(1)

    async def stored() -> bool:
        return bool((await h.series("auto")).get(()))

    await wait_until("the auto-flushed series", stored)
    assert (await h.series("auto"))[()][0] == 1.0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_taken_port_stops_a_required_plugin(
    make_config: Callable[..., Any], proto: str
) -> None:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if proto == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        udp, tcp = (port, free_port()) if proto == "udp" else (free_port(), port)
        config, host = make_config(statsd_yaml(udp, tcp) + "plugins:\n  enabled: [statsd]\n")
        app = make_app(config, host)
        app.freeze()
        with pytest.raises(StartupError, match=rf"statsd.*{proto}_listen.*{port}"):
            await app.startup()
        await app.cleanup()
    # Both listeners are closed again: the other port can be bound at once.
    other, other_kind = (tcp, socket.SOCK_STREAM) if proto == "udp" else (udp, socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, other_kind) as s:
        s.bind(("127.0.0.1", other))


def test_config_errors_name_the_key(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.statsd\.quantiles\[1\]: expected a quantile"):
        make_config(statsd_yaml(9125, 9125, "quantiles: [0.5, 1.5]"))
    bad = """
timer_type: histogram
buckets: [1, 0.5]
mappings:
  - {match: 'a.(', match_type: regex, name: x}
  - {match: a.*, name: "9bad"}
  - {match: b.*, name: ok, labels: {__reserved: x}}
  - {match: c.*}
  - {match: d.*, action: drop}
"""
    with pytest.raises(ConfigError) as err:
        make_config(statsd_yaml(9125, 9125, bad))
    text = str(err.value)
    assert "ingest.statsd.buckets: bounds must be strictly ascending" in text
    assert "ingest.statsd.mappings[0].match: invalid regular expression" in text
    assert "ingest.statsd.mappings[1].name: not a valid metric name" in text
    assert "ingest.statsd.mappings[2].labels.__reserved: not a valid label name" in text
    assert "ingest.statsd.mappings[3].name: required unless action is drop" in text
    assert "mappings[4]" not in text
    with pytest.raises(ConfigError, match="neither UDP nor TCP"):
        make_config(
            'ingest:\n  statsd:\n    enabled: true\n    udp_listen: ""\n    tcp_listen: ""\n'
        )


async def test_disabled_by_default(aiohttp_client: Any, make_config: Callable[..., Any]) -> None:
    config, host = make_config()
    client = await aiohttp_client(make_app(config, host))
    assert not [i for i in client.app[CONTEXT_KEY].ingestors if i.name == "statsd"]


async def test_mappings_follow_a_config_reload(start: Any, make_config: Callable[..., Any]) -> None:
    h = await start()
    raw_udp(h.udp_port, b"svc.a.hits:1|c")
    await h.wait_lines(1)
    await h.ing.flush()
    new, _ = make_config(
        statsd_yaml(9125, 9125, "mappings:\n  - {match: svc.*.hits, name: hits, labels: {s: $1}}")
    )
    h.ctx.config = new  # what the daemon does on SIGHUP
    raw_udp(h.udp_port, b"svc.a.hits:2|c")
    await h.wait_lines(2)
    await h.ing.flush()  # the reload is seen at the flush; lines before it map the old way
    raw_udp(h.udp_port, b"svc.a.hits:4|c")
    await h.wait_lines(3)
    await h.ing.flush()
    assert await h.value("svc_a_hits") == [1.0, 3.0, 3.0]
    assert await h.value("hits", s="a") == [4.0]
    assert h.ing.udp_address is not None and h.ing.udp_address[1] == h.udp_port  # kept


class _Refused(StorageError):
    """Shaped like a cardinality-limit error: every id, 0 where refused, and why."""

    def __init__(self, ids: list[int], refused: dict[int, str]) -> None:
        super().__init__("refused")
        self.ids = ids
        self.refused = refused


async def test_series_refused_by_the_store_are_skipped_and_retried(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await start()
    store = h.ctx.require_store()
    real = store.get_or_create_series
    limit = {"on": True}

    async def limited(labels_list: list[Any]) -> list[int]:
        ids = await real(labels_list)
        refused = {
            i: "max_series_per_metric"
            for i, labels in enumerate(labels_list)
            if limit["on"] and ("user", "u2") in labels
        }
        if refused:
            raise _Refused([0 if i in refused else sid for i, sid in enumerate(ids)], refused)
        return ids

    monkeypatch.setattr(store, "get_or_create_series", limited)
    raw_udp(h.udp_port, b"logins:1|c|#user:u1\nlogins:1|c|#user:u2")
    await h.wait_lines(2)
    await h.ing.flush()
    assert await h.value("logins", user="u1") == [1.0]
    assert (await h.series("logins")).get((("user", "u2"),)) is None
    m = await h.metrics()
    assert m[("tsagent_statsd_refused_series_total", (("reason", "max_series_per_metric"),))] == 1
    limit["on"] = False  # the limit frees up: the metric is asked for again and flows
    await h.ing.flush()
    assert await h.value("logins", user="u2") == [1.0]
    assert await h.value("logins", user="u1") == [1.0, 1.0]
