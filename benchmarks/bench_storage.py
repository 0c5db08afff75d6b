"""Storage benchmark: the engine in process, and the whole data directory of the daemon.

Run: ``python benchmarks/bench_storage.py`` (both parts, several minutes;
``--part engine`` or ``--part footprint`` for one; ``--small`` for a quick
footprint run). Each part prints Markdown tables.

Engine part: append rate, head memory per series, segment read time, each
measured end to end through the public ``Store`` API, so the append rate
includes validation, the log blob, the group commit and fsync policy
(``synchronous=NORMAL``), not just the in-memory head.

Footprint part (issue 12, "whole data directory"): the same remote-write
load into tsagent, VictoriaMetrics and Prometheus 2.42 (each started by
``benchmarks/harness.py`` with a temporary data directory; the last two when
their Debian packages are installed): 10,000 node-exporter-like series x
1,440 samples at 15 s (6 h, 14.4 M samples; ``--small``: 1,000 x 240), sent
by ``benchmarks/loadgen.py`` in time order with the last timestamp shortly
before now, every daemon getting identical samples. Time order ending now is
what keeps it fair to Prometheus, which refuses samples older than its head
window (an hour behind its newest sample): the senders advance round by
round, so every sample lands in every system, and tsagent's and
Prometheus' own 2 h flush/compaction rules see the same data ages. The
directory is sized while running, one tsagent flush interval (60 s, the
default) plus 5 s after each daemon's load ended, and again after a clean
shutdown (SIGTERM, waited for). tsagent's directory is then broken down:
the SQLite file, its ``-wal``, and per table/index bytes and free pages from
``dbstat``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import footprint

from agent.model import Matcher
from agent.storage import StorageOptions, Store
from agent.storage.segments import decode_merge, fetch_segments


def load_codecs() -> tuple[Mapping[str, Any], str]:
    try:
        from plugins.codecs import DEFAULT_CODEC, all_codecs

        return {c.name: c for c in all_codecs()}, DEFAULT_CODEC
    except ImportError:
        from tests.storage_helpers.raw_codec import codecs

        return codecs(), "raw"


def labels_for(i: int) -> tuple[tuple[str, str], ...]:
    return (
        ("__name__", f"metric_{i % 50}"),
        ("env", ("prod", "staging", "dev")[i % 3]),
        ("instance", f"host-{i // 50:05d}:9100"),
        ("job", f"job_{i % 7}"),
        ("region", f"r{i % 4}"),
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def bench_append(
    tmp: Path,
    codecs: Mapping[str, Any],
    n_series: int,
    per_series: int,
    batches: int,
    writers: int,
    synchronous: str = "NORMAL",
) -> tuple[float, int]:
    """Samples/s for ``writers`` concurrent producers; returns (rate, commits)."""
    opts = StorageOptions(default_codec="raw", flush_interval_s=3600, synchronous=synchronous)
    path = tmp / f"append_{n_series}_{per_series}_{writers}_{synchronous}.db"
    store = await Store.open(path, opts, codecs)
    try:
        ids = np.array(await store.get_or_create_series([labels_for(i) for i in range(n_series)]))
        sids = np.repeat(ids, per_series)
        offs = np.tile(np.arange(per_series, dtype=np.int64), n_series)
        rng = np.random.default_rng(1)
        t0 = 1_700_000_000_000
        step = 15_000

        async def producer(w: int) -> int:
            done = 0
            for b in range(batches):
                base = t0 + ((b * writers + w) * per_series) * step
                ts = base + offs * step
                vals = rng.random(sids.size)
                res = await store.append(sids, ts, vals)
                done += res.accepted
            return done

        # Each producer owns a disjoint slice of series, so nothing is out of order.
        if writers > 1:
            per = n_series // writers
            slices = [ids[w * per : (w + 1) * per] for w in range(writers)]

            async def sliced(w: int) -> int:
                s_ids = np.repeat(slices[w], per_series)
                s_offs = np.tile(np.arange(per_series, dtype=np.int64), slices[w].size)
                done = 0
                for b in range(batches):
                    ts = t0 + (b * per_series + s_offs) * step
                    res = await store.append(s_ids, ts, rng.random(s_ids.size))
                    done += res.accepted
                return done

            commits0 = store.stats().commits
            start = time.perf_counter()
            counts = await asyncio.gather(*(sliced(w) for w in range(writers)))
        else:
            commits0 = store.stats().commits
            start = time.perf_counter()
            counts = [await producer(0)]
        elapsed = time.perf_counter() - start
        total = sum(counts)
        assert total == sids.size * batches or writers > 1
        return total / elapsed, store.stats().commits - commits0
    finally:
        await store.close()


async def bench_memory(
    tmp: Path, codecs: Mapping[str, Any], n_series: int, *, trace: bool
) -> tuple[float, float]:
    """Bytes per active series with 5 labels and 4 head samples each.

    With ``trace`` the figure is tracemalloc's (Python and numpy allocations of
    the store only); without, the RSS delta, which also counts SQLite's page
    cache and allocator slack but not tracemalloc's own bookkeeping.
    """
    gc.collect()
    opts = StorageOptions(default_codec="raw", flush_interval_s=3600)
    labels = [labels_for(i) for i in range(n_series)]  # the caller's copy, not counted
    rss0 = rss_bytes()
    if trace:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if trace else 0
    store = await Store.open(tmp / f"mem_{trace}.db", opts, codecs)
    try:
        ids: list[int] = []
        for i in range(0, n_series, 10_000):
            ids.extend(await store.get_or_create_series(labels[i : i + 10_000]))
        sids = np.array(ids, dtype=np.int64)
        for k in range(4):
            ts = np.full(sids.size, 1_700_000_000_000 + k * 15_000)
            await store.append(sids, ts, np.ones(sids.size))
        del sids, ids
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base if trace else rss_bytes() - rss0
        assert store.stats().active_series == n_series
        started = time.perf_counter()
        await store.flush(all=True)  # the shutdown flush, for scale
        flush_s = time.perf_counter() - started
        assert store.stats().head_samples == 0
        return used / n_series, flush_s
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        await store.close()


async def bench_read(
    tmp: Path, codecs: Mapping[str, Any], codec: str, samples: int = 5760
) -> tuple[float, float, float]:
    """(decode+merge µs after the SQL fetch, SQL fetch µs, end-to-end read_series µs), medians."""
    opts = StorageOptions(default_codec=codec, flush_interval_s=3600)
    store = await Store.open(tmp / f"read_{codec}.db", opts, codecs)
    try:
        [sid] = await store.get_or_create_series([labels_for(1)])
        ts = 1_700_000_000_000 + np.arange(samples, dtype=np.int64) * 15_000
        vals = np.cumsum(np.random.default_rng(2).normal(0, 1, samples)).round(2)
        await store.append([sid] * samples, ts, vals)
        await store.flush(all=True)
        assert store.stats().segments == -(-samples // opts.block_size)
        conn = store._reader_conn()
        chooser = store._chooser
        lo, hi = int(ts[0]), int(ts[-1])
        fetch_t, merge_t, e2e_t = [], [], []
        for _ in range(200):
            a = time.perf_counter()
            rows = fetch_segments(conn, [sid], lo, hi)
            b = time.perf_counter()
            t, v = decode_merge(rows[sid], None, chooser, lo, hi)
            c = time.perf_counter()
            fetch_t.append(b - a)
            merge_t.append(c - b)
            assert t.size == samples
        for _ in range(200):
            a = time.perf_counter()
            t, v = await store.read_series(sid, lo, hi)
            e2e_t.append(time.perf_counter() - a)
        assert np.array_equal(v.view(np.uint64), vals.view(np.uint64))
        got = await store.select([Matcher.of("instance", "=", labels_for(1)[2][1])], lo, hi)
        assert got[0].timestamps.size == samples
        med = statistics.median
        return med(merge_t) * 1e6, med(fetch_t) * 1e6, med(e2e_t) * 1e6
    finally:
        await store.close()


async def engine_main(n_mem: int) -> None:
    codecs, default = load_codecs()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n_series, per, batches, writers, sync in (
            (5000, 1, 200, 1, "NORMAL"),
            (1000, 10, 100, 1, "NORMAL"),
            (10000, 1, 60, 1, "NORMAL"),
            (8000, 1, 100, 4, "NORMAL"),
            (1000, 1, 200, 1, "FULL"),
            (8000, 1, 100, 4, "FULL"),
        ):
            rate, commits = await bench_append(tmp, codecs, n_series, per, batches, writers, sync)
            label = (
                f"append, batches of {n_series * per // writers} samples "
                f"({n_series // writers} series x {per}), {writers} producer(s),"
                f" synchronous={sync}"
            )
            rows.append((label, f"{rate:,.0f} samples/s ({commits} commits)"))
        rss_per, flush_s = await bench_memory(tmp, codecs, n_mem, trace=False)
        per_series, _ = await bench_memory(tmp, codecs, n_mem, trace=True)
        rows.append(
            (
                f"memory per active series at {n_mem:,} series (5 labels, 4 head samples)",
                f"{per_series:,.0f} B traced by tracemalloc ({rss_per:,.0f} B RSS delta)",
            )
        )
        rows.append(
            (
                f"flush(all=True) of {n_mem:,} series x 4 samples, codec raw",
                f"{flush_s:.2f} s ({4 * n_mem / flush_s:,.0f} samples/s)",
            )
        )
        for codec in dict.fromkeys(("raw", default)):
            merge_us, fetch_us, e2e_us = await bench_read(tmp, codecs, codec)
            rows.append(
                (
                    f"read one series, 5,760 samples in 8 segments, codec {codec}",
                    f"{merge_us:,.0f} µs decode+merge after SQL ({fetch_us:,.0f} µs SQL fetch,"
                    f" {e2e_us:,.0f} µs read_series end to end)",
                )
            )
    print("| measurement | result |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--part", choices=("all", "engine", "footprint"), default="all")
    ap.add_argument("--series", type=int, default=100_000, help="series for the memory figure")
    footprint.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.part in ("all", "engine"):
        asyncio.run(engine_main(args.series))
    if args.part in ("all", "footprint"):
        if args.part == "all":
            print()
        return footprint.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
