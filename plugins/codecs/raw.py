"""The ``raw`` codec, which the store itself provides (``agent.storage.codec.RawCodec``).

It is re-exported here so the codec plugin lists it beside the others; the
store has it even with this plugin disabled, because ``raw`` is its escape
hatch (issue 14).
"""

from __future__ import annotations

from agent.plugin_api import RawCodec

__all__ = ["RawCodec"]
