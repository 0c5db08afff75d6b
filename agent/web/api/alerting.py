"""``/api/v1/rules`` and ``/api/v1/alerts`` in Prometheus's response shapes.

Grafana's alerting views read these endpoints of a Prometheus data source,
so field names, value formats and time formats are Prometheus's exactly:
durations in seconds, times as RFC 3339 with nanoseconds (``"0001-01-01T00:00:00Z"``
for never), alert values as Go's ``%e`` text (``"1e+00"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.alerting.state import ActiveAlert, AlertState
from agent.alerting.template import go_float_e
from agent.context import Route
from agent.web.api.errors import failure

if TYPE_CHECKING:
    from agent.alerting.engine import Group, Rule, RuleEngine

ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339nano(ts: float | None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC (fraction without trailing zeros)."""
    if ts is None:
        return ZERO_TIME
    ns = round(ts * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def alert_json(alert: ActiveAlert) -> dict[str, Any]:
    out: dict[str, Any] = {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "state": alert.state.value,
        "activeAt": rfc3339nano(alert.active_at),
        "value": go_float_e(alert.value),
    }
    if alert.keep_firing_since is not None:
        out["keepFiringSince"] = rfc3339nano(alert.keep_firing_since)
    return out


def _active(rule: Rule) -> list[ActiveAlert]:
    return [a for a in rule.active.values() if a.state != AlertState.INACTIVE]


def rule_json(rule: Rule, *, with_alerts: bool = True) -> dict[str, Any]:
    spec = rule.spec
    common = {
        "name": spec.name,
        "query": spec.expr,
        "labels": dict(spec.labels),
        "health": rule.health,
        "lastError": rule.last_error,
        "evaluationTime": rule.evaluation_time,
        "lastEvaluation": rfc3339nano(rule.last_evaluation),
    }
    if not rule.last_error:
        del common["lastError"]
    if not spec.labels:
        del common["labels"]
    if spec.kind == "record":
        return {**common, "type": "recording"}
    out = {
        "state": rule.state().value,
        "name": spec.name,
        "query": spec.expr,
        "duration": _seconds(spec.for_s),
        "keepFiringFor": _seconds(spec.keep_firing_for_s),
        "labels": dict(spec.labels),
        "annotations": dict(spec.annotations),
        **{k: v for k, v in common.items() if k not in ("name", "query", "labels")},
        "type": "alerting",
    }
    if with_alerts:
        out["alerts"] = [alert_json(a) for a in _active(rule)]
    return out


def rules_data(
    groups: Sequence[Group],
    *,
    kind: str | None = None,
    rule_names: Sequence[str] = (),
    group_names: Sequence[str] = (),
    files: Sequence[str] = (),
    exclude_alerts: bool = False,
) -> dict[str, Any]:
    """The ``data`` object of ``/api/v1/rules``; filters as Prometheus's query parameters."""
    filtering = bool(kind or rule_names)
    out = []
    for group in groups:
        if group_names and group.name not in group_names:
            continue
        if files and group.file not in files:
            continue
        rules = []
        for rule in group.rules:
            if (kind == "alert" and not rule.is_alert) or (kind == "record" and rule.is_alert):
                continue
            if rule_names and rule.spec.name not in rule_names:
                continue
            rules.append(rule_json(rule, with_alerts=not exclude_alerts))
        if filtering and not rules:
            continue
        out.append(
            {
                "name": group.name,
                "file": group.file,
                "rules": rules,
                "interval": _seconds(group.interval_s),
                "limit": group.limit,
                "evaluationTime": group.evaluation_time,
                "lastEvaluation": rfc3339nano(group.last_evaluation),
            }
        )
    return {"groups": out}


def alerts_data(engine: RuleEngine) -> dict[str, Any]:
    return {"alerts": [alert_json(a) for _rule, a in engine.active_alerts()]}


# --- handlers ---------------------------------------------------------------------------


def _bad(message: str) -> web.Response:
    return failure("bad_data", message)


def _engine(request: web.Request) -> RuleEngine | None:
    from agent.context import context_of

    return getattr(context_of(request.app), "rules", None)


async def _params(request: web.Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query.items():
        params.setdefault(key, []).append(value)
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        for key, form_value in (await request.post()).items():
            if isinstance(form_value, str):
                params.setdefault(key, []).append(form_value)
    return params


async def rules_handler(request: web.Request) -> web.Response:
    params = await _params(request)
    kind = (params.get("type") or [""])[-1].lower()
    if kind not in ("", "alert", "record"):
        return _bad(f"unsupported type {kind!r}: expected 'alert' or 'record'")
    exclude = (params.get("exclude_alerts") or ["false"])[-1].lower()
    if exclude not in ("true", "false", "1", "0", ""):
        return _bad(f"invalid exclude_alerts {exclude!r}")
    engine = _engine(request)
    data = rules_data(
        engine.groups if engine is not None else [],
        kind=kind or None,
        rule_names=params.get("rule_name[]", []),
        group_names=params.get("rule_group[]", []),
        files=params.get("file[]", []),
        exclude_alerts=exclude in ("true", "1"),
    )
    return web.json_response({"status": "success", "data": data})


async def alerts_handler(request: web.Request) -> web.Response:
    engine = _engine(request)
    data = alerts_data(engine) if engine is not None else {"alerts": []}
    return web.json_response({"status": "success", "data": data})


ROUTES = [
    Route("GET", "/api/v1/rules", rules_handler, "read"),
    Route("GET", "/api/v1/alerts", alerts_handler, "read"),
]
"""Added to the daemon's routes by :func:`agent.web.app.make_app` (read group)."""
