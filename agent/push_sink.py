"""Samples from a push protocol into the store: series-id cache, refusals, counters.

Shared by the OTLP, InfluxDB line protocol and MQTT plugins, which all turn
their wire format into (series key, timestamp, value) triples. Why a cache
keyed on the sender's own spelling of a series (the raw line-protocol series
key and field, say): building sorted label tuples and looking them up costs
more than decoding, and a sender repeats the same series every interval, as
the remote-write receiver found; only misses are turned into labels.

Each protocol gets ``tsagent_<proto>_received_total{kind}`` and
``tsagent_<proto>_rejected_total{reason}`` from :class:`ProtocolMetrics`;
samples the store took or refused are counted by ``ctx.append`` as for every
source.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from prometheus_client import Counter

from agent.config import Field, check_non_negative, check_positive
from agent.model import Labels

if TYPE_CHECKING:
    from agent.context import AgentContext

REFUSED_SERIES = "cardinality_limit"  # the store's reason for a refused new series


def sink_fields(cache_help: str, retry_help: str) -> dict[str, Field]:
    """The config fields every push receiver has: its series-id cache and Retry-After."""
    return {
        "series_cache_size": Field(int, 1_000_000, cache_help, check=check_positive),
        "retry_after_seconds": Field(int, 5, retry_help, check=check_non_negative),
    }


class ProtocolMetrics:
    """``received`` (by kind: request, line, message, sample...) and ``rejected`` (by reason)."""

    def __init__(self, ctx: AgentContext, proto: str, what: str) -> None:
        r = ctx.metrics.registry
        self.received = Counter(
            f"tsagent_{proto}_received",
            f"{what} received, by kind (requests, lines or messages, and samples).",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            f"tsagent_{proto}_rejected",
            f"{what} refused or skipped, by reason.",
            ["reason"],
            registry=r,
        )

    def reject(self, reason: str, n: int = 1) -> None:
        if n:
            self.rejected.labels(reason).inc(n)


@dataclass
class Written:
    """What one :meth:`SeriesSink.write` did."""

    accepted: int = 0
    duplicates: int = 0
    # (labels, why, samples) of series the store refused (cardinality limits)
    refused_series: list[tuple[Labels, str, int]] = field(default_factory=list)
    # (labels, timestamp, reason) of single samples the store refused
    refused_samples: list[tuple[Labels, int, str]] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(n for _, _, n in self.refused_series) + len(self.refused_samples)


class SeriesSink:
    """Resolves series through a bounded cache and appends, durably, in one call."""

    def __init__(self, ctx: AgentContext, source: str, cache_size: int = 1_000_000) -> None:
        self.ctx = ctx
        self.source = source
        self.cache_size = cache_size
        self.cache: dict[Hashable, int] = {}

    async def write(
        self,
        keys: Sequence[Hashable],
        timestamps: Sequence[int],
        values: Sequence[float],
        labels_of: Callable[[Hashable], Labels] | None = None,
        *,
        client: str | None = None,
    ) -> Written:
        """Append ``values[i]`` at ``timestamps[i]`` (ms) to the series ``keys[i]`` names.

        ``labels_of(key)`` is called once per key the cache does not know;
        without it the keys are the label tuples themselves.
        Raises the store's ``BackPressure``/``StorageError`` (nothing written).
        """
        out = Written()
        cache = self.cache
        ids: list[int] = [cache.get(k, 0) for k in keys]
        missing: dict[Hashable, list[int]] = {}
        for i, sid in enumerate(ids):
            if not sid:
                missing.setdefault(keys[i], []).append(i)
        drop: set[int] = set()
        if missing:
            store = self.ctx.require_store()
            miss_keys = list(missing)
            if labels_of is not None:
                miss_labels = [labels_of(k) for k in miss_keys]
            else:
                miss_labels = [cast(Labels, k) for k in miss_keys]
            sids, refused = await store.resolve_series(miss_labels)
            if len(cache) + len(miss_keys) > self.cache_size:
                cache.clear()  # crude but O(1) amortised, as the remote-write receiver
            for n, (key, sid) in enumerate(zip(miss_keys, sids, strict=True)):
                positions = missing[key]
                if n in refused:
                    out.refused_series.append((miss_labels[n], refused[n], len(positions)))
                    drop.update(positions)
                    self.ctx.metrics.samples_rejected.labels(self.source, REFUSED_SERIES).inc(
                        len(positions)
                    )
                    continue
                cache[key] = sid
                for pos in positions:
                    ids[pos] = sid
        if drop:
            keep = [i for i in range(len(ids)) if i not in drop]
            ids = [ids[i] for i in keep]
            timestamps = [timestamps[i] for i in keep]
            values = [values[i] for i in keep]
        if not ids:
            return out
        result = await self.ctx.append(ids, timestamps, values, source=self.source, client=client)
        out.accepted = result.accepted
        out.duplicates = result.duplicates
        store = self.ctx.require_store()
        for r in result.rejected:
            out.refused_samples.append((store.labels(r.series_id), r.timestamp, r.reason))
        return out
