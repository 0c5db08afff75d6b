"""What notifiers see, and the dispatcher's settings and counters.

The ``Notifier`` protocol, the Alertmanager-compatible webhook payload
(:func:`build_payload`), :class:`NotifyError` and the redaction of secrets
in URLs and error texts: the surface notifier plugins use (re-exported by
``agent.plugin_api``). Apart from :mod:`agent.alerting.dispatch`, which
routes, groups and retries, so that surface reads on its own.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter

from agent.alerting.model import Alert, rfc3339
from agent.alerting.routing import (
    Route,
    RouteError,
    build_route,
    check_alerting,
)
from agent.config import parse_duration

ZERO_TIME = rfc3339(None)


@runtime_checkable
class Notifier(Protocol):
    """Delivers alert notifications to one kind of receiver."""

    name: str

    async def notify(
        self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]
    ) -> None: ...


# --- errors and redaction ---------------------------------------------------------


class NotifyError(Exception):
    """A delivery failed. ``permanent`` means retrying cannot help (bad request, auth)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


_SLACK_PATH = re.compile(r"^(/services|/workflows|/triggers)/.*$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def redact_url(url: str) -> str:
    """A URL fit for a log line: no userinfo, no query string, no fragment, and no
    Slack webhook path tokens (``/services/T000/B000/XXXX`` -> ``/services/***``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    if parts.username or parts.password:
        netloc = "***@" + netloc
    path = _SLACK_PATH.sub(lambda m: m.group(1) + "/***", parts.path)
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def redact_text(text: str) -> str:
    """Redact every URL in a message (exception texts often quote the URL)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


# --- the payload ------------------------------------------------------------------


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def build_payload(
    alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any], max_alerts: int = 0
) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4) for a notification.

    ``status`` is ``firing`` while any alert fires; ``commonLabels`` and
    ``commonAnnotations`` are the pairs every alert shares, computed before
    truncation to ``max_alerts`` (0: all), as Alertmanager does.
    """
    kept = list(alerts) if max_alerts <= 0 else list(alerts[:max_alerts])
    return {
        "version": "4",
        "groupKey": receiver.get("group_key", ""),
        "truncatedAlerts": len(alerts) - len(kept),
        "status": "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved",
        "receiver": receiver.get("name", ""),
        "groupLabels": dict(receiver.get("group_labels") or {}),
        "commonLabels": _common([a.get("labels") or {} for a in alerts]),
        "commonAnnotations": _common([a.get("annotations") or {} for a in alerts]),
        "externalURL": receiver.get("external_url", ""),
        "alerts": kept,
    }


def _alert_dict(alert: Alert) -> dict[str, Any]:
    out = alert.to_dict()
    if alert.status == "firing":
        out["endsAt"] = ZERO_TIME  # as Alertmanager's webhooks show a firing alert
    return out


def _sort_key(alert: Alert) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(alert.labels.items()))


# --- settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The ``alerting`` section, parsed once per config (re)load."""

    root: Route
    receivers: dict[str, dict[str, Any]]
    external_url: str = ""
    resend_delay: float = 60.0
    max_attempts: int = 10
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    max_age: float = 3600.0
    timeout: float = 30.0

    @classmethod
    def parse(cls, section: Mapping[str, Any]) -> Settings:
        errors = check_alerting(section)
        if errors:
            raise RouteError("; ".join(errors))
        delivery = section.get("delivery") or {}

        def dur(value: Any, default: float) -> float:
            return default if value is None else parse_duration(value)

        return cls(
            root=build_route(section.get("route") or {}),
            receivers={r["name"]: dict(r) for r in section.get("receivers") or []},
            external_url=str(section.get("external_url") or ""),
            resend_delay=dur(section.get("resend_delay"), 60.0),
            max_attempts=int(delivery.get("max_attempts", 10)),
            initial_backoff=dur(delivery.get("initial_backoff"), 1.0),
            max_backoff=dur(delivery.get("max_backoff"), 300.0),
            max_age=dur(delivery.get("max_age"), 3600.0),
            timeout=dur(delivery.get("timeout"), 30.0),
        )


# --- metrics ----------------------------------------------------------------------


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter(
            "tsagent_notifications",
            "Notification delivery attempts by notifier type and result "
            "(success, failure: will be retried, dropped: given up).",
            ["notifier", "result"],
            registry=registry,
        )
        self.failures = Counter(
            "tsagent_notification_failures",
            "Failed notification delivery attempts by notifier type.",
            ["notifier"],
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, NotificationMetrics] = (
    weakref.WeakKeyDictionary()
)


def notification_metrics(registry: CollectorRegistry) -> NotificationMetrics:
    """One set of counters per registry (a restarted dispatcher keeps counting)."""
    found = _METRICS.get(registry)
    if found is None:
        found = _METRICS[registry] = NotificationMetrics(registry)
    return found
