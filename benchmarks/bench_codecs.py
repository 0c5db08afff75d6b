"""Compare the chunk codecs on a realistic, deterministic set of series.

Run ``python benchmarks/bench_codecs.py`` from the repository root. The data
imitates what a node/app exporter scrape looks like at a 15 s interval: many
counters (busy and idle histogram buckets, CPU seconds in 1/100 s ticks,
occasional resets), integer and few-digit decimal gauges, some full-precision
ratios, constant ``up``/``*_info``-like series, half the series with a few ms
of scrape jitter, and a few series ending in a staleness marker. The seed is
fixed so numbers are comparable between runs and machines only differ in the
timings. Every blob is decoded and compared bit for bit before timing counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.plugin_api import Codec
from plugins.codecs import DEFAULT_CODEC, all_codecs

STALE_NAN = np.array([0x7FF0000000000002], dtype=np.uint64).view(np.float64)[0]
START_MS = 1_700_000_000_000
INTERVAL_MS = 15_000
KINDS: list[tuple[str, float]] = [
    ("counter", 0.20),
    ("idle-counter", 0.25),
    ("cpu-seconds", 0.05),
    ("int-gauge", 0.12),
    ("decimal-gauge", 0.10),
    ("float-gauge", 0.03),
    ("constant", 0.25),
]

Series = tuple[str, np.ndarray, np.ndarray]


def make_timestamps(rng: np.random.Generator, n: int) -> np.ndarray:
    start = START_MS + int(rng.integers(0, INTERVAL_MS))
    ts = start + INTERVAL_MS * np.arange(n, dtype=np.int64)
    if rng.random() < 0.5:
        amplitude = int(rng.integers(1, 11))
        ts += rng.integers(-amplitude, amplitude + 1, n)
    return ts


def make_values(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "counter":
        rate = rng.lognormal(-1.0, 1.5)
        values = float(rng.integers(0, 10**6)) + np.cumsum(rng.poisson(rate * 15, n))
        if rng.random() < 0.05:  # a process restart resets the counter
            reset = int(rng.integers(1, n))
            values[reset:] -= values[reset]
        return values.astype(np.float64)
    if kind == "idle-counter":
        steps = (rng.random(n) < 0.02) * rng.integers(1, 4, n)
        return (int(rng.integers(0, 500)) + np.cumsum(steps)).astype(np.float64)
    if kind == "cpu-seconds":
        ticks = np.cumsum(rng.poisson(rng.uniform(1, 100), n)) + int(rng.integers(0, 10**7))
        return ticks / 100.0
    if kind == "int-gauge":
        if rng.random() < 0.5:  # memory in pages of 4 KiB
            pages = 25_000 + np.cumsum(rng.integers(-40, 41, n) * (rng.random(n) < 0.3))
            return (np.maximum(pages, 1) * 4096).astype(np.float64)
        return np.maximum(0, 50 + np.cumsum(rng.integers(-2, 3, n))).astype(np.float64)
    if kind == "decimal-gauge":
        digits = int(rng.integers(1, 3))
        level = rng.uniform(0, 100)
        wave = 5 * np.sin(np.arange(n) * 2 * np.pi / 240 + rng.uniform(0, 6))
        noise = np.cumsum(rng.normal(0, 0.02, n))
        return np.round(level + wave + noise, digits)
    if kind == "float-gauge":
        return np.clip(rng.uniform(0.2, 0.8) + np.cumsum(rng.normal(0, 0.01, n)), 0, 1)
    if kind == "constant":
        return np.full(n, float(rng.choice([0.0, 1.0, 1.0, 1024.0, 65536.0, 3.5])))
    raise ValueError(kind)


def make_dataset(series: int, samples: int, seed: int = 20240601) -> list[Series]:
    rng = np.random.default_rng(seed)
    names = [k for k, _ in KINDS]
    shares = np.array([w for _, w in KINDS])
    kinds = rng.choice(names, size=series, p=shares / shares.sum())
    out: list[Series] = []
    for kind in kinds:
        ts = make_timestamps(rng, samples)
        vs = make_values(rng, str(kind), samples)
        if rng.random() < 0.02:
            vs[-1] = STALE_NAN
        out.append((str(kind), ts, vs))
    return out


def blocks(data: list[Series], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (ts[i : i + size], vs[i : i + size]) for _, ts, vs in data for i in range(0, ts.size, size)
    ]


def check_round_trip(codec: Codec, ts: np.ndarray, vs: np.ndarray, blob: bytes) -> None:
    got_ts, got_vs = codec.decode(blob, ts.size)
    if not (
        np.array_equal(got_ts, ts) and np.array_equal(got_vs.view(np.int64), vs.view(np.int64))
    ):
        raise AssertionError(f"{codec.name}: round trip mismatch")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(codec: Codec, data: list[Series], block: int) -> dict[str, float]:
    pieces = blocks(data, block)
    samples = sum(ts.size for ts, _ in pieces)
    blobs: list[bytes] = []
    encode_s = timed(lambda: blobs.extend(codec.encode(ts, vs) for ts, vs in pieces))
    decode_s = timed(
        lambda: [codec.decode(b, ts.size) for b, (ts, _) in zip(blobs, pieces, strict=True)]
    )
    for blob, (ts, vs) in zip(blobs, pieces, strict=True):
        check_round_trip(codec, ts, vs, blob)
    return {
        "bytes": sum(map(len, blobs)) / samples,
        "encode": samples / encode_s,
        "decode": samples / decode_s,
    }


def bytes_by_kind(codec: Codec, data: list[Series], block: int) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for kind, ts, vs in data:
        acc = totals.setdefault(kind, [0, 0])
        for i in range(0, ts.size, block):
            acc[0] += len(codec.encode(ts[i : i + block], vs[i : i + block]))
            acc[1] += min(block, ts.size - i)
    return {kind: b / n for kind, (b, n) in totals.items()}


def day_decode_ms(codec: Codec, day: list[Series]) -> float:
    """Worst kind's median time to decode one 5,760-sample (one day) block."""
    worst = 0.0
    for _, ts, vs in day:
        blob = codec.encode(ts, vs)
        check_round_trip(codec, ts, vs, blob)
        runs = []
        for _ in range(15):
            start = time.perf_counter()
            codec.decode(blob, ts.size)
            runs.append(time.perf_counter() - start)
        worst = max(worst, statistics.median(runs))
    return worst * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=720)
    parser.add_argument("--block", type=int, default=120, help="small block size")
    args = parser.parse_args()

    started = time.perf_counter()
    data = make_dataset(args.series, args.samples)
    day_rng = np.random.default_rng(7)
    day = [(k, make_timestamps(day_rng, 5760), make_values(day_rng, k, 5760)) for k, _ in KINDS]
    total = args.series * args.samples
    print(f"{args.series:,} series x {args.samples} samples = {total:,} samples, 15 s interval\n")

    header = (
        f"| codec | B/sample @{args.block} | B/sample @{args.samples} "
        f"| encode Msamples/s | decode Msamples/s | decode 5,760 (ms, worst kind) |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    codecs = all_codecs()
    for codec in codecs:
        small = measure(codec, data, args.block)
        whole = measure(codec, data, args.samples)
        mark = " (default)" if codec.name == DEFAULT_CODEC else ""
        print(
            f"| {codec.name}{mark} | {small['bytes']:.3f} | {whole['bytes']:.3f} "
            f"| {whole['encode'] / 1e6:.2f} | {whole['decode'] / 1e6:.2f} "
            f"| {day_decode_ms(codec, day):.3f} |",
            flush=True,
        )

    subset = data[:2000]
    print(f"\nBytes/sample by series kind, blocks of {args.block} (first 2,000 series):\n")
    kinds = [k for k, _ in KINDS]
    print("| codec | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for codec in codecs:
        per = bytes_by_kind(codec, subset, args.block)
        print(f"| {codec.name} | " + " | ".join(f"{per.get(k, 0):.3f}" for k in kinds) + " |")
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
