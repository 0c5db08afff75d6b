"""Prometheus XOR chunks and the framing of streamed remote-read responses.

Clients that ask for ``STREAMED_XOR_CHUNKS`` (Thanos sidecars, Mimir and
VictoriaMetrics import tools, Prometheus 3 with ``remote_read``) decode the
chunks with Prometheus's own ``tsdb/chunkenc`` code, so the bytes here must be
exactly that format, not our storage codecs (``plugins.codecs.gorilla`` uses
the paper's buckets, which Prometheus does not):

* a 2-byte big-endian sample count, then a bit stream, most significant bit
  first, zero-padded to whole bytes;
* sample 1: the timestamp as a zig-zag varint, the value as 64 raw bits;
* sample 2: the timestamp delta as an unsigned varint, then the value XOR;
* later samples: the delta-of-delta ``D`` of the timestamp as ``0`` (D = 0),
  ``10`` + 14 bits, ``110`` + 17 bits, ``1110`` + 20 bits (two's complement,
  each range being ``-(2^(n-1) - 1) .. 2^(n-1)``) or ``1111`` + 64 bits, then
  the value XOR;
* value XOR against the previous value: ``0`` if equal; ``10`` + the
  meaningful bits inside the previous leading/trailing-zero window; else
  ``11`` + 5 bits of leading zeros (capped at 31) + 6 bits of meaningful-bit
  count (64 written as 0) + the meaningful bits.

Values travel as their IEEE-754 bits, so a staleness marker stays a
staleness marker. A response frame is ``uvarint(len(msg))``, the CRC-32C
(Castagnoli) of the message as 4 big-endian bytes, then the serialized
``ChunkedReadResponse``.

The decoder and frame reader are here too: the tests check them against chunks
produced by a real Prometheus, and the encoder against them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from agent.plugin_api import read_uvarint, uvarint

SAMPLES_PER_CHUNK = 120
"""Prometheus's head cuts a chunk at 120 samples; clients expect chunks of about that size."""

XOR_ENCODING = 1  # prometheus.Chunk.Encoding.XOR

_MASK64 = (1 << 64) - 1


class ChunkError(ValueError):
    """A chunk or frame that does not decode."""


# --- varints -------------------------------------------------------------------------


def _zigzag(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & _MASK64


# --- CRC-32C -------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum Prometheus puts on every streamed frame.

    The standard library only has the IEEE polynomial (``zlib.crc32``); a table
    loop is fast enough for frames that are capped at about a megabyte.
    """
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def frame(message: bytes) -> bytes:
    """One frame of a streamed response: size, checksum, message."""
    return uvarint(len(message)) + crc32c(message).to_bytes(4, "big") + message


def read_frames(body: bytes) -> Iterator[bytes]:
    """Split a streamed response into its messages, checking every checksum."""
    pos = 0
    view = memoryview(body)
    while pos < len(body):
        size, pos = read_uvarint(view, pos, ChunkError)
        if pos + 4 + size > len(body):
            raise ChunkError(f"frame of {size} bytes at {pos} runs past the end of the body")
        expected = int.from_bytes(view[pos : pos + 4], "big")
        message = bytes(view[pos + 4 : pos + 4 + size])
        if crc32c(message) != expected:
            raise ChunkError(f"frame at {pos}: CRC-32C mismatch")
        yield message
        pos += 4 + size


# --- XOR encoding --------------------------------------------------------------------


class _BitWriter:
    """Appends bit fields to one Python integer; chunks are small, so this stays cheap."""

    __slots__ = ("acc", "nbits")

    def __init__(self) -> None:
        self.acc = 0
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        self.acc = (self.acc << width) | (value & ((1 << width) - 1))
        self.nbits += width

    def getvalue(self) -> bytes:
        pad = -self.nbits % 8
        return (self.acc << pad).to_bytes((self.nbits + pad) // 8, "big")


def _bit_range(value: int, width: int) -> bool:
    return -((1 << (width - 1)) - 1) <= value <= 1 << (width - 1)


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def encode_xor_chunk(timestamps: Sequence[int], value_bits: Sequence[int]) -> bytes:
    """One Prometheus XOR chunk from ms timestamps and the uint64 bits of float64 values."""
    count = len(timestamps)
    if count != len(value_bits):
        raise ValueError("timestamps and values differ in length")
    if count > 0xFFFF:
        raise ValueError(f"a chunk holds at most 65535 samples, not {count}")
    w = _BitWriter()
    prev_t = prev_v = prev_delta = 0
    leading = 0xFF  # no window yet
    trailing = 0
    for i, (t, v) in enumerate(zip(timestamps, value_bits, strict=True)):
        if i == 0:
            for byte in uvarint(_zigzag(t)):
                w.write(byte, 8)
            w.write(v, 64)
        else:
            delta = (t - prev_t) & _MASK64
            if i == 1:
                for byte in uvarint(delta):
                    w.write(byte, 8)
            else:
                dod = _signed64(delta - prev_delta)
                if dod == 0:
                    w.write(0, 1)
                elif _bit_range(dod, 14):
                    w.write(0b10, 2)
                    w.write(dod, 14)
                elif _bit_range(dod, 17):
                    w.write(0b110, 3)
                    w.write(dod, 17)
                elif _bit_range(dod, 20):
                    w.write(0b1110, 4)
                    w.write(dod, 20)
                else:
                    w.write(0b1111, 4)
                    w.write(dod, 64)
            prev_delta = delta
            xor = v ^ prev_v
            if xor == 0:
                w.write(0, 1)
            else:
                new_leading = min(64 - xor.bit_length(), 31)
                new_trailing = (xor & -xor).bit_length() - 1
                if leading != 0xFF and new_leading >= leading and new_trailing >= trailing:
                    w.write(0b10, 2)
                    w.write(xor >> trailing, 64 - leading - trailing)
                else:
                    leading, trailing = new_leading, new_trailing
                    sigbits = 64 - leading - trailing
                    w.write(0b11, 2)
                    w.write(leading, 5)
                    w.write(sigbits, 6)  # 64 wraps to 0, as Prometheus writes it
                    w.write(xor >> trailing, sigbits)
        prev_t, prev_v = t, v
    return count.to_bytes(2, "big") + w.getvalue()


# --- XOR decoding --------------------------------------------------------------------


class _BitReader:
    __slots__ = ("bits", "pos")

    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > len(self.bits):
            raise ChunkError("chunk ends in the middle of a sample")
        value = int(self.bits[self.pos : end], 2) if width else 0
        self.pos = end
        return value

    def read_byte_varint(self, signed: bool) -> int:
        result = shift = 0
        while True:
            byte = self.read(8)
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise ChunkError("overlong varint in chunk")
        if signed:
            return (result >> 1) ^ -(result & 1)
        return result


def decode_xor_chunk(data: bytes) -> tuple[list[int], list[int]]:
    """Timestamps and uint64 value bits of a Prometheus XOR chunk."""
    if len(data) < 2:
        raise ChunkError("chunk shorter than its header")
    count = int.from_bytes(data[:2], "big")
    r = _BitReader(data[2:])
    ts: list[int] = []
    vs: list[int] = []
    t = v = delta = 0
    leading = trailing = 0
    for i in range(count):
        if i == 0:
            t = r.read_byte_varint(signed=True)
            v = r.read(64)
        else:
            if i == 1:
                delta = r.read_byte_varint(signed=False)
            else:
                prefix = 0
                while prefix < 4 and r.read(1):
                    prefix += 1
                width = (0, 14, 17, 20, 64)[prefix]
                dod = r.read(width)
                if width == 64:
                    dod = _signed64(dod)
                elif width and dod > 1 << (width - 1):
                    dod -= 1 << width
                delta = (delta + dod) & _MASK64
            t = _signed64(t + delta)
            if r.read(1):
                if r.read(1):
                    leading = r.read(5)
                    sigbits = r.read(6) or 64
                    trailing = 64 - leading - sigbits
                v ^= r.read(64 - leading - trailing) << trailing
        ts.append(t)
        vs.append(v)
    return ts, vs
