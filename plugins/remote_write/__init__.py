"""Prometheus remote-write receiver (1.0 and 2.0).

``POST /api/v1/write`` (group ``write``) accepts ``prometheus.WriteRequest``
(1.0) and ``io.prometheus.write.v2.Request`` (2.0), snappy-compressed, and
answers only after the samples are durable. Metric metadata that senders send
along goes into the agent's table (``ctx.metadata``), which the core serves
at ``GET /api/v1/metadata``.

Configured under ``ingest.remote_write``; routes are fixed when the daemon
starts, so ``enabled`` takes effect at the next start, while the limits are
read per request and follow a reload.
"""

from __future__ import annotations

from agent.plugin_api import AgentContext, Field, Route, Schema, hookimpl
from plugins.remote_write.receiver import SECTION, Receiver, negotiate

__all__ = ["Receiver", "config_schema", "negotiate", "register_routes"]

MiB = 1024 * 1024


def _positive(value: object) -> str | None:
    return None if isinstance(value, int) and value > 0 else "must be > 0"


def _non_negative(value: object) -> str | None:
    return None if isinstance(value, int) and value >= 0 else "must be >= 0"


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /api/v1/write."),
                "max_compressed_bytes": Field(
                    int,
                    32 * MiB,
                    "Largest request body as sent (snappy); larger gets 413. "
                    "server.max_body_bytes applies too.",
                    check=_positive,
                ),
                "max_decompressed_bytes": Field(
                    int,
                    32 * MiB,
                    "Largest decompressed request, judged from the snappy header "
                    "before decompressing; larger gets 413 (VictoriaMetrics' default "
                    "-maxInsertRequestSize; Prometheus sends a few hundred KB).",
                    check=_positive,
                ),
                "series_cache_size": Field(
                    int,
                    1_000_000,
                    "Series ids remembered per protocol version (keyed on their label "
                    "bytes), so known series skip label decoding; cleared when full.",
                    check=_positive,
                ),
                "retry_after_seconds": Field(
                    int,
                    5,
                    "Retry-After sent with 429 when the store asks for back-off.",
                    check=_non_negative,
                ),
                "created_timestamp_zero_ingestion": Field(
                    bool,
                    False,
                    "2.0: store a 0 sample at a series' created (start) timestamp, as "
                    "Prometheus' created-timestamp-zero-ingestion feature does.",
                ),
                "max_metadata_metrics": Field(
                    int,
                    100_000,
                    "Metric names whose metadata is kept (in memory) for /api/v1/metadata.",
                    check=_positive,
                ),
            },
            help="Prometheus remote-write receiver.",
        )
    }


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    receiver = Receiver(ctx)
    return [
        Route("POST", "/api/v1/write", receiver.write, "write", name="remote_write"),
    ]
