"""The agent's own metrics, served on ``/metrics``.

Each application gets a private ``CollectorRegistry`` (tests stay isolated,
two agents in one process do not collide). Figures the store already keeps
(series, head size, flushes) are read at scrape time by a custom collector
instead of being mirrored into gauges on every write.
"""

from __future__ import annotations

import platform
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
    ``gauge`` or ``counter``; ``summaries`` maps a metric name to (help,
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
            if isinstance(value, dict):
                label = "reason"
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
