"""Webhook notifier: Alertmanager's webhook JSON (version 4), so receivers written
for Alertmanager (and their parsers) work unchanged.

With ``hmac_secret`` set, every request carries
``X-Tsagent-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the secret>``
(the header name is configurable with ``hmac_header``), GitHub's convention,
so a receiver can check that the body came from us and was not altered.
Compare it in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from agent.plugin_api import Field, Schema, build_payload, check_non_negative
from plugins.notifiers.common import (
    SEND_RESOLVED,
    TIMEOUT,
    entry_config,
    headers_field,
    post,
    seconds,
)

SIGNATURE_HEADER = "X-Tsagent-Signature"


def _check_url(value: Any) -> str | None:
    return None if str(value).startswith(("http://", "https://")) else "expected an http(s) URL"


SCHEMA = Schema(
    {
        "url": Field(
            str, "", "Where to POST (credentials as https://user:pass@...).", check=_check_url
        ),
        "send_resolved": SEND_RESOLVED,
        "timeout": TIMEOUT,
        "max_alerts": Field(
            int,
            0,
            "Send at most this many alerts (0: all); truncatedAlerts says how many were left out.",
            check=check_non_negative,
        ),
        "hmac_secret": Field(str, "", "Sign each body with HMAC-SHA256 using this secret."),
        "hmac_header": Field(str, SIGNATURE_HEADER, "Header carrying sha256=<hex>."),
        "headers": headers_field(),
    }
)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    name = "webhook"
    schema = SCHEMA

    async def notify(self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]) -> None:
        cfg = entry_config(SCHEMA, receiver.get("config") or {}, "webhook_configs")
        payload = build_payload(alerts, receiver, cfg["max_alerts"])
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = dict(cfg["headers"])
        if cfg["hmac_secret"]:
            headers[cfg["hmac_header"]] = sign(cfg["hmac_secret"], body)
        await post(
            cfg["url"], body, headers=headers, timeout=seconds(cfg["timeout"]), what="webhook"
        )
