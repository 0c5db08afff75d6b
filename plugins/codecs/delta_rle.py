"""The ``delta-rle`` codec: delta-of-delta timestamps, run-length values, all varints.

It is the simplest codec that is small for the data a metrics agent mostly
stores: regular scrapes (delta-of-delta 0, one byte) and series that sit on
one value for a long time (``up``, ``*_info``, idle counters), which collapse
into a single run. It needs no compression library and every step is a whole
array numpy operation, so it is also a fast, dependency-free fallback.

Layout (version 1)::

    byte 0      version = 1
    varints     zigzag(t0), zigzag(t1 - t0), zigzag(delta-of-delta) ...  (count of them)
    varint      number of runs R
    varints     R run lengths
    varints     R trailing-zero counts of (run value XOR previous run value)
    varints     R significant parts: that XOR shifted right by its trailing zeros

XOR-ing bit patterns of consecutive run values and dropping trailing zeros
keeps an integer counter step such as 1000 -> 1003 to two bytes, where the
raw 64-bit pattern would need eight.
"""

from __future__ import annotations

import numpy as np

from plugins.codecs._common import (
    F64,
    I64,
    U64,
    CorruptBlobError,
    check_arrays,
    decode_uvarints,
    empty_result,
    encode_uvarints,
    open_versioned,
    timestamp_dods,
    timestamps_from_dods,
    trailing_zeros,
    unzigzag,
    zigzag,
)

VERSION = 1


class DeltaRleCodec:
    """See the module docstring for the layout and the reasoning behind it."""

    name = "delta-rle"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        ts, vs = check_arrays(self.name, timestamps, values)
        n = ts.size
        if n == 0:
            return bytes([VERSION])
        bits = vs.view(np.uint64)
        starts = np.flatnonzero(np.concatenate(([True], bits[1:] != bits[:-1])))
        lengths = np.diff(np.append(starts, n)).astype(np.uint64)
        run_bits = bits[starts]
        xors = run_bits.copy()
        xors[1:] ^= run_bits[:-1]
        tz = trailing_zeros(xors)
        tz[xors == 0] = 0
        significant = xors >> tz.astype(np.uint64)
        parts: list[U64] = [
            zigzag(timestamp_dods(ts)),
            np.array([starts.size], dtype=np.uint64),
            lengths,
            tz.astype(np.uint64),
            significant,
        ]
        return bytes([VERSION]) + encode_uvarints(np.concatenate(parts))

    def decode(self, blob: bytes, count: int) -> tuple[I64, F64]:
        opened = open_versioned(self.name, blob, count, VERSION)
        if opened is None:
            return empty_result()
        n, data = opened
        numbers = decode_uvarints(self.name, data, 1)
        if numbers.size < n + 1:
            raise CorruptBlobError(
                f"{self.name}: blob is truncated ({numbers.size} varints, need at least {n + 1})"
            )
        runs = int(numbers[n])
        if runs < 1 or runs > n or numbers.size != n + 1 + 3 * runs:
            raise CorruptBlobError(
                f"{self.name}: blob is truncated or corrupt ({runs} runs, "
                f"{numbers.size} varints for {n} samples)"
            )
        ts = timestamps_from_dods(unzigzag(numbers[:n]))
        lengths = numbers[n + 1 : n + 1 + runs]
        tz = numbers[n + 1 + runs : n + 1 + 2 * runs]
        significant = numbers[n + 1 + 2 * runs :]
        if np.any(lengths == 0) or np.any(lengths > n) or int(lengths.sum()) != n:
            raise CorruptBlobError(f"{self.name}: corrupt blob (run lengths do not add up to {n})")
        if np.any(tz > 63):
            raise CorruptBlobError(f"{self.name}: corrupt blob (shift count above 63)")
        xors = significant << tz
        if np.any((xors >> tz) != significant):
            raise CorruptBlobError(f"{self.name}: corrupt blob (run value exceeds 64 bits)")
        run_bits = np.bitwise_xor.accumulate(xors)
        vs = np.repeat(run_bits, lengths.astype(np.intp)).view(np.float64)
        return ts, vs
