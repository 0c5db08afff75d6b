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


def storage_options(ctx: AgentContext) -> StorageOptions:
    cfg = ctx.config.section("storage")
    default_codec = cfg["codec"] or _builtin_default(ctx)
    rules = [(r["match"], r["codec"]) for r in cfg["codec_rules"]]
    for name in [default_codec, *(c for _, c in rules)]:
        if name not in ctx.codecs:
            known = ", ".join(sorted(ctx.codecs)) or "none"
            raise ValueError(f"storage.codec: unknown codec {name!r}; known codecs: {known}")
    return StorageOptions(
        synchronous=cfg["synchronous"],
        out_of_order_window_ms=int(ctx.config.duration("storage.out_of_order_window") * 1000),
        block_size=cfg["block_size"],
        flush_age_ms=int(ctx.config.duration("storage.flush_age") * 1000),
        flush_interval_s=ctx.config.duration("storage.flush_interval"),
        head_memory_limit_bytes=cfg["head_memory_limit_bytes"],
        default_codec=default_codec,
        codec_rules=[(re.compile(m).pattern, c) for m, c in rules],
        retention_ms=int(ctx.config.duration("storage.retention") * 1000),
        retention_rules=[
            (r["match"], int(parse_duration(r["retention"]) * 1000)) for r in cfg["retention_rules"]
        ],
        retention_interval_s=ctx.config.duration("storage.retention_interval"),
        free_pages_warn_share=cfg["free_pages_warn_share"],
        reclaim_min_bytes=cfg["reclaim_min_bytes"],
        checkpoint_min_bytes=cfg["checkpoint_min_bytes"],
        **limit_options(ctx),
    )


def rollup_options(ctx: AgentContext) -> RollupOptions | None:
    """``storage.rollups`` typed; None when disabled."""
    cfg = ctx.config.section("storage.rollups")
    if not cfg.get("enabled", True):
        return None
    resolutions = tuple(int(parse_duration(r) * 1000) for r in cfg["resolutions"])
    retention: dict[int, int] = {}
    for key, value in cfg["retention"].items():
        try:
            res = int(parse_duration(key) * 1000)
            retention[res] = int(parse_duration(value) * 1000)
        except ValueError as exc:
            raise ValueError(f"storage.rollups.retention.{key}: {exc}") from None
    return RollupOptions(
        resolutions_ms=resolutions,
        retention_ms=retention,
        interval_s=ctx.config.duration("storage.rollups.interval"),
        delay_ms=int(ctx.config.duration("storage.rollups.delay") * 1000),
    )


def limit_options(ctx: AgentContext) -> dict[str, Any]:
    limits = ctx.config.section("limits")
    rules: list[tuple[str, str, int]] = []
    for i, rule in enumerate(limits.get("rules", [])):
        if rule["label"]:
            if not rule["max_values"]:
                raise ValueError(f"limits.rules[{i}].max_values: needed with a label")
            rules.append((rule["metric"], rule["label"], rule["max_values"]))
        if rule["max_series"]:
            rules.append((rule["metric"], "", rule["max_series"]))
        if not rule["label"] and not rule["max_series"]:
            raise ValueError(f"limits.rules[{i}]: set max_series, or label and max_values")
    return {
        "max_active_series": limits.get("max_active_series", 0),
        "active_window_ms": int(ctx.config.duration("limits.active_window") * 1000),
        "cardinality_rules": rules,
        "min_timestamp_ms": parse_timestamp_ms(limits.get("min_timestamp", 0)),
        "max_future_ms": int(ctx.config.duration("limits.max_future") * 1000),
        "max_labels_per_series": limits.get("max_labels_per_series", 40),
        "max_label_name_length": limits.get("max_label_name_length", 256),
        "max_label_value_length": limits.get("max_label_value_length", 4096),
        "max_metric_name_length": limits.get("max_metric_name_length", 4096),
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
