"""tsagent's PromQL against a real Prometheus (the Debian package, 2.42 in CI).

The same generated data set (counters with a reset, gauges, classic ``le``
histograms, staleness markers, a series that just stops, several jobs and
instances) is remote-written, as identical WriteRequests, to a Prometheus
started with ``--web.enable-remote-write-receiver`` and to a tsagent
subprocess.  Then every query of :data:`QUERIES` runs as an instant query
and (unless it yields a range vector or a string) as a range query against
both HTTP APIs, and the answers must agree: the same result type, the same
label sets, the same timestamps, and values within :data:`REL_TOL` relative
(NaN equals NaN, infinities by sign).  Vectors are compared as sets of
series, except for ``sort``/``sort_desc`` instant queries, where the order is
the point.

tsagent follows Prometheus 3 while Debian ships 2.42.  The data and the
evaluation times are chosen so that none of the semantic differences listed
in :data:`KNOWN_DIFFERENCES` can show up; in particular no window boundary
(range selector, lookback, subquery range) ever falls on a sample timestamp.

Skipped, with the reason, when ``/usr/bin/prometheus`` is absent; ``.ci/run``
installs the ``prometheus`` package.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cramjam
import pytest

from agent.prompb import remote_pb2, types_pb2
from tests.conftest import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PROMETHEUS.exists(),
        reason=f"{PROMETHEUS} not installed (Debian package 'prometheus'; .ci/run installs it)",
    ),
]

# Every known way Prometheus 2.42 answers differently from Prometheus 3 (whose
# semantics tsagent implements), and how this test keeps clear of it.
KNOWN_DIFFERENCES: list[tuple[str, str]] = [
    (
        "range selectors, the lookback window and subquery ranges are closed [t-r, t] in 2.x, "
        "left-open (t-r, t] in 3",
        "samples sit at x.5 s (base + 3.5 s + k*15 s), evaluation times at x.25 s and every "
        "range, offset, step and subquery step is whole seconds, so no boundary is ever a "
        "sample timestamp or a subquery step; in the nested subquery the inner range (5m) "
        "is no multiple of gcd(outer step 2m, inner step 40s), for the same reason",
    ),
    (
        "holt_winters() is called double_exponential_smoothing() in 3 (behind a feature flag)",
        "the queries use holt_winters(), which tsagent also accepts",
    ),
    (
        "functions that 2.42 lacks: first_over_time, mad_over_time, sort_by_label(_desc), "
        "limitk, limit_ratio, ts_of_*_over_time, info, histogram_* for native histograms",
        "not queried",
    ),
    (
        "3 sums with Kahan-Neumaier compensation (sum, avg, *_over_time, deriv, "
        "predict_linear) and averages without an incremental mean unless it overflows; 2.42 "
        "sums plainly",
        "values are well-conditioned (no catastrophic cancellation), so the results agree "
        "far inside the 1e-9 relative tolerance",
    ),
    (
        "regex '.' matches a newline in 3, not in 2.x; 3 accepts UTF-8 metric and label names",
        "no label value contains a newline; all names are legacy identifiers",
    ),
    (
        "sort()/sort_desc() order of equal values and topk/bottomk choice among equal values "
        "may differ; 3 warns that sort is ineffective in range queries",
        "values are random floats without ties; annotations are not compared",
    ),
    (
        "histogram_quantile: 3 reports non-monotonic buckets as an annotation; both fix them",
        "buckets are cumulative (monotonic) and annotations are not compared",
    ),
]

REL_TOL = 1e-9
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
STEP_MS = 15_000
SAMPLES = 120  # 30 minutes per series

# Minutes since the data's base minute; samples are at base + 3.5 s + k * 15 s.
INSTANT_AT_MS = 25 * 60_000 + 7_250
RANGE_START_MS = 8 * 60_000 + 7_250
RANGE_END_MS = 29 * 60_000 + 7_250
RANGE_STEP = "30"
AT_MS = 14 * 60_000 + 37_250  # for explicit `@` modifiers

# --- the data set ----------------------------------------------------------------------------

SeriesData = tuple[dict[str, str], list[tuple[int, float]]]


def dataset(base_ms: int) -> list[SeriesData]:
    """Deterministic series; ``base_ms`` is a whole minute.

    The value shapes are chosen for the queries: float counter increments (no
    ties for topk/sort), one counter reset, monotonic cumulative buckets, a
    gauge that goes stale for a while (explicit staleness markers), one that
    ends with a marker, one that just stops (lookback expiry), small integer
    gauges with repeated values (count_values, changes, quantile ties).
    """
    rng = random.Random(20240501)
    times = [base_ms + 3_500 + k * STEP_MS for k in range(SAMPLES)]
    out: list[SeriesData] = []

    def counter(labels: dict[str, str], lo: float, hi: float, reset_at: int | None = None) -> None:
        v = rng.uniform(0, 1000)
        pts = []
        for k, t in enumerate(times):
            if k == reset_at:
                v = rng.uniform(0, 5)
            else:
                v += round(rng.uniform(lo, hi), 3)
            pts.append((t, v))
        out.append((labels, pts))

    def gauge(labels: dict[str, str], center: float, spread: float) -> None:
        out.append((labels, [(t, round(center + rng.uniform(-spread, spread), 4)) for t in times]))

    api = ["a:80", "b:80", "c:80"]
    nodes = ["n1:9100", "n2:9100"]
    for inst in api:
        for method in ("get", "post"):
            for code in ("200", "500"):
                reset = 60 if (inst, method, code) == ("c:80", "post", "200") else None
                scale = 10.0 if code == "200" else 1.0
                counter(
                    {
                        "__name__": "http_requests_total",
                        "job": "api",
                        "instance": inst,
                        "method": method,
                        "code": code,
                    },
                    0.0,
                    scale,
                    reset,
                )
        # Classic histogram: cumulative counts per upper bound, plus _sum and _count.
        bounds = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"]
        counts = [0.0] * len(bounds)
        total = 0.0
        series: list[list[tuple[int, float]]] = [[] for _ in bounds]
        sums: list[tuple[int, float]] = []
        for t in times:
            new = [rng.randint(0, 30) for _ in bounds]
            acc = 0.0
            for i, n in enumerate(new):
                acc += n
                counts[i] += acc
                series[i].append((t, counts[i]))
            total += acc * rng.uniform(0.1, 0.6)
            sums.append((t, round(total, 3)))
        base = {"job": "api", "instance": inst}
        for le, pts in zip(bounds, series, strict=True):
            out.append(({"__name__": "request_duration_seconds_bucket", **base, "le": le}, pts))
        out.append(({"__name__": "request_duration_seconds_sum", **base}, sums))
        out.append(({"__name__": "request_duration_seconds_count", **base}, series[-1]))
        out.append(({"__name__": "up", "job": "api", "instance": inst}, [(t, 1.0) for t in times]))
        out.append(
            (
                {
                    "__name__": "build_info",
                    "job": "api",
                    "instance": inst,
                    "version": f"1.{api.index(inst)}.0",
                    "revision": f"abc-{api.index(inst)}",
                },
                [(t, 1.0) for t in times],
            )
        )
    for inst in nodes:
        for cpu in ("0", "1"):
            for mode in ("idle", "user", "system"):
                counter(
                    {
                        "__name__": "node_cpu_seconds_total",
                        "job": "node",
                        "instance": inst,
                        "cpu": cpu,
                        "mode": mode,
                    },
                    0.0,
                    15.0 if mode == "idle" else 3.0,
                )
        mem = rng.uniform(2e9, 4e9)
        pts = []
        for t in times:
            mem += rng.uniform(-5e7, 4e7)
            pts.append((t, round(mem)))
        out.append(({"__name__": "node_memory_free_bytes", "job": "node", "instance": inst}, pts))
        for sensor in ("s1", "s2"):
            labels = {
                "__name__": "temperature_celsius",
                "job": "node",
                "instance": inst,
                "sensor": sensor,
            }
            gauge(labels, 40.0 if sensor == "s1" else -3.0, 12.0)
        up = [(t, 0.0 if inst == "n2:9100" and 50 <= k < 70 else 1.0) for k, t in enumerate(times)]
        out.append(({"__name__": "up", "job": "node", "instance": inst}, up))
    for q in ("q1", "q2", "q3", "q4"):
        out.append(
            (
                {"__name__": "queue_depth", "job": "batch", "queue": q},
                [(t, float(rng.randint(0, 6))) for t in times],
            )
        )
    # Staleness: w1 goes stale for 15 samples and comes back, w2 ends with a marker,
    # vanished_gauge just stops (it disappears when the 5 m lookback runs out).
    flaky1 = [(t, rng.uniform(0, 100)) for t in times]
    flaky1 = [
        (t, STALE_NAN if k == 40 else v) for k, (t, v) in enumerate(flaky1) if not 40 < k < 55
    ]
    flaky2 = [(t, STALE_NAN if k == 70 else rng.uniform(0, 100)) for k, t in enumerate(times[:71])]
    out.append(({"__name__": "flaky_gauge", "job": "batch", "instance": "w1"}, flaky1))
    out.append(({"__name__": "flaky_gauge", "job": "batch", "instance": "w2"}, flaky2))
    vanished = [(t, rng.uniform(-1, 1)) for t in times[:80]]
    out.append(({"__name__": "vanished_gauge", "job": "batch", "instance": "w3"}, vanished))
    return out


def write_requests(data: list[SeriesData], per_request: int = 8) -> list[bytes]:
    """Snappy-compressed remote-write 1.0 bodies, each carrying whole series in time order."""
    bodies = []
    for i in range(0, len(data), per_request):
        req = remote_pb2.WriteRequest()
        for labels, points in data[i : i + per_request]:
            ts = req.timeseries.add()
            for name, value in sorted(labels.items()):
                ts.labels.append(types_pb2.Label(name=name, value=value))
            for t, v in points:
                ts.samples.append(types_pb2.Sample(value=v, timestamp=t))
        bodies.append(bytes(cramjam.snappy.compress_raw(req.SerializeToString())))
    return bodies


# --- the queries ------------------------------------------------------------------------------

# ``{at}`` is replaced by the AT_MS time in seconds.
QUERIES: list[str] = [
    # selectors, offset, @
    "http_requests_total",
    'http_requests_total{method="get"}',
    'http_requests_total{code=~"5.."}',
    'http_requests_total{instance!~"a.*",method!="post"}',
    '{__name__=~"node_.*",mode="idle"}',
    "http_requests_total offset 5m",
    "http_requests_total offset -2m",
    "http_requests_total @ {at}",
    "temperature_celsius @ start()",
    "temperature_celsius @ end() offset 1m",
    "http_requests_total[2m]",
    "flaky_gauge[10m]",
    "temperature_celsius[1m] offset 3m",
    "flaky_gauge",
    "vanished_gauge",
    "up",
    "up == 0",
    # rate and friends
    "rate(http_requests_total[5m])",
    "rate(http_requests_total[1m])",
    "irate(http_requests_total[2m])",
    "increase(http_requests_total[10m])",
    "delta(temperature_celsius[5m])",
    "idelta(temperature_celsius[3m])",
    "deriv(node_memory_free_bytes[10m])",
    "predict_linear(node_memory_free_bytes[10m], 3600)",
    "holt_winters(temperature_celsius[10m], 0.5, 0.3)",
    "resets(http_requests_total[30m])",
    "changes(queue_depth[10m])",
    "rate(http_requests_total[5m] offset 3m)",
    "rate(http_requests_total[5m] @ end())",
    "increase(node_cpu_seconds_total[3m])",
    "rate(request_duration_seconds_count[2m] @ {at})",
    # *_over_time
    "avg_over_time(temperature_celsius[5m])",
    "sum_over_time(queue_depth[5m])",
    "min_over_time(temperature_celsius[10m])",
    "max_over_time(temperature_celsius[10m])",
    "count_over_time(flaky_gauge[5m])",
    "stddev_over_time(temperature_celsius[10m])",
    "stdvar_over_time(node_memory_free_bytes[5m])",
    "quantile_over_time(0.9, temperature_celsius[10m])",
    "quantile_over_time(0.25, queue_depth[15m])",
    "last_over_time(flaky_gauge[5m])",
    "present_over_time(flaky_gauge[3m])",
    'absent_over_time(flaky_gauge{instance="w2"}[3m])',
    "absent_over_time(nonexistent_metric[5m])",
    "absent_over_time(vanished_gauge[2m])",
    "last_over_time(vanished_gauge[10m])",
    # aggregations
    "sum(http_requests_total)",
    "sum by (instance) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "avg by (mode) (rate(node_cpu_seconds_total[2m]))",
    "min by (job) (up)",
    "max without (sensor) (temperature_celsius)",
    "count(up)",
    "count by (job) (up == 1)",
    "group by (job) (up)",
    "stddev by (instance) (temperature_celsius)",
    "stdvar(node_memory_free_bytes)",
    "topk(3, rate(http_requests_total[5m]))",
    "bottomk(2, temperature_celsius)",
    "topk by (instance) (1, http_requests_total)",
    "quantile(0.5, temperature_celsius)",
    "quantile by (job) (0.95, rate(http_requests_total[5m]))",
    'count_values("depth", queue_depth)',
    'count_values without (queue) ("v", queue_depth)',
    "avg(temperature_celsius) by (instance)",
    "sum by (le) (rate(request_duration_seconds_bucket[5m]))",
    "count(count by (cpu) (node_cpu_seconds_total))",
    "topk(2, sum by (instance, mode) (rate(node_cpu_seconds_total[5m])))",
    "quantile(0.3, queue_depth) by (job)",
    "sum(queue_depth) by (job) > bool 12",
    # histograms
    "histogram_quantile(0.9, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.99, sum by (le, instance) (rate(request_duration_seconds_bucket[10m])))",
    "histogram_quantile(0.25, sum without (instance) "
    "(increase(request_duration_seconds_bucket[3m])))",
    "rate(request_duration_seconds_sum[5m]) / rate(request_duration_seconds_count[5m])",
    # binary operators
    "http_requests_total * 2 + 1",
    "-temperature_celsius",
    "temperature_celsius > 40",
    "temperature_celsius > bool 40",
    "2 ^ up",
    "node_memory_free_bytes / 1024 / 1024 % 7",
    'rate(http_requests_total{code="500"}[5m]) / ignoring(code) '
    'rate(http_requests_total{code="200"}[5m])',
    "rate(http_requests_total[5m]) / on(instance) group_left "
    "sum by (instance) (rate(http_requests_total[5m]))",
    "up * on(job, instance) group_left(version) build_info",
    "max by (instance, version) (build_info) * on(instance) group_right(version) "
    "rate(http_requests_total[5m])",
    "http_requests_total and on(instance) (up == 1)",
    "up or vanished_gauge",
    "temperature_celsius unless temperature_celsius > 45",
    'http_requests_total unless on(code) http_requests_total{code="500"}',
    "flaky_gauge or on() vector(0)",
    "node_memory_free_bytes == bool node_memory_free_bytes offset 1m",
    "temperature_celsius - on(instance) group_left avg by (instance) (temperature_celsius)",
    "(temperature_celsius > 30) < 50",
    "1 - avg by (instance) (rate(node_cpu_seconds_total{mode='idle'}[5m]))",
    "sum(rate(node_cpu_seconds_total{mode!='idle'}[5m])) by (instance) "
    "/ count by (instance) (node_cpu_seconds_total{mode='idle'})",
    "queue_depth != 3",
    "queue_depth >= on(queue) group_left queue_depth offset 1m",
    # functions
    "abs(temperature_celsius - 40)",
    "ceil(temperature_celsius)",
    "floor(temperature_celsius)",
    "round(temperature_celsius, 0.5)",
    "round(temperature_celsius)",
    "sqrt(node_memory_free_bytes)",
    "exp(temperature_celsius / 100)",
    "ln(node_memory_free_bytes)",
    "log2(node_memory_free_bytes)",
    "log10(node_memory_free_bytes)",
    "clamp(temperature_celsius, 35, 45)",
    "clamp_min(temperature_celsius, 0)",
    "clamp_max(temperature_celsius, 40)",
    "sgn(temperature_celsius - 40)",
    "sin(temperature_celsius) + cos(temperature_celsius)",
    "deg(atan(temperature_celsius))",
    "asin(clamp(temperature_celsius / 100, -1, 1))",
    "tanh(temperature_celsius / 30)",
    'label_replace(up, "host", "$1", "instance", "(.*):.*")',
    'label_replace(up, "foo", "bar", "nonexistent", "")',
    'label_join(build_info, "combo", "/", "job", "instance", "version")',
    "sort(temperature_celsius)",
    "sort_desc(sum by (instance) (rate(http_requests_total[5m])))",
    'absent(nonexistent_metric{job="x"})',
    "absent(up)",
    "vector(1) + 2",
    "scalar(sum(up))",
    "scalar(up)",
    "time()",
    "minute()",
    "hour(timestamp(up))",
    "day_of_week()",
    "day_of_month(vector(time()))",
    "days_in_month()",
    "month() + year()",
    "timestamp(flaky_gauge)",
    "time() - timestamp(temperature_celsius)",
    # subqueries
    "max_over_time(rate(http_requests_total[1m])[10m:1m])",
    "avg_over_time(temperature_celsius[5m:30s])",
    "rate(http_requests_total[5m:1m])",
    "min_over_time(sum by (instance) (temperature_celsius)[10m:2m] offset 1m)",
    "deriv(max(node_memory_free_bytes)[10m:])",
    "max_over_time(deriv(rate(http_requests_total[2m])[5m:40s])[10m:2m])",
    "sum_over_time(rate(http_requests_total[1m])[5m:15s])",
    "avg_over_time(up[30m:5m])",
    "count_over_time(flaky_gauge[10m:1m])",
    "temperature_celsius[5m:1m]",
    # scalars and strings
    "1 + 2 * 3",
    "2 ^ 3 ^ 2",
    "-7 % 3",
    "1 > bool 2",
    "pi()",
    "NaN",
    "-Inf",
    '"hello"',
]

# Queries whose result is legitimately empty at some evaluation (they still must agree);
# every other query must produce data on both sides, so a silent mismatch in loading
# cannot make the comparison vacuous.
MAY_BE_EMPTY = {
    "vanished_gauge",
    "up == 0",
    'absent_over_time(flaky_gauge{instance="w2"}[3m])',
    "absent_over_time(vanished_gauge[2m])",
    "last_over_time(vanished_gauge[10m])",
    'absent(nonexistent_metric{job="x"})',
    "absent(up)",
    "absent_over_time(nonexistent_metric[5m])",
    "node_memory_free_bytes == bool node_memory_free_bytes offset 1m",
}
ORDERED_INSTANT = {
    "sort(temperature_celsius)",
    "sort_desc(sum by (instance) (rate(http_requests_total[5m])))",
}


def query_text(q: str, base_ms: int) -> str:
    return q.replace("{at}", _seconds(base_ms + AT_MS))


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


# --- HTTP clients -----------------------------------------------------------------------------


def api(base_url: str, path: str, params: dict[str, str]) -> dict[str, Any]:
    """POST form-encoded (both servers support it), return the ``data`` object."""
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(
        base_url + path,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(
            f"{base_url}{path} {params}: HTTP {exc.code}: {exc.read()[:500]!r}"
        ) from None
    assert payload["status"] == "success", payload
    data: dict[str, Any] = payload["data"]
    return data


def post_write(base_url: str, body: bytes) -> None:
    req = urllib.request.Request(
        base_url + "/api/v1/write",
        data=body,
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 204), resp.status


# --- comparison -------------------------------------------------------------------------------


def _value(text: str) -> float:
    return float(text)


def same_value(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _key(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(metric.items()))


def compare(want: dict[str, Any], got: dict[str, Any], ordered: bool = False) -> list[str]:
    """Differences between Prometheus's ``data`` (want) and tsagent's (got), as text."""
    kind = want["resultType"]
    if got["resultType"] != kind:
        return [f"result type {got['resultType']} != {kind}"]
    if kind in ("scalar", "string"):
        (wt, wv), (gt, gv) = want["result"], got["result"]
        if float(wt) != float(gt):
            return [f"time {gt} != {wt}"]
        if kind == "string":
            return [] if wv == gv else [f"{gv!r} != {wv!r}"]
        return [] if same_value(_value(wv), _value(gv)) else [f"{gv} != {wv}"]
    errors: list[str] = []
    w_keys = [_key(r["metric"]) for r in want["result"]]
    g_keys = [_key(r["metric"]) for r in got["result"]]
    if len(set(g_keys)) != len(g_keys):
        errors.append("tsagent returned a label set twice")
    if ordered and w_keys != g_keys:
        errors.append(f"order {g_keys} != {w_keys}")
    w_map = {_key(r["metric"]): r for r in want["result"]}
    g_map = {_key(r["metric"]): r for r in got["result"]}
    for k in sorted(set(w_map) - set(g_map))[:5]:
        errors.append(f"missing series {dict(k)}")
    for k in sorted(set(g_map) - set(w_map))[:5]:
        errors.append(f"extra series {dict(k)}")
    for k in sorted(set(w_map) & set(g_map)):
        if kind == "vector":
            wp, gp = [w_map[k]["value"]], [g_map[k]["value"]]
        else:
            wp, gp = w_map[k]["values"], g_map[k]["values"]
        w_t = [float(p[0]) for p in wp]
        g_t = [float(p[0]) for p in gp]
        if w_t != g_t:
            only_w = sorted(set(w_t) - set(g_t))[:3]
            only_g = sorted(set(g_t) - set(w_t))[:3]
            errors.append(f"{dict(k)}: timestamps differ (missing {only_w}, extra {only_g})")
            continue
        for (t, wv), (_, gv) in zip(wp, gp, strict=True):
            if not same_value(_value(wv), _value(gv)):
                errors.append(f"{dict(k)} @ {t}: {gv} != {wv}")
                break
    return errors


# --- processes --------------------------------------------------------------------------------


@dataclass
class Servers:
    prom_url: str
    agent_url: str
    base_ms: int
    tmp: Path

    def logs(self) -> str:
        parts = []
        for name in ("prometheus.log", "tsagent.log"):
            p = self.tmp / name
            text = p.read_text(errors="replace") if p.exists() else ""
            parts.append(f"--- {name} (last 3000 chars) ---\n{text[-3000:]}")
        return "\n".join(parts)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("promql-compare")
    prom_port, agent_port = free_port(), free_port()
    conf = tmp / "prometheus.yml"
    conf.write_text(json.dumps({"global": {"evaluation_interval": "1m"}}))
    prom_log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    prom = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp / 'prom-tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--web.enable-remote-write-receiver",
            "--query.lookback-delta=5m",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    data_dir = tmp / "tsagent-data"
    data_dir.mkdir()
    agent_log = open(tmp / "tsagent.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("NOTIFY_SOCKET", None)
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--listen",
            f"127.0.0.1:{agent_port}",
            "--data-dir",
            str(data_dir),
        ],
        stdout=agent_log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    try:
        prom_url, agent_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{agent_port}"
        _wait_ready(prom_url, prom, tmp / "prometheus.log")
        _wait_ready(agent_url, agent, tmp / "tsagent.log")
        # 40 minutes ago, on a whole minute: recent enough for Prometheus's head block.
        base = (int(time.time() * 1000) // 60_000 - 40) * 60_000
        for body in write_requests(dataset(base)):
            post_write(prom_url, body)
            post_write(agent_url, body)
        yield Servers(prom_url, agent_url, base, tmp)
    finally:
        _stop(agent)
        _stop(prom)
        prom_log.close()
        agent_log.close()


def _is_range_capable(data: dict[str, Any]) -> bool:
    return data["resultType"] in ("vector", "scalar")


def _non_empty(data: dict[str, Any]) -> bool:
    return data["resultType"] in ("scalar", "string") or bool(data["result"])


def test_the_query_list_is_large_and_unique() -> None:
    assert len(QUERIES) >= 100
    assert len(set(QUERIES)) == len(QUERIES)
    assert set(QUERIES) >= MAY_BE_EMPTY and set(QUERIES) >= ORDERED_INSTANT


def test_both_hold_the_same_raw_samples(servers: Servers) -> None:
    """Loading check: every sample (staleness markers aside) is in both servers."""
    at = _seconds(servers.base_ms + 31 * 60_000)
    params = {"query": '{__name__=~".+",job=~"api|node|batch"}[31m]', "time": at}
    want = api(servers.prom_url, "/api/v1/query", params)
    got = api(servers.agent_url, "/api/v1/query", params)
    assert len(want["result"]) == len(dataset(servers.base_ms))
    assert compare(want, got) == []


@pytest.mark.parametrize("query", QUERIES)
def test_query_matches_prometheus(servers: Servers, query: str) -> None:
    q = query_text(query, servers.base_ms)
    params = {"query": q, "time": _seconds(servers.base_ms + INSTANT_AT_MS)}
    want = api(servers.prom_url, "/api/v1/query", params)
    got = api(servers.agent_url, "/api/v1/query", params)
    errors = compare(want, got, ordered=query in ORDERED_INSTANT)
    assert not errors, f"instant {q}:\n" + "\n".join(errors[:10]) + f"\nprometheus: {want}"
    non_empty = _non_empty(want)
    if _is_range_capable(want):
        params = {
            "query": q,
            "start": _seconds(servers.base_ms + RANGE_START_MS),
            "end": _seconds(servers.base_ms + RANGE_END_MS),
            "step": RANGE_STEP,
        }
        want = api(servers.prom_url, "/api/v1/query_range", params)
        got = api(servers.agent_url, "/api/v1/query_range", params)
        errors = compare(want, got)
        assert not errors, f"range {q}:\n" + "\n".join(errors[:10])
        non_empty = non_empty or _non_empty(want)
    if query not in MAY_BE_EMPTY:
        assert non_empty, f"{q}: empty on both sides, which makes the comparison vacuous"
