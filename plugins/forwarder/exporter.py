"""One remote-write upstream: a :class:`agent.plugin_api.BatchExporter`.

The core hands ``export`` committed batches from the durable export log (see
:mod:`agent.forward.export_log`); this class turns them into remote-write requests:

* **series**: each store series is resolved once per upstream (``match``
  selectors, ``write_relabel_configs``, ``external_labels``) to encoded
  label bytes and a shard, ``crc32(labels) % shards``; the hash is of the
  labels *as sent*, so two series that relabel to the same set share a shard
  and stay in order, and it is stable across restarts (Python's ``hash`` is
  not), which the lanes below rely on;
* **shards** send concurrently, each one request at a time in log order, so
  samples of a series arrive in the order they were stored;
* **lanes**: after each request a shard's progress (batch seq, raw sample
  offset) is committed as lane ``shard-K``, right after the upstream's 2xx.
  A restart (or a retry of the call) skips what a shard already delivered,
  so an acknowledged request is never sent again, except when the process
  dies in the one window between the 2xx and that commit;
* **retries** follow the remote-write spec: 5xx, 429 (if
  ``retry_on_http_429``; ``Retry-After`` honoured) and network errors are
  retried with exponential back-off (``min_backoff`` doubling up to
  ``max_backoff``); any other status is final: counted, logged with the
  upstream's answer, and the request's samples dropped for this upstream.
  Between retries the request's oldest batch is checked against the backlog
  bounds, so an outage longer than the bounds drops the oldest data instead
  of holding everything behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from prometheus_client import Counter, Histogram

from agent.plugin_api import (
    ExportBatch,
    ExportOptions,
    ExportProgress,
    ExportStopped,
    Labels,
    __version__,
    authorization,
    process,
)
from plugins.forwarder.config import UpstreamSpec
from plugins.forwarder.encode import compress, encode_labels, encode_request

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from agent.plugin_api import AgentContext

log = logging.getLogger("tsagent.forwarder")

USER_AGENT = f"tsagent/{__version__}"
NETWORK = "network"  # failure "status" of a request that got no HTTP answer
_REASON_MAX = 512
# After the first failure of a request, log every Nth further one (an outage
# with a 5 s back-off cap then logs a line per shard about every minute).
_LOG_EVERY = 12

Sleep = Callable[[float], Awaitable[None]]


class ForwarderMetrics:
    """Per-upstream figures; pending, oldest age and drops are the core's (exporter label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "tsagent_forwarder_sent_samples",
            "Samples an upstream acknowledged (2xx), by upstream.",
            ["upstream"],
            registry=registry,
        )
        self.requests = Counter(
            "tsagent_forwarder_requests",
            "Requests acknowledged (2xx), by upstream.",
            ["upstream"],
            registry=registry,
        )
        self.failures = Counter(
            "tsagent_forwarder_failures",
            "Failed send attempts by upstream and status (HTTP code, or 'network').",
            ["upstream", "status"],
            registry=registry,
        )
        self.retries = Counter(
            "tsagent_forwarder_retries",
            "Send attempts repeated after a retryable failure, by upstream.",
            ["upstream"],
            registry=registry,
        )
        self.duration = Histogram(
            "tsagent_forwarder_send_duration_seconds",
            "Latency of each send attempt (any outcome), by upstream.",
            ["upstream"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


@dataclass(slots=True)
class _Answer:
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    reason: str
    retry_after: float | None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(slots=True)
class _Part:
    """Samples of one batch that one request carries: raw indices into the batch."""

    batch: ExportBatch
    idx: np.ndarray
    out: np.ndarray  # resolved output series per index


class RemoteWriteExporter:
    """Sends every committed batch to one upstream; see the module docstring."""

    def __init__(self, spec: UpstreamSpec, metrics: ForwarderMetrics) -> None:
        self.spec = spec
        self.name = f"remote_write:{spec.name}"
        q = spec.queue
        self.export_options = ExportOptions(
            max_samples=q.max_samples_per_send * q.shards,
            max_wait_s=q.batch_send_deadline_s,
            max_backlog_samples=q.max_backlog_samples,
            max_backlog_age_s=q.max_backlog_age_s,
        )
        self.metrics = metrics
        # Replaceable (tests record back-off delays instead of waiting them out).
        self.sleep: Sleep = asyncio.sleep
        self._session: aiohttp.ClientSession | None = None
        # store series id -> output series index (-1: not sent); outputs' labels and shards
        self._resolved: dict[int, int] = {}
        self._out_index: dict[bytes, int] = {}
        self._out_labels: list[bytes] = []
        self._out_shard: list[int] = []

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.spec.queue.shards, ssl=self.spec.ssl_context() or True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.spec.timeout_s),
            headers={"User-Agent": USER_AGENT},
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- series ---------------------------------------------------------------------------

    def output_labels(self, labels: Labels) -> Labels | None:
        """The label set sent for a stored series, or None when it is not sent."""
        spec = self.spec
        if spec.selectors:
            values = dict(labels)
            if not any(
                all(m.matches(values.get(m.name, "")) for m in sel) for sel in spec.selectors
            ):
                return None
        if spec.relabel:
            lb = process(dict(labels), spec.relabel)
            if lb is None:
                return None
        else:
            lb = dict(labels)
        for k, v in spec.external_labels:
            lb.setdefault(k, v)
        out = tuple(sorted((k, v) for k, v in lb.items() if v))
        return out or None

    def _resolve(self, batch: ExportBatch) -> np.ndarray:
        """Output series index per sample of ``batch`` (-1 where not sent)."""
        uniq, inverse = np.unique(batch.series_ids, return_inverse=True)
        outs = np.empty(uniq.size, dtype=np.int64)
        resolved = self._resolved
        for i, sid in enumerate(uniq.tolist()):
            o = resolved.get(sid)
            if o is None:
                labels = self.output_labels(batch.labels(sid))
                if labels is None:
                    o = -1
                else:
                    enc = encode_labels(labels)
                    o = self._out_index.get(enc, -1)
                    if o < 0:
                        o = self._out_index[enc] = len(self._out_labels)
                        self._out_labels.append(enc)
                        self._out_shard.append(zlib.crc32(enc) % self.spec.queue.shards)
                resolved[sid] = o
            outs[i] = o
        return outs[inverse.reshape(-1)]

    # --- export ---------------------------------------------------------------------------

    async def export(self, batches: Sequence[ExportBatch], progress: ExportProgress) -> None:
        shards = self.spec.queue.shards
        work: list[list[_Part]] = [[] for _ in range(shards)]
        lanes = [progress.lane(f"shard-{k}") for k in range(shards)]
        for batch in batches:
            out = self._resolve(batch)
            sent = out >= 0
            if not sent.any():
                continue
            shard_of = np.full(out.size, -1, dtype=np.int64)
            shard_of[sent] = np.asarray(self._out_shard, dtype=np.int64)[out[sent]]
            for k in range(shards):
                idx = np.flatnonzero(shard_of == k)
                lane = lanes[k]
                if lane is not None:
                    if lane[0] > batch.seq:
                        continue
                    if lane[0] == batch.seq:
                        idx = idx[idx >= lane[1]]
                if idx.size:
                    work[k].append(_Part(batch, idx, out[idx]))
        jobs = [(k, parts) for k, parts in enumerate(work) if parts]
        if not jobs:
            return
        if len(jobs) == 1:
            await self._run_shard(*jobs[0], progress)
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for k, parts in jobs:
                    tg.create_task(self._run_shard(k, parts, progress))
        except BaseExceptionGroup as group:
            # The core knows single exceptions; ExportStopped wins (a clean stop).
            stopped = group.subgroup(ExportStopped)
            raise (stopped.exceptions[0] if stopped else group.exceptions[0]) from None

    def _requests(self, parts: list[_Part]) -> Iterator[list[_Part]]:
        """Cut a shard's parts into requests of at most ``max_samples_per_send`` samples."""
        limit = self.spec.queue.max_samples_per_send
        cur: list[_Part] = []
        room = limit
        for part in parts:
            start = 0
            n = int(part.idx.size)
            while start < n:
                take = min(room, n - start)
                end = start + take
                cur.append(_Part(part.batch, part.idx[start:end], part.out[start:end]))
                start = end
                room -= take
                if room == 0:
                    yield cur
                    cur, room = [], limit
        if cur:
            yield cur

    async def _run_shard(self, shard: int, parts: list[_Part], progress: ExportProgress) -> None:
        lane = f"shard-{shard}"
        for req in self._requests(parts):
            out = np.concatenate([p.out for p in req])
            ts = np.concatenate([p.batch.timestamps[p.idx] for p in req])
            bits = np.concatenate([p.batch.values[p.idx].view(np.uint64) for p in req])
            body = compress(encode_request(self._out_labels, out, ts, bits))
            await self._deliver(body, int(out.size), req[0].batch, progress)
            last = req[-1]
            # The one window where a crash re-sends an acknowledged request: between the
            # upstream's 2xx (or a final drop) and this commit.
            await progress.save(lane, last.batch.seq, int(last.idx[-1]) + 1)

    async def _deliver(
        self, body: bytes, samples: int, oldest: ExportBatch, progress: ExportProgress
    ) -> None:
        """Send one request until it is acknowledged or final; retries per the spec."""
        q = self.spec.queue
        upstream = self.spec.name
        backoff = q.min_backoff_s
        attempt = 0
        while True:
            if progress.stopping:
                raise ExportStopped()
            started = time.perf_counter()
            answer = await self._post(body)
            self.metrics.duration.labels(upstream).observe(time.perf_counter() - started)
            status = answer.status
            if status is not None and 200 <= status < 300:
                self.metrics.sent.labels(upstream).inc(samples)
                self.metrics.requests.labels(upstream).inc()
                if attempt:
                    log.info("upstream %s: delivered after %d retries", upstream, attempt)
                return
            label = NETWORK if status is None else str(status)
            self.metrics.failures.labels(upstream, label).inc()
            retryable = status is None or status >= 500 or (status == 429 and q.retry_on_http_429)
            if not retryable:
                log.error(
                    "upstream %s refused %d samples with HTTP %s (not retried, dropped): %s",
                    upstream,
                    samples,
                    status,
                    answer.reason,
                )
                progress.dropped(f"http_{status}", samples)
                return
            reason = progress.overflow(oldest)
            if reason is not None:
                log.error(
                    "upstream %s: dropping %d samples still failing (%s: %s) beyond the %s bound",
                    upstream,
                    samples,
                    label,
                    answer.reason,
                    reason,
                )
                progress.dropped(reason, samples)
                return
            delay = answer.retry_after if answer.retry_after is not None else backoff
            if attempt % _LOG_EVERY == 0:
                log.warning(
                    "upstream %s: send failed (%s: %s), retry %d in %.3fs",
                    upstream,
                    label,
                    answer.reason,
                    attempt + 1,
                    delay,
                )
            attempt += 1
            self.metrics.retries.labels(upstream).inc()
            await self.sleep(delay)
            backoff = min(backoff * 2, q.max_backoff_s)

    def _auth_headers(self) -> dict[str, str]:
        spec = self.spec
        user, password, password_file = spec.basic_auth or ("", "", "")
        header = authorization(
            username=user,
            password=password,
            password_file=password_file,
            credentials=spec.bearer_token,
            credentials_file=spec.bearer_token_file,
        )
        return {"Authorization": header} if header else {}

    async def _post(self, body: bytes) -> _Answer:
        session = self._session
        if session is None:
            raise RuntimeError(f"exporter {self.name} is not started")
        headers = {
            **dict(self.spec.headers),
            **self._auth_headers(),
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        }
        kwargs: dict[str, Any] = {}
        if self.spec.tls.get("server_name"):
            kwargs["server_hostname"] = self.spec.tls["server_name"]
        try:
            async with session.post(self.spec.url, data=body, headers=headers, **kwargs) as resp:
                text = ""
                if not 200 <= resp.status < 300:
                    with contextlib.suppress(Exception):
                        text = (await resp.text(errors="replace"))[:_REASON_MAX].strip()
                else:
                    await resp.read()  # let the connection be reused
                return _Answer(
                    resp.status,
                    text or resp.reason or "",
                    parse_retry_after(resp.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Answer(None, f"{type(exc).__name__}: {exc}", None)
