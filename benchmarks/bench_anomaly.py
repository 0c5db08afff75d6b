"""Recall, false-positive rate and speed of the anomaly detectors on planted anomalies.

Scenarios come from :mod:`agent.analytics.synthetic` (the same the tests use):
a week of 5-minute samples of a daily curve with noise, and either spikes,
level shifts or "seasonal breaks" (two daytime hours stuck at the night level).
Each method runs with its default window and with a tuned one, at the given
threshold, over several seeds; the figures are totals over the seeds.

Run: ``python benchmarks/bench_anomaly.py [--seeds 10] [--threshold 3.5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from zoneinfo import ZoneInfo

from agent.analytics.anomaly import score_series
from agent.analytics.synthetic import SCENARIOS, evaluate, planted

CONFIGS = [
    ("zscore", None),
    ("zscore", "1h"),
    ("mad", None),
    ("mad", "2h"),
    ("seasonal", None),
]


def run(seeds: int, threshold: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    utc = ZoneInfo("UTC")
    for scenario in SCENARIOS:
        for method, window in CONFIGS:
            detected = events = fps = normal = samples = 0
            elapsed = 0.0
            for seed in range(seeds):
                p = planted(scenario, seed=seed)
                started = time.perf_counter()
                s = score_series(
                    p.timestamps,
                    p.values,
                    method=method,
                    threshold=threshold,
                    window=window,
                    period="1d",
                    tz=utc,
                )
                elapsed += time.perf_counter() - started
                score = evaluate(s.is_anomaly, p, score_from=3 * 288)
                detected += score.detected
                events += score.events
                fps += score.false_positives
                normal += score.normal
                samples += len(s)
            rows.append(
                {
                    "scenario": scenario,
                    "method": method,
                    "window": window or "60 samples",
                    "recall": detected / events,
                    "false_positive_rate": fps / normal,
                    "events": events,
                    "samples_per_second": samples / elapsed if elapsed else 0.0,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=3.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.seeds, args.threshold)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"threshold {args.threshold}, {args.seeds} seeds, 7 days of 5-minute samples each")
    head = ("scenario", "method", "window", "recall", "FP rate", "samples/s")
    print("{:<15} {:<9} {:<11} {:>7} {:>8} {:>11}".format(*head))
    for r in rows:
        print(
            f"{r['scenario']:<15} {r['method']:<9} {r['window']:<11} {r['recall']:>7.2f}"
            f" {r['false_positive_rate']:>8.4f} {r['samples_per_second']:>11,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
