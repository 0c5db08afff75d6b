"""OTLP metric and attribute names as Prometheus 3 spells them (``otlptranslator``).

A transcription of the rules of ``github.com/prometheus/otlptranslator``
(``MetricNamer``, ``LabelNamer``, ``buildUnitSuffixes``, ``cleanUpUnit``),
which Prometheus 3's OTLP receiver uses, so a name written here is the name
Prometheus would have stored:

* ``UnderscoreEscapingWithSuffixes`` (the default): the name is split into
  tokens at every character outside ``[a-zA-Z0-9:]`` (so runs of ``_`` and
  ``.`` collapse), the unit is appended (``s`` → ``seconds``, ``By/s`` →
  ``bytes_per_second``; units in ``{}`` are annotations and dropped; a token
  already in the name is not repeated), ``_total`` for monotonic sums,
  ``_ratio`` for gauges of unit ``1``, joined with ``_``; a leading digit gets
  ``_``;
* ``UnderscoreEscapingWithoutSuffixes``: invalid characters become ``_``, no
  suffixes;
* ``NoUTF8EscapingWithSuffixes``: the name is kept (UTF-8), suffixes appended;
* ``NoTranslation``: kept as is.

Attribute names: every character outside ``[a-zA-Z0-9_]`` becomes ``_``, a
leading digit gets ``key_``, a single leading ``_`` gets ``key`` (``__x``
is kept), unless UTF-8 is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STRATEGIES = (
    "UnderscoreEscapingWithSuffixes",
    "UnderscoreEscapingWithoutSuffixes",
    "NoUTF8EscapingWithSuffixes",
    "NoTranslation",
)

GAUGE = "gauge"
COUNTER = "counter"  # a monotonic sum
NON_MONOTONIC = "non_monotonic_counter"
HISTOGRAM = "histogram"
SUMMARY = "summary"

UNIT_MAP = {
    # time
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    # bytes
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    # SI
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    # misc
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNIT_MAP = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}

_NOT_TOKEN = re.compile(r"[^a-zA-Z0-9:]+")
_INVALID_METRIC = re.compile(r"[^a-zA-Z0-9:_]")
_INVALID_METRIC_RUN = re.compile(r"[^a-zA-Z0-9:_]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"__+")


class NamingError(ValueError):
    """A name that normalises to nothing usable."""


@dataclass(frozen=True)
class Strategy:
    escape: bool
    suffixes: bool

    @classmethod
    def named(cls, name: str) -> Strategy:
        if name not in STRATEGIES:
            raise ValueError(f"unknown translation strategy {name!r}")
        return cls(escape="Underscore" in name, suffixes="WithSuffixes" in name)


def _clean_unit(unit: str) -> str:
    """``cleanUpUnit``: invalid characters to ``_``, runs collapsed, leading ``_`` cut."""
    return _UNDERSCORES.sub("_", _NOT_TOKEN.sub("_", unit)).removeprefix("_")


def unit_suffixes(unit: str) -> tuple[str, str]:
    """``buildUnitSuffixes``: (main unit word, ``per_<unit>``), either possibly empty."""
    parts = unit.split("/", 1)
    main = per = ""
    main_otel = parts[0].strip()
    if main_otel and "{" not in main_otel and "}" not in main_otel:
        main = UNIT_MAP.get(main_otel, main_otel)
    if len(parts) > 1 and parts[1] != "":
        per_otel = parts[1].strip()
        if per_otel and "{" not in per_otel and "}" not in per_otel:
            per = PER_UNIT_MAP.get(per_otel, per_otel)
        if per:
            per = "per_" + per
    return main, per


def _normalize(name: str, unit: str, kind: str, namespace: str) -> str:
    tokens = [t for t in _NOT_TOKEN.split(name) if t]
    main, per = unit_suffixes(unit)
    main, per = _clean_unit(main), _clean_unit(per)
    if main in tokens:
        main = ""
    if per == "per_":
        per = ""
    else:
        per = per.removesuffix("_")
        if per in tokens:
            per = ""
    if per:
        main = main.removesuffix("_")
    if main:
        tokens.append(main)
    if per:
        tokens.append(per)
    if kind == COUNTER:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == GAUGE:
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    if namespace:
        tokens.insert(0, namespace)
    out = "_".join(tokens)
    if out and out[0].isdigit():
        out = "_" + out
    return out


def _trim_suffix(name: str, suffix: str) -> str:
    if name.endswith(suffix) and len(name) > len(suffix) + 1:
        return name[: len(name) - (len(suffix) + 1)]
    return name


def _utf8_name(name: str, unit: str, kind: str, namespace: str, suffixes: bool) -> str:
    if namespace:
        name = f"{namespace}_{name}"
    if not suffixes:
        return name
    tail: list[str] = []  # appended innermost first, as Go's deferred functions run
    if unit == "1" and kind == GAUGE:
        name = _trim_suffix(name, "ratio")
        tail.insert(0, "_ratio")
    if kind == COUNTER:
        name = _trim_suffix(name, "total")
        tail.insert(0, "_total")
    main, per = unit_suffixes(unit)
    if per:
        name = _trim_suffix(name, per)
        tail.insert(0, "_" + per)
    if main and not name.endswith(main):
        name = f"{name}_{main}"
    return name + "".join(tail)


def metric_name(name: str, unit: str, kind: str, strategy: Strategy, namespace: str = "") -> str:
    """The Prometheus metric family name of an OTLP metric. Raises NamingError."""
    if not strategy.escape:
        out = _utf8_name(name, unit, kind, namespace, strategy.suffixes)
        if not out:
            raise NamingError(f"normalization for metric {name!r} resulted in empty name")
        return out
    if strategy.suffixes:
        out = _normalize(name, unit, kind, namespace)
    else:
        out = "_".join(t for t in _INVALID_METRIC_RUN.split(name) if t)
        if namespace:
            ns = "_".join(t for t in _INVALID_METRIC_RUN.split(namespace) if t)
            out = f"{ns}_{out}"
        elif out and out[0].isdigit():
            out = "_" + out
    if not out:
        raise NamingError(f"normalization for metric {name!r} resulted in empty name")
    if out != name and not out.strip("_"):
        raise NamingError(f"normalization for metric {name!r} resulted in invalid name {out!r}")
    return out


def label_name(key: str, escape: bool = True) -> str:
    """``LabelNamer.Build``. Raises NamingError for a name that becomes empty or ``_`` only."""
    if not key:
        raise NamingError("normalization for label name '' resulted in empty name")
    if not escape:
        return key
    out = _INVALID_LABEL.sub("_", key)
    if out[0].isdigit():
        out = "key_" + out
    elif out.startswith("_") and not out.startswith("__"):
        out = "key" + out
    if out != key and not out.strip("_"):
        raise NamingError(f"normalization for label name {key!r} resulted in invalid name {out!r}")
    return out


def unit_name(unit: str, escape: bool = True) -> str:
    """``UnitNamer.Build``: the unit in Prometheus' metadata (``By/s``: ``bytes_per_second``)."""
    main, per = unit_suffixes(unit)
    if escape:
        main, per = _clean_unit(main), _clean_unit(per)
    out = f"{main}_{per}" if main and per else main or per
    return out.removeprefix("_").removesuffix("_")
