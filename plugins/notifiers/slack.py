"""Slack notifier: an incoming-webhook message with one attachment per notification.

The layout is meant to be read on a phone at 3 a.m.: the attachment's colour
bar says firing (red) or resolved (green); the title is Alertmanager's
``[FIRING:2] HighLatency api`` and links to ``title_link`` (default: the
agent's ``external_url``, else the first alert's generator URL); then one
block per alert with its state, summary/description and labels, and the other
annotations as fields. Long groups are cut after ``max_alerts`` with a
"... and N more" line rather than hitting Slack's message size limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.plugin_api import Field, Schema, build_payload, check_positive
from plugins.notifiers.common import (
    SEND_RESOLVED,
    TIMEOUT,
    entry_config,
    post,
    render,
    seconds,
    template_error,
)

FIRING_COLOR = "#E01E5A"
RESOLVED_COLOR = "#2EB67D"
MAIN_ANNOTATIONS = ("summary", "description", "message")

SCHEMA = Schema(
    {
        "api_url": Field(
            str,
            "",
            "Incoming-webhook URL (https://hooks.slack.com/services/...); use ${ENV}.",
            check=lambda v: (
                None if str(v).startswith(("http://", "https://")) else "expected an http(s) URL"
            ),
        ),
        "send_resolved": SEND_RESOLVED,
        "timeout": TIMEOUT,
        "channel": Field(str, "", "Override the webhook's channel (#name or @user)."),
        "username": Field(str, "", "Override the webhook's bot name."),
        "icon_emoji": Field(str, "", "Override the webhook's icon, e.g. :rotating_light:."),
        "title": Field(str, "{{ .Title }}", "Title template.", check=template_error),
        "title_link": Field(str, "", "Title link; empty: external_url or generator URL."),
        "max_alerts": Field(int, 10, "Alerts rendered in full per message.", check=check_positive),
    }
)


def _labels_line(labels: Mapping[str, str]) -> str:
    return " ".join(f"`{k}={v}`" for k, v in sorted(labels.items()) if k != "alertname")


def message(payload: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack message for one notification (pure; tested without Slack)."""
    firing = payload["status"] == "firing"
    alerts = payload["alerts"]
    link = cfg["title_link"] or payload.get("externalURL") or ""
    if not link:
        link = next((a.get("generatorURL") for a in alerts if a.get("generatorURL")), "")
    blocks: list[str] = []
    for alert in alerts[: cfg["max_alerts"]]:
        ann = alert.get("annotations") or {}
        icon = ":red_circle:" if alert.get("status") == "firing" else ":large_green_circle:"
        name = (alert.get("labels") or {}).get("alertname", "alert")
        lines = [f"{icon} *{alert.get('status', '').upper()}* {name}"]
        for key in MAIN_ANNOTATIONS:
            if ann.get(key):
                lines.append(f">{ann[key]}")
                break
        labels = _labels_line(alert.get("labels") or {})
        if labels:
            lines.append(f"Labels: {labels}")
        if alert.get("generatorURL"):
            lines.append(f"<{alert['generatorURL']}|Source>")
        blocks.append("\n".join(lines))
    hidden = len(alerts) - len(blocks) + int(payload.get("truncatedAlerts", 0))
    if hidden > 0:
        blocks.append(f"... and {hidden} more")
    common = payload.get("commonAnnotations") or {}
    fields = [
        {"title": k, "value": v, "short": len(v) < 40}
        for k, v in sorted(common.items())
        if k not in MAIN_ANNOTATIONS
    ]
    heading = render(cfg["title"], payload)
    attachment: dict[str, Any] = {
        "color": FIRING_COLOR if firing else RESOLVED_COLOR,
        "fallback": heading,
        "title": heading,
        "text": "\n\n".join(blocks),
        "fields": fields,
        "footer": f"tsagent · receiver {payload.get('receiver', '')}",
        "mrkdwn_in": ["text", "fields"],
    }
    if link:
        attachment["title_link"] = link
    msg: dict[str, Any] = {"text": heading, "attachments": [attachment]}
    for key in ("channel", "username", "icon_emoji"):
        if cfg[key]:
            msg[key] = cfg[key]
    return msg


class SlackNotifier:
    name = "slack"
    schema = SCHEMA

    async def notify(self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]) -> None:
        cfg = entry_config(SCHEMA, receiver.get("config") or {}, "slack_configs")
        body = json.dumps(message(build_payload(alerts, receiver), cfg)).encode()
        await post(cfg["api_url"], body, headers={}, timeout=seconds(cfg["timeout"]), what="slack")
