"""A fixture plugin implementing every hook, recording what the core did with it."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from agent.plugin_api import Config, Field, RangeFunction, Route, Schema, hookimpl

EVENTS: list[str] = []


class Raw:
    name = "test-raw"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        return timestamps.astype("<i8").tobytes() + values.astype("<f8").tobytes()

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.frombuffer(blob, "<i8", count).copy(),
            np.frombuffer(blob, "<f8", count, offset=8 * count).copy(),
        )


class Ingestor:
    name = "recorder-in"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def start(self, ctx: Any) -> None:
        if self.fail:
            raise RuntimeError("ingestor refused to start")
        EVENTS.append("ingestor.start")
        labels = (("__name__", "recorder_up"), ("job", "test"))
        await ctx.append_samples([(labels, 1_000, 1.0)], source="recorder")

    async def stop(self) -> None:
        EVENTS.append("ingestor.stop")


class Exporter:
    name = "recorder-out"

    async def start(self, ctx: Any) -> None:
        EVENTS.append("exporter.start")

    async def stop(self) -> None:
        EVENTS.append("exporter.stop")


class Notifier:
    name = "recorder-notify"

    async def notify(self, alerts: Any, receiver: Any) -> None:
        EVENTS.append(f"notify:{len(alerts)}")


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        "test.recorder": Schema(
            {
                "fail_start": Field(bool, False, "Make the ingestor fail."),
                "level": Field(int, 1, "Any number from 0 to 10."),
            }
        )
    }


@hookimpl
def validate_config(config: Config) -> list[str]:
    level = config.section("test.recorder").get("level", 1)
    return [] if 0 <= level <= 10 else [f"test.recorder.level: must be 0..10, found {level}"]


@hookimpl
def register_codecs() -> list[Raw]:
    return [Raw()]


@hookimpl
def register_ingestors(ctx: Any) -> list[Ingestor]:
    return [Ingestor(ctx.plugin_config("test.recorder").get("fail_start", False))]


@hookimpl
def register_exporters() -> list[Exporter]:
    return [Exporter()]


@hookimpl
def register_notifiers() -> list[Notifier]:
    return [Notifier()]


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"{len(body)} bytes")


@hookimpl
def register_routes() -> list[Route]:
    return [Route("POST", "/test/echo", echo, "write")]


def _double_count(
    data: Any, lo: np.ndarray, hi: np.ndarray, ends: np.ndarray, scalars: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Twice ``count_over_time``: enough to see a plugin function evaluated."""
    return (hi - lo) * 2.0, hi > lo


@hookimpl
def register_query_functions() -> dict[str, RangeFunction]:
    return {"double_count_over_time": RangeFunction("double_count_over_time", _double_count)}


@hookimpl
async def startup(ctx: Any) -> None:
    EVENTS.append("startup")


@hookimpl
def shutdown(ctx: Any) -> None:
    EVENTS.append("shutdown")
