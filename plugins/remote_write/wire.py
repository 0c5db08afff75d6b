"""A hand-written decoder for ``prometheus.WriteRequest`` (remote-write 1.0).

Why not the generated classes: parsing is cheap (upb does ~2M samples/s), but
turning every series' labels into Python strings and tuples is not, and a
remote-write sender repeats the same label sets request after request. This
decoder therefore keys a series cache on the *raw bytes* of each TimeSeries'
label fields, and only decodes and validates labels on a cache miss.

The hot path per series, for the usual layout (all labels first, then one
sample), does no per-label work at all:

* read the TimeSeries length;
* recognise the trailing sample field from the end of the series: either
  ``12 L 09 <8-byte double> 10 <varint ts>`` or, for a value of 0.0 (which
  proto3 senders omit), ``12 L 10 <varint ts>``;
* look the bytes in front of it up in the cache (``dict[bytes, int]``);
* unpack the value with ``struct`` and the timestamp through a per-request
  ``dict[bytes, int]`` (samples of one request mostly share a scrape time).

Why a cache hit is safe without parsing: a key is only ever inserted after a
full parse showed it to be a complete sequence of label fields. Equal bytes
parse to the same fields, so on a hit the key ends exactly on a field
boundary and the verified sample field after it is what a full parser would
have read. Anything unusual (several samples, exemplars, histograms, fields in
another order, an implausible tail) takes the general path, which parses the
series field by field exactly as protobuf would (last value wins for scalars,
unknown fields skipped) and computes the same key.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Hashable
from dataclasses import dataclass, field

from xxhash import xxh3_128_intdigest

from agent.plugin_api import METRIC_NAME, Labels, read_uvarint, valid_label_name, valid_metric_name
from plugins.remote_write.labels import format_raw_labels, validate_labels

_unpack_double = struct.Struct("<d").unpack_from

_TWO_63 = 1 << 63
_TWO_64 = 1 << 64

# Reasons a series is refused before it reaches the store (counted in
# tsagent_samples_rejected_total{source="remote_write",reason=...}).

REASON_INVALID_LABELS = "invalid_labels"
REASON_HISTOGRAM = "native_histogram_unsupported"
REASON_EXEMPLAR = "exemplar_unsupported"


class DecodeError(ValueError):
    """The body is not a well-formed protobuf message of the expected type."""


@dataclass(slots=True)
class SeriesIssue:
    """Something of one series that was not written, and why."""

    reason: str
    series: str  # the series as Prometheus prints it, best effort
    detail: str
    count: int  # samples (or histograms / exemplars) affected


@dataclass(slots=True)
class Metadata:
    metric: str
    type: str
    help: str
    unit: str


@dataclass(slots=True)
class Decoded:
    """One request: sample arrays plus what still needs a series id.

    ``ids[i]`` is 0 for samples whose series missed the cache; ``misses``
    maps each such cache key to its positions in the arrays, and
    ``miss_labels`` to its validated labels (or the issue that refused it).
    """

    ids: array[int] = field(default_factory=lambda: array("q"))
    ts: array[int] = field(default_factory=lambda: array("q"))
    vals: array[float] = field(default_factory=lambda: array("d"))
    misses: dict[Hashable, list[int]] = field(default_factory=dict)
    miss_labels: dict[Hashable, Labels | SeriesIssue] = field(default_factory=dict)
    issues: list[SeriesIssue] = field(default_factory=list)
    metadata: list[Metadata] = field(default_factory=list)
    series: int = 0
    histograms: int = 0
    exemplars: int = 0
    # Positions of synthetic zero samples at created timestamps (remote-write 2.0).
    synthetic: list[int] = field(default_factory=list)


# --- primitives ------------------------------------------------------------------


def _signed64(v: int) -> int:
    return v - _TWO_64 if v >= _TWO_63 else v


def skip_field(buf: bytes, pos: int, wire: int, end: int) -> int:
    """Position after a field's payload whose key was already read."""
    if wire == 0:
        _, pos = read_uvarint(buf, pos, DecodeError)
    elif wire == 1:
        pos += 8
    elif wire == 2:
        ln, pos = read_uvarint(buf, pos, DecodeError)
        pos += ln
    elif wire == 5:
        pos += 4
    else:
        raise DecodeError(f"unsupported wire type {wire}")
    if pos > end:
        raise DecodeError("field runs past the end of its message")
    return pos


def _len_field(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of a length-delimited payload whose key was already read."""
    ln, pos = read_uvarint(buf, pos, DecodeError)
    stop = pos + ln
    if stop > end:
        raise DecodeError("length-delimited field runs past the end of its message")
    return pos, stop


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not valid UTF-8") from None


# --- general path ------------------------------------------------------------------


def parse_label(buf: bytes, pos: int, end: int) -> tuple[bytes, bytes]:
    """Raw (name, value) of one ``Label`` message."""
    name = value = b""
    while pos < end:
        key, pos = read_uvarint(buf, pos, DecodeError)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            a, pos = _len_field(buf, pos, end)
            name = buf[a:pos]
        elif fno == 2 and wire == 2:
            a, pos = _len_field(buf, pos, end)
            value = buf[a:pos]
        else:
            pos = skip_field(buf, pos, wire, end)
    return name, value


def parse_sample(buf: bytes, pos: int, end: int) -> tuple[int, float]:
    """(timestamp, value) of one ``Sample`` message."""
    value = 0.0
    ts = 0
    while pos < end:
        key, pos = read_uvarint(buf, pos, DecodeError)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 1:
            if pos + 8 > end:
                raise DecodeError("truncated double")
            value = _unpack_double(buf, pos)[0]
            pos += 8
        elif fno == 2 and wire == 0:
            v, pos = read_uvarint(buf, pos, DecodeError)
            ts = _signed64(v)
        else:
            pos = skip_field(buf, pos, wire, end)
    return ts, value


@dataclass(slots=True)
class RawSeries:
    key: bytes
    labels: list[tuple[bytes, bytes]]
    samples: list[tuple[int, float]]
    exemplars: int
    histograms: int


def parse_series(buf: bytes, s: int, e: int) -> RawSeries:
    """Field-by-field parse of one ``TimeSeries`` payload ``buf[s:e]``.

    One-byte keys and lengths, and labels of the plain form
    ``0a <len> name 12 <len> value``, are read inline; anything else goes
    through the general helpers.
    """
    spans: list[tuple[int, int]] = []
    labels: list[tuple[bytes, bytes]] = []
    samples: list[tuple[int, float]] = []
    exemplars = histograms = 0
    pos = s
    while pos < e:
        start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_uvarint(buf, pos, DecodeError)
        if key == 0x0A:  # field 1, a Label
            ln = buf[pos] if pos < e else 0x80
            if ln < 0x80:
                a = pos + 1
                pos = a + ln
            else:
                a, pos = _len_field(buf, pos, e)
            if pos > e:
                raise DecodeError("length-delimited field runs past the end of its message")
            spans.append((start, pos))
            # Plain form: 0a <n> name 12 <m> value, both lengths one byte.
            if pos - a >= 4 and buf[a] == 0x0A:
                nl = buf[a + 1]
                b = a + 2 + nl
                if nl < 0x80 and b + 1 < pos and buf[b] == 0x12:
                    vl = buf[b + 1]
                    if vl < 0x80 and b + 2 + vl == pos:
                        labels.append((buf[a + 2 : b], buf[b + 2 : pos]))
                        continue
            labels.append(parse_label(buf, a, pos))
            continue
        fno, wire = key >> 3, key & 7
        if wire == 2 and fno in (2, 3, 4):
            a, pos = _len_field(buf, pos, e)
            if fno == 2:
                samples.append(parse_sample(buf, a, pos))
            elif fno == 3:
                exemplars += 1
            else:
                histograms += 1
        else:
            pos = skip_field(buf, pos, wire, e)
    if not spans:
        key_bytes = b""
    elif spans[-1][1] - spans[0][0] == sum(b - a for a, b in spans):
        key_bytes = buf[spans[0][0] : spans[-1][1]]
    else:
        key_bytes = b"".join(buf[a:b] for a, b in spans)
    return RawSeries(key_bytes, labels, samples, exemplars, histograms)


# --- the request ---------------------------------------------------------------------

_METRIC_TYPES = {
    0: "unknown",
    1: "counter",
    2: "gauge",
    3: "histogram",
    4: "gaugehistogram",
    5: "summary",
    6: "info",
    7: "stateset",
}


def metric_type_name(code: int) -> str:
    return _METRIC_TYPES.get(code, "unknown")


def _parse_metadata(buf: bytes, pos: int, end: int) -> Metadata:
    mtype = 0
    name = help_ = unit = b""
    while pos < end:
        key, pos = read_uvarint(buf, pos, DecodeError)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 0:
            mtype, pos = read_uvarint(buf, pos, DecodeError)
        elif wire == 2 and fno in (2, 4, 5):
            a, pos = _len_field(buf, pos, end)
            if fno == 2:
                name = buf[a:pos]
            elif fno == 4:
                help_ = buf[a:pos]
            else:
                unit = buf[a:pos]
        else:
            pos = skip_field(buf, pos, wire, end)
    return Metadata(
        _text(name, "metadata metric name"),
        metric_type_name(mtype),
        _text(help_, "metadata help"),
        _text(unit, "metadata unit"),
    )


def decode_write_request(buf: bytes, cache: dict[Hashable, int]) -> Decoded:
    """Decode a ``prometheus.WriteRequest``; ``cache`` maps label bytes to series ids.

    The cache is only read here; the caller resolves ``misses`` and fills it.
    Raises :class:`DecodeError` for anything that is not a well-formed message.
    """
    try:
        return _decode_write_request(buf, cache)
    except (IndexError, struct.error):  # a safety net: bounds are checked explicitly
        raise DecodeError("truncated message") from None


def _decode_write_request(buf: bytes, cache: dict[Hashable, int]) -> Decoded:
    out = Decoded()
    ids = out.ids
    tss = out.ts
    vals = out.vals
    ids_append = ids.append
    ts_append = tss.append
    val_append = vals.append
    cache_get = cache.get
    tcache: dict[bytes, int] = {}
    tcache_get = tcache.get
    unpack = _unpack_double
    view = memoryview(buf)
    n = len(buf)
    p = 0
    series = 0
    while p < n:
        tag = buf[p]
        if tag == 0x0A:
            # TimeSeries: its length, usually 1 or 2 varint bytes.
            b = buf[p + 1] if p + 1 < n else 0x80
            if b < 0x80:
                s = p + 2
                e = s + b
            elif p + 2 < n and buf[p + 2] < 0x80:
                s = p + 3
                e = s + (b & 0x7F) + (buf[p + 2] << 7)
            else:
                ln, s = read_uvarint(buf, p + 1, DecodeError)
                e = s + ln
            if e > n:
                raise DecodeError("timeseries runs past the end of the request")
            p = e
            series += 1
            # Most common: value present, 6-byte timestamp (2004 to 2109 in ms):
            # 12 10 09 <8 bytes> 10 <6 bytes>, the last 18 bytes of the series.
            if (
                e - 18 >= s
                and buf[e - 7] == 0x10
                and buf[e - 17] == 0x10
                and buf[e - 18] == 0x12
                and buf[e - 16] == 0x09
            ):
                tb = buf[e - 6 : e]
                t = tcache_get(tb)
                if t is None:
                    v, q = read_uvarint(tb, 0, DecodeError)
                    t = _signed64(v) if q == 6 else None
                    if t is not None:
                        tcache[tb] = t
                if t is not None:
                    key = series_key(view[s : e - 18])
                    sid = cache_get(key)
                    if sid is not None:
                        ids_append(sid)
                        ts_append(t)
                        val_append(unpack(buf, e - 15)[0])
                        continue
                    if _plain_miss(buf, s, e - 18, key, t, unpack(buf, e - 15)[0], out):
                        continue
            elif e - s >= 4 and buf[e - 1] < 0x80:
                # Find the tag of the trailing timestamp varint, walking back over
                # its continuation bytes (all >= 0x80, the tag 0x10 is not).
                j = e - 2
                while j > s and buf[j] >= 0x80:
                    j -= 1
                k = e - 1 - j
                if buf[j] == 0x10 and k <= 10:
                    tail = -1
                    val = 0.0
                    if (
                        j - 11 >= s
                        and buf[j - 9] == 0x09
                        and buf[j - 10] == 10 + k
                        and buf[j - 11] == 0x12
                    ):
                        tail = j - 11
                        val = unpack(buf, j - 8)[0]
                    elif j - 2 >= s and buf[j - 1] == 1 + k and buf[j - 2] == 0x12:
                        tail = j - 2
                    if tail >= 0:
                        tb = buf[j + 1 : e]
                        t = tcache_get(tb)
                        if t is None:
                            t = tcache[tb] = _signed64(read_uvarint(tb, 0, DecodeError)[0])
                        key = series_key(view[s:tail])
                        sid = cache_get(key)
                        if sid is not None:
                            ids_append(sid)
                            ts_append(t)
                            val_append(val)
                            continue
                        if _plain_miss(buf, s, tail, key, t, val, out):
                            continue
            _general_series(buf, s, e, out, cache)
        elif tag == 0x1A:
            a, p = _len_field(buf, p + 1, n)
            out.metadata.append(_parse_metadata(buf, a, p))
        else:
            fkey, p = read_uvarint(buf, p, DecodeError)
            p = skip_field(buf, p, fkey & 7, n)
    out.series = series
    return out


def series_key(label_bytes: bytes | memoryview) -> int:
    """The series cache key: a 128-bit hash of a series' raw label fields.

    Keys are hashes, not the bytes, so the cache costs ~40 bytes a series
    instead of ~200 (the label fields of a node-exporter-like series); at
    128 bits a collision between two label sets is as likely as a random
    bit flip in memory several times over (n² / 2^129: 10^-27 for ten
    million series), where 64 bits would be a real chance over a fleet's
    lifetime.
    """
    return xxh3_128_intdigest(label_bytes)


# Label fields seen before (their raw ``0a <n> name 12 <m> value`` payload) -> the valid,
# non-empty (name, value) pair. Series churn (a redeploy, new pods) brings new label
# sets made mostly of pairs already seen (job, env, metric names), so a new series'
# labels cost a slice and a dict lookup each instead of a field-by-field parse.
_PAIRS: dict[bytes, tuple[str, str]] = {}
_PAIRS_MAX = 100_000


def _plain_pair(raw: bytes) -> tuple[str, str] | None:
    """The pair of a label payload in plain form, when valid and non-empty; else None."""
    if len(raw) < 4 or raw[0] != 0x0A:
        return None
    nl = raw[1]
    b = 2 + nl
    if nl >= 0x80 or b + 2 > len(raw) or raw[b] != 0x12 or raw[b + 1] != len(raw) - b - 2:
        return None
    try:
        name = raw[2:b].decode("utf-8")
        value = raw[b + 2 :].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not value or not valid_label_name(name):
        return None
    if name == METRIC_NAME and not valid_metric_name(value):
        return None
    if len(_PAIRS) >= _PAIRS_MAX:
        _PAIRS.clear()
    pair = _PAIRS[raw] = (sys.intern(name), value)
    return pair


def _plain_miss(buf: bytes, s: int, tail: int, key: int, t: int, val: float, out: Decoded) -> bool:
    """A cache miss of a series that is labels then one sample: record it, or return
    False to leave it to :func:`_general_series` (anything unusual, invalid labels
    included, so that refusals are explained in one place)."""
    verdict = out.miss_labels.get(key)
    if verdict is None:
        pairs = []
        get = _PAIRS.get
        pos = s
        while pos < tail:
            if buf[pos] != 0x0A:
                return False
            ln = buf[pos + 1]
            a = pos + 2
            pos = a + ln
            if ln >= 0x80 or pos > tail:
                return False
            raw = buf[a:pos]
            pair = get(raw)
            if pair is None:
                pair = _plain_pair(raw)
                if pair is None:
                    return False
            pairs.append(pair)
        names = dict(pairs)
        if len(names) != len(pairs) or METRIC_NAME not in names or pairs != sorted(pairs):
            return False
        verdict = out.miss_labels[key] = tuple(pairs)
    elif isinstance(verdict, SeriesIssue):
        return False
    positions = out.misses.get(key)
    if positions is None:
        positions = out.misses[key] = []
    positions.append(len(out.ids))
    out.ids.append(0)
    out.ts.append(t)
    out.vals.append(val)
    return True


def _general_series(buf: bytes, s: int, e: int, out: Decoded, cache: dict[Hashable, int]) -> None:
    rs = parse_series(buf, s, e)
    key = series_key(rs.key)
    sid = cache.get(key)
    if sid is None:
        verdict = out.miss_labels.get(key)
        if verdict is None:
            checked = validate_labels(rs.labels)
            verdict = (
                SeriesIssue(REASON_INVALID_LABELS, format_raw_labels(rs.labels), checked, 0)
                if isinstance(checked, str)
                else checked
            )
            out.miss_labels[key] = verdict
        if isinstance(verdict, SeriesIssue):
            verdict.count += len(rs.samples)
            sid = -1
    if rs.exemplars or rs.histograms:
        name = format_raw_labels(rs.labels)
        if rs.histograms:
            out.histograms += rs.histograms
            out.issues.append(
                SeriesIssue(
                    REASON_HISTOGRAM,
                    name,
                    "native histogram samples are not supported",
                    rs.histograms,
                )
            )
        if rs.exemplars:
            out.exemplars += rs.exemplars
            out.issues.append(
                SeriesIssue(REASON_EXEMPLAR, name, "exemplars are not supported", rs.exemplars)
            )
    if sid == -1 or not rs.samples:
        return
    ids = out.ids
    if sid is None:
        positions = out.misses.setdefault(key, [])
        first = len(ids)
        positions.extend(range(first, first + len(rs.samples)))
        sid = 0
    for t, v in rs.samples:
        ids.append(sid)
        out.ts.append(t)
        out.vals.append(v)
