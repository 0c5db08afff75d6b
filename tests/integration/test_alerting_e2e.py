"""Issue 7's "done when", end to end on the real clock, with real servers.

Samples arrive through ``POST /api/v1/write``; a rule file's alert (two series,
one group by ``alertname``) fires on them, keeps firing for several evaluations,
then resolves on newer samples. One route sends the group to one receiver with
every channel, and each must hear exactly one firing and exactly one resolved
notification for the group:

* webhook and Slack: local aiohttp servers recording each POST;
* email: a real aiosmtpd SMTP server (STARTTLS + AUTH); the messages that
  arrive are checked (subject, plain and HTML parts, labels);
* a Python callback registered on the dispatcher and named by the receiver's
  ``callback_configs``, so it is reached through the route tree from the rule;
* Alertmanager: a real ``prometheus-alertmanager`` subprocess; its
  ``/api/v2/alerts`` lists both alerts active, then none once resolved, and its
  own webhook (to a local sink) fires once and resolves once.

Also, on the same data, a ``define_alert(..., callback=fn)`` rule calls ``fn``
once firing and once resolved.

Without ``/usr/bin/prometheus-alertmanager`` everything else still runs and
is checked; the test then ends as skipped, saying the Alertmanager part did not
run. ``.ci/run`` installs the package.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.alerting.model import Alert
from agent.web.app import CONTEXT_KEY, make_app
from tests.conftest import wait_until
from tests.integration.alertmanager_harness import ALERTMANAGER, running_alertmanager
from tests.test_notifiers import Mailbox, cert, mail_cfg, smtp  # noqa: F401 - fixtures
from tests.test_remote_write import V1_HEADERS, series, v1_body

NO_ALERTMANAGER = (
    f"Alertmanager part not run: {ALERTMANAGER} is not installed (Debian package "
    "'prometheus-alertmanager'; .ci/run installs it); every other channel passed"
)

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: temps
    interval: 1s
    rules:
      - alert: TooHot
        expr: temperature > 30
        labels: {severity: page}
        annotations:
          summary: "{{ $labels.room }} is {{ $value }} degrees"
          runbook: https://runbooks.example/too-hot
"""
GROUP_KEY = '{}:{alertname="TooHot"}'
TITLE_FIRING = "[FIRING:2] TooHot (page)"
TITLE_RESOLVED = "[RESOLVED] TooHot (page)"


@dataclass
class Posts:
    """Every POST the local sinks received: (path, JSON body)."""

    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((request.path, await request.json()))
        return web.Response(text="ok")

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.got if p == path]


@pytest.fixture
async def posts(aiohttp_server: Any) -> Posts:
    p = Posts()
    app = web.Application()
    app.router.add_post("/{tail:.*}", p.handle)
    server = await aiohttp_server(app)
    p.url = str(server.make_url("/")).rstrip("/")
    return p


@pytest.fixture
async def alertmanager(tmp_path: Path, posts: Posts) -> AsyncIterator[str | None]:
    """A real Alertmanager whose only receiver is a webhook to ``posts`` at ``/am``;
    None when the binary is absent."""
    if not ALERTMANAGER.exists():
        yield None
        return
    async with running_alertmanager(tmp_path, posts.url + "/am") as url:
        yield url


async def am_listed(url: str) -> dict[str, dict[str, Any]]:
    """Alertmanager's current alerts by room (it leaves out those that ended)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/api/v2/alerts") as r:
        assert r.status == 200
        return {a["labels"].get("room", ""): a for a in await r.json()}


@pytest.fixture
def mailbox(
    smtp: Callable[..., tuple[int, Mailbox]],  # noqa: F811 - the imported fixture
    cert: tuple[Path, Path],  # noqa: F811
) -> Iterator[tuple[Mailbox, dict[str, Any]]]:
    port, box = smtp("starttls")
    yield box, mail_cfg(port, cert[0], tls="starttls")


async def test_remote_write_rule_notifies_every_channel_once(
    aiohttp_client: Any,
    make_config: Callable[..., Any],
    tmp_path: Path,
    posts: Posts,
    mailbox: tuple[Mailbox, dict[str, Any]],
    alertmanager: str | None,
) -> None:
    box, email = mailbox
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    receiver: dict[str, Any] = {
        "name": "everyone",
        "webhook_configs": [{"url": posts.url + "/webhook"}],
        "slack_configs": [{"api_url": posts.url + "/services/T0/B0/XXXX"}],
        "email_configs": [email],
        "callback_configs": [{"name": "py"}],
    }
    if alertmanager is not None:
        receiver["alertmanager_configs"] = [{"url": alertmanager}]
    alerting = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1s",  # the define_alert group's
        "external_url": "http://tsagent.test:9201",
        "receivers": [receiver],
        "route": {
            "receiver": "everyone",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",  # nothing may be repeated within the test
        },
        "delivery": {"initial_backoff": 0.5},
    }
    config, host = make_config(json.dumps({"alerting": alerting}))  # JSON is YAML
    client = await aiohttp_client(make_app(config, host))
    ctx = client.app[CONTEXT_KEY]
    routed: list[list[Alert]] = []
    ctx.dispatcher.register_callback("py", routed.append)
    defined: list[Alert] = []

    async def on_lab(alert: Alert) -> None:
        defined.append(alert)

    ctx.rules.define_alert("LabTooHot", 'temperature{room="lab"}', 30, ">", on_lab)
    [group] = ctx.rules.file_groups

    async def write(lab: float, office: float) -> None:
        now = int(time.time() * 1000)
        body = v1_body(  # one request: both series change in the same evaluation
            series([("__name__", "temperature"), ("room", "lab")], [(now, lab)]),
            series([("__name__", "temperature"), ("room", "office")], [(now, office)]),
        )
        resp = await client.post("/api/v1/write", data=body, headers=V1_HEADERS)
        assert resp.status == 204, await resp.text()

    async def evaluations(n: int) -> None:
        """Wait for ``n`` more evaluations of the rule file's group."""
        start = group.last_evaluation or 0.0
        await wait_until(
            f"{n} evaluations",
            lambda: (group.last_evaluation or 0.0) >= start + n * group.interval_s,
            n * group.interval_s + 10,
        )

    def heard(status: str) -> dict[str, bool]:
        """Which channels got a notification with this status."""
        upper = status.upper()
        out = {
            "webhook": any(p["status"] == status for p in posts.at("/webhook")),
            "slack": any(
                p["attachments"][0]["title"].startswith(f"[{upper}")
                for p in posts.at("/services/T0/B0/XXXX")
            ),
            "email": any(str(m[2]["Subject"]).startswith(f"[{upper}") for m in box.messages),
            "callback": any(all(a.status == status for a in call) for call in routed),
            "define_alert": any(a.status == status for a in defined),
        }
        if alertmanager is not None:
            out["alertmanager"] = any(p["status"] == status for p in posts.at("/am"))
        return out

    # --- firing ---------------------------------------------------------------------
    async def all_firing() -> bool:
        await write(40.0, 35.0)  # samples keep arriving while hot
        return all(heard("firing").values())

    await wait_until("a firing notification on every channel", all_firing, 20)
    if alertmanager is not None:
        listed = await am_listed(alertmanager)
        assert sorted(listed) == ["lab", "office"]
        lab = listed["lab"]
        assert lab["status"]["state"] == "active"
        assert lab["labels"] == {"alertname": "TooHot", "room": "lab", "severity": "page"}
        assert lab["annotations"]["summary"] == "lab is 40 degrees"
        assert lab["generatorURL"].startswith("http://tsagent.test:9201/graph?g0.expr=")
    for _ in range(3):  # several more evaluations, still hot: nothing new anywhere
        await write(40.0, 35.0)
        await evaluations(1)
    await wait_until("the dispatcher to be idle", lambda: not ctx.dispatcher.pending, 10)
    assert not any(heard("resolved").values())

    # --- resolved -------------------------------------------------------------------
    await write(20.0, 20.0)
    await wait_until("a resolve on every channel", lambda: all(heard("resolved").values()), 20)
    if alertmanager is not None:
        am = alertmanager

        async def am_empty() -> bool:
            return not await am_listed(am)

        await wait_until("Alertmanager to drop the resolved alerts", am_empty, 10)
    await evaluations(3)  # resolved alerts are re-sent for 15m: still nothing new
    await wait_until("the dispatcher to be idle", lambda: not ctx.dispatcher.pending, 10)
    if alertmanager is not None:
        await asyncio.sleep(2.5)  # Alertmanager's own group_interval (1s), twice over

    # --- exactly one of each --------------------------------------------------------
    webhook = posts.at("/webhook")
    assert [p["status"] for p in webhook] == ["firing", "resolved"]
    assert all(p["groupKey"] == GROUP_KEY and p["receiver"] == "everyone" for p in webhook)
    fired = webhook[0]
    assert sorted(a["labels"]["room"] for a in fired["alerts"]) == ["lab", "office"]
    assert {a["annotations"]["summary"] for a in fired["alerts"]} == {
        "lab is 40 degrees",
        "office is 35 degrees",
    }
    assert fired["commonLabels"] == {"alertname": "TooHot", "severity": "page"}
    assert {a["status"] for a in webhook[1]["alerts"]} == {"resolved"}

    slack = [p["attachments"][0] for p in posts.at("/services/T0/B0/XXXX")]
    assert [a["title"] for a in slack] == [TITLE_FIRING, TITLE_RESOLVED]
    assert slack[0]["title_link"] == "http://tsagent.test:9201"
    assert "lab is 40 degrees" in slack[0]["text"] and "`room=office`" in slack[0]["text"]

    assert [str(m[2]["Subject"]) for m in box.messages] == [TITLE_FIRING, TITLE_RESOLVED]
    for (sender, rcpts, msg, secure), status in zip(
        box.messages, ["FIRING", "RESOLVED"], strict=True
    ):
        assert secure and sender == "tsagent@example.com"
        assert rcpts == ["oncall@example.com", "lead@example.com"]
        assert msg.get_content_type() == "multipart/alternative"
        text, page = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text is not None and page is not None
        plain, html = text.get_content(), page.get_content()
        for room in ("lab", "office"):
            assert f"labels: alertname=TooHot, room={room}, severity=page" in plain
            assert f"<code>room={room}</code>" in html
        assert plain.splitlines().count(f"[{status}] TooHot") == 2  # one line per alert
        assert "summary: lab is 40 degrees" in plain and "lab is 40 degrees" in html
        assert "runbook: https://runbooks.example/too-hot" in plain

    assert [sorted((a.labels["room"], a.status) for a in call) for call in routed] == [
        [("lab", "firing"), ("office", "firing")],
        [("lab", "resolved"), ("office", "resolved")],
    ]
    assert all(a.labels["alertname"] == "TooHot" for call in routed for a in call)
    assert [(a.labels["alertname"], a.status) for a in defined] == [
        ("LabTooHot", "firing"),
        ("LabTooHot", "resolved"),
    ]

    def count(name: str, **labels: str) -> float:
        return ctx.metrics.registry.get_sample_value(name, labels) or 0.0

    for kind in ("webhook", "slack", "email", "callback"):
        assert count("tsagent_notifications_total", notifier=kind, result="success") == 2, kind
        assert count("tsagent_notification_failures_total", notifier=kind) == 0, kind

    if alertmanager is None:
        pytest.skip(NO_ALERTMANAGER)
    # we pushed once firing, once resolved (resend_delay 1m is longer than the test)
    assert count("tsagent_notifications_total", notifier="alertmanager", result="success") == 2
    from_am = posts.at("/am")
    assert [p["status"] for p in from_am] == ["firing", "resolved"]
    assert all(p["groupLabels"] == {"alertname": "TooHot"} for p in from_am)
    assert sorted(a["labels"]["room"] for a in from_am[0]["alerts"]) == ["lab", "office"]
    assert {a["status"] for a in from_am[1]["alerts"]} == {"resolved"}
