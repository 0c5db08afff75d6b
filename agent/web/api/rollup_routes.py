"""``GET /query/rollup`` and ``GET /query/raw``: buckets and raw samples of one metric.

The simple JSON endpoints of the service tsagent replaces, kept so that its
scripts and dashboards work unchanged: ``metric_name`` plus optional
``match[]`` selectors (all must match), ``start_time``/``end_time`` as RFC 3339
or Unix seconds. ``/query/rollup`` answers per series the windows
``[t, t + window)`` (``t`` a multiple of ``window``) overlapping the range,
each with ``min``/``max``/``avg``/``sum``/``count``/``last``; it reads the
coarsest rollup whose resolution divides ``window`` and computes from raw
samples what is not rolled up yet (or everything, when no resolution
divides the window), so the answer always reflects every committed sample.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web
from multidict import MultiDictProxy

from agent.context import Route
from agent.model import METRIC_NAME, STALE_NAN_BITS, Matcher
from agent.query.engine import MAX_POINTS
from agent.query.numfmt import json_number
from agent.query.rollup_select import format_resolution
from agent.query.timezone import DstRule
from agent.storage.rollup import Buckets, SeriesBuckets, compute_buckets

from .envelope import ApiError, bad_param, duration_param, form, success, time_param
from .routes import _selector, _service, api

if TYPE_CHECKING:
    from agent.storage import Store

DEFAULT_RANGE_MS = 3_600_000


def _matchers(params: MultiDictProxy[str]) -> list[list[Matcher]]:
    """One matcher list per ``match[]`` (each AND-ed with ``metric_name``)."""
    name = params.get("metric_name", "")
    base = [Matcher.of(METRIC_NAME, "=", name)] if name else []
    selectors = params.getall("match[]", [])
    if not name and not selectors:
        raise bad_param("metric_name", "give metric_name and/or match[]")
    if not selectors:
        return [base]
    return [base + _selector(text) for text in selectors]


def _ids(store: Store, params: MultiDictProxy[str]) -> list[int]:
    """Series selected by ``metric_name`` and every ``match[]`` selector."""
    found: set[int] | None = None
    for matchers in _matchers(params):
        ids = set(store.match_series(matchers))
        found = ids if found is None else found & ids
    return sorted(found or ())


def _times(params: MultiDictProxy[str]) -> tuple[int, int]:
    now = time.time_ns() // 1_000_000
    end = time_param(params, "end_time", now, None, DstRule.REJECT)
    start = time_param(params, "start_time", end - DEFAULT_RANGE_MS, None, DstRule.REJECT)
    if end < start:
        raise bad_param("end_time", "end_time must not be before start_time")
    return start, end


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def windows_of(bk: Buckets, window: int) -> Buckets:
    """Whole buckets of one series merged into ``[t, t + window)`` windows (window % res == 0)."""
    if not len(bk):
        return bk
    key = (bk.start // window) * window
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    ends = np.append(starts[1:], len(bk))
    with np.errstate(invalid="ignore", over="ignore"):
        return Buckets(
            start=key[starts],
            count=np.add.reduceat(bk.count, starts),
            min=np.fmin.reduceat(bk.min, starts),
            max=np.fmax.reduceat(bk.max, starts),
            sum=np.add.reduceat(bk.sum, starts),
            first=bk.first[starts],
            last=bk.last[ends - 1],
            first_t=bk.first_t[starts],
            last_t=bk.last_t[ends - 1],
            integral=np.logical_and.reduceat(bk.integral, starts),
        )


def _bucket_json(bk: Buckets) -> list[dict[str, Any]]:
    out = []
    for i in range(len(bk)):
        count = int(bk.count[i])
        total = float(bk.sum[i])
        out.append(
            {
                "timestamp": int(bk.start[i]) / 1000,
                "time": _iso(int(bk.start[i])),
                "min": json_number(float(bk.min[i])),
                "max": json_number(float(bk.max[i])),
                "avg": json_number(total / count),
                "sum": json_number(total),
                "count": count,
                "last": json_number(float(bk.last[i])),
            }
        )
    return out


@api
async def query_rollup(request: web.Request) -> web.StreamResponse:
    params = await form(request)
    store, service = _service(request)
    start, end = _times(params)
    manager = store.rollups
    window = duration_param(params, "window")
    if window is None:
        window = min(manager.resolutions) if manager is not None else 60_000
    if window <= 0:
        raise bad_param("window", "window must be positive")
    lo = (start // window) * window
    hi = (end // window) * window + window
    if (hi - lo) // window > MAX_POINTS:
        raise ApiError("bad_data", f"more than {MAX_POINTS} windows per series; widen the window")
    ids = _ids(store, params)
    usable = [r for r in (manager.resolutions if manager else ()) if window % r == 0]
    series: list[dict[str, Any]] = []
    if manager is not None and usable:
        res = max(usable)
        sb: SeriesBuckets = await manager.effective(res, ids, lo, hi)
        source = f"rollup:{format_resolution(res)}"
        for i, labels in enumerate(sb.labels):
            part = sb.buckets.take(np.arange(sb.offsets[i], sb.offsets[i + 1]))
            buckets = _bucket_json(windows_of(part, window))
            series.append({"labels": dict(labels), "buckets": buckets})
    else:
        source = "raw"
        found = await store.read_many(ids, lo, hi - 1)
        loaded = sum(int(t.size) for _, t, _ in found)
        if loaded > service.options.max_samples:
            raise ApiError("execution", "the range holds too many raw samples; use a rollup window")
        rows = [(store.labels(sid), compute_buckets(t, v, window)) for sid, t, v in found]
        for labels, bk in sorted(rows, key=lambda r: r[0]):
            if len(bk):
                series.append({"labels": dict(labels), "buckets": _bucket_json(bk)})
    return success(
        {
            "metric_name": params.get("metric_name", ""),
            "window": format_resolution(window),
            "window_seconds": window / 1000,
            "start_time": _iso(start),
            "end_time": _iso(end),
            "source": source,
            "series": series,
        }
    )


@api
async def query_raw(request: web.Request) -> web.StreamResponse:
    """Raw samples (staleness markers left out) of the selected series in [start, end]."""
    params = await form(request)
    store, service = _service(request)
    start, end = _times(params)
    ids = _ids(store, params)
    found = await store.read_many(ids, start, end)
    if sum(int(t.size) for _, t, _ in found) > service.options.max_samples:
        raise ApiError("execution", "the range holds more than query.max_samples samples")
    series = []
    for sid, t, v in sorted(found, key=lambda r: store.labels(r[0])):
        keep = v.view(np.uint64) != np.uint64(STALE_NAN_BITS)
        ts, vals = t[keep], v[keep]
        if ts.size:
            samples = [
                [tt / 1000, json_number(vv)]
                for tt, vv in zip(ts.tolist(), vals.tolist(), strict=True)
            ]
            series.append({"labels": dict(store.labels(sid)), "samples": samples})
    return success(
        {
            "metric_name": params.get("metric_name", ""),
            "start_time": _iso(start),
            "end_time": _iso(end),
            "series": series,
        }
    )


ROUTES = [
    Route("GET", "/query/rollup", query_rollup, "read"),
    Route("GET", "/query/raw", query_raw, "read"),
]
