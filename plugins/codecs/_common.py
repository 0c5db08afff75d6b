"""Helpers shared by the codecs: argument checks, zigzag, varints, bit lengths.

Everything here works on whole numpy arrays, because a Python loop per sample
costs about a microsecond and the store decodes millions of samples per query.
All integer arithmetic is done in wrapping int64/uint64 on purpose: a delta of
two arbitrary int64 timestamps may overflow, and since decoding undoes the
same wrap, any int64 sequence round-trips without special cases.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.plugin_api import CorruptBlobError as CorruptBlobError  # re-exported to the codecs
from agent.plugin_api import WireError
from agent.plugin_api import as_bytes as as_bytes
from agent.plugin_api import check_arrays as check_arrays
from agent.plugin_api import check_count as check_count
from agent.plugin_api import read_uvarint as wire_uvarint
from agent.plugin_api import uvarint as uvarint

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

_SEVEN_BIT_SHIFTS = (np.arange(10, dtype=np.uint64) * np.uint64(7)).astype(np.uint64)
_TEN = np.arange(10)


def empty_result() -> tuple[I64, F64]:
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)


def zigzag(x: I64) -> U64:
    """Map small negative and positive int64 to small uint64 (wrapping, so total)."""
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def unzigzag(u: U64) -> I64:
    return ((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1)))).view(np.int64)


def zigzag_int(x: int) -> int:
    """Scalar zigzag for metadata fields; ``x`` must be within int64."""
    return (x << 1) ^ (x >> 63) if x < 0 else x << 1


def unzigzag_int(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def timestamp_dods(ts: I64) -> I64:
    """``[t0, t1 - t0, then delta-of-delta]``, wrapping, as the decoder expects."""
    out = np.empty_like(ts)
    if ts.size:
        out[0] = ts[0]
    if ts.size > 1:
        deltas = ts[1:] - ts[:-1]
        out[1] = deltas[0]
        np.subtract(deltas[1:], deltas[:-1], out=out[2:])
    return out


def timestamps_from_dods(dods: I64) -> I64:
    out = np.empty_like(dods)
    if dods.size:
        out[0] = dods[0]
        np.add(np.cumsum(np.cumsum(dods[1:])), dods[0], out=out[1:])
    return out


def bit_length(x: U64) -> npt.NDArray[np.int64]:
    """Exact ``int.bit_length`` for every element.

    ``float64(x)`` rounds above 2**53, so each 32-bit half goes through
    ``frexp`` separately, where the conversion is exact.
    """
    hi = (x >> np.uint64(32)).astype(np.float64)
    lo = (x & np.uint64(0xFFFFFFFF)).astype(np.float64)
    hi_len = np.frexp(hi)[1].astype(np.int64)
    lo_len = np.frexp(lo)[1].astype(np.int64)
    return np.where(hi_len > 0, hi_len + 32, lo_len)


def trailing_zeros(x: U64) -> npt.NDArray[np.int64]:
    """Count of trailing zero bits; 64 for zero (so ``64 - lz - tz`` stays meaningful)."""
    lowest = x & (~x + np.uint64(1))
    tz = bit_length(lowest) - 1
    tz[x == 0] = 64
    return tz


def encode_uvarints(u: U64) -> bytes:
    """LEB128 for a whole array at once: cut every value into ten 7-bit groups,
    then keep only the groups each value needs."""
    if u.size == 0:
        return b""
    nbytes = np.maximum((bit_length(u) + 6) // 7, 1)
    groups = ((u[:, None] >> _SEVEN_BIT_SHIFTS) & np.uint64(0x7F)).astype(np.uint8)
    groups[(nbytes - 1)[:, None] > _TEN] |= 0x80
    return bytes(groups[nbytes[:, None] > _TEN].tobytes())


def decode_uvarints(codec: str, data: bytes, offset: int = 0) -> U64:
    """Decode every LEB128 varint in ``data[offset:]``; the last must be complete."""
    buf = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if buf.size == 0:
        return np.empty(0, dtype=np.uint64)
    if buf[-1] & 0x80:
        raise CorruptBlobError(f"{codec}: blob is truncated (last varint has no final byte)")
    ends = np.flatnonzero(buf < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > 10:
        raise CorruptBlobError(f"{codec}: corrupt blob (varint longer than 10 bytes)")
    position = np.arange(buf.size) - np.repeat(starts, lengths)
    if np.any(buf[position == 9] > 1):
        raise CorruptBlobError(f"{codec}: corrupt blob (varint exceeds 64 bits)")
    parts = (buf & np.uint8(0x7F)).astype(np.uint64) << (position * 7).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts)


def read_uvarint(codec: str, data: bytes, pos: int) -> tuple[int, int]:
    """One scalar varint of a blob header (:func:`agent.plugin_api.read_uvarint`)."""
    try:
        return wire_uvarint(data, pos)
    except WireError as exc:
        raise CorruptBlobError(f"{codec}: corrupt blob (header {exc})") from None


def open_versioned(name: str, blob: bytes, count: int, version: int) -> tuple[int, bytes] | None:
    """Check the count and the leading version byte; None for a valid empty block.

    Every bit-packed codec starts its blobs the same way, so the checks (and
    their error messages) live here once.
    """
    n = check_count(name, count)
    data = as_bytes(name, blob)
    if not data:
        raise CorruptBlobError(f"{name}: blob is empty (expected a version byte)")
    if data[0] != version:
        raise CorruptBlobError(f"{name}: unknown format version {data[0]}")
    if n == 0:
        if len(data) != 1:
            raise CorruptBlobError(f"{name}: {len(data) - 1} stray bytes for 0 samples")
        return None
    return n, data
