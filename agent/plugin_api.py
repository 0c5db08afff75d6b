"""The objects that hooks return, as Protocols.

Hooks wire things up once at startup; the core then calls these objects
directly, so nothing on the per-sample path goes through pluggy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

# What a plugin needs besides these protocols, so that a plugin imports only this
# module: the hook marker, configuration schemas, label rules and the store's
# errors (all leaf modules: importing them here makes no cycle).
from agent import exposition, hookimpl
from agent.clock import Clock, ManualClock, SystemClock
from agent.config import Field, Schema, check_duration, check_non_negative, check_positive
from agent.config import parse_duration as parse_duration
from agent.httpclient import (
    authorization,
    client_ssl_context,
    tls_config_errors,
    tls_config_schema,
)
from agent.model import METRIC_NAME, Labels, valid_label_name, valid_metric_name
from agent.rejections import fold_append_result, rejection_message, rejection_positions
from agent.wire import WireError, read_uvarint, uvarint

if TYPE_CHECKING:
    import numpy as np
    from aiohttp import web

    from agent.context import AgentContext
    from agent.exporting import ExportBatch, ExportProgress
    from agent.query.numfmt import format_value, json_number

# Loaded on first use: ``agent.storage`` imports this module (``Codec``), and
# ``agent.query`` imports the storage layer, so an eager import would be a cycle.
_LAZY = {
    "format_value": "agent.query.numfmt",
    "json_number": "agent.query.numfmt",
    "text_number": "agent.query.numfmt",
    # The Prometheus API error envelope: one mapping of errors to errorType and status.
    "ApiError": "agent.api.errors",
    "api_errors": "agent.api.errors",
    "error_body": "agent.api.errors",
    "error_of": "agent.api.errors",
    "failure": "agent.api.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.plugin_api' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


# (``AgentContext`` is importable from here under ``TYPE_CHECKING``, for annotations.)
__all__ = [
    "METRIC_NAME",
    "BackPressure",
    "Clock",
    "Field",
    "Labels",
    "ManualClock",
    "Rejection",
    "Schema",
    "StorageError",
    "SystemClock",
    "WireError",
    "authorization",
    "check_duration",
    "check_non_negative",
    "check_positive",
    "client_ssl_context",
    "exposition",
    "fold_append_result",
    "format_value",
    "hookimpl",
    "json_number",
    "parse_duration",
    "read_uvarint",
    "rejection_message",
    "rejection_positions",
    "tls_config_errors",
    "tls_config_schema",
    "uvarint",
    "valid_label_name",
    "valid_metric_name",
]

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
    """Receives every accepted batch after it is durable, or exposes data elsewhere.

    An exporter that only exposes data (an HTTP endpoint, say) needs just
    these; one that wants the batches also implements :class:`BatchExporter`.
    """

    name: str

    async def start(self, ctx: AgentContext) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class BatchExporter(Exporter, Protocol):
    """An exporter fed from the durable export log (see :mod:`agent.exporting`).

    The built-in remote-write forwarder is one; a third-party exporter gets
    exactly the same batches the same way. ``name`` must be stable: it keys
    the exporter's durable position.

    ``export(batches, progress)`` is called by the core, one call at a time,
    with committed batches (appends and backfills, as stored) in log order,
    only after ``start`` and never after ``stop``. Returning means
    "delivered": the position then moves past them in one SQLite commit.
    Raising means "not delivered": the same batches come again after a
    back-off, so delivery is at-least-once and in order, and nothing is ever
    skipped, across restarts and SIGKILL too. ``progress`` offers durable
    sub-positions (lanes) for exporters that deliver a call in parts, backlog
    checks, and drop accounting; raising :class:`agent.exporting.ExportStopped`
    when ``progress.stopping`` ends the call without a retry at shutdown.

    Optional attribute ``export_options`` (:class:`agent.exporting.ExportOptions`):
    samples per call, how long to let a call fill up, and backlog bounds
    (drop-oldest, counted in ``tsagent_export_dropped_samples_total``).
    """

    async def export(self, batches: Sequence[ExportBatch], progress: ExportProgress) -> None: ...


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


# Last: the storage package imports ``Codec`` from this module.
from agent.storage.errors import BackPressure, StorageError  # noqa: E402
from agent.storage.options import Rejection  # noqa: E402
