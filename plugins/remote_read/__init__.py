"""Prometheus remote read: ``POST /api/v1/read`` (route group ``read``).

This lets a Prometheus (``remote_read:``), Grafana through Prometheus, Thanos
or an import tool query what tsagent stored, with the same protocol and the
same answers as Prometheus's own ``/api/v1/read``:

* the body is a snappy block-compressed (not framed) ``ReadRequest``; each
  ``Query`` has label matchers (EQ, NEQ, RE, NRE, Prometheus semantics,
  regexes fully anchored) and an inclusive ms time range; ``hints`` are
  advisory and ignored;
* ``accepted_response_types`` is negotiated as Prometheus does: the first type
  in the client's list that we implement wins, an empty list means
  ``SAMPLES``, and a list with nothing we implement is a 400;
* ``SAMPLES``: one snappy-compressed ``ReadResponse``, one ``QueryResult`` per
  query in order (``Content-Type: application/x-protobuf``,
  ``Content-Encoding: snappy``). Prometheus 2.x, up to at least 2.55, sends
  no response types at all, so this is what ``remote_read:`` uses;
* ``STREAMED_XOR_CHUNKS``: uncompressed frames of ``ChunkedReadResponse``,
  at most one series per frame and a series split over frames of about
  ``max_bytes_in_frame``, with Prometheus XOR chunks of up to 120 samples
  (``plugins.remote_read.chunks``);
* series come sorted by their label sets, labels sorted by name with
  ``__name__`` among them, and only series with samples in the range;
* staleness markers are returned like any sample, bit for bit, because
  Prometheus's own remote read returns them and its query engine needs them
  to end a series; ordinary NaNs stay ordinary NaNs;
* a query without matchers selects nothing (Prometheus's TSDB does the same),
  rather than everything.

Errors are plain text: 400 for a body that is not snappy, not a
``ReadRequest``, with an unknown matcher type or a bad regex, or that selects
more than ``sample_limit`` samples in total (Prometheus's own limit, also a
400, has the same wording). All data of a request is selected before the first
byte is sent, so even a streamed request fails cleanly with a status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cramjam
import numpy as np
from aiohttp import web
from google.protobuf.message import DecodeError

from agent.plugin_api import (
    AgentContext,
    Field,
    Matcher,
    MatchOp,
    Route,
    Schema,
    SeriesData,
    check_non_negative,
    check_positive,
    hookimpl,
    remote_pb2,
    types_pb2,
)
from plugins.remote_read import chunks, wire

SECTION = "read.remote_read"
PATH = "/api/v1/read"

SAMPLES = remote_pb2.ReadRequest.SAMPLES
STREAMED_XOR_CHUNKS = remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS
SAMPLES_CONTENT_TYPE = "application/x-protobuf"
STREAMED_CONTENT_TYPE = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"

_OPS = {
    types_pb2.LabelMatcher.EQ: MatchOp.EQ,
    types_pb2.LabelMatcher.NEQ: MatchOp.NEQ,
    types_pb2.LabelMatcher.RE: MatchOp.RE,
    types_pb2.LabelMatcher.NRE: MatchOp.NRE,
}
_SUPPORTED = {SAMPLES: "SAMPLES", STREAMED_XOR_CHUNKS: "STREAMED_XOR_CHUNKS"}

log = logging.getLogger("tsagent.remote_read")


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, f"Serve Prometheus remote read at {PATH}."),
                "sample_limit": Field(
                    int,
                    5_000_000,
                    "Most samples one request may select, over all its queries (0: no\n"
                    "limit). More is a 400. Every selected sample is held in memory while\n"
                    "the answer is built (about 30 bytes each).",
                    check=check_non_negative,
                ),
                "max_bytes_in_frame": Field(
                    int,
                    1024 * 1024,
                    "Streamed responses: cut a series into frames of about this size\n"
                    "(Prometheus's --storage.remote.read-max-bytes-in-frame).",
                    check=check_positive,
                ),
                "concurrent_limit": Field(
                    int,
                    10,
                    "Requests answered at once; more wait their turn (0: no limit).\n"
                    "Takes effect at restart.",
                    check=check_non_negative,
                ),
            },
            "Prometheus remote read (POST /api/v1/read).",
        )
    }


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    cfg = ctx.plugin_config(SECTION)
    if not cfg["enabled"]:
        return []
    handler = RemoteReadHandler(ctx, cfg["concurrent_limit"])
    return [Route("POST", PATH, handler.handle, "read", name="remote_read")]


class BadRequest(Exception):
    """The client's fault; the message is the 400 body."""


@dataclass(frozen=True)
class ParsedQuery:
    matchers: list[Matcher]
    start_ms: int
    end_ms: int


def parse_request(body: bytes) -> tuple[list[ParsedQuery], int]:
    """Decode a request body into queries and the negotiated response type."""
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise BadRequest(f"body is not snappy block-compressed: {exc}") from exc
    try:
        request = remote_pb2.ReadRequest.FromString(raw)
    except DecodeError as exc:
        raise BadRequest(f"body is not a prometheus.ReadRequest: {exc}") from exc
    queries = []
    for i, query in enumerate(request.queries):
        matchers = []
        for m in query.matchers:
            op = _OPS.get(m.type)
            if op is None:
                raise BadRequest(f"query {i}: unknown matcher type {m.type} for label {m.name!r}")
            try:
                matchers.append(Matcher.of(m.name, op, m.value))
            except ValueError as exc:
                raise BadRequest(f"query {i}: {exc}") from exc
        queries.append(ParsedQuery(matchers, query.start_timestamp_ms, query.end_timestamp_ms))
    return queries, negotiate(list(request.accepted_response_types))


def negotiate(accepted: list[int]) -> int:
    """First implemented type in the client's order; none listed means SAMPLES."""
    for kind in accepted or [SAMPLES]:
        if kind in _SUPPORTED:
            return kind
    raise BadRequest(
        f"server does not support any of the requested response types {accepted}; "
        f"supported: {', '.join(f'{name} ({num})' for num, name in _SUPPORTED.items())}"
    )


class RemoteReadHandler:
    def __init__(self, ctx: AgentContext, concurrent_limit: int) -> None:
        self.ctx = ctx
        self._gate = asyncio.Semaphore(concurrent_limit) if concurrent_limit > 0 else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            queries, response_type = parse_request(body)
        except BadRequest as exc:
            return _bad_request(str(exc))
        cfg = self.ctx.plugin_config(SECTION)
        async with self._limit():
            try:
                selected = await self._select(queries, cfg["sample_limit"])
            except BadRequest as exc:
                return _bad_request(str(exc))
            if response_type == STREAMED_XOR_CHUNKS:
                return await self._stream(request, selected, cfg["max_bytes_in_frame"])
            return await self._samples(selected)

    @contextlib.asynccontextmanager
    async def _limit(self) -> AsyncIterator[None]:
        if self._gate is None:
            yield
        else:
            async with self._gate:
                yield

    async def _select(self, queries: list[ParsedQuery], limit: int) -> list[list[SeriesData]]:
        store = self.ctx.require_store()
        selected: list[list[SeriesData]] = []
        total = 0
        for q in queries:
            found = await store.select(q.matchers, q.start_ms, q.end_ms) if q.matchers else []
            total += sum(int(s.timestamps.size) for s in found)
            if limit and total > limit:
                raise BadRequest(
                    f"exceeded sample limit ({limit}): the request selects more than {limit} "
                    f"samples; narrow its matchers or time range, or raise {SECTION}.sample_limit"
                )
            selected.append(found)
        return selected

    async def _samples(self, selected: list[list[SeriesData]]) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, encode_samples_response, selected)
        return web.Response(
            body=body,
            headers={"Content-Type": SAMPLES_CONTENT_TYPE, "Content-Encoding": "snappy"},
        )

    async def _stream(
        self, request: web.Request, selected: list[list[SeriesData]], max_bytes: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": STREAMED_CONTENT_TYPE})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        for index, found in enumerate(selected):
            for series in found:
                frames = await loop.run_in_executor(None, series_frames, series, index, max_bytes)
                for data in frames:
                    await response.write(data)
        await response.write_eof()
        return response


def _bad_request(message: str) -> web.Response:
    log.info("remote read refused: %s", message)
    return web.Response(status=400, text=message + "\n")


def encode_samples_response(selected: list[list[SeriesData]]) -> bytes:
    """The snappy-compressed ReadResponse body for a SAMPLES answer."""
    message = wire.encode_read_response(
        [wire.encode_timeseries(s.labels, s.timestamps, s.values) for s in found]
        for found in selected
    )
    return bytes(cramjam.snappy.compress_raw(message))


def series_frames(series: SeriesData, query_index: int, max_bytes_in_frame: int) -> list[bytes]:
    """The frames of one series, cut the way Prometheus cuts them.

    Chunks are added to a frame until the labels plus chunks reach
    ``max_bytes_in_frame`` (so a frame may overshoot by one chunk), and every
    frame repeats the series' labels.
    """
    labels = [types_pb2.Label(name=k, value=v) for k, v in series.labels]
    budget = max_bytes_in_frame - sum(lab.ByteSize() for lab in labels)
    ts = series.timestamps.tolist()
    bits = np.ascontiguousarray(series.values, dtype=np.float64).view(np.uint64).tolist()
    frames: list[bytes] = []
    pending: list[types_pb2.Chunk] = []
    left = budget
    step = chunks.SAMPLES_PER_CHUNK
    for i in range(0, len(ts), step):
        chunk = types_pb2.Chunk(
            min_time_ms=ts[i],
            max_time_ms=ts[min(i + step, len(ts)) - 1],
            type=types_pb2.Chunk.XOR,
            data=chunks.encode_xor_chunk(ts[i : i + step], bits[i : i + step]),
        )
        pending.append(chunk)
        left -= chunk.ByteSize()
        if left > 0 and i + step < len(ts):
            continue
        message = remote_pb2.ChunkedReadResponse(
            chunked_series=[types_pb2.ChunkedSeries(labels=labels, chunks=pending)],
            query_index=query_index,
        )
        frames.append(chunks.frame(message.SerializeToString()))
        pending = []
        left = budget
    return frames
