"""Remote-write latency with and without heavy queries running (issue 15).

Run: ``python benchmarks/bench_ingest_under_query.py`` (about four minutes).

1. Starts ``tsagent run`` on a free loopback port with a temporary data directory
   and loads ``benchmarks/loadgen.py``'s ``dashboard`` mix (100,000 series,
   ``--history`` samples each at 15 s) so the queries have data to read.
   It then waits until the daemon is idle (the head flush and the first rollup
   pass after a 2-million-sample load would otherwise land in the first phase).
2. Phase ``idle``: remote write at a steady ``--rate`` samples/s (default 50,000)
   into the same 100,000 series for ``--seconds``, open loop: request ``k`` is
   sent at ``t0 + k * batch / rate`` whether or not earlier ones have answered,
   so a stalled daemon shows as latency, not as a slower sender. Request
   bodies are encoded before the phase starts.
3. Phase ``queries``: the same write load while ``--clients`` (4) clients loop
   issue 15's six heavy queries with ``Cache-Control: no-cache``.
   The two phases alternate ``--cycles`` times (idle, queries, idle, ...) and
   the latencies of each kind are pooled, so a background pass of the daemon
   (rollups, flush) cannot land in one kind only.
4. Prints a Markdown table: remote-write requests, p50/p99/max latency, answers
   that were not 2xx (refused), and the queries answered per status. The
   target: p99 with queries <= 2 x p99 without, and no request refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
import loadgen  # noqa: E402
from bench_query import load, wait_for_query_api  # noqa: E402
from harness import cpu_seconds  # noqa: E402

INTERVAL_MS = 15_000

# Issue 15's six: (expression, kind).
HEAVY: list[tuple[str, str]] = [
    ("sum by (mode) (rate(node_cpu_seconds_total[1m]))", "range"),
    ("avg by (mode) (irate(node_cpu_seconds_total[1m]))", "instant"),
    ('count by (instance) (node_cpu_seconds_total{mode="idle"})', "instant"),
    ('sum by (code) (rate(http_requests_total{method="GET"}[2m]))', "range"),
    ("count(up)", "range"),
    ("topk(5, node_memory_MemAvailable_bytes)", "range"),
]
WRITE_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


@dataclass
class Phase:
    name: str
    requests: int = 0
    refused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    late_starts: int = 0  # requests the sender itself could not start on time (> 50 ms)
    queries: dict[str, int] = field(default_factory=dict)
    query_median_ms: float = 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bodies(
    series: int, rate: int, seconds: float, batch: int, start_ms: int, seed: int
) -> list[bytes]:
    """The phase's requests: rounds over all series, one sample each, ``batch`` per body."""
    label_bytes = [loadgen.encode_labels(loadgen.dashboard_series_labels(i)) for i in range(series)]
    round_ms = series * 1000 // rate  # 100,000 series at 50,000/s: a round every 2 s
    total = int(rate * seconds)
    out: list[bytes] = []
    sent = 0
    r = 0
    while sent < total:
        ts = start_ms + r * round_ms
        for a in range(0, series, batch):
            b = min(series, a + batch)
            vals = [float(seed + r * 1000 + i) for i in range(a, b)]
            out.append(loadgen.encode_request(label_bytes[a:b], ts, vals))
            sent += b - a
            if sent >= total:
                break
        r += 1
    return out


async def write_phase(
    url: str, requests: list[bytes], interval_s: float, phase: Phase
) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(body: bytes, session: aiohttp.ClientSession) -> None:
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=WRITE_HEADERS) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError:
            status = 0
        latencies.append(time.perf_counter() - t0)
        phase.statuses[str(status)] = phase.statuses.get(str(status), 0) + 1
        if not 200 <= status < 300:
            phase.refused += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        t0 = time.perf_counter()
        for k, body in enumerate(requests):
            due = t0 + k * interval_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                phase.late_starts += 1
            tasks.append(asyncio.ensure_future(one(body, session)))
        await asyncio.gather(*tasks)
    phase.requests = len(requests)
    return latencies


async def query_loop(
    base: str, at: float, rng: dict[str, str], stop_at: asyncio.Event, phase: Phase, out: list
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        i = 0
        while not stop_at.is_set():
            expr, kind = HEAVY[i % len(HEAVY)]
            i += 1
            if kind == "range":
                path, form = "/api/v1/query_range", {"query": expr, **rng}
            else:
                path, form = "/api/v1/query", {"query": expr, "time": f"{at:.3f}"}
            t0 = time.perf_counter()
            async with session.post(
                base + path, data=form, headers={"Cache-Control": "no-cache"}
            ) as resp:
                await resp.read()
                status = resp.status
            out.append(time.perf_counter() - t0)
            phase.queries[str(status)] = phase.queries.get(str(status), 0) + 1


async def run_phase(
    name: str,
    base: str,
    requests: list[bytes],
    interval_s: float,
    clients: int,
    at: float,
    rng: dict[str, str],
) -> tuple[Phase, list[float]]:
    phase = Phase(name)
    done = asyncio.Event()
    query_times: list[float] = []
    loops = [
        asyncio.ensure_future(query_loop(base, at, rng, done, phase, query_times))
        for _ in range(clients)
    ]
    if loops:
        await asyncio.sleep(1.0)  # the queries are running before the measured writes start
    latencies = await write_phase(base + "/api/v1/write", requests, interval_s, phase)
    done.set()
    await asyncio.gather(*loops)
    summarise(phase, latencies, query_times)
    return phase, latencies + [-q for q in query_times]  # queries kept as negatives


def summarise(phase: Phase, latencies: list[float], query_times: list[float]) -> None:
    phase.p50_ms = round(percentile(latencies, 0.50) * 1000, 2)
    phase.p99_ms = round(percentile(latencies, 0.99) * 1000, 2)
    phase.max_ms = round(max(latencies, default=0.0) * 1000, 2)
    phase.query_median_ms = round(statistics.median(query_times) * 1000, 1) if query_times else 0


def pooled(name: str, runs: list[tuple[Phase, list[float]]]) -> Phase:
    """One phase of ``name`` from several runs: counts added, percentiles over all requests."""
    out = Phase(name)
    writes: list[float] = []
    queries: list[float] = []
    for phase, times in runs:
        out.requests += phase.requests
        out.refused += phase.refused
        out.late_starts += phase.late_starts
        for table, into in ((phase.statuses, out.statuses), (phase.queries, out.queries)):
            for k, v in table.items():
                into[k] = into.get(k, 0) + v
        writes += [t for t in times if t >= 0]
        queries += [-t for t in times if t < 0]
    summarise(out, writes, queries)
    return out


def settle(pid: int, limit_s: float) -> None:
    """Wait (at most ``limit_s``) until the daemon used under 10% of a core for 3 s."""
    deadline = time.monotonic() + limit_s
    quiet = 0
    last = cpu_seconds(pid)
    while time.monotonic() < deadline and quiet < 3:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.1 else 0
        last = now


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-ingest-query-"))
    daemon = harness.start_tsagent(tmp)
    agent = daemon.proc
    out: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "clients": args.clients}
    spy: subprocess.Popen[bytes] | None = None
    try:
        base = daemon.base
        now = int(time.time() * 1000)
        start_ms = (now - args.history * INTERVAL_MS) // INTERVAL_MS * INTERVAL_MS
        load_args = argparse.Namespace(
            series=args.series, senders=4, rounds=args.history, batch=args.batch
        )
        load(base + "/api/v1/write", load_args, start_ms)
        wait_for_query_api(base, 10.0)
        last = start_ms + (args.history - 1) * INTERVAL_MS
        at = (last + 1) / 1000
        rng = {
            "start": f"{(last - 15 * INTERVAL_MS + 1) / 1000:.3f}",
            "end": f"{at:.3f}",
            "step": "15",
        }
        interval_s = args.batch / args.rate
        settle(agent.pid, args.settle)
        if args.profile:
            spy = harness.start_py_spy(agent.pid, args.profile, "raw", 100)
        runs: dict[str, list[tuple[Phase, list[float]]]] = {"idle": [], "queries": []}
        plan = [("idle", 0), ("queries", args.clients)] * args.cycles
        for k, (name, clients) in enumerate(plan):
            first = last + INTERVAL_MS + k * int(args.seconds * 1000 + 60_000)
            reqs = bodies(args.series, args.rate, args.seconds, args.batch, first, k)
            got = asyncio.run(run_phase(name, base, reqs, interval_s, clients, at, rng))
            runs[name].append(got)
            print(f"  {name}: {asdict(got[0])}", file=sys.stderr)
        phases = [pooled(name, runs[name]) for name in ("idle", "queries")]
        out["phases"] = [asdict(p) for p in phases]
        idle, busy = phases
        out["p99_ratio"] = round(busy.p99_ms / idle.p99_ms, 2) if idle.p99_ms else None
        out["alive"] = agent.poll() is None
    finally:
        if spy is not None:
            harness.stop_py_spy(spy)
        daemon.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| phase | writes | refused | p50 ms | p99 ms | max ms | late starts | queries |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        queries = ", ".join(f"{k}: {v}" for k, v in sorted(p["queries"].items())) or "none"
        if p["queries"]:
            queries += f" (median {p['query_median_ms']} ms)"
        lines.append(
            f"| {p['name']} | {p['requests']:,} | {p['refused']} | {p['p50_ms']} | "
            f"{p['p99_ms']} | {p['max_ms']} | {p['late_starts']} | {queries} |"
        )
    lines.append(f"\np99 with queries / p99 without: {result['p99_ratio']} (target <= 2)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--history", type=int, default=20, help="samples per series before phases")
    p.add_argument("--rate", type=int, default=50_000, help="remote-write samples/s")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--batch", type=int, default=2_000, help="samples per remote-write request")
    p.add_argument("--clients", type=int, default=4, help="concurrent query clients")
    p.add_argument("--cycles", type=int, default=2, help="idle/queries phase pairs")
    p.add_argument("--settle", type=float, default=90.0, help="longest wait for an idle daemon")
    p.add_argument("--profile", metavar="FILE", help="py-spy the daemon (raw, per thread)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"\ningest under query load: {args.series:,} series, {args.rate:,} samples/s for "
            f"{args.seconds:g} s per phase, {args.clients} query clients\n"
        )
        print(markdown(result))
    refused = sum(p["refused"] for p in result["phases"])
    ok = refused == 0 and result["alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
