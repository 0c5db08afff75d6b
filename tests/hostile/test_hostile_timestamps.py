"""Timestamp and label bounds where samples enter; rollups that cost what the data costs.

The attack (issue 13, item 1): one series with a sample at ``-2**62`` ms and one
now made the rollup pass build a task per block across 146 million years, and
``INT64_MIN`` overflowed SQLite's INTEGER on every pass. The store now refuses
both at the door; a database that already holds them (written here with the
bounds switched off) must heal: the pass skips the empty span and overflows
nothing. Work is asserted by counting transactions and blocks, never by time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.model import Labels
from agent.storage.rollup import RollupOptions
from tests.conftest import open_store

INT64_MIN = -(2**63)
ANCIENT = -(2**62)
MIN = 60_000
H = 3_600_000
DAY = 24 * H
T0 = 1_699_999_200_000
NOW = T0 + 2 * DAY
RES = (MIN, 5 * MIN, H)
# No bounds at all: how a database written before they existed looks.
UNBOUNDED: dict[str, Any] = {"min_timestamp_ms": INT64_MIN, "max_future_ms": 2**62}


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def recent() -> tuple[np.ndarray, np.ndarray]:
    t = T0 + np.arange(0, 3 * H, 15_000, dtype=np.int64)
    return t, np.arange(t.size, dtype=np.float64)


async def test_ancient_and_future_samples_are_refused_naming_the_bound(tmp_path: Path) -> None:
    store = await open_store(tmp_path, all_codecs=True)
    [sid] = await store.get_or_create_series([lab("x")])
    far = 2**62
    res = await store.append([sid, sid, sid], [ANCIENT, T0, far], [1.0, 2.0, 3.0])
    assert res.accepted == 1
    reasons = {r.timestamp: (r.reason, r.detail) for r in res.rejected}
    assert reasons[ANCIENT][0] == "out_of_bounds"
    assert "limits.min_timestamp" in reasons[ANCIENT][1]
    assert reasons[far][0] == "out_of_bounds" and "limits.max_future" in reasons[far][1]
    # INT64_MIN on an empty series: out of bounds, not a "duplicate_timestamp".
    [empty] = await store.get_or_create_series([lab("empty")])
    res = await store.append([empty], [INT64_MIN], [1.0])
    assert [r.reason for r in res.rejected] == ["out_of_bounds"]
    # Backfill: skip keeps the valid part; abort writes nothing.
    bf = await store.backfill([sid, sid], [T0 - H, 1 - 2**40], [1.0, 2.0])
    assert bf.accepted == 1 and [r.reason for r in bf.rejected] == ["out_of_bounds"]
    bf = await store.backfill([sid, sid], [T0 - 2 * H, -5], [1.0, 2.0], on_error="abort")
    assert bf.aborted and bf.accepted == 0
    t, _v = await store.read_series(sid, INT64_MIN, 2**63 - 1)
    assert t.tolist() == [T0 - H, T0]
    await store.close()


async def test_label_limits_refuse_new_series_naming_limit_and_label(tmp_path: Path) -> None:
    store = await open_store(
        tmp_path, max_labels_per_series=5, max_label_value_length=10, all_codecs=True
    )
    wide = tuple((f"l{i}", "v") for i in range(6))
    ids, refused = await store.resolve_series(
        [lab("ok"), lab("x", big="v" * 11), (("__name__", "y"), *wide), lab("n" * 5000)]
    )
    assert ids[0] > 0 and ids[1] == ids[2] == ids[3] == 0
    assert "limits.max_label_value_length" in refused[1] and "'big'" in refused[1]
    assert "limits.max_labels_per_series" in refused[2]
    assert "limits.max_metric_name_length" in refused[3]
    assert store.series_id(lab("x", big="v" * 11)) is None
    await store.close()


async def write_hostile_history(path: Path) -> list[int]:
    """A database holding samples at INT64_MIN and -2**62 next to ordinary recent data."""
    store = await open_store(path, **UNBOUNDED, all_codecs=True)
    ids = await store.get_or_create_series([lab("attacked"), lab("normal"), lab("floor")])
    t, v = recent()
    for sid in ids[:2]:
        assert (await store.append(np.full(t.size, sid), t, v)).accepted == t.size
    res = await store.backfill([ids[0], ids[2]], [ANCIENT, INT64_MIN], [1.0, 2.0])
    assert res.accepted == 2, res.rejected
    await store.flush(all=True)
    await store.close()
    return ids


async def test_database_holding_ancient_samples_heals(tmp_path: Path) -> None:
    ids = await write_hostile_history(tmp_path)
    store = await open_store(tmp_path, all_codecs=True)  # default bounds now
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    result = await manager.run_once(now_ms=NOW)
    # One block walked per block holding data (3 h of data: 180 + 36 + 3), plus the
    # jumps over the empty spans: not one per block since 292 million BC.
    assert result.blocks_rolled < 300, result.to_json()
    assert result.transactions < 400, result.to_json()
    t, _v = recent()
    for sid in ids[:2]:
        sb = await manager.stored(H, [sid], T0, NOW)
        assert int(sb.buckets.count.sum()) == t.size
    # The ancient sample is rolled up too (it is representable), INT64_MIN is skipped.
    sb = await manager.stored(H, [ids[0]], INT64_MIN, T0)
    assert int(sb.buckets.count.sum()) == 1
    again = await manager.run_once(now_ms=NOW + DAY)
    assert again.transactions < 50
    await store.close()


async def test_late_write_spanning_ages_recomputes_only_blocks_with_data(tmp_path: Path) -> None:
    store = await open_store(tmp_path, **UNBOUNDED, all_codecs=True)
    [sid, other] = await store.get_or_create_series([lab("late"), lab("other")])
    t, v = recent()
    await store.append(np.full(t.size, other), t, v)
    manager = await store.start_rollups(RollupOptions(resolutions_ms=RES), background=False)
    await manager.run_once(now_ms=NOW)
    # One write reaching from -2**62 to now marks one dirty span across all of it.
    res = await store.backfill([sid, sid, sid], [INT64_MIN, ANCIENT, T0 + 5], [1.0, 2.0, 3.0])
    assert res.accepted == 3
    assert manager.dirty_spans([sid])
    result = await manager.run_once(now_ms=NOW)
    assert result.transactions < 20, result.to_json()
    assert not manager.dirty_spans([sid])
    for res_ms in RES:
        sb = await manager.stored(res_ms, [sid], INT64_MIN, NOW)
        assert sorted(sb.buckets.first_t.tolist()) == [ANCIENT, T0 + 5]
    await store.close()
