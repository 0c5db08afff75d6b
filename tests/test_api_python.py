"""``Store.query`` / ``Store.query_range``: the HTTP API's answers as Python values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.model import Labels
from agent.query import BadDataError, ExecutionError, Matrix, Scalar, Vector
from agent.query.service import QueryTimeout
from agent.query.timezone import convert_timezone
from agent.root import Agent
from agent.storage import Store
from tests.conftest import open_store
from tests.test_api_query import slow_reads

T0 = 1_700_000_000  # seconds


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path)
    ids = await s.get_or_create_series([lab("req_total", job="a"), lab("req_total", job="b")])
    t = (T0 + np.arange(121) * 30) * 1000
    for n, sid in enumerate(ids):
        await s.append([sid] * len(t), t, np.arange(len(t)) * (n + 1.0))
    yield s
    await s.close()


async def test_query_returns_the_api_data_dict(store: Store, agent: Agent) -> None:
    data = await agent.query("sum by (job) (rate(req_total[5m]))", T0 + 1800)
    assert isinstance(data, dict)
    assert data["resultType"] == "vector"
    assert [(r["metric"], r["value"]) for r in data["result"]] == [
        ({"job": "a"}, [T0 + 1800, "0.03333333333333333"]),
        ({"job": "b"}, [T0 + 1800, "0.06666666666666667"]),
    ]


async def test_time_forms_agree(store: Store, agent: Agent) -> None:
    expected = await agent.query("req_total", T0 + 60)
    aware = datetime.fromtimestamp(T0 + 60, tz=UTC)
    assert await agent.query("req_total", aware) == expected
    assert await agent.query("req_total", "2023-11-14T22:14:20Z") == expected
    assert await agent.query("req_total", str(T0 + 60)) == expected
    naive_berlin = aware.astimezone(ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
    assert await agent.query("req_total", naive_berlin, tz="Europe/Berlin") == expected
    with pytest.raises(BadDataError, match="ambiguous"):
        await agent.query("1", datetime(2024, 10, 27, 2, 30), tz="Europe/Berlin")
    later = await agent.query(
        "time()", datetime(2024, 10, 27, 2, 30), tz="Europe/Berlin", dst="later"
    )
    assert isinstance(later, dict) and later["result"][1] == "1729992600"


async def test_typed_results_carry_numpy_arrays(store: Store, agent: Agent) -> None:
    vec = await agent.query("req_total", T0 + 60, typed=True)
    assert isinstance(vec, Vector) and [s.v for s in vec.samples] == [2.0, 4.0]
    mat = await agent.query_range("req_total", T0, T0 + 600, timedelta(minutes=1), typed=True)
    assert isinstance(mat, Matrix)
    assert mat.series[0].timestamps.dtype == np.int64
    np.testing.assert_array_equal(mat.series[1].values, np.arange(0, 21, 2) * 2.0)
    np.testing.assert_array_equal(mat.series[0].timestamps, (T0 + np.arange(11) * 60) * 1000)
    sc = await agent.query("scalar(sum(req_total))", T0, typed=True)
    assert isinstance(sc, Scalar) and sc.v == 0.0
    info = await agent.query("rate(req_total[5m])", T0 + 600, typed=True)
    assert info.annotations.infos == []  # a _total counter: no "might not be a counter" info


async def test_query_range_mirrors_http_rules(store: Store, agent: Agent) -> None:
    data = await agent.query_range("sum(req_total)", T0, T0 + 120, "1m")
    assert isinstance(data, dict)
    assert data["result"][0]["values"] == [[T0, "0"], [T0 + 60, "6"], [T0 + 120, "12"]]
    with pytest.raises(BadDataError, match="11,000 points"):
        await agent.query_range("1", 0, 20_000, 1)
    with pytest.raises(BadDataError, match="end timestamp"):
        await agent.query_range("1", 10, 0, 1)
    with pytest.raises(BadDataError, match="parse error"):
        await agent.query_range("sum(", 0, 10, 1)
    with pytest.raises(ExecutionError):
        await agent.query('label_replace(vector(1), "x", "$1", "y", "(")', T0)


async def test_calendar_range_and_convert_timezone(store: Store, agent: Agent) -> None:
    days = await agent.query_range(
        "vector(1)", "2024-03-30", "2024-04-02", "1d", tz="Europe/Berlin", align="calendar"
    )
    assert isinstance(days, dict)
    times = [p[0] for p in days["result"][0]["values"]]
    assert np.diff(times).tolist() == [86400, 82800, 86400]
    local = convert_timezone(days, "Europe/Berlin")
    assert local["result"][0]["localtimes"][2] == "2024-04-01T00:00:00+02:00"
    typed = await agent.query("req_total", T0, typed=True)
    assert convert_timezone(typed, "UTC")["result"][0]["localtime"] == "2023-11-14T22:13:20+00:00"


async def test_timeout_and_limits(
    store: Store, monkeypatch: pytest.MonkeyPatch, agent: Agent
) -> None:
    from agent.query.service import QueryOptions

    agent.queries.configure(QueryOptions(max_samples=10))
    with pytest.raises(ExecutionError, match="too many samples"):
        await agent.query("req_total[1h]", T0 + 3600)
    agent.queries.configure(QueryOptions(timeout_s=0.01))
    slow_reads(store, monkeypatch, 0.5)
    with pytest.raises(QueryTimeout) as err:
        await agent.query("req_total", T0, cache="off")
    assert err.value.error_type == "timeout"
