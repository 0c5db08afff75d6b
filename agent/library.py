"""Opening an :class:`~agent.root.Agent` from a script, with the installed plugins' codecs.

Apart from :mod:`agent.root` because loading plugins goes through the hook
specifications, which name ``AgentContext``, which is a view of the
``Agent``: the root itself must not import the plugin loader back.
"""

from __future__ import annotations

from pathlib import Path

from agent.plugins import get_plugin_manager
from agent.query.service import QueryOptions
from agent.root import Agent
from agent.storage import StorageOptions
from agent.storage.codec import Codec


def installed_codecs() -> dict[str, Codec]:
    """Every codec the installed plugins register (entry points, built-ins included), by name."""
    host = get_plugin_manager()
    codecs: dict[str, Codec] = {}
    for made in host.pm.hook.register_codecs():
        for codec in made or []:
            codecs[codec.name] = codec
    return codecs


async def open_agent(
    path: str | Path,
    options: StorageOptions | None = None,
    *,
    query_options: QueryOptions | None = None,
) -> Agent:
    """:meth:`Agent.open` with every installed codec; new segments use ``zstd-xor`` by default.

    ``async with await open_agent("metrics.db") as agent: ...`` closes it.
    """
    return await Agent.open(path, options, installed_codecs(), query_options=query_options)
