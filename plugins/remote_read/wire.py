"""Protobuf encoding of SAMPLES read responses straight from numpy arrays.

A ``ReadResponse`` is almost all ``Sample`` messages. Building one generated
protobuf object per sample costs about 0.7 s per million samples, all of it
holding the GIL; the layout of a ``Sample`` is fixed, so the samples of a
series are written here with a handful of vectorised numpy operations
instead (about 20x faster). Labels and the nesting around them are few and
are written by hand too, so a response is produced without any per-sample
Python object. The tests decode the output with the generated classes.

Messages (``prometheus`` package, field numbers from ``prompb``)::

    ReadResponse { repeated QueryResult results = 1; }
    QueryResult  { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }

Zero values are written explicitly (proto3 writers omit them, readers accept
both), which keeps every sample the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from agent.plugin_api import Labels
from plugins.remote_read.chunks import uvarint

_LEN = 2  # wire type of length-delimited fields

# A sample record inside TimeSeries: tag 0x12, length, tag 0x09 + 8 value bytes,
# tag 0x10 + the timestamp varint (1..10 bytes).
_MAX_RECORD = 2 + 9 + 1 + 10
_COLUMNS = np.arange(_MAX_RECORD)
_VARINT_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_BLOCK = 1 << 16


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return uvarint(number << 3 | _LEN) + uvarint(len(payload)) + payload


def encode_labels(labels: Labels) -> bytes:
    """The ``labels`` fields of a TimeSeries (or ChunkedSeries), in the given order."""
    return b"".join(
        field(1, field(1, name.encode()) + field(2, value.encode())) for name, value in labels
    )


def encode_samples(timestamps: np.ndarray, values: np.ndarray) -> bytes:
    """The ``samples`` fields of a TimeSeries, value bits preserved exactly.

    Works in blocks so that the temporary arrays (about 100 bytes a sample)
    stay small whatever the size of the series.
    """
    ts = np.ascontiguousarray(timestamps, dtype=np.int64).view(np.uint64)
    vs = np.ascontiguousarray(values, dtype="<f8")
    if ts.shape != vs.shape or ts.ndim != 1:
        raise ValueError("timestamps and values must be 1-d arrays of equal length")
    return b"".join(
        _encode_block(ts[i : i + _BLOCK], vs[i : i + _BLOCK]) for i in range(0, ts.size, _BLOCK)
    )


def _encode_block(ts: np.ndarray, values: np.ndarray) -> bytes:
    n = int(ts.size)
    vbytes = values.view(np.uint8).reshape(n, 8)
    varint_len = 1 + (ts[:, None] >= _VARINT_THRESHOLDS[None, :]).sum(axis=1)
    septets = ((ts[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(10)[None, :] < (varint_len[:, None] - 1)
    septets |= np.where(more, np.uint8(0x80), np.uint8(0))
    rec = np.zeros((n, _MAX_RECORD), dtype=np.uint8)
    rec[:, 0] = 0x12  # TimeSeries.samples, length-delimited
    rec[:, 1] = (10 + varint_len).astype(np.uint8)  # Sample length, always < 128
    rec[:, 2] = 0x09  # Sample.value, 64-bit
    rec[:, 3:11] = vbytes
    rec[:, 11] = 0x10  # Sample.timestamp, varint
    rec[:, 12:22] = septets
    keep = _COLUMNS[None, :] < (12 + varint_len)[:, None]
    return rec[keep].tobytes()


def encode_timeseries(labels: Labels, timestamps: np.ndarray, values: np.ndarray) -> bytes:
    """One serialized TimeSeries message."""
    return encode_labels(labels) + encode_samples(timestamps, values)


def encode_read_response(results: Iterable[Iterable[bytes]]) -> bytes:
    """A ReadResponse from, per query, the serialized TimeSeries of that query."""
    return b"".join(field(1, b"".join(field(1, ts) for ts in series)) for series in results)
