"""Engine tests on small hand-made data (independent of Prometheus's test scripts)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agent.model import STALE_NAN, make_labels
from agent.query import (
    BadDataError,
    Engine,
    ExecutionError,
    Matrix,
    MemoryQueryable,
    Scalar,
    Vector,
    format_value,
)
from agent.storage.options import StorageOptions
from agent.storage.store import Store
from tests.storage_helpers.raw_codec import codecs

MIN = 60_000


def store_with(**series: list[float]) -> MemoryQueryable:
    """``name_label=values``: one sample per minute starting at 0; NaN entries are skipped."""
    q = MemoryQueryable()
    for key, values in series.items():
        name, _, inst = key.partition("__")
        labels = {"__name__": name, "instance": inst or "a"}
        ts = [i * MIN for i, v in enumerate(values) if not (isinstance(v, float) and v != v)]
        q.add(labels, ts, [v for v in values if not (isinstance(v, float) and v != v)])
    return q


def vec(result: object) -> dict[tuple[tuple[str, str], ...], float]:
    assert isinstance(result, Vector)
    return {s.labels: s.v for s in result.samples}


async def test_lookback_is_left_open_and_configurable() -> None:
    q = MemoryQueryable()
    q.add({"__name__": "x"}, [0], [7.0])
    engine = Engine(q, lookback_ms=5 * MIN)
    assert vec(await engine.instant("x", 5 * MIN - 1)) == {make_labels({"__name__": "x"}): 7.0}
    assert vec(await engine.instant("x", 5 * MIN)) == {}  # (t - 5m, t] excludes t - 5m
    short = Engine(q, lookback_ms=MIN)
    assert vec(await short.instant("x", 2 * MIN)) == {}


async def test_stale_marker_ends_series_but_not_range_functions() -> None:
    q = MemoryQueryable()
    q.add({"__name__": "x"}, [0, MIN, 2 * MIN], [1.0, 2.0, STALE_NAN])
    engine = Engine(q)
    assert vec(await engine.instant("x", 2 * MIN + 1)) == {}
    got = vec(await engine.instant("count_over_time(x[5m])", 2 * MIN))
    assert list(got.values()) == [2.0]  # the marker itself is not a sample


async def test_range_query_matches_instant_queries_step_by_step() -> None:
    rng = np.random.default_rng(7)
    q = MemoryQueryable()
    for inst in "abc":
        counter = np.cumsum(rng.integers(0, 5, 60)).astype(float)
        counter[30:] -= counter[29]  # a counter reset
        q.add({"__name__": "c_total", "instance": inst}, np.arange(60) * 15_000, counter)
    engine = Engine(q)
    exprs = [
        "rate(c_total[1m])",
        "sum by (instance) (increase(c_total[2m]))",
        "max_over_time(c_total[90s]) - min_over_time(c_total[90s])",
        "avg_over_time(rate(c_total[1m])[3m:30s])",
        "topk(2, c_total) > bool 10",
        "deriv(c_total[3m])",
        "quantile(0.9, c_total)",
    ]
    for expr in exprs:
        ranged = await engine.range(expr, 0, 14 * MIN, 45_000)
        assert isinstance(ranged, Matrix)
        by_labels = {
            s.labels: dict(zip(s.timestamps.tolist(), s.values.tolist(), strict=True))
            for s in ranged.series
        }
        for t in range(0, 14 * MIN + 1, 45_000):
            inst = vec(await engine.instant(expr, t))
            from_range = {k: v[t] for k, v in by_labels.items() if t in v}
            assert inst.keys() == from_range.keys(), (expr, t)
            for k, v in inst.items():
                assert math.isclose(v, from_range[k], rel_tol=1e-12) or (
                    math.isnan(v) and math.isnan(from_range[k])
                ), (expr, t)


async def test_rate_extrapolates_like_prometheus() -> None:
    engine = Engine(store_with(req_total=[0, 10, 20, 30, 40, 50]))
    # Window (0, 5m] holds 10..50 at 1m..5m: +40 over 4m. The first sample is one
    # average interval from the window start (within the 1.1x threshold), so the
    # increase is extrapolated over the whole 5m: 40 * 5/4.
    got = vec(await engine.instant("increase(req_total[5m])", 5 * MIN))
    assert list(got.values()) == [pytest.approx(50.0)]
    got = vec(await engine.instant("rate(req_total[5m])", 5 * MIN))
    assert list(got.values()) == [pytest.approx(50.0 / 300)]
    # With 0..30 at 2m..5m the start gap (2m) exceeds 1.1 intervals: extrapolate half
    # an interval (30s) at the start, and the counter's zero point is not closer.
    engine = Engine(store_with(req_total=[float("nan"), float("nan"), 10, 20, 30, 40]))
    got = vec(await engine.instant("increase(req_total[5m])", 5 * MIN))
    assert list(got.values()) == [pytest.approx(30 * (180 + 30) / 180)]


async def test_topk_order_and_bottomk() -> None:
    engine = Engine(store_with(m__a=[3], m__b=[9], m__c=[float("nan")], m__d=[5]))
    got = await engine.instant("topk(3, m)", 0)
    assert isinstance(got, Vector)
    assert [dict(s.labels)["instance"] for s in got.samples] == ["b", "d", "a"]
    got = await engine.instant("bottomk(2, m)", 0)
    assert isinstance(got, Vector)
    assert [dict(s.labels)["instance"] for s in got.samples] == ["a", "d"]


async def test_limit_ratio_halves_partition_the_input() -> None:
    engine = Engine(store_with(**{f"m__{i}": [float(i)] for i in range(40)}))
    pos = vec(await engine.instant("limit_ratio(0.3, m)", 0))
    neg = vec(await engine.instant("limit_ratio(-0.7, m)", 0))
    assert not pos.keys() & neg.keys()
    assert len(pos) + len(neg) == 40
    assert len(vec(await engine.instant("limitk(5, m)", 0))) == 5


async def test_vector_matching_errors_use_prometheus_messages() -> None:
    q = MemoryQueryable()
    q.add({"__name__": "a", "job": "x", "i": "1"}, [0], [1.0])
    q.add({"__name__": "a", "job": "x", "i": "2"}, [0], [2.0])
    q.add({"__name__": "b", "job": "x"}, [0], [3.0])
    engine = Engine(q)
    with pytest.raises(ExecutionError, match="found duplicate series for the match group"):
        await engine.instant("b + on(job) a", 0)
    with pytest.raises(ExecutionError, match="many-to-one matching must be explicit"):
        await engine.instant("a + on(job) b", 0)
    got = vec(await engine.instant("a * on(job) group_left b", 0))
    assert sorted(got.values()) == [3.0, 6.0]


async def test_set_operators_and_bool_comparison() -> None:
    engine = Engine(store_with(m__a=[1], m__b=[2], n__b=[5], n__c=[6]))
    assert {dict(k)["instance"] for k in vec(await engine.instant("m and n", 0))} == {"b"}
    assert {dict(k)["instance"] for k in vec(await engine.instant("m unless n", 0))} == {"a"}
    assert len(vec(await engine.instant("m or n", 0))) == 3
    got = vec(await engine.instant("m > bool 1", 0))
    assert sorted(got.values()) == [0.0, 1.0]
    assert all("__name__" not in dict(k) for k in got)


async def test_subquery_steps_are_aligned_to_absolute_time() -> None:
    engine = Engine(store_with(g=list(range(20))))
    got = vec(await engine.instant("count_over_time(g[5m:1m])", 10 * MIN + 30_000))
    # Steps at 6m..10m: the first aligned step after t - 5m, up to t.
    assert list(got.values()) == [5.0]


async def test_at_modifier_and_offset() -> None:
    engine = Engine(store_with(g=list(range(20))))
    assert list(vec(await engine.instant("g @ 120", 15 * MIN)).values()) == [2.0]
    assert list(vec(await engine.instant("g offset 3m", 10 * MIN)).values()) == [7.0]
    ranged = await engine.range("g @ end()", 0, 4 * MIN, MIN)
    assert isinstance(ranged, Matrix)
    assert ranged.series[0].values.tolist() == [4.0] * 5


async def test_scalar_results_and_json_formatting() -> None:
    engine = Engine(MemoryQueryable())
    got = await engine.instant("1 / 0", 1_500)
    assert isinstance(got, Scalar)
    assert got.to_json() == {"resultType": "scalar", "result": [1.5, "+Inf"]}
    assert format_value(float("nan")) == "NaN"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(1e21) == "1000000000000000000000"
    assert format_value(1.5e-7) == "0.00000015"
    assert format_value(0.1 + 0.2) == "0.30000000000000004"


async def test_errors_are_typed() -> None:
    engine = Engine(MemoryQueryable())
    with pytest.raises(BadDataError) as bad:
        await engine.instant("sum(", 0)
    assert bad.value.error_type == "bad_data"
    with pytest.raises(BadDataError, match="range vector"):
        await engine.range("x[5m]", 0, MIN, 10_000)
    with pytest.raises(BadDataError, match="11,000 points"):
        await engine.range("1", 0, 20_000_000, 1_000)
    with pytest.raises(ExecutionError) as ex:
        await engine.instant('label_replace(vector(1), "x", "$1", "y", "(")', 0)
    assert ex.value.error_type == "execution"


async def test_name_dropping_modes() -> None:
    q = MemoryQueryable()
    q.add({"__name__": "a", "l": "1"}, [0], [1.0])
    q.add({"__name__": "b", "l": "1"}, [0], [2.0])
    plain = Engine(q)
    with pytest.raises(ExecutionError, match="same labelset"):
        await plain.instant('abs({__name__=~"a|b"})', 0)
    delayed = Engine(q, delayed_name_removal=True)
    got = vec(
        await delayed.instant(
            'label_replace(abs({__name__=~"a|b"}), "__name__", "x_$1", "__name__", "(.*)")', 0
        )
    )
    assert {dict(k)["__name__"] for k in got} == {"x_a", "x_b"}


async def test_real_store_satisfies_queryable(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "q.db", StorageOptions(flush_interval_s=3600), codecs())
    try:
        ids = await store.get_or_create_series([make_labels({"__name__": "up", "job": "a"})])
        await store.append(ids * 3, [0, MIN, 2 * MIN], [1.0, 0.0, 1.0])
        got = vec(await Engine(store).instant("sum_over_time(up[3m])", 2 * MIN))
        assert list(got.values()) == [2.0]
    finally:
        await store.close()
