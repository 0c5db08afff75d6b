"""What the built-in notifiers share: config checking, titles, templates, HTTP posts.

Each notifier describes its ``<type>_configs`` entries with an
:class:`agent.config.Schema`, so a receiver's keys are checked at load with the
same messages as the core's, and defaults filled in at delivery time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from agent.plugin_api import (
    Field,
    NotifyError,
    Schema,
    check_duration,
    parse_duration,
    redact_text,
    redact_url,
    validate,
)

USER_AGENT = "tsagent-notifier"

SEND_RESOLVED = Field(bool, True, "Also notify when the alerts of a group resolve.")
TIMEOUT = Field(
    (str, int, float), "10s", "Give one attempt up after this long.", check=check_duration
)


def headers_field(help_text: str = "Extra HTTP headers (values may use ${ENV}).") -> Schema:
    return Schema({}, help_text, open=True, value=Field(str, ""))


def entry_config(schema: Schema, raw: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The entry with defaults filled in; a bad entry is a permanent delivery error."""
    errors: list[str] = []
    cfg = validate(dict(raw), schema, what, errors)
    if errors:
        raise NotifyError("; ".join(errors), permanent=True)
    return cfg


def entry_errors(schema: Schema, raw: Any, path: str) -> list[str]:
    errors: list[str] = []
    validate(raw, schema, path, errors)
    return errors


def seconds(value: Any) -> float:
    return parse_duration(value)


# --- titles and templates ---------------------------------------------------------------


def firing_count(payload: Mapping[str, Any]) -> int:
    return sum(1 for a in payload["alerts"] if a.get("status") == "firing")


def title(payload: Mapping[str, Any]) -> str:
    """Alertmanager's default title: ``[FIRING:2] HighLatency api (extra common values)``."""
    status = str(payload["status"]).upper()
    head = f"[{status}:{firing_count(payload)}]" if status == "FIRING" else f"[{status}]"
    group = payload.get("groupLabels") or {}
    common = payload.get("commonLabels") or {}
    words = [group[k] for k in sorted(group)]
    if not words and "alertname" in common:
        words = [common["alertname"]]
    rest = [common[k] for k in sorted(common) if k not in group and common[k] not in words]
    text = " ".join([head, *words])
    if rest:
        text += " (" + " ".join(rest) + ")"
    return text


_TEMPLATE_RE = re.compile(r"\{\{\s*\.([A-Za-z]+)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\s*\}\}")
_SCALARS = {
    "Status": lambda p: p["status"],
    "StatusUpper": lambda p: str(p["status"]).upper(),
    "Receiver": lambda p: p["receiver"],
    "GroupKey": lambda p: p["groupKey"],
    "ExternalURL": lambda p: p["externalURL"],
    "NumAlerts": lambda p: str(len(p["alerts"]) + p.get("truncatedAlerts", 0)),
    "NumFiring": lambda p: str(firing_count(p)),
    "NumResolved": lambda p: str(len(p["alerts"]) - firing_count(p)),
    "Title": title,
}
_MAPS = {
    "GroupLabels": "groupLabels",
    "CommonLabels": "commonLabels",
    "CommonAnnotations": "commonAnnotations",
}


def template_error(text: str) -> str | None:
    """Check a template: only ``{{ .Field }}`` and ``{{ .Map.key }}`` forms are known."""
    for m in _TEMPLATE_RE.finditer(text):
        name, key = m.groups()
        if (key is None and name not in _SCALARS) or (key is not None and name not in _MAPS):
            known = ", ".join([*(f".{n}" for n in _SCALARS), *(f".{n}.NAME" for n in _MAPS)])
            return f"unknown template field {m.group(0)!r}; known: {known}"
    if "{{" in _TEMPLATE_RE.sub("", text):
        return "template has a '{{' that is not a {{ .Field }} reference"
    return None


def render(text: str, payload: Mapping[str, Any]) -> str:
    """A deliberately small Go-template subset; a missing map key renders empty."""

    def sub(m: re.Match[str]) -> str:
        name, key = m.groups()
        if key is None:
            return str(_SCALARS[name](payload))
        return str((payload.get(_MAPS[name]) or {}).get(key, ""))

    return _TEMPLATE_RE.sub(sub, text)


# --- HTTP -------------------------------------------------------------------------------


async def post(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: float,
    what: str,
) -> None:
    """POST and raise :class:`NotifyError` on anything but a 2xx; 4xx (except 408 and
    429) are permanent. Messages name the URL only in redacted form."""
    safe = redact_url(url)
    hdrs = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, data=body, headers=hdrs) as resp,
        ):
            if 200 <= resp.status < 300:
                return
            text = (await resp.text(errors="replace"))[:200].strip()
            permanent = 400 <= resp.status < 500 and resp.status not in (408, 429)
            raise NotifyError(
                f"{what} {safe} answered HTTP {resp.status}: {redact_text(text)}",
                permanent=permanent,
            )
    except TimeoutError:
        raise NotifyError(f"{what} {safe}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        detail = redact_text(str(exc)).replace(url, safe)
        raise NotifyError(f"{what} {safe}: {type(exc).__name__}: {detail}") from None
