"""Remote read (``POST /api/v1/read``): samples written through the store, read back as protobuf.

Responses are decoded with the generated ``prompb`` classes and
``plugins.remote_read.chunks.decode_xor_chunk``; that decoder is checked
against chunks of a real Prometheus in ``tests/integration/test_prometheus.py``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any, cast

import cramjam
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import STALE_NAN, Labels, make_labels
from agent.prompb import remote_pb2, types_pb2
from agent.web.app import CONTEXT_KEY, make_app
from agent.web.security import hash_password
from plugins.remote_read import chunks, wire

LM = types_pb2.LabelMatcher
SAMPLES = remote_pb2.ReadRequest.SAMPLES
STREAMED = remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS
T0 = 1_700_000_000_000


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def query(*matchers: tuple[int, str, str], start: int = 0, end: int = 2**62) -> remote_pb2.Query:
    return remote_pb2.Query(
        start_timestamp_ms=start,
        end_timestamp_ms=end,
        matchers=[LM(type=cast(Any, t), name=n, value=v) for t, n, v in matchers],
    )


def encode(queries: list[remote_pb2.Query], accepted: list[int] | None = None) -> bytes:
    # Plain ints on purpose: the tests also send response types that do not exist.
    types = cast(Any, accepted or [])
    request = remote_pb2.ReadRequest(queries=queries, accepted_response_types=types)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


Decoded = list[dict[Labels, list[tuple[int, int]]]]


def decode_samples(body: bytes) -> Decoded:
    """Per query: labels -> [(ts, value bits)], keeping the order the server sent."""
    resp = remote_pb2.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    return [
        {
            tuple((lab.name, lab.value) for lab in ts.labels): [
                (s.timestamp, bits(s.value)) for s in ts.samples
            ]
            for ts in result.timeseries
        }
        for result in resp.results
    ]


@pytest.fixture
async def reader(aiohttp_client: Any, make_config: Any) -> Any:
    """A client on a running app, plus a helper that POSTs read requests."""

    async def start(config_text: str = "") -> Any:
        config, host = make_config(config_text)
        app = make_app(config, host)
        client = await aiohttp_client(app)
        client.ctx = app[CONTEXT_KEY]

        async def read(
            queries: list[remote_pb2.Query], accepted: list[int] | None = None, **kw: Any
        ) -> Any:
            return await client.post("/api/v1/read", data=encode(queries, accepted), **kw)

        client.read = read
        return client

    return start


SERIES: dict[Labels, list[tuple[int, float]]] = {
    make_labels({"__name__": "http_requests_total", "job": "api", "code": "200"}): [
        (T0 + i * 1000, float(i)) for i in range(10)
    ],
    make_labels({"__name__": "http_requests_total", "job": "api", "code": "500"}): [
        (T0 + 5000, 1.0),
        (T0 + 6000, STALE_NAN),
    ],
    make_labels({"__name__": "http_requests_total", "job": "web"}): [(T0, 7.0)],
    # Upper-case label names sort before "__name__"; Prometheus sorts by bytes too.
    make_labels({"__name__": "odd", "Zone": "EU", "job": "batch"}): [
        (T0, math.nan),
        (T0 + 1, -0.0),
        (T0 + 2, math.inf),
        (T0 + 3, -math.inf),
        (T0 + 4, 5e-324),
    ],
}


async def write_series(client: Any, series: dict[Labels, list[tuple[int, float]]]) -> None:
    rows = [(labels, t, v) for labels, samples in series.items() for t, v in samples]
    result = await client.ctx.append_samples(rows, source="test")
    assert result.accepted == len(rows)


def expected(*names: Labels) -> dict[Labels, list[tuple[int, int]]]:
    return {n: [(t, bits(v)) for t, v in SERIES[n]] for n in sorted(names)}


API_200, API_500, WEB, ODD = list(SERIES)


async def test_samples_round_trip_bit_exact(reader: Any) -> None:
    client = await reader()
    await write_series(client, SERIES)
    resp = await client.read([query((LM.RE, "__name__", ".+"))])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-protobuf"
    assert resp.headers["Content-Encoding"] == "snappy"
    (result,) = decode_samples(await resp.read())
    assert result == expected(*SERIES)
    # series sorted by label set, labels sorted by name, __name__ among them
    assert list(result) == sorted(SERIES)
    assert [k for k, _ in next(iter(r for r in result if r == ODD))] == ["Zone", "__name__", "job"]
    # the staleness marker and the ordinary NaN keep their own bit patterns
    assert result[API_500][1][1] == 0x7FF0000000000002
    assert result[ODD][0][1] == bits(math.nan) != 0x7FF0000000000002
    assert result[ODD][1][1] == 1 << 63  # -0.0


@pytest.mark.parametrize(
    ("matchers", "want"),
    [
        ([(LM.EQ, "job", "api")], [API_200, API_500]),
        ([(LM.EQ, "__name__", "http_requests_total"), (LM.NEQ, "job", "api")], [WEB]),
        # a missing label is "": NEQ keeps series without it, EQ "" selects them
        ([(LM.EQ, "__name__", "http_requests_total"), (LM.NEQ, "code", "200")], [API_500, WEB]),
        ([(LM.EQ, "__name__", "http_requests_total"), (LM.EQ, "code", "")], [WEB]),
        ([(LM.RE, "code", "5.."), (LM.RE, "job", "api|web")], [API_500]),
        # regexes are anchored at both ends
        ([(LM.RE, "job", "ap")], []),
        ([(LM.RE, "__name__", "http_.*"), (LM.NRE, "code", "2..")], [API_500, WEB]),
        ([(LM.NRE, "__name__", "http.*")], [ODD]),
        ([(LM.EQ, "Zone", "EU")], [ODD]),
        ([(LM.EQ, "job", "nosuch")], []),
    ],
)
async def test_matcher_types(
    reader: Any, matchers: list[tuple[int, str, str]], want: list[Labels]
) -> None:
    client = await reader()
    await write_series(client, SERIES)
    resp = await client.read([query(*matchers)])
    assert resp.status == 200
    assert decode_samples(await resp.read()) == [expected(*want)]


async def test_time_range_is_inclusive_and_queries_answer_in_order(reader: Any) -> None:
    client = await reader()
    await write_series(client, SERIES)
    api = (LM.EQ, "job", "api")
    resp = await client.read(
        [
            query(api, start=T0 + 3000, end=T0 + 5000),
            query((LM.EQ, "job", "web"), start=T0 + 1, end=T0 + 10),  # nothing in range
            query(),  # no matchers select nothing, as in Prometheus's TSDB
            query(api, start=T0 + 6000, end=T0 + 6000),
        ]
    )
    assert resp.status == 200
    first, empty, none, last = decode_samples(await resp.read())
    assert first == {
        API_200: [(T0 + i * 1000, bits(float(i))) for i in (3, 4, 5)],
        API_500: [(T0 + 5000, bits(1.0))],
    }
    assert empty == {} and none == {}
    assert last == {API_200: [(T0 + 6000, bits(6.0))], API_500: [(T0 + 6000, 0x7FF0000000000002)]}


def decode_stream(body: bytes) -> list[tuple[int, Labels, list[types_pb2.Chunk]]]:
    frames = []
    for message in chunks.read_frames(body):
        resp = remote_pb2.ChunkedReadResponse.FromString(message)
        assert len(resp.chunked_series) == 1  # one series per frame, as Prometheus sends
        (series,) = resp.chunked_series
        labels = tuple((lab.name, lab.value) for lab in series.labels)
        frames.append((resp.query_index, labels, list(series.chunks)))
    return frames


def stream_samples(frames: list[Any]) -> dict[tuple[int, Labels], list[tuple[int, int]]]:
    out: dict[tuple[int, Labels], list[tuple[int, int]]] = {}
    for index, labels, chunk_list in frames:
        for c in chunk_list:
            assert c.type == types_pb2.Chunk.XOR
            ts, vs = chunks.decode_xor_chunk(c.data)
            assert (c.min_time_ms, c.max_time_ms) == (ts[0], ts[-1])
            out.setdefault((index, labels), []).extend(zip(ts, vs, strict=True))
    return out


async def test_streamed_xor_chunks(reader: Any) -> None:
    client = await reader()
    long = make_labels({"__name__": "long", "job": "x"})
    many = {long: [(T0 + i * 15_000 + (i % 7), float(i % 13) / 3) for i in range(300)]}
    await write_series(client, SERIES | many)
    resp = await client.read(
        [query((LM.EQ, "job", "api")), query((LM.EQ, "__name__", "long"))], accepted=[STREAMED]
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == (
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    )
    assert "Content-Encoding" not in resp.headers
    frames = decode_stream(await resp.read())
    assert [(i, lab) for i, lab, _ in frames] == [(0, API_200), (0, API_500), (1, long)]
    assert [len(c) for _, _, c in frames] == [1, 1, 3]  # 300 samples: 120 + 120 + 60
    got = stream_samples(frames)
    assert got[(0, API_500)] == expected(API_500)[API_500]
    assert got[(1, long)] == [(t, bits(v)) for t, v in many[long]]


async def test_streamed_frames_are_cut_by_size(reader: Any) -> None:
    client = await reader("read:\n  remote_read:\n    max_bytes_in_frame: 200\n")
    long = make_labels({"__name__": "long", "job": "x"})
    samples = [(T0 + i * 1000, float(i * i)) for i in range(600)]
    await write_series(client, {long: samples})
    resp = await client.read([query((LM.EQ, "job", "x"))], accepted=[STREAMED])
    frames = decode_stream(await resp.read())
    assert len(frames) == 5  # every chunk overshoots 200 bytes: one chunk a frame
    assert all(lab == long and len(c) == 1 for _, lab, c in frames)
    assert stream_samples(frames)[(0, long)] == [(t, bits(v)) for t, v in samples]


@pytest.mark.parametrize(
    ("accepted", "streamed"),
    [([], False), ([SAMPLES, STREAMED], False), ([STREAMED, SAMPLES], True), ([7, STREAMED], True)],
)
async def test_response_type_negotiation(reader: Any, accepted: list[int], streamed: bool) -> None:
    client = await reader()
    await write_series(client, SERIES)
    resp = await client.read([query((LM.EQ, "job", "web"))], accepted=accepted)
    assert resp.status == 200
    body = await resp.read()
    if streamed:
        assert stream_samples(decode_stream(body)) == {(0, WEB): expected(WEB)[WEB]}
    else:
        assert decode_samples(body) == [expected(WEB)]


async def test_bad_requests_are_400_plain_text(reader: Any) -> None:
    client = await reader()

    async def refused(data: bytes, fragment: str) -> None:
        resp = await client.post("/api/v1/read", data=data)
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert fragment in await resp.text()

    await refused(b"\xff\xff\xff\xff\xff\xffnot snappy", "not snappy")
    await refused(bytes(cramjam.snappy.compress_raw(b"\x0a\x05ab")), "not a prometheus.ReadRequest")
    # framed snappy (the wrong one of the two formats) is refused too
    framed = bytes(cramjam.snappy.compress(remote_pb2.ReadRequest().SerializeToString()))
    await refused(framed, "not")
    await refused(encode([query((LM.RE, "job", "(unclosed"))]), "invalid regex")
    await refused(encode([query((LM.RE, "job", "a"), (9, "job", "b"))]), "unknown matcher type 9")
    await refused(encode([query((LM.EQ, "job", "a"))], [7]), "does not support any")


async def test_sample_limit_counts_the_whole_request(reader: Any) -> None:
    client = await reader("read:\n  remote_read:\n    sample_limit: 12\n")
    await write_series(client, SERIES)
    api = query((LM.EQ, "job", "api"))  # 12 samples
    ok = await client.read([api])
    assert ok.status == 200
    for accepted in ([SAMPLES], [STREAMED]):
        resp = await client.read([api, query((LM.EQ, "job", "web"))], accepted=accepted)
        assert resp.status == 400
        text = await resp.text()
        assert "exceeded sample limit (12)" in text and "read.remote_read.sample_limit" in text


async def test_concurrent_limit_queues_requests(reader: Any, monkeypatch: Any) -> None:
    client = await reader("read:\n  remote_read:\n    concurrent_limit: 2\n")
    await write_series(client, SERIES)
    store = client.ctx.store
    real_select = store.select
    running = peak = 0

    async def slow_select(*args: Any) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        try:
            return await real_select(*args)
        finally:
            running -= 1

    monkeypatch.setattr(store, "select", slow_select)
    responses = await asyncio.gather(
        *(client.read([query((LM.EQ, "job", "web"))]) for _ in range(6))
    )
    assert [r.status for r in responses] == [200] * 6
    assert peak == 2


async def test_read_route_uses_the_read_credentials(reader: Any) -> None:
    pw = hash_password("pw", rounds=4)
    client = await reader(
        f"auth:\n  read:\n    basic_auth:\n      grafana: '{pw}'\n"
        "  write:\n    bearer_tokens: [w]\n"
    )
    body = [query((LM.EQ, "job", "api"))]
    assert (await client.read(body)).status == 401
    assert (await client.read(body, headers={"Authorization": "Bearer w"})).status == 403
    basic = "Basic " + base64.b64encode(b"grafana:pw").decode()
    assert (await client.read(body, headers={"Authorization": basic})).status == 200


async def test_disabled(reader: Any) -> None:
    client = await reader("read:\n  remote_read:\n    enabled: false\n")
    assert (await client.read([query((LM.EQ, "job", "api"))])).status == 404


# --- encoders ---------------------------------------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)
uint64s = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(int64s, uint64s), max_size=40))
def test_wire_samples_decode_with_generated_classes(rows: list[tuple[int, int]]) -> None:
    ts = np.array([t for t, _ in rows], dtype=np.int64)
    vs = np.array([v for _, v in rows], dtype=np.uint64).view(np.float64)
    labels = (("__name__", "m"), ("é", "ü\u2603"))
    msg = types_pb2.TimeSeries.FromString(wire.encode_timeseries(labels, ts, vs))
    assert [(lab.name, lab.value) for lab in msg.labels] == list(labels)
    assert [(s.timestamp, bits(s.value)) for s in msg.samples] == rows


def test_wire_samples_large_series_in_blocks() -> None:
    n = 3 * (1 << 16) + 5
    ts = np.arange(n, dtype=np.int64) * 1000 + T0
    vs = np.random.default_rng(1).normal(size=n)
    msg = types_pb2.TimeSeries.FromString(wire.encode_samples(ts, vs))
    assert len(msg.samples) == n
    assert msg.samples[-1].timestamp == ts[-1] and msg.samples[-1].value == vs[-1]


# Timestamps sorted, with gaps chosen to hit every delta-of-delta bucket.
gaps = st.one_of(
    st.just(15_000), st.integers(0, 20_000), st.integers(0, 2_000_000), st.integers(0, 2**40)
)
values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, math.inf, -math.inf, math.nan, STALE_NAN]).map(bits),
    st.floats(allow_nan=False).map(bits),
    uint64s,
    st.integers(0, 2**20),  # few significant bits: exercises the window reuse
)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**50), 2**50), st.lists(st.tuples(gaps, values), min_size=0, max_size=150))
def test_xor_chunk_round_trip(start: int, rows: list[tuple[int, int]]) -> None:
    ts, t = [], start
    for gap, _ in rows:
        t += gap
        ts.append(t)
    vs = [v for _, v in rows]
    data = chunks.encode_xor_chunk(ts, vs)
    assert int.from_bytes(data[:2], "big") == len(ts)
    assert chunks.decode_xor_chunk(data) == (ts, vs)


def test_xor_chunk_known_bytes() -> None:
    """Worked by hand from the format: count 3; zig-zag varint of 1000 (d0 0f); the bits
    of 1.0; uvarint 1000 (e8 07); then a bit stream: value unchanged (0), delta-of-delta 0
    (0), value 2.0, whose XOR with 1.0 is 0x7ff0000000000000 (1 leading and 52 trailing
    zeros): '11', leading 00001, 11 meaningful bits 001011, the bits, zero padding."""
    data = chunks.encode_xor_chunk([1000, 2000, 3000], [bits(1.0), bits(1.0), bits(2.0)])
    stream = "0" + "0" + "11" + "00001" + "001011" + "1" * 11 + "0" * 6
    tail = int(stream, 2).to_bytes(4, "big").hex()
    assert data.hex() == "0003" + "d00f" + "3ff0000000000000" + "e807" + tail


def test_xor_chunk_bucket_boundary_known_bytes() -> None:
    """A delta-of-delta of exactly 8192 still fits the 14-bit bucket (Prometheus's ranges
    are -(2^13 - 1) .. 2^13): '10' + 10000000000000, where 8193 needs '110' + 17 bits."""
    zero = bits(0.0)
    data = chunks.encode_xor_chunk([0, 1000, 10_192], [zero] * 3)
    stream = "0" + "10" + "10000000000000" + "0" + "0" * 6
    tail = int(stream, 2).to_bytes(3, "big").hex()
    assert data.hex() == "0003" + "00" + "0000000000000000" + "e807" + tail
    data = chunks.encode_xor_chunk([0, 1000, 10_193], [zero] * 3)
    stream = "0" + "110" + format(8193, "017b") + "0" + "0" * 2
    assert data.hex().endswith(int(stream, 2).to_bytes(3, "big").hex())


def test_crc32c_and_frames() -> None:
    assert chunks.crc32c(b"123456789") == 0xE3069283  # the standard check value
    body = chunks.frame(b"abc") + chunks.frame(b"x" * 300)
    assert list(chunks.read_frames(body)) == [b"abc", b"x" * 300]
    corrupt = bytearray(body)
    corrupt[6] ^= 1
    with pytest.raises(chunks.ChunkError, match="CRC"):
        list(chunks.read_frames(bytes(corrupt)))
