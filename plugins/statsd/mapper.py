"""Mapping rules in the spirit of Prometheus's statsd_exporter.

A rule matches a dotted StatsD name either as a *glob* (``api.*.requests``:
each ``*`` matches within one dot-separated component, the whole name must
match) or as a *regex* (Python syntax, searched like statsd_exporter's Go
regexes, i.e. not anchored unless the pattern says ``^...$``). The first
matching rule wins. ``name`` and label values are templates where ``$1``,
``${1}`` or ``${group}`` refer to the captures (``*`` in order for globs);
as in Go's ``Regexp.Expand``, ``$1_x`` means a group named ``1_x``, so write
``${1}_x``. ``action: drop`` discards the metric. A name that no rule maps
is escaped (dots and other invalid characters become ``_``).

Mapping runs once per distinct (name, type, tags) key, not per line: the
aggregator caches the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugins.statsd.parser import COUNTER, GAUGE, SET, TIMER, escape_name

# match_metric_type values; statsd_exporter's aliases for observers included.
METRIC_TYPES: dict[str, str] = {
    "counter": COUNTER,
    "gauge": GAUGE,
    "timer": TIMER,
    "observer": TIMER,
    "histogram": TIMER,
    "distribution": TIMER,
    "set": SET,
}

_TEMPLATE_RE = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def expand(template: str, match: re.Match[str]) -> str:
    """Substitute ``$1``/``${1}``/``${name}`` from ``match`` (unknown groups are empty)."""
    if "$" not in template:
        return template

    def sub(m: re.Match[str]) -> str:
        ref = m.group(1) or m.group(2)
        if ref is None:
            return "$"  # "$$"
        try:
            group = match.group(int(ref)) if ref.isdigit() else match.group(ref)
        except IndexError:  # no such group: empty, as Go's Expand does
            return ""
        return group or ""

    return _TEMPLATE_RE.sub(sub, template)


def glob_to_regex(pattern: str) -> str:
    """``a.*.b`` -> ``^a\\.([^.]*)\\.b$``: each ``*`` captures within one component."""
    return "^" + re.escape(pattern).replace(r"\*", "([^.]*)") + "$"


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    name: str
    labels: tuple[tuple[str, str], ...]
    drop: bool = False
    metric_type: str | None = None  # only match lines of this kind
    timer_type: str | None = None
    quantiles: tuple[float, ...] | None = None
    buckets: tuple[float, ...] | None = None
    ttl: float | None = None


@dataclass(frozen=True)
class Mapped:
    """What a name became: metric name, labels from the rule, per-rule overrides."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    timer_type: str | None = None
    quantiles: tuple[float, ...] | None = None
    buckets: tuple[float, ...] | None = None
    ttl: float | None = None


@dataclass
class Mapper:
    rules: Sequence[Rule] = field(default_factory=list)

    def map(self, name: str, kind: str) -> Mapped | None:
        """The mapping of a StatsD name of ``kind``; None when a drop rule matched."""
        for rule in self.rules:
            if rule.metric_type is not None and rule.metric_type != kind:
                continue
            m = rule.regex.search(name)
            if m is None:
                continue
            if rule.drop:
                return None
            return Mapped(
                escape_name(expand(rule.name, m)),
                tuple((k, expand(v, m)) for k, v in rule.labels),
                rule.timer_type,
                rule.quantiles,
                rule.buckets,
                rule.ttl,
            )
        return Mapped(escape_name(name))


def build_rule(spec: Mapping[str, Any], parse_ttl: Any) -> Rule:
    """A :class:`Rule` from one validated ``mappings`` entry."""
    pattern = spec["match"]
    regex = pattern if spec["match_type"] == "regex" else glob_to_regex(pattern)
    metric_type = spec.get("match_metric_type") or None
    ttl = spec.get("ttl")
    return Rule(
        regex=re.compile(regex),
        name=spec.get("name") or "",
        labels=tuple((str(k), str(v)) for k, v in (spec.get("labels") or {}).items()),
        drop=spec["action"] == "drop",
        metric_type=METRIC_TYPES[metric_type] if metric_type else None,
        timer_type=spec.get("timer_type") or None,
        quantiles=tuple(spec["quantiles"]) if spec.get("quantiles") else None,
        buckets=tuple(float(b) for b in spec["buckets"]) if spec.get("buckets") else None,
        ttl=parse_ttl(ttl) if ttl not in (None, "") else None,
    )


def build_mapper(specs: Sequence[Mapping[str, Any]], parse_ttl: Any) -> Mapper:
    return Mapper([build_rule(s, parse_ttl) for s in specs])
