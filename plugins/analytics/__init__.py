"""Anomaly detection and forecasting over HTTP, and anomaly scores in PromQL.

Routes (group ``read``; answers in Prometheus's envelope, errors as
``{"status": "error", "errorType": "bad_data", ...}`` with 400):

* ``GET /anomaly/detect``: ``metric_name`` and/or ``match[]`` (repeatable
  selectors, each narrowed to ``metric_name`` when both are given),
  ``start_time``/``end_time`` (RFC 3339 or Unix seconds; ``start``/``end``
  are accepted too; default: the last hour), ``method=zscore|mad|seasonal``,
  ``threshold`` (3.0), ``window`` (a duration, or a sample count; default
  60 samples), ``period`` (seasonal, default ``1d``), ``seasons`` (3),
  ``tz`` (the seasonal calendar; default ``query.default_timezone``),
  ``only_anomalies=true``, ``limit`` (series, default 100). ``data`` is
  ``{"method", "threshold", "series": [{"metric", "points": [{"timestamp",
  "value", "expected", "lower", "upper", "score", "is_anomaly"}], "anomalies",
  "params"}]}``; ``expected``/``lower``/``upper``/``score`` are ``null`` while
  a series has no baseline yet.
* ``GET|POST /api/v1/forecast``: ``query`` (PromQL), ``horizon`` (duration),
  ``method=linear|holt_winters``, ``season`` (Holt-Winters), ``step``,
  ``lookback``, ``level`` (0.95), ``time`` (end of the lookback; now). ``data``
  is a matrix of forecast points, each series with ``lower``/``upper`` pairs
  at the same times and its fitted ``model``.

PromQL: ``zscore_over_time(v[w])`` and ``robust_zscore_over_time(v[w])``
(:mod:`agent.analytics.promql`) through ``register_query_functions``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from agent.plugin_api import (
    AgentContext,
    ApiError,
    BadDataError,
    DstRule,
    Matcher,
    Route,
    anomaly,
    api_errors,
    bad_param,
    bool_param,
    duration_param,
    forecast,
    form,
    hookimpl,
    int_param,
    promql,
    success,
    time_param,
)

DEFAULT_RANGE_MS = 3_600_000
DEFAULT_LIMIT = 100


def _float(params: Any, name: str, default: float) -> float:
    text = params.get(name, "")
    if text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise bad_param(name, f"cannot parse {text!r} to a number") from None
    if not math.isfinite(value):
        raise bad_param(name, "must be finite")
    return value


class Handlers:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def _store(self) -> Any:
        store = self.ctx.store
        if store is None:
            raise ApiError("unavailable", "the store is not open yet")
        return store

    @staticmethod
    def wrap(fn: Any) -> Any:
        return api_errors(fn)

    async def detect(self, request: web.Request) -> web.StreamResponse:
        params = await form(request)
        store = self._store()
        try:
            zone = self.ctx.queries.zone(params.get("tz") or None)
        except BadDataError as exc:
            raise bad_param("tz", str(exc)) from None
        rule = DstRule.REJECT
        now = time.time_ns() // 1_000_000
        end_name = "end_time" if params.get("end_time") else "end"
        start_name = "start_time" if params.get("start_time") else "start"
        end = time_param(params, end_name, now, zone, rule)
        start = time_param(params, start_name, end - DEFAULT_RANGE_MS, zone, rule)
        if end < start:
            raise bad_param(end_name, "end timestamp must not be before start time")
        method = params.get("method", "") or "zscore"
        if method not in anomaly.METHODS:
            raise bad_param("method", f"expected one of {', '.join(anomaly.METHODS)}")
        threshold = _float(params, "threshold", 3.0)
        if threshold <= 0:
            raise bad_param("threshold", "must be positive")
        window: anomaly.WindowLike = None
        wtext = params.get("window", "")
        if wtext.isdigit():
            window = int(wtext)
        elif wtext:
            window = (duration_param(params, "window") or 0) / 1000
        period_ms = duration_param(params, "period") or anomaly.DEFAULT_PERIOD_MS
        seasons = int_param(params, "seasons", anomaly.DEFAULT_SEASONS)
        limit = int_param(params, "limit", DEFAULT_LIMIT)
        selectors = self._selectors(params)
        results: dict[Any, anomaly.AnomalySeries] = {}
        for matchers in selectors:
            found = await anomaly.detect_anomalies(
                store,
                matchers,
                start / 1000,
                end / 1000,
                method=method,
                threshold=threshold,
                window=window,
                period=period_ms / 1000,
                seasons=seasons,
                tz=zone,
            )
            for s in found:
                results.setdefault(s.labels, s)
        ordered = [results[k] for k in sorted(results)]
        warnings = []
        if limit > 0 and len(ordered) > limit:
            ordered = ordered[:limit]
            warnings.append(f"results truncated to {limit} series (limit=)")
        only = bool_param(params, "only_anomalies")
        data = {
            "method": method,
            "threshold": threshold,
            "start": start / 1000,
            "end": end / 1000,
            "series": [s.to_json(only_anomalies=only) for s in ordered],
        }
        return success(data, warnings=warnings)

    @staticmethod
    def _selectors(params: Any) -> list[list[Matcher]]:
        name = params.get("metric_name", "")
        matches = params.getall("match[]", [])
        if not name and not matches:
            raise ApiError("bad_data", "give metric_name and/or match[]")
        extra = [Matcher.of("__name__", "=", name)] if name else []
        if not matches:
            return [extra]
        out = []
        for text in matches:
            try:
                out.append(anomaly.selector_matchers(text) + extra)
            except BadDataError as exc:
                raise bad_param("match[]", str(exc)) from None
        return out

    async def forecast(self, request: web.Request) -> web.StreamResponse:
        params = await form(request)
        self._store()  # unavailable (503) until the store is open
        service = self.ctx.queries
        try:
            zone = service.zone(params.get("tz") or None)
        except BadDataError as exc:
            raise bad_param("tz", str(exc)) from None
        query = params.get("query", "")
        if not query:
            raise bad_param("query", "a query is required")
        horizon = duration_param(params, "horizon")
        if horizon is None or horizon <= 0:
            raise bad_param("horizon", "a positive duration is required (e.g. 1h)")
        method = params.get("method", "") or "linear"
        if method not in forecast.METHODS:
            raise bad_param("method", f"expected one of {', '.join(forecast.METHODS)}")
        level = _float(params, "level", 0.95)
        if not 0 < level < 1:
            raise bad_param("level", "must be between 0 and 1")
        end = time_param(params, "time", time.time_ns() // 1_000_000, zone, DstRule.REJECT)
        step = duration_param(params, "step")
        if step is not None and step <= 0:
            raise bad_param("step", "must be positive")
        try:
            result = await forecast.forecast_query(
                service,
                query,
                horizon_ms=horizon,
                method=method,
                season_ms=duration_param(params, "season"),
                step_ms=step,
                lookback_ms=duration_param(params, "lookback"),
                level=level,
                end_ms=end,
            )
        except BadDataError as exc:
            name = "query" if str(exc).startswith("parse error") else "forecast"
            raise bad_param(name, str(exc)) from None
        return success(result.to_json(), warnings=result.warnings)


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    h = Handlers(ctx)
    detect = h.wrap(h.detect)
    fc = h.wrap(h.forecast)
    return [
        Route("GET", "/anomaly/detect", detect, "read", name="anomaly_detect"),
        Route("GET", "/api/v1/forecast", fc, "read", name="forecast"),
        Route("POST", "/api/v1/forecast", fc, "read", name="forecast_post"),
    ]


@hookimpl
def register_query_functions() -> dict[str, Any]:
    return dict(promql.FUNCTIONS)
