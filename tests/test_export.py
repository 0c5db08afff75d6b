"""CSV and JSON-lines export: layout, time formats, filters, and the round trip through import."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agent.dataio.export import (
    ExportError,
    ExportStats,
    export_csv,
    export_jsonl,
    format_times,
    import_mapping,
    import_spec,
    write_csv,
    zone_of,
)
from agent.dataio.importer import CsvMapping, MappingError, import_csv, parse_csv_text
from agent.model import STALE_NAN, Labels, Matcher
from agent.storage import StorageOptions, Store
from tests.storage_helpers.raw_codec import codecs

T0 = 1_700_000_000_000  # ms

# Values whose text form is easy to get wrong: all must come back bit for bit.
TRICKY = [
    0.1,
    -0.0,
    5e-324,
    1.7976931348623157e308,
    -math.inf,
    math.inf,
    1 / 3,
    123456789012345680.0,
    -2.5e-10,
    42.0,
]


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def open_store(path: Path) -> Store:
    return await Store.open(path, StorageOptions(flush_interval_s=3600), codecs())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "src.db")
    yield s
    await s.close()


async def fill(store: Store) -> dict[Labels, tuple[np.ndarray, np.ndarray]]:
    """Three series with different label sets, tricky values, a NaN and a stale marker."""
    series = {
        lab("cpu", host="a", dc="x,y"): (np.arange(10) * 1000 + T0, np.array(TRICKY)),
        lab("cpu", host="b"): (np.array([T0 - 86_400_000 * 400, T0]), np.array([1.0, math.nan])),
        lab("mem_bytes", host="a", note='say "hi"\nbye'): (
            np.array([T0, T0 + 5, T0 + 10]),
            np.array([1e9, STALE_NAN, 2e9]),
        ),
    }
    ids = await store.get_or_create_series(list(series))
    for sid, (t, v) in zip(ids, series.values(), strict=True):
        # Backfill: any age, so the series end up in segments and head alike.
        await store.backfill(np.full(t.size, sid), t, v)
    return series


async def dump(s: Store) -> dict[Labels, tuple[list[int], list[int]]]:
    """Every stored sample as (timestamps, value bits), by labels."""
    out = {}
    for sd in await s.select([Matcher.of("__name__", "=~", ".+")], -(2**62), 2**62):
        out[sd.labels] = (sd.timestamps.tolist(), sd.values.view(np.uint64).tolist())
    return out


def bits(x: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


@pytest.mark.parametrize(
    ("time_format", "zone"),
    [("rfc3339", None), ("rfc3339", "Europe/Berlin"), ("unix_ms", None), ("unix_s", None)],
)
async def test_round_trip_through_the_importer(
    store: Store, tmp_path: Path, time_format: str, zone: str | None
) -> None:
    await fill(store)
    out = tmp_path / "export.csv"
    with out.open("w", newline="") as fh:
        stats = await write_csv(store, fh, time_format=time_format, timezone=zone)
    assert stats.series == 3 and stats.samples == 14 and stats.stale_skipped == 1

    fresh = await open_store(tmp_path / "fresh.db")
    try:
        names = ["dc", "host", "note"]
        spec = CsvMapping.from_vm_format(import_spec(names, time_format), header=True)
        report = await import_csv(fresh, out, spec)
        assert report.ok, report.problems
        assert report.stored == 14
        got = await dump(fresh)
    finally:
        await fresh.close()
    want = await dump(store)
    # The stale marker is not exported (documented); everything else is identical,
    # and the NaN comes back as a NaN (the payload is not kept).
    mem = lab("mem_bytes", host="a", note='say "hi"\nbye')
    wt, wb = want[mem]
    want[mem] = ([t for t, b in zip(wt, wb, strict=True) if b != bits(STALE_NAN)], wb[::2])
    cpu_b = lab("cpu", host="b")
    assert math.isnan(struct.unpack("<d", struct.pack("<Q", got[cpu_b][1][1]))[0])
    got[cpu_b][1][1] = want[cpu_b][1][1] = 0
    assert got == want


async def test_mapping_form_imports_too(store: Store, tmp_path: Path) -> None:
    await fill(store)
    text = "".join([p async for p in export_csv(store, tags_filter='cpu{host="a"}')])
    mapping = CsvMapping.from_dict(import_mapping(["dc", "host"], "rfc3339"))
    parsed = parse_csv_text(text, mapping)
    assert parsed.report.problems_total == 0
    assert parsed.label_sets == [lab("cpu", host="a", dc="x,y")]
    assert parsed.values.view(np.uint64).tolist() == [bits(x) for x in TRICKY]


async def test_layout_and_value_spelling(store: Store) -> None:
    await fill(store)
    text = "".join(
        [p async for p in export_csv(store, tags_filter={"host": "b"}, time_format="unix_ms")]
    )
    assert text == (
        "__timestamp__,__name__,host,__value__\n"
        f"{T0 - 86_400_000 * 400},cpu,b,1.0\n"
        f"{T0},cpu,b,NaN\n"
    )
    rows = list(csv.reader(io.StringIO("".join([p async for p in export_csv(store)]))))
    assert rows[0] == ["__timestamp__", "__name__", "dc", "host", "note", "__value__"]
    # Series in label order; labels a series lacks are empty cells.
    assert [r[1:5] for r in rows[1:3]] == [["cpu", "x,y", "a", ""]] * 2
    assert rows[1][0] == "2023-11-14T22:13:20.000Z"
    assert [r[5] for r in rows[1:11]] == [
        "0.1",
        "-0.0",
        "5e-324",
        "1.7976931348623157e+308",
        "-Inf",
        "+Inf",
        "0.3333333333333333",
        "1.2345678901234568e+17",
        "-2.5e-10",
        "42.0",
    ]
    assert rows[-1][4] == 'say "hi"\nbye'  # quoted by the csv module, read back whole


async def test_time_bounds_selectors_and_ids(store: Store) -> None:
    await fill(store)
    stats = ExportStats()
    pieces = [
        p
        async for p in export_csv(
            store,
            start=T0 + 1,
            end="2023-11-14T22:13:21.000Z",
            tags_filter=["mem_bytes", 'cpu{host="a"}'],
            stats=stats,
            time_format="unix_s",
        )
    ]
    rows = list(csv.reader(io.StringIO("".join(pieces))))[1:]
    assert [(r[0], r[-1]) for r in rows] == [
        ("1700000001.000", "-0.0"),
        ("1700000000.010", "2000000000.0"),
    ]
    assert stats.stale_skipped == 1 and stats.series_total == 2
    [sid] = store.match_series([Matcher.of("host", "=", "b")])
    ids_only = "".join([p async for p in export_csv(store, series_ids=[sid], header=False)])
    assert ids_only.count("\n") == 2
    both = "".join(
        [p async for p in export_csv(store, [sid], tags_filter="mem_bytes", header=False)]
    )
    assert both == ""
    with pytest.raises(ExportError, match="time format"):
        [p async for p in export_csv(store, time_format="iso")]
    with pytest.raises(ExportError, match="selector"):
        [p async for p in export_csv(store, tags_filter="rate(x[5m])")]
    with pytest.raises(ExportError, match="time zone"):
        [p async for p in export_csv(store, timezone="Mars/Olympus")]


async def test_chunks_stream_series_by_series(store: Store) -> None:
    ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(25)])
    for sid in ids:
        await store.append([sid] * 3, [T0, T0 + 1, T0 + 2], [1.0, 2.0, 3.0])
    seen: list[tuple[int, int, int]] = []
    pieces = [
        p
        async for p in export_csv(
            store, chunk_series=10, progress=lambda *a: seen.append(a), time_format="unix_ms"
        )
    ]
    assert len(pieces) == 1 + 3  # the header, then one piece per chunk of 10 series
    assert seen == [(10, 25, 30), (20, 25, 60), (25, 25, 75)]


def test_rfc3339_offsets_follow_dst() -> None:
    ts = np.array(
        [
            1711846799_000,  # 2024-03-31 00:59:59 UTC: still CET
            1711846800_000,  # 01:00 UTC: CEST from here
            1730000000_123,
        ]
    )
    got = format_times(ts, "rfc3339", zone_of("Europe/Berlin"))
    assert got == [
        "2024-03-31T01:59:59.000+01:00",
        "2024-03-31T03:00:00.000+02:00",
        "2024-10-27T04:33:20.123+01:00",  # after the switch back at 01:00 UTC
    ]
    assert format_times(np.array([-1]), "unix_s") == ["-0.001"]
    assert format_times(np.array([-1]), "rfc3339") == ["1969-12-31T23:59:59.999Z"]
    kolkata = format_times(np.array([0]), "rfc3339", zone_of("Asia/Kolkata"))
    assert kolkata == ["1970-01-01T05:30:00.000+05:30"]


async def test_jsonl_is_victoriametrics_shaped(store: Store) -> None:
    await fill(store)
    lines = "".join([p async for p in export_jsonl(store)]).splitlines()
    objs = [json.loads(line) for line in lines]
    assert objs[1] == {
        "metric": {"__name__": "cpu", "host": "b"},
        "values": [1.0, None],
        "timestamps": [T0 - 86_400_000 * 400, T0],
    }
    assert objs[0]["values"][4:6] == ["-Inf", "+Inf"]
    assert objs[2]["values"] == [1e9, 2e9]  # the stale marker is left out
    text = "".join([p async for p in export_jsonl(store, start=T0 + 6)])
    only = [json.loads(x) for x in text.splitlines()]
    assert [(o["metric"]["__name__"], o["timestamps"]) for o in only] == [
        ("cpu", [T0 + 1000 * i for i in range(1, 10)]),
        ("mem_bytes", [T0 + 10]),
    ]


def test_importer_rejects_bad_metric_names_in_a_name_column() -> None:
    text = "__timestamp__,__name__,__value__\n1,ok,1\n2,bad-name,2\n3,,3\n"
    parsed = parse_csv_text(text, CsvMapping.from_vm_format(import_spec([], "unix_s"), header=True))
    assert parsed.report.rejected == 2
    assert [p.at for p in parsed.report.problems] == [3, 4]
    assert parsed.label_sets[0] == lab("ok") and parsed.series_idx.tolist() == [0]
    two_values = CsvMapping.from_dict({"labels": ["__name__"], "values": ["a", "b"]})
    with pytest.raises(MappingError, match="exactly one value column"):
        parse_csv_text("__name__,a,b\nx,1,2\n", two_values)
