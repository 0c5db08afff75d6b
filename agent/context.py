"""The running agent as plugins see it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.metrics import AgentMetrics
from agent.model import Labels

if TYPE_CHECKING:
    from agent.plugin_api import Codec, Exporter, Ingestor, Notifier, QueryFunction
    from agent.plugins import PluginHost
    from agent.storage import AppendResult, Store


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
    ready: bool = False

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
        ids = await store.get_or_create_series([r[0] for r in rows])
        return await self.append(
            ids, [r[1] for r in rows], [r[2] for r in rows], source=source, client=client
        )

    async def append(
        self,
        series_ids: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
        *,
        source: str,
        client: str | None = None,
    ) -> AppendResult:
        """Durable append through the store, with the agent's counters updated."""
        result = await self.require_store().append(
            series_ids, timestamps, values, source=source, client=client
        )
        self.metrics.samples_ingested.labels(source).inc(result.accepted)
        for reason, count in Counter(r.reason for r in result.rejected).items():
            self.metrics.samples_rejected.labels(source, reason).inc(count)
        return result
