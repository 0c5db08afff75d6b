"""Bounds on what may enter the store: sample timestamps and label sizes.

Why a module of its own: every ingest path (remote write, the push
endpoints, StatsD, scraping, imports, rules, the Python API) ends in
``Store.append``, ``Store.backfill`` or ``Store.resolve_series``, so checking
here covers them all with one implementation, and keeps the checks out of
the engine's internals.

Why bound timestamps at all: a single sample at ``-2**62`` ms is a valid
int64, but every background job that aligns work to time (rollup blocks,
retention cutoffs) then spans 146 million years; ``INT64_MIN`` itself
overflows SQLite's INTEGER once a block start is floored below it. The
defaults follow Prometheus and VictoriaMetrics: nothing before the Unix epoch
and nothing more than two days ahead of the clock (VictoriaMetrics' margin).

Why bound labels: one 3 MB label value or 10,000 labels per series are kept
in memory for the series' lifetime, in the index and in every query answer.
The defaults are VictoriaMetrics' (``-maxLabelsPerTimeseries=40``,
``-maxLabelNameLen=256``, ``-maxLabelValueLen=4096``); the metric name is a
label value there, and gets the same default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain

import numpy as np

from agent.model import Labels
from agent.storage.options import REJECT_OUT_OF_BOUNDS, Rejection, StorageOptions

DAY_MS = 86_400_000
# Refusals that get their own message naming the timestamp (the rest share one).
DETAILED = 100


@dataclass(frozen=True, slots=True)
class Bounds:
    """What ``StorageOptions`` holds of the limits; 0 disables a label limit."""

    min_timestamp_ms: int = 0
    max_future_ms: int = 2 * DAY_MS
    max_labels_per_series: int = 40
    max_label_name_length: int = 256
    max_label_value_length: int = 4096
    max_metric_name_length: int = 4096


def format_ms(ms: int) -> str:
    """RFC 3339 for a message, or the raw number when out of datetime's range."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"


def time_window(bounds: Bounds, now_ms: int) -> tuple[int, int]:
    """The inclusive [lo, hi] range of timestamps accepted at ``now_ms``."""
    return bounds.min_timestamp_ms, now_ms + bounds.max_future_ms


def split_timestamps(
    bounds: Bounds, ts: np.ndarray, now_ms: int
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """(mask of accepted samples or None when all are, [(position, reason)] of refused).

    Positions let the caller build its own rejection records; the reason
    names the bound crossed and the timestamp, for the sender.
    """
    lo, hi = time_window(bounds, now_ms)
    bad = (ts < lo) | (ts > hi)
    if not bad.any():
        return None, []
    # Shared texts past the first few: a request of a million ancient samples must
    # not cost a million formatted messages.
    early = f"before limits.min_timestamp {lo} ({format_ms(lo)})"
    late = f"more than limits.max_future ({bounds.max_future_ms} ms) ahead of now"
    shared = {True: "timestamp " + early, False: "timestamp " + late}
    refused: list[tuple[int, str]] = []
    for n, pos in enumerate(np.flatnonzero(bad).tolist()):
        t = int(ts[pos])
        if n >= DETAILED:
            refused.append((pos, shared[t < lo]))
            continue
        why = f"timestamp {t} ({format_ms(t)}) is {early if t < lo else late}"
        if t > hi:
            why += f" ({format_ms(now_ms)})"
        refused.append((pos, why))
    return ~bad, refused


def rejections(sids: np.ndarray, ts: np.ndarray, refused: list[tuple[int, str]]) -> list[Rejection]:
    return [
        Rejection(int(sids[pos]), int(ts[pos]), REJECT_OUT_OF_BOUNDS, why) for pos, why in refused
    ]


def label_problem(bounds: Bounds, labels: Labels) -> str | None:
    """Why a new series' labels are refused (naming limit, label and size), or None."""
    n = len(labels)
    if bounds.max_labels_per_series and n > bounds.max_labels_per_series:
        return f"{n} labels, over limits.max_labels_per_series {bounds.max_labels_per_series}"
    # The usual case in C-level calls only: every name and value under the smallest limit
    # (series creation is a hot path during churn); the loop below says which one is not.
    smallest = min(
        (
            x
            for x in (
                bounds.max_label_name_length,
                bounds.max_label_value_length,
                bounds.max_metric_name_length,
            )
            if x
        ),
        default=0,
    )
    if not smallest or not labels or max(map(len, chain.from_iterable(labels))) <= smallest:
        return None
    for name, value in labels:
        if bounds.max_label_name_length and len(name) > bounds.max_label_name_length:
            return (
                f"label name {name[:40]!r}... is {len(name)} characters, over"
                f" limits.max_label_name_length {bounds.max_label_name_length}"
            )
        if name == "__name__":
            limit, key = bounds.max_metric_name_length, "limits.max_metric_name_length"
            what = "metric name"
        else:
            limit, key = bounds.max_label_value_length, "limits.max_label_value_length"
            what = f"value of label {name!r}"
        if limit and len(value) > limit:
            return f"{what} is {len(value)} characters, over {key} {limit}"
    return None


def from_options(options: StorageOptions) -> Bounds:
    return Bounds(
        min_timestamp_ms=options.min_timestamp_ms,
        max_future_ms=options.max_future_ms,
        max_labels_per_series=options.max_labels_per_series,
        max_label_name_length=options.max_label_name_length,
        max_label_value_length=options.max_label_value_length,
        max_metric_name_length=options.max_metric_name_length,
    )
