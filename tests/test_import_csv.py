"""CSV import over real files: mappings, VM column specs, DST, bad rows, the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.dataio.importer import (
    CsvMapping,
    MappingError,
    go_layout_to_strptime,
    import_csv,
    parse_rfc3339,
)
from agent.model import Labels, Matcher
from agent.storage import Store
from tests.conftest import ROOT, free_port, open_store, tsagent_cmd


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path, "zstd-xor")
    yield s
    await s.close()


async def everything(store: Store) -> dict[Labels, list[tuple[int, float]]]:
    found = await store.select([Matcher.of("__name__", "=~", ".+")], -(2**62), 2**62)
    return {
        s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True)) for s in found
    }


GOOD_AND_BAD = """time,host,dc,cpu,mem
1700000000,a,eu,0.5,100
1700000015,a,eu,0.75,
1700000000,b,us,0.25,300

yesterday,b,us,0.3,1
1700000030,b,us,abc,2
1700000045,c
1700000060,b,us,1e3,400
"""

MAPPING = {
    "timestamp": {"column": "time", "format": "unix_s"},
    "labels": ["host", {"region": "dc"}],
    "values": ["cpu", "mem"],
    "metric": "node_{column}",
    "extra_labels": {"job": "import"},
}


async def test_good_and_bad_rows_skip(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(GOOD_AND_BAD)
    report = await import_csv(store, path, MAPPING, source="test")
    assert [str(p) for p in report.problems] == [
        "row 6, column 'time': expected a unix time in seconds, found 'yesterday'",
        "row 7, column 'cpu': not a number: 'abc'",
        "row 8: has 2 columns, the mapping needs at least 5",
    ]
    assert (report.received, report.rejected) == (7, 3)
    # The empty mem cell on row 3 is no sample, not an error.
    assert report.stored == report.samples == 7 and report.series == 4
    data = await everything(store)
    assert data[lab("node_cpu", host="a", region="eu", job="import")] == [
        (1_700_000_000_000, 0.5),
        (1_700_000_015_000, 0.75),
    ]
    assert data[lab("node_mem", host="b", region="us", job="import")] == [
        (1_700_000_000_000, 300.0),
        (1_700_000_060_000, 400.0),
    ]
    assert data[lab("node_cpu", host="b", region="us", job="import")][-1] == (
        1_700_000_060_000,
        1000.0,
    )
    # A re-import is idempotent: everything is a duplicate.
    again = await import_csv(store, path, MAPPING)
    assert again.stored == 0 and again.duplicates == 7


async def test_abort_imports_nothing(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(GOOD_AND_BAD)
    report = await import_csv(store, path, MAPPING, on_error="abort")
    assert report.aborted and report.problems_total == 3 and report.stored == 0
    assert await everything(store) == {}
    assert store.label_names() == []  # not even series were created


async def test_conflicting_rows_in_file_and_against_stored_data(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("t,v\n1000,1\n2000,2\n1000,1\n1000,5\n")
    mapping = {"timestamp": {"column": "t", "format": "unix_ms"}, "values": {"v": "x"}}
    report = await import_csv(store, path, mapping)
    assert [str(p) for p in report.problems] == [
        "row 5, column 'v': duplicate timestamp 1000 for this series with a different value"
        " than row 2"
    ]
    assert report.stored == 2 and report.duplicates == 1
    path.write_text("t,v\n2000,7\n3000,3\n")
    report = await import_csv(store, path, mapping)
    assert [str(p) for p in report.problems] == [
        "row 2, column 'v': a different value is already stored at timestamp 2000"
        " (duplicate_timestamp)"
    ]
    assert report.stored == 1
    assert (await everything(store))[lab("x")] == [(1000, 1.0), (2000, 2.0), (3000, 3.0)]


async def test_vm_format_spec(store: Store, tmp_path: Path) -> None:
    # The example from VictoriaMetrics' docs, plus a custom Go layout.
    path = tmp_path / "vm.csv"
    path.write_text("GOOG,1.23,4.56,NYSE\nMSFT,3.21,1.67,NASDAQ\n")
    report = await import_csv(
        store, path, "2:metric:ask,3:metric:bid,1:label:ticker,4:label:market"
    )
    assert report.ok and report.stored == 4
    data = await everything(store)
    assert [v for _, v in data[lab("bid", ticker="MSFT", market="NASDAQ")]] == [1.67]

    path.write_text("31.03.2024 12:00:00.250,h1,5\n")
    mapping = CsvMapping.from_vm_format(
        "1:time:custom:02.01.2006 15:04:05.000,2:label:host,3:metric:temp"
    )
    report = await import_csv(store, path, mapping)
    assert report.ok
    assert (await everything(store))[lab("temp", host="h1")] == [
        (ms("2024-03-31T12:00:00.250+00:00"), 5.0)
    ]


def test_vm_format_errors() -> None:
    with pytest.raises(MappingError, match="no 'metric' column"):
        CsvMapping.from_vm_format("1:time:unix_s,2:label:host")
    with pytest.raises(MappingError, match="unknown type 'tag'"):
        CsvMapping.from_vm_format("1:tag:host,2:metric:x")
    with pytest.raises(MappingError, match="column 2 used twice"):
        CsvMapping.from_vm_format("2:label:host,2:metric:x")
    with pytest.raises(MappingError, match="unknown format 'unix_us'"):
        CsvMapping.from_vm_format("1:time:unix_us,2:metric:x")
    assert go_layout_to_strptime("2006-01-02T15:04:05Z07:00") == "%Y-%m-%dT%H:%M:%S%z"


async def test_time_formats(store: Store, tmp_path: Path) -> None:
    for key, fmt, stamp in (("ns", "unix_ns", "1700000000123456789"), ("s", "unix_s", "1.7e9")):
        (tmp_path / f"{key}.csv").write_text(f"k,t,v\n{key},{stamp},1\n")
        mapping = {"timestamp": {"column": "t", "format": fmt}, "labels": ["k"], "values": ["v"]}
        assert (await import_csv(store, tmp_path / f"{key}.csv", mapping)).ok
    (tmp_path / "r.csv").write_text(
        "k,t,v\nr,2024-01-31T12:00:00.123456789+01:00,3\nr,2024-01-31 12:00:00,4\n"
    )
    mapping = {"timestamp": {"column": "t", "format": "rfc3339"}, "labels": ["k"], "values": ["v"]}
    report = await import_csv(store, tmp_path / "r.csv", mapping)
    assert [p.at for p in report.problems] == [3]
    assert "expected RFC 3339" in report.problems[0].message
    data = await everything(store)
    assert data[lab("v", k="ns")] == [(1_700_000_000_123, 1.0)]
    assert data[lab("v", k="s")] == [(1_700_000_000_000, 1.0)]
    assert data[lab("v", k="r")] == [(parse_rfc3339("2024-01-31T11:00:00.123Z"), 3.0)]


BERLIN = """when,room,temp
2024-03-31 01:30:00,lab,1
2024-03-31 02:30:00,lab,2
2024-03-31 03:30:00,lab,3
2024-10-27 01:30:00,lab,4
2024-10-27 02:30:00,lab,5
2024-10-27 03:30:00,lab,6
2024-07-01 12:00:00,lab,7
"""


async def test_dst_local_times_europe_berlin(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "berlin.csv"
    path.write_text(BERLIN)
    mapping = {
        "timestamp": {
            "column": "when",
            "format": "%Y-%m-%d %H:%M:%S",
            "timezone": "Europe/Berlin",
        },
        "labels": ["room"],
        "values": ["temp"],
    }
    report = await import_csv(store, path, mapping)
    # 02:30 on 31 March does not exist (spring forward), 02:30 on 27 October exists twice.
    assert [(p.at, p.field) for p in report.problems] == [(3, "when"), (6, "when")]
    assert "does not exist in Europe/Berlin" in report.problems[0].message
    assert "is ambiguous in Europe/Berlin" in report.problems[1].message
    got = (await everything(store))[lab("temp", room="lab")]
    assert got == sorted(
        [
            (ms("2024-03-31T01:30:00+01:00"), 1.0),
            (ms("2024-03-31T03:30:00+02:00"), 3.0),
            (ms("2024-10-27T01:30:00+02:00"), 4.0),
            (ms("2024-10-27T03:30:00+01:00"), 6.0),
            (ms("2024-07-01T12:00:00+02:00"), 7.0),
        ]
    )
    # Choosing the later occurrence resolves the ambiguous row; the gap stays an error.
    mapping["timestamp"]["ambiguous"] = "later"  # type: ignore[index]
    report = await import_csv(store, path, mapping)
    assert [p.at for p in report.problems] == [3]
    assert report.stored == 1
    got = (await everything(store))[lab("temp", room="lab")]
    assert (ms("2024-10-27T02:30:00+01:00"), 5.0) in got
    assert datetime.fromtimestamp(got[0][0] / 1000, UTC).hour == 0


def test_mapping_errors(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="values: name at least one"):
        CsvMapping.from_dict({"labels": ["a"]})
    with pytest.raises(MappingError, match="unknown time zone 'Mars/Base'"):
        CsvMapping.from_dict(
            {"values": ["v"], "timestamp": {"column": "t", "format": "%H", "timezone": "Mars/Base"}}
        )
    with pytest.raises(MappingError, match=r"unknown key\(s\) \['valuse'\]"):
        CsvMapping.from_dict({"valuse": ["v"]})


async def test_missing_header_column_is_a_mapping_error(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MappingError, match="column 'cpu' is not in the header"):
        await import_csv(store, path, {"values": ["cpu"]})


# --- the command ---------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tsagent_cmd(), *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT
    )


def test_cli_import_csv(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    data = tmp_path / "m.csv"
    data.write_text(GOOD_AND_BAD)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(json.dumps(MAPPING))
    ddir = tmp_path / "data"
    res = run_cli(
        "import-csv",
        str(data),
        "--mapping",
        str(mapping),
        "--data-dir",
        str(ddir),
        "--progress",
        "always",
        env=subprocess_env,
    )
    assert res.returncode == 1, res.stderr  # some rows were rejected
    assert "imported 4 of 7 rows (7 new samples" in res.stdout
    assert "row 7, column 'cpu': not a number: 'abc'" in res.stderr
    assert "parsing [" in res.stderr and "rows/s" in res.stderr and "ETA" in res.stderr
    conn = sqlite3.connect(ddir / "tsagent.db")
    try:
        assert conn.execute("SELECT op, sample_count FROM audit").fetchall() == [("backfill", 7)]
    finally:
        conn.close()

    vm = tmp_path / "vm.csv"
    vm.write_text("time,host,cpu\n1700000000,a,1\n1700000015,a,2\n")
    res = run_cli(
        "import-csv",
        str(vm),
        "--format",
        "1:time:unix_s,2:label:host,3:metric:cpu",
        "--header",
        "--data-dir",
        str(ddir),
        "--on-error",
        "abort",
        "--json",
        env=subprocess_env,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["status"], report["stored"], report["series"]) == ("success", 2, 1)

    res = run_cli(
        "import-csv",
        str(data),
        "--mapping",
        str(mapping),
        "--data-dir",
        str(ddir),
        "--on-error",
        "abort",
        env=subprocess_env,
    )
    assert res.returncode == 1 and "aborted, nothing imported" in res.stdout


def test_cli_tells_to_use_http_when_daemon_runs(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    ddir = tmp_path / "data"
    port = free_port()
    config = tmp_path / "tsagent.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\ndata_dir: {ddir}\n")
    daemon = subprocess.Popen(
        [*tsagent_cmd(), "run", "-c", str(config)],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lock = ddir / "tsagent.db.lock"
        for _ in range(200):
            if lock.exists() and lock.read_text().strip() == str(daemon.pid):
                break
            if daemon.poll() is not None:
                pytest.fail(f"daemon exited: {daemon.stderr.read() if daemon.stderr else ''}")
            subprocess.run(["sleep", "0.05"], check=True)
        data = tmp_path / "m.csv"
        data.write_text("1700000000,a,1\n")
        res = run_cli(
            "import-csv",
            str(data),
            "--format",
            "1:time:unix_s,2:label:host,3:metric:cpu",
            "-c",
            str(config),
            env=subprocess_env,
        )
        assert res.returncode == 2
        assert f"in use by another process (pid {daemon.pid})" in res.stderr
        assert "Import through its HTTP endpoint" in res.stderr
        assert (
            f"curl --data-binary @{data} 'http://127.0.0.1:{port}/api/v1/import/csv"
            "?format=1:time:unix_s,2:label:host,3:metric:cpu'" in res.stderr
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


HOST_CPU = {
    "timestamp": {"column": "t", "format": "unix_s"},
    "labels": ["host"],
    "values": ["cpu"],
}


async def test_cardinality_limit_refusal_is_a_row_error(store: Store, tmp_path: Path) -> None:
    await store.limit_cardinality("cpu", "host", 2)
    path = tmp_path / "c.csv"
    path.write_text("t,host,cpu\n1,a,1\n1,b,2\n1,c,3\n2,a,4\n2,c,5\n")
    report = await import_csv(store, path, HOST_CPU)
    assert [(p.at, p.field) for p in report.problems] == [(4, "cpu"), (6, "cpu")]
    assert "new series refused" in report.problems[0].message
    assert report.stored == 3 and report.rejected == 2
    assert sorted(dict(k)["host"] for k in await everything(store)) == ["a", "b"]


async def test_abort_mode_cardinality_refusal_creates_nothing(store: Store, tmp_path: Path) -> None:
    await store.limit_cardinality("cpu", "host", 2)
    path = tmp_path / "c.csv"
    path.write_text("t,host,cpu\n1,a,1\n1,b,2\n1,c,3\n2,a,4\n2,c,5\n")
    report = await import_csv(store, path, HOST_CPU, on_error="abort")
    assert report.aborted and report.stored == 0
    assert [(p.at, p.field) for p in report.problems] == [(4, "cpu"), (6, "cpu")]
    assert "new series refused" in report.problems[0].message
    assert store.label_values("host") == []  # no series, not even empty ones
    # Nothing stayed reserved: the two hosts the limit allows still fit.
    report = await import_csv(store, path, HOST_CPU, on_error="skip")
    assert report.stored == 3
