"""Cardinality control: an exploding label is capped while everything else keeps flowing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cramjam
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.model import Matcher
from agent.prompb import remote_pb2
from agent.storage import CardinalityLimitExceeded
from agent.web.app import CONTEXT_KEY, make_app
from tests.conftest import open_store

T0 = 1_700_000_000_000


def req_labels(metric: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"__name__": metric, **labels}.items()))


async def test_label_value_cap_refuses_only_new_series(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "t.db", cardinality_rules=[("http_.*", "path", 3)])
    try:
        wanted = [req_labels("http_requests_total", path=f"/p{i}") for i in range(6)]
        wanted.append(req_labels("cpu_seconds_total", path="/anything"))
        ids, refused = await store.resolve_series(wanted)
        assert sorted(refused) == [3, 4, 5]
        assert refused[3] == (
            'cardinality limit: label "path" of metric "http_requests_total" already has 3 '
            "values (max 3, limits.rules[0])"
        )
        assert all(ids[i] > 0 for i in (0, 1, 2, 6)) and all(ids[i] == 0 for i in (3, 4, 5))
        # existing series keep flowing, also new series reusing an admitted value
        again, refused = await store.resolve_series(
            [wanted[0], req_labels("http_requests_total", path="/p1", code="500")]
        )
        assert refused == {} and again[0] == ids[0]
        result = await store.append([ids[0], ids[6]], [T0, T0], [1.0, 2.0])
        assert result.accepted == 2
        with pytest.raises(CardinalityLimitExceeded) as info:
            await store.get_or_create_series([req_labels("http_requests_total", path="/new")])
        assert info.value.ids == [0] and "already has 3 values" in str(info.value)
        assert store.stats().cardinality_rejected == {"limits.rules[0]": 4}
    finally:
        await store.close()


async def test_series_per_metric_and_active_series_caps(tmp_path: Path) -> None:
    store = await open_store(
        tmp_path / "t.db", cardinality_rules=[("up", "", 2)], max_active_series=4
    )
    try:
        _, refused = await store.resolve_series([req_labels("up", job=str(i)) for i in range(3)])
        assert list(refused.values()) == [
            'cardinality limit: metric "up" already has 2 series (max 2, limits.rules[0])'
        ]
        _, refused = await store.resolve_series([req_labels("other", i=str(i)) for i in range(3)])
        assert list(refused) == [2]
        assert refused[2].startswith("cardinality limit: 4 active series reached")
    finally:
        await store.close()


async def test_api_limit_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = await open_store(db)
    [sid] = await store.get_or_create_series([req_labels("jobs_total", user="a")])
    await store.limit_cardinality(sid, "user", 2)
    await store.close()

    store = await open_store(db)
    try:
        _, refused = await store.resolve_series(
            [req_labels("jobs_total", user=u) for u in ("a", "b", "c", "d")]
        )
        assert sorted(refused) == [2, 3]
        assert "(max 2, api)" in refused[2]
        await store.limit_cardinality("jobs_total", "user", 10)  # raise it: admitted again
        _, refused = await store.resolve_series([req_labels("jobs_total", user="c")])
        assert refused == {}
    finally:
        await store.close()


def write_request(n_users: int, ts: int) -> bytes:
    req = remote_pb2.WriteRequest()
    for labels in [{"__name__": "steady", "job": "a"}] + [
        {"__name__": "logins_total", "user": f"u{i:04d}"} for i in range(n_users)
    ]:
        series = req.timeseries.add()
        for k, v in sorted(labels.items()):
            lab = series.labels.add()
            lab.name, lab.value = k, v
        sample = series.samples.add()
        sample.timestamp, sample.value = ts, 1.0
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


async def test_label_explosion_over_remote_write(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config(
        "limits:\n  rules:\n    - {metric: logins_total, label: user, max_values: 50}\n"
    )
    app = make_app(config, host)
    client = await aiohttp_client(app)
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    for round_, users in enumerate((40, 500, 500)):
        resp = await client.post(
            "/api/v1/write", data=write_request(users, T0 + round_ * 1000), headers=headers
        )
        if users <= 50:
            assert resp.status == 204
            continue
        assert resp.status == 400
        text = await resp.text()
        assert "cardinality_limit: 450 series" in text
        assert 'label "user" of metric "logins_total" already has 50 values' in text
    store = app[CONTEXT_KEY].require_store()
    steady = await store.select([Matcher.of("__name__", "=", "steady")], 0, 2 * T0)
    assert steady[0].timestamps.tolist() == [T0, T0 + 1000, T0 + 2000]  # never interrupted
    logins = await store.select([Matcher.of("__name__", "=", "logins_total")], 0, 2 * T0)
    assert len(logins) == 50
    assert sum(s.timestamps.size for s in logins) == 40 + 50 + 50

    metrics = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(await (await client.get("/metrics")).text())
        for s in fam.samples
    }
    assert (
        metrics[("tsagent_cardinality_rejected_series_total", (("rule", "limits.rules[0]"),))]
        == 450 + 450
    )
    assert (
        metrics[
            (
                "tsagent_samples_rejected_total",
                (("reason", "cardinality_limit"), ("source", "remote_write")),
            )
        ]
        == 900
    )
    assert metrics[("tsagent_top_series_by_metric", (("metric", "logins_total"),))] == 50
    assert metrics[("tsagent_top_label_values", (("label", "user"),))] == 50


async def test_append_samples_reports_refused_rows(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("limits:\n  rules:\n    - {metric: m, max_series: 1}\n")
    app = make_app(config, host)
    await aiohttp_client(app)
    ctx = app[CONTEXT_KEY]
    result = await ctx.append_samples(
        [(req_labels("m", a="1"), T0, 1.0), (req_labels("m", a="2"), T0, 2.0)], source="test"
    )
    assert result.accepted == 1
    [rej] = result.rejected
    assert (rej.reason, rej.series_id) == ("cardinality_limit", 0)
    assert 'metric "m" already has 1 series' in rej.detail


def test_rule_needs_a_cap(make_config: Any) -> None:
    from agent.configured_store import limit_options
    from agent.context import AgentContext
    from agent.metrics import AgentMetrics

    config, host = make_config("limits:\n  rules:\n    - {metric: m, label: user}\n")
    ctx = AgentContext(config=config, plugins=host, metrics=AgentMetrics())
    with pytest.raises(ValueError, match=r"limits\.rules\[0\]\.max_values: needed with a label"):
        limit_options(ctx)
