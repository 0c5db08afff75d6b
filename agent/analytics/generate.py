"""Synthetic metrics for demos and benchmarks: shapes, and two ways to write them.

Patterns (all deterministic for a seed; series ``i`` of ``N`` draws from its
own random stream, so adding series never changes the first ones):

* ``sine``: ``base + amplitude * sin(2π t / period + i/2)``, no noise;
* ``noise``: ``base`` plus Gaussian noise of standard deviation ``noise``;
* ``linear``: ``base + slope * t`` (t in seconds from the start), no noise;
* ``spike``: ``noise`` plus, with probability ``spike_probability`` per
  sample, a spike of ``+spike_height``;
* ``combined``: sine + slope + noise + spikes, a plausible "cpu_usage".

``sine_wave`` and ``linear_trend`` are accepted for ``sine`` and ``linear``
(the names of the metrics service's generator).

Samples go to the local store (:func:`write_to_store`, a backfill: one
audited transaction, any age) or to any Prometheus remote-write 1.0 receiver
(:func:`send_remote_write`, snappy-compressed ``WriteRequest``s in time
order, retried on 429/5xx), tsagent's own included.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.model import Labels, make_labels

if TYPE_CHECKING:
    import aiohttp

    from agent.storage import Store

PATTERNS = ("sine", "noise", "linear", "spike", "combined")
# The metrics service's generator names for the same shapes.
PATTERN_ALIASES = {"sine_wave": "sine", "linear_trend": "linear"}
PATTERN_CHOICES = (*PATTERNS, *PATTERN_ALIASES)
MAX_SAMPLES_PER_REQUEST = 10_000
RETRIES = 5


@dataclass(frozen=True)
class PatternOptions:
    base: float = 50.0
    amplitude: float = 20.0
    period_s: float = 300.0
    slope: float = 0.01
    noise: float = 2.0
    spike_probability: float = 0.02
    spike_height: float = 40.0


@dataclass
class GeneratedSeries:
    labels: Labels
    timestamps: np.ndarray  # int64 ms
    values: np.ndarray


@dataclass
class WriteReport:
    series: int = 0
    samples: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    requests: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class GenerateError(Exception):
    """The samples could not be written (refused request, unreachable receiver)."""


def pattern_values(
    pattern: str,
    offsets_s: np.ndarray,
    rng: np.random.Generator,
    opts: PatternOptions,
    index: int = 0,
) -> np.ndarray:
    """The values of one series at ``offsets_s`` seconds after the start."""
    x = np.asarray(offsets_s, dtype=np.float64)
    n = x.size
    pattern = PATTERN_ALIASES.get(pattern, pattern)
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if opts.period_s <= 0:
        raise ValueError("period must be positive")
    sine = opts.amplitude * np.sin(2 * math.pi * x / opts.period_s + index * 0.5)
    if pattern == "sine":
        return opts.base + sine
    if pattern == "linear":
        return opts.base + opts.slope * x
    noise = rng.normal(0.0, opts.noise, n) if opts.noise > 0 else np.zeros(n)
    if pattern == "noise":
        return opts.base + noise
    spikes = np.where(rng.random(n) < opts.spike_probability, opts.spike_height, 0.0)
    if pattern == "spike":
        return opts.base + noise + spikes
    return opts.base + sine + opts.slope * x + noise + spikes


def generate(
    metric: str,
    pattern: str,
    *,
    start_ms: int,
    duration_s: float,
    interval_s: float,
    series: int = 1,
    labels: Mapping[str, str] | None = None,
    seed: int = 0,
    options: PatternOptions | None = None,
) -> list[GeneratedSeries]:
    """``series`` series of ``duration_s / interval_s`` samples from ``start_ms``.

    With more than one series each gets ``instance="gen-<i>"`` so they differ.
    """
    if interval_s <= 0 or duration_s <= 0:
        raise ValueError("duration and interval must be positive")
    if series < 1:
        raise ValueError("series must be at least 1")
    opts = options or PatternOptions()
    count = int(duration_s // interval_s)
    if count < 1:
        raise ValueError("duration is shorter than one interval")
    offsets = np.arange(count, dtype=np.int64) * round(interval_s * 1000)
    ts = start_ms + offsets
    out = []
    for i in range(series):
        lab = {**(labels or {}), "__name__": metric}
        if series > 1:
            lab.setdefault("instance", f"gen-{i}")
        rng = np.random.default_rng([seed, i])
        values = pattern_values(pattern, offsets / 1000.0, rng, opts, i)
        out.append(GeneratedSeries(make_labels(lab), ts.copy(), values))
    return out


# --- the local store ------------------------------------------------------------------------


async def write_to_store(
    store: Store, batches: Sequence[GeneratedSeries], *, source: str = "generate"
) -> WriteReport:
    """Backfill the samples: durable and audited when it returns, history of any age."""
    report = WriteReport(series=len(batches))
    if not batches:
        return report
    ids = await store.get_or_create_series([b.labels for b in batches])
    sids = np.concatenate(
        [np.full(b.timestamps.size, sid) for b, sid in zip(batches, ids, strict=True)]
    )
    ts = np.concatenate([b.timestamps for b in batches])
    vals = np.concatenate([b.values for b in batches])
    result = await store.backfill(sids, ts, vals, source=source)
    report.samples = int(ts.size)
    report.stored = result.stored
    report.duplicates = result.duplicates
    report.rejected = len(result.rejected)
    if result.rejected:
        report.errors = [str(r) for r in list(result.rejected)[:10]]
    return report


# --- remote write -----------------------------------------------------------------------------


def encode_write_request(batches: Sequence[GeneratedSeries], lo: int, hi: int) -> bytes:
    """Samples ``lo:hi`` of every series as one snappy-compressed remote-write 1.0 request."""
    import cramjam

    from agent.prompb import remote_pb2, types_pb2

    req = remote_pb2.WriteRequest()
    for b in batches:
        ts = types_pb2.TimeSeries()
        ts.labels.extend(types_pb2.Label(name=k, value=v) for k, v in sorted(b.labels))
        ts.samples.extend(
            types_pb2.Sample(value=float(v), timestamp=int(t))
            for t, v in zip(b.timestamps[lo:hi].tolist(), b.values[lo:hi].tolist(), strict=True)
        )
        req.timeseries.append(ts)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


async def send_remote_write(
    url: str,
    batches: Sequence[GeneratedSeries],
    *,
    session: aiohttp.ClientSession | None = None,
    max_samples_per_request: int = MAX_SAMPLES_PER_REQUEST,
    bearer_token: str | None = None,
    backoff_s: float = 0.5,
) -> WriteReport:
    """POST the samples in time order (a receiver rejects out-of-order appends).

    Each request carries the same time slice of every series. 429 and 5xx
    are retried with back-off (``Retry-After`` honoured, capped at 10 s);
    any other refusal raises :class:`GenerateError` with the receiver's reason.
    """
    import aiohttp

    report = WriteReport(series=len(batches))
    if not batches:
        return report
    length = max(b.timestamps.size for b in batches)
    per_step = max(len(batches), 1)
    steps = max(1, max_samples_per_request // per_step)
    headers = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "User-Agent": "tsagent-generate",
    }
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        for lo in range(0, length, steps):
            hi = min(length, lo + steps)
            body = encode_write_request(batches, lo, hi)
            await _post(client, url, body, headers, report, backoff_s)
            sent = sum(int(b.timestamps[lo:hi].size) for b in batches)
            report.samples += sent
            report.stored += sent
    finally:
        if own:
            await client.close()
    return report


async def _post(
    client: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    report: WriteReport,
    backoff_s: float,
) -> str:
    """One request, retried on 429/5xx with back-off; the answer's text."""
    import aiohttp

    for attempt in range(RETRIES + 1):
        try:
            async with client.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except aiohttp.ClientError as exc:
            raise GenerateError(f"cannot reach {url}: {exc}") from None
        report.requests += 1
        if status < 300:
            return text
        if (status == 429 or status >= 500) and attempt < RETRIES:
            report.retries += 1
            await asyncio.sleep(_delay(retry_after, backoff_s * 2**attempt))
            continue
        raise GenerateError(f"{url} answered {status}: {text.strip()[:500]}")
    raise GenerateError(f"{url}: no answer after {RETRIES} retries")  # pragma: no cover


# --- the JSON endpoint (the metrics service's --base-url) --------------------------------------


def _rfc3339(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def send_json(
    base_url: str,
    batches: Sequence[GeneratedSeries],
    *,
    session: aiohttp.ClientSession | None = None,
    max_samples_per_request: int = MAX_SAMPLES_PER_REQUEST,
    bearer_token: str | None = None,
    backoff_s: float = 0.5,
) -> WriteReport:
    """POST ``{"metrics": [...]}`` to ``<base_url>/backfill/import``, as the service's generator.

    Why the import endpoint rather than ``/metrics/ingest`` (one sample per
    request): generated history is written in a few requests, of any age, and
    the answer's counts (stored, duplicates, errors) go into the report.
    """
    import json

    import aiohttp

    url = base_url.rstrip("/") + "/backfill/import"
    report = WriteReport(series=len(batches))
    items = [
        {
            "metric_name": dict(b.labels)["__name__"],
            "value": float(v),
            "timestamp": _rfc3339(int(t)),
            "labels": {k: v for k, v in b.labels if k != "__name__"},
        }
        for b in batches
        for t, v in zip(b.timestamps.tolist(), b.values.tolist(), strict=True)
    ]
    headers = {"Content-Type": "application/json", "User-Agent": "tsagent-generate"}
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        for lo in range(0, len(items), max_samples_per_request):
            chunk = items[lo : lo + max_samples_per_request]
            body = json.dumps({"metrics": chunk}).encode()
            answer = json.loads(await _post(client, url, body, headers, report, backoff_s))
            report.samples += len(chunk)
            report.stored += int(answer.get("stored", len(chunk)))
            report.duplicates += int(answer.get("duplicates", 0))
    finally:
        if own:
            await client.close()
    return report


def _delay(retry_after: str | None, default: float) -> float:
    try:
        return min(float(retry_after), 10.0) if retry_after else default
    except ValueError:
        return default
