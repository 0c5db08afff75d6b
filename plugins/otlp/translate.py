"""OTLP metrics → Prometheus samples, as Prometheus 3's OTLP receiver writes them.

Follows ``storage/remote/otlptranslator/prometheusremotewrite`` (``helper.go``,
``metrics_to_prw.go``):

* labels of a point: its attributes (sorted by key; names normalised; two
  keys that normalise alike join their values with ``;``), then promoted
  resource attributes where no attribute took the name, then (with
  ``promote_scope_metadata``) ``otel_scope_name``/``_version``/``_schema_url``
  and ``otel_scope_<attr>``, then ``job`` = ``service.namespace/service.name``
  (or ``service.name``) and ``instance`` = ``service.instance.id``, which win;
* gauges and sums: one sample per point (``as_double`` or ``as_int``); the
  ``no recorded value`` flag writes Prometheus' staleness marker;
* explicit-bucket histograms: ``_sum`` (when set), ``_count``, cumulative
  ``_bucket{le=...}`` and ``le="+Inf"`` = count;
* summaries: ``_sum``, ``_count`` and ``{quantile=...}``;
* ``target_info`` = 1 per resource with attributes besides the identifying
  ones (and a ``job`` or ``instance``): those attributes as labels, a sample
  every half lookback delta from the resource's earliest to latest point
  (at most the last 100 of them: a hostile span from 1970 to now must not
  become millions of samples);
* refused, named in the partial-success message, counted as rejected data
  points: non-cumulative sums and histograms (delta temporality), exponential
  histograms (Prometheus turns them into native histograms, which this store
  does not have), metrics without data, names that normalise to nothing.

Timestamps are nanoseconds in OTLP, milliseconds here (integer division).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from agent.plugin_api import format_value
from plugins.otlp.naming import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    NON_MONOTONIC,
    SUMMARY,
    NamingError,
    Strategy,
    label_name,
    metric_name,
    unit_name,
)

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
IDENTIFYING = ("service.namespace", "service.name", "service.instance.id")
MAX_TARGET_INFO = 100  # target_info samples per resource and request (see _target_info)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Settings:
    """The ``otlp:`` settings of Prometheus 3, under ``ingest.otlp``."""

    translation_strategy: str = "UnderscoreEscapingWithSuffixes"
    promote_resource_attributes: tuple[str, ...] = ()
    promote_all_resource_attributes: bool = False
    ignore_resource_attributes: tuple[str, ...] = ()
    keep_identifying_resource_attributes: bool = False
    promote_scope_metadata: bool = False
    disable_target_info: bool = False
    lookback_delta_ms: int = 300_000


@dataclass
class Translation:
    # Per sample: its label tuple, or (from plugins.otlp.fastpath) a key the
    # reader turns into labels only when the series cache misses.
    labels: list[Labels] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    data_points: int = 0
    rejected_points: int = 0
    errors: list[str] = field(default_factory=list)
    # (family name, type, help, unit) for /api/v1/metadata
    metadata: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, labels: Labels, ms: int, value: float) -> None:
        self.labels.append(labels)
        self.timestamps.append(ms)
        self.values.append(value)


def any_value_string(v: AnyValue) -> str:
    """pcommon ``Value.AsString``."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return _double_string(v.double_value)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(_any_json(v), separators=(",", ":"))
    return ""


def _double_string(d: float) -> str:
    if math.isinf(d):
        return "Infinity" if d > 0 else "-Infinity"
    if math.isnan(d):
        return "NaN"
    return format_value(d)


def _any_json(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any_json(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_json(kv.value) for kv in v.kvlist_value.values}
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


class Translator:
    """Holds the settings and a cache of normalised attribute names."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.strategy = Strategy.named(settings.translation_strategy)
        self._names: dict[str, str] = {}
        self._promote = frozenset(settings.promote_resource_attributes)
        self._ignore = frozenset(settings.ignore_resource_attributes)

    def label(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            name = label_name(key, self.strategy.escape)
            if len(self._names) < 100_000:
                self._names[key] = name
        return name

    def _merge(
        self, out: dict[str, str], attrs: Iterable[KeyValue], skip: Iterable[str] = ()
    ) -> None:
        """Attributes sorted by key; names that collide join their values with ';'."""
        skipped = set(skip)
        for key, value in sorted((kv.key, kv.value) for kv in attrs if kv.key not in skipped):
            try:
                name = self.label(key)
            except NamingError:
                continue
            text = any_value_string(value)
            if name in out:
                out[name] = out[name] + ";" + text
            else:
                out[name] = text

    def _resource_labels(
        self, resource_attrs: dict[str, AnyValue]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(promoted labels, identifying labels ``job``/``instance``) of one resource."""
        s = self.settings
        promoted: dict[str, str] = {}
        if s.promote_all_resource_attributes:
            keys = [k for k in sorted(resource_attrs) if k not in self._ignore]
        else:
            keys = [k for k in sorted(resource_attrs) if k in self._promote]
        for k in keys:
            try:
                name = self.label(k)
            except NamingError:
                continue
            promoted.setdefault(name, any_value_string(resource_attrs[k]))
        ident: dict[str, str] = {}
        service = resource_attrs.get("service.name")
        if service is not None:
            job = any_value_string(service)
            ns = resource_attrs.get("service.namespace")
            if ns is not None:
                job = f"{any_value_string(ns)}/{job}"
            ident["job"] = job
        instance = resource_attrs.get("service.instance.id")
        if instance is not None:
            ident["instance"] = any_value_string(instance)
        return promoted, ident

    def translate(self, request: ExportMetricsServiceRequest) -> Translation:
        out = Translation()
        for rm in request.resource_metrics:
            resource_attrs = {kv.key: kv.value for kv in rm.resource.attributes}
            promoted, ident = self._resource_labels(resource_attrs)
            earliest: int | None = None
            latest: int | None = None
            for sm in rm.scope_metrics:
                scope: dict[str, str] = {}
                if self.settings.promote_scope_metadata and sm.scope.name:
                    scope = {
                        "otel_scope_name": sm.scope.name,
                        "otel_scope_version": sm.scope.version,
                        "otel_scope_schema_url": sm.schema_url,
                    }
                    for kv in sm.scope.attributes:
                        scope[self.label("otel_scope_" + kv.key)] = any_value_string(kv.value)
                for metric in sm.metrics:
                    span = self._metric(metric, promoted, scope, ident, out)
                    if span is not None:
                        lo, hi = span
                        earliest = lo if earliest is None else min(earliest, lo)
                        latest = hi if latest is None else max(latest, hi)
            if earliest is not None and latest is not None:
                self._target_info(rm.resource.attributes, ident, earliest, latest, out)
        return out

    def _base(
        self,
        attrs: Iterable[KeyValue],
        promoted: dict[str, str],
        scope: dict[str, str],
        ident: dict[str, str],
    ) -> dict[str, str]:
        labels: dict[str, str] = {}
        self._merge(labels, attrs)
        for k, v in promoted.items():
            labels.setdefault(k, v)
        labels.update(scope)
        labels.update(ident)
        return labels

    @staticmethod
    def _labels(base: dict[str, str], name: str, extra: tuple[str, str] | None = None) -> Labels:
        pairs = {k: v for k, v in base.items() if v != ""}
        if extra is not None:
            pairs[extra[0]] = extra[1]
        pairs["__name__"] = name
        return tuple(sorted(pairs.items()))

    def _refuse(self, out: Translation, points: int, message: str) -> None:
        out.rejected_points += points
        out.errors.append(message)

    def _metric(
        self,
        metric: metrics_pb2.Metric,
        promoted: dict[str, str],
        scope: dict[str, str],
        ident: dict[str, str],
        out: Translation,
    ) -> tuple[int, int] | None:
        """Add one metric's samples; (earliest, latest) ms of its points, or None."""
        kind_field = metric.WhichOneof("data")
        points: Any
        if kind_field == "gauge":
            points, kind = metric.gauge.data_points, GAUGE
        elif kind_field == "sum":
            points = metric.sum.data_points
            kind = COUNTER if metric.sum.is_monotonic else NON_MONOTONIC
            if metric.sum.aggregation_temporality != CUMULATIVE:
                self._refuse(out, len(points), _temporality(metric.name))
                return None
        elif kind_field == "histogram":
            points, kind = metric.histogram.data_points, HISTOGRAM
            if metric.histogram.aggregation_temporality != CUMULATIVE:
                self._refuse(out, len(points), _temporality(metric.name))
                return None
        elif kind_field == "summary":
            points, kind = metric.summary.data_points, SUMMARY
        elif kind_field == "exponential_histogram":
            n = len(metric.exponential_histogram.data_points)
            self._refuse(
                out,
                n,
                f"exponential histogram {metric.name!r} not written: it would be a native "
                "histogram, which tsagent does not store; use explicit bucket boundaries",
            )
            return None
        else:
            self._refuse(out, 0, f"metric {metric.name!r} has no data (unsupported metric type)")
            return None
        out.data_points += len(points)
        if not points:
            return None
        try:
            family = metric_name(metric.name, metric.unit, kind, self.strategy)
        except NamingError as exc:
            self._refuse(out, len(points), str(exc))
            return None
        prom_type = {COUNTER: "counter", NON_MONOTONIC: "gauge"}.get(kind, kind)
        unit = unit_name(metric.unit, self.strategy.escape)
        out.metadata.append((family, prom_type, metric.description, unit))
        lo = hi = points[0].time_unix_nano // 1_000_000
        for pt in points:
            ms = pt.time_unix_nano // 1_000_000
            lo, hi = min(lo, ms), max(hi, ms)
            base = self._base(pt.attributes, promoted, scope, ident)
            stale = bool(pt.flags & NO_RECORDED_VALUE)
            if kind in (GAUGE, COUNTER, NON_MONOTONIC):
                value_kind = pt.WhichOneof("value")
                value = float(pt.as_int) if value_kind == "as_int" else pt.as_double
                out.add(self._labels(base, family), ms, STALE_NAN if stale else value)
            elif kind == HISTOGRAM:
                self._histogram(pt, base, family, ms, stale, out)
            else:
                self._summary(pt, base, family, ms, stale, out)
        return lo, hi

    def _histogram(
        self,
        pt: metrics_pb2.HistogramDataPoint,
        base: dict[str, str],
        family: str,
        ms: int,
        stale: bool,
        out: Translation,
    ) -> None:
        if pt.HasField("sum"):
            out.add(self._labels(base, family + "_sum"), ms, STALE_NAN if stale else pt.sum)
        out.add(self._labels(base, family + "_count"), ms, STALE_NAN if stale else float(pt.count))
        cumulative = 0
        bucket = family + "_bucket"
        for bound, n in zip(pt.explicit_bounds, pt.bucket_counts, strict=False):
            cumulative += n
            value = STALE_NAN if stale else float(cumulative)
            out.add(self._labels(base, bucket, ("le", format_value(bound))), ms, value)
        out.add(
            self._labels(base, bucket, ("le", "+Inf")), ms, STALE_NAN if stale else float(pt.count)
        )

    def _summary(
        self,
        pt: metrics_pb2.SummaryDataPoint,
        base: dict[str, str],
        family: str,
        ms: int,
        stale: bool,
        out: Translation,
    ) -> None:
        out.add(self._labels(base, family + "_sum"), ms, STALE_NAN if stale else pt.sum)
        out.add(self._labels(base, family + "_count"), ms, STALE_NAN if stale else float(pt.count))
        for q in pt.quantile_values:
            value = STALE_NAN if stale else q.value
            out.add(self._labels(base, family, ("quantile", format_value(q.quantile))), ms, value)

    def _target_info(
        self,
        attrs: Iterable[KeyValue],
        ident: dict[str, str],
        earliest: int,
        latest: int,
        out: Translation,
    ) -> None:
        s = self.settings
        if s.disable_target_info:
            return
        attrs = list(attrs)
        if not [kv for kv in attrs if kv.key not in IDENTIFYING]:
            return  # only job and instance: target_info would say nothing
        if not ident:
            return  # needs a job or an instance to join on
        labels: dict[str, str] = {}
        skip = () if s.keep_identifying_resource_attributes else IDENTIFYING
        self._merge(labels, attrs, skip)
        labels.update(ident)
        key = self._labels(labels, "target_info")
        step = max(1, s.lookback_delta_ms // 2)
        # Prometheus fills the whole span; points from 1970 and from now would make
        # millions of samples, so only the last MAX_TARGET_INFO steps are written.
        t = max(earliest, latest - step * (MAX_TARGET_INFO - 1))
        last = None
        while t < latest:
            out.add(key, t, 1.0)
            last = t
            t += step
        if last is None or last < latest:
            out.add(key, latest, 1.0)


def _temporality(name: str) -> str:
    return (
        f"invalid temporality and type combination for metric {name!r}: only cumulative "
        "sums and histograms are written (delta temporality is not converted)"
    )
