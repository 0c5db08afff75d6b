"""``POST /api/v1/import/csv``: CSV backfill through the running daemon.

The same parser and mapping as ``tsagent import-csv`` and
:func:`agent.dataio.importer.import_csv` (see :mod:`agent.dataio.importer`), so a file
imported by the command and the same file posted here give the same data and
the same report.  Two ways to describe the columns (exactly one per request):

* ``format=1:time:unix_s,2:label:host,3:metric:cpu``: VictoriaMetrics' column
  spec, so existing scripts work unchanged (``header=true`` skips a header
  line, which VictoriaMetrics itself does not have);
* ``mapping=<JSON>``: our mapping (the YAML file's content as JSON).

Also ``extra_label=name=value`` (repeatable) and ``on_error=skip|abort``.
Everything is one backfill: any timestamp, one transaction, audited with the
client address.  Answers are described in :mod:`agent.web.ingest`.

Configured under ``ingest.csv_import``; ``enabled`` takes effect at the next
start (routes are fixed then), the rest per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from agent.plugin_api import (
    WEIGHT_CSV,
    AgentContext,
    BackPressure,
    CsvMapping,
    Field,
    MappingError,
    OnError,
    Route,
    Schema,
    StorageError,
    bad_request,
    busy,
    check_non_negative,
    check_positive,
    count,
    extra_labels_param,
    flag_param,
    hookimpl,
    mapping_from_json,
    on_error_param,
    parse_csv_text,
    report_response,
    store_parsed,
    unavailable,
)

SECTION = "ingest.csv_import"
SOURCE = "csv_import"


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /api/v1/import/csv."),
                "max_errors": Field(
                    int,
                    100,
                    "Bad rows listed in a response (all are counted in errors_total).",
                    check=check_positive,
                ),
                "retry_after_seconds": Field(
                    int, 5, "Retry-After sent with 429.", check=check_non_negative
                ),
            },
            help="CSV import endpoint (a backfill: any timestamp, one transaction).",
        )
    }


class CsvEndpoint:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def _mapping(self, request: web.Request) -> CsvMapping:
        q = request.query
        spec, raw = q.get("format"), q.get("mapping")
        if (spec is None) == (raw is None):
            raise MappingError(
                "give exactly one of format=<VictoriaMetrics column spec> and mapping=<JSON>"
            )
        if spec is not None:
            mapping = CsvMapping.from_vm_format(spec, header=flag_param(request, "header", False))
        else:
            assert raw is not None
            mapping = mapping_from_json(raw)
        mapping.extra_labels.update(extra_labels_param(request))
        mapping.check_extra_labels()
        return mapping

    async def post(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config.section(SECTION)
        try:
            mapping = self._mapping(request)
            on_error = on_error_param(request)
        except MappingError as exc:
            return bad_request(str(exc))
        body = await request.read()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return bad_request(f"body is not UTF-8: {exc}")
        size = len(body)
        budget = self.ctx.ingest_budget
        cost = budget.claim(size, WEIGHT_CSV)
        if cost is None:
            return busy(budget.busy_message(size), 1)
        try:
            return await self._import(request, cfg, mapping, on_error, text)
        finally:
            budget.release(cost)

    async def _import(
        self,
        request: web.Request,
        cfg: dict[str, Any],
        mapping: CsvMapping,
        on_error: OnError,
        text: str,
    ) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            parsed = await loop.run_in_executor(None, parse_csv_text, text, mapping)
        except MappingError as exc:
            return bad_request(str(exc))
        try:
            report = await store_parsed(
                self.ctx.require_store(),
                parsed,
                on_error=on_error,
                source=SOURCE,
                client=request.remote,
                backfill=self.ctx.backfill,
            )
        except BackPressure as exc:
            return busy(str(exc), cfg["retry_after_seconds"])
        except (StorageError, RuntimeError) as exc:
            return unavailable(str(exc))
        count(self.ctx, SOURCE, report)
        return report_response(report, cfg["max_errors"])


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    endpoint = CsvEndpoint(ctx)
    return [Route("POST", "/api/v1/import/csv", endpoint.post, "write", name="import_csv")]
