"""The HTTP side of the remote-write receiver: negotiation, limits, answers.

One :class:`Receiver` per application (it owns the series caches, the
metadata table and the plugin's metrics, all registered on that app's
registry). Status codes, as the 1.0 and 2.0 specifications ask:

* 204: everything was written (durably: ``ctx.append`` returns after commit);
* 400: something a retry cannot fix (bad snappy or protobuf, invalid labels,
  samples refused by the store, native histograms or exemplars). Valid series
  of the same request are still written, and the body lists what was not;
* 413: the compressed body or the decompressed size it announces is over the
  configured limit (the size is read from the snappy header before
  decompressing, so a small "bomb" costs nothing);
* 415: a content type or encoding that is not remote-write 1.0 or 2.0;
* 429 with ``Retry-After``: the store asks for back-off (nothing was written);
* 503: the store is closed or failed (retrying later can succeed).

For 2.0 requests every answer after content negotiation carries the
``X-Prometheus-Remote-Write-{Samples,Histograms,Exemplars}-Written`` headers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from array import array
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cramjam
import numpy as np
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from agent.plugin_api import (
    AgentContext,
    BackPressure,
    StorageError,
    UnknownSeries,
    format_labels,
    read_uvarint,
)
from plugins.remote_write import v2 as v2_codec
from plugins.remote_write.wire import (
    REASON_INVALID_LABELS,
    Decoded,
    DecodeError,
    SeriesIssue,
    decode_write_request,
)

REASON_CARDINALITY = "cardinality_limit"
REASON_OUT_OF_BOUNDS = "out_of_bounds"

log = logging.getLogger("tsagent.remote_write")

SECTION = "ingest.remote_write"
SOURCE = "remote_write"
V1 = "1.0"
V2 = "2.0"
PROTO_V1 = "prometheus.WriteRequest"
PROTO_V2 = "io.prometheus.write.v2.Request"
EXAMPLES = 3  # examples per reason in an error body

H_SAMPLES = "X-Prometheus-Remote-Write-Samples-Written"
H_HISTOGRAMS = "X-Prometheus-Remote-Write-Histograms-Written"
H_EXEMPLARS = "X-Prometheus-Remote-Write-Exemplars-Written"

# Bodies at least this large (compressed) are decoded off the event loop; smaller
# ones decode faster than a thread hand-off costs.
OFFLOAD_BYTES = 64 * 1024
DECODE_THREADS = 2
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _decode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="tsagent-rw-decode")
        return _pool


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def negotiate(content_type: str | None, encoding: str | None) -> tuple[str | None, str]:
    """(protocol version, "") or (None, why it is unsupported)."""
    enc = (encoding or "").strip().lower()
    if enc != "snappy":
        return None, f"unsupported Content-Encoding {encoding or '(none)'!r}; expected 'snappy'"
    if not content_type:
        return V1, ""  # as Prometheus: a missing type means the 1.0 message
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/x-protobuf":
        return None, f"unsupported Content-Type {content_type!r}; expected application/x-protobuf"
    proto = ""
    for param in params.split(";"):
        k, _, v = param.partition("=")
        if k.strip().lower() == "proto":
            proto = v.strip().strip('"')
    if proto in ("", PROTO_V1):
        return V1, ""
    if proto == PROTO_V2:
        return V2, ""
    return None, f"unsupported proto={proto!r}; expected {PROTO_V1} or {PROTO_V2}"


class Receiver:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.cache_v1: dict[Hashable, int] = {}
        self.cache_v2: dict[Hashable, int] = {}
        self.metadata = ctx.metadata  # shared: the core serves it at /api/v1/metadata
        r = ctx.metrics.registry
        self.m_requests = Counter(
            "tsagent_remote_write_requests",
            "Remote-write requests, by protocol version and HTTP status code.",
            ["version", "code"],
            registry=r,
        )
        self.m_received = Counter(
            "tsagent_remote_write_received",
            "Samples, histograms and exemplars decoded from remote-write requests.",
            ["version", "kind"],
            registry=r,
        )
        self.m_bytes = Counter(
            "tsagent_remote_write_received_bytes",
            "Remote-write request bodies, compressed (as sent) and decompressed.",
            ["version", "encoding"],
            registry=r,
        )
        self.m_decode = Histogram(
            "tsagent_remote_write_decode_seconds",
            "Time to decompress and decode one remote-write request.",
            ["version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.m_commit = Histogram(
            "tsagent_remote_write_commit_seconds",
            "Time from handing samples to the store until they were durable.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.m_cache_misses = Counter(
            "tsagent_remote_write_series_cache_misses",
            "Series whose labels had to be decoded and looked up (not in the cache).",
            registry=r,
        )
        cache_size = Gauge(
            "tsagent_remote_write_series_cache_entries",
            "Entries in the remote-write series caches.",
            registry=r,
        )
        cache_size.set_function(lambda: len(self.cache_v1) + len(self.cache_v2))
        self._req_children: dict[tuple[str, int], Any] = {}

    # --- helpers -------------------------------------------------------------------

    def _count_request(self, version: str, code: int) -> None:
        child = self._req_children.get((version, code))
        if child is None:
            child = self._req_children[(version, code)] = self.m_requests.labels(version, str(code))
        child.inc()

    def _answer(
        self, version: str, status: int, text: str = "", headers: dict[str, str] | None = None
    ) -> web.Response:
        self._count_request(version, status)
        if status == 204:
            return web.Response(status=204, headers=headers)
        if text and not text.endswith("\n"):
            text += "\n"
        return web.Response(status=status, text=text, headers=headers)

    # --- POST /api/v1/write --------------------------------------------------------------

    async def write(self, request: web.Request) -> web.Response:
        cfg = self.ctx.config.section(SECTION)
        version, why = negotiate(
            request.headers.get("Content-Type"), request.headers.get("Content-Encoding")
        )
        if version is None:
            return self._answer("unknown", 415, why)
        max_compressed = cfg["max_compressed_bytes"]
        length = request.content_length
        if length is not None and length > max_compressed:
            return self._answer(
                version,
                413,
                f"request body of {length} bytes exceeds {SECTION}.max_compressed_bytes "
                f"({max_compressed})",
            )
        body = await request.read()
        if len(body) > max_compressed:
            return self._answer(
                version,
                413,
                f"request body of {len(body)} bytes exceeds {SECTION}.max_compressed_bytes "
                f"({max_compressed})",
            )
        self.m_bytes.labels(version, "compressed").inc(len(body))
        v2_headers = (
            {H_SAMPLES: "0", H_HISTOGRAMS: "0", H_EXEMPLARS: "0"} if version == V2 else None
        )

        started = time.perf_counter()
        if len(body) < OFFLOAD_BYTES:
            decoded = self._decode(body, version, cfg)
            if isinstance(decoded, tuple):
                return self._answer(version, decoded[0], decoded[1], v2_headers)
            self.m_decode.labels(version).observe(time.perf_counter() - started)
            return await self._store(request, version, decoded, cfg, v2_headers)
        # A large body: what it costs while decoded and stored is budgeted across
        # ingest requests (agent.web.ingest_budget), so concurrent big bodies cannot add
        # up past the memory the operator planned for; over budget, senders retry a
        # 429. A body over the limit is refused (413, in _decode) without a claim.
        try:
            claim = read_uvarint(body, 0, DecodeError)[0]
        except DecodeError:
            claim = len(body)
        if claim > cfg["max_decompressed_bytes"]:
            claim = 0
        budget = self.ctx.ingest_budget
        cost = budget.claim(claim)
        if cost is None:
            return self._answer(
                version, 429, budget.busy_message(claim), {**(v2_headers or {}), "Retry-After": "1"}
            )
        try:
            # Decoded in a worker thread: the decoder holds the GIL, but the interpreter
            # hands it back every few ms, so /-/healthy and small writes are served
            # meanwhile instead of waiting seconds (issue 13, item 8).
            loop = asyncio.get_running_loop()
            decoded = await loop.run_in_executor(_decode_pool(), self._decode, body, version, cfg)
            if isinstance(decoded, tuple):
                return self._answer(version, decoded[0], decoded[1], v2_headers)
            self.m_decode.labels(version).observe(time.perf_counter() - started)
            return await self._store(request, version, decoded, cfg, v2_headers)
        finally:
            budget.release(cost)

    def _decode(self, body: bytes, version: str, cfg: dict[str, Any]) -> Decoded | tuple[int, str]:
        """Decompress and decode one body, or (status, reason); runs on a worker for large ones.

        Reads the series caches only (``dict.get`` is atomic), so it may run
        while the loop fills them; a stale id is caught at append time.
        """
        # Snappy block format: a uvarint of the decompressed size, then the data.
        try:
            size, _ = read_uvarint(body, 0, DecodeError)
        except DecodeError:
            return 400, "bad snappy data: no length header"
        max_plain = cfg["max_decompressed_bytes"]
        if size > max_plain:
            return (
                413,
                f"decompressed size {size} bytes (from the snappy header) exceeds "
                f"{SECTION}.max_decompressed_bytes ({max_plain})",
            )
        try:
            plain = bytes(cramjam.snappy.decompress_raw(body))
        except Exception as exc:  # noqa: BLE001 - cramjam raises its own error types
            return 400, f"bad snappy data: {exc}"
        if len(plain) != size:
            return 400, f"bad snappy data: header says {size} bytes, got {len(plain)}"
        self.m_bytes.labels(version, "decompressed").inc(len(plain))  # thread-safe
        try:
            if version == V1:
                decoded = decode_write_request(plain, self.cache_v1)
            else:
                decoded = v2_codec.decode_request(
                    plain,
                    self.cache_v2,
                    created_timestamp_zero=cfg["created_timestamp_zero_ingestion"],
                )
        except DecodeError as exc:
            return 400, f"bad protobuf message: {exc}"
        return decoded

    async def _store(
        self,
        request: web.Request,
        version: str,
        decoded: Decoded,
        cfg: dict[str, Any],
        v2_headers: dict[str, str] | None,
    ) -> web.Response:
        ctx = self.ctx
        if decoded.histograms:
            self.m_received.labels(version, "histogram").inc(decoded.histograms)
        if decoded.exemplars:
            self.m_received.labels(version, "exemplar").inc(decoded.exemplars)
        for md in decoded.metadata:
            self.metadata.add(md, cfg["max_metadata_metrics"])
        issues = [i for i in decoded.issues if i.count]
        issues.extend(
            v for v in decoded.miss_labels.values() if isinstance(v, SeriesIssue) and v.count
        )
        totals: dict[str, int] = {}
        for i in issues:
            totals[i.reason] = totals.get(i.reason, 0) + i.count
        for reason, total in totals.items():
            ctx.metrics.samples_rejected.labels(SOURCE, reason).inc(total)
        received = len(decoded.ids) - len(decoded.synthetic) + totals.get(REASON_INVALID_LABELS, 0)
        self.m_received.labels(version, "sample").inc(received)

        cache = self.cache_v1 if version == V1 else self.cache_v2
        retry_after = str(cfg["retry_after_seconds"])
        try:
            store = ctx.require_store()
            if decoded.misses:
                refused = await self._resolve(decoded, cache, cfg["series_cache_size"])
                for issue in refused:
                    issues.append(issue)
                    ctx.metrics.samples_rejected.labels(SOURCE, issue.reason).inc(issue.count)
            started = time.perf_counter()
            result = await ctx.append(
                decoded.ids, decoded.ts, decoded.vals, source=SOURCE, client=request.remote
            )
            self.m_commit.observe(time.perf_counter() - started)
        except BackPressure as exc:
            return self._answer(
                version,
                429,
                f"storage is busy: {exc}",
                {**(v2_headers or {}), "Retry-After": retry_after},
            )
        except UnknownSeries as exc:
            # A cached id is gone (series deleted by retention): forget them all.
            self.cache_v1.clear()
            self.cache_v2.clear()
            log.warning("remote write: series cache out of date, cleared: %s", exc)
            return self._answer(version, 503, "series cache was out of date; retry", v2_headers)
        except (StorageError, RuntimeError) as exc:
            return self._answer(version, 503, f"storage unavailable: {exc}", v2_headers)

        synthetic: set[tuple[int, int]] = set()
        if decoded.synthetic:
            ids, ts = decoded.ids, decoded.ts
            synthetic = {(ids[i], ts[i]) for i in decoded.synthetic}
        rejected = [r for r in result.rejected if (r.series_id, r.timestamp) not in synthetic]
        synthetic_ok = len(decoded.synthetic) - (len(result.rejected) - len(rejected))
        written = max(0, result.accepted - synthetic_ok)
        headers = None
        if v2_headers is not None:
            headers = {H_SAMPLES: str(written), H_HISTOGRAMS: "0", H_EXEMPLARS: "0"}
        if not issues and not rejected:
            return self._answer(version, 204, headers=headers)
        return self._answer(
            version, 400, self._error_text(store, issues, rejected, received, written), headers
        )

    async def _resolve(
        self, decoded: Decoded, cache: dict[Hashable, int], limit: int
    ) -> list[SeriesIssue]:
        """Give missed series their ids; series a cardinality limit refuses are cut out.

        Refused series are not cached, so raising a limit takes effect at once.
        """
        store = self.ctx.require_store()
        # A new series whose every sample is out of bounds is not created at all:
        # no series is left without samples (the samples' reason is the bound).
        ts = np.frombuffer(decoded.ts, dtype=np.int64)
        bad = store.out_of_bounds(ts)
        keys: list[Hashable] = []
        wanted = []
        issues: list[SeriesIssue] = []
        drop: list[int] = []
        for key in decoded.misses:
            labels = decoded.miss_labels[key]
            if isinstance(labels, SeriesIssue):
                continue
            positions = decoded.misses[key]
            if bad is not None and bad[positions].all():
                why = store.timestamp_problems(ts[positions[:1]])[0][1]
                issues.append(
                    SeriesIssue(REASON_OUT_OF_BOUNDS, format_labels(labels), why, len(positions))
                )
                drop.extend(positions)
                continue
            keys.append(key)
            wanted.append(labels)
        self.m_cache_misses.inc(len(keys))
        sids, refused = await store.resolve_series(wanted)
        if len(cache) + len(keys) > limit:
            cache.clear()  # crude but O(1) amortised; a sender's series come back at once
        ids = decoded.ids
        for n, (key, sid) in enumerate(zip(keys, sids, strict=True)):
            positions = decoded.misses[key]
            if n in refused:
                issues.append(
                    SeriesIssue(
                        REASON_CARDINALITY, format_labels(wanted[n]), refused[n], len(positions)
                    )
                )
                drop.extend(positions)
                continue
            if len(keys) <= limit:
                cache[key] = sid
            for pos in positions:
                ids[pos] = sid
        if drop:
            _remove_positions(decoded, drop)
        return issues

    @staticmethod
    def _error_text(
        store: Any, issues: list[SeriesIssue], rejected: list[Any], received: int, written: int
    ) -> str:
        lines = []
        by_reason: dict[str, list[Any]] = {}
        for r in rejected:
            by_reason.setdefault(r.reason, []).append(r)
        refused = len(rejected)
        lines.append(
            f"remote write: {written} of {received} samples written; "
            f"{refused} refused by the store, {len(issues)} series (or parts) not written"
        )
        for reason, items in by_reason.items():
            examples = []
            for r in items[:EXAMPLES]:
                try:
                    name = format_labels(store.labels(r.series_id))
                except Exception:  # noqa: BLE001 - the message must not fail
                    name = f"series {r.series_id}"
                examples.append(f"{name} @{r.timestamp}")
            lines.append(f"{reason}: {len(items)} samples, e.g. " + "; ".join(examples))
        grouped: dict[str, list[SeriesIssue]] = {}
        for i in issues:
            grouped.setdefault(i.reason, []).append(i)
        for reason, items in grouped.items():
            total = sum(i.count for i in items)
            text = "; ".join(f"{i.series}: {i.detail}" for i in items[:EXAMPLES])
            lines.append(f"{reason}: {len(items)} series ({total} items), e.g. {text}")
        return "\n".join(lines)


def _remove_positions(decoded: Decoded, drop: list[int]) -> None:
    """Cut samples out of the request's arrays, keeping synthetic positions right."""
    keep = np.ones(len(decoded.ids), dtype=bool)
    keep[drop] = False
    new_pos = np.cumsum(keep) - 1
    for name in ("ids", "ts", "vals"):
        arr = getattr(decoded, name)
        kept = np.frombuffer(arr, dtype=np.int64 if arr.typecode == "q" else np.float64)[keep]
        setattr(decoded, name, array(arr.typecode, kept.tobytes()))
    decoded.synthetic = [int(new_pos[p]) for p in decoded.synthetic if keep[p]]
