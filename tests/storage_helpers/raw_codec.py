"""A minimal bit-exact codec so the storage tests do not depend on the codec plugins."""

from __future__ import annotations

import numpy as np


class TestRawCodec:
    """Timestamps then value bits, little-endian; the store must round-trip it exactly."""

    __test__ = False  # not a pytest test class despite the name
    name = "raw"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        ts = np.ascontiguousarray(timestamps, dtype="<i8")
        vs = np.ascontiguousarray(values, dtype="<f8")
        return ts.tobytes() + vs.tobytes()

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
        if len(blob) != 16 * count:
            raise ValueError(f"raw blob of {len(blob)} bytes cannot hold {count} samples")
        ts = np.frombuffer(blob, dtype="<i8", count=count)
        vs = np.frombuffer(blob, dtype="<f8", count=count, offset=8 * count)
        return ts, vs


class TestShiftCodec(TestRawCodec):
    """A second, different layout, to check codec rules pick per metric name."""

    name = "shift"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        return b"S" + super().encode(timestamps, values)

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
        if blob[:1] != b"S":
            raise ValueError("not a shift blob")
        return super().decode(bytes(blob[1:]), count)


def codecs() -> dict[str, TestRawCodec]:
    return {"raw": TestRawCodec(), "shift": TestShiftCodec()}
