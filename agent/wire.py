"""Protobuf wire primitives shared by the encoders (forwarder, remote read, codecs, OTLP).

One implementation, so every encoder writes negative int64 values the same
way (two's complement, ten bytes, as protobuf does) instead of each copy
deciding for itself. Plugins reach it through :mod:`agent.plugin_api`.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def uvarint(n: int) -> bytes:
    """Unsigned LEB128 of ``n`` taken modulo 2^64 (a negative int64 as its two's complement)."""
    n &= _MASK64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
