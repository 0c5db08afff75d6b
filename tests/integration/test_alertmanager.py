"""Our ``alertmanager`` notifier against a real Alertmanager (Debian package
``prometheus-alertmanager``, 0.25 in CI).

Alertmanager runs as a subprocess with a temporary config whose only receiver
is a webhook pointing at a server in this test. Alerts go through our
dispatcher, so what is checked is the whole path: Alertmanager's API lists
the pushed alerts with the ``endsAt`` we set, its own webhook arrives (so
Alertmanager accepted and grouped them), a resolve reaches it, and an alert
matching a silence created through its API is kept but never delivered.

Skipped, with the reason, when ``/usr/bin/prometheus-alertmanager`` is absent;
``.ci/run`` installs the package.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.alerting.dispatch import Dispatcher
from agent.alerting.model import Alert
from plugins.notifiers.alertmanager import AlertmanagerNotifier
from tests.conftest import free_port, wait_until
from tests.integration.alertmanager_harness import ALERTMANAGER, running_alertmanager

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not ALERTMANAGER.exists(),
        reason=f"{ALERTMANAGER} not installed (Debian package 'prometheus-alertmanager'; "
        ".ci/run installs it)",
    ),
]


@pytest.fixture
async def webhook(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    """Where Alertmanager delivers: records each webhook payload."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/am", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/am")), received


@pytest.fixture
async def alertmanager(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> AsyncIterator[str]:
    async with running_alertmanager(tmp_path, webhook[0]) as url:
        yield url


async def am_alerts(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url + "/api/v2/alerts") as r:
        assert r.status == 200
        found: list[dict[str, Any]] = await r.json()
        return found


def alert(name: str, status: str = "firing") -> Alert:
    now = time.time()
    return Alert(
        labels={"alertname": name, "job": "api", "severity": "page"},
        annotations={"summary": f"{name} summary"},
        status=status,  # type: ignore[arg-type]
        starts_at=now - 60,
        ends_at=now if status == "resolved" else None,
        generator_url="http://tsagent:9201/graph",
    )


async def test_alerts_pushed_grouped_resolved_and_silenced(
    alertmanager: str, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    received = webhook[1]
    now = datetime.now(UTC)
    silence = {
        "matchers": [{"name": "alertname", "value": "Silenced", "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "tsagent tests",
        "comment": "must not be delivered",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(alertmanager + "/api/v2/silences", json=silence) as r,
    ):
        assert r.status == 200, await r.text()
        silence_id = (await r.json())["silenceID"]

    cfg = {
        "resend_delay": "1m",
        "receivers": [{"name": "am", "alertmanager_configs": [{"url": alertmanager + "/"}]}],
        "route": {"receiver": "am"},
    }
    d = Dispatcher(cfg, {"alertmanager": AlertmanagerNotifier()})
    await d.start(background=False)
    loud, quiet = alert("DiskFull"), alert("Silenced")
    await d.submit([loud, quiet])
    await d.tick()
    assert d.pending == []

    async def both_listed() -> list[dict[str, Any]] | None:
        listed = await am_alerts(alertmanager)
        return listed if len(listed) == 2 else None

    listed = {
        a["labels"]["alertname"]: a for a in await wait_until("alerts in AM", both_listed, 20, 0.1)
    }
    assert listed["DiskFull"]["status"]["state"] == "active"
    assert listed["DiskFull"]["annotations"] == {"summary": "DiskFull summary"}
    assert listed["DiskFull"]["generatorURL"] == "http://tsagent:9201/graph"
    ends = datetime.fromisoformat(listed["DiskFull"]["endsAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=3) < ends - now < timedelta(minutes=5)  # 4 x resend_delay
    assert listed["Silenced"]["status"]["state"] == "suppressed"
    assert listed["Silenced"]["status"]["silencedBy"] == [silence_id]

    async def fired() -> bool:
        return any(p["status"] == "firing" for p in received)

    await wait_until("Alertmanager's webhook", fired, 20, 0.1)
    first = next(p for p in received if p["status"] == "firing")
    assert first["version"] == "4" and first["receiver"] == "hook"
    assert first["groupLabels"] == {"alertname": "DiskFull"}
    assert [a["labels"]["alertname"] for a in first["alerts"]] == ["DiskFull"]

    await d.submit([alert("DiskFull", "resolved"), alert("Silenced", "resolved")])
    await d.tick()

    async def resolved() -> bool:
        return any(p["status"] == "resolved" for p in received)

    await wait_until("the resolve through Alertmanager", resolved, 20, 0.1)
    await asyncio.sleep(2.5)  # a few more group_intervals: nothing about the silenced one
    names = {a["labels"]["alertname"] for p in received for a in p["alerts"]}
    assert names == {"DiskFull"}
    assert [p["status"] for p in received].count("firing") == 1
    await d.stop()


async def test_unreachable_alertmanager_is_retried(tmp_path: Path) -> None:
    cfg = {
        "receivers": [
            {"name": "am", "alertmanager_configs": [{"url": f"http://127.0.0.1:{free_port()}"}]}
        ],
        "route": {"receiver": "am"},
    }
    d = Dispatcher(cfg, {"alertmanager": AlertmanagerNotifier()})
    await d.start(background=False)
    await d.submit([alert("DiskFull")])
    await d.tick()
    assert [p.attempts for p in d.pending] == [1]
    assert "alertmanager http://127.0.0.1" in d.pending[0].last_error
    await d.stop()
