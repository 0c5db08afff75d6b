"""The running agent as plugins see it, and the objects plugins hand it.

``AgentContext`` is handed to every ``register_*`` hook and to ingestors'
``start``: a typed, read-only view of the :class:`agent.root.Agent` (store,
query service, streams, rules, dispatcher) plus what the application keeps
for plugins (config, metrics, metadata, the objects they registered). The
protocols of those objects (``Ingestor``, ``Exporter``, ``Route``) live
here, beside the context they receive; ``agent.plugin_api`` re-exports them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from aiohttp import web

from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.metrics import AgentMetrics
from agent.model import Labels
from agent.plugin_host import PluginHost
from agent.query.extensions import RangeFunction
from agent.storage.backfill import BackfillResult
from agent.storage.codec import Codec
from agent.storage.options import REJECT_CARDINALITY, AppendResult, Rejection
from agent.web.api.metadata import MetadataTable
from agent.web.ingest_budget import IngestBudget

if TYPE_CHECKING:
    from agent.alerting.dispatch import Dispatcher
    from agent.alerting.engine import RuleEngine
    from agent.alerting.notify import Notifier
    from agent.dataio.stream import StreamHub
    from agent.forward.export_log import ExportHub
    from agent.query.service import QueryService
    from agent.root import Agent
    from agent.storage import Store
    from agent.storage.backfill import OnError


# Samples per store append of one large batch (see AgentContext.append).
APPEND_CHUNK = 100_000
# A skip-mode backfill goes to the store in calls of at most this many series: the
# store spends its time per series (a block to merge or write for each), and each
# call is one transaction that remote-write acknowledgements wait behind.
BACKFILL_CHUNK_SERIES = 2_000

RouteGroup = Literal["write", "read", "admin", "public"]


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """An HTTP route a plugin adds; ``group`` selects its authentication."""

    method: str
    path: str
    handler: Handler
    group: RouteGroup = "read"
    name: str | None = None


# What ``register_query_functions`` maps names to (agent.query.extensions).
QueryFunction = RangeFunction


@dataclass
class AgentContext:
    """Handed to every ``register_*`` hook and to ingestors' ``start``.

    ``agent`` (and so ``store``, ``queries``, ``streams``, ``rules``,
    ``dispatcher``) is set once the store is open: after ``register_routes``,
    before any ingestor, exporter or ``startup`` hook runs.
    """

    config: Config
    plugins: PluginHost
    metrics: AgentMetrics
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tsagent"))
    # The composition root, built by the application once the store is open.
    agent: Agent | None = None
    codecs: dict[str, Codec] = field(default_factory=dict)
    ingestors: list[Ingestor] = field(default_factory=list)
    exporters: list[Exporter] = field(default_factory=list)
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    query_functions: dict[str, QueryFunction] = field(default_factory=dict)
    # Metric type/help/unit learnt by ingestors, served by /api/v1/metadata.
    metadata: MetadataTable = field(default_factory=MetadataTable)
    ready: bool = False
    # Memory budget shared by the ingest endpoints for large requests (agent.web.ingest_budget).
    ingest_budget: IngestBudget = field(default_factory=lambda: IngestBudget(48 * 1024 * 1024))
    # The time the rule engine, the dispatcher and the export log go by (a ManualClock in tests).
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        server = self.config.raw.get("server") or {}
        self.ingest_budget.limit = server.get("max_inflight_ingest_bytes", self.ingest_budget.limit)

    def plugin_config(self, dotted: str) -> dict[str, Any]:
        """The validated section of a plugin (``ingest.statsd``) as a dict.

        Raises :class:`agent.config.ConfigError` for a path that is not a
        section of the schema (a misspelling used to read as ``{}``).
        """
        return self.config.section(dotted)

    def plugin_settings(self, dotted: str) -> Any:
        """The section as a frozen, typed view: attributes, durations in float seconds."""
        return self.config.typed(dotted)

    # --- read-only views of the agent --------------------------------------------------------

    @property
    def store(self) -> Store | None:
        """The store, once open (None before startup and after shutdown)."""
        return None if self.agent is None else self.agent.store

    @property
    def queries(self) -> QueryService:
        """The query service (PromQL with limits, workers and the result cache)."""
        return self.require_agent().queries

    @property
    def streams(self) -> StreamHub:
        """Live subscriptions to committed samples (see :mod:`agent.dataio.stream`)."""
        return self.require_agent().streams

    @property
    def rules(self) -> RuleEngine | None:
        """The rule engine (alerting and recording rules), once started."""
        return None if self.agent is None else self.agent.rules

    @property
    def dispatcher(self) -> Dispatcher | None:
        """Routes, groups and delivers alert notifications, once started."""
        return None if self.agent is None else self.agent.dispatcher

    @property
    def export_hub(self) -> ExportHub | None:
        """Feeds batch exporters from the durable export log, when any is started."""
        return None if self.agent is None else self.agent.export_hub

    def require_agent(self) -> Agent:
        if self.agent is None:
            raise RuntimeError("the store is not open yet")
        return self.agent

    def require_store(self) -> Store:
        return self.require_agent().store

    async def append_samples(
        self,
        samples: Iterable[tuple[Labels, int, float]],
        *,
        source: str,
        client: str | None = None,
    ) -> AppendResult:
        """Append (labels, ms, value) triples and count them in ``/metrics``.

        The convenient path for low-rate ingestors; high-rate ones resolve
        series ids themselves (cached on their wire format) and call
        :meth:`append` with arrays.
        """
        rows = list(samples)
        store = self.require_store()
        ids, refused = await store.resolve_series([r[0] for r in rows])
        if not refused:
            return await self.append(
                ids, [r[1] for r in rows], [r[2] for r in rows], source=source, client=client
            )
        keep = [i for i in range(len(rows)) if i not in refused]
        result = await self.append(
            [ids[i] for i in keep],
            [rows[i][1] for i in keep],
            [rows[i][2] for i in keep],
            source=source,
            client=client,
        )
        result.rejected.extend(
            Rejection(0, rows[i][1], REJECT_CARDINALITY, reason) for i, reason in refused.items()
        )
        self.metrics.samples_rejected.labels(source, REJECT_CARDINALITY).inc(len(refused))
        return result

    async def append(
        self,
        series_ids: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
        *,
        source: str,
        client: str | None = None,
    ) -> AppendResult:
        """Durable append through the store, with the agent's counters updated.

        A large batch goes in chunks of ``APPEND_CHUNK`` samples: appended at
        once, the head's work on millions of samples held the event loop for
        seconds and copied the batch several times (issue 13). Should a later
        chunk fail, the caller's retry re-sends the earlier ones as exact
        duplicates, which are idempotent.
        """
        store = self.require_store()
        n = len(series_ids)
        if n <= APPEND_CHUNK:
            result = await store.append(
                series_ids, timestamps, values, source=source, client=client
            )
        else:
            result = AppendResult()
            for lo in range(0, n, APPEND_CHUNK):
                part = await store.append(
                    series_ids[lo : lo + APPEND_CHUNK],
                    timestamps[lo : lo + APPEND_CHUNK],
                    values[lo : lo + APPEND_CHUNK],
                    source=source,
                    client=client,
                )
                result.accepted += part.accepted
                result.duplicates += part.duplicates
                result.rejected.extend(part.rejected)
        self.metrics.samples_ingested.labels(source).inc(result.accepted)
        for reason, count in Counter(r.reason for r in result.rejected).items():
            self.metrics.samples_rejected.labels(source, reason).inc(count)
        return result

    async def backfill(
        self,
        series_ids: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
        *,
        source: str,
        client: str | None = None,
        on_error: OnError = "skip",
        new_series: Sequence[Labels] = (),
    ) -> BackfillResult:
        """Historical import through ``Store.backfill``, counted like appends in ``/metrics``.

        With ``on_error="skip"`` a backfill of many series goes in calls of at most
        ``BACKFILL_CHUNK_SERIES`` series (each its own transaction and audit row),
        so live writes are acknowledged between them instead of waiting seconds
        behind one large transaction (issue 13). ``"abort"`` stays one call: all or
        nothing. Should a later call fail, the caller's retry re-sends the earlier
        samples as exact duplicates, which are idempotent.
        """
        store = self.require_store()
        sids = np.asarray(series_ids, dtype=np.int64)
        distinct = np.unique(sids)
        if on_error == "abort" or distinct.size <= BACKFILL_CHUNK_SERIES:
            result = await store.backfill(
                sids,
                timestamps,
                values,
                source=source,
                client=client,
                on_error=on_error,
                new_series=new_series,
            )
        else:
            ts = np.asarray(timestamps, dtype=np.int64)
            vals = np.asarray(values, dtype=np.float64)
            result = BackfillResult()
            for lo in range(0, distinct.size, BACKFILL_CHUNK_SERIES):
                group = distinct[lo : lo + BACKFILL_CHUNK_SERIES]
                take = np.isin(sids, group)
                part = await store.backfill(
                    sids[take], ts[take], vals[take], source=source, client=client
                )
                _add_backfill(result, part)
        if not result.aborted:
            self.metrics.samples_ingested.labels(source).inc(result.accepted)
        for reason, count in Counter(r.reason for r in result.rejected).items():
            self.metrics.samples_rejected.labels(source, reason).inc(count)
        return result


CONTEXT_KEY = web.AppKey("context", AgentContext)


def context_of(app: web.Application) -> AgentContext:
    """The application's context (what the app factory stored under ``CONTEXT_KEY``)."""
    return app[CONTEXT_KEY]


def _add_backfill(total: BackfillResult, part: BackfillResult) -> None:
    total.accepted += part.accepted
    total.duplicates += part.duplicates
    total.rejected.extend(part.rejected)
    total.stored += part.stored
    total.series += part.series
    total.segments_written += part.segments_written
    total.segments_replaced += part.segments_replaced
    total.audit_id = part.audit_id if part.audit_id is not None else total.audit_id
