"""Alertmanager notifier: pushes alerts to a real Alertmanager's ``/api/v2/alerts``.

Alertmanager groups, deduplicates, silences and inhibits by itself, so this
notifier opts out of tsagent's grouping (``grouping = False``): the dispatcher
hands it alerts the way Prometheus would, when they appear or change and
firing ones again every ``alerting.resend_delay``, each with ``endsAt`` in the
future, so Alertmanager resolves them itself if tsagent stops sending.
Resolved alerts are always sent (``send_resolved`` does not apply): that is
how Alertmanager learns they ended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.plugin_api import Field, Schema
from plugins.notifiers.common import (
    SEND_RESOLVED,
    TIMEOUT,
    entry_config,
    headers_field,
    post,
    seconds,
)

API_PATH = "/api/v2/alerts"

SCHEMA = Schema(
    {
        "url": Field(
            str,
            "",
            "Alertmanager's base URL, e.g. http://127.0.0.1:9093 (alerts go to /api/v2/alerts).",
            check=lambda v: (
                None if str(v).startswith(("http://", "https://")) else "expected an http(s) URL"
            ),
        ),
        "send_resolved": SEND_RESOLVED,
        "timeout": TIMEOUT,
        "headers": headers_field(),
    }
)


def postable(alert: Mapping[str, Any]) -> dict[str, Any]:
    """Alertmanager's ``postableAlert``: only the fields its API defines."""
    out: dict[str, Any] = {
        "labels": dict(alert.get("labels") or {}),
        "annotations": dict(alert.get("annotations") or {}),
        "startsAt": alert.get("startsAt"),
        "endsAt": alert.get("endsAt"),
        "generatorURL": alert.get("generatorURL") or "",
    }
    return {k: v for k, v in out.items() if v not in (None, "0001-01-01T00:00:00Z")}


class AlertmanagerNotifier:
    name = "alertmanager"
    schema = SCHEMA
    grouping = False

    async def notify(self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]) -> None:
        cfg = entry_config(SCHEMA, receiver.get("config") or {}, "alertmanager_configs")
        body = json.dumps([postable(a) for a in alerts]).encode()
        url = cfg["url"].rstrip("/") + API_PATH
        await post(
            url,
            body,
            headers=dict(cfg["headers"]),
            timeout=seconds(cfg["timeout"]),
            what="alertmanager",
        )
