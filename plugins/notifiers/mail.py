"""Email notifier through aiosmtplib: one message per notification, with a
plain-text and an HTML part (``multipart/alternative``), so it reads well in
a terminal mail client and in a web mailer alike.

``tls`` picks the transport: ``starttls`` (submission, port 587: plain
connection upgraded, and refused if the server cannot upgrade), ``tls``
(implicit TLS, port 465), or ``none`` (a local relay on port 25). Server
certificates are verified against the system store, or ``ca_file``;
``insecure_skip_verify`` exists for lab setups only. ``auth_username`` and
``auth_password`` log in (only over TLS unless ``tls: none``, which is the
operator's explicit choice). Authentication failures and rejected recipients
are permanent errors: retrying cannot fix them.
"""

from __future__ import annotations

import html
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib

from agent.plugin_api import (
    Field,
    NotifyError,
    Schema,
    build_payload,
    check_listen,
    client_ssl_context,
    redact_text,
)
from plugins.notifiers.common import (
    SEND_RESOLVED,
    entry_config,
    headers_field,
    render,
    seconds,
    template_error,
    title,
)

DEFAULT_SUBJECT = "{{ .Title }}"


def _check_to(value: Any) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not items or not all(isinstance(v, str) and "@" in v for v in items):
        return "expected an address or a list of addresses"
    return None


SCHEMA = Schema(
    {
        "to": Field((str, list), "", "Recipient address or list of addresses.", check=_check_to),
        "from": Field(
            str,
            "",
            "Sender address.",
            check=lambda v: None if "@" in v else "expected an email address",
        ),
        "smarthost": Field(str, "localhost:25", "SMTP server HOST:PORT.", check=check_listen),
        "hello": Field(str, "", "Name to announce in EHLO (default: this host's name)."),
        "tls": Field(str, "starttls", "Transport security.", choices=("starttls", "tls", "none")),
        "ca_file": Field(str, "", "PEM CA bundle to verify the server with."),
        "insecure_skip_verify": Field(bool, False, "Do not verify the server certificate."),
        "auth_username": Field(str, ""),
        "auth_password": Field(str, "", "Use ${ENV}; never commit it."),
        "subject": Field(str, DEFAULT_SUBJECT, "Subject template.", check=template_error),
        "html": Field(bool, True, "Add an HTML part next to the plain text."),
        "headers": headers_field("Extra mail headers; they replace ours of the same name."),
        "send_resolved": SEND_RESOLVED,
        "timeout": Field((str, int, float), "30s", "Give one attempt up after this long."),
    }
)


def _recipients(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    return [a.strip() for item in items for a in item.split(",") if a.strip()]


def text_body(payload: Mapping[str, Any]) -> str:
    lines = [title(payload), ""]
    for alert in payload["alerts"]:
        labels = alert.get("labels") or {}
        lines.append(f"[{str(alert.get('status', '')).upper()}] {labels.get('alertname', '')}")
        for key, value in sorted((alert.get("annotations") or {}).items()):
            lines.append(f"  {key}: {value}")
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
        lines.append(f"  since: {alert.get('startsAt', '')}")
        if alert.get("status") == "resolved":
            lines.append(f"  resolved: {alert.get('endsAt', '')}")
        if alert.get("generatorURL"):
            lines.append(f"  source: {alert['generatorURL']}")
        lines.append("")
    if payload.get("truncatedAlerts"):
        lines.append(f"... and {payload['truncatedAlerts']} more")
    if payload.get("externalURL"):
        lines.append(f"Sent by tsagent {payload['externalURL']}")
    return "\n".join(lines) + "\n"


def html_body(payload: Mapping[str, Any]) -> str:
    e = html.escape
    colour = "#E01E5A" if payload["status"] == "firing" else "#2EB67D"
    rows = []
    for alert in payload["alerts"]:
        labels = alert.get("labels") or {}
        ann = "".join(
            f"<div><b>{e(k)}</b>: {e(v)}</div>"
            for k, v in sorted((alert.get("annotations") or {}).items())
        )
        lab = " ".join(
            f"<code>{e(k)}={e(v)}</code>" for k, v in sorted(labels.items()) if k != "alertname"
        )
        link = (
            f' <a href="{e(alert["generatorURL"])}">source</a>' if alert.get("generatorURL") else ""
        )
        rows.append(
            "<tr>"
            f"<td>{e(str(alert.get('status', '')).upper())}</td>"
            f"<td><b>{e(labels.get('alertname', ''))}</b>{link}<br>{lab}</td>"
            f"<td>{ann}</td>"
            f"<td>{e(str(alert.get('startsAt', '')))}</td>"
            "</tr>"
        )
    return (
        "<!DOCTYPE html><html><body>"
        f'<h2 style="color:{colour}">{e(title(payload))}</h2>'
        '<table border="1" cellpadding="4" cellspacing="0">'
        "<tr><th>State</th><th>Alert</th><th>Annotations</th><th>Since</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def build_message(payload: Mapping[str, Any], cfg: Mapping[str, Any]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = render(cfg["subject"], payload).replace("\n", " ")
    msg["From"] = cfg["from"]
    msg["To"] = ", ".join(_recipients(cfg["to"]))
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=cfg["from"].rpartition("@")[2] or None)
    for key, value in cfg["headers"].items():
        del msg[key]  # an extra header may override ours (Alertmanager's semantics)
        msg[key] = value
    msg.set_content(text_body(payload))
    if cfg["html"]:
        msg.add_alternative(html_body(payload), subtype="html")
    return msg


def _tls_context(cfg: Mapping[str, Any]) -> ssl.SSLContext:
    return client_ssl_context(
        ca_file=cfg["ca_file"], insecure_skip_verify=bool(cfg["insecure_skip_verify"])
    )


class EmailNotifier:
    name = "email"
    schema = SCHEMA

    async def notify(self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]) -> None:
        cfg = entry_config(SCHEMA, receiver.get("config") or {}, "email_configs")
        message = build_message(build_payload(alerts, receiver), cfg)
        host, _, port = cfg["smarthost"].rpartition(":")
        mode = cfg["tls"]
        try:
            await aiosmtplib.send(
                message,
                sender=cfg["from"],  # the envelope follows `from` and `to`, not headers
                recipients=_recipients(cfg["to"]),
                hostname=host,
                port=int(port),
                username=cfg["auth_username"] or None,
                password=cfg["auth_password"] or None,
                use_tls=mode == "tls",
                start_tls=mode == "starttls",
                tls_context=_tls_context(cfg) if mode != "none" else None,
                local_hostname=cfg["hello"] or None,
                timeout=seconds(cfg["timeout"]),
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise NotifyError(
                f"smtp {host}:{port}: login refused ({exc.code})", permanent=True
            ) from None
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPSenderRefused) as exc:
            raise NotifyError(
                f"smtp {host}:{port}: {redact_text(str(exc))}", permanent=True
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifyError(
                f"smtp {host}:{port}: {type(exc).__name__}: {redact_text(str(exc))}"
            ) from None
