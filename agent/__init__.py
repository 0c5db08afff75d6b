"""tsagent: a small, plugin-based, Prometheus-compatible metrics agent.

``agent.Agent`` (:mod:`agent.root`) is the composition root and the Python
API; it is imported on first use, so ``import agent.storage`` stays light.
Plugins import :mod:`agent.plugin_api`, which re-exports ``hookimpl``.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tsagent"
ENTRY_POINT_GROUP = "tsagent"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "Agent", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    if name == "Agent":  # lazily: the root imports every layer of the core
        from agent.root import Agent

        return Agent
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
