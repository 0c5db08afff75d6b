"""The remote-write receiver over HTTP: every status code of the 1.0 and 2.0 specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cramjam
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.context import context_of
from agent.model import Matcher, MatchOp
from agent.prompb import remote_pb2, types_pb2, write_v2_pb2
from agent.storage import StoreFailed
from agent.web.app import make_app

V1_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
V2_HEADERS = {
    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "2.0.0",
}
T0 = 1_700_000_000_000

LabelPairs = Sequence[tuple[str, str]]


def series(labels: LabelPairs, samples: Sequence[tuple[int, float]]) -> types_pb2.TimeSeries:
    return types_pb2.TimeSeries(
        labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
        samples=[types_pb2.Sample(timestamp=t, value=v) for t, v in samples],
    )


def v1_body(*ts: types_pb2.TimeSeries, metadata: Sequence[Any] = ()) -> bytes:
    req = remote_pb2.WriteRequest(timeseries=list(ts), metadata=list(metadata))
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def up(job: str, *samples: tuple[int, float]) -> types_pb2.TimeSeries:
    return series([("__name__", "up"), ("job", job)], samples or [(T0, 1.0)])


class V2Builder:
    def __init__(self) -> None:
        self.symbols = [""]
        self.series: list[write_v2_pb2.TimeSeries] = []

    def ref(self, s: str) -> int:
        if s not in self.symbols:
            self.symbols.append(s)
        return self.symbols.index(s)

    def add(
        self,
        labels: LabelPairs,
        samples: Sequence[tuple[int, float]] = ((T0, 1.0),),
        **kw: Any,
    ) -> write_v2_pb2.TimeSeries:
        refs = [r for k, v in labels for r in (self.ref(k), self.ref(v))]
        ts = write_v2_pb2.TimeSeries(
            labels_refs=refs,
            samples=[write_v2_pb2.Sample(timestamp=t, value=v) for t, v in samples],
            **kw,
        )
        self.series.append(ts)
        return ts

    def body(self) -> bytes:
        req = write_v2_pb2.Request(symbols=self.symbols, timeseries=self.series)
        return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


async def stored(client: Any, name: str = "up") -> dict[tuple[tuple[str, str], ...], list[Any]]:
    store = context_of(client.server.app).require_store()
    found = await store.select([Matcher("__name__", MatchOp.EQ, name)], 0, 2**62)
    return {
        s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True)) for s in found
    }


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config()
    return await aiohttp_client(make_app(config, host))


# --- 204 ------------------------------------------------------------------------------


async def test_v1_write_is_durable_and_204(client: Any) -> None:
    body = v1_body(up("a", (T0, 1.0), (T0 + 15_000, 2.0)), up("b", (T0, 0.0)))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 204, await resp.text()
    assert await resp.read() == b""
    assert "X-Prometheus-Remote-Write-Samples-Written" not in resp.headers
    data = await stored(client)
    assert data[(("__name__", "up"), ("job", "a"))] == [(T0, 1.0), (T0 + 15_000, 2.0)]
    assert data[(("__name__", "up"), ("job", "b"))] == [(T0, 0.0)]
    # Second request: every series comes from the cache.
    resp = await client.post(
        "/api/v1/write", data=v1_body(up("a", (T0 + 30_000, 3.0))), headers=V1_HEADERS
    )
    assert resp.status == 204
    assert (await stored(client))[(("__name__", "up"), ("job", "a"))][-1] == (T0 + 30_000, 3.0)
    metrics = metric_values(await (await client.get("/metrics")).text())
    assert metrics[("tsagent_remote_write_series_cache_misses_total", ())] == 2
    assert metrics[("tsagent_samples_ingested_total", (("source", "remote_write"),))] == 4
    assert metrics[("tsagent_remote_write_requests_total", (("code", "204"), ("version", "1.0")))]
    assert metrics[
        ("tsagent_remote_write_received_total", (("kind", "sample"), ("version", "1.0")))
    ] == (4)
    assert (
        metrics[
            (
                "tsagent_remote_write_received_bytes_total",
                (("encoding", "compressed"), ("version", "1.0")),
            )
        ]
        > 0
    )
    assert metrics[("tsagent_remote_write_decode_seconds_count", (("version", "1.0"),))] == 2
    assert metrics[("tsagent_remote_write_commit_seconds_count", ())] == 2


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-protobuf;proto=prometheus.WriteRequest", "Application/X-Protobuf"],
)
async def test_v1_content_types(client: Any, content_type: str | None) -> None:
    headers = {"Content-Encoding": "snappy"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = await client.post(
        "/api/v1/write", data=v1_body(up("a")), headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert resp.status == 204, await resp.text()


async def test_stale_marker_and_special_values_keep_their_bits(client: Any) -> None:
    from agent.model import STALE_NAN_BITS

    stale = np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0]
    values = [(T0, -0.0), (T0 + 1, float("inf")), (T0 + 2, float(stale)), (T0 + 3, 1e-300)]
    resp = await client.post("/api/v1/write", data=v1_body(up("x", *values)), headers=V1_HEADERS)
    assert resp.status == 204
    store = context_of(client.server.app).require_store()
    sid = store.series_id((("__name__", "up"), ("job", "x")))
    assert sid is not None
    _, vals = await store.read_series(sid, 0, 2**62)
    assert vals.view(np.uint64)[2] == STALE_NAN_BITS
    assert np.isinf(vals[1]) and vals[3] == 1e-300


# --- 415 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/json", "snappy"),
        ("application/x-protobuf;proto=io.prometheus.write.v3.Request", "snappy"),
        ("application/x-protobuf", "gzip"),
        ("application/x-protobuf", None),
    ],
)
async def test_unsupported_media_is_415(client: Any, content_type: str, encoding: str) -> None:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    resp = await client.post("/api/v1/write", data=v1_body(up("a")), headers=headers)
    assert resp.status == 415
    assert "unsupported" in await resp.text()
    assert await stored(client) == {}


# --- 413 ------------------------------------------------------------------------------


async def test_body_over_compressed_limit_is_413(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("ingest:\n  remote_write:\n    max_compressed_bytes: 100\n")
    client = await aiohttp_client(make_app(config, host))
    body = v1_body(*[up(f"job{i}") for i in range(50)])
    assert len(body) > 100
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 413
    assert "max_compressed_bytes" in await resp.text()


async def test_decompression_bomb_is_refused_before_decompressing(
    aiohttp_client: Any, make_config: Any
) -> None:
    config, host = make_config("ingest:\n  remote_write:\n    max_decompressed_bytes: 1000\n")
    client = await aiohttp_client(make_app(config, host))
    # 14 bytes that claim to expand to 1 TiB.
    bomb = bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]) + b"\x00" * 7
    resp = await client.post("/api/v1/write", data=bomb, headers=V1_HEADERS)
    assert resp.status == 413
    text = await resp.text()
    assert "decompressed size" in text and "max_decompressed_bytes" in text
    # A real body just over the limit is refused the same way.
    body = v1_body(*[up(f"job{i}") for i in range(60)])
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 413


# --- 400: undecodable -------------------------------------------------------------------


async def test_bad_snappy_is_400(client: Any) -> None:
    resp = await client.post("/api/v1/write", data=b"\x10not snappy at all", headers=V1_HEADERS)
    assert resp.status == 400
    assert "snappy" in await resp.text()
    resp = await client.post("/api/v1/write", data=b"", headers=V1_HEADERS)
    assert resp.status == 400


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\xff\xff\xff\x0f",  # a timeseries longer than the body
        b"\x0a\x05\x0a\x10abc",  # a label running past its series
        b"\x0b",  # wire type 3 (groups)
        b"\x0a\x03\x12\x01\x09",  # a sample with a truncated double
    ],
)
async def test_bad_protobuf_is_400(client: Any, payload: bytes) -> None:
    body = bytes(cramjam.snappy.compress_raw(payload))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 400
    assert "bad protobuf" in await resp.text()


# --- 400: invalid series, partial acceptance ----------------------------------------


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([("job", "x"), ("__name__", "up")], "not sorted"),
        ([("__name__", "up"), ("job", "x"), ("job", "y")], "duplicate label name"),
        ([("job", "x")], "missing metric name"),
        ([("__name__", ""), ("job", "x")], "empty metric name"),
        ([("__name__", "up"), ("bad-name", "x")], "invalid label name"),
        ([("", "x"), ("__name__", "up")], "invalid label name ''"),
        ([("__name__", "1up")], "invalid metric name"),
    ],
)
async def test_invalid_labels_reject_only_that_series(
    client: Any, labels: LabelPairs, reason: str
) -> None:
    body = v1_body(up("good"), series(labels, [(T0, 5.0)]))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 400
    text = await resp.text()
    assert reason in text and "invalid_labels" in text
    assert "1 of 2 samples written" in text
    assert list(await stored(client)) == [(("__name__", "up"), ("job", "good"))]
    metrics = metric_values(await (await client.get("/metrics")).text())
    key = (
        "tsagent_samples_rejected_total",
        (("reason", "invalid_labels"), ("source", "remote_write")),
    )
    assert metrics[key] == 1


async def test_invalid_utf8_label_is_400(client: Any) -> None:
    # Hand-made: the generated classes refuse to serialise invalid UTF-8.
    label = b"\x0a\x08__name__\x12\x02\xff\xfe"
    sample = b"\x09" + np.float64(1.0).tobytes() + b"\x10\x01"
    ts_msg = b"\x0a" + bytes([len(label)]) + label + b"\x12" + bytes([len(sample)]) + sample
    ts = b"\x0a" + bytes([len(ts_msg)]) + ts_msg
    body = bytes(cramjam.snappy.compress_raw(ts))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 400
    assert "UTF-8" in await resp.text()


async def test_empty_label_values_are_dropped(client: Any) -> None:
    body = v1_body(series([("__name__", "up"), ("env", ""), ("job", "a")], [(T0, 1.0)]))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 204
    assert list(await stored(client)) == [(("__name__", "up"), ("job", "a"))]


# --- 400: refused by the store ----------------------------------------------------------


async def test_out_of_order_and_duplicates_are_400_with_examples(client: Any) -> None:
    ok = await client.post(
        "/api/v1/write", data=v1_body(up("a", (T0, 1.0)), up("b", (T0, 1.0))), headers=V1_HEADERS
    )
    assert ok.status == 204
    body = v1_body(
        up("a", (T0 - 1000, 1.0)),  # out of order
        up("b", (T0, 2.0)),  # same timestamp, other value
        up("c", (T0, 1.0)),  # fine
    )
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 400
    text = await resp.text()
    assert "1 of 3 samples written" in text
    assert 'out_of_order: 1 samples, e.g. up{job="a"} @1699999999000' in text
    assert 'duplicate_timestamp: 1 samples, e.g. up{job="b"}' in text
    assert (("__name__", "up"), ("job", "c")) in await stored(client)
    # An exact re-send is idempotent: accepted.
    resend = await client.post("/api/v1/write", data=v1_body(up("a")), headers=V1_HEADERS)
    assert resend.status == 204


async def test_too_old_is_400(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("storage:\n  out_of_order_window: 10s\n")
    client = await aiohttp_client(make_app(config, host))
    assert (await client.post("/api/v1/write", data=v1_body(up("a")), headers=V1_HEADERS)).status
    body = v1_body(up("a", (T0 - 5_000, 1.0), (T0 - 60_000, 1.0)))
    resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
    assert resp.status == 400
    text = await resp.text()
    assert "too_old: 1 samples" in text and "1 of 2 samples written" in text


# --- 429 and 5xx -----------------------------------------------------------------------


async def test_back_pressure_is_429_with_retry_after(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config(
        "storage:\n  head_memory_limit_bytes: 1\n"
        "ingest:\n  remote_write:\n    retry_after_seconds: 7\n"
    )
    client = await aiohttp_client(make_app(config, host))
    resp = await client.post("/api/v1/write", data=v1_body(up("a")), headers=V1_HEADERS)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    resp = await client.post("/api/v1/write", data=V2Builder().body(), headers=V2_HEADERS)
    assert resp.status in (204, 429)  # nothing to append: nothing to refuse
    b = V2Builder()
    b.add([("__name__", "up"), ("job", "a")])
    resp = await client.post("/api/v1/write", data=b.body(), headers=V2_HEADERS)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "0"


async def test_store_failure_is_503(client: Any, monkeypatch: Any) -> None:
    store = context_of(client.server.app).require_store()

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreFailed("commit failed: disk full")

    monkeypatch.setattr(store, "append", failing)
    resp = await client.post("/api/v1/write", data=v1_body(up("a")), headers=V1_HEADERS)
    assert resp.status == 503
    assert "disk full" in await resp.text()


async def test_write_route_uses_the_write_group(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("auth:\n  write:\n    bearer_tokens: [w]\n")
    client = await aiohttp_client(make_app(config, host))
    body = v1_body(up("a"))
    assert (await client.post("/api/v1/write", data=body, headers=V1_HEADERS)).status == 401
    headers = {**V1_HEADERS, "Authorization": "Bearer w"}
    assert (await client.post("/api/v1/write", data=body, headers=headers)).status == 204


async def test_disabled_has_no_routes(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("ingest:\n  remote_write:\n    enabled: false\n")
    client = await aiohttp_client(make_app(config, host))
    resp = await client.post("/api/v1/write", data=v1_body(up("a")), headers=V1_HEADERS)
    assert resp.status in (404, 405)


# --- 2.0 ---------------------------------------------------------------------------------


async def test_v2_symbols_metadata_and_written_headers(client: Any) -> None:
    b = V2Builder()
    md = write_v2_pb2.Metadata(
        type=write_v2_pb2.Metadata.METRIC_TYPE_COUNTER,
        help_ref=b.ref("Requests served."),
        unit_ref=b.ref("requests"),
    )
    b.add([("__name__", "http_requests_total"), ("code", "200")], [(T0, 10.0)], metadata=md)
    b.add([("__name__", "http_requests_total"), ("code", "500")], [(T0, 1.0), (T0 + 1, 2.0)])
    resp = await client.post("/api/v1/write", data=b.body(), headers=V2_HEADERS)
    assert resp.status == 204, await resp.text()
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "3"
    assert resp.headers["X-Prometheus-Remote-Write-Histograms-Written"] == "0"
    assert resp.headers["X-Prometheus-Remote-Write-Exemplars-Written"] == "0"
    data = await stored(client, "http_requests_total")
    assert data[(("__name__", "http_requests_total"), ("code", "500"))] == [
        (T0, 1.0),
        (T0 + 1, 2.0),
    ]
    meta = await (await client.get("/api/v1/metadata")).json()
    assert meta == {
        "status": "success",
        "data": {
            "http_requests_total": [
                {"type": "counter", "help": "Requests served.", "unit": "requests"}
            ]
        },
    }


async def test_v2_histograms_and_exemplars_are_refused_by_name(client: Any) -> None:
    b = V2Builder()
    b.add(
        [("__name__", "latency_seconds"), ("job", "api")],
        [],
        histograms=[write_v2_pb2.Histogram(count_int=3, sum=1.5, schema=3, timestamp=T0)],
    )
    ex = write_v2_pb2.Exemplar(labels_refs=[b.ref("trace_id"), b.ref("abc")], value=1, timestamp=T0)
    b.add([("__name__", "up"), ("job", "api")], [(T0, 1.0)], exemplars=[ex])
    b.add([("__name__", "up"), ("job", "db")], [(T0, 1.0)])
    resp = await client.post("/api/v1/write", data=b.body(), headers=V2_HEADERS)
    assert resp.status == 400
    text = await resp.text()
    assert (
        'native_histogram_unsupported: 1 series (1 items), e.g. latency_seconds{job="api"}' in text
    )
    assert 'exemplar_unsupported: 1 series (1 items), e.g. up{job="api"}' in text
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "2"
    assert resp.headers["X-Prometheus-Remote-Write-Histograms-Written"] == "0"
    assert resp.headers["X-Prometheus-Remote-Write-Exemplars-Written"] == "0"
    assert len(await stored(client)) == 2


@pytest.mark.parametrize(
    ("refs", "reason"),
    [([1, 2, 3], "odd length"), ([1, 99], "past the"), ([3, 2, 1, 2], "not sorted")],
)
async def test_v2_bad_label_refs(client: Any, refs: list[int], reason: str) -> None:
    symbols = ["", "__name__", "up", "job"]
    req = write_v2_pb2.Request(
        symbols=symbols,
        timeseries=[
            write_v2_pb2.TimeSeries(
                labels_refs=refs, samples=[write_v2_pb2.Sample(value=1, timestamp=T0)]
            ),
            write_v2_pb2.TimeSeries(
                labels_refs=[1, 2], samples=[write_v2_pb2.Sample(value=1, timestamp=T0)]
            ),
        ],
    )
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    resp = await client.post("/api/v1/write", data=body, headers=V2_HEADERS)
    assert resp.status == 400
    assert reason in await resp.text()
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "1"


async def test_v2_bad_protobuf_and_symbols(client: Any) -> None:
    body = bytes(cramjam.snappy.compress_raw(b"\x22\xff"))
    resp = await client.post("/api/v1/write", data=body, headers=V2_HEADERS)
    assert resp.status == 400
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "0"
    req = write_v2_pb2.Request(symbols=["x"])
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    resp = await client.post("/api/v1/write", data=body, headers=V2_HEADERS)
    assert resp.status == 400 and "symbols[0]" in await resp.text()


async def test_v1_body_sent_as_v2_writes_nothing(client: Any) -> None:
    # The reserved fields of the 2.0 message make a 1.0 body decode as empty.
    resp = await client.post("/api/v1/write", data=v1_body(up("a")), headers=V2_HEADERS)
    assert resp.status == 204
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "0"


@pytest.mark.parametrize("enabled", [False, True])
async def test_v2_created_timestamp(aiohttp_client: Any, make_config: Any, enabled: bool) -> None:
    flag = "true" if enabled else "false"
    config, host = make_config(
        f"ingest:\n  remote_write:\n    created_timestamp_zero_ingestion: {flag}\n"
    )
    client = await aiohttp_client(make_app(config, host))
    b = V2Builder()
    b.add([("__name__", "c_total"), ("job", "a")], [(T0, 5.0)], created_timestamp=T0 - 10_000)
    b.add([("__name__", "c_total"), ("job", "b")], [(T0, 7.0)])
    s = b.add([("__name__", "c_total"), ("job", "c")], [])
    s.samples.append(write_v2_pb2.Sample(value=2.0, timestamp=T0, start_timestamp=T0 - 1))
    resp = await client.post("/api/v1/write", data=b.body(), headers=V2_HEADERS)
    assert resp.status == 204, await resp.text()
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "3"
    data = await stored(client, "c_total")
    a = data[(("__name__", "c_total"), ("job", "a"))]
    c = data[(("__name__", "c_total"), ("job", "c"))]
    if enabled:
        assert a == [(T0 - 10_000, 0.0), (T0, 5.0)]
        assert c == [(T0 - 1, 0.0), (T0, 2.0)]
    else:
        assert a == [(T0, 5.0)] and c == [(T0, 2.0)]
    # The same created timestamp again: the synthetic zero is refused quietly.
    b2 = V2Builder()
    b2.add(
        [("__name__", "c_total"), ("job", "a")], [(T0 + 15_000, 6.0)], created_timestamp=T0 - 10_000
    )
    resp = await client.post("/api/v1/write", data=b2.body(), headers=V2_HEADERS)
    assert resp.status == 204, await resp.text()
    assert resp.headers["X-Prometheus-Remote-Write-Samples-Written"] == "1"


# --- /api/v1/metadata ------------------------------------------------------------------


async def test_v1_metadata_endpoint_params(client: Any) -> None:
    MM = types_pb2.MetricMetadata
    metadata = [
        MM(type=MM.GAUGE, metric_family_name="temp", help="Temperature.", unit="celsius"),
        MM(type=MM.COUNTER, metric_family_name="hits_total", help="Hits."),
        MM(type=MM.COUNTER, metric_family_name="hits_total", help="Hits, newer help."),
        MM(type=MM.HISTOGRAM, metric_family_name="lat", help="Latency."),
    ]
    resp = await client.post("/api/v1/write", data=v1_body(metadata=metadata), headers=V1_HEADERS)
    assert resp.status == 204
    data = (await (await client.get("/api/v1/metadata")).json())["data"]
    assert set(data) == {"temp", "hits_total", "lat"}
    assert data["temp"] == [{"type": "gauge", "help": "Temperature.", "unit": "celsius"}]
    assert [m["help"] for m in data["hits_total"]] == ["Hits, newer help.", "Hits."]
    one = (await (await client.get("/api/v1/metadata?metric=lat")).json())["data"]
    assert one == {"lat": [{"type": "histogram", "help": "Latency.", "unit": ""}]}
    assert (await (await client.get("/api/v1/metadata?metric=nope")).json())["data"] == {}
    limited = (await (await client.get("/api/v1/metadata?limit=2")).json())["data"]
    assert len(limited) == 2
    assert (await (await client.get("/api/v1/metadata?limit=0")).json())["data"] == {}
    per = (await (await client.get("/api/v1/metadata?limit_per_metric=1")).json())["data"]
    assert per["hits_total"] == [{"type": "counter", "help": "Hits, newer help.", "unit": ""}]
    bad = await client.get("/api/v1/metadata?limit=x")
    assert bad.status == 400
    assert (await bad.json())["errorType"] == "bad_data"
