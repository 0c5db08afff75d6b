"""OTLP: Prometheus 3's naming rules, the translation, the HTTP answers, bad input,
and the real OpenTelemetry Python SDK exporting to a running app (values checked)."""

from __future__ import annotations

import asyncio
import gzip
import math
import struct
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as mpb

from agent.model import Matcher
from agent.plugin_api import format_value
from agent.web.app import context_of, make_app
from plugins.otlp import decode_request
from plugins.otlp.naming import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    NON_MONOTONIC,
    SUMMARY,
    NamingError,
    Strategy,
    label_name,
    metric_name,
)
from plugins.otlp.translate import Settings, Translator
from tests.test_remote_write import metric_values

T_NS = 1_700_000_000_000_000_000
T_MS = T_NS // 1_000_000
ESC = Strategy.named("UnderscoreEscapingWithSuffixes")
ESC_NO = Strategy.named("UnderscoreEscapingWithoutSuffixes")
UTF8 = Strategy.named("NoUTF8EscapingWithSuffixes")
RAW = Strategy.named("NoTranslation")
PROTO = {"Content-Type": "application/x-protobuf"}


# --- naming (cases from otlptranslator's own tests) ----------------------------------


@pytest.mark.parametrize(
    ("strategy", "name", "unit", "kind", "want"),
    [
        (ESC_NO, "simple_metric", "", GAUGE, "simple_metric"),
        (ESC_NO, "metric@with#special$chars", "", GAUGE, "metric_with_special_chars"),
        (ESC_NO, "123metric", "", GAUGE, "_123metric"),
        (ESC_NO, "metric@@##$$name", "", GAUGE, "metric_name"),
        (ESC, "requests", "", COUNTER, "requests_total"),
        (ESC, "cpu_usage", "1", GAUGE, "cpu_usage_ratio"),
        (ESC, "items", "1", COUNTER, "items_total"),
        (ESC, "response_time", "ms", GAUGE, "response_time_milliseconds"),
        (ESC, "memory_usage", "By", GAUGE, "memory_usage_bytes"),
        (ESC, "requests", "1/s", GAUGE, "requests_per_second"),
        (ESC, "throughput", "By/s", GAUGE, "throughput_bytes_per_second"),
        (ESC, "custom_metric", "custom_unit", GAUGE, "custom_metric_custom_unit"),
        (ESC, "custom_metric", "{custom}", GAUGE, "custom_metric"),
        (ESC, "custom_metric", "By/{custom}", GAUGE, "custom_metric_bytes"),
        (ESC, "requests_total", "", COUNTER, "requests_total"),
        (ESC, "cpu_usage_ratio", "1", GAUGE, "cpu_usage_ratio"),
        (ESC, "response_time_seconds", "s", GAUGE, "response_time_seconds"),
        (
            ESC,
            "metric__with__multiple__underscores",
            "unit__multiple__underscores",
            GAUGE,
            "metric_with_multiple_underscores_unit_multiple_underscores",
        ),
        (
            ESC,
            "custom_metric",
            "unit@with#special/chars",
            GAUGE,
            "custom_metric_unit_with_special_per_chars",
        ),
        (
            ESC,
            "http.server.request.duration",
            "s",
            HISTOGRAM,
            "http_server_request_duration_seconds",
        ),
        (ESC, "response_time", "ms", SUMMARY, "response_time_milliseconds"),
        (ESC, "active_connections", "", NON_MONOTONIC, "active_connections"),
        (ESC, "uptime", "d", GAUGE, "uptime_days"),
        (UTF8, "requêsts", "", COUNTER, "requêsts_total"),
        (UTF8, "cpu_usagé", "1", GAUGE, "cpu_usagé_ratio"),
        (UTF8, "requêsts", "1/s", GAUGE, "requêsts_per_second"),
        (UTF8, "cpu_seconds_total", "s", COUNTER, "cpu_seconds_total"),
        (UTF8, "http.server.duration", "s", HISTOGRAM, "http.server.duration_seconds"),
        (UTF8, "@#$%", "", COUNTER, "@#$%_total"),
        (RAW, "http.server.duration", "s", HISTOGRAM, "http.server.duration"),
    ],
)
def test_metric_names(strategy: Strategy, name: str, unit: str, kind: str, want: str) -> None:
    assert metric_name(name, unit, kind, strategy) == want


def test_metric_names_refused() -> None:
    for strategy in (ESC, ESC_NO):
        with pytest.raises(NamingError):
            metric_name("@#$%", "", GAUGE, strategy)
    with pytest.raises(NamingError):
        metric_name("", "", GAUGE, UTF8)


def test_unit_names() -> None:
    from plugins.otlp.naming import unit_name

    assert unit_name("s") == "seconds" and unit_name("By/s") == "bytes_per_second"
    assert unit_name("1/s") == "per_second" and unit_name("1") == "" and unit_name("{req}") == ""
    assert unit_name("unit@with#special/chars") == "unit_with_special_per_chars"


def test_label_names() -> None:
    assert label_name("http.method") == "http_method"
    assert label_name("123invalid") == "key_123invalid"
    assert label_name("_private") == "key_private"
    assert label_name("__reserved__") == "__reserved__"
    assert label_name("http.method", escape=False) == "http.method"
    with pytest.raises(NamingError):
        label_name("...")


def test_format_float_like_go() -> None:
    assert format_value(0.005) == "0.005"
    assert format_value(10.0) == "10"
    assert format_value(1e21) == "1000000000000000000000"
    assert format_value(math.inf) == "+Inf"


# --- translation ---------------------------------------------------------------------


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request(
    *metrics: mpb.Metric, resource: dict[str, Any] | None = None
) -> ExportMetricsServiceRequest:
    res = (
        resource
        if resource is not None
        else {
            "service.name": "api",
            "service.namespace": "shop",
            "service.instance.id": "i-1",
            "host.name": "web-1",
        }
    )
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(kv(k, v) for k, v in res.items())
    sm = rm.scope_metrics.add()
    sm.scope.name = "my.lib"
    sm.scope.version = "1.0"
    sm.metrics.extend(metrics)
    return req


def gauge(name: str, value: float, unit: str = "", **attrs: Any) -> mpb.Metric:
    m = mpb.Metric(name=name, unit=unit)
    m.gauge.data_points.add(
        time_unix_nano=T_NS, as_double=value, attributes=[kv(k, v) for k, v in attrs.items()]
    )
    return m


def counter(
    name: str, value: int, temporality: int = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
) -> mpb.Metric:
    m = mpb.Metric(name=name, unit="")
    m.sum.is_monotonic = True
    m.sum.aggregation_temporality = temporality
    m.sum.data_points.add(time_unix_nano=T_NS, as_int=value)
    return m


def as_dict(tr: Any) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    out: dict[Any, list[tuple[int, float]]] = {}
    for labels, t, v in zip(tr.labels, tr.timestamps, tr.values, strict=True):
        out.setdefault(labels, []).append((t, v))
    return out


def test_translation_labels_job_instance_target_info() -> None:
    m = gauge(
        "queue.size",
        7,
        unit="{item}",
        **{"queue.name": "q1", "9lives": "x", "a.b": "1", "a_b": "2"},
    )
    tr = Translator(Settings(promote_resource_attributes=("host.name",))).translate(request(m))
    data = as_dict(tr)
    key = (
        ("__name__", "queue_size"),
        ("a_b", "1;2"),  # attributes sorted by key; colliding names join values with ';'
        ("host_name", "web-1"),
        ("instance", "i-1"),
        ("job", "shop/api"),
        ("key_9lives", "x"),
        ("queue_name", "q1"),
    )
    assert data[key] == [(T_MS, 7.0)]
    info = (
        ("__name__", "target_info"),
        ("host_name", "web-1"),
        ("instance", "i-1"),
        ("job", "shop/api"),
    )
    assert data[info] == [(T_MS, 1.0)]
    assert tr.errors == [] and tr.rejected_points == 0


def test_translation_histogram_summary_and_stale() -> None:
    h = mpb.Metric(name="http.server.duration", unit="ms")
    h.histogram.aggregation_temporality = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
    h.histogram.data_points.add(
        time_unix_nano=T_NS, count=4, sum=123.5, explicit_bounds=[10, 100], bucket_counts=[1, 2, 1]
    )
    s = mpb.Metric(name="rpc.latency", unit="s")
    dp = s.summary.data_points.add(time_unix_nano=T_NS, count=10, sum=2.5)
    dp.quantile_values.add(quantile=0.5, value=0.2)
    dp.quantile_values.add(quantile=0.99, value=0.9)
    g = mpb.Metric(name="temp", unit="Cel")
    g.gauge.data_points.add(
        time_unix_nano=T_NS, as_double=1, flags=mpb.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    )
    tr = Translator(Settings()).translate(request(h, s, g, resource={"service.name": "svc"}))
    got = {
        dict(lab)["__name__"] + str({k: v for k, v in lab if k in ("le", "quantile")}): vals[0][1]
        for lab, vals in as_dict(tr).items()
    }
    assert got["http_server_duration_milliseconds_sum{}"] == 123.5
    assert got["http_server_duration_milliseconds_count{}"] == 4
    assert got["http_server_duration_milliseconds_bucket{'le': '10'}"] == 1
    assert got["http_server_duration_milliseconds_bucket{'le': '100'}"] == 3
    assert got["http_server_duration_milliseconds_bucket{'le': '+Inf'}"] == 4
    assert got["rpc_latency_seconds{'quantile': '0.5'}"] == 0.2
    assert got["rpc_latency_seconds{'quantile': '0.99'}"] == 0.9
    assert got["rpc_latency_seconds_count{}"] == 10
    assert struct.pack("<d", got["temp_celsius{}"]) == struct.pack("<Q", 0x7FF0000000000002)
    assert "target_info{}" not in got  # only identifying attributes: no target_info


def test_delta_and_exponential_refused_by_name() -> None:
    e = mpb.Metric(name="latency.exp")
    e.exponential_histogram.aggregation_temporality = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
    e.exponential_histogram.data_points.add(time_unix_nano=T_NS, count=1)
    tr = Translator(Settings()).translate(
        request(counter("ok", 1), counter("deltas", 5, mpb.AGGREGATION_TEMPORALITY_DELTA), e)
    )
    assert tr.rejected_points == 2
    assert any("'deltas'" in err and "temporality" in err for err in tr.errors)
    assert any("'latency.exp'" in err and "exponential" in err for err in tr.errors)
    names = {dict(lab)["__name__"] for lab in tr.labels}
    assert names == {"ok_total", "target_info"}


def test_target_info_spans_half_lookback() -> None:
    a = gauge("a", 1)
    b = gauge("b", 2)
    b.gauge.data_points[0].time_unix_nano = T_NS + 600_000 * 1_000_000  # 10 minutes later
    tr = Translator(Settings()).translate(request(a, b))
    info = next(v for k, v in as_dict(tr).items() if dict(k)["__name__"] == "target_info")
    assert [t - T_MS for t, _ in info] == [0, 150_000, 300_000, 450_000, 600_000]


def test_scope_promotion_and_promote_all() -> None:
    cfg = Settings(
        promote_scope_metadata=True,
        promote_all_resource_attributes=True,
        ignore_resource_attributes=("host.name",),
    )
    tr = Translator(cfg).translate(request(gauge("g", 1, attr="x")))
    [labels] = [dict(lab) for lab in tr.labels if dict(lab)["__name__"] == "g"]
    assert labels["otel_scope_name"] == "my.lib" and labels["otel_scope_version"] == "1.0"
    assert labels["service_name"] == "api" and "host_name" not in labels
    assert labels["job"] == "shop/api"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_protobuf_never_crashes(body: bytes) -> None:
    try:
        req = decode_request(body, "application/x-protobuf")
    except ValueError:
        return
    tr = Translator(Settings()).translate(req)
    assert len(tr.labels) == len(tr.values)


# --- HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config()
    return await aiohttp_client(make_app(config, host))


async def stored(client: Any, name: str) -> dict[tuple[tuple[str, str], ...], list[Any]]:
    store = context_of(client.server.app).require_store()
    found = await store.select([Matcher.of("__name__", "=", name)], 0, 2**62)
    return {
        s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True)) for s in found
    }


async def test_protobuf_gzip_both_paths(client: Any) -> None:
    body = request(counter("orders", 3)).SerializeToString()
    r = await client.post(
        "/v1/metrics", data=gzip.compress(body), headers={**PROTO, "Content-Encoding": "gzip"}
    )
    assert r.status == 200 and r.content_type == "application/x-protobuf"
    resp = ExportMetricsServiceResponse.FromString(await r.read())
    assert not resp.HasField("partial_success")
    later = request(counter("orders", 5))
    later.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].time_unix_nano += (
        10**10
    )
    r = await client.post("/api/v1/otlp/v1/metrics", data=later.SerializeToString(), headers=PROTO)
    assert r.status == 200
    data = await stored(client, "orders_total")
    assert data == {
        (("__name__", "orders_total"), ("instance", "i-1"), ("job", "shop/api")): [
            (T_MS, 3.0),
            (T_MS + 10_000, 5.0),
        ]
    }
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_otlp_received_total", (("kind", "request"),))] == 2
    assert m[("tsagent_otlp_received_total", (("kind", "data_point"),))] == 2
    assert m[("tsagent_samples_ingested_total", (("source", "otlp"),))] == 4  # 2 + 2 target_info
    md = await (await client.get("/api/v1/metadata?metric=orders_total")).json()
    assert md["data"]["orders_total"][0]["type"] == "counter"


async def test_json_body_and_partial_success(client: Any) -> None:
    req = request(counter("ok", 1), counter("deltas", 5, mpb.AGGREGATION_TEMPORALITY_DELTA))
    doc = json_format.MessageToDict(req)
    doc["resourceMetrics"][0]["unknownField"] = 1  # receivers must ignore unknown fields
    r = await client.post("/v1/metrics", json=doc)
    assert r.status == 200 and r.content_type == "application/json"
    answer = await r.json()
    assert answer["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "'deltas'" in answer["partialSuccess"]["errorMessage"]
    assert list((await stored(client, "ok_total")).values()) == [[(T_MS, 1.0)]]
    assert await stored(client, "deltas_total") == {}
    # One exponential-histogram point per export (force_flush, then shutdown exports again).
    m = metric_values(await (await client.get("/metrics")).text())
    exports = m[("tsagent_otlp_received_total", (("kind", "request"),))]
    assert m[("tsagent_otlp_rejected_total", (("reason", "refused_data_point"),))] == exports


async def test_bad_bodies(client: Any) -> None:
    r = await client.post("/v1/metrics", data=b"\xff\xff\xff", headers=PROTO)
    assert r.status == 400
    assert b"ExportMetricsServiceRequest" in await r.read()
    r = await client.post(
        "/v1/metrics", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and "JSON" in (await r.json())["message"]
    r = await client.post("/v1/metrics", json={"resourceMetrics": "nope"})
    assert r.status == 400
    r = await client.post("/v1/metrics", data=b"x", headers={"Content-Type": "text/plain"})
    assert r.status == 415
    # A store refusal (older than the head) is a partial success naming the metric.
    await client.post(
        "/v1/metrics", data=request(counter("late", 1)).SerializeToString(), headers=PROTO
    )
    old = request(counter("late", 1))
    old.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].time_unix_nano -= 10**12
    r = await client.post("/v1/metrics", data=old.SerializeToString(), headers=PROTO)
    resp = ExportMetricsServiceResponse.FromString(await r.read())
    assert r.status == 200 and resp.partial_success.rejected_data_points >= 1
    assert "late_total" in resp.partial_success.error_message


async def test_utf8_strategy(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config(
        "ingest:\n  otlp:\n    translation_strategy: NoUTF8EscapingWithSuffixes\n"
    )
    client = await aiohttp_client(make_app(config, host))
    r = await client.post(
        "/v1/metrics",
        data=request(gauge("disk.io", 2, unit="By", **{"dev.name": "sda"})).SerializeToString(),
        headers=PROTO,
    )
    assert r.status == 200
    data = await stored(client, "disk.io_bytes")
    assert [dict(k)["dev.name"] for k in data] == ["sda"]


# --- the real OpenTelemetry SDK -------------------------------------------------------


def _sdk_export(url: str, delta: bool = False) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    temporality = {Counter: AggregationTemporality.DELTA} if delta else None
    exporter = OTLPMetricExporter(endpoint=url, preferred_temporality=temporality)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create(
        {
            "service.name": "checkout",
            "service.namespace": "shop",
            "service.instance.id": "i-1",
            "deployment.environment": "prod",
        }
    )
    provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        views=[
            View(
                instrument_name="payload.size", aggregation=ExponentialBucketHistogramAggregation()
            )
        ],
    )
    meter = provider.get_meter("shop.checkout", "2.0")
    requests = meter.create_counter("http.requests", description="Requests served")
    requests.add(5, {"http.method": "GET"})
    requests.add(3, {"http.method": "GET"})
    requests.add(1, {"http.method": "POST"})
    conns = meter.create_up_down_counter("active.connections")
    conns.add(5)
    conns.add(-2)
    duration = meter.create_histogram("http.server.duration", unit="ms")
    for v in (3, 30, 300):
        duration.record(v, {"route": "/pay"})
    meter.create_observable_gauge(
        "queue.size", [lambda _o: [Observation(7, {"queue": "q1"})]], unit="{item}"
    )
    meter.create_histogram("payload.size", unit="By").record(100)
    provider.force_flush()
    provider.shutdown()


async def test_opentelemetry_sdk_exports_to_running_app(client: Any) -> None:
    url = str(client.make_url("/v1/metrics"))
    await asyncio.get_running_loop().run_in_executor(None, _sdk_export, url)
    ident = (("instance", "i-1"), ("job", "shop/checkout"))

    async def one(name: str, **labels: str) -> float:
        data = await stored(client, name)
        key = tuple(sorted({**dict(ident), **labels, "__name__": name}.items()))
        assert key in data, (key, list(data))
        return float(data[key][-1][1])

    assert await one("http_requests_total", http_method="GET") == 8
    assert await one("http_requests_total", http_method="POST") == 1
    assert await one("active_connections") == 3
    assert await one("queue_size", queue="q1") == 7
    bucket = "http_server_duration_milliseconds_bucket"
    assert await one(bucket, route="/pay", le="0") == 0
    assert await one(bucket, route="/pay", le="5") == 1
    assert await one(bucket, route="/pay", le="50") == 2
    assert await one(bucket, route="/pay", le="500") == 3
    assert await one(bucket, route="/pay", le="+Inf") == 3
    assert await one("http_server_duration_milliseconds_sum", route="/pay") == 333
    assert await one("http_server_duration_milliseconds_count", route="/pay") == 3
    info = await stored(client, "target_info")
    [(labels, samples)] = info.items()
    assert dict(labels)["deployment_environment"] == "prod"
    assert dict(labels)["telemetry_sdk_language"] == "python"
    assert "service_name" not in dict(labels) and samples[-1][1] == 1
    assert await stored(client, "payload_size_bytes_bucket") == {}
    # One exponential-histogram point per export (force_flush, then shutdown exports again).
    m = metric_values(await (await client.get("/metrics")).text())
    exports = m[("tsagent_otlp_received_total", (("kind", "request"),))]
    assert m[("tsagent_otlp_rejected_total", (("reason", "refused_data_point"),))] == exports


async def test_opentelemetry_sdk_delta_counter_refused(client: Any) -> None:
    url = str(client.make_url("/api/v1/otlp/v1/metrics"))
    await asyncio.get_running_loop().run_in_executor(None, _sdk_export, url, True)
    assert await stored(client, "http_requests_total") == {}
    assert len(await stored(client, "active_connections")) == 1  # cumulative: written
    m = metric_values(await (await client.get("/metrics")).text())
    # the first export: the GET and POST delta points and the exponential histogram's point
    # (the final export at shutdown repeats only the histogram: no new deltas)
    assert m[("tsagent_otlp_rejected_total", (("reason", "refused_data_point"),))] >= 3


# --- the wire-level reader gives what the generated classes give ------------------------


def _both(req: ExportMetricsServiceRequest, cfg: Settings | None = None) -> tuple[Any, Any]:
    from plugins.otlp.fastpath import FastReader

    t = Translator(cfg or Settings())
    slow = t.translate(req)
    reader = FastReader(t)
    fast = reader.read(req.SerializeToString())
    fast_labels = [reader.labels_of(k) for k in fast.labels]
    return (
        (
            slow.labels,
            slow.timestamps,
            [struct.pack("<d", v) for v in slow.values],
            slow.rejected_points,
            slow.errors,
            slow.metadata,
            slow.data_points,
        ),
        (
            fast_labels,
            fast.timestamps,
            [struct.pack("<d", v) for v in fast.values],
            fast.rejected_points,
            fast.errors,
            fast.metadata,
            fast.data_points,
        ),
    )


def test_fast_reader_matches_translator() -> None:
    h = mpb.Metric(name="lat", unit="s")
    h.histogram.aggregation_temporality = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
    h.histogram.data_points.add(
        time_unix_nano=T_NS, count=2, sum=1.0, explicit_bounds=[1], bucket_counts=[1, 1]
    )
    up = mpb.Metric(name="conns")
    up.sum.aggregation_temporality = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
    up.sum.data_points.add(
        time_unix_nano=T_NS + 5, as_double=-2.5, attributes=[kv("z", 1), kv("a", True)]
    )
    stale = gauge("g", 1, **{"x.y": "1", "x_y": "2", "n": 1.5})
    stale.gauge.data_points[0].flags = mpb.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    req = request(
        gauge("queue.size", 7, unit="{item}", q="a"),
        counter("orders", 3),
        counter("deltas", 5, mpb.AGGREGATION_TEMPORALITY_DELTA),
        h,
        up,
        stale,
        mpb.Metric(name="empty"),
    )
    req.resource_metrics.append(
        request(gauge("other", 2), resource={"service.name": "b"}).resource_metrics[0]
    )
    for cfg in (
        Settings(),
        Settings(promote_scope_metadata=True, promote_all_resource_attributes=True),
    ):
        slow, fast = _both(req, cfg)
        assert fast == slow


_attr_text = st.text(alphabet="ab._9é", min_size=1, max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gauge", "sum", "delta"]),
            _attr_text,
            st.dictionaries(
                _attr_text, st.one_of(_attr_text, st.integers(-5, 5), st.booleans()), max_size=3
            ),
            st.floats(allow_nan=False),
            st.integers(0, 2**62),
        ),
        max_size=6,
    )
)
def test_fast_reader_matches_translator_property(points: list[Any]) -> None:
    metrics = []
    for kind, name, attrs, value, ts in points:
        m = mpb.Metric(name=name, unit="By")
        if kind == "gauge":
            dps = m.gauge.data_points
        else:
            m.sum.is_monotonic = True
            m.sum.aggregation_temporality = (
                mpb.AGGREGATION_TEMPORALITY_DELTA
                if kind == "delta"
                else mpb.AGGREGATION_TEMPORALITY_CUMULATIVE
            )
            dps = m.sum.data_points
        dps.add(time_unix_nano=ts, as_double=value, attributes=[kv(k, v) for k, v in attrs.items()])
        metrics.append(m)
    try:
        slow, fast = _both(request(*metrics))
    except NamingError:
        return
    assert fast == slow


async def test_fast_reader_bad_attribute_bytes_fall_back(client: Any) -> None:
    """Invalid UTF-8 in an attribute: the fast reader defers, the ordinary one refuses (400)."""
    good = request(gauge("g", 1, k="vv")).SerializeToString()
    bad = good.replace(b"vv", b"\xff\xfe")
    r = await client.post("/v1/metrics", data=bad, headers=PROTO)
    assert r.status == 400
    r = await client.post("/v1/metrics", data=good, headers=PROTO)
    assert r.status == 200


async def test_deeply_nested_json_is_a_400(client: Any) -> None:
    body = '{"resourceMetrics": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = await client.post("/v1/metrics", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await client.get("/health")).status == 200


def test_target_info_span_is_bounded() -> None:
    """Points from 1970 and from now: at most 100 target_info samples, ending at the latest."""
    a = gauge("a", 1)
    a.gauge.data_points[0].time_unix_nano = 0
    tr = Translator(Settings()).translate(request(a, gauge("b", 2)))
    info = next(v for k, v in as_dict(tr).items() if dict(k)["__name__"] == "target_info")
    assert len(info) == 100 and info[-1][0] == T_MS
