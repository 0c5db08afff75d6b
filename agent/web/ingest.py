"""What the push endpoints (CSV, JSON, Prometheus text) answer, in one place.

Why shared: a client scripting against several of them should see one
convention.  It follows this project's remote-write receiver (and Prometheus'
own remote-write handling): the valid part of a request is written, and any
part that was refused turns the answer into a 400 whose body says what was
written and what was not.

* ``200`` everything written: JSON report (``status: success``);
* ``400`` something refused (bad rows/items/lines, a conflicting value, or an
  abort): the same JSON report with ``status`` ``partial`` (the rest was
  written), ``error`` (nothing valid) or ``aborted`` (``on_error=abort``:
  nothing written), ``errors`` naming row/index/line and field; also for a
  request that cannot be read at all (``{"status": "error", "error": ...}``);
* ``413`` body over ``server.max_body_bytes`` (the core checks);
* ``429`` with ``Retry-After`` when the store asks for back-off (nothing written);
* ``503`` when the store is closed or failed.
"""

from __future__ import annotations

from aiohttp import web

from agent.context import AgentContext
from agent.dataio.importer import ImportReport, MappingError, parse_extra_labels
from agent.storage.backfill import ON_ERROR_CHOICES
from agent.storage.backfill import OnError as OnError

# Re-exported for the push plugins (they import this module, not the budget's).
from agent.web.ingest_budget import SMALL_BYTES as SMALL_BYTES
from agent.web.ingest_budget import WEIGHT_CSV as WEIGHT_CSV
from agent.web.ingest_budget import WEIGHT_JSON as WEIGHT_JSON
from agent.web.ingest_budget import WEIGHT_TEXT as WEIGHT_TEXT

REASON_INVALID = "invalid_input"
__all__ = [
    "SMALL_BYTES",
    "WEIGHT_CSV",
    "WEIGHT_JSON",
    "WEIGHT_TEXT",
    "OnError",
]  # for the push plugins, with the helpers below


def bad_request(message: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=400)


def busy(message: str, retry_after: int) -> web.Response:
    return web.json_response(
        {"status": "error", "error": f"storage is busy: {message}"},
        status=429,
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(message: str) -> web.Response:
    return web.json_response(
        {"status": "error", "error": f"storage unavailable: {message}"}, status=503
    )


def report_response(report: ImportReport, max_errors: int) -> web.Response:
    return web.json_response(report.to_dict(max_errors), status=200 if report.ok else 400)


def on_error_param(request: web.Request) -> OnError:
    value = request.query.get("on_error", "skip")
    if value == "skip":
        return "skip"
    if value == "abort":
        return "abort"
    raise MappingError(f"on_error: expected one of {ON_ERROR_CHOICES}, found {value!r}")


def extra_labels_param(request: web.Request) -> dict[str, str]:
    """VictoriaMetrics' ``extra_label=name=value`` query args (repeatable)."""
    return parse_extra_labels(request.query.getall("extra_label", []))


def flag_param(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise MappingError(f"{name}: expected true or false, found {value!r}")


def count(ctx: AgentContext, source: str, report: ImportReport) -> None:
    """Input refused before reaching the store, in ``tsagent_samples_rejected_total``.

    Samples the store saw are counted by ``ctx.append``/``ctx.backfill``.
    """
    refused = report.problems_total - report.store_rejected
    if refused > 0:
        ctx.metrics.samples_rejected.labels(source, REASON_INVALID).inc(refused)
