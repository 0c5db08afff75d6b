"""StatsD and DogStatsD ingestion over UDP and TCP (config ``ingest.statsd``).

Lines are aggregated in memory and written every ``flush_interval`` with one
timestamp: counters as monotonically increasing totals, gauges, timers as
summaries or histograms, sets as distinct counts. Names go through mapping
rules in the spirit of Prometheus's statsd_exporter (see
:mod:`plugins.statsd.mapper`); the line format is in
:mod:`plugins.statsd.parser`, what each type becomes in
:mod:`plugins.statsd.aggregator`.

Counters live in memory: after a restart of tsagent they start again from
0, which Prometheus's ``rate()``/``increase()`` treat as a counter reset.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from agent.plugin_api import (
    AgentContext,
    Config,
    Field,
    Schema,
    check_duration,
    check_listen,
    check_positive,
    hookimpl,
    valid_label_name,
    valid_metric_name,
)
from plugins.statsd.mapper import METRIC_TYPES, glob_to_regex
from plugins.statsd.server import SECTION, StatsdIngestor

__all__ = ["SECTION", "StatsdIngestor", "config_schema", "register_ingestors", "validate_config"]

DEFAULT_QUANTILES = [0.5, 0.9, 0.99]
# The Prometheus client libraries' default buckets (seconds).
DEFAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def _listen_or_empty(value: Any) -> str | None:
    return None if value == "" else check_listen(value)


def _duration_or_empty(value: Any) -> str | None:
    return None if value == "" else check_duration(value)


def _quantile(value: Any) -> str | None:
    return None if 0.0 < value < 1.0 else "expected a quantile between 0 and 1 (exclusive)"


def _finite(value: Any) -> str | None:
    return None if math.isfinite(value) else "expected a finite number"


_MAPPING = Schema(
    {
        "match": Field(str, "", "Glob (a.*.b) or regex the StatsD name must match."),
        "match_type": Field(str, "glob", choices=("glob", "regex")),
        "match_metric_type": Field(str, "", choices=("", *METRIC_TYPES)),
        "name": Field(str, "", "Metric name template; $1 / ${1} are the captures."),
        "labels": Schema({}, "label: value template", open=True, value=Field(str, "")),
        "action": Field(str, "map", choices=("map", "drop")),
        "timer_type": Field(str, "", choices=("", "summary", "histogram")),
        "quantiles": Field(list, [], item=Field(float, 0.5, check=_quantile)),
        "buckets": Field(list, [], item=Field(float, 1.0, check=_finite)),
        "ttl": Field((str, int, float), "", check=_duration_or_empty),
    }
)


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, False, "Listen for StatsD / DogStatsD lines."),
                "udp_listen": Field(
                    str,
                    "127.0.0.1:9125",
                    "HOST:PORT for UDP; empty disables UDP. Read at start only.",
                    check=_listen_or_empty,
                ),
                "tcp_listen": Field(
                    str,
                    "127.0.0.1:9125",
                    "HOST:PORT for TCP, newline-delimited; empty disables TCP.",
                    check=_listen_or_empty,
                ),
                "flush_interval": Field(
                    (str, int, float),
                    "10s",
                    "Aggregation interval: every flush writes all series with one timestamp.",
                    check=check_duration,
                ),
                "timer_type": Field(
                    str,
                    "summary",
                    "What ms/h/d timers become unless a mapping says otherwise.",
                    choices=("summary", "histogram"),
                ),
                "quantiles": Field(
                    list,
                    DEFAULT_QUANTILES,
                    "Summary quantiles (nearest rank over the last flush interval).",
                    item=Field(float, 0.5, check=_quantile),
                ),
                "buckets": Field(
                    list,
                    DEFAULT_BUCKETS,
                    "Histogram upper bounds, ascending; +Inf is added.",
                    item=Field(float, 1.0, check=_finite),
                ),
                "timer_ms_to_seconds": Field(
                    bool,
                    True,
                    "Divide 'ms' timer values by 1000 (Prometheus uses seconds); h and d\n"
                    "values are stored as sent.",
                ),
                "ttl": Field(
                    (str, int, float),
                    "0",
                    "Drop a metric not updated for this long, ending its series with a\n"
                    "staleness marker; 0 keeps exporting it for ever (as statsd_exporter).",
                    check=check_duration,
                ),
                "mappings": Field(
                    list,
                    [],
                    "Rules, first match wins: {match, match_type: glob|regex,\n"
                    "match_metric_type: counter|gauge|timer|set, name, labels: {k: v},\n"
                    "action: map|drop, timer_type, quantiles, buckets, ttl}. Globs match\n"
                    "the whole name, * within one dot-separated part; regexes are searched\n"
                    "(anchor with ^$). $1, ${1}, ${name} in name/labels are captures.\n"
                    "Unmatched names are escaped: characters outside [a-zA-Z0-9_] become _.",
                    item=_MAPPING,
                ),
                "max_metrics": Field(
                    int,
                    100_000,
                    "Most aggregated metrics (label sets) held; lines for new ones beyond\n"
                    "are dropped and counted (reason metric_limit).",
                    check=check_positive,
                ),
                "max_line_bytes": Field(
                    int, 65_536, "Longest line accepted (TCP lines included).", check=check_positive
                ),
                "tcp_max_connections": Field(
                    int,
                    1024,
                    "Most TCP connections open at once; more are closed on accept and\n"
                    "counted (each may hold up to max_line_bytes of an unfinished line).",
                    check=check_positive,
                ),
                "tcp_idle_timeout": Field(
                    (str, int, float),
                    "5m",
                    "Close a TCP connection that sent nothing for this long; 0 never does.",
                    check=check_duration,
                ),
                "summary_max_samples": Field(
                    int,
                    10_000,
                    "Observations kept per summary and interval (reservoir sampling beyond).",
                    check=check_positive,
                ),
                "key_cache_size": Field(
                    int,
                    200_000,
                    "Distinct name/type/rate/tags keys whose parse and mapping are cached.",
                    check=check_positive,
                ),
                "udp_receive_buffer_bytes": Field(
                    int,
                    0,
                    "SO_RCVBUF of the UDP socket; 0 keeps the OS default (raise it for bursts).",
                    check=lambda v: None if v >= 0 else "expected a number >= 0",
                ),
                "log_interval": Field(
                    (str, int, float),
                    "60s",
                    "At most one log line per malformed/dropped reason in this interval.",
                    check=check_duration,
                ),
            },
            help="StatsD / DogStatsD listener (plugin statsd).",
        )
    }


_PLACEHOLDER = re.compile(r"\$(?:\{[A-Za-z0-9_]+\}|[A-Za-z0-9_]+)")


@hookimpl
def validate_config(config: Config) -> list[str]:
    """What the schema cannot say: patterns compile, templates give valid names."""
    cfg = config.section(SECTION)
    errors: list[str] = []
    if not cfg:
        return errors
    if cfg.get("enabled") and not cfg.get("udp_listen") and not cfg.get("tcp_listen"):
        errors.append(f"{SECTION}.udp_listen: enabled, but neither UDP nor TCP listens")
    if cfg.get("buckets") is not None:
        errors += _check_buckets(cfg["buckets"], f"{SECTION}.buckets", allow_empty=False)
    for i, rule in enumerate(cfg.get("mappings") or []):
        where = f"{SECTION}.mappings[{i}]"
        if not rule["match"]:
            errors.append(f"{where}.match: required")
            continue
        pattern = rule["match"] if rule["match_type"] == "regex" else glob_to_regex(rule["match"])
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(f"{where}.match: invalid regular expression ({exc})")
        if rule["action"] == "drop":
            continue
        if not rule["name"]:
            errors.append(f"{where}.name: required unless action is drop")
        elif not valid_metric_name(_PLACEHOLDER.sub("x", rule["name"])):
            errors.append(f"{where}.name: not a valid metric name: {rule['name']!r}")
        for label in rule["labels"]:
            if not valid_label_name(str(label)) or str(label).startswith("__"):
                errors.append(f"{where}.labels.{label}: not a valid label name")
        errors += _check_buckets(rule["buckets"], f"{where}.buckets", allow_empty=True)
    return errors


def _check_buckets(buckets: list[float], where: str, *, allow_empty: bool) -> list[str]:
    if not buckets and not allow_empty:
        return [f"{where}: at least one bucket is needed"]
    if any(b >= c for b, c in itertools.pairwise(buckets)):
        return [f"{where}: bounds must be strictly ascending"]
    return []


@hookimpl
def register_ingestors(ctx: AgentContext) -> list[StatsdIngestor]:
    cfg = ctx.plugin_config(SECTION)
    if not cfg.get("enabled"):
        return []
    return [StatsdIngestor(cfg)]
