"""Decoding ``io.prometheus.write.v2.Request`` (remote-write 2.0).

Correct first, fast second: the message is parsed by the generated classes
(upb), then walked series by series. Series ids are cached on the tuple of
resolved label strings (symbol indices are per request, so they cannot be
the key as raw label bytes are for 1.0).

Created ("start") timestamps: a series may carry ``created_timestamp``
(TimeSeries field 6, Prometheus 3.x) or a per-sample ``start_timestamp``
(Sample field 3, later spec drafts). With
``ingest.remote_write.created_timestamp_zero_ingestion`` on, tsagent does
what Prometheus does with its ``created-timestamp-zero-ingestion`` feature:
it stores a 0 sample at the created timestamp when that is before the
series' first sample, and silently drops that synthetic sample when the
store refuses it (out of order, duplicate). Off (the default, as in
Prometheus) the timestamps are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Hashable

from google.protobuf.message import DecodeError as ProtoDecodeError

from agent.plugin_api import METRIC_NAME, Labels, write_v2_pb2
from plugins.remote_write.labels import format_raw_labels, validate_label_strings
from plugins.remote_write.wire import (
    REASON_EXEMPLAR,
    REASON_HISTOGRAM,
    REASON_INVALID_LABELS,
    Decoded,
    DecodeError,
    Metadata,
    SeriesIssue,
    metric_type_name,
)


def decode_request(
    buf: bytes, cache: dict[Hashable, int], *, created_timestamp_zero: bool = False
) -> Decoded:
    """Decode a v2 ``Request``; ``cache`` maps label-string tuples to series ids."""
    try:
        req = write_v2_pb2.Request.FromString(buf)
    except ProtoDecodeError as exc:
        raise DecodeError(f"cannot parse io.prometheus.write.v2.Request: {exc}") from None
    symbols = list(req.symbols)
    nsym = len(symbols)
    if nsym and symbols[0] != "":
        raise DecodeError("symbols[0] must be the empty string")
    out = Decoded()
    ids, tss, vals = out.ids, out.ts, out.vals
    for series in req.timeseries:
        out.series += 1
        refs = list(series.labels_refs)
        samples = series.samples
        bad: str | None = None
        pairs: list[tuple[str, str]] = []
        if len(refs) % 2:
            bad = f"labels_refs has odd length {len(refs)}"
        elif refs and max(refs) >= nsym:
            bad = f"labels_refs points past the {nsym} symbols"
        else:
            pairs = [(symbols[refs[i]], symbols[refs[i + 1]]) for i in range(0, len(refs), 2)]
        name = format_raw_labels(pairs) if pairs else f"<series #{out.series}>"
        key = tuple(pairs)
        labels: Labels | SeriesIssue | None = None
        sid = cache.get(key) if bad is None else None
        if sid is None:
            if bad is not None:
                labels = SeriesIssue(REASON_INVALID_LABELS, name, bad, 0)
            else:
                labels = out.miss_labels.get(key)
                if labels is None:
                    verdict = validate_label_strings(pairs)
                    labels = (
                        SeriesIssue(REASON_INVALID_LABELS, name, verdict, 0)
                        if isinstance(verdict, str)
                        else verdict
                    )
                    out.miss_labels[key] = labels
        if isinstance(labels, SeriesIssue):
            labels.count += len(samples)
            if bad is not None:
                out.issues.append(labels)
        _metadata(series, symbols, pairs, out)
        if series.histograms:
            out.histograms += len(series.histograms)
            out.issues.append(
                SeriesIssue(
                    REASON_HISTOGRAM,
                    name,
                    "native histogram samples are not supported",
                    len(series.histograms),
                )
            )
        if series.exemplars:
            out.exemplars += len(series.exemplars)
            out.issues.append(
                SeriesIssue(
                    REASON_EXEMPLAR, name, "exemplars are not supported", len(series.exemplars)
                )
            )
        if isinstance(labels, SeriesIssue) or not samples:
            continue
        positions: list[int] | None = None
        if sid is None:
            positions = out.misses.setdefault(key, [])
            sid = 0
        created = series.created_timestamp
        first = True
        for sample in samples:
            t = sample.timestamp
            if created_timestamp_zero:
                ct = sample.start_timestamp or (created if first else 0)
                if ct and ct < t:
                    if positions is not None:
                        positions.append(len(ids))
                    out.synthetic.append(len(ids))
                    ids.append(sid)
                    tss.append(ct)
                    vals.append(0.0)
            first = False
            if positions is not None:
                positions.append(len(ids))
            ids.append(sid)
            tss.append(t)
            vals.append(sample.value)
    return out


def _metadata(
    series: write_v2_pb2.TimeSeries,
    symbols: list[str],
    pairs: list[tuple[str, str]],
    out: Decoded,
) -> None:
    if not series.HasField("metadata"):
        return
    md = series.metadata
    if not (md.type or md.help_ref or md.unit_ref):
        return
    metric = next((v for k, v in pairs if k == METRIC_NAME), "")
    if not metric:
        return
    n = len(symbols)
    help_text = symbols[md.help_ref] if md.help_ref < n else ""
    unit = symbols[md.unit_ref] if md.unit_ref < n else ""
    out.metadata.append(Metadata(metric, metric_type_name(md.type), help_text, unit))
