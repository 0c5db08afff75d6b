"""The issue's "done when", in-process: a rule fires on data that arrived by
remote-write, and every channel hears exactly one notification per group and exactly
one resolve (webhook and Slack at local HTTP servers, a Python callback). The agent
runs on a ManualClock: each step is one evaluation interval, so "several more
evaluations bring nothing new" is checked without sleeping.
The full version, with email through a real SMTP server, a callback reached through
the route tree and a real Alertmanager, is tests/integration/test_alerting_e2e.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.alerting.model import Alert
from agent.clock import ManualClock
from agent.web.app import CONTEXT_KEY, make_app
from tests.conftest import wait_until
from tests.test_remote_write import V1_HEADERS, series, v1_body

RULES = """
groups:
  - name: temps
    interval: 1s
    rules:
      - alert: TooHot
        expr: temperature > 30
        labels: {severity: page}
        annotations: {summary: "{{ $labels.room }} is {{ $value }} degrees"}
"""


async def test_remote_write_to_rule_to_every_channel_once(
    aiohttp_client: Any, aiohttp_server: Any, make_config: Callable[..., Any], tmp_path: Path
) -> None:
    posts: list[tuple[str, dict[str, Any]]] = []

    async def record(request: web.Request) -> web.Response:
        posts.append((request.path, await request.json()))
        return web.Response(text="ok")

    sink = web.Application()
    sink.router.add_post("/{tail:.*}", record)
    server = await aiohttp_server(sink)
    base = str(server.make_url("/"))
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    config, host = make_config(
        f"""
alerting:
  rule_files: ["{rules}"]
  receivers:
    - name: all
      webhook_configs: [{{url: "{base}webhook"}}]
      slack_configs: [{{api_url: "{base}services/T/B/X"}}]
  route:
    receiver: all
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1s
"""
    )
    clock = ManualClock(time.time())
    client = await aiohttp_client(make_app(config, host, clock=clock))
    ctx = client.app[CONTEXT_KEY]
    assert ctx.rules is not None and ctx.dispatcher is not None
    called: list[list[Alert]] = []
    ctx.dispatcher.register_callback("py", called.append)
    webhook_alerts: list[str] = []

    async def write(room: str, value: float) -> None:
        body = v1_body(
            series(
                [("__name__", "temperature"), ("room", room)], [(int(clock.now() * 1000), value)]
            )
        )
        resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
        assert resp.status == 204, await resp.text()

    async def until(what: str, cond: Callable[[], bool]) -> None:
        await wait_until(what, cond, 20, 0.1, detail=lambda: f"got {posts}")

    def statuses(path: str) -> list[str]:
        out = []
        for p, body in posts:
            if p == path:
                out.append(body.get("status") or body["attachments"][0]["title"].split("]")[0][1:])
        return out

    async def step() -> None:
        """One rule interval (and group_interval) on the agent's clock, and its deliveries."""
        assert ctx.rules is not None and ctx.dispatcher is not None
        clock.advance(1.0)
        await ctx.rules.tick()
        await ctx.dispatcher.tick()

    await write("lab", 40.0)
    await write("office", 35.0)
    await step()
    await until("the firing notifications", lambda: len(posts) >= 2)
    firing = next(body for p, body in posts if p == "/webhook")
    assert firing["groupKey"] == '{}:{alertname="TooHot"}'
    webhook_alerts = sorted(a["labels"]["room"] for a in firing["alerts"])
    assert webhook_alerts == ["lab", "office"]
    assert {a["annotations"]["summary"] for a in firing["alerts"]} == {
        "lab is 40 degrees",
        "office is 35 degrees",
    }
    await ctx.dispatcher.submit(
        [Alert({"alertname": "Direct"}, starts_at=clock.now())], receiver="py"
    )
    await write("lab", 20.0)
    await write("office", 20.0)
    await step()  # the rule resolves
    await step()  # the group's next flush
    await until("the resolves", lambda: statuses("/webhook").count("resolved") >= 1)
    for _ in range(3):  # several more evaluations and group intervals: nothing new
        await step()
    await until("the dispatcher to be idle", lambda: not ctx.dispatcher.pending)
    assert statuses("/webhook") == ["firing", "resolved"]
    assert statuses("/services/T/B/X") == ["FIRING:2", "RESOLVED"]
    assert [[a.labels["alertname"] for a in call] for call in called] == [["Direct"]]
    done = [json.dumps(b) for p, b in posts if p == "/webhook"][1]
    assert '"status": "resolved"' in done
