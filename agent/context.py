"""The running agent as plugins see it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from agent.api.metadata import MetadataTable
from agent.clock import Clock, SystemClock
from agent.config import Config
from agent.ingest_budget import IngestBudget
from agent.metrics import AgentMetrics
from agent.model import Labels
from agent.storage.backfill import BackfillResult
from agent.storage.options import REJECT_CARDINALITY, AppendResult, Rejection

if TYPE_CHECKING:
    from agent.alerting.dispatch import Dispatcher
    from agent.alerting.engine import RuleEngine
    from agent.plugin_api import Codec, Exporter, Ingestor, Notifier, QueryFunction
    from agent.plugins import PluginHost
    from agent.storage import Store
    from agent.storage.backfill import OnError


# Samples per store append of one large batch (see AgentContext.append).
APPEND_CHUNK = 100_000
# A skip-mode backfill goes to the store in calls of at most this many series: the
# store spends its time per series (a block to merge or write for each), and each
# call is one transaction that remote-write acknowledgements wait behind.
BACKFILL_CHUNK_SERIES = 2_000


@dataclass
class AgentContext:
    """Handed to every ``register_*`` hook and to ingestors' ``start``.

    ``store`` is set once the store is open (before any ingestor starts).
    """

    config: Config
    plugins: PluginHost
    metrics: AgentMetrics
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tsagent"))
    store: Store | None = None
    codecs: dict[str, Codec] = field(default_factory=dict)
    ingestors: list[Ingestor] = field(default_factory=list)
    exporters: list[Exporter] = field(default_factory=list)
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    query_functions: dict[str, QueryFunction] = field(default_factory=dict)
    # Metric type/help/unit learnt by ingestors, served by /api/v1/metadata.
    metadata: MetadataTable = field(default_factory=MetadataTable)
    # The rule engine (alerting and recording rules), set once the store is open.
    rules: RuleEngine | None = None
    # Routes, groups and delivers alert notifications; set once the store is open.
    dispatcher: Dispatcher | None = None
    ready: bool = False
    # Memory budget shared by the ingest endpoints for large requests (agent.ingest_budget).
    ingest_budget: IngestBudget = field(default_factory=lambda: IngestBudget(48 * 1024 * 1024))
    # The time the rule engine, the dispatcher and the export log go by (a ManualClock in tests).
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        server = self.config.raw.get("server") or {}
        self.ingest_budget.limit = server.get("max_inflight_ingest_bytes", self.ingest_budget.limit)

    def plugin_config(self, dotted: str) -> dict[str, Any]:
        """The validated section of a plugin (``ingest.statsd``)."""
        return self.config.section(dotted)

    def require_store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the store is not open yet")
        return self.store

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
                sids, timestamps, values, source=source, client=client, on_error=on_error
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
