"""Round-trip and robustness tests for the built-in chunk codecs.

A codec bug silently corrupts history, so every codec is held to bit-exact
round trips on arbitrary bit patterns (hypothesis), on the values that break
naive float handling, and to failing loudly, with ValueError, on damaged blobs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.plugin_api import Codec
from plugins.codecs import DEFAULT_CODEC, all_codecs, register_codecs

CODECS = all_codecs()
IDS = [c.name for c in CODECS]

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
STALE = 0x7FF0000000000002
EDGE_BITS = [
    STALE,
    0x7FF8000000000001,  # Prometheus' ordinary NaN
    0x7FF8000000000000,
    0xFFF8000000000000,
    0x7FF0000000000001,  # signalling NaN, lowest payload
    0xFFFFFFFFFFFFFFFF,  # negative NaN, all payload bits
    0x7FF0000000000000,  # +Inf
    0xFFF0000000000000,  # -Inf
    0x8000000000000000,  # -0.0
    0x0000000000000000,
    0x0000000000000001,  # smallest denormal
    0x800FFFFFFFFFFFFF,  # largest negative denormal
    0x7FEFFFFFFFFFFFFF,  # DBL_MAX
]


def bits_to_floats(bits: list[int]) -> np.ndarray:
    return np.array(bits, dtype=np.uint64).view(np.float64)


def assert_round_trip(codec: Codec, ts: np.ndarray, vs: np.ndarray) -> bytes:
    ts = np.asarray(ts, dtype=np.int64)
    vs = np.asarray(vs, dtype=np.float64)
    blob = codec.encode(ts, vs)
    assert isinstance(blob, bytes)
    got_ts, got_vs = codec.decode(blob, ts.size)
    assert got_ts.dtype == np.int64 and got_vs.dtype == np.float64
    assert got_ts.shape == ts.shape and got_vs.shape == vs.shape
    np.testing.assert_array_equal(got_ts, ts)
    np.testing.assert_array_equal(got_vs.view(np.int64), vs.view(np.int64))
    return blob


@st.composite
def blocks(draw: st.DrawFn, max_size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Strictly ascending int64 timestamps and arbitrary float64 bit patterns."""
    n = draw(st.integers(0, max_size))
    style = draw(st.sampled_from(["any", "regular", "jitter"]))
    if style == "any":
        ts = sorted(draw(st.sets(st.integers(I64_MIN, I64_MAX), min_size=n, max_size=n)))
    else:
        start = draw(st.integers(-(2**50), 2**50))
        step = draw(st.integers(1, 10**6))
        jitter = 0 if style == "regular" else step // 3
        ts = [start + i * step for i in range(n)]
        ts = [t + draw(st.integers(-jitter, jitter)) if jitter else t for t in ts]
    raw_values = st.integers(0, 2**64 - 1)
    value_style = draw(st.sampled_from(["bits", "decimal", "repeat"]))
    if value_style == "bits":
        bits = draw(st.lists(raw_values, min_size=n, max_size=n))
        vs = bits_to_floats(bits)
    elif value_style == "decimal":
        ints = draw(st.lists(st.integers(-(10**12), 10**12), min_size=n, max_size=n))
        vs = np.array(ints, dtype=np.float64) / 10.0 ** draw(st.integers(0, 6))
        for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)) if n else []:
            vs[i] = bits_to_floats([draw(st.sampled_from(EDGE_BITS))])[0]
    else:
        pool = draw(st.lists(raw_values, min_size=1, max_size=3))
        vs = bits_to_floats(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)))
    return np.array(ts, dtype=np.int64), vs


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@settings(max_examples=150, deadline=None)
@given(block=blocks())
def test_round_trip_property(codec: Codec, block: tuple[np.ndarray, np.ndarray]) -> None:
    assert_round_trip(codec, *block)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@settings(max_examples=100, deadline=None)
@given(
    ts=st.lists(st.integers(I64_MIN, I64_MAX), max_size=50),
    data=st.data(),
)
def test_round_trip_any_int64_order(codec: Codec, ts: list[int], data: st.DataObject) -> None:
    """Wrapping arithmetic means even unsorted or repeated timestamps survive."""
    bits = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(ts), max_size=len(ts)))
    assert_round_trip(codec, np.array(ts, dtype=np.int64), bits_to_floats(bits))


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_edge_values(codec: Codec) -> None:
    vs = bits_to_floats(EDGE_BITS)
    ts = 1_700_000_000_000 + 15_000 * np.arange(vs.size, dtype=np.int64)
    assert_round_trip(codec, ts, vs)
    assert_round_trip(codec, ts, vs[::-1].copy())


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_staleness_marker_after_decimal_series(codec: Codec) -> None:
    vs = np.round(np.linspace(0, 50, 200), 2)
    vs[-1] = bits_to_floats([STALE])[0]
    vs[100] = -0.0
    ts = 15_000 * np.arange(vs.size, dtype=np.int64)
    assert_round_trip(codec, ts, vs)
    _, got = codec.decode(codec.encode(ts, vs), vs.size)
    assert int(got.view(np.uint64)[-1]) == STALE


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize(
    "ts",
    [
        [],
        [0],
        [I64_MIN],
        [I64_MAX],
        [I64_MIN, I64_MAX],
        [I64_MIN, 0, I64_MAX],
        [-86_400_000 * 365 * 100, -1, 0, 1],  # 1870 and the epoch
        [I64_MAX - 2, I64_MAX - 1, I64_MAX],
        [I64_MIN, I64_MIN + 1, I64_MIN + 3],
    ],
)
def test_extreme_timestamps(codec: Codec, ts: list[int]) -> None:
    vs = bits_to_floats(EDGE_BITS[: len(ts)])
    assert_round_trip(codec, np.array(ts, dtype=np.int64), vs)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_empty_and_single(codec: Codec) -> None:
    assert_round_trip(codec, np.empty(0, dtype=np.int64), np.empty(0))
    for bits in EDGE_BITS:
        assert_round_trip(codec, np.array([1_700_000_000_000]), bits_to_floats([bits]))


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("n", [2, 3, 120, 1000])
def test_realistic_shapes(codec: Codec, n: int) -> None:
    rng = np.random.default_rng(n)
    ts = 1_700_000_000_000 + 15_000 * np.arange(n, dtype=np.int64) + rng.integers(-5, 6, n)
    for vs in (
        np.full(n, 1.0),
        np.cumsum(rng.poisson(30, n)).astype(np.float64),
        np.round(20 + np.cumsum(rng.normal(0, 0.1, n)), 1),
        (4096 * (1000 + np.cumsum(rng.integers(-3, 4, n)))).astype(np.float64),
        rng.random(n),
    ):
        assert_round_trip(codec, ts, vs)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_decoded_arrays_are_writable(codec: Codec) -> None:
    ts = np.arange(10, dtype=np.int64)
    blob = codec.encode(ts, np.ones(10))
    got_ts, got_vs = codec.decode(blob, 10)
    assert got_ts.flags.writeable and got_vs.flags.writeable
    got_ts[0] = 5
    got_vs[0] = 5.0
    assert got_ts[0] == 5 and got_vs[0] == 5.0
    # The writes went to the caller's own arrays, not into the blob or shared buffers.
    again_ts, again_vs = codec.decode(blob, 10)
    assert again_ts[0] == 0 and again_vs[0] == 1.0


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_bad_arguments(codec: Codec) -> None:
    with pytest.raises(ValueError, match="lengths must match"):
        codec.encode(np.arange(3), np.ones(2))
    with pytest.raises(TypeError):
        codec.encode(np.arange(3, dtype=np.float64), np.ones(3))
    with pytest.raises(ValueError):
        codec.decode(codec.encode(np.arange(3), np.ones(3)), -1)


def _sample_blobs(codec: Codec) -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(1)
    n = 300
    ts = 1_700_000_000_000 + 15_000 * np.arange(n, dtype=np.int64) + rng.integers(-9, 10, n)
    out = []
    for vs in (
        np.round(np.cumsum(rng.normal(0, 1, n)), 2),
        rng.random(n),
        np.full(n, 3.0),
    ):
        out.append((codec.encode(ts, vs), n))
    return out


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_truncated_blob_raises_value_error(codec: Codec) -> None:
    for blob, n in _sample_blobs(codec):
        for cut in sorted({0, 1, 2, 5, len(blob) // 2, len(blob) - 1}):
            with pytest.raises(ValueError, match=codec.name):
                codec.decode(blob[:cut], n)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_wrong_count_or_trailing_garbage_raises(codec: Codec) -> None:
    blob, n = _sample_blobs(codec)[0]
    with pytest.raises(ValueError, match=codec.name):
        codec.decode(blob + b"\x00" * 9, n)
    with pytest.raises(ValueError, match=codec.name):
        codec.decode(blob, n + 1)
    if codec.name != "raw":
        with pytest.raises(ValueError, match="version"):
            codec.decode(b"\xee" + blob[1:], n)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corrupt_blob_never_crashes(codec: Codec, data: st.DataObject) -> None:
    """Flipped bytes must give ValueError or some arrays, never another error or a hang."""
    blob, n = data.draw(st.sampled_from(_SAMPLES[codec.name]))
    damaged = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    count = data.draw(st.sampled_from([n, n - 1, n + 1, 0, 1]))
    try:
        ts, vs = codec.decode(bytes(damaged), count)
    except ValueError:
        return
    assert ts.shape == vs.shape == (count,)


_SAMPLES = {codec.name: _sample_blobs(codec) for codec in CODECS}


def test_registry() -> None:
    codecs = register_codecs()
    names = [c.name for c in codecs]
    assert len(set(names)) == len(names)
    assert {"raw", "delta-rle", "gorilla", DEFAULT_CODEC} <= set(names)
    assert all(isinstance(c, Codec) for c in codecs)


def test_default_codec_is_compact() -> None:
    """The default must beat Gorilla on regular data, or it should not be the default."""
    default = next(c for c in CODECS if c.name == DEFAULT_CODEC)
    gorilla = next(c for c in CODECS if c.name == "gorilla")
    rng = np.random.default_rng(3)
    n = 720
    ts = 1_700_000_000_000 + 15_000 * np.arange(n, dtype=np.int64)
    vs = np.cumsum(rng.poisson(5, n)).astype(np.float64)
    assert len(default.encode(ts, vs)) < len(gorilla.encode(ts, vs))
    assert len(default.encode(ts, np.ones(n))) <= 32
