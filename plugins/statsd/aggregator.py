"""Aggregation of StatsD lines between flushes.

Every line updates one in-memory metric; a flush reads all of them at once
(:meth:`Aggregator.collect`) and the ingestor writes the result with one
timestamp. What each StatsD type becomes:

- ``c`` counter: a Prometheus counter, the running total of ``value / rate``
  since this process started. It is never reset between flushes, so a
  restart of tsagent looks like a counter reset, which ``rate()`` handles.
- ``g`` gauge: the last value; ``+N`` / ``-N`` add to it (from 0 when new).
- ``ms``, ``h``, ``d`` timers: a summary (``{quantile=...}`` over the
  observations of the last flush interval, plus cumulative ``_sum`` and
  ``_count``) or a histogram (cumulative ``_bucket{le=...}``, ``_sum`` and
  ``_count``). ``ms`` values are converted to seconds unless configured
  otherwise; a sample rate weights ``_count``, ``_sum`` and the buckets.
- ``s`` set: the number of distinct members seen in the interval, as a gauge.

The per-line path is :meth:`Aggregator.feed`. It never parses the same
name/type/rate/tags twice: the bytes of a line minus its value form a key,
and the key's parsed, mapped, resolved metric is cached, so a known line
costs two ``find``s, a dict lookup and a ``float()``.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from agent.plugin_api import METRIC_NAME, Labels, make_labels
from plugins.statsd.mapper import Mapper
from plugins.statsd.parser import (
    COUNTER,
    EMPTY_NAME,
    GAUGE,
    INVALID_VALUE,
    LINE_TOO_LONG,
    MISSING_COLON,
    MISSING_TYPE,
    NEGATIVE_COUNTER,
    SET,
    TIMER,
    Malformed,
    parse_key,
    parse_value,
)

# Dropped-line reasons (tsagent_statsd_dropped_lines_total).
DROP_MAPPING = "mapping_drop"
DROP_TYPE_CONFLICT = "type_conflict"
DROP_METRIC_LIMIT = "metric_limit"

_isfinite = math.isfinite


def _with(labels: Labels, name: str, extra: tuple[str, str] | None = None) -> Labels:
    """``labels`` with another metric name and maybe one more label."""
    pairs = [(k, v) for k, v in labels if k != METRIC_NAME]
    pairs.append((METRIC_NAME, name))
    if extra is not None:
        pairs.append(extra)
    return make_labels(pairs)


class Metric:
    """One aggregated StatsD metric (one label set); it may export several series."""

    __slots__ = ("labels", "last_seen", "seen", "series", "sids", "ttl")

    def __init__(self, labels: Labels, ttl: float, now: float) -> None:
        self.labels = labels
        self.ttl = ttl
        self.seen = True
        self.last_seen = now
        self.sids: list[int] | None = None  # resolved by the ingestor at its first flush
        self.series: list[Labels] = [labels]

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        """Apply one value as sent; raises ValueError (or Malformed) when unusable."""
        raise NotImplementedError

    def values(self) -> list[float | None]:
        """This interval's values, aligned with ``series``; None skips a series once."""
        raise NotImplementedError


class CounterMetric(Metric):
    __slots__ = ("total",)

    def __init__(self, labels: Labels, ttl: float, now: float) -> None:
        super().__init__(labels, ttl, now)
        self.total = 0.0

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        v = float(raw)
        if not v >= 0.0 or not _isfinite(v):
            raise Malformed(NEGATIVE_COUNTER if v < 0 else INVALID_VALUE)
        self.total += v * weight
        self.seen = True

    def values(self) -> list[float | None]:
        return [self.total]


class GaugeMetric(Metric):
    __slots__ = ("value",)

    def __init__(self, labels: Labels, ttl: float, now: float) -> None:
        super().__init__(labels, ttl, now)
        self.value = 0.0

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        v = float(raw)
        if not _isfinite(v):
            raise Malformed(INVALID_VALUE)
        if raw[0] in b"+-":  # a signed value is a delta, as in StatsD
            self.value += v
        else:
            self.value = v
        self.seen = True

    def values(self) -> list[float | None]:
        return [self.value]


class SetMetric(Metric):
    __slots__ = ("members",)

    def __init__(self, labels: Labels, ttl: float, now: float) -> None:
        super().__init__(labels, ttl, now)
        self.members: set[bytes] = set()

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        if not raw:
            raise Malformed(INVALID_VALUE)
        if b":" in raw:  # DogStatsD multi-value
            parts = raw.split(b":")
            if not all(parts):
                raise Malformed(INVALID_VALUE)
            self.members.update(parts)
        else:
            self.members.add(raw)
        self.seen = True

    def values(self) -> list[float | None]:
        n = len(self.members)
        self.members = set()
        return [float(n)]


class SummaryMetric(Metric):
    """Quantiles of the last interval (nearest rank) over a bounded reservoir."""

    __slots__ = ("cap", "count", "n_obs", "obs", "quantiles", "sum")

    def __init__(
        self, labels: Labels, ttl: float, now: float, quantiles: Sequence[float], cap: int
    ) -> None:
        super().__init__(labels, ttl, now)
        self.quantiles = tuple(quantiles)
        self.cap = cap
        self.obs: list[float] = []
        self.n_obs = 0
        self.sum = 0.0
        self.count = 0.0
        name = dict(labels)[METRIC_NAME]
        self.series = [_with(labels, name, ("quantile", floatToGoString(q))) for q in quantiles]
        self.series += [_with(labels, name + "_sum"), _with(labels, name + "_count")]

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        v = float(raw) / divisor
        if not _isfinite(v):
            raise Malformed(INVALID_VALUE)
        self.sum += v * weight
        self.count += weight
        n = self.n_obs
        self.n_obs = n + 1
        if n < self.cap:
            self.obs.append(v)
        else:  # reservoir sampling keeps the quantiles unbiased under load
            j = int(random.random() * (n + 1))
            if j < self.cap:
                self.obs[j] = v
        self.seen = True

    def values(self) -> list[float | None]:
        out: list[float | None]
        if self.obs:
            obs = sorted(self.obs)
            n = len(obs)
            out = [obs[max(0, math.ceil(q * n) - 1)] for q in self.quantiles]
        else:
            out = [None] * len(self.quantiles)
        self.obs = []
        self.n_obs = 0
        out.append(self.sum)
        out.append(self.count)
        return out


class HistogramMetric(Metric):
    """Cumulative buckets, like a Prometheus client library histogram."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, labels: Labels, ttl: float, now: float, buckets: Sequence[float]) -> None:
        super().__init__(labels, ttl, now)
        self.bounds = list(buckets)
        self.counts = [0.0] * (len(self.bounds) + 1)  # the last one is above every bound
        self.sum = 0.0
        self.count = 0.0
        name = dict(labels)[METRIC_NAME]
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.series = [_with(labels, name + "_bucket", ("le", le)) for le in les]
        self.series += [_with(labels, name + "_sum"), _with(labels, name + "_count")]

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        v = float(raw) / divisor
        if not _isfinite(v):
            raise Malformed(INVALID_VALUE)
        self.counts[bisect_left(self.bounds, v)] += weight  # le means value <= bound
        self.sum += v * weight
        self.count += weight
        self.seen = True

    def values(self) -> list[float | None]:
        out: list[float | None] = []
        running = 0.0
        for c in self.counts:
            running += c
            out.append(running)
        out.append(self.sum)
        out.append(self.count)
        return out


class _Drop:
    """Stands in for a metric when lines of a key are to be counted and discarded."""

    __slots__ = ("counts", "reason")

    def __init__(self, counts: dict[str, int], reason: str) -> None:
        self.counts = counts
        self.reason = reason

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        self.counts[self.reason] = self.counts.get(self.reason, 0) + 1


class _CountTags:
    """Wraps a metric for keys that carried unusable tags, to count them per line."""

    __slots__ = ("agg", "bad", "metric")

    def __init__(self, agg: Aggregator, metric: Metric, bad: int) -> None:
        self.agg = agg
        self.metric = metric
        self.bad = bad

    def add(self, raw: bytes, weight: float, divisor: float) -> None:
        self.metric.add(raw, weight, divisor)
        self.agg.dropped_tags += self.bad


Target = Metric | _Drop | _CountTags
Entry = tuple[Target, float, float]  # (target, weight = 1/rate, divisor of the value)

Snapshot = tuple[Metric, list[float | None]]  # a metric and its values at a flush
Report = Callable[[str, str, bytes], None]  # (category, reason, line)


@dataclass
class Settings:
    """Defaults that mapping rules may override, and the safety limits."""

    timer_type: str = "summary"
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    ttl: float = 0.0
    ms_divisor: float = 1000.0
    max_metrics: int = 100_000
    summary_max_samples: int = 10_000
    key_cache_size: int = 200_000
    max_line_bytes: int = 65_536


class Aggregator:
    """Parses lines into metrics; holds them until :meth:`collect`."""

    def __init__(
        self,
        mapper: Mapper,
        settings: Settings | None = None,
        report: Report | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.mapper = mapper
        self.settings = settings or Settings()
        self.report = report
        self.clock = clock or time.monotonic
        self.cache: dict[bytes, Entry] = {}
        self.metrics: dict[Labels, Metric] = {}
        self.malformed: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.dropped_tags = 0
        self.expired = 0
        self._drops = {
            r: _Drop(self.dropped, r) for r in (DROP_MAPPING, DROP_TYPE_CONFLICT, DROP_METRIC_LIMIT)
        }

    def set_mapper(self, mapper: Mapper, settings: Settings) -> None:
        """New rules (a reload): existing metrics stay, new keys map anew."""
        self.mapper = mapper
        self.settings = settings
        self.cache.clear()

    # --- the hot path -----------------------------------------------------------------

    def feed(self, data: bytes) -> int:
        """Apply every line of ``data`` (newline-separated); return how many were well formed.

        Never raises for any input: an unusable line is counted by reason,
        reported, and skipped, and the next line is processed as usual.
        """
        cache = self.cache
        max_line = self.settings.max_line_bytes
        ok = 0
        for line in data.split(b"\n"):
            if not line:
                continue
            c = line.find(b":")
            b = line.find(b"|", c + 1)
            if c <= 0 or b < 0 or len(line) > max_line:
                self._bad_shape(line, c, b)
                continue
            entry = cache.get(line[:c] + line[b:])
            if entry is None:
                entry = self._resolve(line, c, b)
                if entry is None:
                    continue
            try:
                entry[0].add(line[c + 1 : b], entry[1], entry[2])
            except ValueError as exc:
                if not self._multi_value(entry, line, c, b, exc):
                    continue
            ok += 1
        return ok

    # --- slow paths -------------------------------------------------------------------

    def count_malformed(self, reason: str, line: bytes) -> None:
        self.malformed[reason] = self.malformed.get(reason, 0) + 1
        if self.report is not None:
            self.report("malformed", reason, line)

    def _bad_shape(self, line: bytes, c: int, b: int) -> None:
        if not line.strip():
            return  # blank lines (a trailing "\r", padding) are not errors
        if len(line) > self.settings.max_line_bytes:
            self.count_malformed(LINE_TOO_LONG, line)
        elif c < 0:
            self.count_malformed(MISSING_COLON, line)
        elif c == 0:
            self.count_malformed(EMPTY_NAME, line)
        else:
            self.count_malformed(MISSING_TYPE, line)

    def _multi_value(self, entry: Entry, line: bytes, c: int, b: int, exc: ValueError) -> bool:
        """``name:1:2:3|c`` (DogStatsD), else count the line's value as malformed.

        Every value is validated before any is applied, so a bad one leaves
        the metric untouched.
        """
        raw = line[c + 1 : b]
        target = entry[0]
        if b":" in raw and not isinstance(target, _Drop):
            metric = target.metric if isinstance(target, _CountTags) else target
            kind = _KIND_OF[type(metric)]
            parts = raw.split(b":")
            try:
                for part in parts:
                    parse_value(kind, part)
            except Malformed as bad:
                self.count_malformed(bad.reason, line)
                return False
            for part in parts:
                metric.add(part, entry[1], entry[2])
            if isinstance(target, _CountTags):
                self.dropped_tags += target.bad
            return True
        self.count_malformed(getattr(exc, "reason", INVALID_VALUE), line)
        return False

    def _resolve(self, line: bytes, c: int, b: int) -> Entry | None:
        """Parse, map and find the metric of a key not seen before; cache the result."""
        try:
            key = parse_key(line[:c], line[b:])
            for raw in line[c + 1 : b].split(b":"):  # no metric is made for a bad first line
                parse_value(key.kind, raw)
        except Malformed as exc:
            self.count_malformed(exc.reason, line)
            return None
        s = self.settings
        mapped = self.mapper.map(key.name, key.kind)
        entry: Entry
        if mapped is None:
            entry = (self._drops[DROP_MAPPING], 1.0, 1.0)
        else:
            pairs = dict(key.tags)
            pairs.update(mapped.labels)  # the rule's labels win over the sender's tags
            pairs[METRIC_NAME] = mapped.name
            labels = make_labels(pairs)
            ttl = s.ttl if mapped.ttl is None else mapped.ttl
            cls: type[Metric]
            if key.kind == TIMER:
                timer_type = mapped.timer_type or s.timer_type
                cls = HistogramMetric if timer_type == "histogram" else SummaryMetric
            else:
                cls = _CLASS_OF[key.kind]
            metric = self.metrics.get(labels)
            target: Target
            if metric is None and len(self.metrics) >= s.max_metrics:
                target = self._drops[DROP_METRIC_LIMIT]
                if self.report is not None:
                    self.report("dropped", DROP_METRIC_LIMIT, line)
            elif metric is not None and type(metric) is not cls:
                target = self._drops[DROP_TYPE_CONFLICT]
                if self.report is not None:
                    self.report("dropped", DROP_TYPE_CONFLICT, line)
            else:
                if metric is None:
                    now = self.clock()
                    if cls is SummaryMetric:
                        q = mapped.quantiles if mapped.quantiles is not None else s.quantiles
                        metric = SummaryMetric(labels, ttl, now, q, s.summary_max_samples)
                    elif cls is HistogramMetric:
                        bk = mapped.buckets if mapped.buckets is not None else s.buckets
                        metric = HistogramMetric(labels, ttl, now, bk)
                    else:
                        metric = cls(labels, ttl, now)
                    self.metrics[labels] = metric
                target = _CountTags(self, metric, key.bad_tags) if key.bad_tags else metric
            weight = 1.0 / key.rate if key.kind in (COUNTER, TIMER) else 1.0
            divisor = s.ms_divisor if key.milliseconds else 1.0
            entry = (target, weight, divisor)
        if len(self.cache) >= s.key_cache_size:
            self.cache.clear()  # crude, O(1) amortised; live keys come straight back
        self.cache[line[:c] + line[b:]] = entry
        return entry

    # --- flushing -------------------------------------------------------------------

    def collect(self, now: float | None = None) -> tuple[list[Snapshot], list[Metric]]:
        """Snapshot every metric's values and remove the expired ones.

        Returns (live metrics with their values, expired metrics). Runs
        without awaiting, so no line can slip in between reading a set or a
        summary interval and resetting it.
        """
        now = self.clock() if now is None else now
        live: list[Snapshot] = []
        expired: list[Metric] = []
        for m in self.metrics.values():
            if m.seen:
                m.seen = False
                m.last_seen = now
            elif m.ttl and now - m.last_seen >= m.ttl:
                expired.append(m)
                continue
            live.append((m, m.values()))
        if expired:
            for m in expired:
                del self.metrics[m.labels]
            self.expired += len(expired)
            self.cache.clear()  # cached keys may point at the removed metrics
        return live, expired


_CLASS_OF: dict[str, type[Metric]] = {
    COUNTER: CounterMetric,
    GAUGE: GaugeMetric,
    SET: SetMetric,
}
_KIND_OF: dict[type, str] = {
    CounterMetric: COUNTER,
    GaugeMetric: GAUGE,
    SetMetric: SET,
    SummaryMetric: TIMER,
    HistogramMetric: TIMER,
}
