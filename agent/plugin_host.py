"""What the plugin manager learnt while loading plugins, and how the core calls them.

Apart from :mod:`agent.plugins` (which loads plugins and so imports the
hookspecs) so that :mod:`agent.context` can name ``PluginHost`` without an
import cycle through the hookspecs.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pluggy

T = TypeVar("T")


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    distribution: str
    builtin: bool


@dataclass
class PluginFailure:
    name: str
    stage: str  # "load" or "startup"
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} failed at {self.stage}: {self.error}"


class PluginError(Exception):
    """A required plugin could not load or start."""

    def __init__(self, failures: list[PluginFailure]) -> None:
        self.failures = failures
        super().__init__("; ".join(str(f) for f in failures))


@dataclass
class PluginHost:
    """The plugin manager plus what we learnt while loading it."""

    pm: pluggy.PluginManager
    loaded: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def hook(self) -> Any:
        return self.pm.hook


async def await_maybe(value: T | Any) -> Any:
    """Let hook implementations be plain or ``async`` functions (pluggy is synchronous)."""
    if inspect.isawaitable(value):
        return await value
    return value


def protocol_problem(obj: object, kind: type) -> str | None:
    """Why ``obj`` is not a ``kind`` (a runtime-checkable Protocol or a class), or None.

    ``isinstance`` against a Protocol checks only that the members exist;
    the message lists the missing ones so a plugin author sees what to add.
    """
    if isinstance(obj, kind):
        return None
    wanted: set[str] = set()
    if getattr(kind, "_is_protocol", False):
        wanted = set(getattr(kind, "__protocol_attrs__", None) or typing._get_protocol_attrs(kind))  # type: ignore[attr-defined]
    missing = sorted(m for m in wanted if not hasattr(obj, m))
    detail = f" (missing {', '.join(missing)})" if missing else ""
    return f"returned {obj!r:.80}, which is not {kind.__name__}{detail}"
