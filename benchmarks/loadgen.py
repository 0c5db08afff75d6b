"""A reusable Prometheus remote-write (1.0) load generator.

Sends N series of node-exporter-like label sets (7 to 9 labels each), one
sample per series per request round, ``--batch`` series per request, from K
concurrent senders. Sender k owns shard k of the series and sends its rounds
in time order (round r carries timestamp start + r * interval), as one
Prometheus remote-write shard would. Refused requests (429, 5xx) are retried
with back-off, honouring ``Retry-After`` (capped), so every sample either
lands or is counted as failed.

Requests are encoded by hand (label bytes pre-encoded once per series), so
the generator spends little CPU next to the daemon on a small machine.

Run: ``python benchmarks/loadgen.py --url http://127.0.0.1:9201/api/v1/write``
(``--help`` for the knobs). Only loopback or your own test hosts, please.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp
import cramjam

_pack_double = struct.Struct("<d").pack

# (metric name, extra label names) of node-exporter-like families; with
# __name__, instance, job, env and region each series has 7 to 9 labels.
FAMILIES: list[tuple[str, tuple[str, ...]]] = [
    ("node_cpu_seconds_total", ("cpu", "mode")),
    ("node_filesystem_avail_bytes", ("device", "fstype", "mountpoint")),
    ("node_network_receive_bytes_total", ("device", "interface_type")),
    ("node_network_transmit_bytes_total", ("device", "interface_type")),
    ("node_disk_read_bytes_total", ("device", "model")),
    ("node_disk_written_bytes_total", ("device", "model")),
    ("node_memory_MemAvailable_bytes", ("numa_node", "kind")),
    ("node_load1", ("cluster", "rack")),
    ("node_hwmon_temp_celsius", ("chip", "sensor", "slot")),
    ("node_systemd_unit_state", ("name", "state", "type", "unit_kind")),
]
SERIES_PER_HOST = 200
MODES = ["idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice"]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def series_labels(i: int) -> list[tuple[str, str]]:
    """The sorted label set of series ``i`` (unique per i)."""
    host, slot = divmod(i, SERIES_PER_HOST)
    name, extra = FAMILIES[slot % len(FAMILIES)]
    k = slot // len(FAMILIES)
    labels = {
        "__name__": name,
        "instance": f"10.{(host >> 16) & 255}.{(host >> 8) & 255}.{host & 255}:9100",
        "job": "node",
        "env": ("prod", "staging", "dev")[host % 3],
        "region": ("eu-west-1", "us-east-1", "ap-south-1", "sa-east-1")[host % 4],
    }
    for j, lab in enumerate(extra):
        if lab == "mode":
            labels[lab] = MODES[k % len(MODES)]
        elif j == 0:
            labels[lab] = f"{lab}{k}"  # unique within the host: the family's k-th series
        else:
            labels[lab] = f"{lab}-{(host + j) % 5}"
    return sorted(labels.items())


# A dashboard-shaped mix (``--mix dashboard``) for the query benchmark: per host,
# 104 CPU-seconds counters (13 CPUs x 8 modes, so 100,000 series hold 52,000 of
# them), ``up``, a classic histogram with ``le`` buckets, and some gauges. Each
# entry: (metric name, count per host, label builder for the j-th one).
HISTOGRAM_BOUNDS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]
HANDLERS = ["/api/v1/query", "/api/v1/write", "/metrics"]
DASHBOARD_FAMILIES: list[tuple[str, int, Callable[[int], dict[str, str]]]] = [
    ("node_cpu_seconds_total", 104, lambda j: {"cpu": str(j // 8), "mode": MODES[j % 8]}),
    ("up", 1, lambda j: {}),
    (
        "http_request_duration_seconds_bucket",
        len(HANDLERS) * len(HISTOGRAM_BOUNDS),
        lambda j: {
            "handler": HANDLERS[j // len(HISTOGRAM_BOUNDS)],
            "le": HISTOGRAM_BOUNDS[j % len(HISTOGRAM_BOUNDS)],
        },
    ),
    ("http_request_duration_seconds_count", len(HANDLERS), lambda j: {"handler": HANDLERS[j]}),
    ("http_request_duration_seconds_sum", len(HANDLERS), lambda j: {"handler": HANDLERS[j]}),
    ("node_filesystem_avail_bytes", 10, lambda j: {"device": f"sd{chr(97 + j)}", "fstype": "ext4"}),
    ("node_network_receive_bytes_total", 8, lambda j: {"device": f"eth{j}"}),
    ("node_memory_MemAvailable_bytes", 1, lambda j: {}),
    ("node_load1", 1, lambda j: {}),
    ("node_systemd_unit_state", 24, lambda j: {"name": f"unit{j}.service", "state": "active"}),
    # Issue 15's sum by (code) (rate(http_requests_total{method="GET"}[2m])).
    (
        "http_requests_total",
        12,
        lambda j: {
            "handler": HANDLERS[j // 6 % 2],
            "method": ("GET", "POST")[j // 3 % 2],
            "code": ("200", "404", "500")[j % 3],
        },
    ),
]
assert sum(n for _, n, _ in DASHBOARD_FAMILIES) == SERIES_PER_HOST


def dashboard_series_labels(i: int) -> list[tuple[str, str]]:
    """The sorted label set of series ``i`` in the dashboard mix (unique per i).

    Bucket series walk upward like every counter here, independently of each
    other, so they are not cumulative; ``histogram_quantile`` repairs that the
    same way in Prometheus and tsagent, and the cost of the query is the same.
    """
    host, slot = divmod(i, SERIES_PER_HOST)
    k = 0
    while slot >= DASHBOARD_FAMILIES[k][1]:
        slot -= DASHBOARD_FAMILIES[k][1]
        k += 1
    name, _, build = DASHBOARD_FAMILIES[k]
    labels = {
        "__name__": name,
        "instance": f"10.{(host >> 16) & 255}.{(host >> 8) & 255}.{host & 255}:9100",
        "job": "node",
        "env": ("prod", "staging", "dev")[host % 3],
        "region": ("eu-west-1", "us-east-1", "ap-south-1", "sa-east-1")[host % 4],
        **build(slot),
    }
    return sorted(labels.items())


MIXES: dict[str, Callable[[int], list[tuple[str, str]]]] = {
    "node": series_labels,
    "dashboard": dashboard_series_labels,
}


def encode_labels(labels: list[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of a TimeSeries (field 1, repeated Label)."""
    return b"".join(
        _field(0x0A, _field(0x0A, k.encode()) + _field(0x12, v.encode())) for k, v in labels
    )


def encode_request(label_bytes: list[bytes], ts: int, values: list[float]) -> bytes:
    """A WriteRequest with one sample per series, snappy-compressed."""
    tsb = b"\x10" + varint(ts & 0xFFFFFFFFFFFFFFFF)
    parts = []
    for lb, v in zip(label_bytes, values, strict=True):
        sample = (b"\x09" + _pack_double(v) + tsb) if v != 0.0 else tsb  # proto3 omits 0.0
        body = lb + b"\x12" + varint(len(sample)) + sample
        parts.append(b"\x0a" + varint(len(body)) + body)
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))


@dataclass
class LoadResult:
    series: int
    senders: int
    rounds: int
    batch: int
    requests: int = 0
    samples_sent: int = 0
    samples_accepted: int = 0
    samples_failed: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples_per_second: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)


async def run_load(
    url: str,
    *,
    series: int = 100_000,
    senders: int = 4,
    rounds: int = 20,
    batch: int = 2_000,
    start_ms: int | None = None,
    interval_ms: int = 15_000,
    headers: dict[str, str] | None = None,
    max_retries: int = 50,
    seed: int = 1,
    mix: str = "node",
) -> LoadResult:
    """Send the load and return what happened; never raises for HTTP errors.

    ``mix`` picks the label sets (:data:`MIXES`): ``node`` (the default) or
    ``dashboard``, the series the query benchmark's dashboard queries read.
    Equal arguments (``start_ms`` included) send identical samples.
    """
    rng = random.Random(seed)
    make_labels = MIXES[mix]
    label_bytes = [encode_labels(make_labels(i)) for i in range(series)]
    start = start_ms if start_ms is not None else int(time.time() * 1000) - rounds * interval_ms
    res = LoadResult(series, senders, rounds, batch)
    latencies: list[float] = []
    hdrs = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
        "User-Agent": "tsagent-loadgen/1",
        **(headers or {}),
    }
    shard = (series + senders - 1) // senders
    # Counters and gauges: values walk upward; a few are 0 (sent without a value field).
    values = [0.0 if rng.random() < 0.05 else rng.uniform(0, 1e6) for _ in range(series)]

    async def post(session: aiohttp.ClientSession, body: bytes, n: int) -> None:
        for attempt in range(max_retries + 1):
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=hdrs) as resp:
                    text = await resp.text()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except aiohttp.ClientError as exc:
                status, text, retry_after = 0, str(exc), None
            latencies.append(time.perf_counter() - t0)
            res.requests += 1
            res.statuses[str(status)] = res.statuses.get(str(status), 0) + 1
            if 200 <= status < 300:
                res.samples_accepted += n
                return
            if status == 429 or status >= 500 or status == 0:
                res.retries += 1
                delay = min(float(retry_after), 1.0) if retry_after else 0.05 * 2 ** min(attempt, 4)
                await asyncio.sleep(delay)
                continue
            if len(res.errors) < 5:
                res.errors.append(f"{status}: {text[:300]}")
            res.samples_failed += n
            return
        res.samples_failed += n

    async def sender(k: int, session: aiohttp.ClientSession) -> None:
        lo, hi = k * shard, min(series, (k + 1) * shard)
        for r in range(rounds):
            ts = start + r * interval_ms
            for a in range(lo, hi, batch):
                b = min(hi, a + batch)
                vals = values[a:b]
                for i in range(a, b):
                    values[i] += 1.0 if values[i] else 0.0
                body = encode_request(label_bytes[a:b], ts, vals)
                res.bytes_sent += len(body)
                res.samples_sent += b - a
                await post(session, body, b - a)

    connector = aiohttp.TCPConnector(limit=senders)
    timeout = aiohttp.ClientTimeout(total=120)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(sender(k, session) for k in range(senders)))
    res.seconds = time.perf_counter() - t0
    res.samples_per_second = res.samples_accepted / res.seconds if res.seconds else 0.0
    if latencies:
        latencies.sort()
        res.latency_p50_ms = 1000 * latencies[len(latencies) // 2]
        res.latency_p99_ms = 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--url", required=True, help="remote-write URL, e.g. http://127.0.0.1:9201/api/v1/write"
    )
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=2_000, help="series (= samples) per request")
    p.add_argument("--interval-ms", type=int, default=15_000, help="timestamp step per round")
    p.add_argument("--mix", choices=sorted(MIXES), default="node", help="label sets to send")
    p.add_argument("--bearer", help="bearer token for the write group")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else None
    res = asyncio.run(
        run_load(
            args.url,
            series=args.series,
            senders=args.senders,
            rounds=args.rounds,
            batch=args.batch,
            interval_ms=args.interval_ms,
            headers=headers,
            mix=args.mix,
        )
    )
    if args.json:
        print(json.dumps(asdict(res), indent=2))
    else:
        for k, v in asdict(res).items():
            print(f"{k:>20}: {v}")
    return 0 if res.samples_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
