"""Protobuf wire primitives shared by the encoders and decoders (forwarder, remote write and
read, codecs, OTLP).

One implementation, so every encoder writes negative int64 values the same
way (two's complement, ten bytes, as protobuf does) instead of each copy
deciding for itself. Plugins reach it through :mod:`agent.plugin_api`.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


class WireError(ValueError):
    """Malformed wire data (a truncated or overlong varint)."""


def uvarint(n: int) -> bytes:
    """Unsigned LEB128 of ``n`` taken modulo 2^64 (a negative int64 as its two's complement)."""
    n &= _MASK64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_uvarint(
    buf: bytes | bytearray | memoryview, pos: int, error: type[Exception] = WireError
) -> tuple[int, int]:
    """``(value, next position)`` of the unsigned LEB128 varint at ``pos``.

    Raises ``error`` (the caller's own ``ValueError`` subclass, so decoders
    keep their error type) for a varint cut off by the end of ``buf`` or one
    longer than ten bytes. Bits beyond the 64th in a ten-byte varint are
    dropped, as protobuf's decoders do (upb, and the gogo code Prometheus
    uses): the remote-write fuzz test holds our verdicts to upb's.
    """
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise error("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise error("varint longer than 10 bytes")
