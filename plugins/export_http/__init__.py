"""Data out over HTTP: exports, federation, live streams and joins (all in the ``read`` group).

* ``GET /api/v1/export/csv``: raw samples as CSV (:mod:`agent.dataio.export`), streamed
  chunk by chunk; ``match[]`` (repeatable, default every series), ``start``/
  ``end`` (RFC 3339 or Unix seconds), ``time_format=rfc3339|unix_ms|unix_s``,
  ``tz`` (IANA zone of RFC 3339 timestamps, default UTC). The answer imports
  back through ``POST /api/v1/import/csv`` with the ``format`` spec in the
  ``X-Tsagent-Import-Format`` header (and ``header=true``).
* ``GET /api/v1/export``: VictoriaMetrics JSON lines, same ``match[]``/``start``/``end``.
* ``GET /federate?match[]=...``: the newest sample of every matching series
  within the query lookback (``query.lookback_delta``), in the Prometheus text
  format with ``# TYPE <name> untyped`` lines and millisecond timestamps, as
  Prometheus's own ``/federate``; series whose newest sample is a staleness
  marker are left out. Scrape it with ``honor_labels: true`` so the original
  ``job``/``instance`` labels survive.
* ``GET /api/v1/stream?match[]=...``: committed samples live, as Server-Sent
  Events (default) or, on a WebSocket upgrade, as JSON messages
  (:mod:`agent.dataio.stream`). Events: ``subscribed`` (once, with the number of
  series matched so far), ``samples`` (``{"resultType":"matrix","result":[...]}``
  as in the query API, values as strings, times in seconds), ``lagged``
  (``{"dropped": N, "message": "lagged, N samples dropped"}``) when the
  client fell more than ``export_http.stream_buffer_samples`` behind.
  SSE sends a comment line every ``export_http.stream_heartbeat`` so proxies keep
  the connection open and a vanished client is noticed.
* ``GET /api/v1/stream/query?query=...&interval=...``: the query's instant
  result (the ``/api/v1/query`` response object, event ``result``) now and
  whenever samples of a series it reads are committed, at most once per
  ``interval`` (default and minimum ``export_http.stream_query_min_interval``).
* ``GET /api/v1/join``: aligned rows of several series (:mod:`agent.dataio.join`):
  ``id`` (repeatable) and/or ``match[]`` (repeatable; ids first, in the order
  given, then matches in label order; the first series is the primary),
  ``start``/``end``, ``join=inner|left|outer|asof``, ``tolerance`` and
  ``step`` (durations), ``fill=null|previous|linear``, ``format=json|csv``
  (CSV also takes ``time_format`` and ``tz``).

Disconnects clean up: a stream's subscription, and with the last one the
store's sample listener, is removed when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from multidict import MultiMapping

from agent.plugin_api import (
    FILLS,
    JOIN_TYPES,
    STALE_NAN_BITS,
    TIME_FORMATS,
    AgentContext,
    ExportError,
    Field,
    JoinError,
    Lagged,
    QueryError,
    Route,
    SampleBatch,
    Schema,
    Selection,
    Subscription,
    api_errors,
    check_duration,
    check_positive,
    export_csv,
    export_jsonl,
    failure,
    format_value,
    hookimpl,
    import_spec,
    join_series,
    label_columns,
    live_query,
    metric_name,
    parse_duration,
    parse_duration_param,
    parse_selector,
    parse_time,
    select_series,
    text_number,
)

SECTION = "export_http"

Event = tuple[str, dict[str, Any]] | None  # (event name, payload); None: an idle tick

log = logging.getLogger(__name__)


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "stream_buffer_samples": Field(
                    int,
                    10_000,
                    "Samples a live stream buffers for a slow client before dropping the"
                    " oldest (the client then gets a 'lagged' event).",
                    check=check_positive,
                ),
                "stream_heartbeat": Field(
                    str,
                    "15s",
                    "Keep-alive comment interval of Server-Sent Events streams.",
                    check=check_duration,
                ),
                "stream_query_min_interval": Field(
                    str,
                    "1s",
                    "Shortest re-evaluation interval of /api/v1/stream/query (also its default).",
                    check=check_duration,
                ),
                "join_max_series": Field(
                    int, 100, "Series one /api/v1/join request may join.", check=check_positive
                ),
                "join_max_rows": Field(
                    int,
                    1_000_000,
                    "Rows one /api/v1/join answer may have (an error beyond).",
                    check=check_positive,
                ),
            },
            help="Exports, /federate, live streams and joins (GET endpoints, group read).",
        )
    }


# Connection checks while a stream is idle: a vanished client is noticed this fast.
IDLE_CHECK_S = 0.5


class BadRequest(Exception):
    pass


def _time(params: MultiMapping[str], name: str) -> int | None:
    text = params.get(name, "")
    if not text:
        return None
    try:
        return parse_time(text)
    except (ValueError, QueryError) as exc:
        raise BadRequest(f'invalid parameter "{name}": {exc}') from None


def _duration(params: MultiMapping[str], name: str) -> int | None:
    text = params.get(name, "")
    if not text:
        return None
    try:
        return parse_duration_param(text)
    except QueryError:
        raise BadRequest(
            f'invalid parameter "{name}": cannot parse {text!r} as a duration'
        ) from None


def _flag(params: MultiMapping[str], name: str, default: bool) -> bool:
    value = params.get(name, "").lower()
    if value == "":
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise BadRequest(f'invalid parameter "{name}": expected true or false, found {value!r}')


def _matches(params: MultiMapping[str], *, required: bool) -> list[str]:
    found = params.getall("match[]", [])
    if required and not found:
        raise BadRequest("no match[] parameter provided")
    for m in found:
        try:
            parse_selector(m)
        except ExportError as exc:
            raise BadRequest(f'invalid parameter "match[]": {exc}') from None
    return found


class Endpoints:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def cfg(self) -> dict[str, Any]:
        return self.ctx.config.section(SECTION)

    def wrap(
        self, fn: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return api_errors(
            fn, bad_data=(BadRequest, ExportError, JoinError), unavailable=(RuntimeError,)
        )

    # --- exports -----------------------------------------------------------------------

    async def _stream_text(
        self, request: web.Request, pieces: AsyncIterator[str], content_type: str, headers: Any
    ) -> web.StreamResponse:
        # Pull the first piece before answering, so argument errors still get a 400.
        first = await anext(pieces, None)
        resp = web.StreamResponse(headers={"Content-Type": content_type, **headers})
        resp.enable_compression()
        try:
            await resp.prepare(request)
            if first is not None:
                await resp.write(first.encode())
            async for piece in pieces:
                await resp.write(piece.encode())
            await resp.write_eof()
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError included
            # The client went away mid-export: its choice, not our fault, so no ERROR
            # with a traceback (issue 13); the generator is closed, its reads stop.
            log.info("export to %s ended early: client disconnected (%s)", request.remote, exc)
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()
        return resp

    async def export_csv(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        store = self.ctx.require_store()
        matches = _matches(q, required=False) or None
        fmt = q.get("time_format", "rfc3339")
        if fmt not in TIME_FORMATS:
            raise BadRequest(f'invalid parameter "time_format": expected one of {TIME_FORMATS}')
        names = label_columns(store, select_series(store, None, matches))
        pieces = export_csv(
            store,
            None,
            _time(q, "start"),
            _time(q, "end"),
            matches,
            time_format=fmt,
            timezone=q.get("tz") or None,
            neutralize_formulas=_flag(q, "neutralize_formulas", True),
        )
        headers = {
            "Content-Disposition": 'attachment; filename="tsagent-export.csv"',
            "X-Tsagent-Import-Format": import_spec(names, fmt),
        }
        return await self._stream_text(request, pieces, "text/csv; charset=utf-8", headers)

    async def export_jsonl(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        store = self.ctx.require_store()
        matches = _matches(q, required=False) or None
        pieces = export_jsonl(store, None, _time(q, "start"), _time(q, "end"), matches)
        return await self._stream_text(request, pieces, "application/stream+json", {})

    # --- federation --------------------------------------------------------------------

    async def federate(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        store = self.ctx.require_store()
        matches = _matches(q, required=False)
        lookback = int(self.ctx.config.duration("query.lookback_delta") * 1000)
        now = time.time_ns() // 1_000_000
        ids = select_series(store, None, matches) if matches else []
        lines: list[str] = []
        last_name: str | None = None
        # Label order puts each metric name's series together: one TYPE line per name.
        for start in range(0, len(ids), 500):
            for sid, t, v in await store.read_many(ids[start : start + 500], now - lookback, now):
                if v.view(np.uint64)[-1] == np.uint64(STALE_NAN_BITS):
                    continue
                labels = store.labels(sid)
                name = metric_name(labels)
                if name != last_name:
                    lines.append(f"# TYPE {name} untyped")
                    last_name = name
                rest = ",".join(f'{k}="{_escape(val)}"' for k, val in labels if k != "__name__")
                series = f"{name}{{{rest}}}" if rest else name
                lines.append(f"{series} {text_number(float(v[-1]))} {int(t[-1])}")
        body = "\n".join(lines) + ("\n" if lines else "")
        return web.Response(
            text=body, content_type="text/plain", charset="utf-8", headers={"Vary": "Accept"}
        )

    # --- live streams ------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        store = self.ctx.require_store()
        matches = _matches(q, required=True)
        alternatives = [parse_selector(m) for m in matches]
        sub = Subscription(
            self.ctx.streams,
            Selection(store, None, alternatives),
            self.cfg()["stream_buffer_samples"],
        )

        async def events() -> AsyncGenerator[Event, None]:
            try:
                yield "subscribed", {"series": sub.selection.count}
                while True:
                    item = await sub.next_batch(timeout=IDLE_CHECK_S)
                    if item is None:
                        if sub.closed:
                            return
                        yield None
                    elif isinstance(item, Lagged):
                        yield "lagged", {"dropped": item.dropped, "message": item.message}
                    else:
                        yield "samples", _matrix(store, item)
            finally:
                sub.close()

        return await self._serve(request, events())

    async def stream_query(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        self.ctx.require_store()  # 503 before the store is open
        expr = q.get("query", "")
        if not expr:
            raise BadRequest('invalid parameter "query": empty query')
        floor = parse_duration(self.cfg()["stream_query_min_interval"])
        asked = _duration(q, "interval")
        interval = floor if asked is None else max(asked / 1000, floor)
        results = live_query(
            self.ctx.streams, self.ctx.queries, expr, interval, idle_tick_s=IDLE_CHECK_S
        )
        try:
            first = await anext(results)  # a parse error becomes a 400 here
        except QueryError:
            await results.aclose()
            raise

        async def events() -> AsyncGenerator[Event, None]:
            try:
                yield "result", first  # type: ignore[misc]
                async for res in results:
                    yield None if res is None else ("result", res)
            finally:
                await results.aclose()

        return await self._serve(request, events())

    async def _serve(
        self, request: web.Request, events: AsyncGenerator[Event, None]
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=parse_duration(self.cfg()["stream_heartbeat"]))
        if ws.can_prepare(request).ok:
            return await self._serve_ws(request, ws, events)
        return await self._serve_sse(request, events)

    async def _serve_sse(
        self, request: web.Request, events: AsyncGenerator[Event, None]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        heartbeat = parse_duration(self.cfg()["stream_heartbeat"])
        last_write = time.monotonic()
        try:
            async for ev in events:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if ev is None:
                    if time.monotonic() - last_write < heartbeat:
                        continue
                    await resp.write(b": keep-alive\n\n")
                else:
                    name, payload = ev
                    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
                    await resp.write(f"event: {name}\ndata: {data}\n\n".encode())
                last_write = time.monotonic()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            await events.aclose()
        return resp

    async def _serve_ws(
        self, request: web.Request, ws: web.WebSocketResponse, events: AsyncGenerator[Event, None]
    ) -> web.WebSocketResponse:
        await ws.prepare(request)

        async def drain() -> None:
            async for msg in ws:  # nothing is expected from the client; close ends the loop
                if msg.type == WSMsgType.ERROR:
                    return

        reader = asyncio.create_task(drain())
        try:
            async for ev in events:
                if reader.done() or ws.closed:
                    break
                if ev is not None:
                    name, payload = ev
                    await ws.send_str(json.dumps({"type": name, **payload}, separators=(",", ":")))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            await events.aclose()
            reader.cancel()
            await ws.close()
        return ws

    # --- joins ---------------------------------------------------------------------------

    async def join(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        store = self.ctx.require_store()
        cfg = self.cfg()
        ids: list[int] = []
        for text in q.getall("id", []):
            try:
                ids.append(int(text))
            except ValueError:
                raise BadRequest(f'invalid parameter "id": {text!r} is not a series id') from None
        matches = _matches(q, required=False)
        if matches:
            seen = set(ids)
            ids += [sid for sid in select_series(store, None, matches) if sid not in seen]
        if not ids:
            raise BadRequest("give the series to join with id=... and/or match[]=...")
        if len(ids) > cfg["join_max_series"]:
            raise BadRequest(
                f"{len(ids)} series selected; at most {cfg['join_max_series']}"
                " (export_http.join_max_series)"
            )
        kind = q.get("join", "inner")
        if kind not in JOIN_TYPES:
            raise BadRequest(f'invalid parameter "join": expected one of {", ".join(JOIN_TYPES)}')
        fill = q.get("fill", "null")
        if fill not in FILLS:
            raise BadRequest(f'invalid parameter "fill": expected one of {", ".join(FILLS)}')
        out = q.get("format", "json")
        if out not in ("json", "csv"):
            raise BadRequest('invalid parameter "format": expected json or csv')
        result = await join_series(
            store,
            ids[0],
            ids[1:],
            kind,
            start=_time(q, "start"),
            end=_time(q, "end"),
            tolerance=_duration(q, "tolerance"),
            step=_duration(q, "step"),
            fill=fill,
            max_rows=cfg["join_max_rows"],
        )
        if len(result) > cfg["join_max_rows"]:
            return failure(
                "execution",
                f"join has {len(result)} rows, more than export_http.join_max_rows"
                f" ({cfg['join_max_rows']}); narrow start/end or use a coarser step",
            )
        if out == "csv":
            fmt = q.get("time_format", "rfc3339")
            if fmt not in TIME_FORMATS:
                raise BadRequest(f'invalid parameter "time_format": expected one of {TIME_FORMATS}')
            text = result.to_csv(fmt, q.get("tz") or None)
            return web.Response(text=text, content_type="text/csv", charset="utf-8")
        body = {"status": "success", "data": result.to_json()}
        return web.json_response(body, dumps=lambda x: json.dumps(x, separators=(",", ":")))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _matrix(store: Any, batch: SampleBatch) -> dict[str, Any]:
    """A batch in the query API's matrix shape: one entry per series, samples in order."""
    order = np.argsort(batch.series_ids, kind="stable")
    sids = batch.series_ids[order]
    ts = batch.timestamps[order]
    vs = batch.values[order]
    cuts = np.flatnonzero(np.diff(sids)) + 1
    result = []
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), sids.size], strict=True):
        sid = int(sids[lo])
        values = [
            [t / 1000, format_value(v)]
            for t, v in zip(ts[lo:hi].tolist(), vs[lo:hi].tolist(), strict=True)
        ]
        result.append({"metric": dict(store.labels(sid)), "values": values, "id": sid})
    return {"resultType": "matrix", "result": result}


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    e = Endpoints(ctx)
    return [
        Route("GET", "/api/v1/export/csv", e.wrap(e.export_csv), "read", name="export_csv"),
        Route("GET", "/api/v1/export", e.wrap(e.export_jsonl), "read", name="export_jsonl"),
        Route("GET", "/federate", e.wrap(e.federate), "read", name="federate"),
        Route("GET", "/api/v1/stream", e.wrap(e.stream), "read", name="stream"),
        Route("GET", "/api/v1/stream/query", e.wrap(e.stream_query), "read", name="stream_query"),
        Route("GET", "/api/v1/join", e.wrap(e.join), "read", name="join"),
    ]
