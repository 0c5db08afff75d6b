"""A hand-written ``prometheus.WriteRequest`` (remote-write 1.0) encoder.

Why not the generated classes: building a message object per sample costs
more than the whole send. Label sets are encoded once per series (and
cached by the exporter), so a request is byte concatenation: per series its
cached label fields, then one ``Sample`` field per sample. Values are the
stored bits (``tobytes`` of float64), so NaN payloads such as the staleness
marker go out unchanged.

Wire layout (field numbers from ``agent/prompb/proto``)::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }
"""

from __future__ import annotations

import cramjam
import numpy as np

from agent.plugin_api import Labels, uvarint

varint = uvarint  # negative int64 values as their two's complement (10 bytes)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_labels(labels: Labels) -> bytes:
    """The ``labels`` fields of a TimeSeries (label set must be sorted by name)."""
    return b"".join(
        _field(0x0A, _field(0x0A, k.encode()) + _field(0x12, v.encode())) for k, v in labels
    )


def encode_series(label_bytes: bytes, ts: np.ndarray, value_bytes: bytes) -> bytes:
    """One TimeSeries field: cached labels, then a Sample per (timestamp, 8 value bytes)."""
    parts = [label_bytes]
    append = parts.append
    for i, t in enumerate(ts.tolist()):
        tv = varint(t)
        # Sample body: 0x09 + 8-byte double, 0x10 + varint timestamp (at most 20 bytes)
        append(bytes((0x12, 10 + len(tv), 0x09)))
        append(value_bytes[8 * i : 8 * i + 8])
        append(b"\x10")
        append(tv)
    body = b"".join(parts)
    return b"\x0a" + varint(len(body)) + body


def encode_request(
    labels: list[bytes], out_ids: np.ndarray, ts: np.ndarray, bits: np.ndarray
) -> bytes:
    """A WriteRequest for samples given in send order; grouped by series, order kept.

    ``out_ids[i]`` indexes ``labels``; the stable sort keeps each series'
    samples in the order given, which is what per-series ordering needs.
    """
    if out_ids.size == 0:
        return b""
    order = np.argsort(out_ids, kind="stable")
    ids, t, b = out_ids[order], ts[order], bits[order]
    cut = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    starts = [0, *cut.tolist()]
    ends = [*cut.tolist(), int(ids.size)]
    raw = b.astype("<u8", copy=False).tobytes()
    return b"".join(
        encode_series(labels[int(ids[s])], t[s:e], raw[8 * s : 8 * e])
        for s, e in zip(starts, ends, strict=True)
    )


def compress(body: bytes) -> bytes:
    """Snappy block format, as the spec requires (not the framed format)."""
    return bytes(cramjam.snappy.compress_raw(body))
