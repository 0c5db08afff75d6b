"""Instant selectors answered from each series' newest sample (``Store.latest_selected``).

The shortcut must give exactly what reading the samples gives, and must step
aside whenever the newest sample may have gone or changed: after
``record_write``, ``rollback``, a backfill, a retention pass and a restart,
until the series' next in-order append.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.model import STALE_NAN, Labels
from agent.query.service import QueryService
from agent.storage.store import Store
from tests.conftest import open_store

NOW = (int(time.time()) // 60 * 60 - 3600) * 1000  # a round minute, an hour ago
STEP = 15_000
QUERIES = [
    "up",
    "count(up)",
    "sum by (g) (up)",
    "topk(3, up)",
    "quantile(0.5, up)",
    "timestamp(up)",
    "up offset 30s",
    'up{g="a"} > 5',
    "count(up) - count(up offset 1m)",
]


def _labels(i: int) -> Labels:
    return (("__name__", "up"), ("g", "ab"[i % 2]), ("i", f"{i:03d}"))


async def _loaded(path: Path, **opts: Any) -> tuple[Store, np.ndarray]:
    """80 series, 12 rounds: some end early, one ends with a staleness marker."""
    store = await open_store(path, **opts)
    ids = np.array(await store.get_or_create_series([_labels(i) for i in range(80)]))
    rng = np.random.default_rng(5)
    for r in range(12):
        alive = ids if r < 6 else ids[:60]  # the last 20 stop after round 5
        vals = rng.integers(0, 10, alive.size).astype(np.float64)
        if r == 11:
            vals[3] = STALE_NAN
        await store.append(alive, np.full(alive.size, NOW + r * STEP), vals)
    return store, ids


async def _answers(svc: QueryService, at_ms: int) -> list[bytes]:
    out = []
    for q in QUERIES:
        answer = await svc.instant(q, at_ms, cache="off", encode_json=True)
        out.append(answer.data_json())
    return out


async def _compare(store: Store, times: list[int], monkeypatch: pytest.MonkeyPatch) -> int:
    """Answers with and without the shortcut are the same bytes; how often it answered."""
    svc = QueryService(store)
    used = 0
    real = Store.latest_selected

    def counting(self: Store, *args: Any) -> Any:
        nonlocal used
        got = real(self, *args)
        used += got is not None
        return got

    try:
        for at in times:
            with monkeypatch.context() as m:
                m.setattr(Store, "latest_selected", counting)
                fast = await _answers(svc, at)
            with monkeypatch.context() as m:
                m.setattr(Store, "latest_selected", lambda *a: None)
                slow = await _answers(svc, at)
            assert fast == slow, at
    finally:
        svc.close()
    return used


LAST = NOW + 11 * STEP
TIMES = [LAST, LAST + 1, LAST + 60_000, LAST + 299_999, LAST + 400_000, LAST - 1, NOW + 5 * STEP]


async def test_same_answers_as_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ids = await _loaded(tmp_path)
    try:
        assert await _compare(store, TIMES, monkeypatch) > 0
        await store.flush(all=True)  # newest samples now in segments: still known
        assert await _compare(store, TIMES, monkeypatch) > 0
    finally:
        await store.close()


def _known(store: Store, ids: np.ndarray, at: int = LAST + 10 * STEP) -> bool:
    labs = [store.labels(int(s)) for s in ids]
    return store.latest_selected([int(s) for s in ids], labs, at, 300_000) is not None


async def test_changes_other_than_appends_forget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = await _loaded(tmp_path)
    try:
        live = ids[:60]
        assert _known(store, live)
        # record_write replaces the newest value of one series
        await store.record_write(int(live[0]), LAST, 123.0)
        assert not _known(store, live[:1]) and _known(store, live[1:])
        await _compare(store, TIMES, monkeypatch)
        assert _known(store, live[1:2])  # a selection without it still answers
        await store.append(live[:1], np.array([LAST + STEP]), np.array([4.0]))
        assert _known(store, live)
        # a backfill newer than the newest sample
        await store.backfill([int(live[1])], [LAST + 2 * STEP], [9.0])
        assert not _known(store, live[1:2])
        await _compare(store, [*TIMES, LAST + 2 * STEP + 1], monkeypatch)
        # a rollback may remove any series' newest samples
        audit = await store.record_write(int(live[2]), NOW, 1.0)
        await store.append(live, np.full(live.size, LAST + 3 * STEP), np.ones(live.size))
        assert _known(store, live)
        await store.rollback(audit)
        assert not _known(store, live[5:6])
        await _compare(store, [*TIMES, LAST + 3 * STEP + 1], monkeypatch)
    finally:
        await store.close()


async def test_retention_and_restart_forget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids = await _loaded(tmp_path, retention_ms=10 * STEP)
    try:
        assert _known(store, ids[:60])
        await store.apply_retention(now_ms=LAST + 5 * STEP)
        assert not _known(store, ids[:60])
        await _compare(store, [LAST + 1, LAST + 60_000, NOW + 7 * STEP], monkeypatch)
        await store.flush(all=True)  # nothing left for the log to replay
    finally:
        await store.close()
    store = await open_store(tmp_path, retention_ms=10 * STEP)
    try:
        assert not _known(store, ids[:60])  # after a restart, only appends say
        await _compare(store, [LAST + 1, LAST + 60_000], monkeypatch)
        await store.append(ids[:60], np.full(60, LAST + STEP), np.ones(60))
        assert _known(store, ids[:60])
        await _compare(store, [LAST + STEP, LAST + STEP + 1, LAST + 100_000], monkeypatch)
    finally:
        await store.close()
