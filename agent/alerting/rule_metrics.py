"""The rule engine's own metrics: evaluations, failures, durations, and active alerts by state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Engine(Protocol):
    """What the collector reads of :class:`agent.alerting.engine.RuleEngine` (no import back)."""

    @property
    def groups(self) -> Sequence[Any]: ...


class _AlertsCollector(Collector):
    """``tsagent_alerts{state}`` and rules per group, read at scrape time."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        alerts = GaugeMetricFamily(
            "tsagent_alerts", "Active alerts of all rules, by state.", labels=["state"]
        )
        counts = dict.fromkeys(("pending", "firing"), 0)
        rules = GaugeMetricFamily(
            "tsagent_rule_group_rules", "Rules per rule group.", labels=["rule_group"]
        )
        for group in self.engine.groups:
            rules.add_metric([group.key], len(group.rules))
            for rule in group.rules:
                for a in rule.active.values():
                    if a.state.value in counts:
                        counts[a.state.value] += 1
        for name, n in counts.items():
            alerts.add_metric([name], n)
        yield alerts
        yield rules


class RuleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.evaluations = Counter(
            "tsagent_rule_evaluations",
            "Rule evaluations, by rule group.",
            ["rule_group"],
            registry=r,
        )
        self.failures = Counter(
            "tsagent_rule_evaluation_failures",
            "Rule evaluations that failed, by rule group.",
            ["rule_group"],
            registry=r,
        )
        self.duration = Summary(
            "tsagent_rule_group_duration_seconds",
            "Time to evaluate a whole rule group.",
            ["rule_group"],
            registry=r,
        )
        self.last_duration = Gauge(
            "tsagent_rule_group_last_duration_seconds",
            "Duration of the last evaluation of a rule group.",
            ["rule_group"],
            registry=r,
        )
        self.last_evaluation = Gauge(
            "tsagent_rule_group_last_evaluation_timestamp_seconds",
            "When the rule group was last evaluated (its aligned timestamp).",
            ["rule_group"],
            registry=r,
        )
        self.missed = Counter(
            "tsagent_rule_group_iterations_missed",
            "Evaluations skipped because the previous one ran late.",
            ["rule_group"],
            registry=r,
        )
        self.callback_failures = Counter(
            "tsagent_alert_callback_failures",
            "define_alert callbacks that raised or timed out, by rule.",
            ["rule"],
            registry=r,
        )
