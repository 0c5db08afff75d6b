"""What the store asks of a block codec, and the one codec it always has.

The ``Codec`` protocol lives here, at the bottom, because the storage engine is
what calls it; ``agent.plugin_api`` re-exports it for plugin authors. ``raw``
lives here too: it is the store's escape hatch, so a store must open (and read
``raw`` segments) even with every codec plugin disabled.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@runtime_checkable
class Codec(Protocol):
    """Encodes one block of one series: int64 ms timestamps and float64 values.

    Both arrays have the same length, timestamps sorted ascending.  ``decode``
    must return exactly what was encoded, bit for bit (NaN payloads, the
    staleness marker, -0.0 and infinities included).
    """

    name: str

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes: ...

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]: ...


class CorruptBlobError(ValueError):
    """A blob that cannot be what this codec wrote for the given count.

    A ValueError subclass so callers need not know the codec package; the
    message always names the codec, which is what an operator reading a log
    line after disk corruption needs first.
    """


def check_arrays(codec: str, timestamps: object, values: object) -> tuple[I64, F64]:
    """Normalise encode arguments to contiguous little-endian int64/float64.

    Casting is "safe" only: silently truncating float timestamps or widening
    float32 values (which rewrites NaN payloads) would break the bit-exact
    promise in a way nobody would notice until a query.
    """
    ts = np.asarray(timestamps)
    vs = np.asarray(values)
    if ts.ndim != 1 or vs.ndim != 1:
        raise ValueError(f"{codec}: timestamps and values must be 1-D arrays")
    if ts.shape != vs.shape:
        raise ValueError(
            f"{codec}: {ts.shape[0]} timestamps but {vs.shape[0]} values; lengths must match"
        )
    if ts.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    if ts.dtype.kind not in "iu":
        raise TypeError(f"{codec}: timestamps must be integers (int64 ms), got {ts.dtype}")
    try:
        ts64 = np.ascontiguousarray(ts.astype("<i8", casting="safe", copy=False))
    except TypeError:
        if ts.dtype == np.uint64 and (ts.size == 0 or int(ts.max()) < 2**63):
            ts64 = np.ascontiguousarray(ts.astype("<i8"))
        else:
            raise TypeError(f"{codec}: timestamps of dtype {ts.dtype} do not fit int64") from None
    if vs.dtype != np.float64:
        try:
            vs = vs.astype("<f8", casting="safe")
        except TypeError:
            raise TypeError(f"{codec}: values must be float64, got {vs.dtype}") from None
    return ts64, np.ascontiguousarray(vs, dtype="<f8")


def check_count(codec: str, count: int) -> int:
    """Reject a negative or non-integer count before it sizes an allocation."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"{codec}: count must be an int, got {type(count).__name__}")
    if count < 0:
        raise ValueError(f"{codec}: count must be >= 0, got {count}")
    return int(count)


def as_bytes(codec: str, blob: object) -> bytes:
    """Accept any bytes-like blob (sqlite3 hands back bytes, mmap gives memoryview)."""
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    raise TypeError(f"{codec}: blob must be bytes-like, got {type(blob).__name__}")


class RawCodec:
    """``raw``: every int64 timestamp, then every float64 value, little-endian.

    The yardstick the other codecs are measured against and the escape hatch:
    16 bytes per sample, no header, nothing to get wrong, memory-speed decode.
    The layout is fixed by the name, so it carries no version byte.
    """

    name = "raw"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        ts, vs = check_arrays(self.name, timestamps, values)
        return ts.tobytes() + vs.tobytes()

    def decode(self, blob: bytes, count: int) -> tuple[I64, F64]:
        count = check_count(self.name, count)
        data = as_bytes(self.name, blob)
        if len(data) != 16 * count:
            raise CorruptBlobError(
                f"{self.name}: blob has {len(data)} bytes, expected {16 * count} "
                f"for {count} samples (truncated or corrupt)"
            )
        ts = np.frombuffer(data, dtype="<i8", count=count).astype(np.int64)
        vs = np.frombuffer(data, dtype="<f8", count=count, offset=8 * count).astype(np.float64)
        return ts, vs
