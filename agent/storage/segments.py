"""Encoding head data into segment rows, and decoding/merging them on read.

A segment row is one block of one series: at most ``block_size`` samples,
encoded by one codec whose name is stored beside the blob, so codecs can
change over time and old rows stay readable.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.model import Labels, metric_name
from agent.storage.codec import Codec
from agent.storage.errors import StorageError

_EMPTY_T = np.zeros(0, dtype=np.int64)
_EMPTY_V = np.zeros(0, dtype=np.float64)

# series_id, min_t, max_t, count, codec, data
SegmentRow = tuple[int, int, int, int, str, bytes]


class CodecChooser:
    """Picks the codec for a series by its metric name (first matching rule wins)."""

    def __init__(
        self, codecs: Mapping[str, Codec], default: str, rules: Sequence[tuple[str, str]]
    ) -> None:
        if default not in codecs:
            raise StorageError(f"default codec {default!r} is not registered ({sorted(codecs)})")
        for _, name in rules:
            if name not in codecs:
                raise StorageError(f"codec rule names unknown codec {name!r}")
        try:
            self._rules = [(re.compile(pat), name) for pat, name in rules]
        except re.error as exc:
            raise StorageError(f"invalid codec rule regex: {exc}") from exc
        self.codecs = dict(codecs)
        self.default = default
        self._cache: dict[str, str] = {}

    def name_for(self, labels: Labels) -> str:
        metric = metric_name(labels)
        name = self._cache.get(metric)
        if name is None:
            name = self.default
            for rx, codec in self._rules:
                if rx.fullmatch(metric):
                    name = codec
                    break
            self._cache[metric] = name
        return name

    def get(self, name: str) -> Codec:
        codec = self.codecs.get(name)
        if codec is None:
            raise StorageError(f"segment uses codec {name!r}, which is not registered")
        return codec


@dataclass(slots=True)
class FlushItem:
    """One series' head, handed to the writer thread for encoding (read-only there)."""

    series_id: int
    codec: str
    ts: np.ndarray  # int64
    vb: np.ndarray  # uint64 value bits


def encode_series(
    item: FlushItem, chooser: CodecChooser, block_size: int
) -> tuple[list[SegmentRow], int, int]:
    """Split one series' head into near-equal blocks and encode each.

    Near-equal instead of ``block_size`` + remainder, so 721 samples make two
    blocks of ~360 rather than a full one and a one-sample runt.
    Returns (rows, sample count, max timestamp).
    """
    ts = np.frombuffer(item.ts, dtype=np.int64)
    vals = np.frombuffer(item.vb, dtype=np.float64)
    n = ts.size
    codec = chooser.get(item.codec)
    nblocks = -(-n // block_size)
    bounds = [round(i * n / nblocks) for i in range(nblocks + 1)]
    rows: list[SegmentRow] = []
    for lo, hi in itertools.pairwise(bounds):
        bt = ts[lo:hi]
        rows.append(
            (
                item.series_id,
                int(bt[0]),
                int(bt[-1]),
                hi - lo,
                codec.name,
                bytes(codec.encode(bt, vals[lo:hi])),
            )
        )
    return rows, n, int(ts[-1])


def fetch_segments(
    conn: sqlite3.Connection, series_ids: Sequence[int], start: int, end: int
) -> dict[int, list[tuple[int, int, int, str, bytes]]]:
    """Rows of the given series overlapping [start, end], grouped per series in max_t order."""
    out: dict[int, list[tuple[int, int, int, str, bytes]]] = {}
    if len(series_ids) == 1:
        cur = conn.execute(
            "SELECT series_id, min_t, max_t, count, codec, data FROM segments"
            " WHERE series_id = ? AND max_t >= ? AND min_t <= ? ORDER BY series_id, max_t",
            (series_ids[0], start, end),
        )
        for sid, mn, mx, cnt, codec, data in cur:
            out.setdefault(sid, []).append((mn, mx, cnt, codec, data))
        return out
    chunk = 500
    for i in range(0, len(series_ids), chunk):
        ids = series_ids[i : i + chunk]
        marks = ",".join("?" * len(ids))
        cur = conn.execute(
            "SELECT series_id, min_t, max_t, count, codec, data FROM segments"
            f" WHERE series_id IN ({marks}) AND max_t >= ? AND min_t <= ?"
            " ORDER BY series_id, max_t",
            (*ids, start, end),
        )
        for sid, mn, mx, cnt, codec, data in cur:
            out.setdefault(sid, []).append((mn, mx, cnt, codec, data))
    return out


def decode_merge(
    rows: Sequence[tuple[int, int, int, str, bytes]],
    head: tuple[np.ndarray, np.ndarray] | None,
    chooser: CodecChooser,
    start: int,
    end: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode blocks, merge with the head copy, clip to [start, end] inclusive.

    The common case (blocks in time order, not overlapping each other or the
    head) is a plain concatenation.  Otherwise (out-of-order data flushed into
    overlapping blocks, or a sample seen both in the head copy and in a
    segment committed meanwhile) a stable sort plus dedupe on timestamp keeps
    the first copy; equal timestamps carry equal bits because the writer
    rejects conflicting values.
    """
    parts_t: list[np.ndarray] = []
    parts_v: list[np.ndarray] = []
    ordered = True
    prev_max: int | None = None
    for mn, mx, cnt, codec_name, data in rows:
        t, v = chooser.get(codec_name).decode(data, cnt)
        if prev_max is not None and mn <= prev_max:
            ordered = False
        prev_max = mx if prev_max is None else max(prev_max, mx)
        parts_t.append(t)
        parts_v.append(v)
    if head is not None and head[0].size:
        if prev_max is not None and int(head[0][0]) <= prev_max:
            ordered = False
        parts_t.append(head[0])
        parts_v.append(head[1])
    if not parts_t:
        return _EMPTY_T, _EMPTY_V
    if len(parts_t) == 1:
        # Codecs may return read-only views of the blob; callers get arrays they own.
        t, v = parts_t[0], parts_v[0]
        if not t.flags.writeable or not v.flags.writeable:
            t, v = t.copy(), v.copy()
    else:
        t = np.concatenate(parts_t)
        v = np.concatenate(parts_v)
    if not ordered:
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        keep = np.ones(t.size, dtype=bool)
        keep[1:] = t[1:] != t[:-1]
        if not keep.all():
            t, v = t[keep], v[keep]
    if t.size and (t[0] < start or t[-1] > end):
        lo = int(np.searchsorted(t, start, "left"))
        hi = int(np.searchsorted(t, end, "right"))
        t, v = t[lo:hi], v[lo:hi]
    return t, v


def probe_segments(
    conn: sqlite3.Connection, chooser: CodecChooser, series_id: int, ts: int
) -> int | None:
    """Value bits stored in segments for (series, ts), or None; for out-of-order checks."""
    cur = conn.execute(
        "SELECT count, codec, data FROM segments WHERE series_id = ? AND max_t >= ? AND min_t <= ?",
        (series_id, ts, ts),
    )
    for cnt, codec_name, data in cur:
        t, v = chooser.get(codec_name).decode(data, cnt)
        i = int(np.searchsorted(t, ts))
        if i < t.size and int(t[i]) == ts:
            return int(v[i : i + 1].view(np.uint64)[0])
    return None
