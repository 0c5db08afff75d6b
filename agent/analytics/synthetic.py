"""Synthetic series with planted anomalies, and how to score a detector against them.

Shared by the tests and ``benchmarks/bench_anomaly.py`` so both report the
same figures the same way. Every scenario is a daily-seasonal signal with
noise (deterministic for a seed), plus one kind of planted event:

* ``spike``: single samples far off (6 to 10 noise standard deviations, either way);
* ``level_shift``: the mean jumps by 8 noise standard deviations and stays there; the *onset* (its
  first few samples) is the event, and the samples after it, while any
  rolling baseline adapts, are neither hits nor false positives;
* ``seasonal_break``: for two daytime hours (another slot each day) the
  value stays at its night level, well inside the series' overall range, so
  only a detector that knows the season can see it.

Scoring is per event (recall: the share of events with at least one flagged
sample inside it) and per sample outside events and their grace spans
(false-positive rate: the share of normal samples flagged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.query.timezone import DAY_MS

SCENARIOS = ("spike", "level_shift", "seasonal_break")


@dataclass
class Planted:
    """A series and its ground truth: ``events`` and ``grace`` are [start, stop) index spans."""

    timestamps: np.ndarray
    values: np.ndarray
    events: list[tuple[int, int]]
    grace: list[tuple[int, int]]
    noise_sigma: float


@dataclass
class DetectionScore:
    events: int
    detected: int
    normal: int
    false_positives: int

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else math.nan

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.normal if self.normal else math.nan

    def __str__(self) -> str:
        return (
            f"recall {self.recall:.2f} ({self.detected}/{self.events} events), "
            f"false-positive rate {self.false_positive_rate:.4f} "
            f"({self.false_positives}/{self.normal} normal samples)"
        )


def seasonal_signal(
    t_ms: np.ndarray, rng: np.random.Generator, *, base: float = 100.0, amp: float = 40.0
) -> np.ndarray:
    """A working-hours-like daily curve: low at night, a broad peak around 14:00 UTC."""
    hours = (t_ms % DAY_MS) / 3_600_000
    return base + amp * np.exp(-(((hours - 14.0) / 3.5) ** 2))


def planted(
    scenario: str,
    *,
    days: int = 7,
    interval_s: int = 300,
    seed: int = 0,
    noise: float = 2.0,
    events: int = 6,
    start_ms: int = 1_700_006_400_000,  # a midnight UTC
) -> Planted:
    """One scenario's series; events are planted after the first three days (the history)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    rng = np.random.default_rng(seed)
    step = interval_s * 1000
    n = days * DAY_MS // step
    t = start_ms + np.arange(n, dtype=np.int64) * step
    v = seasonal_signal(t, rng) + rng.normal(0.0, noise, n)
    per_day = DAY_MS // step
    first = 3 * per_day  # seasonal baselines need history; so do rolling windows
    ev: list[tuple[int, int]] = []
    grace: list[tuple[int, int]] = []
    if scenario == "spike":
        spots = np.sort(rng.choice(np.arange(first, n - 1), size=events, replace=False))
        for i in spots.tolist():
            v[i] += rng.choice([-1.0, 1.0]) * rng.uniform(6.0, 10.0) * noise
            ev.append((i, i + 1))
            grace.append((i + 1, i + 2))  # a detector may mark the echo of a spike
    elif scenario == "level_shift":
        # one shift per day, alternately up and down, at a random time of day
        for d in range(min(events, days - 3)):
            i = first + d * per_day + int(rng.integers(per_day // 4, 3 * per_day // 4))
            sign = 1.0 if d % 2 == 0 else -1.0
            v[i:] += sign * 8.0 * noise
            onset = max(2, per_day // 96)  # ~15 minutes
            ev.append((i, i + onset))
            grace.append((i + onset, min(n, i + per_day // 2)))
    else:  # seasonal_break: two hours of the daytime curve are missing, a different slot daily
        hour = per_day // 24
        for d in range(min(events, days - 3)):
            a = first + d * per_day + (11, 13, 15, 12, 14)[d % 5] * hour
            b = a + 2 * hour
            trough = float(seasonal_signal(np.array([0]), rng)[0])
            v[a:b] = trough + rng.normal(0.0, noise, b - a)
            ev.append((a, b))
            grace.append((b, b + hour))
            # later days' 'same time in previous days' still contain the break
            for k in (1, 2, 3):
                grace.append((a + k * per_day, b + k * per_day))
    return Planted(t, v, ev, grace, noise)


def evaluate(flags: np.ndarray, truth: Planted, *, score_from: int = 0) -> DetectionScore:
    """Event recall and normal-sample false-positive rate of ``flags`` (one per sample).

    Samples before ``score_from`` (the detector's warm-up) count neither way.
    """
    flags = np.asarray(flags, dtype=bool)
    n = flags.size
    special = np.zeros(n, dtype=bool)
    special[:score_from] = True
    detected = 0
    for a, b in truth.events:
        special[a:b] = True
        detected += bool(flags[a:b].any())
    for a, b in truth.grace:
        special[a:b] = True
    normal = ~special
    return DetectionScore(
        len(truth.events), detected, int(normal.sum()), int((flags & normal).sum())
    )
