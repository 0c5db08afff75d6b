"""The template encoder of large results writes exactly the reference JSON.

``agent.query.result_template`` fills one JSON template with every value in
one ``%`` call. Its output must equal ``json.dumps(result.to_json())`` byte
for byte, and it must take the fast road (not decline) for what range and
instant queries return: series on a common step grid, with a few off it,
labels holding ``%``, ``},{``, quotes and non-ASCII text, values that orjson
would write with an exponent or as ``null``.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.query import result_template
from agent.query.values import Matrix, MatrixColumns, Sample, Series, Vector

LABEL_TEXT = st.text(
    alphabet=st.sampled_from([*'ab%},{"\\\n\t✓é ', "\x00", "\x1f", "\u2028"]), max_size=8
)
NAMES = st.sampled_from(["__name__", "a", "b", "le", "job"])
LABELS = st.dictionaries(NAMES, LABEL_TEXT, max_size=3)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 5.0, 1e-4, 9.99e-5, 1e16, 1e15 + 0.5, 123456.0, 0.1]),
)


def reference(result: Matrix | Vector) -> bytes:
    return json.dumps(result.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def columns_of(series: list[Series]) -> MatrixColumns:
    return MatrixColumns(
        [s.labels for s in series],
        np.cumsum([len(s.timestamps) for s in series]).tolist(),
        np.concatenate([s.timestamps for s in series]),
        np.concatenate([s.values for s in series]),
    )


def unique_labels(sets: list[dict[str, str]]) -> list[tuple[tuple[str, str], ...]]:
    seen, out = set(), []
    for i, pairs in enumerate(sets):
        lab = tuple(sorted({**pairs, "i": str(i)}.items()))
        if lab not in seen:
            seen.add(lab)
            out.append(lab)
    return out


@settings(max_examples=150, deadline=None)
@given(
    label_sets=st.lists(LABELS, min_size=1, max_size=12),
    steps=st.integers(1, 6),
    step_ms=st.sampled_from([1, 1000, 15_000, 15_250]),
    start=st.integers(-(10**12), 2 * 10**12),
    data=st.data(),
)
def test_matrix_equals_reference(
    label_sets: list[dict[str, str]], steps: int, step_ms: int, start: int, data: st.DataObject
) -> None:
    labels = unique_labels(label_sets)
    grid = start + step_ms * np.arange(steps, dtype=np.int64)
    series = []
    for lab in labels:
        keep = np.array(data.draw(st.lists(st.booleans(), min_size=steps, max_size=steps)))
        if data.draw(st.booleans()):
            keep[:] = True  # most series of a range result are on the whole grid
        vals = data.draw(st.lists(VALUES, min_size=int(keep.sum()), max_size=int(keep.sum())))
        series.append(Series(lab, grid[keep], np.array(vals, dtype=np.float64)))
    matrix = Matrix(series)
    assert matrix.to_json_bytes() == reference(matrix)
    cols = columns_of(series)
    fast = result_template.matrix_json(cols.labels, cols.ends, cols.t, cols.v)
    assert fast == reference(matrix)  # a handful of points: never declined


@settings(max_examples=150, deadline=None)
@given(
    label_sets=st.lists(LABELS, min_size=1, max_size=12),
    times=st.lists(st.integers(-(10**12), 2 * 10**12), min_size=1, max_size=3),
    data=st.data(),
)
def test_vector_equals_reference(
    label_sets: list[dict[str, str]], times: list[int], data: st.DataObject
) -> None:
    labels = unique_labels(label_sets)
    samples = [Sample(lab, data.draw(st.sampled_from(times)), data.draw(VALUES)) for lab in labels]
    vector = Vector(samples)
    assert vector.to_json_bytes() == reference(vector)
    fast = result_template.vector_json(
        [s.labels for s in samples],
        np.array([s.t for s in samples], dtype=np.int64),
        np.array([s.v for s in samples], dtype=np.float64),
    )
    assert fast == reference(vector)  # few distinct times: never declined


def test_big_range_result_takes_the_template_road() -> None:
    """Chunks, off-grid series, awkward labels and values, all on the fast road."""
    rng = np.random.default_rng(7)
    grid = 1_796_446_920_001 + 15_000 * np.arange(16, dtype=np.int64)
    odd_labels = ["50%", "},{", 'q"', "✓", "%b", "%%"]
    series = []
    for i in range(9_000):  # over two chunks of points
        keep = np.ones(16, dtype=bool) if i % 50 else rng.random(16) < 0.5
        vals = rng.random(int(keep.sum())) * 0.05
        vals[::7] = np.floor(vals[::7] * 100)  # whole numbers
        if i % 97 == 0:
            vals[0] = [1e-7, 2e20, np.nan, np.inf, -np.inf, -0.0][i % 6]
        lab = (("__name__", "m"), ("i", str(i)), ("path", odd_labels[i % len(odd_labels)]))
        series.append(Series(lab, grid[keep], vals))
    matrix = Matrix(series)
    cols = columns_of(series)
    fast = result_template.matrix_json(cols.labels, cols.ends, cols.t, cols.v)
    assert fast is not None
    assert fast == reference(matrix)


def test_declines_points_mostly_off_a_grid() -> None:
    """A raw range selector's samples: each series its own times; the older path serves."""
    rng = np.random.default_rng(8)
    series = [
        Series((("i", str(i)),), np.sort(rng.choice(10**9, 20, replace=False)), rng.random(20))
        for i in range(1_000)
    ]
    t = np.concatenate([s.timestamps for s in series])
    v = np.concatenate([s.values for s in series])
    ends = (20 * np.arange(1, 1_001)).tolist()
    assert result_template.matrix_json([s.labels for s in series], ends, t, v) is None
    matrix = Matrix(series)
    assert matrix.to_json_bytes() == reference(matrix)


def test_value_texts_both_ways_round() -> None:
    """Mostly fractions (whole numbers patched in) and mostly whole (fractions patched in)."""
    from agent.query.numfmt import format_value

    rng = np.random.default_rng(9)
    whole = np.floor(rng.random(50_000) * 1e6)
    fractions = rng.random(50_000) * 1e3
    odd = np.array([1e-7, -2e17, np.nan, np.inf, -np.inf, -0.0, 0.0, 1e16, 9.9e-5])
    for share in (0.01, 0.3, 0.7, 0.99):
        pick = rng.random(50_000) < share
        values = np.where(pick, whole, fractions)
        values[::997] = np.resize(odd, values[::997].shape)
        got = result_template.value_texts(values)
        assert got == [format_value(x).encode() for x in values.tolist()]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=result_template.FEW_VALUES))
def test_few_values_written_as_format_value(values: list[float]) -> None:
    """A few values take one orjson call and a step each; the texts are format_value's."""
    from agent.query.numfmt import format_value

    got = result_template.value_texts(np.array(values, dtype=np.float64))
    assert got == [format_value(x).encode() for x in values]


@settings(max_examples=100, deadline=None)
@given(
    label_sets=st.lists(LABELS, min_size=1, max_size=8),
    steps=st.integers(1, 20),
    start=st.integers(-(10**12), 2 * 10**12),
    data=st.data(),
)
def test_matrix_on_a_known_grid_equals_reference(
    label_sets: list[dict[str, str]], steps: int, start: int, data: st.DataObject
) -> None:
    """Every series at every step (the engine says so): the same bytes, no grid search."""
    labels = unique_labels(label_sets)
    grid = start + 15_000 * np.arange(steps, dtype=np.int64)
    values = data.draw(st.lists(VALUES, min_size=steps * len(labels), max_size=steps * len(labels)))
    v = np.array(values, dtype=np.float64)
    series = [Series(lab, grid, v[i * steps : (i + 1) * steps]) for i, lab in enumerate(labels)]
    ends = (steps * np.arange(1, len(labels) + 1)).tolist()
    cols = MatrixColumns(labels, ends, np.tile(grid, len(labels)), v, grid)
    assert Matrix(columns=cols).to_json_bytes() == reference(Matrix(series))


@given(
    start=st.integers(-(10**16), 10**16),
    step=st.sampled_from([1, 250, 1000, 15_000, 15_001]),
    count=st.integers(1, 20),
)
def test_point_cells_as_time_text(start: int, step: int, count: int) -> None:
    """The seconds-and-fraction form of a grid's times is time_text's, byte for byte."""
    times = [start + i * step for i in range(count)]
    want = b",".join(b'[%b,"%%b"]' % result_template.time_text(t) for t in times)
    assert result_template._point_cells(times) == want
