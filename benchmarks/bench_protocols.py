"""Push protocols on the same data: remote write, OTLP, InfluxDB line protocol, and
VictoriaMetrics' ``/write`` on the same line-protocol bodies, in one run.

Run: ``python benchmarks/bench_protocols.py`` (about a minute; ``--series``,
``--rounds`` to size it).

The data: ``--series`` series of ``benchmarks/loadgen.py``'s node-exporter-like
label sets, ``--rounds`` rounds one scrape interval (15 s) apart, one sample
per series per round, in requests of ``--batch`` series. Each protocol gets
the same samples, encoded before the clock starts:

* remote write 1.0: snappy ``WriteRequest`` (loadgen's encoder);
* OTLP: ``ExportMetricsServiceRequest`` protobuf, one gauge per metric name,
  the labels as point attributes (no resource attributes, ``target_info``
  off, so the sample count is the same);
* line protocol: ``<name>,<labels> value=<v> <ms>`` with ``precision=ms``.

Each protocol is sent to a fresh ``tsagent run`` (its own data directory), by
``--senders`` concurrent clients, and the daemon's CPU time (utime + stime
from /proc/PID/stat) around the load gives samples per CPU-second, the cost
the user pays. VictoriaMetrics (``/usr/bin/victoria-metrics``, when present)
gets the line-protocol bodies the same way. MQTT (``/usr/sbin/mosquitto``, when
present; ``--no-mqtt`` skips it): the line-protocol bodies as QoS 1
messages, and ``--mqtt-messages`` one-reading JSON messages, the daemon's
CPU counted until every sample is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiohttp  # noqa: E402
import loadgen  # noqa: E402
from bench_remote_write import cpu_seconds, free_port, wait_ready  # noqa: E402
from harness import stop_process as stop  # noqa: E402

T0 = 1_700_000_000_000
VICTORIA = Path("/usr/bin/victoria-metrics")
MOSQUITTO = Path("/usr/sbin/mosquitto")


def bodies_remote_write(
    labels: list[list[tuple[str, str]]], rounds: int, batch: int
) -> list[bytes]:
    encoded = [loadgen.encode_labels(lab) for lab in labels]
    out = []
    for r in range(rounds):
        for lo in range(0, len(labels), batch):
            chunk = encoded[lo : lo + batch]
            out.append(
                loadgen.encode_request(
                    chunk, T0 + r * 15_000, [float(r + i) for i in range(len(chunk))]
                )
            )
    return out


def bodies_otlp(labels: list[list[tuple[str, str]]], rounds: int, batch: int) -> list[bytes]:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    out = []
    for r in range(rounds):
        ts = (T0 + r * 15_000) * 1_000_000
        for lo in range(0, len(labels), batch):
            req = ExportMetricsServiceRequest()
            sm = req.resource_metrics.add().scope_metrics.add()
            by_name: dict[str, Any] = {}
            for i, lab in enumerate(labels[lo : lo + batch]):
                d = dict(lab)
                name = d.pop("__name__")
                metric = by_name.get(name)
                if metric is None:
                    metric = by_name[name] = sm.metrics.add(name=name)
                dp = metric.gauge.data_points.add(time_unix_nano=ts, as_double=float(r + i))
                dp.attributes.extend(
                    KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in d.items()
                )
            out.append(req.SerializeToString())
    return out


def bodies_line(labels: list[list[tuple[str, str]]], rounds: int, batch: int) -> list[bytes]:
    out = []
    for r in range(rounds):
        ms = T0 + r * 15_000
        for lo in range(0, len(labels), batch):
            lines = []
            for i, lab in enumerate(labels[lo : lo + batch]):
                d = dict(lab)
                name = d.pop("__name__")
                tags = ",".join(f"{k}={v}" for k, v in sorted(d.items()))
                lines.append(f"{name},{tags} value={float(r + i)!r} {ms}")
            out.append("\n".join(lines).encode())
    return out


async def send(url: str, bodies: list[bytes], headers: dict[str, str], senders: int) -> float:
    """POST every body (in order per sender); seconds taken. Any non-2xx is an error."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    t0 = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as resp:
                text = await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"{url}: {resp.status} {text[:300]!r}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(senders)))
    return time.perf_counter() - t0


def start_daemon(
    tmp: Path, name: str, ingest: dict[str, Any] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    data = tmp / "".join(c if c.isalnum() else "_" for c in name)
    data.mkdir()
    port = free_port()
    cfg = data.with_suffix(".yaml")
    config = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(data),
        "log": {"level": "warning"},
        "server": {"max_body_bytes": 64 * 1024 * 1024},
        "ingest": {"otlp": {"target_info": False}, **(ingest or {})},
    }
    cfg.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    log = open(data.with_suffix(".log"), "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc)
    return proc, base


def start_victoria(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VICTORIA),
            f"-storageDataPath={tmp / 'vm'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1):
                return proc, base
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("victoria-metrics did not start")


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    root = "user root\n" if os.geteuid() == 0 else ""  # else it cannot read tmp as its own user
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{root}")
    proc = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def agent_metric(base: str, name: str, **labels: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def mqtt_row(
    tmp: Path, name: str, rule: dict[str, Any], messages: list[tuple[str, bytes]], samples: int
) -> dict[str, Any]:
    """Publish ``messages`` at QoS 1 through mosquitto; the daemon's CPU until all are stored."""
    import paho.mqtt.client as mqtt

    broker, port = start_mosquitto(tmp)
    section = {"enabled": True, "broker": f"127.0.0.1:{port}", "rules": [rule]}
    proc, base = start_daemon(tmp, name, {"mqtt": section})
    try:
        deadline = time.monotonic() + 30
        while agent_metric(base, "tsagent_mqtt_connected") != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not connect to mosquitto")
            time.sleep(0.1)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}")
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(60)
        deadline = time.monotonic() + 600
        source = {"source": "mqtt"}
        while agent_metric(base, "tsagent_samples_ingested_total", **source) < samples:
            if time.monotonic() > deadline:
                raise RuntimeError("not every MQTT sample arrived")
            if agent_metric(base, "tsagent_mqtt_received_total", kind="sample") >= samples:
                refused = agent_metric(base, "tsagent_samples_rejected_total", **source)
                if refused:
                    raise RuntimeError(f"{refused} MQTT samples refused by the store")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        pub.loop_stop()
        pub.disconnect()
    finally:
        stop(proc)
        stop(broker)
    return {
        "server": "tsagent",
        "protocol": name,
        "bytes": sum(len(p) for _, p in messages),
        "cpu_seconds": round(cpu, 2),
        "samples_per_cpu_second": round(samples / max(cpu, 1e-3)),
        "samples_per_second": round(samples / wall),
    }


def mqtt_rows(
    tmp: Path, args: argparse.Namespace, line_bodies: list[bytes]
) -> list[dict[str, Any]]:
    """MQTT: the line-protocol bodies as messages, and one number per message."""
    if not MOSQUITTO.exists():
        return []
    samples = args.series * args.rounds
    line_rule = {"topic": "telegraf/+host", "payload": "line", "precision": "ms"}
    rows = [
        mqtt_row(
            tmp,
            f"MQTT line protocol ({args.batch:,} lines a message, QoS 1)",
            line_rule,
            [("telegraf/h1", body) for body in line_bodies],
            samples,
        )
    ]
    # One reading a message, as a device sends: 1,000 sensors, each message with its time
    # (arrival times could repeat within a millisecond for a series, and be refused).
    n = args.mqtt_messages
    rule = {
        "topic": "sensors/+sensor",
        "payload": "json",
        "fields": {"v": "sensor_value"},
        "timestamp": "t",
        "timestamp_unit": "ms",
    }
    messages = [
        (f"sensors/s{i % 1000}", json.dumps({"v": float(i), "t": T0 + (i // 1000) * 1000}).encode())
        for i in range(n)
    ]
    rows.append(mqtt_row(tmp, "MQTT JSON (1 sample a message, QoS 1)", rule, messages, n))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    labels = [loadgen.series_labels(i) for i in range(args.series)]
    samples = args.series * args.rounds
    cases = [
        (
            "remote write 1.0",
            "/api/v1/write",
            bodies_remote_write,
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        ),
        ("OTLP (protobuf)", "/v1/metrics", bodies_otlp, {"Content-Type": "application/x-protobuf"}),
        ("line protocol", "/write?precision=ms", bodies_line, {}),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-proto-"))
    out: dict[str, Any] = {
        "series": args.series,
        "rounds": args.rounds,
        "samples": samples,
        "rows": [],
    }
    line_bodies: list[bytes] = []
    try:
        for name, path, make, headers in cases:
            bodies = make(labels, args.rounds, args.batch)
            if make is bodies_line:
                line_bodies = bodies
            proc, base = start_daemon(tmp, name.split()[0].lower())
            try:
                cpu0 = cpu_seconds(proc.pid)
                wall = asyncio.run(send(base + path, bodies, headers, args.senders))
                cpu = cpu_seconds(proc.pid) - cpu0
            finally:
                stop(proc)
            out["rows"].append(
                {
                    "server": "tsagent",
                    "protocol": name,
                    "bytes": sum(map(len, bodies)),
                    "cpu_seconds": round(cpu, 2),
                    "samples_per_cpu_second": round(samples / cpu),
                    "samples_per_second": round(samples / wall),
                }
            )
        if VICTORIA.exists() and line_bodies:
            proc, base = start_victoria(tmp)
            try:
                cpu0 = cpu_seconds(proc.pid)
                wall = asyncio.run(
                    send(base + "/write?precision=ms", line_bodies, {}, args.senders)
                )
                cpu = cpu_seconds(proc.pid) - cpu0
            finally:
                stop(proc)
            out["rows"].append(
                {
                    "server": "VictoriaMetrics",
                    "protocol": "line protocol",
                    "bytes": sum(map(len, line_bodies)),
                    "cpu_seconds": round(cpu, 2),
                    "samples_per_cpu_second": round(samples / max(cpu, 1e-3)),
                    "samples_per_second": round(samples / wall),
                }
            )
        if not args.no_mqtt:
            out["rows"].extend(mqtt_rows(tmp, args, line_bodies))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rw = out["rows"][0]["samples_per_cpu_second"]
    for row in out["rows"]:
        row["cpu_per_sample_vs_remote_write"] = round(rw / row["samples_per_cpu_second"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--series", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--mqtt-messages", type=int, default=20_000, help="one-number messages")
    p.add_argument("--no-mqtt", action="store_true", help="skip the MQTT rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['samples']:,} samples ({res['series']:,} series x {res['rounds']} rounds)\n")
    print(
        "| server | protocol | request bytes | server CPU s | samples / CPU-s | "
        "CPU per sample vs remote write | samples/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        print(
            f"| {r['server']} | {r['protocol']} | {r['bytes']:,} | {r['cpu_seconds']} | "
            f"{r['samples_per_cpu_second']:,} | {r['cpu_per_sample_vs_remote_write']}x | "
            f"{r['samples_per_second']:,} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
