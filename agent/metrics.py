"""The agent's own metrics, served on ``/metrics``.

Each application gets a private ``CollectorRegistry`` (tests stay isolated,
two agents in one process do not collide). Figures the store already keeps
(series, head size, flushes) are read at scrape time by a custom collector
instead of being mirrored into gauges on every write.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from agent import __version__


class AgentMetrics:
    """Counters and histograms updated by the core and by plugins."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples_ingested = Counter(
            "tsagent_samples_ingested",
            "Samples accepted and made durable, by ingest source.",
            ["source"],
            registry=r,
        )
        self.samples_rejected = Counter(
            "tsagent_samples_rejected",
            "Samples refused, by ingest source and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.http_duration = Histogram(
            "tsagent_http_request_duration_seconds",
            "HTTP request latency by route and status code.",
            ["handler", "method", "code"],
            registry=r,
        )
        self.plugin_errors = Counter(
            "tsagent_plugin_errors",
            "Errors raised by plugins, by plugin and stage.",
            ["plugin", "stage"],
            registry=r,
        )
        self.config_reloads = Counter(
            "tsagent_config_reloads",
            "Configuration reloads, by result.",
            ["result"],
            registry=r,
        )
        self.build_info = Gauge(
            "tsagent_build_info",
            "Always 1; labels carry the version.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class StatsCollector(Collector):
    """Turns a ``stats()`` callable into metric families at scrape time.

    ``spec`` maps a stats attribute to (metric name, help, kind) where kind is
    ``gauge`` or ``counter`` (``counter:rule`` names the label of a dict-valued
    attribute; ``reason`` by default); ``summaries`` maps a metric name to (help,
    count attribute, sum attribute), for durations the store times itself.
    """

    def __init__(
        self,
        stats: Callable[[], Any],
        spec: dict[str, tuple[str, str, str]],
        summaries: dict[str, tuple[str, str, str]] | None = None,
    ) -> None:
        self._stats = stats
        self._spec = spec
        self._summaries = summaries or {}

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for attr, (name, help_text, kind) in self._spec.items():
            value = getattr(stats, attr, None)
            if value is None:
                continue
            kind, _, label = kind.partition(":")
            if isinstance(value, dict):
                label = label or "reason"
                fam: Metric
                if kind == "counter":
                    fam = CounterMetricFamily(name, help_text, labels=[label])
                else:
                    fam = GaugeMetricFamily(name, help_text, labels=[label])
                for key, v in sorted(value.items()):
                    fam.add_metric([str(key)], float(v))
                yield fam
            elif kind == "counter":
                yield CounterMetricFamily(name, help_text, value=float(value))
            else:
                yield GaugeMetricFamily(name, help_text, value=float(value))
        for name, (help_text, count_attr, sum_attr) in self._summaries.items():
            yield SummaryMetricFamily(
                name,
                help_text,
                count_value=int(getattr(stats, count_attr)),
                sum_value=float(getattr(stats, sum_attr)),
            )


class CardinalityCollector(Collector):
    """Top metrics, label names and label pairs by series count, for spotting explosions.

    Recomputed at most every ``ttl`` seconds: the pass is linear in the number
    of distinct label pairs, too much to repeat on every scrape of a big index.
    """

    def __init__(self, store: Callable[[], Any], ttl: float = 60.0, limit: int = 10) -> None:
        self._store = store
        self._ttl = ttl
        self._limit = limit
        self._cached: tuple[float, Any] | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._ttl:
            self._cached = (now, store.cardinality_stats(self._limit))
        stats = self._cached[1]
        tables = (
            (
                "tsagent_top_series_by_metric",
                "Metrics with the most series.",
                "metric",
                stats.series_count_by_metric_name,
            ),
            (
                "tsagent_top_label_values",
                "Label names with the most distinct values.",
                "label",
                stats.label_value_count_by_label_name,
            ),
            (
                "tsagent_top_series_by_label_pair",
                "label=value pairs found in the most series.",
                "pair",
                stats.series_count_by_label_value_pair,
            ),
        )
        for name, help_text, label, rows in tables:
            fam = GaugeMetricFamily(name, help_text, labels=[label])
            for key, value in rows:
                fam.add_metric([key], float(value))
            yield fam
