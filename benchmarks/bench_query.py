"""PromQL query benchmark: tsagent against Prometheus 2.42 holding the same data.

Run: ``python benchmarks/bench_query.py`` (a few minutes; needs
``/usr/bin/prometheus``, the Debian package).

1. Starts ``tsagent run`` and ``prometheus --web.enable-remote-write-receiver``
   as subprocesses on free loopback ports with temporary data directories.
2. Sends both the same remote-write load with ``benchmarks/loadgen.py``'s
   ``dashboard`` mix: 100,000 active series (52,000 ``node_cpu_seconds_total``,
   ``up``, a classic histogram, gauges), ``--rounds`` samples each at 15 s,
   identical timestamps and values.
3. Times typical dashboard queries over HTTP (``/api/v1/query`` at the last
   sample, ``/api/v1/query_range`` over the data with a 15 s step) against both,
   after one untimed run each, median of ``--repeat`` runs (5; more, up to 101,
   until ``--min-seconds`` (0.3 s) have passed, so fast queries get a steadier
   median), the two servers' requests alternated; tsagent's runs send
   ``Cache-Control: no-cache`` so its query cache (when present) does not
   flatter it. Then cached repeats: the same tsagent request without that
   header, once to fill the cache, then ``--repeat`` timed runs (median).
4. Prints a Markdown table (tsagent s, Prometheus s, ratio, cached repeat) and
   checks that both returned the same number of series for every query.

``--json`` prints the figures as JSON, ``--profile FILE`` runs py-spy on the
daemon while the tsagent queries run, ``--keep`` keeps the data directories.
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
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
import loadgen  # noqa: E402

PROMETHEUS = harness.PROMETHEUS
INTERVAL_MS = 15_000

# (name, expression): each runs as an instant and as a range query.
QUERIES: list[tuple[str, str]] = [
    ("count(up)", "count(up)"),
    ("sum by (mode) (rate(cpu[1m]))", "sum by (mode) (rate(node_cpu_seconds_total[1m]))"),
    ("rate(cpu[1m]) (52k series)", "rate(node_cpu_seconds_total[1m])"),
    ("sum(rate(cpu[5m]))", "sum(rate(node_cpu_seconds_total[5m]))"),
    ("topk(5, rate(cpu[1m]))", "topk(5, rate(node_cpu_seconds_total[1m]))"),
    (
        "histogram_quantile(0.9, ...)",
        "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    ),
    (
        "avg by (instance) idle share",
        "1 - avg by (instance) (rate(node_cpu_seconds_total{mode='idle'}[5m]))",
    ),
    (
        "topk(5, sum by (instance) (rate(net[5m])))",
        "topk(5, sum by (instance) (rate(node_network_receive_bytes_total[5m])))",
    ),
    ("quantile(0.9, node_load1)", "quantile(0.9, node_load1)"),
    (
        "avail / size by region",
        "sum by (region) (node_filesystem_avail_bytes) / on(region) "
        "group_left count by (region) (up)",
    ),
    # Issue 15's six (two of which are above): Prometheus 3.x's territory.
    ("avg by (mode) (irate(cpu[1m]))", "avg by (mode) (irate(node_cpu_seconds_total[1m]))"),
    (
        "count by (instance) (cpu{idle})",
        'count by (instance) (node_cpu_seconds_total{mode="idle"})',
    ),
    (
        "sum by (code) (rate(http GET[2m]))",
        'sum by (code) (rate(http_requests_total{method="GET"}[2m]))',
    ),
    ("topk(5, node_memory_MemAvailable_bytes)", "topk(5, node_memory_MemAvailable_bytes)"),
]


@dataclass
class Timing:
    name: str
    kind: str  # instant | range
    tsagent_s: float = 0.0
    prometheus_s: float = 0.0
    cached_s: float | None = None
    tsagent_series: int = 0
    prometheus_series: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.tsagent_s / self.prometheus_s if self.prometheus_s else float("inf")


def request(
    url: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[float, int, bytes]:
    """POST a form, return (seconds until the whole body arrived, status, body)."""
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        method="POST",
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return time.perf_counter() - t0, status, body


def series_count(body: bytes) -> int:
    payload = json.loads(body)
    if payload.get("status") != "success":
        raise RuntimeError(str(payload)[:300])
    result = payload["data"]["result"]
    return len(result) if payload["data"]["resultType"] in ("vector", "matrix") else 1


def median_of(
    url: str, params: dict[str, str], repeat: int, headers: dict[str, str] | None = None
) -> tuple[float, int]:
    """Median seconds of ``repeat`` runs (issue 15 measures the median of 5), and series."""
    times: list[float] = []
    count = 0
    for _ in range(repeat):
        seconds, status, body = request(url, params, headers)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        count = series_count(body)
        times.append(seconds)
    return statistics.median(times), count


def medians_interleaved(
    a: tuple[str, dict[str, str] | None],
    b: tuple[str, dict[str, str] | None],
    params: dict[str, str],
    repeat: int,
    min_seconds: float = 0.0,
    most: int = 101,
) -> tuple[tuple[float, int], tuple[float, int]]:
    """:func:`median_of` for two servers, their requests alternated (a, b, a, b, ...).

    A burst of load from elsewhere on the machine then lands on both, not on
    whichever happened to be measured at the time. At least ``repeat`` pairs,
    and more (up to ``most``) until ``min_seconds`` have passed: the median of
    five 1 ms requests moved by a tenth between runs, of fifty by a few hundredths.
    """
    times: tuple[list[float], list[float]] = ([], [])
    counts = [0, 0]
    started = time.perf_counter()
    done = 0
    while done < repeat or (done < most and time.perf_counter() - started < min_seconds):
        done += 1
        for k, (url, headers) in enumerate((a, b)):
            seconds, status, body = request(url, params, headers)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
            counts[k] = series_count(body)
            times[k].append(seconds)
    return (
        (statistics.median(times[0]), counts[0]),
        (statistics.median(times[1]), counts[1]),
    )


def wait_for_query_api(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, status, _ = request(base + "/api/v1/query", {"query": "1"})
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}/api/v1/query answers {status}; no HTTP query API?")
        time.sleep(1)


def load(url: str, args: argparse.Namespace, start_ms: int) -> loadgen.LoadResult:
    res = asyncio.run(
        loadgen.run_load(
            url,
            series=args.series,
            senders=args.senders,
            rounds=args.rounds,
            batch=args.batch,
            start_ms=start_ms,
            interval_ms=INTERVAL_MS,
            mix="dashboard",
        )
    )
    if res.samples_failed:
        raise RuntimeError(f"{url}: {res.samples_failed} samples failed: {res.errors}")
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-query-"))
    agent = harness.start("tsagent", tmp)
    assert agent is not None
    try:
        prom = harness.start_prometheus(
            tmp / "prometheus", extra_args=("--query.max-samples=500000000",)
        )
    except BaseException:
        agent.stop(30)
        raise
    assert prom is not None
    spy: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"tmp_dir": str(tmp)}
    try:
        agent_url, prom_url = agent.base, prom.base
        now = int(time.time() * 1000)
        start_ms = (now - args.rounds * INTERVAL_MS) // INTERVAL_MS * INTERVAL_MS
        t0 = time.perf_counter()
        load(agent_url + "/api/v1/write", args, start_ms)
        out["tsagent_load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        load(prom_url + "/api/v1/write", args, start_ms)
        out["prometheus_load_s"] = round(time.perf_counter() - t0, 1)
        wait_for_query_api(agent_url, args.api_timeout)
        last = start_ms + (args.rounds - 1) * INTERVAL_MS
        at = f"{(last + 1) / 1000:.3f}"
        rng = {
            "start": f"{(start_ms + args.range_skip_s * 1000 + 1) / 1000:.3f}",
            "end": at,
            "step": str(args.step),
        }
        out["instant_at"] = at
        out["range"] = rng
        if args.profile:
            spy = harness.start_py_spy(agent.pid, args.profile, args.profile_format, rate=100)
        timings: list[Timing] = []
        no_cache = {"Cache-Control": "no-cache"}
        for name, expr in QUERIES:
            if args.only and not any(o in name or o in expr for o in args.only):
                continue
            for kind, path, params in (
                ("instant", "/api/v1/query", {"query": expr, "time": at}),
                ("range", "/api/v1/query_range", {"query": expr, **rng}),
            ):
                tm = Timing(name, kind)
                try:
                    request(prom_url + path, params)  # one untimed run each: warm-up
                    request(agent_url + path, params, no_cache)
                    (tm.prometheus_s, tm.prometheus_series), (tm.tsagent_s, tm.tsagent_series) = (
                        medians_interleaved(
                            (prom_url + path, None),
                            (agent_url + path, no_cache),
                            params,
                            args.repeat,
                            args.min_seconds,
                        )
                    )
                    request(agent_url + path, params)  # fills the cache, if there is one
                    tm.cached_s, _ = median_of(agent_url + path, params, args.repeat)
                except RuntimeError as exc:
                    tm.errors.append(str(exc))
                if tm.tsagent_series != tm.prometheus_series:
                    tm.errors.append(
                        f"series: tsagent {tm.tsagent_series}, prometheus {tm.prometheus_series}"
                    )
                timings.append(tm)
                print(
                    f"  {kind:7} {name:45} tsagent {tm.tsagent_s:8.3f} s  "
                    f"prometheus {tm.prometheus_s:8.3f} s  {tm.errors or ''}",
                    file=sys.stderr,
                )
        out["timings"] = [asdict(t) | {"ratio": t.ratio} for t in timings]
    finally:
        if spy is not None:
            harness.stop_py_spy(spy)
        agent.stop(120)
        prom.stop(120)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| query | type | series | tsagent s | Prometheus s | ratio | tsagent cached repeat |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in result["timings"]:
        cached = "n/a" if t["cached_s"] is None else f"{t['cached_s'] * 1000:.1f} ms"
        flag = " (!)" if t["errors"] else ""
        lines.append(
            f"| `{t['name']}` | {t['kind']} | {t['prometheus_series']:,} | "
            f"{t['tsagent_s']:.3f} | {t['prometheus_s']:.3f} | {t['ratio']:.2f}{flag} | {cached} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=20, help="samples per series, 15 s apart")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--step", type=int, default=15, help="range query step, seconds")
    p.add_argument(
        "--range-skip-s", type=int, default=60, help="range queries start this far into the data"
    )
    p.add_argument("--repeat", type=int, default=5, help="timed runs per query (median counts)")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=0.3,
        help="keep alternating past --repeat (up to 101 pairs) until this long has passed",
    )
    p.add_argument("--only", nargs="*", help="run only queries whose name/expr contain these")
    p.add_argument("--api-timeout", type=float, default=5.0, help="wait for /api/v1/query")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    p.add_argument("--profile", metavar="FILE", help="py-spy the daemon during its queries")
    p.add_argument("--profile-format", default="flamegraph", help="py-spy format (speedscope, raw)")
    args = p.parse_args(argv)
    if not PROMETHEUS.exists():
        print(f"{PROMETHEUS} not installed (Debian package 'prometheus')", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"\nquery benchmark: {args.series:,} series x {args.rounds} samples (dashboard mix); "
            f"tsagent load {result['tsagent_load_s']} s, Prometheus load "
            f"{result['prometheus_load_s']} s; range {result['range']}\n"
        )
        print(markdown(result))
    return 1 if any(t["errors"] for t in result["timings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
