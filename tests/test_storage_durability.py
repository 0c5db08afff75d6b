"""A real process is SIGKILLed while appending and flushing; nothing acknowledged may be lost.

The child prints one line per acknowledged batch; after the kill the parent
reopens the store and checks that every acknowledged sample is there exactly
once (unacknowledged ones may or may not be, but never twice either).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from agent.model import Matcher
from agent.storage import StorageOptions, Store
from tests.storage_helpers.durability_child import (
    PRODUCERS,
    T0,
    series_labels,
    value,
)
from tests.storage_helpers.raw_codec import TestRawCodec, codecs

ROOT = Path(__file__).resolve().parent.parent


def run_and_kill(db: Path, first_batch: int, seconds: float) -> list[tuple[int, int, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_helpers.durability_child", str(db), str(first_batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        time.sleep(seconds)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    acks = []
    for line in out.decode().split("\n")[:-1]:  # a torn last line is not an acknowledgement
        tag, p, batch, n = line.split()
        assert tag == "ACK"
        acks.append((int(p), int(batch), int(n)))
    return acks


def raw_segment_timestamps(db: Path) -> dict[int, list[int]]:
    """Every timestamp in every segment, before any read-side dedupe."""
    out: dict[int, list[int]] = {}
    codec = TestRawCodec()
    conn = sqlite3.connect(db)
    try:
        for sid, count, name, blob in conn.execute(
            "SELECT series_id, count, codec, data FROM segments"
        ):
            assert name == "raw"
            out.setdefault(sid, []).extend(codec.decode(blob, count)[0].tolist())
    finally:
        conn.close()
    return out


async def test_acknowledged_samples_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    acks = run_and_kill(db, first_batch=0, seconds=1.5)
    acks += run_and_kill(db, first_batch=100_000, seconds=1.0)  # continue after a crash
    assert len(acks) > 50, "child made too little progress to test anything"

    store = await Store.open(db, StorageOptions(flush_interval_s=3600), codecs())
    try:
        stats = store.stats()
        data = {
            (dict(s.labels)["producer"], dict(s.labels)["i"]): s
            for s in await store.select(
                [Matcher.of("__name__", "=", "durability")], T0, T0 + 10**12
            )
        }
        for p, batch, n in acks:
            for i in range(n):
                s = data[(str(p), str(i))]
                k = int(np.searchsorted(s.timestamps, T0 + batch * 1000))
                assert k < s.timestamps.size and s.timestamps[k] == T0 + batch * 1000, (p, batch, i)
                assert s.values[k] == value(p, batch, i)
        # Whatever is present (acknowledged or not) must be a sample the child wrote.
        for (p_label, i_label), s in data.items():
            batches = (s.timestamps - T0) // 1000
            assert np.array_equal(s.values, batches * 1000 + int(i_label) * 10 + int(p_label))
        assert {key[0] for key in data} == {str(p) for p in range(PRODUCERS)}
        await store.flush(all=True)
        assert store.stats().head_samples == 0 and store.stats().wal_rows == 0
        ids = {key: store.series_id(series_labels(int(key[0]), int(key[1]))) for key in data}
    finally:
        await store.close()
    assert stats.replayed_samples > 0 or stats.segments > 0

    # Exactly once on disk: no timestamp twice in the segments of any series.
    stored = raw_segment_timestamps(db)
    for key, s in data.items():
        sid = ids[key]
        assert sid is not None
        dupes = [t for t, c in Counter(stored[sid]).items() if c > 1]
        assert not dupes, (key, dupes[:5])
        assert sorted(stored[sid]) == s.timestamps.tolist()
