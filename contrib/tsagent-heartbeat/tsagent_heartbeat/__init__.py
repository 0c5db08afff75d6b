"""An example third-party plugin: a heartbeat ingestor and a JSON-lines exporter.

The ingestor proves the daemon (and its store) are alive from the inside; the
exporter (:mod:`tsagent_heartbeat.jsonl_export`) receives every accepted batch
through the same durable export log as the built-in remote-write forwarder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from agent.plugin_api import Field, Schema, check_duration, hookimpl, parse_duration
from tsagent_heartbeat.jsonl_export import SECTION as EXPORT_SECTION
from tsagent_heartbeat.jsonl_export import JsonLinesExporter

SECTION = "ingest.heartbeat"


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, False, "Write a heartbeat gauge."),
                "interval": Field((str, int), "10s", check=check_duration),
                "job": Field(str, "tsagent"),
            }
        ),
        EXPORT_SECTION: Schema(
            {
                "enabled": Field(bool, False, "Append every accepted sample to a JSON-lines file."),
                "path": Field(str, "", "The file; default: export.jsonl in the data directory."),
                "fsync": Field(bool, True, "fsync after each batch before acknowledging it."),
            }
        ),
    }


class Heartbeat:
    name = "heartbeat"

    def __init__(self, interval: float, job: str) -> None:
        self.interval = interval
        self.job = job
        self._task: asyncio.Task[None] | None = None
        self.beats = 0

    async def start(self, ctx: Any) -> None:
        self._ctx = ctx
        await self.beat()  # fail at startup, not later, if the store refuses us
        self._task = asyncio.create_task(self._loop())

    async def beat(self) -> None:
        now = time.time()
        labels = (("__name__", "tsagent_heartbeat_timestamp_seconds"), ("job", self.job))
        await self._ctx.append_samples([(labels, int(now * 1000), now)], source="heartbeat")
        self.beats += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:  # noqa: BLE001 - keep beating; the daemon counts errors
                self._ctx.metrics.plugin_errors.labels("heartbeat", "beat").inc()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@hookimpl
def register_ingestors(ctx: Any) -> list[Heartbeat]:
    cfg = ctx.plugin_config(SECTION)
    if not cfg.get("enabled"):
        return []
    return [Heartbeat(parse_duration(cfg["interval"]), cfg["job"])]


@hookimpl
def register_exporters(ctx: Any) -> list[JsonLinesExporter]:
    cfg = ctx.plugin_config(EXPORT_SECTION)
    if not cfg.get("enabled"):
        return []
    path = Path(cfg["path"]) if cfg.get("path") else ctx.config.data_dir / "export.jsonl"
    return [JsonLinesExporter(path, fsync=cfg["fsync"])]
