"""The hand-written 1.0 decoder against the protobuf library, and the 2.0 decoder."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf.message import DecodeError as ProtoDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.prompb import remote_pb2, types_pb2, write_v2_pb2
from agent.wire import uvarint as _varint
from plugins.remote_write import v2 as v2_codec
from plugins.remote_write.labels import validate_label_strings
from plugins.remote_write.receiver import negotiate
from plugins.remote_write.wire import (
    DecodeError,
    SeriesIssue,
    decode_write_request,
)

names = st.sampled_from(["__name__", "job", "instance", "a", "b", "le", "bad-name", ""])
values = st.one_of(
    st.sampled_from(["up", "node_cpu_seconds_total", "x", "", "1up", "ü", "a\nb"]),
    st.text(max_size=12),
)
sample_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0]),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
)
timestamps = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(1_600_000_000_000, 1_800_000_000_000),
    st.sampled_from([0, 1, -1]),
)


@st.composite
def label_sets(draw: Any) -> list[tuple[str, str]]:
    pairs = draw(st.lists(st.tuples(names, values), max_size=6))
    if draw(st.booleans()):  # mostly well-formed: sorted, unique, named
        pairs = sorted({k: v for k, v in pairs if k}.items())
        pairs = [p for p in pairs if p[0] != "__name__"]
        pairs.insert(0, ("__name__", draw(st.sampled_from(["up", "node_load1", "a:b"]))))
        pairs.sort()
    return pairs


@st.composite
def write_requests(draw: Any) -> tuple[bytes, list[tuple[list[tuple[str, str]], list[Any]]]]:
    """A serialised WriteRequest, sometimes with fields in unusual order."""
    pool = draw(st.lists(label_sets(), min_size=1, max_size=5))
    parts = []
    series = []
    for _ in range(draw(st.integers(0, 8))):
        labels = draw(st.sampled_from(pool))
        samples = draw(st.lists(st.tuples(timestamps, sample_values), max_size=3))
        ts = types_pb2.TimeSeries(
            labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
            samples=[types_pb2.Sample(timestamp=t, value=v) for t, v in samples],
        )
        series.append((labels, samples))
        if draw(st.integers(0, 5)) == 0:
            # Samples before labels: the same message, encoded in another order.
            tail = types_pb2.TimeSeries(samples=ts.samples).SerializeToString()
            head = types_pb2.TimeSeries(labels=ts.labels).SerializeToString()
            raw = tail + head
            parts.append(b"\x0a" + _varint(len(raw)) + raw)
        else:
            parts.append(remote_pb2.WriteRequest(timeseries=[ts]).SerializeToString())
        if draw(st.integers(0, 6)) == 0:
            parts.append(b"\x28\x05")  # unknown varint field 5: skipped
    return b"".join(parts), series


def _bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


def flatten(decoded: Any, cache: dict[Any, int]) -> list[tuple[Any, int, int]]:
    """(labels, ts, value bits) per sample, labels resolved through misses/cache."""
    by_id = {sid: key for key, sid in cache.items()}
    pos_labels: dict[int, Any] = {}
    for key, positions in decoded.misses.items():
        for p in positions:
            pos_labels[p] = decoded.miss_labels[key]
    out = []
    for i, sid in enumerate(decoded.ids):
        labels = pos_labels[i] if sid == 0 else by_id[sid]
        out.append((labels, decoded.ts[i], _bits(decoded.vals[i])))
    return out


def expected_from_protobuf(buf: bytes) -> tuple[list[tuple[Any, int, int]], int]:
    req = remote_pb2.WriteRequest.FromString(buf)
    out = []
    invalid = 0
    for ts in req.timeseries:
        verdict = validate_label_strings([(lab.name, lab.value) for lab in ts.labels])
        if isinstance(verdict, str):
            invalid += len(ts.samples)
            continue
        for s in ts.samples:
            out.append((verdict, s.timestamp, _bits(s.value)))
    return out, invalid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(write_requests())
def test_decoder_matches_protobuf(case: Any) -> None:
    buf, _ = case
    expected, invalid = expected_from_protobuf(buf)
    # Cold: every series misses the cache and is parsed in full.
    cold = decode_write_request(buf, {})
    assert flatten(cold, {}) == expected
    issues = [v for v in cold.miss_labels.values() if isinstance(v, SeriesIssue)]
    assert sum(i.count for i in issues) == invalid
    # Warm: the keys now map to ids; the fast path must give the same answer.
    cache: dict[Any, int] = {}
    for key, labels in cold.miss_labels.items():
        if not isinstance(labels, SeriesIssue):
            cache[key] = len(cache) + 1
    by_key_labels = {k: v for k, v in cold.miss_labels.items() if not isinstance(v, SeriesIssue)}
    warm = decode_write_request(buf, cache)
    assert not warm.misses
    resolved = {cache[k]: labels for k, labels in by_key_labels.items()}
    got = [
        (resolved[sid], t, _bits(v)) for sid, t, v in zip(warm.ids, warm.ts, warm.vals, strict=True)
    ]
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(write_requests(), st.data())
def test_corrupted_input_fails_cleanly(case: Any, data: Any) -> None:
    buf, _ = case
    if not buf:
        return
    raw = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut])
    try:
        remote_pb2.WriteRequest.FromString(mutated)
        upb_ok = True
    except ProtoDecodeError:
        upb_ok = False
    try:
        decoded = decode_write_request(mutated, {})
    except DecodeError:
        # upb may accept what we refuse only through invalid UTF-8 (it checks strings).
        assert not upb_ok
        return
    if upb_ok:
        expected, _ = expected_from_protobuf(mutated)
        assert flatten(decoded, {}) == expected


def test_varint_lengths_and_big_series() -> None:
    labels = [("__name__", "m")] + [(f"l{i:03d}", "v" * 50) for i in range(40)]
    ts = types_pb2.TimeSeries(
        labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
        samples=[types_pb2.Sample(timestamp=2**40, value=1.5)],
    )
    buf = remote_pb2.WriteRequest(timeseries=[ts, ts]).SerializeToString()
    cold = decode_write_request(buf, {})
    (key,) = cold.misses
    assert cold.misses[key] == [0, 1]
    warm = decode_write_request(buf, {key: 7})
    assert list(warm.ids) == [7, 7] and list(warm.ts) == [2**40] * 2


@pytest.mark.parametrize(
    ("ctype", "enc", "want"),
    [
        ("application/x-protobuf", "snappy", "1.0"),
        ("application/x-protobuf; proto=prometheus.WriteRequest", "Snappy", "1.0"),
        ('application/x-protobuf;proto="io.prometheus.write.v2.Request"', "snappy", "2.0"),
        (None, "snappy", "1.0"),
        ("text/plain", "snappy", None),
        ("application/x-protobuf", "zstd", None),
    ],
)
def test_negotiate(ctype: str | None, enc: str, want: str | None) -> None:
    assert negotiate(ctype, enc)[0] == want


def test_v2_decoder_resolves_symbols_and_caches() -> None:
    req = write_v2_pb2.Request(
        symbols=["", "__name__", "up", "job", "a", "b"],
        timeseries=[
            write_v2_pb2.TimeSeries(
                labels_refs=[1, 2, 3, 4], samples=[write_v2_pb2.Sample(value=1, timestamp=5)]
            ),
            write_v2_pb2.TimeSeries(
                labels_refs=[1, 2, 3, 5], samples=[write_v2_pb2.Sample(value=2, timestamp=6)]
            ),
        ],
    )
    buf = req.SerializeToString()
    cold = v2_codec.decode_request(buf, {})
    assert list(cold.miss_labels.values()) == [
        (("__name__", "up"), ("job", "a")),
        (("__name__", "up"), ("job", "b")),
    ]
    cache = {k: i + 1 for i, k in enumerate(cold.misses)}
    warm = v2_codec.decode_request(buf, cache)
    assert list(warm.ids) == [1, 2] and not warm.misses
    with pytest.raises(DecodeError):
        v2_codec.decode_request(b"\x22\x05ab", {})
