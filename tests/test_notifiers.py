"""The built-in notifiers against real local servers: webhook and Slack (aiohttp
servers recording each POST) and email (a real aiosmtpd SMTP server with
STARTTLS, implicit TLS and AUTH, using a self-signed certificate made by
openssl). Also: config checking, the daemon wiring and /metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.alerting.dispatch import Dispatcher, NotifyError
from agent.alerting.model import Alert
from agent.clock import ManualClock
from agent.config import ConfigError
from agent.web.app import CONTEXT_KEY, make_app
from plugins.notifiers import NOTIFIERS
from plugins.notifiers.mail import EmailNotifier
from plugins.notifiers.slack import FIRING_COLOR, RESOLVED_COLOR
from plugins.notifiers.webhook import WebhookNotifier
from tests.conftest import free_port, wait_until

T0 = 1_700_000_000.0


def alert(name: str = "HighLatency", status: str = "firing", **labels: str) -> Alert:
    return Alert(
        labels={"alertname": name, "job": "api", **labels},
        annotations={"summary": f"{name} on {labels.get('instance', '?')}", "runbook": "rb/1"},
        status=status,  # type: ignore[arg-type]
        starts_at=T0,
        ends_at=T0 + 60 if status == "resolved" else None,
        generator_url="http://tsagent:9201/graph?g0.expr=latency",
    )


# --- a recording HTTP server -------------------------------------------------------------


@dataclass
class Sink:
    """Records POSTs; answers with the next status of ``statuses`` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.requests.append((request.path, dict(request.headers), body))
        return web.Response(status=status, text="ok" if status == 200 else "boom")

    def json(self, i: int) -> Any:
        return json.loads(self.requests[i][2])


@pytest.fixture
async def sink(aiohttp_server: Any) -> Sink:
    s = Sink()
    app = web.Application()
    app.router.add_post("/{tail:.*}", s.handle)
    server = await aiohttp_server(app)
    s.url = str(server.make_url("/"))
    return s


def receiver_ctx(cfg: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "team",
        "config": cfg,
        "group_key": '{}:{alertname="HighLatency"}',
        "group_labels": {"alertname": "HighLatency"},
        "external_url": "http://tsagent.example:9201",
        **extra,
    }


# --- webhook -------------------------------------------------------------------------


async def test_webhook_sends_alertmanager_v4_payload_signed(sink: Sink) -> None:
    cfg = {"url": sink.url + "hook", "hmac_secret": "s3cret", "max_alerts": 1}
    alerts = [alert(instance="a").to_dict(), alert(instance="b").to_dict()]
    await WebhookNotifier().notify(alerts, receiver_ctx(cfg))
    path, headers, body = sink.requests[0]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Tsagent-Signature"] == expected
    p = json.loads(body)
    assert set(p) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    assert p["version"] == "4" and p["status"] == "firing" and p["receiver"] == "team"
    assert p["truncatedAlerts"] == 1 and len(p["alerts"]) == 1
    assert p["commonLabels"] == {"alertname": "HighLatency", "job": "api"}
    assert p["commonAnnotations"] == {"runbook": "rb/1"}
    assert p["externalURL"] == "http://tsagent.example:9201"
    first = p["alerts"][0]
    assert set(first) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert first["startsAt"] == "2023-11-14T22:13:20Z"


async def test_webhook_error_answers_classified_and_redacted(sink: Sink) -> None:
    n = WebhookNotifier()
    url = sink.url.replace("http://", "http://user:pw@") + "hook?token=abc"
    sink.statuses = [503, 400]
    with pytest.raises(NotifyError) as retry:
        await n.notify([alert().to_dict()], receiver_ctx({"url": url}))
    assert not retry.value.permanent and "503" in str(retry.value)
    with pytest.raises(NotifyError) as perm:
        await n.notify([alert().to_dict()], receiver_ctx({"url": url}))
    assert perm.value.permanent
    for exc in (retry.value, perm.value):
        assert "pw" not in str(exc) and "abc" not in str(exc) and "?***" in str(exc)
    dead = f"http://127.0.0.1:{free_port()}/x?secret=1"
    with pytest.raises(NotifyError) as refused:
        await n.notify([alert().to_dict()], receiver_ctx({"url": dead}))
    assert "secret" not in str(refused.value) and not refused.value.permanent


async def test_webhook_down_then_back_is_delivered_once(sink: Sink) -> None:
    """A real server answering 500 twice, then 200: retried with backoff, delivered
    once; the resolve follows, once."""
    clock = ManualClock(T0)
    registry = CollectorRegistry()
    cfg = {
        "receivers": [{"name": "team", "webhook_configs": [{"url": sink.url + "hook"}]}],
        "route": {"receiver": "team", "group_by": ["alertname"], "group_wait": "30s"},
        "delivery": {"initial_backoff": "2s"},
    }
    d = Dispatcher(cfg, {"webhook": WebhookNotifier()}, clock=clock, registry=registry)
    await d.start(background=False)
    sink.statuses = [500, 500]
    a = alert(instance="a")
    await d.submit([a])
    clock.advance(30)
    await d.tick()
    assert sink.requests == [] and d.pending[0].attempts == 1
    clock.advance(2)
    await d.tick()
    assert sink.requests == [] and d.pending[0].attempts == 2
    clock.advance(3.9)
    await d.tick()
    assert sink.requests == []
    clock.advance(0.1)  # 4s after the second failure
    await d.tick()
    assert len(sink.requests) == 1 and d.pending == []
    await d.submit([Alert(a.labels, a.annotations, "resolved", a.starts_at, clock.now())])
    clock.advance(300)
    await d.tick()
    assert [sink.json(i)["status"] for i in range(len(sink.requests))] == ["firing", "resolved"]

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert count("tsagent_notifications_total", notifier="webhook", result="success") == 2
    assert count("tsagent_notification_failures_total", notifier="webhook") == 2
    await d.stop()


# --- Slack ------------------------------------------------------------------------------


async def test_slack_message_layout(sink: Sink) -> None:
    n = next(c for c in NOTIFIERS if c.name == "slack")()
    cfg = {"api_url": sink.url + "services/T0/B0/XXXX", "channel": "#ops"}
    firing = [alert(instance="a").to_dict(), alert(instance="b").to_dict()]
    await n.notify(firing, receiver_ctx(cfg))
    await n.notify([alert("HighLatency", "resolved", instance="a").to_dict()], receiver_ctx(cfg))
    assert sink.requests[0][0] == "/services/T0/B0/XXXX"
    msg = sink.json(0)
    assert msg["channel"] == "#ops"
    att = msg["attachments"][0]
    assert att["color"] == FIRING_COLOR
    assert att["title"] == "[FIRING:2] HighLatency (api)" == msg["text"]
    assert att["title_link"] == "http://tsagent.example:9201"
    assert "HighLatency on a" in att["text"] and "`instance=b`" in att["text"]
    assert "<http://tsagent:9201/graph?g0.expr=latency|Source>" in att["text"]
    assert {"title": "runbook", "value": "rb/1", "short": True} in att["fields"]
    res = sink.json(1)["attachments"][0]
    assert res["color"] == RESOLVED_COLOR and res["title"].startswith("[RESOLVED]")


# --- email ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a certificate for the SMTP server")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    args = "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    subprocess.run(
        ["openssl", *args.split(), "-keyout", str(key), "-out", str(crt), "-addext", san],
        check=True,
        capture_output=True,
    )
    return crt, key


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], EmailMessage, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        secure = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg, secure))
        return "250 OK"


@pytest.fixture
def smtp(cert: tuple[Path, Path]) -> Iterator[Callable[..., tuple[int, Mailbox]]]:
    pytest.importorskip("aiosmtpd", reason="aiosmtpd (the test extra) is not installed")
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    controllers: list[Any] = []

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"alerts",
            b"pa55",
        )
        return AuthResult(success=ok, handled=False)

    def start(mode: str) -> tuple[int, Mailbox]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        box = Mailbox()
        port = free_port()
        kwargs: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": port,
            "authenticator": auth,
            "auth_required": True,
            "auth_require_tls": True,
        }
        if mode == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True)
        else:
            # implicit TLS: the whole socket is TLS, but aiosmtpd only counts STARTTLS
            # as TLS when deciding whether to offer AUTH
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        controller = Controller(box, **kwargs)
        controller.start()
        controllers.append(controller)
        return port, box

    yield start
    for c in controllers:
        c.stop()


def mail_cfg(port: int, cert: Path, **extra: Any) -> dict[str, Any]:
    return {
        "to": ["oncall@example.com", "lead@example.com"],
        "from": "tsagent@example.com",
        "smarthost": f"127.0.0.1:{port}",
        "auth_username": "alerts",
        "auth_password": "pa55",
        "ca_file": str(cert),
        **extra,
    }


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_email_arrives_over_tls_with_auth_and_both_parts(
    smtp: Callable[..., tuple[int, Mailbox]], cert: tuple[Path, Path], mode: str
) -> None:
    port, box = smtp(mode)
    cfg = mail_cfg(
        port, cert[0], tls=mode, subject="{{ .Title }} for {{ .Receiver }}", headers={"X-Team": "a"}
    )
    alerts = [alert(instance="a").to_dict(), alert(instance="b<script>").to_dict()]
    await EmailNotifier().notify(alerts, receiver_ctx(cfg))
    assert len(box.messages) == 1
    sender, rcpts, msg, secure = box.messages[0]
    assert secure
    assert sender == "tsagent@example.com"
    assert rcpts == ["oncall@example.com", "lead@example.com"]
    assert msg["Subject"] == "[FIRING:2] HighLatency (api) for team"
    assert msg["To"] == "oncall@example.com, lead@example.com"
    assert msg["X-Team"] == "a" and msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert text is not None and html_part is not None
    plain = text.get_content()
    assert "[FIRING] HighLatency" in plain and "summary: HighLatency on a" in plain
    assert "instance=b<script>" in plain and "source: http://tsagent:9201/graph" in plain
    page = html_part.get_content()
    assert "<table" in page and "HighLatency on a" in page
    assert "<script>" not in page and "&lt;script&gt;" in page


async def test_email_headers_override_ours_and_envelope_follows_to(
    smtp: Callable[..., tuple[int, Mailbox]], cert: tuple[Path, Path]
) -> None:
    """Regression: a ``headers`` entry naming one of our headers (Subject, To) made
    every delivery fail with ValueError (at most one Subject header), retried for an
    hour and dropped. Like Alertmanager's, it now replaces ours; the envelope still
    goes to ``to``."""
    port, box = smtp("starttls")
    headers = {"Subject": "custom subject", "To": "Ops <ops-list@example.com>"}
    cfg = mail_cfg(port, cert[0], headers=headers)
    await EmailNotifier().notify([alert().to_dict()], receiver_ctx(cfg))
    [(sender, rcpts, msg, _secure)] = box.messages
    assert msg.get_all("Subject") == ["custom subject"]
    assert msg.get_all("To") == ["Ops <ops-list@example.com>"]
    assert sender == "tsagent@example.com"
    assert rcpts == ["oncall@example.com", "lead@example.com"]


async def test_email_wrong_password_is_permanent_and_plain_is_refused(
    smtp: Callable[..., tuple[int, Mailbox]], cert: tuple[Path, Path]
) -> None:
    port, box = smtp("starttls")
    with pytest.raises(NotifyError) as bad:
        await EmailNotifier().notify(
            [alert().to_dict()], receiver_ctx(mail_cfg(port, cert[0], auth_password="nope"))
        )
    assert bad.value.permanent and "nope" not in str(bad.value)
    with pytest.raises(NotifyError):  # the server insists on STARTTLS before anything
        await EmailNotifier().notify(
            [alert().to_dict()], receiver_ctx(mail_cfg(port, cert[0], tls="none"))
        )
    with pytest.raises(NotifyError):  # our own certificate checking is on by default
        await EmailNotifier().notify(
            [alert().to_dict()], receiver_ctx(mail_cfg(port, cert[0], ca_file=""))
        )
    assert box.messages == []


# --- all channels through the dispatcher: one per group, one resolve -----------------------


async def test_each_channel_gets_one_notification_and_one_resolve(
    sink: Sink, smtp: Callable[..., tuple[int, Mailbox]], cert: tuple[Path, Path]
) -> None:
    port, box = smtp("starttls")
    clock = ManualClock(T0)
    cfg = {
        "receivers": [
            {
                "name": "everyone",
                "webhook_configs": [{"url": sink.url + "webhook"}],
                "slack_configs": [{"api_url": sink.url + "slack"}],
                "email_configs": [mail_cfg(port, cert[0])],
            }
        ],
        "route": {"receiver": "everyone", "group_by": ["alertname"], "group_wait": "30s"},
    }
    notifiers = {cls.name: cls() for cls in NOTIFIERS}
    d = Dispatcher(cfg, notifiers, clock=clock)
    await d.start(background=False)
    firing = [alert(instance="a"), alert(instance="b"), alert("DiskFull", instance="a")]
    for _ in range(40):  # 10 minutes of 15s evaluations
        await d.submit(firing)
        clock.advance(15)
        await d.tick()
    await d.submit([Alert(a.labels, a.annotations, "resolved", a.starts_at) for a in firing])
    for _ in range(40):
        await d.submit([])
        clock.advance(15)
        await d.tick()
    await d.stop()
    by_path: dict[str, list[tuple[str, str]]] = {}
    for path, _h, body in sink.requests:
        p = json.loads(body)
        key = p.get("groupKey") or p["attachments"][0]["title"]
        status = p.get("status") or ("firing" if "FIRING" in key else "resolved")
        by_path.setdefault(path, []).append((key, status))
    assert sorted(by_path["/webhook"]) == [
        ('{}:{alertname="DiskFull"}', "firing"),
        ('{}:{alertname="DiskFull"}', "resolved"),
        ('{}:{alertname="HighLatency"}', "firing"),
        ('{}:{alertname="HighLatency"}', "resolved"),
    ]
    assert sorted(by_path["/slack"]) == [
        ("[FIRING:1] DiskFull (a api)", "firing"),
        ("[FIRING:2] HighLatency (api)", "firing"),
        ("[RESOLVED] DiskFull (a api)", "resolved"),
        ("[RESOLVED] HighLatency (api)", "resolved"),
    ]
    subjects = sorted(str(m[2]["Subject"]) for m in box.messages)
    assert subjects == [
        "[FIRING:1] DiskFull (a api)",
        "[FIRING:2] HighLatency (api)",
        "[RESOLVED] DiskFull (a api)",
        "[RESOLVED] HighLatency (api)",
    ]


# --- config and daemon wiring -------------------------------------------------------------


def test_config_errors_name_their_keys(make_config: Callable[..., Any]) -> None:
    text = """
alerting:
  receivers:
    - name: team
      webhook_configs: [{urll: "http://x"}]
      slack_configs: [{api_url: "not a url"}]
      email_configs: [{to: ops@example.com, from: a@example.com, tls: ssl}]
    - name: team
  route:
    receiver: team
    routes:
      - matchers: ['severity=~"("']
"""
    with pytest.raises(ConfigError) as exc:
        make_config(text)
    msg = str(exc.value)
    assert "alerting.route.routes: [0].matchers: invalid regex" in msg
    assert "alerting.receivers: alerting.receivers[1].name: duplicate receiver name" in msg
    text = """
alerting:
  receivers:
    - name: team
      webhook_configs: [{urll: "http://x"}]
      slack_configs: [{api_url: "not a url"}]
      email_configs: [{to: ops@example.com, from: a@example.com, tls: ssl}]
  route:
    receiver: nobody
"""
    with pytest.raises(ConfigError) as exc:
        make_config(text)
    msg = str(exc.value)
    assert "alerting.receivers[0].webhook_configs[0].urll: unknown key (did you mean 'url'?)" in msg
    assert "alerting.receivers[0].webhook_configs[0].url: required" in msg
    assert "alerting.receivers[0].slack_configs[0].api_url: expected an http(s) URL" in msg
    assert "alerting.receivers[0].email_configs[0].tls: expected one of" in msg
    assert "alerting.route.receiver: unknown receiver 'nobody'" in msg


async def test_daemon_dispatcher_delivers_and_counts_in_metrics(
    aiohttp_client: Any, make_config: Callable[..., Any], sink: Sink
) -> None:
    config, host = make_config(
        f"""
alerting:
  external_url: http://agent.example
  receivers:
    - name: hook
      webhook_configs: [{{url: "{sink.url}in"}}]
  route:
    receiver: hook
    group_wait: 0s
"""
    )
    client = await aiohttp_client(make_app(config, host))
    ctx = client.app[CONTEXT_KEY]
    assert ctx.dispatcher is not None and "webhook" in ctx.notifiers
    await ctx.dispatcher.submit([alert()])
    await wait_until("the webhook request", lambda: sink.requests)
    assert sink.json(0)["externalURL"] == "http://agent.example"

    async def counted() -> bool:
        text = await (await client.get("/metrics")).text()
        return 'tsagent_notifications_total{notifier="webhook",result="success"} 1.0' in text

    await wait_until("the success counted in /metrics", counted)
