"""The ``zstd-xor`` codec: cheap reversible numpy transforms, byte planes, then zstd.

The idea is to let numpy do what it is good at (whole-array arithmetic) and
let zstd's entropy coder do the bit fiddling that Gorilla does by hand, one
bit at a time. The transforms only have to make the bytes predictable:

* Timestamps become delta-of-deltas. Jitter-free scrapes give all zeros,
  a few ms of jitter gives one low byte per sample.
* Values take one of two paths, whichever the data allows:

  - *decimal*: most metrics are integers (counters, byte and object counts)
    or decimals with a few digits (temperatures, load averages, money). If
    ``round(v * 10**e) / 10**e`` reproduces a value bit for bit, the value is
    stored as that integer (a lossless ALP-style trick), and the integers
    are delta coded once or twice, whichever is smaller. Samples that do not
    fit (NaN, the staleness marker, infinities, -0.0, stray full-precision
    values) are patched in afterwards as exceptions, so one stale marker at
    the end of a series does not push the whole block onto the slow path.
  - *xor*: everything else is XOR-ed with its predecessor, as in Gorilla.

* Every integer column is zigzag coded and split into byte planes (all the
  lowest bytes, then all the next bytes, ...). All-zero planes are dropped by
  a bit mask, so a constant series or a jitter-free clock costs nothing, and
  the remaining planes hand zstd long runs of similar bytes.

zstd runs with a raw, magic-less frame without checksum or content size,
since SQLite already checksums pages and the header carries the length. When
compressing would not help (tiny blocks) the body is stored as is.

Layout (version 1)::

    byte 0     version = 1
    byte 1     flags: bits 0-1 storage (0 stored, 1 zstd), bits 2-3 value mode
               (0 xor, 1 decimal with one delta, 2 decimal with two deltas)
    [varint    body length, only when zstd]
    body:
      varint   zigzag(t0); varint zigzag(t1 - t0) when count >= 2
      byte     plane mask, then planes of zigzag(delta-of-delta), count - 2 rows
      xor:     8 bytes first value, byte plane mask, planes of the XORs
      decimal: byte exponent e; varint zigzag(first int); varint zigzag(first
               delta) with two deltas; varint common factor g of the deltas;
               byte plane mask, planes of zigzag(delta / g); varint exception
               count k; 8*k bytes of exception bit patterns; k varints of gaps
               between exception positions
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import zstandard

from plugins.codecs._common import (
    F64,
    I64,
    U64,
    CorruptBlobError,
    as_bytes,
    check_arrays,
    check_count,
    decode_uvarints,
    empty_result,
    encode_uvarints,
    read_uvarint,
    timestamp_dods,
    timestamps_from_dods,
    unzigzag,
    unzigzag_int,
    uvarint,
    zigzag,
    zigzag_int,
)

VERSION = 1
ZSTD_LEVEL = 3

STORED = 0
ZSTD = 1
MODE_XOR = 0
MODE_DECIMAL_1 = 1
MODE_DECIMAL_2 = 2

# 10**e is exact in float64 up to e = 22; beyond 17 digits nothing is decimal.
MAX_EXPONENT = 17
# Integers are kept well inside int64 so deltas never meet the wrap-around.
MAX_SCALED = float(2**62)
# Above this share of exceptions the xor path is cheaper.
MAX_EXCEPTION_SHARE = 0.25
PROBE = 32

_POWERS = [10.0**e for e in range(MAX_EXPONENT + 1)]
_PLANE_COLUMNS = [[k for k in range(8) if mask >> k & 1] for mask in range(256)]

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One compression context per thread: they are not thread-safe and cost ~15 us to make."""
    ctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if ctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL,
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_content_size=0,
            write_checksum=0,
            write_dict_id=0,
        )
        ctx = _local.cctx = zstandard.ZstdCompressor(compression_params=params)
    return ctx


def _decompressor() -> zstandard.ZstdDecompressor:
    ctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if ctx is None:
        ctx = _local.dctx = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    return ctx


def _frame_length(frame: bytes) -> int:
    """Length of the magic-less zstd frame at the start of ``frame`` (RFC 8878, 3.1.1).

    zstd ignores bytes after a frame, and a decompress call cannot both bound
    its output and report leftovers, so the frame is walked here: a few block
    headers, no decompression.
    """
    if not frame:
        raise CorruptBlobError("zstd-xor: blob is truncated (no zstd frame)")
    descriptor = frame[0]
    content_size_flag = descriptor >> 6
    single_segment = descriptor >> 5 & 1
    pos = 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    pos += (1 if single_segment else 0, 2, 4, 8)[content_size_flag]
    while True:
        if pos + 3 > len(frame):
            raise CorruptBlobError("zstd-xor: blob is truncated (inside the zstd frame)")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        kind = header >> 1 & 3
        if kind == 3:
            raise CorruptBlobError("zstd-xor: corrupt blob (reserved zstd block type)")
        pos += 3 + (1 if kind == 1 else header >> 3)
        if header & 1:
            return pos + (4 if descriptor & 4 else 0)


def split_planes(u: U64) -> bytes:
    """Mask byte + the non-zero byte planes of ``u``, lowest byte first."""
    if u.size == 0:
        return b"\x00"
    mask = 0
    seen = int(np.bitwise_or.reduce(u))
    for k in range(8):
        if seen >> (8 * k) & 0xFF:
            mask |= 1 << k
    columns = _PLANE_COLUMNS[mask]
    table = u.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    return bytes([mask]) + table[:, columns].T.tobytes()


def join_planes(body: bytes, pos: int, rows: int) -> tuple[U64, int]:
    if pos >= len(body):
        raise CorruptBlobError("zstd-xor: blob is truncated (missing a plane mask)")
    columns = _PLANE_COLUMNS[body[pos]]
    pos += 1
    size = len(columns) * rows
    if pos + size > len(body):
        raise CorruptBlobError("zstd-xor: blob is truncated (inside the byte planes)")
    table = np.zeros((rows, 8), dtype=np.uint8)
    if columns:
        planes = np.frombuffer(body, dtype=np.uint8, count=size, offset=pos)
        table[:, columns] = planes.reshape(len(columns), rows).T
    return table.view("<u8").ravel().astype(np.uint64, copy=False), pos + size


def _scaled(values: F64, exponent: int) -> tuple[I64, npt.NDArray[np.bool_]]:
    """The integers for ``values * 10**e`` and where they reproduce the value exactly.

    The check runs the decoder's own arithmetic (int -> float64, one
    correctly rounded division), so "ok" means "decodes bit for bit"; this
    also rejects -0.0, NaN payloads and infinities without special cases.
    """
    scale = _POWERS[exponent]
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.rint(values * scale)
        fits = np.abs(rounded) < MAX_SCALED
        ints = np.where(fits, rounded, 0.0).astype(np.int64)
        back = ints.astype(np.float64) / scale
    ok = fits & (back.view(np.int64) == values.view(np.int64))
    return ints, ok


def _choose_exponent(values: F64) -> int | None:
    """Smallest decimal exponent that represents (almost) every value, or None.

    A probe of the first few finite values finds the candidate cheaply, so a
    full-precision gauge is rejected after a handful of tiny array passes
    instead of eighteen full ones.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    probe = finite[:PROBE]
    start = None
    for exponent in range(MAX_EXPONENT + 1):
        if _scaled(probe, exponent)[1].all():
            start = exponent
            break
    if start is None:
        return None
    allowed = int(values.size * MAX_EXCEPTION_SHARE)
    for exponent in range(start, min(start + 3, MAX_EXPONENT + 1)):
        if int(np.count_nonzero(~_scaled(values, exponent)[1])) <= allowed:
            return exponent
    return None


def _cost(u: U64) -> float:
    """A rough entropy proxy (total significant bits) to pick one or two deltas."""
    return float(np.log2(u.astype(np.float64) + 1.0).sum())


def _encode_values(values: F64) -> tuple[int, bytes]:
    n = values.size
    bits = values.view(np.uint64)
    exponent = _choose_exponent(values) if n > 1 else None
    if exponent is None:
        xors = bits[1:] ^ bits[:-1]
        return MODE_XOR, bits[:1].astype("<u8").tobytes() + split_planes(xors)
    ints, ok = _scaled(values, exponent)
    bad = np.flatnonzero(~ok)
    if bad.size:
        # Carry the previous good integer through exceptions so their deltas are zero.
        keep = np.where(ok, np.arange(n), -1)
        np.maximum.accumulate(keep, out=keep)
        ints = np.where(keep >= 0, ints[np.maximum(keep, 0)], 0)
    first = ints[1:] - ints[:-1]
    second = first[1:] - first[:-1]
    parts = [bytes([exponent]), uvarint(zigzag_int(int(ints[0])))]
    if n > 2 and _cost(zigzag(second)) < _cost(zigzag(first[1:])):
        mode = MODE_DECIMAL_2
        parts.append(uvarint(zigzag_int(int(first[0]))))
        steps = second
    else:
        mode = MODE_DECIMAL_1
        steps = first
    # Memory in pages, prices in cents of a coarser unit: a common factor of
    # every step costs one varint and saves whole bits on every sample.
    factor = int(np.gcd.reduce(steps)) if steps.size else 0
    if factor < 2 or factor >= 1 << 62:
        factor = 1
    parts += [uvarint(factor), split_planes(zigzag(steps // factor))]
    parts.append(uvarint(bad.size))
    if bad.size:
        parts.append(bits[bad].astype("<u8").tobytes())
        gaps = np.diff(bad, prepend=0).astype(np.uint64)
        parts.append(encode_uvarints(gaps))
    return mode, b"".join(parts)


def encode_body(ts: I64, vs: F64) -> tuple[int, bytes]:
    """The value mode and the uncompressed body for a non-empty block."""
    dods = timestamp_dods(ts)
    parts = [uvarint(zigzag_int(int(dods[0])))]
    if ts.size > 1:
        parts.append(uvarint(zigzag_int(int(dods[1]))))
    parts.append(split_planes(zigzag(dods[2:])))
    mode, value_body = _encode_values(vs)
    parts.append(value_body)
    return mode, b"".join(parts)


def _factor(factor: int) -> int:
    if not 1 <= factor < 1 << 62:
        raise CorruptBlobError(f"zstd-xor: corrupt blob (common factor {factor})")
    return factor


class ZstdXorCodec:
    """See the module docstring for the transforms and the layout."""

    name = "zstd-xor"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        ts, vs = check_arrays(self.name, timestamps, values)
        n = ts.size
        if n == 0:
            return bytes([VERSION, STORED])
        mode, body = encode_body(ts, vs)
        if len(body) > 16:
            packed = _compressor().compress(body)
            if len(packed) + 2 < len(body):
                return bytes([VERSION, ZSTD | mode << 2]) + uvarint(len(body)) + packed
        return bytes([VERSION, STORED | mode << 2]) + body

    def decode(self, blob: bytes, count: int) -> tuple[I64, F64]:
        n = check_count(self.name, count)
        data = as_bytes(self.name, blob)
        if len(data) < 2:
            raise CorruptBlobError(f"{self.name}: blob is truncated ({len(data)} bytes)")
        if data[0] != VERSION:
            raise CorruptBlobError(f"{self.name}: unknown format version {data[0]}")
        flags = data[1]
        storage = flags & 3
        mode = flags >> 2
        if storage > ZSTD or mode > MODE_DECIMAL_2:
            raise CorruptBlobError(f"{self.name}: corrupt blob (unknown flags {flags:#04x})")
        if storage == ZSTD:
            size, pos = read_uvarint(self.name, data, 2)
            # Every sample needs at most 8 + 8 bytes plus a 10-byte exception gap;
            # a larger claim is corruption and must not size an allocation.
            if size > 64 + 26 * n:
                raise CorruptBlobError(f"{self.name}: corrupt blob (body of {size} bytes)")
            frame = data[pos:]
            if _frame_length(frame) != len(frame):
                raise CorruptBlobError(
                    f"{self.name}: blob is truncated or has trailing bytes after the zstd frame"
                )
            try:
                body = _decompressor().decompress(frame, max_output_size=size)
            except zstandard.ZstdError as exc:
                raise CorruptBlobError(
                    f"{self.name}: blob is truncated or corrupt (zstd: {exc})"
                ) from None
            if len(body) != size:
                raise CorruptBlobError(
                    f"{self.name}: blob is truncated ({len(body)} of {size} body bytes)"
                )
        else:
            body = data[2:]
        if n == 0:
            if body or mode:
                raise CorruptBlobError(f"{self.name}: {len(body)} stray bytes for 0 samples")
            return empty_result()
        return self._decode_body(body, n, mode)

    def _decode_body(self, body: bytes, n: int, mode: int) -> tuple[I64, F64]:
        dods = np.empty(n, dtype=np.int64)
        first, pos = read_uvarint(self.name, body, 0)
        dods[0] = unzigzag_int(first)
        if n > 1:
            delta, pos = read_uvarint(self.name, body, pos)
            dods[1] = unzigzag_int(delta)
        rest, pos = join_planes(body, pos, max(n - 2, 0))
        dods[2:] = unzigzag(rest)
        ts = timestamps_from_dods(dods)

        if mode == MODE_XOR:
            if pos + 8 > len(body):
                raise CorruptBlobError(f"{self.name}: blob is truncated (first value)")
            bits = np.empty(n, dtype=np.uint64)
            bits[0] = np.frombuffer(body, dtype="<u8", count=1, offset=pos)[0]
            xors, pos = join_planes(body, pos + 8, n - 1)
            bits[1:] = xors
            if pos != len(body):
                raise CorruptBlobError(f"{self.name}: corrupt blob ({len(body) - pos} stray bytes)")
            return ts, np.bitwise_xor.accumulate(bits).view(np.float64)

        if pos >= len(body) or body[pos] > MAX_EXPONENT:
            raise CorruptBlobError(f"{self.name}: blob is truncated or corrupt (exponent)")
        scale = _POWERS[body[pos]]
        start, pos = read_uvarint(self.name, body, pos + 1)
        ints = np.empty(n, dtype=np.int64)
        ints[0] = unzigzag_int(start)
        if mode == MODE_DECIMAL_2 and n > 1:
            delta, pos = read_uvarint(self.name, body, pos)
            factor, pos = read_uvarint(self.name, body, pos)
            zz, pos = join_planes(body, pos, n - 2)
            steps = np.empty(n - 1, dtype=np.int64)
            steps[0] = unzigzag_int(delta)
            np.cumsum(unzigzag(zz) * np.int64(_factor(factor)), out=steps[1:])
            steps[1:] += steps[0]
        else:
            factor, pos = read_uvarint(self.name, body, pos)
            zz, pos = join_planes(body, pos, n - 1)
            steps = unzigzag(zz) * np.int64(_factor(factor))
        np.cumsum(steps, out=ints[1:])
        ints[1:] += ints[0]
        values = ints.astype(np.float64) / scale

        exceptions, pos = read_uvarint(self.name, body, pos)
        if exceptions:
            if exceptions > n or pos + 8 * exceptions > len(body):
                raise CorruptBlobError(f"{self.name}: blob is truncated (exception values)")
            patch = np.frombuffer(body, dtype="<u8", count=exceptions, offset=pos)
            gaps = decode_uvarints(self.name, body, pos + 8 * exceptions)
            if gaps.size != exceptions or np.any(gaps >= n):
                raise CorruptBlobError(f"{self.name}: corrupt blob (exception positions)")
            where = np.cumsum(gaps)
            if int(where[-1]) >= n:
                raise CorruptBlobError(f"{self.name}: corrupt blob (exception positions)")
            values.view(np.uint64)[where.astype(np.intp)] = patch
        elif pos != len(body):
            raise CorruptBlobError(f"{self.name}: corrupt blob ({len(body) - pos} stray bytes)")
        return ts, values
