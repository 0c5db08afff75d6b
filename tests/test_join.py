"""Joins against hand-computed tables, for every join type and fill, and through the store."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.dataio.join import JoinError, SeriesArrays, align_exact, join_arrays
from agent.model import STALE_NAN, Labels
from agent.root import Agent
from agent.storage import Store

N = None


def s(t: list[int], v: list[float]) -> SeriesArrays:
    return np.array(t, dtype=np.int64), np.array(v, dtype=np.float64)


A = s([0, 10, 20, 30], [1, 2, 3, 4])
B = s([10, 15, 30, 40], [10, 15, 30, 40])
C = s([0, 30], [100, math.nan])
GAPPY = s([10, 40], [1, 4])


def rows(result: object) -> list[tuple[object, ...]]:
    """Rows with NaN spelled "nan" so that tables compare with ==."""
    out = []
    for r in result.rows():  # type: ignore[attr-defined]
        out.append(tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in r))
    return out


def test_inner() -> None:
    assert rows(join_arrays([A, B], "inner")) == [(10, 2.0, 10.0), (30, 4.0, 30.0)]
    assert rows(join_arrays([A, B, C], "inner")) == [(30, 4.0, 30.0, "nan")]


def test_left_keeps_the_primary_and_tells_missing_from_nan() -> None:
    assert rows(join_arrays([A, B, C], "left")) == [
        (0, 1.0, N, 100.0),
        (10, 2.0, 10.0, N),
        (20, 3.0, N, N),
        (30, 4.0, 30.0, "nan"),
    ]


def test_outer() -> None:
    assert rows(join_arrays([A, B], "outer")) == [
        (0, 1.0, N),
        (10, 2.0, 10.0),
        (15, N, 15.0),
        (20, 3.0, N),
        (30, 4.0, 30.0),
        (40, N, 40.0),
    ]


def test_asof_with_and_without_tolerance() -> None:
    assert rows(join_arrays([A, B], "asof", tolerance=5)) == [
        (0, 1.0, N),
        (10, 2.0, 10.0),
        (20, 3.0, 15.0),
        (30, 4.0, 30.0),
    ]
    assert rows(join_arrays([A, B], "asof", tolerance=4))[2] == (20, 3.0, N)
    assert rows(join_arrays([A, GAPPY], "asof")) == [
        (0, 1.0, N),
        (10, 2.0, 1.0),
        (20, 3.0, 1.0),
        (30, 4.0, 1.0),
    ]


@pytest.mark.parametrize(
    ("fill", "expected"),
    [
        ("null", [(10, 1.0), (40, 4.0)]),
        ("previous", [(10, 1.0), (20, 1.0), (30, 1.0), (40, 4.0)]),
        ("linear", [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]),
    ],
)
def test_resampling_fills(fill: str, expected: list[tuple[int, float]]) -> None:
    got = join_arrays([GAPPY], "outer", step=10, start=0, end=40, fill=fill)
    assert rows(got) == expected


def test_resample_null_takes_the_latest_sample_of_each_step() -> None:
    # Grid 0, 10, 20, 30, 40: the value at g is the last sample in (g - 10, g].
    got = join_arrays([B], "outer", step=10, start=0, end=40)
    assert rows(got) == [(10, 10.0), (20, 15.0), (30, 30.0), (40, 40.0)]
    off_grid = s([3, 7, 12], [1, 2, 3])
    assert rows(join_arrays([off_grid], "outer", step=5, start=0, end=15)) == [
        (5, 1.0),
        (10, 2.0),
        (15, 3.0),
    ]
    assert rows(join_arrays([off_grid], "outer", step=5, start=0, end=15, fill="linear")) == [
        (5, 1.5),
        (10, 2.6),
    ]


def test_resampled_joins() -> None:
    # Both on the grid 0..40 (the earliest and latest sample of all series).
    assert rows(join_arrays([A, GAPPY], "left", step=10)) == [
        (0, 1.0, N),
        (10, 2.0, 1.0),
        (20, 3.0, N),
        (30, 4.0, N),
    ]
    assert rows(join_arrays([A, GAPPY], "left", step=10, fill="linear")) == [
        (0, 1.0, N),
        (10, 2.0, 1.0),
        (20, 3.0, 2.0),
        (30, 4.0, 3.0),
    ]
    # "previous" carries A's last value (4 at 30) forward to 40 as well.
    assert rows(join_arrays([A, GAPPY], "inner", step=10, fill="previous")) == [
        (10, 2.0, 1.0),
        (20, 3.0, 1.0),
        (30, 4.0, 1.0),
        (40, 4.0, 4.0),
    ]
    assert rows(join_arrays([A, GAPPY], "outer", step=10)) == [
        (0, 1.0, N),
        (10, 2.0, 1.0),
        (20, 3.0, N),
        (30, 4.0, N),
        (40, N, 4.0),
    ]


def test_custom_joins() -> None:
    def at_least_two(series: list[SeriesArrays]) -> np.ndarray:
        allt = np.concatenate([t for t, _ in series])
        uniq, counts = np.unique(allt, return_counts=True)
        return uniq[counts >= 2]

    assert rows(join_arrays([A, B, C], at_least_two)) == [
        (0, 1.0, N, 100.0),
        (10, 2.0, 10.0, N),
        (30, 4.0, 30.0, "nan"),
    ]

    def nearest(series: list[SeriesArrays]) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        rows_t = series[0][0]
        values, present = [], []
        for t, v in series:
            hi = np.clip(np.searchsorted(t, rows_t), 0, t.size - 1)
            lo = np.clip(hi - 1, 0, t.size - 1)
            pick = np.where(np.abs(t[lo] - rows_t) <= np.abs(t[hi] - rows_t), lo, hi)
            values.append(v[pick])
            present.append(np.ones(rows_t.size, dtype=bool))
        return rows_t, values, present  # type: ignore[return-value]

    assert rows(join_arrays([A, B], nearest)) == [
        (0, 1.0, 10.0),
        (10, 2.0, 10.0),
        (20, 3.0, 15.0),
        (30, 4.0, 30.0),
    ]
    with pytest.raises(JoinError, match="one value and one presence array"):
        join_arrays([A, B], lambda series: (series[0][0], [series[0][1]], []))


def test_errors_and_edges() -> None:
    with pytest.raises(JoinError, match="join: expected"):
        join_arrays([A], "cross")
    with pytest.raises(JoinError, match="fill"):
        join_arrays([A], "inner", step=10, fill="spline")
    with pytest.raises(JoinError, match="step"):
        join_arrays([A], "inner", step=0)
    empty = s([], [])
    assert rows(join_arrays([empty, A], "left")) == []
    assert rows(join_arrays([A, empty], "inner")) == []
    assert len(join_arrays([A, empty], "outer", step=10)) == 4
    vals, ok = align_exact(np.array([5, 30, 40]), *A)
    assert ok.tolist() == [False, True, False] and vals[1] == 4.0


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def test_join_series_reads_the_store(store: Store, agent: Agent) -> None:
    ids = await store.get_or_create_series([lab("cpu", host="a"), lab("mem", host="a")])
    await store.append([ids[0]] * 4, [1000, 2000, 3000, 4000], [1, 2, 3, STALE_NAN])
    await store.append([ids[1]] * 3, [2000, 3500, 4000], [20, 35, 40])
    await store.flush(all=True)  # from segments as well as the head
    await store.append([ids[1]], [5000], [50])
    got = await agent.join_series(ids[0], [ids[1]], "outer")
    # The staleness marker at 4000 is not a value: cpu has no cell there.
    assert got.rows() == [
        (1000, 1.0, None),
        (2000, 2.0, 20.0),
        (3000, 3.0, None),
        (3500, None, 35.0),
        (4000, None, 40.0),
        (5000, None, 50.0),
    ]
    asof = await agent.join_series(ids[0], [ids[1]], "asof", tolerance=600, start=1500)
    assert asof.rows() == [(2000, 2.0, 20.0), (3000, 3.0, None)]
    data = asof.to_json()
    assert data["columns"] == ["timestamp", 'cpu{host="a"}', 'mem{host="a"}']
    assert data["rows"] == [[2.0, 2.0, 20.0], [3.0, 3.0, None]]
    assert data["series"][1] == {"id": ids[1], "metric": {"__name__": "mem", "host": "a"}}
    assert asof.to_csv("unix_ms") == (
        'timestamp,"cpu{host=""a""}","mem{host=""a""}"\n2000,2.0,20.0\n3000,3.0,\n'
    )
    with pytest.raises(JoinError, match="unknown series id 99"):
        await agent.join_series(ids[0], [99])
