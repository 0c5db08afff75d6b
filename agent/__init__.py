"""tsagent: a small, plugin-based, Prometheus-compatible metrics agent.

``hookimpl`` is re-exported here so a plugin needs only ``from agent import
hookimpl`` (the same habit as datasette and pytest).
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tsagent"
ENTRY_POINT_GROUP = "tsagent"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "__version__", "hookimpl"]
