"""Child process for the durability test: append until killed, printing acknowledgements.

Usage: ``python -m tests.storage_helpers.durability_child DB_PATH FIRST_BATCH``

Two producers append concurrently (so batches share group commits) while tiny
``block_size``/``flush_age`` keep flushes running all the time, so the
parent's SIGKILL can land anywhere: mid-append, mid-commit, mid-flush.  A line
``ACK <producer> <batch> <nseries>`` is printed (and flushed) only after
``append`` returned, i.e. after the store said the samples are durable.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from agent.storage import StorageOptions, Store
from tests.storage_helpers.raw_codec import codecs

T0 = 1_700_000_000_000
PRODUCERS = 2
MAX_SERIES = 40


def series_labels(producer: int, i: int) -> tuple[tuple[str, str], ...]:
    return (("__name__", "durability"), ("i", str(i)), ("producer", str(producer)))


def series_count(batch: int) -> int:
    """Series appear over time, so creation durability is exercised too."""
    return min(MAX_SERIES, 4 + (batch % 100_000) // 5)


def value(producer: int, batch: int, i: int) -> float:
    return float(batch * 1000 + i * 10 + producer)


async def producer(store: Store, p: int, first: int) -> None:
    batch = first
    while True:
        n = series_count(batch)
        ids = await store.get_or_create_series([series_labels(p, i) for i in range(n)])
        ts = np.full(n, T0 + batch * 1000, dtype=np.int64)
        vals = np.array([value(p, batch, i) for i in range(n)])
        res = await store.append(ids, ts, vals)
        if res.accepted != n:
            raise SystemExit(f"unexpected rejection: {res}")
        sys.stdout.write(f"ACK {p} {batch} {n}\n")
        sys.stdout.flush()
        batch += 1


async def main(path: str, first: int) -> None:
    options = StorageOptions(block_size=16, flush_age_ms=30, flush_interval_s=0.02)
    store = await Store.open(path, options, codecs())
    await asyncio.gather(*(producer(store, p, first) for p in range(PRODUCERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
