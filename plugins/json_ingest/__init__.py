"""JSON push: ``POST /metrics/ingest`` (one sample) and ``POST /backfill/import`` (a list).

The two endpoints of the service this project grew from, kept so its clients
keep working.  One sample is an object::

    {"metric_name": "room_temperature_celsius", "value": 21.5,
     "timestamp": "2024-03-31T02:30:00+02:00", "labels": {"room": "lab"}}

* ``metric_name``: a Prometheus metric name;
* ``value``: a JSON number, or the strings ``"NaN"``, ``"+Inf"``, ``"-Inf"``
  (JSON has no literals for them);
* ``timestamp``: RFC 3339 with an offset (``Z`` or ``±hh:mm``); required,
  because a sample without a time is ambiguous for an import;
* ``labels``: optional object of label name → string value.
Unknown keys are errors, so a typo (``"timestmap"``) is reported rather than
silently ignored.

``/metrics/ingest`` is the live path: it goes through ``append`` like
remote-write (durable, group-committed, out-of-order rules apply).
``/backfill/import`` takes a JSON list (or ``{"metrics": [...]}``, the metrics
service's shape, or ``{"items": [...]}``) and goes
through ``Store.backfill``: any timestamp, one transaction, one audit row,
``on_error=skip|abort``.  Every validation error names the item index and
field, e.g. ``items[3].timestamp: expected RFC 3339 ...``; valid items are
kept (unless ``on_error=abort``).  Answers: see :mod:`agent.web.ingest`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from agent.plugin_api import (
    METRIC_NAME,
    SMALL_BYTES,
    WEIGHT_JSON,
    AgentContext,
    AppendResult,
    BackPressure,
    Field,
    ImportReport,
    Labels,
    MappingError,
    OnError,
    Problem,
    Rejection,
    Route,
    Schema,
    StorageError,
    Store,
    bad_request,
    busy,
    check_non_negative,
    check_positive,
    count,
    fold_append_result,
    hookimpl,
    on_error_param,
    parse_rfc3339,
    rejection_message,
    report_response,
    resolve_chunked,
    unavailable,
    valid_label_name,
    valid_metric_name,
)

SECTION = "ingest.json"
SOURCE_INGEST = "json_ingest"
SOURCE_BACKFILL = "json_backfill"
KEYS = ("metric_name", "value", "timestamp", "labels")
_SPECIAL = {"nan": math.nan, "+inf": math.inf, "inf": math.inf, "-inf": -math.inf}


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /metrics/ingest and /backfill/import."),
                "max_items": Field(
                    int,
                    1_000_000,
                    "Largest list /backfill/import accepts (server.max_body_bytes applies too).",
                    check=check_positive,
                ),
                "max_body_bytes": Field(
                    int,
                    16 * 1024 * 1024,
                    "Largest body either endpoint accepts (413 beyond): parsed JSON takes\n"
                    "about 22 times its size in memory.",
                    check=check_positive,
                ),
                "max_errors": Field(
                    int,
                    100,
                    "Invalid items listed in a response (all are counted in errors_total).",
                    check=check_positive,
                ),
                "retry_after_seconds": Field(
                    int, 5, "Retry-After sent with 429.", check=check_non_negative
                ),
            },
            help="JSON sample push (single sample, and a list as a backfill).",
        )
    }


Sample = tuple[Labels, int, float]


def validate_item(item: Any, index: int | None) -> Sample | list[Problem]:
    """One sample, or every problem found in it (each naming its field)."""
    problems: list[Problem] = []

    def bad(field: str | None, message: str) -> None:
        problems.append(Problem(index, field, message, kind="item"))

    if not isinstance(item, dict):
        bad(None, f"expected an object with {', '.join(KEYS)}, found {type(item).__name__}")
        return problems
    for key in item:
        if key not in KEYS:
            bad(str(key), f"unknown field; expected {', '.join(KEYS)}")
    name = item.get("metric_name")
    if not isinstance(name, str) or not valid_metric_name(name):
        found = "missing" if "metric_name" not in item else repr(name)
        bad("metric_name", f"expected a metric name like http_requests_total, found {found}")
    value = item.get("value")
    number = 0.0
    if isinstance(value, bool) or value is None:
        bad("value", f"expected a number, found {'missing' if 'value' not in item else value!r}")
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower() in _SPECIAL:
        number = _SPECIAL[value.strip().lower()]
    else:
        bad("value", f"expected a number (or 'NaN', '+Inf', '-Inf'), found {value!r}")
    ts = item.get("timestamp")
    ms = 0
    if not isinstance(ts, str):
        found = "missing" if "timestamp" not in item else repr(ts)
        bad("timestamp", f"expected an RFC 3339 string like 2024-01-31T12:00:00Z, found {found}")
    else:
        try:
            ms = parse_rfc3339(ts)
        except ValueError as exc:
            bad("timestamp", str(exc))
    labels = item.get("labels", {})
    pairs: dict[str, str] = {}
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        bad("labels", f"expected an object of label: value, found {type(labels).__name__}")
    else:
        for k, v in labels.items():
            if not valid_label_name(k) or k == METRIC_NAME:
                bad(f"labels.{k}", "not a valid label name (use metric_name for the name)")
            elif not isinstance(v, str):
                bad(f"labels.{k}", f"expected a string value, found {v!r}")
            elif v:
                pairs[k] = v
    if problems:
        return problems
    pairs[METRIC_NAME] = str(name)
    return tuple(sorted(pairs.items())), ms, number


def _parse_backfill(
    raw: bytes, max_items: int, store: Store
) -> str | tuple[ImportReport, list[Sample], list[int]]:
    """Parse and validate a backfill body: (report, samples, item indices) or an error.

    Bounds are checked here, before any series is created, so none is left
    without samples. Reads the store's index only (runs in a worker thread
    for large bodies).
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"body is not valid JSON: {exc}"
    except RecursionError:
        return "body is not valid JSON: nested too deeply"
    # The metrics service's own clients send {"metrics": [...]}.
    if isinstance(body, dict) and len(body) == 1 and set(body) <= {"items", "metrics"}:
        body = next(iter(body.values()))
    if not isinstance(body, list):
        return 'expected a JSON list of samples (or {"metrics": [...]} or {"items": [...]})'
    if len(body) > max_items:
        return f"{len(body)} items exceed {SECTION}.max_items ({max_items})"
    report = ImportReport(received=len(body))
    samples: list[Sample] = []
    indices: list[int] = []
    for i, item in enumerate(body):
        checked = validate_item(item, i)
        if isinstance(checked, list):
            report.rejected += 1
            for p in checked:
                report.add(p)
        else:
            samples.append(checked)
            indices.append(i)
    pre = {
        pos: f"{why} (out_of_bounds)"
        for pos, why in store.timestamp_problems([s[1] for s in samples])
    }
    for pos, why in store.label_problems([s[0] for s in samples]).items():
        pre.setdefault(pos, why)
    if pre:
        for pos, why in sorted(pre.items()):
            field = "timestamp" if why.endswith("(out_of_bounds)") else "labels"
            report.add(Problem(indices[pos], field, why, "item"))
        report.rejected += len(pre)
        report.store_rejected += len(pre)
        samples = [x for i, x in enumerate(samples) if i not in pre]
        indices = [x for i, x in enumerate(indices) if i not in pre]
    return report, samples, indices


def too_large(size: int, limit: int) -> web.Response:
    return web.json_response(
        {
            "status": "error",
            "error": f"body of {size} bytes exceeds {SECTION}.max_body_bytes ({limit})",
        },
        status=413,
    )


class JsonEndpoints:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def _body(self, request: web.Request) -> Any:
        limit = self.ctx.config.section(SECTION)["max_body_bytes"]
        if (request.content_length or 0) > limit:
            raise MappingError(f"body of {request.content_length} bytes exceeds {limit}")
        raw = await request.read()
        if len(raw) > limit:
            raise MappingError(f"body of {len(raw)} bytes exceeds {SECTION}.max_body_bytes {limit}")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MappingError(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise MappingError("body is not valid JSON: nested too deeply") from None

    async def ingest(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config.section(SECTION)
        try:
            body = await self._body(request)
        except MappingError as exc:
            return bad_request(str(exc))
        report = ImportReport(received=1)
        checked = validate_item(body, None)
        if isinstance(checked, list):
            for p in checked:
                report.add(p)
            report.rejected = 1
            count(self.ctx, SOURCE_INGEST, report)
            return report_response(report, cfg["max_errors"])
        labels, ms, value = checked
        store = self.ctx.store
        if store is None:
            return unavailable("the store is not open yet")
        for _pos, why in store.timestamp_problems([ms]):
            report.add(Problem(None, "timestamp", f"{why} (out_of_bounds)", "item"))
            report.rejected = report.store_rejected = 1
            count(self.ctx, SOURCE_INGEST, report)
            return report_response(report, cfg["max_errors"])
        try:
            [sid], refused = await self.ctx.require_store().resolve_series([labels])
            if refused:
                report.add(Problem(None, "labels", f"new series refused: {refused[0]}", "item"))
                report.rejected = report.store_rejected = 1
                count(self.ctx, SOURCE_INGEST, report)
                return report_response(report, cfg["max_errors"])
            result = await self.ctx.append(
                [sid], [ms], [value], source=SOURCE_INGEST, client=request.remote
            )
        except BackPressure as exc:
            return busy(str(exc), cfg["retry_after_seconds"])
        except (StorageError, RuntimeError) as exc:
            return unavailable(str(exc))
        report.samples = 1
        report.series = 1  # as the text push: the series this request wrote to, new or not
        _apply(report, result, [None])
        return report_response(report, cfg["max_errors"])

    async def backfill(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config.section(SECTION)
        try:
            on_error = on_error_param(request)
        except MappingError as exc:
            return bad_request(str(exc))
        limit = cfg["max_body_bytes"]
        if (request.content_length or 0) > limit:
            return too_large(request.content_length or 0, limit)
        raw = await request.read()
        store = self.ctx.store
        if store is None:
            return unavailable("the store is not open yet")
        size = len(raw)
        if size > limit:
            return too_large(size, limit)
        budget = self.ctx.ingest_budget
        cost = budget.claim(size, WEIGHT_JSON)
        if cost is None:
            return busy(budget.busy_message(size), 1)
        try:
            if size >= SMALL_BYTES:  # parsed and checked in a thread: the loop keeps serving
                parsed = await asyncio.to_thread(_parse_backfill, raw, cfg["max_items"], store)
            else:
                parsed = _parse_backfill(raw, cfg["max_items"], store)
            del raw
            if isinstance(parsed, str):
                return bad_request(parsed)
            return await self._backfill(request, cfg, on_error, *parsed)
        finally:
            budget.release(cost)

    async def _backfill(
        self,
        request: web.Request,
        cfg: dict[str, Any],
        on_error: OnError,
        report: ImportReport,
        samples: list[Sample],
        indices: list[int],
    ) -> web.Response:
        report.samples = len(samples)
        if on_error == "abort" and report.problems_total:
            report.aborted = True
            count(self.ctx, SOURCE_BACKFILL, report)
            return report_response(report, cfg["max_errors"])
        if samples:
            try:
                store = self.ctx.require_store()
                labels = [s[0] for s in samples]
                new: list[Labels] = []
                if on_error == "abort":
                    # All or nothing, series included: the backfill creates the new series
                    # in its own transaction, so an import that aborts leaves none behind.
                    keys, new = await store.series_keys(labels)
                    ids = keys.tolist()
                    refused: dict[int, str] = {}
                else:
                    ids, refused = await resolve_chunked(store, labels)
                if refused:
                    _refused(report, indices, refused)
                    if on_error == "abort":
                        report.aborted = True
                        return report_response(report, cfg["max_errors"])
                    samples = [x for i, x in enumerate(samples) if i not in refused]
                    indices = [x for i, x in enumerate(indices) if i not in refused]
                    ids = [x for x in ids if x]
                result = await self.ctx.backfill(
                    ids,
                    [s[1] for s in samples],
                    [s[2] for s in samples],
                    source=SOURCE_BACKFILL,
                    client=request.remote,
                    on_error=on_error,
                    new_series=new,
                )
                if result.refused_series:
                    why = result.refused_series
                    _refused(report, indices, {p: why[k] for p, k in enumerate(ids) if k in why})
                    report.aborted = True
                    count(self.ctx, SOURCE_BACKFILL, report)
                    return report_response(report, cfg["max_errors"])
            except BackPressure as exc:
                return busy(str(exc), cfg["retry_after_seconds"])
            except (StorageError, RuntimeError) as exc:
                return unavailable(str(exc))
            report.aborted = result.aborted
            report.audit_id = result.audit_id
            report.series = result.series
            _apply(report, result, indices, ids, [s[1] for s in samples])
        count(self.ctx, SOURCE_BACKFILL, report)
        return report_response(report, cfg["max_errors"])


def _refused(report: ImportReport, indices: Sequence[int], refused: Mapping[int, str]) -> None:
    """Items whose new series a label or cardinality limit refused."""
    for pos, reason in refused.items():
        msg = f"new series refused: {reason}"
        report.add(Problem(indices[pos], "labels", msg, "item"))
    report.rejected += len(refused)
    report.store_rejected += len(refused)


def _apply(
    report: ImportReport,
    result: AppendResult,
    indices: Sequence[int | None],
    ids: Sequence[int] | None = None,
    timestamps: Sequence[int] | None = None,
) -> None:
    """Fold the store's answer into the report; refused samples named by item index."""

    def problem(pos: int | None, r: Rejection) -> Problem:
        idx = indices[pos] if pos is not None else (indices[0] if len(indices) == 1 else None)
        msg = rejection_message(r, "send history to POST /backfill/import")
        return Problem(idx, "timestamp", msg, kind="item")

    fold_append_result(report, result, ids or [], timestamps or [], problem)


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    ep = JsonEndpoints(ctx)
    return [
        Route("POST", "/metrics/ingest", ep.ingest, "write", name="json_ingest"),
        Route("POST", "/backfill/import", ep.backfill, "write", name="json_backfill"),
    ]
