"""Handlers of the Prometheus HTTP API, answering the way Prometheus does.

They parse parameters, hand queries to the store's
:class:`agent.query.service.QueryService` and wrap the answer in
Prometheus's envelope; nothing here evaluates PromQL. Extensions, all
opt-in so that a plain Prometheus request gets a Prometheus answer byte for
byte in shape:

* ``tz=<IANA zone>`` reads offset-less ``time``/``start``/``end`` as local
  times there (default zone: ``query.default_timezone``, else the machine's);
  ``dst=earlier|later`` settles local times a DST change made ambiguous or
  skipped, which are otherwise refused with a 400 naming the candidates;
* ``align=calendar`` on ``query_range`` steps along the local calendar;
* ``localtime=true`` adds local ISO 8601 times beside the Unix ones;
* ``Cache-Control: no-cache`` / ``no-store`` bypass the result cache, and
  ``X-Tsagent-Cache`` says whether an answer was a ``hit``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

import numpy as np
import promql_parser as pp
from aiohttp import web
from multidict import MultiDictProxy
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.context import Route
from agent.model import Labels, Matcher
from agent.query import ast
from agent.query.answer import QueryAnswer
from agent.query.engine import MAX_POINTS
from agent.query.errors import BadDataError
from agent.query.parser import parse
from agent.query.service import QueryOptions, QueryService
from agent.query.timezone import MIN_TIME_MS, DstRule, add_local_times

from .envelope import (
    ApiError,
    api_errors,
    bad_param,
    bool_param,
    cache_mode,
    duration_param,
    form,
    int_param,
    range_params,
    success,
    time_param,
)

if TYPE_CHECKING:
    from agent.config import Config
    from agent.context import AgentContext
    from agent.storage import Store

TRUNCATED = "results truncated due to limit"


@dataclass
class ApiState:
    """Per-application facts the status endpoints report."""

    ctx: AgentContext
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    config: Config | None = None
    config_time: datetime | None = None
    failures_at_config: float = 0.0


API_STATE = web.AppKey("api_state", ApiState)


def _state(request: web.Request) -> ApiState:
    return request.app[API_STATE]


def _reload_failures(ctx: AgentContext) -> float:
    value = ctx.metrics.registry.get_sample_value(
        "tsagent_config_reloads_total", {"result": "failure"}
    )
    return value or 0.0


def _service(request: web.Request) -> tuple[Store, QueryService]:
    """The store's query service, configured from the config currently loaded.

    Re-read whenever the config object changes (SIGHUP reload), so
    ``query.*`` settings follow a reload without a restart.
    """
    state = _state(request)
    ctx = state.ctx
    agent = ctx.agent
    if agent is None:
        raise ApiError("unavailable", "the store is not open yet")
    store, service = agent.store, agent.queries
    if state.config is not ctx.config:
        service.configure(QueryOptions.from_config(ctx.config))
        if state.config is not None:
            state.config_time = datetime.now(UTC)
        state.config = ctx.config
        state.failures_at_config = _reload_failures(ctx)
    return store, service


api = api_errors  # every query API handler answers errors in the one envelope


# --- expression queries --------------------------------------------------------------------


def _zone(params: MultiDictProxy[str], service: QueryService) -> tuple[tzinfo, DstRule]:
    try:
        zone = service.zone(params.get("tz") or None)
    except BadDataError as exc:
        raise bad_param("tz", str(exc)) from None
    text = params.get("dst", "") or "reject"
    try:
        rule = DstRule(text)
    except ValueError:
        raise bad_param("dst", "expected reject, earlier or later") from None
    return zone, rule


async def _evaluate(pending: Awaitable[QueryAnswer]) -> QueryAnswer:
    try:
        return await pending
    except BadDataError as exc:
        if str(exc).startswith("parse error"):
            raise bad_param("query", str(exc)) from None
        raise


def _answer(answer: QueryAnswer, params: MultiDictProxy[str], zone: tzinfo) -> web.Response:
    annos = answer.annotations
    headers = {"X-Tsagent-Cache": answer.cache}
    if bool_param(params, "localtime"):
        data = add_local_times(answer.data(), zone)
        return success(data, warnings=annos.warnings, infos=annos.infos, headers=headers)
    return success(
        data_json=answer.data_json(), warnings=annos.warnings, infos=annos.infos, headers=headers
    )


async def _send(
    request: web.Request, answer: QueryAnswer, params: MultiDictProxy[str], zone: tzinfo
) -> web.StreamResponse:
    """The answer, sent before its result goes into the query cache: the client
    need not wait for that (the store then runs while the response travels)."""
    try:
        response = _answer(answer, params, zone)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        answer.settle()


@api
async def query(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    _store, service = _service(request)
    zone, rule = _zone(params, service)
    at = time_param(params, "time", time.time_ns() // 1_000_000, zone, rule)
    timeout = duration_param(params, "timeout")
    lookback = duration_param(params, "lookback_delta")
    answer = await _evaluate(
        service.instant(
            params.get("query", ""),
            at,
            timeout_s=None if timeout is None else timeout / 1000,
            lookback_ms=lookback,
            cache=cache_mode(request),
            resolution_ms=duration_param(params, "resolution") or 0,
            encode_json=not bool_param(params, "localtime"),
            defer_store=True,
        )
    )
    return await _send(request, answer, params, zone)


@api
async def query_range(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    _store, service = _service(request)
    zone, rule = _zone(params, service)
    start = time_param(params, "start", None, zone, rule)
    end = time_param(params, "end", None, zone, rule)
    if end < start:
        raise bad_param("end", "end timestamp must not be before start time")
    step = duration_param(params, "step")
    if step is None:
        raise bad_param("step", 'cannot parse "" to a valid duration')
    if step <= 0:
        raise bad_param(
            "step",
            "zero or negative query resolution step widths are not accepted. "
            "Try a positive integer",
        )
    align = params.get("align", "")
    if align not in ("", "calendar"):
        raise bad_param("align", f"expected calendar, got {align!r}")
    if not align and (end - start) // step > MAX_POINTS:
        raise ApiError(
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries. "
            "Try decreasing the query resolution (?step=XX)",
        )
    timeout = duration_param(params, "timeout")
    lookback = duration_param(params, "lookback_delta")
    answer = await _evaluate(
        service.range(
            params.get("query", ""),
            start,
            end,
            step,
            align_tz=zone if align else None,
            timeout_s=None if timeout is None else timeout / 1000,
            lookback_ms=lookback,
            cache=cache_mode(request),
            resolution_ms=duration_param(params, "resolution") or 0,
            encode_json=not bool_param(params, "localtime"),
            defer_store=True,
        )
    )
    return await _send(request, answer, params, zone)


@api
async def query_exemplars(request: web.Request) -> web.StreamResponse:
    """No exemplars are stored; the query is still validated, as Prometheus does."""
    params = await form(request)
    _store, service = _service(request)
    zone, rule = _zone(params, service)
    range_params(params, zone, rule)
    try:
        parse(params.get("query", ""))
    except BadDataError as exc:
        raise bad_param("query", str(exc)) from None
    return success([])


@api
async def format_query(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    text = params.get("query", "")
    try:
        pretty = pp.parse(text).prettify()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise bad_param("query", f"parse error: {exc}") from None
    return success(pretty)


# --- series and labels ------------------------------------------------------------------------


def _selector(text: str) -> list[Matcher]:
    try:
        node = ast.unwrap(parse(text))
    except BadDataError as exc:
        raise bad_param("match[]", str(exc)) from None
    if not isinstance(node, ast.VectorSelector):
        raise bad_param("match[]", f"expected a series selector, got {text!r}")
    return list(node.matchers)


def _series_ids(store: Store, matches: list[str], start: int) -> np.ndarray:
    """Ids selected by any of ``matches`` (all series when none) with data at/after ``start``.

    Only the newest sample time is known without reading samples, so a
    series counts when it has data at or after ``start``; the ``end`` bound
    is not applied (Prometheus answers these from index blocks just as
    coarsely).
    """
    if matches:
        found = [np.asarray(store.match_series(_selector(m)), dtype=np.int64) for m in matches]
        ids = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    else:
        ids = np.asarray(store.match_series([Matcher.of("__name__", "=~", ".+")]), np.int64)
    if start > MIN_TIME_MS and ids.size:
        ids = ids[store.newest_timestamps(ids) >= start]
    return ids


def _all_fresh(store: Store, start: int) -> bool:
    """True when no series ended before ``start`` (the index answers label lists then)."""
    if start <= MIN_TIME_MS:
        return True
    ids = np.asarray(store.match_series([Matcher.of("__name__", "=~", ".+")]), np.int64)
    return bool((store.newest_timestamps(ids) >= start).all()) if ids.size else True


def _limited(items: list[Any], limit: int) -> tuple[list[Any], list[str]]:
    if limit > 0 and len(items) > limit:
        return items[:limit], [TRUNCATED]
    return items, []


def _limit(params: MultiDictProxy[str]) -> int:
    limit = int_param(params, "limit", 0)
    if limit < 0:
        raise bad_param("limit", "limit must be non-negative")
    return limit


@api
async def series(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    store, service = _service(request)
    matches = params.getall("match[]", [])
    if not matches:
        raise ApiError("bad_data", "no match[] parameter provided")
    zone, rule = _zone(params, service)
    start, _end = range_params(params, zone, rule)
    limit = _limit(params)
    labels: list[Labels] = sorted(
        store.labels(i) for i in _series_ids(store, matches, start).tolist()
    )
    shown, warnings = _limited(labels, limit)
    return success([dict(lab) for lab in shown], warnings=warnings)


@api
async def label_names(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    store, service = _service(request)
    zone, rule = _zone(params, service)
    start, _end = range_params(params, zone, rule)
    limit = _limit(params)
    matches = params.getall("match[]", [])
    if not matches and _all_fresh(store, start):
        names = sorted(store.label_names())
    else:
        seen: set[str] = set()
        for sid in _series_ids(store, matches, start).tolist():
            seen.update(k for k, _ in store.labels(sid))
        names = sorted(seen)
    shown, warnings = _limited(names, limit)
    return success(shown, warnings=warnings)


@api
async def label_values(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name.startswith("U__"):
        name = _unescape_utf8_name(name)
    params = await form(request)
    store, service = _service(request)
    zone, rule = _zone(params, service)
    start, _end = range_params(params, zone, rule)
    limit = _limit(params)
    matches = params.getall("match[]", [])
    if not matches and _all_fresh(store, start):
        values = list(store.label_values(name))
    else:
        seen: set[str] = set()
        for sid in _series_ids(store, matches, start).tolist():
            seen.update(v for k, v in store.labels(sid) if k == name)
        values = sorted(seen)
    shown, warnings = _limited(values, limit)
    return success(shown, warnings=warnings)


def _unescape_utf8_name(name: str) -> str:
    """Prometheus 3's ``U__`` escaping of label names in URL paths (``_2e_`` is ``.``)."""
    out: list[str] = []
    i, body = 0, name[3:]
    while i < len(body):
        if body[i] == "_":
            if body.startswith("__", i):
                out.append("_")
                i += 2
                continue
            end = body.find("_", i + 1)
            if end < 0:
                raise bad_param("name", f"invalid escaped label name {name!r}")
            try:
                out.append(chr(int(body[i + 1 : end], 16)))
            except ValueError:
                raise bad_param("name", f"invalid escaped label name {name!r}") from None
            i = end + 1
            continue
        out.append(body[i])
        i += 1
    return "".join(out)


@api
async def metadata(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    limit = int_param(params, "limit", -1)
    per_metric = int_param(params, "limit_per_metric", -1)
    data = _state(request).ctx.metadata.query(params.get("metric") or None, limit, per_metric)
    return success(data)


# --- status -----------------------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@api
async def runtimeinfo(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    ctx = state.ctx
    if state.config is not ctx.config and ctx.store is not None:
        _service(request)  # notes a reload that happened since the last query
    retention = str(ctx.config.section("storage").get("retention", "0"))
    return success(
        {
            "startTime": _iso(state.started),
            "CWD": os.getcwd(),
            "reloadConfigSuccess": _reload_failures(ctx) <= state.failures_at_config,
            "lastConfigTime": _iso(state.config_time or state.started),
            "corruptionCount": 0,
            "goroutineCount": len(asyncio.all_tasks()),
            "GOMAXPROCS": os.cpu_count() or 1,
            "GOMEMLIMIT": int(ctx.config.section("storage").get("head_memory_limit_bytes", 0)),
            "GOGC": "",
            "GODEBUG": "",
            "storageRetention": "unlimited" if retention in ("0", "0s") else retention,
            "pythonVersion": platform.python_version(),
        }
    )


@api
async def tsdb_status(request: web.Request) -> web.StreamResponse:
    """Cardinality from the in-memory index: top ``limit`` (10) per table, as Prometheus."""
    params = await form(request)
    limit = int_param(params, "limit", 10)
    if limit < 1:
        raise bad_param("limit", "limit must be a positive number")
    store, _svc = _service(request)
    stats = store.cardinality_stats(limit)
    bounds = await store.time_bounds()
    figures = store.stats()
    pairs = sum(len(store.label_values(n)) for n in store.label_names())

    def table(rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"name": k, "value": v} for k, v in rows]

    return success(
        {
            "headStats": {
                "numSeries": stats.num_series,
                "numLabelPairs": pairs,
                "chunkCount": figures.segments + figures.active_series,
                # Prometheus reports an empty head as (MaxInt64, MinInt64).
                "minTime": bounds[0] if bounds else 2**63 - 1,
                "maxTime": bounds[1] if bounds else -(2**63),
            },
            "seriesCountByMetricName": table(stats.series_count_by_metric_name),
            "labelValueCountByLabelName": table(stats.label_value_count_by_label_name),
            "memoryInBytesByLabelName": table(stats.memory_in_bytes_by_label_name),
            "seriesCountByLabelValuePair": table(stats.series_count_by_label_value_pair),
        }
    )


# --- wiring -------------------------------------------------------------------------------------


class CacheCollector(Collector):
    """``tsagent_query_cache_*`` at scrape time, from the store's query cache."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        agent = self._ctx.agent
        if agent is None:
            return
        cache = agent.queries.cache
        s = cache.stats
        for name, help_text, value in (
            ("hits", "Query results served from the cache.", s.hits),
            ("misses", "Cacheable queries that had to be evaluated.", s.misses),
            ("evictions", "Cached results dropped to stay within max_bytes.", s.evictions),
            (
                "invalidations",
                "Cached results dropped because data under them changed.",
                s.invalidations,
            ),
        ):
            yield CounterMetricFamily(f"tsagent_query_cache_{name}", help_text, value=value)
        yield GaugeMetricFamily("tsagent_query_cache_entries", "Cached results.", len(cache))
        yield GaugeMetricFamily(
            "tsagent_query_cache_bytes", "Estimated memory of cached results.", s.bytes
        )


def install(app: web.Application, ctx: AgentContext) -> list[Route]:
    """Prepare ``app`` for the API and return its routes (all in the ``read`` group).

    The rollup endpoints (``agent.web.api.rollup_routes``) use the state set up
    here and are added beside these by the app factory.
    """
    app[API_STATE] = ApiState(ctx)
    ctx.metrics.add_collector(CacheCollector(ctx))
    both = ("GET", "POST")
    routes = [
        *(Route(m, "/api/v1/query", query) for m in both),
        *(Route(m, "/api/v1/query_range", query_range) for m in both),
        *(Route(m, "/api/v1/series", series) for m in both),
        *(Route(m, "/api/v1/labels", label_names) for m in both),
        Route("GET", "/api/v1/label/{name}/values", label_values),
        Route("GET", "/api/v1/metadata", metadata),
        Route("GET", "/api/v1/status/runtimeinfo", runtimeinfo),
        Route("GET", "/api/v1/status/tsdb", tsdb_status),
        *(Route(m, "/api/v1/query_exemplars", query_exemplars) for m in both),
        *(Route(m, "/api/v1/format_query", format_query) for m in both),
    ]
    return routes
