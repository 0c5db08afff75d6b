"""The ``raw`` codec: every int64 timestamp, then every float64 value, little-endian.

It exists as the yardstick the other codecs are measured against and as an
escape hatch: 16 bytes per sample, no header, nothing to get wrong, and it
decodes at memory speed. Because the layout is fixed by the name, it carries
no version byte.
"""

from __future__ import annotations

import numpy as np

from plugins.codecs._common import (
    F64,
    I64,
    CorruptBlobError,
    as_bytes,
    check_arrays,
    check_count,
)


class RawCodec:
    """Uncompressed columns; see the module docstring."""

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
