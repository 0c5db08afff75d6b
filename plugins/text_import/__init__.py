"""Prometheus text / OpenMetrics push: ``POST /api/v1/import/prometheus``.

As VictoriaMetrics serves it, and with its Pushgateway-style variant
``/api/v1/import/prometheus/metrics/job/<job>[/<label>/<value>...]`` whose path
pairs become labels, so scripts written for either keep working.

* Parsing: the scraper's strict parser (:mod:`agent.exposition`, through
  ``agent.plugin_api``), one sample line at a time, so one bad line is
  reported with its line number and the other lines are still written (the
  whole-document parsers stop at the first error).  The text format is used
  unless ``Content-Type`` is ``application/openmetrics-text``.
  Comment, ``# HELP``/``# TYPE``/``# UNIT`` and ``# EOF`` lines are skipped:
  sample names are stored exactly as sent (no ``_total`` munging).
* Timestamps are optional: a line without one gets the request's arrival
  time (one value for the whole request).  The text format's timestamps are
  milliseconds, OpenMetrics' seconds, as the formats define.
* ``extra_label=name=value`` (repeatable) adds or overrides a label on every
  sample, as in VictoriaMetrics; path labels of the Pushgateway form too.
* Storage: the live ``append`` path (durable, group-committed, out-of-order
  rules apply), because pushes are usually current values; ``backfill=true``
  sends the request through ``Store.backfill`` instead, for historical dumps.

Answers: see :mod:`agent.web.ingest` (200, or 400 listing lines; 413, 429, 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from agent.plugin_api import (
    METRIC_NAME,
    SMALL_BYTES,
    WEIGHT_TEXT,
    AgentContext,
    AppendResult,
    BackPressure,
    Field,
    ImportReport,
    Labels,
    MappingError,
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
    exposition,
    extra_labels_param,
    flag_param,
    fold_append_result,
    hookimpl,
    rejection_message,
    report_response,
    resolve_chunked,
    unavailable,
    valid_label_name,
    valid_metric_name,
)

SECTION = "ingest.prometheus_text"
SOURCE = "prometheus_text"
OPENMETRICS = "application/openmetrics-text"

Parsed = tuple[str, dict[str, str], float, int | None]  # name, labels, value, ms or None


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /api/v1/import/prometheus."),
                "max_errors": Field(
                    int,
                    100,
                    "Bad lines listed in a response (all are counted in errors_total).",
                    check=check_positive,
                ),
                "retry_after_seconds": Field(
                    int, 5, "Retry-After sent with 429.", check=check_non_negative
                ),
            },
            help="Prometheus text / OpenMetrics push endpoint.",
        )
    }


def _sample(rows: list[exposition.Row], labels_of: Callable[[str], dict[str, str]]) -> Parsed:
    if len(rows) != 1:
        raise ValueError("expected exactly one sample")
    series, value, ms = rows[0]
    labels = dict(labels_of(series))
    return labels.pop(METRIC_NAME), labels, value, ms


def _text_line(line: str) -> Parsed:
    return _sample(exposition.parse_text(line, number_lines=False), exposition.parse_series)


def _om_line(line: str) -> Parsed:
    page = exposition.parse_openmetrics(line + "\n# EOF\n")
    return _sample(page.rows, page.labels_of)


def parse_lines(
    lines: Iterable[str], parse: Callable[[str], Parsed], report: ImportReport
) -> list[tuple[int, Parsed]]:
    """(line number, sample) of every valid sample line; bad lines go to ``report``."""
    out: list[tuple[int, Parsed]] = []
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        report.received += 1
        try:
            parsed = parse(line)
        except Exception as exc:  # noqa: BLE001 - the parsers raise bare ValueError/others
            detail = str(exc) or type(exc).__name__
            report.add(Problem(no, None, f"cannot parse {line[:120]!r}: {detail}", kind="line"))
            report.rejected += 1
            continue
        name, labels, _, ms = parsed
        problem = None
        if ms is not None and not -(2**63) <= ms < 2**63:
            problem = f"timestamp {line.rsplit(maxsplit=1)[-1][:40]} is outside the int64 range"
        elif not valid_metric_name(name):
            problem = f"invalid metric name {name!r}"
        else:
            for k in labels:
                if not valid_label_name(k):
                    problem = f"invalid label name {k!r}"
                    break
        if problem:
            report.add(Problem(no, None, problem, kind="line"))
            report.rejected += 1
            continue
        out.append((no, parsed))
    return out


def path_labels(tail: str) -> dict[str, str]:
    """``<job>/<label>/<value>/...`` of the Pushgateway-style URL."""
    parts = [p for p in tail.split("/")]
    if not parts or not parts[0]:
        raise MappingError("the job name in the URL is empty")
    out = {"job": parts[0]}
    rest = parts[1:]
    if len(rest) % 2:
        raise MappingError("labels in the URL must come as /<name>/<value> pairs")
    for k, v in zip(rest[::2], rest[1::2], strict=True):
        if not valid_label_name(k) or k == METRIC_NAME:
            raise MappingError(f"invalid label name {k!r} in the URL")
        out[k] = v
    return out


class TextEndpoint:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    async def post(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config.section(SECTION)
        now = time.time_ns() // 1_000_000
        try:
            extra = extra_labels_param(request)
            tail = request.match_info.get("tail")
            if tail is not None:
                extra = {**path_labels(tail), **extra}
            as_backfill = flag_param(request, "backfill", False)
        except MappingError as exc:
            return bad_request(str(exc))
        body = await request.read()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return bad_request(f"body is not UTF-8: {exc}")
        media = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        parse = _om_line if media == OPENMETRICS else _text_line
        report = ImportReport()
        store = self.ctx.store
        if store is None:
            return unavailable("the store is not open yet")
        size = len(text)
        budget = self.ctx.ingest_budget
        cost = budget.claim(size, WEIGHT_TEXT)
        if cost is None:
            return busy(budget.busy_message(size), 1)
        try:
            if size >= SMALL_BYTES:  # ~15 us a line: parsed in a thread, the loop keeps serving
                prepared = await asyncio.to_thread(_prepare, text, parse, extra, now, report, store)
            else:
                prepared = _prepare(text, parse, extra, now, report, store)
            del text, body
            return await self._store(request, cfg, as_backfill, report, *prepared)
        finally:
            budget.release(cost)

    async def _store(
        self,
        request: web.Request,
        cfg: dict[str, Any],
        as_backfill: bool,
        report: ImportReport,
        valid: list[int],
        labels_list: list[Labels],
        ts: list[int],
        vals: list[float],
    ) -> web.Response:
        if valid:
            try:
                ids, refused = await resolve_chunked(self.ctx.require_store(), labels_list)
                if refused:
                    for pos, reason in refused.items():
                        report.add(
                            Problem(valid[pos], None, f"new series refused: {reason}", "line")
                        )
                    report.rejected += len(refused)
                    report.store_rejected += len(refused)
                    valid = [x for i, x in enumerate(valid) if i not in refused]
                    ts = [x for i, x in enumerate(ts) if i not in refused]
                    vals = [x for i, x in enumerate(vals) if i not in refused]
                    ids = [x for x in ids if x]
                result: AppendResult
                if as_backfill:
                    result = await self.ctx.backfill(
                        ids, ts, vals, source=SOURCE, client=request.remote
                    )
                    report.audit_id = getattr(result, "audit_id", None)
                else:
                    result = await self.ctx.append(
                        ids, ts, vals, source=SOURCE, client=request.remote
                    )
            except BackPressure as exc:
                return busy(str(exc), cfg["retry_after_seconds"])
            except (StorageError, RuntimeError) as exc:
                return unavailable(str(exc))
            report.series = len(set(ids))
            _apply(report, result, ids, ts, valid)
        count(self.ctx, SOURCE, report)
        return report_response(report, cfg["max_errors"])


def _prepare(
    text: str,
    parse: Callable[[str], Parsed],
    extra: dict[str, str],
    now: int,
    report: ImportReport,
    store: Store,
) -> tuple[list[int], list[Labels], list[int], list[float]]:
    """(line numbers, labels, timestamps, values) of a body's valid samples.

    Parses, labels and bound-checks (in a worker thread for large bodies).

    Bounds are checked before any series is created, so none is left
    without samples. Reads the store's index only.
    """
    parsed = parse_lines(text.splitlines(), parse, report)
    report.samples = len(parsed)
    # One label tuple per distinct series, shared by its lines: a body of 500,000
    # lines over 5,000 series holds 5,000 tuples, not 500,000.
    shared: dict[tuple[str, tuple[tuple[str, str], ...]], Labels] = {}
    labels_list: list[Labels] = []
    for _, (name, labels, _, _) in parsed:
        key = (name, tuple(labels.items()))
        found = shared.get(key)
        if found is None:
            pairs = {**labels, **extra, METRIC_NAME: name}
            found = shared[key] = tuple(sorted((k, v) for k, v in pairs.items() if v != ""))
        labels_list.append(found)
    ts = [now if p[3] is None else p[3] for _, p in parsed]
    vals = [p[2] for _, p in parsed]
    valid = [no for no, _ in parsed]
    del parsed, shared
    pre = {i: f"{why} (out_of_bounds)" for i, why in store.timestamp_problems(ts)}
    for i, why in store.label_problems(labels_list).items():
        pre.setdefault(i, f"new series refused: {why}")
    if pre:
        for i, why in sorted(pre.items()):
            report.add(Problem(valid[i], None, why, "line"))
        report.rejected += len(pre)
        report.store_rejected += len(pre)
        keep = [i for i in range(len(valid)) if i not in pre]
        valid = [valid[i] for i in keep]
        labels_list = [labels_list[i] for i in keep]
        ts = [ts[i] for i in keep]
        vals = [vals[i] for i in keep]
    return valid, labels_list, ts, vals


def _apply(
    report: ImportReport, result: AppendResult, ids: list[int], ts: list[int], lines: list[int]
) -> None:
    def problem(pos: int | None, r: Rejection) -> Problem:
        msg = rejection_message(r, "add backfill=true to import history")
        return Problem(lines[pos] if pos is not None else None, None, msg, kind="line")

    fold_append_result(report, result, ids, ts, problem)


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    ep = TextEndpoint(ctx)
    return [
        Route("POST", "/api/v1/import/prometheus", ep.post, "write", name="import_prometheus"),
        Route(
            "POST",
            "/api/v1/import/prometheus/metrics/job/{tail:.+}",
            ep.post,
            "write",
            name="import_prometheus_push",
        ),
    ]
