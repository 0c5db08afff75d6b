"""The bulk paths of query output give exactly what the reference paths give.

* :func:`agent.query.numfmt.format_cells` against :func:`format_value` (Go's
  ``strconv.FormatFloat(v, 'f', -1, 64)``) on random and awkward values;
* ``Matrix``/``Vector.to_json_bytes`` against ``json.dumps(to_json())``;
* large results cached as encoded JSON only: same bytes, same ``data``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.query.answer import QueryAnswer, encode_data, result_from_data
from agent.query.cache import Dependencies, QueryCache
from agent.query.numfmt import format_cells, format_value, pack
from agent.query.values import Matrix, Sample, Series, Vector
from tests.test_query_cache import key

AWKWARD = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    0.2,
    0.3,
    1 / 3,
    2 / 3,
    0.5,
    1e-7,
    1e-8,
    9.999999999999999e-8,
    1.0000000000000002e-7,
    1e15,
    1e16,
    1e17,
    1e21,
    1e22,
    9.999999999999999e20,
    999999999999999.9,
    4503599627370495.5,
    4503599627370496.0,
    9007199254740991.0,
    9007199254740993.0,
    123456789012345678.0,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    2.0**-20,
    2.0**-24,
    2.0**60,
    0.000123,
    1.5e-5,
    100.0,
    0.06666666666666667,
    16666.666666666668,
]


def values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 20_000
    bits = rng.integers(0, 2**63, n, dtype=np.int64)
    parts = [
        np.array(AWKWARD),
        -np.array(AWKWARD),
        rng.uniform(0, 1e6, n) / 60,
        rng.normal(0, 1e3, n),
        rng.integers(-(10**9), 10**9, n) * 1.0,
        rng.integers(0, 10**5, n) / 100.0,
        rng.integers(0, 10**5, n) / 8.0,
        10.0 ** rng.uniform(-10, 23, n),
        np.frombuffer(bits.tobytes(), dtype=np.float64),
        np.nextafter(10.0 ** rng.integers(-8, 22, n), np.inf),
        np.nextafter(10.0 ** rng.integers(-8, 22, n), -np.inf),
        2.0 ** rng.integers(-30, 60, n),
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_format_cells_equals_format_value(seed: int) -> None:
    v = values(seed)
    cells = format_cells(v, format_value)
    got = [bytes(row[row != 0]).decode() for row in cells]
    want = [format_value(x) for x in v.tolist()]
    bad = [(x, g, w) for x, g, w in zip(v.tolist(), got, want, strict=True) if g != w]
    assert not bad, bad[:10]
    assert pack(cells) == "".join(want).encode()


def reference(result: Matrix | Vector) -> bytes:
    return json.dumps(result.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def random_labels(rng: np.random.Generator, i: int) -> tuple[tuple[str, str], ...]:
    odd = ['a "q"', "back\\slash", "tab\tnew\nline", "välue ✓", "\x00\x1f", "plain"]
    pairs = {"__name__": f"m{i % 3}", "i": str(i), "odd": odd[int(rng.integers(len(odd)))]}
    if rng.random() < 0.5:
        pairs["x"] = str(rng.random())
    return tuple(sorted(pairs.items()))


@pytest.mark.parametrize("seed", [4, 5])
def test_matrix_and_vector_bytes_equal_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = values(seed)
    steps = np.arange(1_700_000_000_000, 1_700_000_900_000, 15_250, dtype=np.int64)
    series = []
    for i in range(300):
        keep = rng.random(len(steps)) < rng.random()
        series.append(Series(random_labels(rng, i), steps[keep], rng.choice(pool, int(keep.sum()))))
    matrix = Matrix(series)
    assert matrix.to_json_bytes() == reference(matrix)
    samples = [
        Sample(s.labels, int(1_700_000_000_000 + rng.integers(0, 10**6)), float(rng.choice(pool)))
        for s in series
    ]
    vector = Vector(samples)
    assert vector.to_json_bytes() == reference(vector)
    one = Matrix([Series((), steps[:0], np.zeros(0)), series[0]])
    assert one.to_json_bytes() == reference(one)


def test_large_results_are_cached_as_json() -> None:
    rng = np.random.default_rng(6)
    steps = np.arange(0, 300_000, 15_000, dtype=np.int64)
    matrix = Matrix([Series((("i", str(i)),), steps, rng.random(len(steps))) for i in range(2_000)])
    cache = QueryCache(max_bytes=4_000_000)  # the result is over an eighth of it
    entry = cache.put(key(), matrix, Dependencies(None, 0, 1), cache.begin(), 60, encode_data)
    cache.finish()
    assert entry is not None and entry.result is None and entry.data_json is not None
    assert entry.size < 4_000_000 and cache.stats.bytes == entry.size
    hit = cache.get(key())
    assert hit is entry
    answer = QueryAnswer(hit.result, "hit", hit, cache)
    assert answer.data_json() == reference(matrix)
    assert answer.data() == matrix.to_json()
    again = answer.result
    assert isinstance(again, Matrix) and again.to_json() == matrix.to_json()
    small = Matrix(matrix.series[:2])
    kept = cache.put(key(start=5), small, Dependencies(None, 0, 1), cache.begin(), 60, encode_data)
    cache.finish()
    assert kept is not None and kept.result is small


def test_result_from_data_round_trips() -> None:
    pool = values(7)[:500]
    steps = np.arange(1_700_000_000_001, 1_700_000_100_000, 7_001, dtype=np.int64)
    rng = np.random.default_rng(7)
    matrix = Matrix(
        [Series(random_labels(rng, i), steps, rng.choice(pool, len(steps))) for i in range(20)]
    )
    back = result_from_data(json.loads(reference(matrix)), matrix.annotations)
    assert reference(back) == reference(matrix)  # type: ignore[arg-type]


# --- the orjson path of the JSON encoder ------------------------------------------------


def plain_values(seed: int) -> np.ndarray:
    """Values orjson writes without an exponent (what rate() and gauges give)."""
    rng = np.random.default_rng(seed)
    n = 20_000
    v = np.concatenate(
        [
            rng.uniform(0, 1e6, n) / 60,
            rng.normal(0, 1e3, n),
            rng.integers(-(10**9), 10**9, n) * 1.0,  # whole: the ".0" is dropped
            rng.integers(0, 10**5, n) / 100.0,
            10.0 ** rng.uniform(-4, 15, n),
            -(10.0 ** rng.uniform(-4, 15, n)),
            np.array([0.0, -0.0, 1.0, 0.1, 0.0001, 999999999999999.9, 1e15, 16666.666666666668]),
        ]
    )
    return v


@pytest.mark.parametrize("seed", [6, 7])
def test_points_json_orjson_equals_numpy_path(seed: int) -> None:
    pytest.importorskip("orjson")
    from agent.query import values as vals

    v = plain_values(seed)
    rng = np.random.default_rng(seed)
    # Whole seconds, milliseconds, before 1970 and at 0: format_time's cases.
    t = rng.choice(
        np.array([0, 1, 999, 1000, -1500, 1_700_000_000_000, 1_700_000_000_123, 12_345_678]),
        v.size,
    ).astype(np.int64)
    got = vals._points_json_orjson(t, v)
    assert got is not None  # no exponent, NaN or infinity among these
    body, ends = got
    want_body, want_ends = vals._points_json_serial(t, v)
    assert body == want_body
    assert ends.tolist() == want_ends.tolist()
    # Whatever the values, the chunked encoder gives the numpy path's bytes.
    awkward = values(seed)
    t2 = np.resize(t, awkward.size)
    body, ends = vals._points_json(t2, awkward)
    want_body, want_ends = vals._points_json_numpy(t2, awkward)
    assert body == want_body and ends.tolist() == want_ends.tolist()


def test_metrics_json_equals_json_dumps() -> None:
    from agent.query.values import labels_json_text, metrics_json

    chars = [chr(c) for c in [*range(0x800), 0x2028, 0x2029, 0xFEFF, 0xFFFF, 0x1F600]]
    sets = [(("__name__", "m"), ("v", c + 'x"\\'), ("n" + c, "1")) for c in chars]
    assert metrics_json(sets) == [labels_json_text(s).encode() for s in sets]
    lone = [(("__name__", "m"), ("v", "\udc80"))]  # orjson refuses: the slow way, which
    with pytest.raises(UnicodeEncodeError):  # cannot encode it either (as before orjson)
        metrics_json(lone)
