"""Metric metadata (type, help, unit) for ``/api/v1/metadata``, fed by any ingestor.

One table per agent (``AgentContext.metadata``), so that whatever learns
metadata (remote-write 1.0 and 2.0 today, a scraper or StatsD tomorrow) adds
to the same place the query API reads from.

Kept in memory only: senders re-send it all the time (Prometheus every
minute with 1.0, with every series with 2.0), so after a restart the table
fills again within one send interval, and a durable copy would cost a write
per change for little gain. Bounded: past ``max_metrics`` metric names the
least recently updated name is forgotten; each name keeps at most
``PER_METRIC`` distinct (type, help, unit) entries, newest last.
"""

from __future__ import annotations

from typing import Any, Protocol

PER_METRIC = 10
DEFAULT_MAX_METRICS = 100_000


class MetadataLike(Protocol):
    @property
    def metric(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def help(self) -> str: ...

    @property
    def unit(self) -> str: ...


class MetadataTable:
    def __init__(self) -> None:
        self._by_metric: dict[str, dict[tuple[str, str, str], None]] = {}

    def __len__(self) -> int:
        return len(self._by_metric)

    def add(self, md: MetadataLike, max_metrics: int = DEFAULT_MAX_METRICS) -> None:
        if not md.metric:
            return
        entry = (md.type, md.help, md.unit)
        entries = self._by_metric.pop(md.metric, None)  # re-insert: newest last
        if entries is None:
            entries = {}
            while len(self._by_metric) >= max_metrics > 0:
                del self._by_metric[next(iter(self._by_metric))]
        entries.pop(entry, None)
        entries[entry] = None
        while len(entries) > PER_METRIC:
            del entries[next(iter(entries))]
        self._by_metric[md.metric] = entries

    def query(
        self, metric: str | None = None, limit: int = -1, limit_per_metric: int = -1
    ) -> dict[str, list[dict[str, Any]]]:
        """Prometheus' ``/api/v1/metadata`` data: ``limit`` < 0 and ``limit_per_metric`` <= 0
        mean no limit (as in Prometheus, ``limit=0`` returns nothing)."""
        out: dict[str, list[dict[str, Any]]] = {}
        names = [metric] if metric is not None else sorted(self._by_metric)
        for name in names:
            entries = self._by_metric.get(name)
            if entries is None:
                continue
            if 0 <= limit <= len(out):
                break
            items = [{"type": t, "help": h, "unit": u} for t, h, u in reversed(entries)]
            if limit_per_metric > 0:
                items = items[:limit_per_metric]
            out[name] = items
        return out
