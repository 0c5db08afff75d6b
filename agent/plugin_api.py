"""The objects that hooks return, as Protocols.

Hooks wire things up once at startup; the core then calls these objects
directly, so nothing on the per-sample path goes through pluggy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from aiohttp import web

    from agent.context import AgentContext

RouteGroup = Literal["write", "read", "admin", "public"]


@runtime_checkable
class Codec(Protocol):
    """Encodes one block of one series: int64 ms timestamps and float64 values.

    Both arrays have the same length, timestamps sorted ascending.  ``decode``
    must return exactly what was encoded, bit for bit (NaN payloads, the
    staleness marker, -0.0 and infinities included).
    """

    name: str

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes: ...

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Ingestor(Protocol):
    """A source of samples (a listener, a poller, an HTTP push endpoint)."""

    name: str

    async def start(self, ctx: AgentContext) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Exporter(Protocol):
    """Receives every accepted batch after it is durable, or exposes data elsewhere."""

    name: str

    async def start(self, ctx: AgentContext) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers alert notifications to one kind of receiver."""

    name: str

    async def notify(
        self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]
    ) -> None: ...


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


@dataclass(frozen=True)
class Route:
    """An HTTP route a plugin adds; ``group`` selects its authentication."""

    method: str
    path: str
    handler: Handler
    group: RouteGroup = "read"
    name: str | None = None


QueryFunction = Callable[..., Any]
