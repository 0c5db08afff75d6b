"""A third-party exporter gets batches through the same export log as the forwarder.

``contrib/tsagent-heartbeat`` is installed as a separate distribution and
found through its entry point; its JSON-lines exporter must see every
accepted sample (appends and backfills) exactly once, across a restart and
across a redelivery after a crash between its write and tsagent's position
commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from agent.context import context_of
from agent.forward.export_log import ExportBatch
from agent.plugin_api import BatchExporter
from agent.plugins import get_plugin_manager
from agent.web.app import make_app
from tests.conftest import wait_until

T0 = 1_700_000_000_000


def test_contrib_exporter_is_discovered_through_its_entry_point() -> None:
    host = get_plugin_manager()
    info = host.loaded["heartbeat"]
    assert not info.builtin and info.distribution == "tsagent-heartbeat"
    plugin = host.pm.get_plugin("heartbeat")
    impls = [i.plugin for i in host.pm.hook.register_exporters.get_hookimpls()]
    assert plugin in impls
    assert "forwarder" in host.loaded and host.loaded["forwarder"].builtin


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_contrib_exporter_receives_every_batch_once(make_config: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    text = f"export: {{jsonl: {{enabled: true, path: '{out}'}}}}\n"

    async def run(step: Any) -> None:
        config, host = make_config(text)
        client = TestClient(TestServer(make_app(config, host)))
        await client.start_server()
        try:
            await step(context_of(client.server.app))
        finally:
            await client.close()

    async def first(ctx: Any) -> None:
        [exp] = [e for e in ctx.exporters if e.name == "jsonl"]
        assert isinstance(exp, BatchExporter)
        await ctx.append_samples([((("__name__", "a"), ("job", "x")), T0, 1.5)], source="t")
        [sid] = await ctx.require_store().get_or_create_series([(("__name__", "b"),)])
        await ctx.backfill([sid], [T0 - 60_000], [float("nan")], source="import")
        await wait_until("exp.written == 2", lambda: exp.written == 2)

    await run(first)
    rows = read_lines(out)
    assert [(r["op"], r["source"], r["labels"], r["t"], r["v"]) for r in rows] == [
        ("append", "t", {"__name__": "a", "job": "x"}, T0, "1.5"),
        ("backfill", "import", {"__name__": "b"}, T0 - 60_000, "NaN"),
    ]

    async def second(ctx: Any) -> None:
        [exp] = [e for e in ctx.exporters if e.name == "jsonl"]
        await ctx.append_samples([((("__name__", "a"), ("job", "x")), T0 + 1, 2.0)], source="t")
        await wait_until("exp.written == 1", lambda: exp.written == 1)
        # A redelivery of what is already in the file (a crash between the write and
        # tsagent's commit looks like this) adds nothing.
        last = rows_now = read_lines(out)[-1]
        batch = ExportBatch(
            last["seq"],
            0,
            "append",
            "t",
            np.array([1]),
            np.array([T0 + 1]),
            np.array([2.0]),
            ctx.require_store().labels,
        )
        await exp.export([batch], None)
        assert read_lines(out)[-1] == rows_now

    await run(second)  # a restart: starts from its durable position, nothing twice
    rows = read_lines(out)
    assert [(r["labels"]["__name__"], r["t"]) for r in rows] == [
        ("a", T0),
        ("b", T0 - 60_000),
        ("a", T0 + 1),
    ]
