"""Re-encoding stored segments with another codec, and per-codec size figures.

Why this exists: the codec of a series is chosen when its head is flushed,
so changing ``storage.codec`` or ``codec_rules`` only affects new data.  An
operator comparing codecs wants to convert what is already stored and see
the effect in bytes, without a window in which a query could see half the
old and half the new blocks.

Atomicity comes from :meth:`Writer.job`: reading, re-encoding, deleting and
inserting all happen in one IMMEDIATE transaction on the SQL thread.  Readers
use their own WAL snapshots, so a query running meanwhile sees either every
old block or every new block, both of which decode to the same samples.
Only stored segments are touched; samples still in the head keep waiting for
their flush, which uses the configured codec as before.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.storage.errors import StorageError
from agent.storage.head import INT64_MIN
from agent.storage.segments import CodecChooser, SegmentRow, decode_merge

INT64_MAX = int(np.iinfo(np.int64).max)

if TYPE_CHECKING:
    from agent.storage.writer import Writer

_INSERT_SEGMENT = (
    "INSERT INTO segments(series_id, min_t, max_t, count, codec, data) VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class CompressionResult:
    """What :func:`recompress_series` did to one series' stored segments."""

    series_id: int
    codec_before: frozenset[str]
    codec_after: str
    block_size: int
    segments_before: int
    segments_after: int
    bytes_before: int
    bytes_after: int
    samples: int  # distinct samples stored, before and after (overlapping blocks deduplicated)

    @property
    def ratio(self) -> float:
        """bytes_after / bytes_before; below 1 means the new codec is smaller."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0


@dataclass(slots=True)
class CodecUsage:
    """Segment figures of one group (a codec, a metric name, or everything)."""

    segments: int = 0
    samples: int = 0
    bytes: int = 0

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes / self.samples if self.samples else 0.0

    def add(self, segments: int, samples: int, nbytes: int) -> None:
        self.segments += segments
        self.samples += samples
        self.bytes += nbytes


@dataclass(slots=True)
class CompressionStats:
    """Bytes per sample of the *stored segments* only.

    Head samples (not yet flushed, kept uncompressed in memory and in the log)
    are excluded from every figure; ``head_samples`` says how many there are
    so a reader can tell how much of the data the figures cover.  ``bytes`` is
    the encoded blob size; SQLite's per-row and index overhead is not counted
    because it does not depend on the codec.
    """

    total: CodecUsage = field(default_factory=CodecUsage)
    by_codec: dict[str, CodecUsage] = field(default_factory=dict)
    by_metric: dict[str, CodecUsage] = field(default_factory=dict)
    head_samples: int = 0


def check_codec(codecs: Mapping[str, object], method: str) -> None:
    """An unknown codec is a caller mistake; the message lists what would work."""
    if method not in codecs:
        known = ", ".join(sorted(codecs)) or "none"
        raise ValueError(f"unknown codec {method!r}; known codecs: {known}")


def encode_blocks(
    series_id: int,
    ts: np.ndarray,
    vals: np.ndarray,
    codec_name: str,
    chooser: CodecChooser,
    block_size: int,
) -> list[SegmentRow]:
    """Near-equal blocks of at most ``block_size`` samples, like a flush makes them.

    Near-equal for the same reason as :func:`agent.storage.segments.encode_series`:
    no one-sample runt block at the end.
    """
    n = int(ts.size)
    if n == 0:
        return []
    codec = chooser.get(codec_name)
    nblocks = -(-n // block_size)
    bounds = [round(i * n / nblocks) for i in range(nblocks + 1)]
    rows: list[SegmentRow] = []
    for lo, hi in itertools.pairwise(bounds):
        bt = ts[lo:hi]
        data = bytes(codec.encode(bt, vals[lo:hi]))
        rows.append((series_id, int(bt[0]), int(bt[-1]), hi - lo, codec.name, data))
    return rows


def verify_rows(
    rows: list[SegmentRow], ts: np.ndarray, vals: np.ndarray, chooser: CodecChooser
) -> None:
    """Decode what is about to replace the old blocks and compare bit for bit.

    The old rows are deleted in the same transaction, so a codec that does
    not round-trip would lose data silently; raising here rolls it all back.
    """
    pos = 0
    want_bits = vals.view(np.uint64)
    for _sid, _mn, _mx, cnt, codec_name, data in rows:
        t, v = chooser.get(codec_name).decode(data, cnt)
        got_bits = np.asarray(v, dtype=np.float64).view(np.uint64)
        if (
            t.size != cnt
            or not np.array_equal(t, ts[pos : pos + cnt])
            or not np.array_equal(got_bits, want_bits[pos : pos + cnt])
        ):
            raise StorageError(f"codec {codec_name!r} did not round-trip a block; nothing changed")
        pos += cnt
    if pos != ts.size:
        raise StorageError("re-encoded blocks do not cover every sample; nothing changed")


def recompress_series(
    conn: sqlite3.Connection,
    chooser: CodecChooser,
    series_id: int,
    method: str,
    block_size: int,
) -> CompressionResult:
    """Runs in the SQL thread inside the job's transaction: replace every block of a series."""
    rows = conn.execute(
        "SELECT id, min_t, max_t, count, codec, data FROM segments"
        " WHERE series_id = ? ORDER BY max_t, min_t",
        (series_id,),
    ).fetchall()
    before = frozenset(r[4] for r in rows)
    bytes_before = sum(len(r[5]) for r in rows)
    # decode_merge sorts and deduplicates overlapping blocks exactly as a read does,
    # so the new blocks hold precisely what any query returned before.
    ts, vals = decode_merge(
        [(mn, mx, cnt, codec, data) for _id, mn, mx, cnt, codec, data in rows],
        None,
        chooser,
        INT64_MIN,
        INT64_MAX,
    )
    new_rows = encode_blocks(series_id, ts, vals, method, chooser, block_size)
    verify_rows(new_rows, ts, vals, chooser)
    if rows:
        conn.executemany("DELETE FROM segments WHERE id = ?", [(r[0],) for r in rows])
        conn.executemany(_INSERT_SEGMENT, new_rows)
    return CompressionResult(
        series_id=series_id,
        codec_before=before,
        codec_after=method,
        block_size=block_size,
        segments_before=len(rows),
        segments_after=len(new_rows),
        bytes_before=bytes_before,
        bytes_after=sum(len(r[5]) for r in new_rows),
        samples=int(ts.size),
    )


def segment_usage(conn: sqlite3.Connection) -> list[tuple[int, str, int, int, int]]:
    """(series_id, codec, segments, samples, bytes) per series and codec.

    ``length(data)`` reads the blob size from the record header, so this
    scans the table without loading the blobs themselves.
    """
    return conn.execute(
        "SELECT series_id, codec, count(*), sum(count), sum(length(data))"
        " FROM segments GROUP BY series_id, codec"
    ).fetchall()


def summarise(
    usage: list[tuple[int, str, int, int, int]], metric_of: Callable[[int], str], head_samples: int
) -> CompressionStats:
    """Aggregate :func:`segment_usage` rows by codec and by metric name."""
    stats = CompressionStats(head_samples=head_samples)
    for sid, codec, nseg, nsamples, nbytes in usage:
        stats.total.add(nseg, nsamples, nbytes)
        stats.by_codec.setdefault(codec, CodecUsage()).add(nseg, nsamples, nbytes)
        stats.by_metric.setdefault(metric_of(sid), CodecUsage()).add(nseg, nsamples, nbytes)
    return stats


async def apply_compression(
    writer: Writer, chooser: CodecChooser, series_id: int, method: str, block_size: int
) -> CompressionResult:
    """Queue the re-encoding as one writer job and keep the segment counter right."""
    check_codec(chooser.codecs, method)
    if block_size < 1:
        raise ValueError("block_size must be >= 1")

    def sql(conn: sqlite3.Connection) -> CompressionResult:
        return recompress_series(conn, chooser, series_id, method, block_size)

    def after(res: CompressionResult) -> CompressionResult:
        writer.counters.segments += res.segments_after - res.segments_before
        return res

    result: CompressionResult = await writer.job(sql, after)
    return result


__all__ = [
    "CodecUsage",
    "CompressionResult",
    "CompressionStats",
    "apply_compression",
    "check_codec",
    "encode_blocks",
    "recompress_series",
    "segment_usage",
    "summarise",
]
