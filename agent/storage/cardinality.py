"""Cardinality limits: caps on series per metric, values per label, active series.

A label that explodes (a request id, a user id) creates a new series per
value and can take a small agent down. Limits are checked when a series is
first created, so series that already exist keep flowing; only new ones over
a cap are refused, with a message naming the metric, the label and the rule,
which ingestors pass back to their senders.

Limits come from two places: the config (``limits``) and the Python API
(:meth:`Store.limit_cardinality`), which persists them in SQLite so they
survive a restart. Counts are kept incrementally on the event loop; the check
and the reservation happen without an ``await`` between them, so concurrent
ingestors cannot both slip under a cap.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.model import METRIC_NAME, Labels
from agent.storage.db import MIGRATIONS

CONFIG_SOURCE = "config"
API_SOURCE = "api"


@MIGRATIONS(name="m010_cardinality_limits")
def m_cardinality_limits(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE cardinality_limits ("
        " metric TEXT NOT NULL, label TEXT NOT NULL, max_values INTEGER NOT NULL,"
        " created_at_ms INTEGER NOT NULL, PRIMARY KEY (metric, label))"
    )


@dataclass(frozen=True)
class LimitRule:
    """One cap. ``label`` empty: at most ``max_values`` series for each matching metric.

    ``metric`` is a regex matched against the whole metric name (config rules)
    or an exact name (API rules, stored escaped).
    """

    metric: str
    label: str
    max_values: int
    origin: str  # "config limits.rules[3]" or "api"

    @property
    def pattern(self) -> re.Pattern[str]:
        return _compile(self.metric)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compile(regex: str) -> re.Pattern[str]:
    pat = _PATTERNS.get(regex)
    if pat is None:
        pat = _PATTERNS[regex] = re.compile(f"(?:{regex})\\Z")
    return pat


@dataclass
class CardinalityOptions:
    max_active_series: int = 0  # 0: no cap
    active_window_ms: int = 3600_000
    rules: list[LimitRule] = field(default_factory=list)


class Limiter:
    def __init__(
        self,
        options: CardinalityOptions,
        series_of_metric: Callable[[str], np.ndarray],
        labels_of: Callable[[int], Labels],
        max_t: Callable[[], np.ndarray],
    ) -> None:
        self.options = options
        self.api_rules: list[LimitRule] = []
        self._series_of_metric = series_of_metric  # metric -> np.ndarray ids
        self._labels_of = labels_of  # id -> Labels
        self._max_t = max_t  # () -> np.ndarray (head's newest sample time per id)
        self._series_per_metric: dict[str, int] = {}
        self._values: dict[tuple[str, str], dict[str, int]] = {}
        self._recent: deque[tuple[int, Labels]] = deque()  # (created wall ms, labels)
        self._recent_ids: deque[tuple[int, int]] = deque()  # (created wall ms, id)
        self.rejected: dict[str, int] = {}

    # --- rules ---------------------------------------------------------------------

    @property
    def rules(self) -> list[LimitRule]:
        return [*self.api_rules, *self.options.rules]

    @property
    def enabled(self) -> bool:
        return bool(self.options.max_active_series or self.options.rules or self.api_rules)

    def load_api_rules(self, conn: sqlite3.Connection) -> None:
        self.api_rules = [
            LimitRule(re.escape(metric), label, int(limit), API_SOURCE)
            for metric, label, limit in conn.execute(
                "SELECT metric, label, max_values FROM cardinality_limits ORDER BY rowid"
            )
        ]

    @staticmethod
    def save_api_rule(conn: sqlite3.Connection, metric: str, label: str, max_values: int) -> None:
        conn.execute(
            "INSERT INTO cardinality_limits(metric, label, max_values, created_at_ms)"
            " VALUES (?, ?, ?, ?) ON CONFLICT(metric, label)"
            " DO UPDATE SET max_values = excluded.max_values",
            (metric, label, max_values, int(time.time() * 1000)),
        )

    def set_api_rule(self, metric: str, label: str, max_values: int) -> None:
        rule = LimitRule(re.escape(metric), label, max_values, API_SOURCE)
        self.api_rules = [
            r for r in self.api_rules if (r.metric, r.label) != (rule.metric, label)
        ] + [rule]

    # --- counting ------------------------------------------------------------------

    def _metric_count(self, metric: str) -> int:
        n = self._series_per_metric.get(metric)
        if n is None:
            n = self._series_per_metric[metric] = int(self._series_of_metric(metric).size)
        return n

    def _value_counts(self, metric: str, label: str) -> dict[str, int]:
        key = (metric, label)
        counts = self._values.get(key)
        if counts is None:
            counts = {}
            for sid in self._series_of_metric(metric).tolist():
                value = dict(self._labels_of(sid)).get(label)
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1
            self._values[key] = counts
        return counts

    def active_series(self, now_ms: int) -> int:
        """Series with a sample (by timestamp) inside the window, plus those just created."""
        cutoff = now_ms - self.options.active_window_ms
        max_t = self._max_t()
        active = int(np.count_nonzero(max_t >= cutoff))
        recent = self._recent_ids
        while recent and recent[0][0] < cutoff:
            recent.popleft()
        for _, sid in recent:
            if sid >= max_t.size or max_t[sid] < cutoff:
                active += 1
        # Reserved but not yet created series count too.
        return active + len(self._recent)

    # --- the check -------------------------------------------------------------------

    def admit(self, wanted: list[Labels]) -> dict[int, str]:
        """Decide for new label sets; returns {position: reason} for those refused.

        The admitted ones are counted at once (reserved), before any await.
        """
        refused: dict[int, str] = {}
        if not self.enabled:
            return refused
        now = int(time.time() * 1000)
        cap = self.options.max_active_series
        active = self.active_series(now) if cap else 0
        rules = self.rules
        for pos, labels in enumerate(wanted):
            lab = dict(labels)
            metric = lab.get(METRIC_NAME, "")
            reason = None
            if cap and active >= cap:
                reason = (
                    f"cardinality limit: {active} active series reached "
                    f"(limits.max_active_series={cap})"
                )
                self._count("limits.max_active_series")
            else:
                reason = self._check_rules(rules, metric, lab)
            if reason is not None:
                refused[pos] = reason
                continue
            active += 1
            self._reserve(metric, lab, now, labels)
        return refused

    def admit_all_or_nothing(self, wanted: list[Labels]) -> dict[int, str]:
        """:meth:`admit`, except that when any is refused, none stays reserved."""
        if not self.enabled:
            return {}
        before = len(self._recent)
        refused = self.admit(wanted)
        if refused:
            for pos in reversed(range(len(wanted))):
                if pos not in refused:
                    self._unreserve(dict(wanted[pos]))
            assert len(self._recent) == before
        return refused

    def release(self, wanted: Sequence[Labels]) -> None:
        """Undo what :meth:`admit` reserved for these label sets, exactly.

        For an all-or-nothing import that was admitted but then aborted (or
        found some of its series created by someone else meanwhile): other
        admissions may have come in between, so the reservations are found by
        their labels rather than popped from the end.
        """
        if not self.enabled or not wanted:
            return
        for labels in wanted:
            self._uncount(dict(labels))
        gone = set(wanted)
        self._recent = deque(x for x in self._recent if x[1] not in gone)

    def _unreserve(self, lab: dict[str, str]) -> None:
        """Undo the newest :meth:`_reserve` (of these labels)."""
        self._uncount(lab)
        self._recent.pop()

    def _uncount(self, lab: dict[str, str]) -> None:
        metric = lab.get(METRIC_NAME, "")
        self._series_per_metric[metric] = max(0, self._metric_count(metric) - 1)
        for (m, label), counts in self._values.items():
            if m == metric and label in lab:
                left = counts.get(lab[label], 0) - 1
                if left > 0:
                    counts[lab[label]] = left
                else:
                    counts.pop(lab[label], None)

    def _check_rules(self, rules: list[LimitRule], metric: str, lab: dict[str, str]) -> str | None:
        for rule in rules:
            if not rule.pattern.match(metric):
                continue
            if not rule.label:
                have = self._metric_count(metric)
                if have >= rule.max_values:
                    self._count(rule.origin)
                    return (
                        f'cardinality limit: metric "{metric}" already has {have} series '
                        f"(max {rule.max_values}, {rule.origin})"
                    )
                continue
            value = lab.get(rule.label)
            if value is None:
                continue
            counts = self._value_counts(metric, rule.label)
            if value not in counts and len(counts) >= rule.max_values:
                self._count(rule.origin)
                return (
                    f'cardinality limit: label "{rule.label}" of metric "{metric}" already has '
                    f"{len(counts)} values (max {rule.max_values}, {rule.origin})"
                )
        return None

    def _count(self, origin: str) -> None:
        self.rejected[origin] = self.rejected.get(origin, 0) + 1

    def _reserve(self, metric: str, lab: dict[str, str], now: int, labels: Labels) -> None:
        self._series_per_metric[metric] = self._metric_count(metric) + 1
        for (m, label), counts in self._values.items():
            if m == metric and label in lab:
                counts[lab[label]] = counts.get(lab[label], 0) + 1
        self._recent.append((now, labels))

    def created(self, ids: Iterable[int]) -> None:
        """Series reserved by :meth:`admit` now exist; they count through the index now.

        Only the active-series cap needs to know when each series was created
        (until its first sample counts it); without one, nothing is kept per series.
        """
        track = bool(self.options.max_active_series)
        if not self._recent and not track:
            return
        now = int(time.time() * 1000)
        for sid in ids:
            if self._recent:
                self._recent.popleft()
            if track:
                self._recent_ids.append((now, sid))

    def forget_reservations(self, count: int) -> None:
        """Creation failed: release what :meth:`admit` reserved (counts may over-estimate)."""
        for _ in range(min(count, len(self._recent))):
            self._recent.pop()


@dataclass
class CardinalityStats:
    """Prometheus's ``/api/v1/status/tsdb`` figures, from the in-memory index."""

    num_series: int
    series_count_by_metric_name: list[tuple[str, int]]
    label_value_count_by_label_name: list[tuple[str, int]]
    series_count_by_label_value_pair: list[tuple[str, int]]
    memory_in_bytes_by_label_name: list[tuple[str, int]]


def top_stats(
    names: list[str],
    value_counts: Callable[[str], list[tuple[str, int]]],
    num_series: int,
    limit: int = 10,
) -> CardinalityStats:
    """Top-N tables; one pass over the postings (linear in distinct label pairs)."""
    by_metric = sorted(value_counts(METRIC_NAME), key=lambda kv: (-kv[1], kv[0]))[:limit]
    values_per_name: list[tuple[str, int]] = []
    bytes_per_name: list[tuple[str, int]] = []
    pairs: list[tuple[str, int]] = []
    for name in names:
        counts = value_counts(name)
        values_per_name.append((name, len(counts)))
        bytes_per_name.append((name, sum(len(v.encode()) for v, _ in counts)))
        top = sorted(counts, key=lambda kv: -kv[1])[:limit]
        pairs.extend((f"{name}={v}", n) for v, n in top)
    order = lambda kv: (-kv[1], kv[0])  # noqa: E731 - a sort key used three times
    return CardinalityStats(
        num_series=num_series,
        series_count_by_metric_name=by_metric,
        label_value_count_by_label_name=sorted(values_per_name, key=order)[:limit],
        series_count_by_label_value_pair=sorted(pairs, key=order)[:limit],
        memory_in_bytes_by_label_name=sorted(bytes_per_name, key=order)[:limit],
    )
