"""SIGKILL the real daemon while remote-write senders are busy; nothing acknowledged is lost.

The storage engine's own kill test (test_storage_durability.py) drives the
store directly; this one goes through everything a user runs: HTTP, the
remote-write plugin, group commit, flushes, the daemon process and a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import cramjam
import numpy as np
import pytest

from agent.model import Matcher
from agent.prompb import remote_pb2
from agent.storage import StorageOptions, Store
from plugins.codecs import all_codecs
from tests.conftest import free_port, wait_until

SERIES = 40
T0 = 1_600_000_000_000
CONFIG = """
storage:
  block_size: 16
  flush_interval: 0.2
  flush_age: 1s
"""
# The same, with the log rewritten as a head checkpoint after every commit and free pages
# given back after every flush interval: the kill lands among flushes, log trims,
# checkpoints and incremental vacuums.
MAINTENANCE_CONFIG = """
storage:
  block_size: 64
  flush_interval: 0.05
  flush_age: 1s
  checkpoint_min_bytes: 0
  reclaim_min_bytes: 0
"""


def request(sender: int, batch: int) -> bytes:
    req = remote_pb2.WriteRequest()
    for i in range(SERIES):
        ts = req.timeseries.add()
        for name, value in sorted(
            {"__name__": "kill_test", "sender": str(sender), "i": f"{i:03d}"}.items()
        ):
            label = ts.labels.add()
            label.name, label.value = name, value
        sample = ts.samples.add()
        sample.timestamp = T0 + batch * 1000
        sample.value = float(batch * 1000 + i)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


async def send_until_dead(url: str, sender: int, acked: list[tuple[int, int]]) -> None:
    async with aiohttp.ClientSession() as session:
        batch = 0
        while True:
            try:
                async with session.post(url, data=request(sender, batch), headers=HEADERS) as r:
                    if r.status != 204:
                        raise AssertionError(f"unexpected {r.status}: {await r.text()}")
            except aiohttp.ClientError:
                return  # the daemon is gone; this batch was never acknowledged
            acked.append((sender, batch))
            batch += 1


async def checkpoints_so_far(port: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("tsagent_wal_checkpoints_total "):
            return float(line.split()[1])
    raise AssertionError("tsagent_wal_checkpoints_total missing from /metrics")


def start(data: Path, cfg: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data)]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out)


async def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            assert proc.poll() is None, "daemon exited early"
            try:
                async with session.get(f"http://127.0.0.1:{port}/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until("the daemon to be ready", ready, 30, 0.05)


@pytest.mark.parametrize("config", [CONFIG, MAINTENANCE_CONFIG], ids=["plain", "maintenance"])
async def test_sigkill_during_remote_write_loses_nothing(tmp_path: Path, config: str) -> None:
    data, cfg, log = tmp_path / "data", tmp_path / "c.yaml", tmp_path / "daemon.log"
    cfg.write_text(config)
    acked: list[tuple[int, int]] = []
    checkpoints: list[float] = []
    for _round in range(2):  # kill, restart, keep writing, kill again
        port = free_port()
        proc = start(data, cfg, port, log)
        try:
            await wait_ready(port, proc)
            url = f"http://127.0.0.1:{port}/api/v1/write"
            offset = len(acked) * 10  # new batch numbers per round: timestamps keep rising
            senders = [
                asyncio.create_task(send_until_dead(url, s + offset, acked)) for s in range(3)
            ]
            before = len(acked)  # some acknowledged writes in this round, then the kill
            await wait_until("acknowledged writes", lambda n=before: len(acked) >= n + 30, 30, 0.05)
            if config is MAINTENANCE_CONFIG:

                async def checkpointed(port: int = port) -> bool:
                    return await checkpoints_so_far(port) > 0

                await wait_until("a checkpoint before the kill", checkpointed, 30, 0.05)
                checkpoints.append(await checkpoints_so_far(port))
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*senders), 30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert len(acked) > 30, f"too little traffic to prove anything:\n{log.read_text()}"
    if config is MAINTENANCE_CONFIG:
        assert all(n > 0 for n in checkpoints), "no checkpoint ran before the kill"

    codecs = {c.name: c for c in all_codecs()}
    store = await Store.open(data / "tsagent.db", StorageOptions(), codecs)
    try:
        found = {
            (dict(s.labels)["sender"], dict(s.labels)["i"]): s
            for s in await store.select([Matcher.of("__name__", "=", "kill_test")], 0, 2 * T0)
        }
        for sender, batch in acked:
            for i in range(SERIES):
                s = found[(str(sender), f"{i:03d}")]
                k = int(np.searchsorted(s.timestamps, T0 + batch * 1000))
                assert s.timestamps[k] == T0 + batch * 1000, (sender, batch, i)
                assert s.values[k] == batch * 1000 + i
        await store.flush(all=True)
    finally:
        await store.close()

    # Exactly once on disk: decode every segment without the read path's dedupe.
    conn = sqlite3.connect(data / "tsagent.db")
    try:
        per_series: dict[int, list[int]] = {}
        for sid, count, codec, blob in conn.execute(
            "SELECT series_id, count, codec, data FROM segments"
        ):
            per_series.setdefault(sid, []).extend(codecs[codec].decode(blob, count)[0].tolist())
    finally:
        conn.close()
    for sid, stamps in per_series.items():
        assert len(stamps) == len(set(stamps)), f"series {sid} stores a timestamp twice"
