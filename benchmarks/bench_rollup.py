"""Rollup storage and pass cost: packed blocks versus one SQLite row per bucket.

``python benchmarks/bench_rollup.py [--series N] [--hours H]`` ingests N series of
10 s samples over H hours, runs one rollup pass (1m, 5m, 1h) and reports the
pass time and the bytes per bucket of the packed blocks, next to the same
buckets stored one row per bucket (the alternative design), measured with
SQLite's ``dbstat`` page accounting for both tables and their indexes.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.model import make_labels
from agent.storage import StorageOptions, Store
from agent.storage.rollup import RollupOptions, read_blocks
from plugins.codecs import all_codecs

T0 = 1_699_999_200_000


def table_bytes(conn: sqlite3.Connection, names: tuple[str, ...]) -> int:
    marks = ",".join("?" * len(names))
    row = conn.execute(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", names)
    return int(row.fetchone()[0] or 0)


async def main(series: int, hours: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        store = await Store.open(
            path / "tsagent.db",
            StorageOptions(flush_interval_s=3600, default_codec="zstd-xor"),
            {c.name: c for c in all_codecs()},
        )
        ids = await store.get_or_create_series(
            [make_labels({"__name__": "bench", "i": str(i)}) for i in range(series)]
        )
        rng = np.random.default_rng(0)
        t = T0 + np.arange(0, hours * 3_600_000, 10_000, dtype=np.int64)
        for sid in ids:
            v = np.round(rng.normal(100, 5, t.size), 2)
            await store.backfill(np.full(t.size, sid), t, v)
        manager = await store.start_rollups(RollupOptions(), background=False)
        started = time.perf_counter()
        result = await manager.run_once(now_ms=T0 + (hours + 72) * 3_600_000)
        took = time.perf_counter() - started
        stats = await manager.storage_stats()
        await store.close()

        conn = sqlite3.connect(path / "tsagent.db")
        conn.execute(
            "CREATE TABLE per_bucket (resolution_ms INTEGER, series_id INTEGER, t INTEGER,"
            " count INTEGER, min REAL, max REAL, sum REAL, first REAL, last REAL,"
            " first_t INTEGER, last_t INTEGER, integral INTEGER,"
            " PRIMARY KEY (resolution_ms, series_id, t)) WITHOUT ROWID"
        )
        for res in stats:
            found = read_blocks(conn, res, ids, 0, 2**62)
            rows = []
            for sid, bk in found.items():
                for i in range(len(bk)):
                    rows.append(
                        (res, sid, int(bk.start[i]), int(bk.count[i]), float(bk.min[i]),
                         float(bk.max[i]), float(bk.sum[i]), float(bk.first[i]),
                         float(bk.last[i]), int(bk.first_t[i]), int(bk.last_t[i]),
                         int(bk.integral[i]))
                    )  # fmt: skip
            conn.executemany(f"INSERT INTO per_bucket VALUES ({','.join('?' * 12)})", rows)
        conn.commit()
        blocks = table_bytes(conn, ("rollups", "rollups_key"))
        per_bucket = table_bytes(conn, ("per_bucket",))
        conn.close()
    buckets = sum(s["buckets"] for s in stats.values())
    print(f"{series} series x {hours} h of 10 s samples: {result.buckets_written} buckets")
    print(f"rollup pass: {took:.2f} s ({result.buckets_written / took:,.0f} buckets/s)")
    for res, s in sorted(stats.items()):
        print(f"  {res // 1000:>5} s: {s['rows']} rows, {s['bytes'] / s['buckets']:.1f} B/bucket")
    print(f"packed blocks (table + index pages): {blocks / buckets:.1f} B/bucket")
    print(f"one row per bucket (WITHOUT ROWID):   {per_bucket / buckets:.1f} B/bucket")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--hours", type=int, default=48)
    args = ap.parse_args()
    asyncio.run(main(args.series, args.hours))
