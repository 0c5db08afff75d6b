"""Built-in chunk codecs for the store.

Codec names are written next to every stored segment, so each name here is a
promise about a byte layout: a codec may learn a new format version (every
compressed layout starts with a version byte for that reason), but a name is
never reused for something else.

``DEFAULT_CODEC`` is what new segments use unless configured otherwise; it
was picked by ``benchmarks/bench_codecs.py`` for the smallest size on a
realistic mix of series while decoding a day of samples in about 0.1 ms.
"""

from __future__ import annotations

from agent.plugin_api import Codec, hookimpl
from plugins.codecs.delta_rle import DeltaRleCodec
from plugins.codecs.gorilla import GorillaCodec
from plugins.codecs.raw import RawCodec
from plugins.codecs.zstd_xor import ZstdXorCodec

DEFAULT_CODEC = ZstdXorCodec.name

__all__ = [
    "DEFAULT_CODEC",
    "DeltaRleCodec",
    "GorillaCodec",
    "RawCodec",
    "ZstdXorCodec",
    "all_codecs",
    "register_codecs",
]


def all_codecs() -> list[Codec]:
    """Fresh instances of every built-in codec (they hold no state)."""
    return [RawCodec(), DeltaRleCodec(), GorillaCodec(), ZstdXorCodec()]


@hookimpl
def register_codecs() -> list[Codec]:
    return all_codecs()
