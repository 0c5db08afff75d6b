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


async def test_clean_close_removes_the_lock_file(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = await Store.open(db, StorageOptions(), codecs())
    lock = tmp_path / "t.db.lock"
    assert lock.read_text().strip() == str(os.getpid())
    await store.close()
    assert not lock.exists()
    again = await Store.open(db, StorageOptions(), codecs())  # and the next owner recreates it
    assert lock.exists()
    await again.close()


def test_a_lock_file_unlinked_under_a_waiter_is_not_trusted(tmp_path: Path) -> None:
    """A contender that opened the old file must not believe it holds the lock."""
    from agent.storage.lock import DatabaseLock

    first = DatabaseLock(tmp_path / "t.db")
    first.acquire()
    stale = os.open(first.path, os.O_RDWR)  # what a contender holds when the owner leaves
    first.release()
    second = DatabaseLock(tmp_path / "t.db")
    assert not second._still_linked(stale)
    second.acquire()
    assert second._fd is not None and second._still_linked(second._fd)
    os.close(stale)
    second.release()
