"""Only one process may write a database; the lock dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.storage import StorageOptions, Store, StoreLocked
from tests.storage_helpers.raw_codec import codecs

CHILD = """
import asyncio, sys, time
from agent.storage import Store, StorageOptions
from tests.storage_helpers.raw_codec import codecs

async def main():
    store = await Store.open(sys.argv[1], StorageOptions(), codecs())
    print("open", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_second_open_in_process_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    first = await Store.open(db, StorageOptions(), codecs())
    with pytest.raises(StoreLocked, match=f"in use by another process \\(pid {os.getpid()}\\)"):
        await Store.open(db, StorageOptions(), codecs())
    await first.close()
    again = await Store.open(db, StorageOptions(), codecs())  # released on close
    await again.close()


async def test_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        with pytest.raises(StoreLocked, match=f"pid {child.pid}"):
            await Store.open(db, StorageOptions(), codecs())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            store = await Store.open(db, StorageOptions(), codecs())
            break
        except StoreLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    await store.close()
