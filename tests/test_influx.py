"""InfluxDB line protocol: the parser (with hypothesis), the HTTP endpoints, bad input,
and the real ``influxdb-client`` library writing batches to a running app."""

from __future__ import annotations

import gzip
import math
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lineproto import LineError, Parser, parse_key, parse_value
from agent.model import Matcher
from agent.web.app import context_of, make_app
from tests.test_remote_write import metric_values

T_S = 1_700_000_000


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


# --- parser --------------------------------------------------------------------------


def test_values_and_types() -> None:
    assert parse_value("1.5") == 1.5 and parse_value("-3e2") == -300.0
    assert parse_value("12i") == 12.0 and parse_value("-12i") == -12.0 and parse_value("7u") == 7
    assert parse_value("t") == 1.0 and parse_value("FALSE") == 0.0 and parse_value("True") == 1
    assert parse_value('"text"') is None
    for bad in ("", "1.5i", "-1u", "abc", "nan", "inf", '"open', "1,5"):
        with pytest.raises(LineError):
            parse_value(bad)


def test_escapes_in_key_and_fields() -> None:
    assert parse_key(r"cpu\,x,host=a\ b,dc=us\=1") == ("cpu,x", (("dc", "us=1"), ("host", "a b")))
    assert parse_key("net,if.name=eth0")[1] == (("if_name", "eth0"),)
    with pytest.raises(LineError, match="reserved"):
        parse_key("m,__name__=x")
    p = Parser()
    b = p.parse('weather,loc=a\\ b temp=1,note="a, \\"b\\" c=d",ok=t 1000\n', 0, "s")
    assert b.errors == [] and b.strings_skipped == 1
    assert b.values == [1.0, 1.0] and b.timestamps == [1_000_000, 1_000_000]
    assert [p.labels(k) for k in b.keys] == [
        (("__name__", "weather_temp"), ("loc", "a b")),
        (("__name__", "weather_ok"), ("loc", "a b")),
    ]


def test_precisions_and_default_time() -> None:
    p = Parser()
    ns = T_S * 10**9 + 123_456_789
    for precision, ts, ms in (
        ("ns", ns, T_S * 1000 + 123),
        ("us", ns // 1000, T_S * 1000 + 123),
        ("ms", T_S * 1000 + 5, T_S * 1000 + 5),
        ("s", T_S, T_S * 1000),
        ("m", 2, 120_000),
        ("h", 1, 3_600_000),
    ):
        assert p.parse(f"m v=1 {ts}", 0, precision).timestamps == [ms], precision
    assert p.parse("m v=1", 42, "ns").timestamps == [42]


def test_bad_lines_named_good_kept() -> None:
    body = "\n".join(
        [
            "# comment",
            "ok v=1 1",
            "nofields",
            "m v=abc 1",
            "m v=1 notatime",
            "m v=1 1 extra",
            ",t=1 v=1",
            "m,novalue v=1",
            "m v=",
            "ok v=2 2",
        ]
    )
    b = Parser().parse(body, 0, "s")
    assert b.values == [1.0, 2.0]
    assert [n for n, _ in b.errors] == [3, 4, 5, 6, 7, 8, 9]
    reasons = dict(b.errors)
    assert "no fields" in reasons[3] and "'abc'" in reasons[4] and "timestamp" in reasons[5]
    assert "extra" in reasons[6] and "measurement" in reasons[7] and "key=value" in reasons[8]


_name = st.text(string.ascii_letters + string.digits + " ,=.-", min_size=1, max_size=8).filter(
    lambda s: s[0] in string.ascii_letters
)


def _esc(s: str, chars: str) -> str:
    for c in chars:
        s = s.replace(c, "\\" + c)
    return s


@settings(max_examples=200, deadline=None)
@given(
    measurement=_name,
    tags=st.dictionaries(_name, _name, max_size=3),
    fields=st.dictionaries(
        _name,
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.integers(-(2**53), 2**53),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
    ts=st.integers(-(2**40), 2**40),
)
def test_roundtrip_property(
    measurement: str, tags: dict[str, str], fields: dict[str, Any], ts: int
) -> None:
    """Any line an encoder writes (escaped as the spec says) reads back exactly."""
    key = _esc(measurement, ", ")
    key += "".join(f",{_esc(k, ',= ')}={_esc(v, ',= ')}" for k, v in sorted(tags.items()))

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return f"{v}i"
        return repr(float(v))

    field_set = ",".join(_esc(k, ",= ") + "=" + fmt(v) for k, v in fields.items())
    line = f"{key} {field_set} {ts}"
    p = Parser()
    b = p.parse(line, 0, "ms")
    assert b.errors == []
    assert b.timestamps == [ts] * len(fields)
    assert b.values == [float(v) for v in fields.values()]
    labels = p.labels(b.keys[0])
    assert dict(labels)["__name__"].startswith(
        "".join(c if c.isalnum() or c == "_" else "_" for c in measurement)
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_garbage_never_raises(text: str) -> None:
    b = Parser().parse(text, 0, "ns")
    assert len(b.values) == len(b.keys) == len(b.timestamps)
    assert all(not math.isnan(v) for v in b.values)


# --- HTTP ----------------------------------------------------------------------------


async def test_v1_write_gzip_db_label(client: Any) -> None:
    body = (
        f'cpu,host=a usage_idle=90.5,usage_user=3i,up=true,state="ok" {T_S}\n'
        f"cpu,host=b usage_idle=80 {T_S + 10}\n"
    )
    resp = await client.post(
        "/write?db=telegraf&precision=s",
        data=gzip.compress(body.encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert resp.status == 204, await resp.text()
    idle = await stored(client, "cpu_usage_idle")
    assert idle == {
        (("__name__", "cpu_usage_idle"), ("db", "telegraf"), ("host", "a")): [(T_S * 1000, 90.5)],
        (("__name__", "cpu_usage_idle"), ("db", "telegraf"), ("host", "b")): [
            ((T_S + 10) * 1000, 80.0)
        ],
    }
    assert list((await stored(client, "cpu_up")).values()) == [[(T_S * 1000, 1.0)]]
    assert list((await stored(client, "cpu_usage_user")).values()) == [[(T_S * 1000, 3.0)]]
    assert await stored(client, "cpu_state") == {}
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_influx_received_total", (("kind", "line"),))] == 2
    assert m[("tsagent_influx_received_total", (("kind", "sample"),))] == 4
    assert m[("tsagent_influx_rejected_total", (("reason", "string_field"),))] == 1
    assert m[("tsagent_samples_ingested_total", (("source", "influx"),))] == 4


async def test_v2_write_bucket_and_errors(client: Any) -> None:
    body = "mem used=1 1000\nmem used=oops 2000\nmem used=3 3000\n\ngarbage\n"
    resp = await client.post("/api/v2/write?org=o&bucket=b1&precision=ms", data=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["code"] == "invalid" and answer["line"] == 2 and answer["written"] == 2
    assert [e["line"] for e in answer["errors"]] == [2, 5]
    assert "line 2" in answer["message"] and "'oops'" in answer["message"]
    data = await stored(client, "mem_used")
    assert data == {(("__name__", "mem_used"), ("db", "b1")): [(1000, 1.0), (3000, 3.0)]}
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_influx_rejected_total", (("reason", "invalid_line"),))] == 2


async def test_bad_requests(client: Any) -> None:
    r = await client.post("/write?precision=x", data="m v=1")
    assert r.status == 400 and "precision" in (await r.json())["message"]
    r = await client.post("/api/v2/write?precision=m", data="m v=1")
    assert r.status == 400
    r = await client.post("/write", data="m v=1", headers={"Content-Encoding": "snappy"})
    assert r.status == 415
    # aiohttp closes a connection whose body it could not decode: ask for that up front.
    bad_gzip = {"Content-Encoding": "gzip", "Connection": "close"}
    r = await client.post("/write", data=b"not gzip", headers=bad_gzip)
    assert r.status == 400 and "gzip" in (await r.json())["message"].lower()
    r = await client.post(
        "/write", data=b"m v=1 1\n\xff\xfe v=2 2\nm v=3 3", params={"precision": "s"}
    )
    assert r.status == 400 and (await r.json())["errors"] == [
        {"line": 2, "error": "not UTF-8 (byte 0)"}
    ]
    assert len((await stored(client, "m_v"))[(("__name__", "m_v"),)]) == 2
    # A store refusal (out of order) is named, the rest kept.
    r = await client.post("/write?precision=s", data="m v=0 0")
    answer = await r.json()
    assert r.status == 400 and "out_of_order" in answer["errors"][0]["error"]


async def test_gzip_bomb_refused(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("server:\n  max_body_bytes: 100000\n")
    client = await aiohttp_client(make_app(config, host))
    bomb = gzip.compress(b"m v=1\n" * 100_000)
    r = await client.post("/write", data=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status == 413


async def test_separator_and_disabled(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config(
        "ingest:\n  influx:\n    measurement_field_separator: ':'\n    db_label: ''\n"
    )
    client = await aiohttp_client(make_app(config, host))
    r = await client.post("/write?db=x&precision=s", data="disk free=5 1")
    assert r.status == 204
    assert await stored(client, "disk:free") == {(("__name__", "disk:free"),): [(1000, 5.0)]}


async def test_disabled(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("ingest:\n  influx:\n    enabled: false\n")
    client = await aiohttp_client(make_app(config, host))
    assert (await client.post("/write", data="m v=1")).status == 404


async def test_influxdb_client_library_batches(client: Any) -> None:
    """The official ``influxdb-client`` writes Points and line strings in batches."""
    import asyncio

    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    url = str(client.make_url("/")).rstrip("/")

    def write() -> None:
        with InfluxDBClient(url=url, token="unused", org="acme", enable_gzip=True) as c:
            api = c.write_api(write_options=SYNCHRONOUS)
            points = [
                Point("sensor")
                .tag("room", f"r{i % 3}")
                .field("temp", 20.0 + i)
                .field("count", i)
                .field("label", "x")
                .time((T_S + i) * 10**9, WritePrecision.NS)
                for i in range(30)
            ]
            api.write(bucket="home", record=points)
            api.write(
                bucket="home",
                record=["sensor,room=r9 temp=99.5 1700000100"],
                write_precision=WritePrecision.S,
            )

    await asyncio.get_running_loop().run_in_executor(None, write)
    temp = await stored(client, "sensor_temp")
    assert len(temp) == 4
    r0 = temp[(("__name__", "sensor_temp"), ("db", "home"), ("room", "r0"))]
    assert r0 == [((T_S + i) * 1000, 20.0 + i) for i in range(0, 30, 3)]
    assert temp[(("__name__", "sensor_temp"), ("db", "home"), ("room", "r9"))] == [
        (1_700_000_100_000, 99.5)
    ]
    count = await stored(client, "sensor_count")
    assert sum(len(v) for v in count.values()) == 30


def test_out_of_range_numbers_are_line_errors() -> None:
    b = Parser().parse("m v=" + "9" * 5000 + "i\nm v=1e999\nm v=1 " + "9" * 30 + "\nm v=1", 0, "s")
    assert [n for n, _ in b.errors] == [1, 2, 3] and b.values == [1.0]


async def test_influxdb_client_batching_write_api(client: Any) -> None:
    """The client's background batching mode: 5 batches of 10 points, flushed on close."""
    import asyncio

    from influxdb_client import InfluxDBClient, Point, WriteOptions

    url = str(client.make_url("/")).rstrip("/")

    def write() -> None:
        with InfluxDBClient(url=url, token="unused", org="acme") as c:
            options = WriteOptions(batch_size=10, flush_interval=100, max_retries=0)
            with c.write_api(write_options=options) as api:
                for i in range(50):
                    api.write(
                        bucket="b",
                        record=Point("batch").tag("n", str(i % 2)).field("v", i).time(T_S + i, "s"),
                    )

    await asyncio.get_running_loop().run_in_executor(None, write)
    data = await stored(client, "batch_v")
    assert sorted(len(v) for v in data.values()) == [25, 25]
    even = data[(("__name__", "batch_v"), ("db", "b"), ("n", "0"))]
    assert even == [((T_S + i) * 1000, float(i)) for i in range(0, 50, 2)]
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_influx_received_total", (("kind", "request"),))] >= 5
