"""Opens the store the way the daemon configures it.

Kept apart from ``agent.storage`` so the storage engine stays a library that
knows nothing of YAML or plugins.
"""

from __future__ import annotations

import re
from typing import Any

from agent.config import parse_duration, parse_timestamp_ms
from agent.context import AgentContext
from agent.metrics import CardinalityCollector, StatsCollector
from agent.plugin_calls import call_each
from agent.plugin_host import protocol_problem
from agent.storage import StorageOptions, Store
from agent.storage.codec import Codec, RawCodec
from agent.storage.rollup import RollupOptions

DB_FILE = "tsagent.db"

STORE_METRICS = {
    "active_series": ("tsagent_active_series", "Series with samples in the head block.", "gauge"),
    "total_series": ("tsagent_series", "Series known to the index.", "gauge"),
    "head_samples": ("tsagent_head_samples", "Samples held in the head block.", "gauge"),
    "head_bytes": ("tsagent_head_bytes", "Estimated memory of the head block.", "gauge"),
    "wal_rows": ("tsagent_wal_batches", "Batches in the write-ahead log.", "gauge"),
    "segments": ("tsagent_segments", "Compressed segments stored.", "gauge"),
    "commits": ("tsagent_wal_commits_total", "Group commits of the log.", "counter"),
    "checkpoints": (
        "tsagent_wal_checkpoints_total",
        "Times the log was rewritten as a compact copy of the head.",
        "counter",
    ),
    "file_bytes": ("tsagent_storage_file_bytes", "Size of the database file.", "gauge"),
    "sqlite_wal_bytes": (
        "tsagent_storage_sqlite_wal_bytes",
        "Size of SQLite's -wal journal beside the database file.",
        "gauge",
    ),
    "free_bytes": (
        "tsagent_storage_free_bytes",
        "Free pages inside the database file, not yet given back to the file system.",
        "gauge",
    ),
    "log_bytes": (
        "tsagent_storage_log_bytes",
        "Bytes of the write-ahead log table (samples not yet in segments).",
        "gauge",
    ),
    "series_bytes": (
        "tsagent_storage_series_index_bytes",
        "Bytes of the series and label-pair tables on disk.",
        "gauge",
    ),
    "cardinality_rejected": (
        "tsagent_cardinality_rejected_series_total",
        "New series refused by a cardinality limit, by the rule that refused them.",
        "counter:rule",
    ),
}


STORE_SUMMARIES = {
    "tsagent_flush_duration_seconds": (
        "Head flushes into segments and the time they took.",
        "flushes",
        "flush_seconds",
    ),
}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def storage_options(ctx: AgentContext) -> StorageOptions:
    """``storage`` and ``limits`` as the store's options (through the typed config views)."""
    cfg = ctx.config.typed("storage")
    default_codec = cfg.codec or _builtin_default(ctx)
    rules = [(r.match, r.codec) for r in cfg.codec_rules]
    for name in [default_codec, *(c for _, c in rules)]:
        if name not in ctx.codecs:
            known = ", ".join(sorted(ctx.codecs)) or "none"
            raise ValueError(f"storage.codec: unknown codec {name!r}; known codecs: {known}")
    return StorageOptions(
        synchronous=cfg.synchronous,
        out_of_order_window_ms=_ms(cfg.out_of_order_window),
        block_size=cfg.block_size,
        flush_age_ms=_ms(cfg.flush_age),
        flush_interval_s=cfg.flush_interval,
        head_memory_limit_bytes=cfg.head_memory_limit_bytes,
        default_codec=default_codec,
        codec_rules=[(re.compile(m).pattern, c) for m, c in rules],
        retention_ms=_ms(cfg.retention),
        retention_rules=[(r.match, _ms(r.retention)) for r in cfg.retention_rules],
        retention_interval_s=cfg.retention_interval,
        free_pages_warn_share=cfg.free_pages_warn_share,
        reclaim_min_bytes=cfg.reclaim_min_bytes,
        checkpoint_min_bytes=cfg.checkpoint_min_bytes,
        **limit_options(ctx),
    )


def rollup_options(ctx: AgentContext) -> RollupOptions | None:
    """``storage.rollups`` typed; None when disabled."""
    cfg = ctx.config.typed("storage.rollups")
    if not cfg.enabled:
        return None
    retention: dict[int, int] = {}
    for key, seconds in cfg.retention.items():
        try:
            retention[_ms(parse_duration(key))] = _ms(seconds)
        except ValueError as exc:
            raise ValueError(f"storage.rollups.retention.{key}: {exc}") from None
    return RollupOptions(
        resolutions_ms=tuple(_ms(r) for r in cfg.resolutions),
        retention_ms=retention,
        interval_s=cfg.interval,
        delay_ms=_ms(cfg.delay),
    )


def limit_options(ctx: AgentContext) -> dict[str, Any]:
    limits = ctx.config.typed("limits")
    rules: list[tuple[str, str, int]] = []
    for i, rule in enumerate(limits.rules):
        if rule.label:
            if not rule.max_values:
                raise ValueError(f"limits.rules[{i}].max_values: needed with a label")
            rules.append((rule.metric, rule.label, rule.max_values))
        if rule.max_series:
            rules.append((rule.metric, "", rule.max_series))
        if not rule.label and not rule.max_series:
            raise ValueError(f"limits.rules[{i}]: set max_series, or label and max_values")
    return {
        "max_active_series": limits.max_active_series,
        "active_window_ms": _ms(limits.active_window),
        "cardinality_rules": rules,
        "min_timestamp_ms": parse_timestamp_ms(limits.min_timestamp),
        "max_future_ms": _ms(limits.max_future),
        "max_labels_per_series": limits.max_labels_per_series,
        "max_label_name_length": limits.max_label_name_length,
        "max_label_value_length": limits.max_label_value_length,
        "max_metric_name_length": limits.max_metric_name_length,
    }


# The codec new segments use when ``storage.codec`` is not set: the first of these
# that a plugin registered (the core names it, it does not import it; ``raw`` is
# the store's own and always there).
DEFAULT_CODECS = ("zstd-xor", "raw")


def _builtin_default(ctx: AgentContext) -> str:
    return next((name for name in DEFAULT_CODECS if name in ctx.codecs), "raw")


async def open_store(ctx: AgentContext, *, background_rollups: bool = True) -> Store:
    """The configured store, rollups started (passes in the background unless told not to)."""
    ctx.codecs.setdefault(RawCodec.name, RawCodec())  # the store's own; a plugin's may replace it
    for plugin, made in call_each(ctx, "register_codecs"):
        for codec in made or []:
            problem = protocol_problem(codec, Codec)
            if problem:
                raise ValueError(f"plugin {plugin!r}: register_codecs {problem}")
            ctx.codecs[codec.name] = codec
    options = storage_options(ctx)
    data_dir = ctx.config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(data_dir / DB_FILE, options, ctx.codecs)
    rollups = rollup_options(ctx)
    if rollups is not None:
        try:
            await store.start_rollups(rollups, background=background_rollups)
        except BaseException:
            await store.close()
            raise
    ctx.metrics.add_collector(CardinalityCollector(lambda: ctx.store))
    ctx.metrics.add_collector(
        StatsCollector(lambda: ctx.store and ctx.store.stats(), STORE_METRICS, STORE_SUMMARIES)
    )
    return store
