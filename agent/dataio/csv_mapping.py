"""How a CSV file maps to series: column roles (time, value, label, metric).

From YAML, a dict or a VictoriaMetrics column spec.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.dataio.csv_times import TimeFormat
from agent.dataio.import_report import MappingError
from agent.model import METRIC_NAME, valid_label_name

if TYPE_CHECKING:
    from agent.storage import BackfillResult

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


Column = str | int  # a header name, or a 1-based position


# --- the mapping ---------------------------------------------------------------------


@dataclass
class CsvMapping:
    """Which CSV columns are the time, the labels and the values.

    Columns are header names or 1-based positions.  Each value column becomes
    one metric per row; its name is ``metric`` with ``{column}`` replaced by
    the column's header name (or position), unless ``value_columns`` maps the
    column to an explicit name.  ``timestamp_column`` None means "now" for
    every row (as VictoriaMetrics does without a ``time`` column).
    """

    value_columns: list[tuple[Column, str | None]]
    timestamp_column: Column | None = None
    time_format: TimeFormat = field(default_factory=lambda: TimeFormat("unix_s"))
    label_columns: list[tuple[str, Column]] = field(default_factory=list)
    metric: str = "{column}"
    header: bool = True
    delimiter: str = ","
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CsvMapping:
        """Build from the YAML/JSON mapping; every mistake raises MappingError naming its key.

        ::

            header: true            # first record names the columns
            delimiter: ","
            timestamp: {column: time, format: rfc3339}   # or unix_s/ms/ns, '%d.%m.%Y %H:%M'
            #           timezone: Europe/Berlin, ambiguous: reject|earlier|later
            labels: [host, {dc: datacenter}]   # label = column, or label: column
            #       a __name__ column holds each row's metric name (one value column then;
            #       the layout of `tsagent export-csv`)
            values: [cpu, mem]                 # or {cpu: node_cpu_ratio}
            metric: "node_{column}"
            extra_labels: {job: import}
        """
        if not isinstance(data, Mapping):
            raise MappingError("mapping: expected a mapping with at least a 'values' key")
        known = {"header", "delimiter", "timestamp", "labels", "values", "metric", "extra_labels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MappingError(f"mapping: unknown key(s) {unknown}; known: {sorted(known)}")
        header = data.get("header", True)
        if not isinstance(header, bool):
            raise MappingError("header: expected true or false")
        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise MappingError("delimiter: expected a single character")
        ts_col: Column | None = None
        fmt = TimeFormat("unix_s")
        ts = data.get("timestamp")
        if ts is not None:
            if isinstance(ts, str | int) and not isinstance(ts, bool):
                ts = {"column": ts}
            if not isinstance(ts, Mapping) or "column" not in ts:
                raise MappingError("timestamp: expected {column: ..., format: ...}")
            extra = sorted(set(ts) - {"column", "format", "timezone", "ambiguous"})
            if extra:
                raise MappingError(f"timestamp: unknown key(s) {extra}")
            ts_col = _column(ts["column"], "timestamp.column")
            spec = ts.get("format", "unix_s")
            if not isinstance(spec, str):
                raise MappingError("timestamp.format: expected a string")
            fmt = TimeFormat.of(spec, ts.get("timezone"), ts.get("ambiguous", "reject"))
        labels: list[tuple[str, Column]] = []
        raw_labels = data.get("labels") or []
        if isinstance(raw_labels, Mapping):
            raw_labels = [{k: v} for k, v in raw_labels.items()]
        if not isinstance(raw_labels, list):
            raise MappingError("labels: expected a list of columns or a mapping label: column")
        for i, item in enumerate(raw_labels):
            if isinstance(item, Mapping) and len(item) == 1:
                ((name, col),) = item.items()
                labels.append((str(name), _column(col, f"labels[{i}]")))
            elif isinstance(item, str):
                labels.append((item, item))
            else:
                raise MappingError(f"labels[{i}]: expected a column name or {{label: column}}")
        for name, _ in labels:
            # __name__ is allowed: a column of metric names (see _Resolved.name_column).
            if not valid_label_name(name):
                raise MappingError(f"labels: {name!r} is not a valid label name")
        raw_values = data.get("values")
        values: list[tuple[Column, str | None]] = []
        if isinstance(raw_values, Mapping):
            for col, metric in raw_values.items():
                values.append((_column(col, "values"), None if metric is None else str(metric)))
        elif isinstance(raw_values, list):
            values = [(_column(c, f"values[{i}]"), None) for i, c in enumerate(raw_values)]
        if not values:
            raise MappingError("values: name at least one value column (a list or column: metric)")
        metric = data.get("metric", "{column}")
        if not isinstance(metric, str) or "{" in metric.replace("{column}", ""):
            raise MappingError("metric: expected a template string; only {column} is replaced")
        extra_labels = data.get("extra_labels") or {}
        if not isinstance(extra_labels, Mapping):
            raise MappingError("extra_labels: expected a mapping label: value")
        mapping = cls(
            value_columns=values,
            timestamp_column=ts_col,
            time_format=fmt,
            label_columns=labels,
            metric=metric,
            header=header,
            delimiter=delimiter,
            extra_labels={str(k): str(v) for k, v in extra_labels.items()},
        )
        mapping.check_extra_labels()
        return mapping

    @classmethod
    def from_vm_format(cls, spec: str, *, header: bool = False) -> CsvMapping:
        """VictoriaMetrics' ``format`` query arg: ``1:time:unix_s,2:label:host,3:metric:cpu``.

        Positions are 1-based, one ``time`` column at most (none: now), at
        least one ``metric``; ``time`` formats are unix_s, unix_ms, unix_ns,
        rfc3339 and ``custom:<Go layout>`` (which may itself contain ':').
        """
        if not spec:
            raise MappingError("format: empty column spec")
        ts_col: Column | None = None
        fmt = TimeFormat("unix_s")
        labels: list[tuple[str, Column]] = []
        values: list[tuple[Column, str | None]] = []
        seen: set[int] = set()
        for n, entry in enumerate(spec.split(","), 1):
            parts = entry.split(":", 2)
            if len(parts) != 3:
                raise MappingError(
                    f"format: entry #{n} {entry!r} must look like <column_pos>:<type>:<extension>"
                )
            pos_text, kind, ext = parts
            try:
                pos = int(pos_text)
            except ValueError:
                raise MappingError(f"format: entry #{n} {entry!r}: bad column position") from None
            if pos < 1:
                raise MappingError(f"format: entry #{n} {entry!r}: positions start at 1")
            if pos in seen:
                raise MappingError(f"format: entry #{n} {entry!r}: column {pos} used twice")
            seen.add(pos)
            if kind == "time":
                if ts_col is not None:
                    raise MappingError(f"format: entry #{n} {entry!r}: a second time column")
                ts_col = pos
                fmt = TimeFormat.of(ext)
            elif kind == "label":
                if not ext or not valid_label_name(ext):
                    raise MappingError(f"format: entry #{n} {entry!r}: invalid label name")
                labels.append((ext, pos))
            elif kind == "metric":
                if not ext:
                    raise MappingError(f"format: entry #{n} {entry!r}: empty metric name")
                values.append((pos, ext))
            else:
                raise MappingError(
                    f"format: entry #{n} {entry!r}: unknown type {kind!r};"
                    " allowed: time, label, metric"
                )
        if not values:
            raise MappingError(f"format: no 'metric' column in {spec!r}")
        return cls(values, ts_col, fmt, labels, "{column}", header, ",")

    def check_extra_labels(self) -> None:
        for k in self.extra_labels:
            if not valid_label_name(k) or k == METRIC_NAME:
                raise MappingError(f"extra_labels: {k!r} is not a valid label name")


def _column(value: Any, where: str) -> Column:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(f"{where}: expected a column name or a 1-based position")
    if isinstance(value, int) and value < 1:
        raise MappingError(f"{where}: column positions start at 1")
    return value


def load_mapping(path: str | Path) -> CsvMapping:
    """A mapping file (YAML, or JSON, which YAML reads too)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return CsvMapping.from_dict(data or {})
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from exc


def parse_extra_labels(items: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings (``extra_label`` query args, ``--extra-label``) into a dict."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not valid_label_name(k) or k == METRIC_NAME:
            raise MappingError(f"extra_label {item!r}: expected name=value with a valid label name")
        out[k] = v
    return out
