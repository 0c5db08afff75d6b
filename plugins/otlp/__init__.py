"""OpenTelemetry metrics over OTLP/HTTP: ``POST /v1/metrics`` and ``/api/v1/otlp/v1/metrics``.

The second path is Prometheus 3's, so an SDK or Collector pointed at a
Prometheus works unchanged. Bodies: ``application/x-protobuf`` or
``application/json`` (OTLP's JSON mapping: lowerCamelCase, hex trace ids),
``Content-Encoding: gzip`` (decoded by aiohttp within ``server.max_body_bytes``).
Translation: :mod:`plugins.otlp.translate` (Prometheus 3's rules).

Answers, as the OTLP/HTTP specification asks, in the request's encoding:

* 200 ``ExportMetricsServiceResponse``; when some data points were not
  written, its ``partial_success`` carries ``rejected_data_points`` and an
  ``error_message`` naming each refused metric and why (delta temporality,
  exponential histograms, samples the store refused);
* 400 ``google.rpc.Status`` (code 3, INVALID_ARGUMENT) for a body that is not
  an OTLP request;
* 415 for another content type; 429/503 with ``Retry-After`` when the store
  asks for back-off or is closed (OTLP senders retry those).

Why ``opentelemetry-proto`` rather than generated code of our own (as
``agent/prompb`` has for Prometheus' protos): it is the OpenTelemetry
project's own generation of the exact ``.proto`` files, versioned with the
protocol, with ``.pyi`` stubs for mypy, and needs only ``protobuf``, which we
already depend on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from agent.plugin_api import (
    BackPressure,
    Field,
    ProtocolMetrics,
    Route,
    Schema,
    SeriesSink,
    StorageError,
    hookimpl,
    parse_duration,
    sink_fields,
    uvarint,
)
from plugins.otlp.fastpath import FastReader
from plugins.otlp.naming import STRATEGIES
from plugins.otlp.translate import Settings, Translation, Translator

if TYPE_CHECKING:
    from agent.plugin_api import AgentContext

SECTION = "ingest.otlp"
SOURCE = "otlp"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_MESSAGE = 4000  # characters of the partial-success message


def _strategy(value: object) -> str | None:
    return None if value in STRATEGIES else f"expected one of {', '.join(STRATEGIES)}"


def _strings(value: object) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return None if ok else "expected a list of attribute names"


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, True, "Serve POST /v1/metrics and /api/v1/otlp/v1/metrics."),
                "translation_strategy": Field(
                    str,
                    "UnderscoreEscapingWithSuffixes",
                    "Prometheus 3's otlp.translation_strategy: "
                    + ", ".join(STRATEGIES)
                    + ". NoUTF8... keep names as sent (UTF-8).",
                    check=_strategy,
                ),
                "promote_resource_attributes": Field(
                    list,
                    [],
                    "Resource attributes copied onto every series as labels.",
                    check=_strings,
                ),
                "promote_all_resource_attributes": Field(
                    bool,
                    False,
                    "Promote every resource attribute (but ignore_resource_attributes).",
                ),
                "ignore_resource_attributes": Field(
                    list,
                    [],
                    "With promote_all_resource_attributes: those not promoted.",
                    check=_strings,
                ),
                "keep_identifying_resource_attributes": Field(
                    bool, False, "Keep service.name/namespace/instance.id on target_info too."
                ),
                "promote_scope_metadata": Field(
                    bool, False, "Add otel_scope_name/_version/_schema_url and scope attributes."
                ),
                "target_info": Field(bool, True, "Write target_info for resource attributes."),
                "lookback_delta": Field(
                    (str, int),
                    "5m",
                    "target_info gets a sample every half of this between a resource's points.",
                ),
                **sink_fields(
                    "Series ids remembered by label set.", "Retry-After sent with 429/503."
                ),
            },
            help="OpenTelemetry metrics receiver (OTLP/HTTP).",
        )
    }


def settings_of(cfg: dict[str, Any]) -> Settings:
    return Settings(
        translation_strategy=cfg["translation_strategy"],
        promote_resource_attributes=tuple(cfg["promote_resource_attributes"]),
        promote_all_resource_attributes=cfg["promote_all_resource_attributes"],
        ignore_resource_attributes=tuple(cfg["ignore_resource_attributes"]),
        keep_identifying_resource_attributes=cfg["keep_identifying_resource_attributes"],
        promote_scope_metadata=cfg["promote_scope_metadata"],
        disable_target_info=not cfg["target_info"],
        lookback_delta_ms=int(parse_duration(cfg["lookback_delta"]) * 1000),
    )


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP JSON spells trace and span ids in hex, protobuf's JSON mapping in base64."""
    if isinstance(node, dict):
        for key in ("traceId", "spanId", "trace_id", "span_id"):
            v = node.get(key)
            if isinstance(v, str) and v:
                with contextlib.suppress(ValueError):  # not hex: left for the parser to judge
                    node[key] = base64.b64encode(bytes.fromhex(v)).decode()
        for v in node.values():
            _hex_ids_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            _hex_ids_to_base64(v)


def decode_request(body: bytes, media: str) -> ExportMetricsServiceRequest:
    """Parse an OTLP request body. Raises ValueError with the reason."""
    req = ExportMetricsServiceRequest()
    if media == PROTOBUF:
        try:
            req.ParseFromString(body)
        except DecodeError as exc:
            raise ValueError(f"body is not an OTLP ExportMetricsServiceRequest: {exc}") from None
        return req
    try:
        data = json.loads(body)
        _hex_ids_to_base64(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("body is not OTLP JSON: nested too deeply") from None
    try:
        json_format.ParseDict(data, req, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as exc:
        raise ValueError(f"body is not an OTLP ExportMetricsServiceRequest: {exc}") from None
    return req


def _status(code: int, message: str) -> bytes:
    """``google.rpc.Status{code, message}`` in protobuf, encoded by hand (two fields)."""
    msg = message.encode()
    out = bytearray([0x08])
    out += uvarint(code)
    out += b"\x12" + uvarint(len(msg)) + msg
    return bytes(out)


class OtlpReceiver:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.plugin_config(SECTION)
        self.translator = Translator(settings_of(cfg))
        self.fast = FastReader(self.translator)
        self.sink = SeriesSink(ctx, SOURCE, cfg["series_cache_size"])
        self.m = ProtocolMetrics(ctx, SOURCE, "OTLP metrics input")

    def _reply(
        self,
        media: str,
        status: int,
        response: ExportMetricsServiceResponse | None,
        error: str = "",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        if response is None:  # an error: google.rpc.Status
            if media == JSON:
                return web.json_response(
                    {"code": 3 if status == 400 else 14, "message": error},
                    status=status,
                    headers=headers,
                )
            body = _status(3 if status == 400 else 14, error)
            return web.Response(body=body, status=status, content_type=PROTOBUF, headers=headers)
        if media == JSON:
            text = json_format.MessageToJson(response, indent=None)
            return web.Response(text=text, status=status, content_type=JSON, headers=headers)
        return web.Response(
            body=response.SerializeToString(), status=status, content_type=PROTOBUF, headers=headers
        )

    async def export(self, request: web.Request) -> web.Response:
        cfg = self.ctx.plugin_config(SECTION)
        media = (request.content_type or "").lower()
        self.m.received.labels("request").inc()
        if media not in (PROTOBUF, JSON):
            self.m.reject("unsupported_media_type")
            return web.Response(
                status=415,
                text=f"unsupported Content-Type {request.content_type!r}; "
                f"expected {PROTOBUF} or {JSON}\n",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp's decoding errors have no common base
            self.m.reject("bad_body")
            return self._reply(media, 400, None, f"cannot read the body: {exc}")
        tr = self._fast(body) if media == PROTOBUF else None
        if tr is None:
            try:
                req = decode_request(body, media)
            except ValueError as exc:
                self.m.reject("bad_body")
                return self._reply(media, 400, None, str(exc))
            tr = self.translator.translate(req)
        self.m.received.labels("data_point").inc(tr.data_points)
        self.m.received.labels("sample").inc(len(tr.values))
        self.m.reject("refused_data_point", tr.rejected_points)
        for family, kind, help_text, unit in tr.metadata:
            self.ctx.metadata.add(_Metadata(family, kind, help_text, unit))
        retry = {"Retry-After": str(cfg["retry_after_seconds"])}
        try:
            try:
                written = await self.sink.write(
                    tr.labels, tr.timestamps, tr.values, self.fast.labels_of, client=request.remote
                )
            except DecodeError:  # attribute bytes the fast reader passed: the ordinary reader
                try:
                    tr = self.translator.translate(decode_request(body, media))
                except ValueError as exc:
                    self.m.reject("bad_body")
                    return self._reply(media, 400, None, str(exc))
                written = await self.sink.write(
                    tr.labels, tr.timestamps, tr.values, self.fast.labels_of, client=request.remote
                )
        except BackPressure as exc:
            return self._reply(media, 429, None, f"storage is busy: {exc}", retry)
        except (StorageError, RuntimeError) as exc:
            return self._reply(media, 503, None, f"storage unavailable: {exc}", retry)
        return self._reply(media, 200, self._response(tr, written))

    def _fast(self, body: bytes) -> Translation | None:
        """The wire-level reader's translation, or None when the body needs the ordinary one."""
        try:
            return self.fast.read(body)
        except (ValueError, IndexError, struct.error, DecodeError):
            return None

    def _response(self, tr: Translation, written: Any) -> ExportMetricsServiceResponse:
        resp = ExportMetricsServiceResponse()
        errors = list(tr.errors)
        rejected = tr.rejected_points
        for labels, why, count in written.refused_series:
            name = dict(labels).get("__name__", "")
            errors.append(f"series of {name!r} refused by the store: {why}")
            rejected += count
            self.m.reject("series_refused", count)
        by_reason: dict[str, list[str]] = {}
        for labels, ts, reason in written.refused_samples:
            by_reason.setdefault(reason, []).append(f"{dict(labels).get('__name__', '')}@{ts}")
            self.m.reject(reason)
        for reason, where in by_reason.items():
            errors.append(
                f"{len(where)} samples refused by the store ({reason}), e.g. "
                + ", ".join(where[:3])
            )
            rejected += len(where)
        if errors:
            resp.partial_success.rejected_data_points = rejected
            resp.partial_success.error_message = "; ".join(errors)[:MAX_MESSAGE]
        return resp


class _Metadata:
    __slots__ = ("help", "metric", "type", "unit")

    def __init__(self, metric: str, type_: str, help_: str, unit: str) -> None:
        self.metric, self.type, self.help, self.unit = metric, type_, help_, unit


@hookimpl
def register_routes(ctx: AgentContext) -> list[Route]:
    if not ctx.plugin_config(SECTION).get("enabled", True):
        return []
    r = OtlpReceiver(ctx)
    return [
        Route("POST", "/v1/metrics", r.export, "write", name="otlp_metrics"),
        Route("POST", "/api/v1/otlp/v1/metrics", r.export, "write", name="otlp_metrics_prometheus"),
    ]
