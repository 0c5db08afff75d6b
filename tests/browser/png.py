"""Just enough PNG decoding (stdlib zlib + numpy) to tell a drawn screenshot from a blank one.

Pillow is not a dependency, and a screenshot check only needs 8-bit RGB(A)
non-interlaced images, which is what Chromium writes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode(data: bytes) -> np.ndarray:
    """Pixels as a (height, width, channels) uint8 array; raises ValueError on other PNGs."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    pos, idat = len(SIGNATURE), bytearray()
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or interlace or colour not in (2, 6):
                raise ValueError(f"unsupported PNG: depth {depth} colour {colour}")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = np.frombuffer(raw, np.uint8, stride, start + 1).astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: a running sum per channel
            row = np.cumsum(line.reshape(width, channels), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            row = (line + prior) % 256
        else:  # Average and Paeth depend on the byte just decoded: byte by byte
            vals, up, cur = line.tolist(), prior.tolist(), [0] * stride
            for i in range(stride):
                left = cur[i - channels] if i >= channels else 0
                if kind == 3:
                    pred = (left + up[i]) // 2
                else:
                    upleft = up[i - channels] if i >= channels else 0
                    pred = _paeth(left, up[i], upleft)
                cur[i] = (vals[i] + pred) & 0xFF
            row = np.array(cur, dtype=np.int64)
        out[y] = row
        prior = row
    return out.reshape(height, width, channels)


def distinct_colours(pixels: np.ndarray) -> int:
    rgb = pixels[:, :, :3].astype(np.uint32)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    return int(np.unique(packed).size)
