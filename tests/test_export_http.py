"""The HTTP side of exports, /federate and joins, and the ``tsagent export-csv`` command."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.model import STALE_NAN, Labels
from agent.storage.lock import DatabaseLock
from agent.web.app import CONTEXT_KEY, make_app
from tests.conftest import ROOT, tsagent_cmd

T0 = 1_700_000_000_000


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Any) -> Any:
    config, host = make_config("query:\n  lookback_delta: 1m\n")
    return await aiohttp_client(make_app(config, host))


async def fill(ctx: Any) -> None:
    rows = [
        (lab("cpu", host="a"), T0, 0.5),
        (lab("cpu", host="a"), T0 + 1000, 0.75),
        (lab("cpu", host="b", note='q"x'), T0, -0.0),
        (lab("mem", host="a"), T0, 1e9),
    ]
    await ctx.append_samples(rows, source="test")


async def test_export_csv_streams_and_imports_back(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    await fill(ctx)
    resp = await client.get(
        "/api/v1/export/csv",
        params={"match[]": "cpu", "time_format": "unix_ms"},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    spec = resp.headers["X-Tsagent-Import-Format"]
    assert spec == "1:time:unix_ms,2:label:__name__,3:label:host,4:label:note,5:metric:value"
    body = await resp.text()
    assert body == (
        "__timestamp__,__name__,host,note,__value__\n"
        f"{T0},cpu,a,,0.5\n{T0 + 1000},cpu,a,,0.75\n"
        f'{T0},cpu,b,"q""x",-0.0\n'
    )
    zoned = await client.get(
        "/api/v1/export/csv", params={"match[]": "mem", "tz": "Asia/Tokyo", "end": str(T0 / 1000)}
    )
    assert (await zoned.text()).splitlines()[
        1
    ] == "2023-11-15T07:13:20.000+09:00,mem,a,1000000000.0"
    # Importing the export again is an exact re-send: all duplicates, nothing new or rejected.
    again = await client.post(
        "/api/v1/import/csv", params={"format": spec, "header": "true"}, data=body
    )
    report = await again.json()
    assert (report["status"], report["stored"], report["duplicates"]) == ("success", 0, 3)
    bad = await client.get("/api/v1/export/csv", params={"match[]": "rate(cpu[1m])"})
    assert bad.status == 400 and "selector" in (await bad.json())["error"]
    bad = await client.get("/api/v1/export/csv", params={"time_format": "iso"})
    assert bad.status == 400


async def test_export_jsonl(client: Any) -> None:
    await fill(client.app[CONTEXT_KEY])
    resp = await client.get("/api/v1/export", params={"match[]": '{host="a"}', "start": "0"})
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    assert lines == [
        {
            "metric": {"__name__": "cpu", "host": "a"},
            "values": [0.5, 0.75],
            "timestamps": [T0, T0 + 1000],
        },
        {"metric": {"__name__": "mem", "host": "a"}, "values": [1e9], "timestamps": [T0]},
    ]


async def test_federate_serves_latest_samples_in_text_format(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    now = time.time_ns() // 1_000_000
    rows = [
        (lab("up", job="a", instance="x:1"), now - 30_000, 1.0),
        (lab("up", job="a", instance="x:1"), now - 15_000, 0.0),
        (lab("up", job="b", instance='y"\\'), now - 5_000, 1.0),
        (lab("up", job="old"), now - 120_000, 1.0),  # beyond the 1m lookback
        (lab("gone", job="a"), now - 10_000, 3.0),
        (lab("gone", job="a"), now - 5_000, STALE_NAN),  # ended: left out
        (lab("http_requests_total", job="a", code="200"), now - 5_000, 12.0),
    ]
    await ctx.append_samples(rows, source="test")
    resp = await client.get(
        "/federate", params=[("match[]", '{job=~"a|b|old"}'), ("match[]", "up")]
    )
    assert resp.status == 200
    text = await resp.text()
    assert text.count("# TYPE up untyped") == 1
    assert "# TYPE http_requests_total untyped" in text
    assert "gone" not in text and "old" not in text
    assert f'up{{instance="x:1",job="a"}} 0.0 {now - 15_000}\n' in text
    got = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "unknown"
        for s in family.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = (s.value, s.timestamp)
    assert got[("up", (("instance", 'y"\\'), ("job", "b")))] == (1.0, (now - 5_000) / 1000)
    assert got[("http_requests_total", (("code", "200"), ("job", "a")))][0] == 12.0
    assert len(got) == 3
    assert (await (await client.get("/federate")).text()) == ""


async def test_join_endpoint(client: Any) -> None:
    ctx = client.app[CONTEXT_KEY]
    await fill(ctx)
    store = ctx.require_store()
    cpu_a = store.series_id(lab("cpu", host="a"))
    mem_a = store.series_id(lab("mem", host="a"))
    resp = await client.get(
        "/api/v1/join", params=[("id", str(mem_a)), ("match[]", 'cpu{host="a"}'), ("join", "outer")]
    )
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["columns"] == ["timestamp", 'mem{host="a"}', 'cpu{host="a"}']
    assert [s["id"] for s in data["series"]] == [mem_a, cpu_a]
    assert data["rows"] == [[T0 / 1000, 1e9, 0.5], [T0 / 1000 + 1, None, 0.75]]
    resp = await client.get(
        "/api/v1/join",
        params=[
            ("match[]", "cpu"),
            ("join", "asof"),
            ("tolerance", "2s"),
            ("format", "csv"),
            ("time_format", "unix_s"),
        ],
    )
    assert await resp.text() == (
        'timestamp,"cpu{host=""a""}","cpu{host=""b"",note=""q\\""x""}"\n'
        "1700000000.000,0.5,-0.0\n1700000001.000,0.75,-0.0\n"
    )
    resp = await client.get(
        "/api/v1/join",
        params={"match[]": "cpu", "step": "500ms", "fill": "linear", "join": "left"},
    )
    rows = (await resp.json())["data"]["rows"]
    assert rows == [
        [T0 / 1000, 0.5, -0.0],
        [T0 / 1000 + 0.5, 0.625, None],
        [T0 / 1000 + 1, 0.75, None],
    ]
    for params, problem in [
        ({}, "id=... and/or match[]"),
        ({"id": "x"}, "not a series id"),
        ({"id": "999"}, "unknown series id 999"),
        ({"match[]": "cpu", "join": "cross"}, "join"),
        ({"match[]": "cpu", "fill": "cubic"}, "fill"),
        ({"match[]": "cpu", "step": "soon"}, "step"),
    ]:
        resp = await client.get("/api/v1/join", params=params)
        assert resp.status == 400, params
        assert problem in (await resp.json())["error"]


async def test_join_row_and_series_limits(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config("export_http:\n  join_max_rows: 2\n  join_max_series: 1\n")
    client = await aiohttp_client(make_app(config, host))
    ctx = client.app[CONTEXT_KEY]
    await ctx.append_samples([(lab("x"), T0 + i, float(i)) for i in range(3)], source="t")
    await ctx.append_samples([(lab("y"), T0, 1.0)], source="t")
    resp = await client.get("/api/v1/join", params={"match[]": "x"})
    assert resp.status == 422 and "join_max_rows" in (await resp.json())["error"]
    resp = await client.get("/api/v1/join", params={"match[]": '{__name__=~"x|y"}'})
    assert resp.status == 400 and "join_max_series" in (await resp.json())["error"]


# --- the command ----------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tsagent_cmd(), *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_export_round_trip_and_lock(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    src = tmp_path / "in.csv"
    t = np.arange(2000) * 15 + 1_700_000_000
    src.write_text(
        "time,host,cpu,mem\n"
        + "".join(f"{x},h{i % 3},{i / 7!r},{i * 1e6}\n" for i, x in enumerate(t.tolist()))
    )
    first = tmp_path / "first"
    res = run_cli(
        "import-csv",
        str(src),
        "--format",
        "1:time:unix_s,2:label:host,3:metric:cpu,4:metric:mem",
        "--header",
        "--data-dir",
        str(first),
        env=subprocess_env,
    )
    assert res.returncode == 0, res.stderr
    out1 = tmp_path / "out1.csv"
    res = run_cli(
        "export-csv",
        "--data-dir",
        str(first),
        "-o",
        str(out1),
        "--progress",
        "always",
        "--chunk-series",
        "2",
        "--timezone",
        "America/New_York",
        env=subprocess_env,
    )
    assert res.returncode == 0, res.stderr
    assert "4,000 samples of 6 series" in res.stderr
    assert "exporting [" in res.stderr and "6/6 series" in res.stderr
    spec = res.stderr.split("--format '")[1].split("'")[0]
    assert spec == "1:time:rfc3339,2:label:__name__,3:label:host,4:metric:value"
    assert out1.read_text().splitlines()[1] == "2023-11-14T17:13:20.000-05:00,cpu,h0,0.0"

    second = tmp_path / "second"
    res = run_cli(
        "import-csv",
        str(out1),
        "--format",
        spec,
        "--header",
        "--data-dir",
        str(second),
        env=subprocess_env,
    )
    assert res.returncode == 0, res.stderr
    assert "imported 4,000 of 4,000 rows" in res.stdout
    res = run_cli(
        "export-csv",
        "--data-dir",
        str(second),
        "--timezone",
        "America/New_York",
        "--match",
        '{host=~"h.*"}',
        env=subprocess_env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == out1.read_text()  # to stdout, identical after the round trip

    lock = DatabaseLock(first / "tsagent.db")
    lock.acquire()
    try:
        res = run_cli(
            "export-csv",
            "--data-dir",
            str(first),
            "--match",
            "cpu",
            "--start",
            "1700000000",
            env=subprocess_env,
        )
    finally:
        lock.release()
    assert res.returncode == 2
    assert "in use by another process" in res.stderr
    assert "Export through its HTTP endpoint" in res.stderr
    assert "/api/v1/export/csv?match%5B%5D=cpu&start=1700000000&time_format=rfc3339" in res.stderr
