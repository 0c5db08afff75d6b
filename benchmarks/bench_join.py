"""How long joins take: 10 series of 100,000 samples each, every join type and fill.

Run: ``.venv/bin/python benchmarks/bench_join.py [--series 10] [--samples 100000] [--store]``.

Series are scrapes every 15 s with per-series jitter (so exact-match joins
find only part of the rows, as with real data). ``--store`` also writes them
into a temporary store and times ``Agent.join_series`` end to end (reading
segments and head included). Prints the best of ``--repeat`` runs per case.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.dataio.join import SeriesArrays, join_arrays


def make_series(n_series: int, n_samples: int, seed: int = 1) -> list[SeriesArrays]:
    rng = np.random.default_rng(seed)
    out = []
    base = 1_700_000_000_000
    for i in range(n_series):
        jitter = rng.integers(0, 3, n_samples) * (i % 3)  # series 0, 3, 6, 9 exactly aligned
        t = base + np.arange(n_samples, dtype=np.int64) * 15_000 + jitter
        v = rng.normal(100.0, 10.0, n_samples)
        out.append((t, v))
    return out


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


async def store_case(series: list[SeriesArrays], repeat: int) -> float:
    from agent.library import open_agent

    with tempfile.TemporaryDirectory() as tmp:
        agent = await open_agent(Path(tmp) / "b.db")
        store = agent.store
        try:
            labels = [(("__name__", "m"), ("i", str(i))) for i in range(len(series))]
            ids = await store.get_or_create_series(labels)
            for sid, (t, v) in zip(ids, series, strict=True):
                await store.backfill(np.full(t.size, sid), t, v)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                await agent.join_series(ids[0], ids[1:], "outer")
                times.append(time.perf_counter() - started)
            return min(times)
        finally:
            await agent.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--store", action="store_true", help="also time Agent.join_series")
    args = ap.parse_args()
    series = make_series(args.series, args.samples)
    print(f"{args.series} series x {args.samples:,} samples (best of {args.repeat})")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("inner", lambda: join_arrays(series, "inner")),
        ("left", lambda: join_arrays(series, "left")),
        ("outer", lambda: join_arrays(series, "outer")),
        ("asof tolerance=15s", lambda: join_arrays(series, "asof", tolerance=15_000)),
        ("outer step=1m fill=null", lambda: join_arrays(series, "outer", step=60_000)),
        (
            "outer step=15s fill=previous",
            lambda: join_arrays(series, "outer", step=15_000, fill="previous"),
        ),
        (
            "left step=10s fill=linear",
            lambda: join_arrays(series, "left", step=10_000, fill="linear"),
        ),
    ]
    for name, fn in cases:
        result = fn()
        seconds = best(fn, args.repeat)
        print(f"  {name:<30} {seconds * 1000:8.1f} ms  {len(result):>9,} rows")  # type: ignore[arg-type]
    if args.store:
        seconds = asyncio.run(store_case(series, args.repeat))
        print(f"  {'Agent.join_series outer':<30} {seconds * 1000:8.1f} ms  (read + join)")


if __name__ == "__main__":
    main()
