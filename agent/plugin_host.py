"""What the plugin manager learnt while loading plugins, and how the core calls them.

Apart from :mod:`agent.plugins` (which loads plugins and so imports the
hookspecs) so that :mod:`agent.context` can name ``PluginHost`` without an
import cycle through the hookspecs.
"""

from __future__ import annotations

import inspect
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
