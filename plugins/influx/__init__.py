"""InfluxDB line protocol: ``POST /write`` (v1) and ``POST /api/v2/write`` (v2).

What Telegraf, the InfluxDB client libraries and countless scripts send
(parsing: :mod:`agent.lineproto`). Query arguments: v1 ``db``,
``precision`` (``n``/``ns``, ``u``/``us``, ``ms``, ``s``, ``m``, ``h``); v2
``bucket``, ``org``, ``precision`` (``ns``, ``us``, ``ms``, ``s``); the
database (``db``, else ``bucket``) becomes the label ``db`` unless a line has
a ``db`` tag (``db_label`` renames or disables it), as VictoriaMetrics does.
``Content-Encoding: gzip`` is read; ``server.max_body_bytes`` caps the
decompressed body (413 past it).

Answers, InfluxDB's: 204 when everything was written (durably); 400 with
``{"code": "invalid", "message", "line", "errors": [{"line", "error"}],
"written"}`` when some lines are bad, the good ones written all the same; 413
over a size limit; 415 an unknown encoding; 429 (``Retry-After``) when the
store asks for back-off; 503 when it is closed. Routes are in the ``write``
auth group.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.plugin_api import (
    PRECISIONS,
    BackPressure,
    Batch,
    Field,
    Parser,
    ProtocolMetrics,
    Route,
    Schema,
    SeriesSink,
    StorageError,
    hookimpl,
    sink_fields,
)

if TYPE_CHECKING:
    from agent.plugin_api import AgentContext

SECTION = "ingest.influx"
SOURCE = "influx"
MAX_LISTED = 20  # bad lines listed in a 400 (all are counted)
V2_PRECISIONS = ("ns", "us", "ms", "s")


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /write and /api/v2/write."),
                "measurement_field_separator": Field(
                    str,
                    "_",
                    "Between measurement and field in a metric name (VictoriaMetrics' "
                    "-influxMeasurementFieldSeparator).",
                ),
                "db_label": Field(
                    str,
                    "db",
                    "Label set from the db (v1) or bucket (v2) argument; empty: none.",
                ),
                **sink_fields(
                    "Series ids remembered by key and field.", "Retry-After sent with 429."
                ),
            },
            help="InfluxDB line protocol receiver.",
        )
    }


def _error(status: int, message: str, code: str = "invalid", **extra: Any) -> web.Response:
    return web.json_response({"code": code, "message": message, **extra}, status=status)


async def read_body(request: web.Request) -> bytes:
    """The body, gunzipped: aiohttp decodes gzip and deflate itself, within
    ``server.max_body_bytes`` of decompressed data (so a small bomb stops there).

    Raises LookupError for an encoding we cannot read, ValueError for bad data.
    """
    enc = request.headers.get("Content-Encoding", "").strip().lower()
    if enc not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise LookupError(f"unsupported Content-Encoding {enc!r}; expected gzip or none")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - aiohttp's decoding errors have no common base
        raise ValueError(f"cannot read the {enc or 'plain'} body: {exc}") from None


def decode_lines(body: bytes) -> tuple[str, list[tuple[int, str]]]:
    """UTF-8 text; lines that are not UTF-8 are blanked (numbering kept) and listed."""
    try:
        return body.decode(), []
    except UnicodeDecodeError:
        pass
    lines, errors = [], []
    for n, raw in enumerate(body.split(b"\n"), 1):
        try:
            lines.append(raw.decode())
        except UnicodeDecodeError as exc:
            lines.append("")
            errors.append((n, f"not UTF-8 (byte {exc.start})"))
    return "\n".join(lines), errors


class InfluxReceiver:
    def __init__(self, ctx: AgentContext, clock: Any = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        cfg = ctx.plugin_config(SECTION)
        self.parser = Parser(cfg["measurement_field_separator"])
        self.sink = SeriesSink(ctx, SOURCE, cfg["series_cache_size"])
        self.m = ProtocolMetrics(ctx, SOURCE, "InfluxDB line-protocol input")

    async def write_v1(self, request: web.Request) -> web.Response:
        precision = request.query.get("precision", "") or "ns"
        if precision not in PRECISIONS:
            return _error(
                400, f"precision: expected one of n, ns, u, us, ms, s, m, h; found {precision!r}"
            )
        return await self._write(request, precision, request.query.get("db", ""))

    async def write_v2(self, request: web.Request) -> web.Response:
        precision = request.query.get("precision", "") or "ns"
        if precision not in V2_PRECISIONS:
            return _error(400, f"precision: expected one of ns, us, ms, s; found {precision!r}")
        return await self._write(request, precision, request.query.get("bucket", ""))

    async def _write(self, request: web.Request, precision: str, db: str) -> web.Response:
        cfg = self.ctx.plugin_config(SECTION)
        self.m.received.labels("request").inc()
        try:
            body = await read_body(request)
        except LookupError as exc:
            self.m.reject("bad_encoding")
            return _error(415, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            self.m.reject("too_large")
            return _error(413, exc.text or "request too large", code="request too large")
        except ValueError as exc:
            self.m.reject("bad_encoding")
            return _error(400, str(exc))
        text, errors = decode_lines(body)
        batch = self.parser.parse(text, int(self.clock() * 1000), precision)
        batch.errors = sorted(errors + batch.errors)
        self.m.received.labels("line").inc(batch.lines)
        self.m.received.labels("sample").inc(len(batch.keys))
        self.m.reject("invalid_line", len(batch.errors))
        self.m.reject("string_field", batch.strings_skipped)
        db_label = cfg["db_label"]
        extra = ((db_label, db),) if db_label and db else ()
        keys: Any = [(k, f, extra) for k, f in batch.keys] if extra else batch.keys
        try:
            written = await self.sink.write(
                keys,
                batch.timestamps,
                batch.values,
                lambda key: self.parser.labels((key[0], key[1]), extra),  # type: ignore[index]
                client=request.remote,
            )
        except BackPressure as exc:
            return web.json_response(
                {"code": "too many requests", "message": f"storage is busy: {exc}"},
                status=429,
                headers={"Retry-After": str(cfg["retry_after_seconds"])},
            )
        except (StorageError, RuntimeError) as exc:
            return _error(503, f"storage unavailable: {exc}", code="unavailable")
        return self._answer(batch, written)

    def _answer(self, batch: Batch, written: Any) -> web.Response:
        problems = [{"line": n, "error": why} for n, why in batch.errors[:MAX_LISTED]]
        for labels, why, count in written.refused_series:
            self.m.reject("series_refused", count)
            problems.append({"series": dict(labels), "error": f"new series refused: {why}"})
        for labels, ts, reason in written.refused_samples[:MAX_LISTED]:
            self.m.reject(reason)
            problems.append(
                {
                    "series": dict(labels),
                    "timestamp": ts,
                    "error": f"refused by the store: {reason}",
                }
            )
        if not problems:
            return web.Response(status=204)
        first = batch.errors[0] if batch.errors else None
        lines_bad = len(batch.errors)
        summary = (
            f"partial write: {written.accepted} samples written; {lines_bad} bad lines"
            f"{f' (first: line {first[0]}: {first[1]})' if first else ''}, "
            f"{written.refused} samples refused by the store"
        )
        body: dict[str, Any] = {
            "code": "invalid",
            "message": summary,
            "errors": problems,
            "written": written.accepted,
        }
        if first:
            body["line"] = first[0]
        return web.json_response(body, status=400)


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    r = InfluxReceiver(ctx)
    return [
        Route("POST", "/write", r.write_v1, "write", name="influx_write"),
        Route("POST", "/api/v2/write", r.write_v2, "write", name="influx_write_v2"),
    ]
