"""The ``gorilla`` codec: the bit stream of Facebook's Gorilla paper (VLDB 2015, section 4.1).

Kept because it is the format the rest of the ecosystem (Prometheus XOR
chunks, M3, InfluxDB) descends from, so it is the honest baseline a new codec
has to beat, and because it needs no compression library.

Per sample, timestamp first and value second, most significant bit first:

* timestamp delta-of-delta D, with the paper's buckets:
  ``0`` for D = 0; ``10`` + 7 bits for D in [-63, 64]; ``110`` + 9 bits for
  [-255, 256]; ``1110`` + 12 bits for [-2047, 2048]; otherwise ``1111`` + the
  value. The paper uses 32 bits for that last case because its timestamps are
  seconds inside a two-hour block; ours are arbitrary int64 milliseconds, so
  the escape carries the full 64-bit (wrapping) delta-of-delta instead.
* value XOR previous value: ``0`` if equal; ``10`` + the meaningful bits when
  they fit inside the previous window of leading/trailing zeros; else ``11`` +
  5 bits of leading zeros (capped at 31) + 6 bits of meaningful-bit count (64
  stored as 0) + the meaningful bits, which opens a new window.

The paper's block header (a two-hour-aligned start and a 14-bit first delta)
does not fit arbitrary blocks, so the first timestamp and first value are
written as plain 64-bit words and the first delta is coded like a
delta-of-delta against zero. A version byte precedes the stream; the stream
is padded to whole bytes with one bits.

Encoding builds every field with numpy and packs them in one ``packbits``;
only the leading/trailing-zero window, which depends on the previous sample,
needs a Python loop (over changed values only). Decoding is inherently
sequential, so it walks a ``'0'``/``'1'`` string of the whole blob, which
turns every field read into a cheap slice and ``int(..., 2)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from plugins.codecs._common import (
    F64,
    I64,
    U64,
    CorruptBlobError,
    bit_length,
    check_arrays,
    empty_result,
    open_versioned,
    timestamp_dods,
    timestamps_from_dods,
    trailing_zeros,
)

VERSION = 1
_BIT_INDEX = np.arange(64)
_TWO_64 = 1 << 64
_TWO_63 = 1 << 63


def pack_fields(fields: U64, widths: npt.NDArray[np.int64]) -> bytes:
    """Concatenate the low ``widths[i]`` bits of every ``fields[i]``, MSB first."""
    keep = widths > 0
    fields = fields[keep]
    widths = widths[keep]
    bits = np.unpackbits(fields.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    packed = np.packbits(bits[(64 - widths)[:, None] <= _BIT_INDEX])
    # Pad with ones, not zeros: "00" is a whole sample (same time step, same
    # value), so zero padding would let a count that is too high decode
    # silently, while a lone "1..." prefix always runs out of bits.
    packed[-1] |= (1 << (-int(widths.sum()) % 8)) - 1
    return bytes(packed.tobytes())


def _timestamp_fields(dods: I64) -> tuple[U64, npt.NDArray[np.int64], U64, npt.NDArray[np.int64]]:
    """Prefix+payload (up to 16 bits) and, for the escape bucket only, a 64-bit word."""
    raw = dods.view(np.uint64)
    small = np.select(
        [
            dods == 0,
            (dods >= -63) & (dods <= 64),
            (dods >= -255) & (dods <= 256),
            (dods >= -2047) & (dods <= 2048),
        ],
        [
            np.zeros_like(raw),
            np.uint64(0b10 << 7) | (raw & np.uint64(0x7F)),
            np.uint64(0b110 << 9) | (raw & np.uint64(0x1FF)),
            np.uint64(0b1110 << 12) | (raw & np.uint64(0xFFF)),
        ],
        np.uint64(0b1111),
    ).astype(np.uint64)
    small_width = np.select(
        [
            dods == 0,
            (dods >= -63) & (dods <= 64),
            (dods >= -255) & (dods <= 256),
            (dods >= -2047) & (dods <= 2048),
        ],
        [1, 9, 12, 16],
        4,
    ).astype(np.int64)
    escape = small_width == 4
    return small, small_width, raw, np.where(escape, 64, 0).astype(np.int64)


def _value_fields(xors: U64) -> tuple[U64, npt.NDArray[np.int64], U64, npt.NDArray[np.int64]]:
    """Control bits and meaningful bits of every XOR, following the window rule."""
    n = xors.size
    control = np.zeros(n, dtype=np.uint64)
    control_width = np.ones(n, dtype=np.int64)
    payload = np.zeros(n, dtype=np.uint64)
    payload_width = np.zeros(n, dtype=np.int64)
    changed = np.flatnonzero(xors)
    if changed.size == 0:
        return control, control_width, payload, payload_width
    x = xors[changed]
    leading = np.minimum(64 - bit_length(x), 31)
    trailing = trailing_zeros(x)
    # The window a sample uses depends on whether earlier samples opened a new
    # one, so this part is sequential; it only touches plain Python ints.
    window_leading = np.empty_like(leading)
    window_trailing = np.empty_like(trailing)
    opens = np.zeros(changed.size, dtype=bool)
    cur_lead = cur_trail = -1
    for k, (lead, trail) in enumerate(zip(leading.tolist(), trailing.tolist(), strict=True)):
        if cur_lead < 0 or lead < cur_lead or trail < cur_trail:
            cur_lead, cur_trail = lead, trail
            opens[k] = True
        window_leading[k] = cur_lead
        window_trailing[k] = cur_trail
    meaningful = 64 - window_leading - window_trailing
    control[changed] = np.where(
        opens,
        np.uint64(0b11 << 11)
        | (window_leading.astype(np.uint64) << np.uint64(6))
        | (meaningful.astype(np.uint64) & np.uint64(63)),
        np.uint64(0b10),
    )
    control_width[changed] = np.where(opens, 13, 2)
    payload[changed] = x >> window_trailing.astype(np.uint64)
    payload_width[changed] = meaningful
    return control, control_width, payload, payload_width


class GorillaCodec:
    """See the module docstring for the bit layout."""

    name = "gorilla"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        ts, vs = check_arrays(self.name, timestamps, values)
        n = ts.size
        if n == 0:
            return bytes([VERSION])
        dods = timestamp_dods(ts)
        bits = vs.view(np.uint64)
        xors = bits.copy()
        xors[1:] ^= bits[:-1]
        fields = np.zeros((n, 4), dtype=np.uint64)
        widths = np.zeros((n, 4), dtype=np.int64)
        fields[0, 0] = dods[0].view(np.uint64)
        fields[0, 2] = bits[0]
        widths[0, 0] = widths[0, 2] = 64
        if n > 1:
            fields[1:, 0], widths[1:, 0], fields[1:, 1], widths[1:, 1] = _timestamp_fields(dods[1:])
            fields[1:, 2], widths[1:, 2], fields[1:, 3], widths[1:, 3] = _value_fields(xors[1:])
        return bytes([VERSION]) + pack_fields(fields.ravel(), widths.ravel())

    def decode(self, blob: bytes, count: int) -> tuple[I64, F64]:
        opened = open_versioned(self.name, blob, count, VERSION)
        if opened is None:
            return empty_result()
        n, data = opened
        nbits = 8 * (len(data) - 1)
        if nbits < 128:
            raise CorruptBlobError(f"{self.name}: blob is truncated ({len(data)} bytes)")
        stream = format(int.from_bytes(data[1:], "big"), f"0{nbits}b")
        try:
            dods, xors, pos = _walk(stream, n)
        except (IndexError, ValueError):
            raise CorruptBlobError(
                f"{self.name}: blob is truncated or corrupt (stream ends inside a sample)"
            ) from None
        if pos > nbits:
            raise CorruptBlobError(f"{self.name}: blob is truncated ({nbits - pos} bits short)")
        if nbits - pos >= 8 or "0" in stream[pos:]:
            raise CorruptBlobError(f"{self.name}: corrupt blob (data after the last sample)")
        ts = timestamps_from_dods(np.array(dods, dtype=np.int64))
        vs = np.bitwise_xor.accumulate(np.array(xors, dtype=np.uint64)).view(np.float64)
        return ts, vs


def _walk(s: str, n: int) -> tuple[list[int], list[int], int]:
    """Parse ``n`` samples from the bit string; the hot loop of the decoder.

    Returns the timestamp delta-of-deltas (first entry: t0) and the value
    XORs (first entry: the first value's bits) as Python ints, so numpy can
    do the cumulative sums in one go. Short slices near the end of a
    truncated stream surface as ValueError (``int('', 2)``) or IndexError, or
    as ``pos`` running past the end, which the caller checks.
    """
    first_ts = int(s[0:64], 2)
    dods = [first_ts - _TWO_64 if first_ts >= _TWO_63 else first_ts]
    xors = [int(s[64:128], 2)]
    add_dod = dods.append
    add_xor = xors.append
    pos = 128
    lead = -1
    trail = 0
    width = 0
    for _ in range(n - 1):
        if s[pos] == "0":
            add_dod(0)
            pos += 1
        elif s[pos + 1] == "0":
            u = int(s[pos + 2 : pos + 9], 2)
            add_dod(u - 128 if u > 64 else u)
            pos += 9
        elif s[pos + 2] == "0":
            u = int(s[pos + 3 : pos + 12], 2)
            add_dod(u - 512 if u > 256 else u)
            pos += 12
        elif s[pos + 3] == "0":
            u = int(s[pos + 4 : pos + 16], 2)
            add_dod(u - 4096 if u > 2048 else u)
            pos += 16
        else:
            u = int(s[pos + 4 : pos + 68], 2)
            add_dod(u - _TWO_64 if u >= _TWO_63 else u)
            pos += 68
        if s[pos] == "0":
            add_xor(0)
            pos += 1
        elif s[pos + 1] == "0":
            if lead < 0:
                raise ValueError("window reused before one was opened")
            add_xor(int(s[pos + 2 : pos + 2 + width], 2) << trail)
            pos += 2 + width
        else:
            lead = int(s[pos + 2 : pos + 7], 2)
            width = int(s[pos + 7 : pos + 13], 2) or 64
            trail = 64 - lead - width
            if trail < 0:
                raise ValueError("window wider than 64 bits")
            add_xor(int(s[pos + 13 : pos + 13 + width], 2) << trail)
            pos += 13 + width
    return dods, xors, pos
