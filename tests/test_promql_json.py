"""The fast JSON encoders of query results produce exactly ``json.dumps(to_json())``."""

from __future__ import annotations

import json

import numpy as np

from agent.query.numfmt import format_value, format_values
from agent.query.values import Matrix, Sample, Series, Vector

SPECIAL = [
    0.0,
    -0.0,
    1.0,
    -2.0,
    0.1,
    1e21,
    1e-7,
    123456789012345678.0,
    5e-324,
    1.7976931348623157e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e16,
    1.5e-5,
    100.0,
]


def reference(result: Matrix | Vector) -> bytes:
    return json.dumps(result.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def test_format_values_equals_format_value() -> None:
    rng = np.random.default_rng(3)
    vals = np.concatenate(
        [
            np.array(SPECIAL),
            rng.normal(0, 1e6, 500),
            rng.integers(-1000, 1000, 200) * 1.0,
            10.0 ** rng.integers(-30, 30, 300) * rng.random(300),
        ]
    )
    assert format_values(vals) == [format_value(float(v)) for v in vals]


def test_matrix_and_vector_bytes_equal_json_dumps() -> None:
    rng = np.random.default_rng(4)
    steps = np.arange(1_700_000_000_000, 1_700_000_600_000, 15_250, dtype=np.int64)
    series = []
    for i in range(30):
        keep = rng.random(len(steps)) < 0.7
        vals = rng.choice(np.array([*SPECIAL, 3.25, -7.5]), len(steps))
        labels = (("__name__", f"m{i}"), ("q", 'a "quoted"\\ välue\n'), ("z", str(i)))
        series.append(Series(labels, steps[keep], vals[keep]))
    matrix = Matrix(series)
    assert matrix.to_json_bytes() == reference(matrix)
    samples = [
        Sample(s.labels, 1_700_000_000_123 + i, float(v))
        for i, (s, v) in enumerate(zip(series, SPECIAL * 2, strict=False))
    ]
    vector = Vector(samples)
    assert vector.to_json_bytes() == reference(vector)
    assert Matrix([]).to_json_bytes() == reference(Matrix([]))
    assert Vector([]).to_json_bytes() == reference(Vector([]))
