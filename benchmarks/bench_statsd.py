"""StatsD ingestion benchmark: lines per second *processed*, and the CPU they cost.

Run: ``python benchmarks/bench_statsd.py`` (about half a minute).

1. In process: :meth:`Aggregator.feed` over prepared packets (the parse,
   map and aggregate path alone, warm key cache), with many lines per packet
   and with one line per call.
2. The real daemon: ``tsagent run`` as a subprocess with ``ingest.statsd``
   on free loopback ports. This process sends ``--lines`` lines (a mix of
   counters with tags and sample rates, gauges, timers and sets over
   ``--keys`` distinct names) over UDP, packed ``--per-packet`` lines per
   datagram like a client pipeline, then once more one line per datagram,
   then over ``--connections`` TCP connections. For each phase it polls the
   daemon's ``tsagent_statsd_lines_total`` until every line is accounted for
   (or nothing moves for a second: UDP may drop under overload, which is
   reported as loss) and reports processed lines/s (from the first send to
   the last line processed) and the daemon's CPU (utime + stime from
   /proc/PID/stat) per million lines.

``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plugins.statsd.aggregator import Aggregator  # noqa: E402
from plugins.statsd.mapper import Mapper  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("daemon not ready in time")


def make_lines(n: int, keys: int, seed: int = 1) -> list[bytes]:
    """A realistic mix: 50% counters (some sampled, tagged), 20% gauges, 25% timers, 5% sets."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        k = i % keys
        r = rnd.random()
        if r < 0.5:
            rate = b"|@0.5" if k % 4 == 0 else b""
            out.append(b"app.svc%d.requests:1|c%s|#env:prod,code:%d" % (k, rate, 200 + k % 3))
        elif r < 0.7:
            out.append(b"app.svc%d.queue:%d|g" % (k, rnd.randrange(1000)))
        elif r < 0.95:
            out.append(b"app.svc%d.latency:%.3f|ms" % (k, rnd.random() * 500))
        else:
            out.append(b"app.svc%d.users:u%d|s" % (k, rnd.randrange(100)))
    return out


def pack(lines: list[bytes], per_packet: int, max_bytes: int = 1400) -> list[bytes]:
    """Newline-joined packets of up to ``per_packet`` lines and ``max_bytes`` bytes."""
    packets: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for line in lines:
        if cur and (len(cur) >= per_packet or size + len(line) + 1 > max_bytes):
            packets.append(b"\n".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line) + 1
    if cur:
        packets.append(b"\n".join(cur))
    return packets


# --- in process ------------------------------------------------------------------------


def feed_figures(lines: list[bytes], per_packet: int) -> dict[str, float]:
    packets = pack(lines, per_packet)
    best = float("inf")
    for _ in range(3):
        agg = Aggregator(Mapper())
        for p in packets[:1000]:  # warm the key cache, as in steady state
            agg.feed(p)
        t0 = time.perf_counter()
        for p in packets:
            agg.feed(p)
        best = min(best, time.perf_counter() - t0)
    return {"lines_per_s": len(lines) / best, "us_per_line": best / len(lines) * 1e6}


# --- against the daemon ----------------------------------------------------------------


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("tsagent_statsd_", "tsagent_samples_ingested_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def handled(base: str) -> float:
    m = scrape(base)
    return sum(v for k, v in m.items() if k.startswith("tsagent_statsd_lines_total")) + sum(
        v for k, v in m.items() if k.startswith("tsagent_statsd_malformed_lines_total")
    )


def wait_processed(base: str, target: float, start_count: float) -> tuple[float, float]:
    """Poll until ``target`` more lines are handled or nothing moves for a second."""
    last, last_change = start_count, time.perf_counter()
    while True:
        now_count = handled(base)
        now = time.perf_counter()
        if now_count != last:
            last, last_change = now_count, now
        if now_count - start_count >= target or now - last_change > 1.0:
            return now_count - start_count, last_change
        time.sleep(0.2)


def udp_queue(port: int) -> tuple[int, int]:
    """(bytes queued, datagrams dropped) of the daemon's UDP socket, from /proc/net/udp."""
    suffix = f":{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 12 and fields[1].endswith(suffix):
                return int(fields[4].split(":")[1], 16), int(fields[12])
    return 0, 0


def send_udp(port: int, packets: list[bytes], queue_limit: int) -> None:
    """Send as fast as the daemon drains its socket (loopback flow control).

    UDP has no back-pressure: a sender faster than the receiver only fills
    the kernel buffer and the rest is dropped, which measures the sender. So
    the sender pauses while the daemon's receive queue (read from
    /proc/net/udp) is above ``queue_limit`` bytes; the rate measured is then
    the daemon's.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        send = s.send
        for i in range(0, len(packets), 256):
            while queue_limit and udp_queue(port)[0] > queue_limit:
                time.sleep(0.0002)
            for p in packets[i : i + 256]:
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    send(p)


async def send_tcp(port: int, lines: list[bytes], connections: int) -> None:
    async def one(chunk: list[bytes]) -> None:
        _, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(0, len(chunk), 500):
            w.write(b"\n".join(chunk[i : i + 500]) + b"\n")
            await w.drain()
        w.close()
        await w.wait_closed()

    await asyncio.gather(*(one(lines[i::connections]) for i in range(connections)))


def phase(
    name: str, base: str, pid: int, n_lines: int, send: Any, log: Any
) -> dict[str, float | str]:
    before = handled(base)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    send()
    sent_s = time.perf_counter() - t0
    done, t_last = wait_processed(base, n_lines, before)
    cpu = cpu_seconds(pid) - cpu0
    elapsed = max(t_last - t0, 1e-9)
    fig: dict[str, float | str] = {
        "phase": name,
        "lines_sent": n_lines,
        "lines_processed": done,
        "loss_pct": 100.0 * (n_lines - done) / n_lines,
        "send_seconds": sent_s,
        "processed_lines_per_s": done / elapsed,
        "daemon_cpu_seconds": cpu,
        "cpu_seconds_per_million_lines": cpu / max(done, 1) * 1e6,
        "lines_per_daemon_cpu_second": done / max(cpu, 1e-9),
    }
    log(
        f"{name:<28} {done:>9,.0f}/{n_lines:,} lines"
        f"  {fig['processed_lines_per_s']:>10,.0f} lines/s"
        f"  loss {fig['loss_pct']:4.1f}%  daemon CPU {cpu:5.2f}s"
        f" = {fig['lines_per_daemon_cpu_second']:>9,.0f} lines per CPU-second"
    )
    return fig


def run_daemon_bench(args: argparse.Namespace, lines: list[bytes], log: Any) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-statsd-"))
    http, udp, tcp = free_port(), free_port(), free_port()
    cfg = tmp / "tsagent.yaml"
    cfg.write_text(
        "plugins:\n  enabled: [statsd]\n"
        "ingest:\n  statsd:\n    enabled: true\n"
        f"    udp_listen: 127.0.0.1:{udp}\n    tcp_listen: 127.0.0.1:{tcp}\n"
        "    flush_interval: 1s\n    udp_receive_buffer_bytes: 8388608\n"
    )
    base = f"http://127.0.0.1:{http}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)),
            *("--listen", f"127.0.0.1:{http}", "--data-dir", str(tmp / "data")),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base, proc)
        phases = [
            phase(
                f"udp, {args.per_packet} lines/packet",
                base,
                proc.pid,
                len(lines),
                lambda: send_udp(udp, pack(lines, args.per_packet), args.queue_limit),
                log,
            ),
            phase(
                "udp, 1 line/packet",
                base,
                proc.pid,
                len(lines),
                lambda: send_udp(udp, lines, args.queue_limit),
                log,
            ),
            phase(
                f"tcp, {args.connections} connections",
                base,
                proc.pid,
                len(lines),
                lambda: asyncio.run(send_tcp(tcp, lines, args.connections)),
                log,
            ),
        ]
        time.sleep(1.5)  # one more flush
        drops = udp_queue(udp)[1]
        log(f"datagrams dropped by the kernel (/proc/net/udp): {drops:,}")
        m = scrape(base)
        ingested = m.get('tsagent_samples_ingested_total{source="statsd"}', 0.0)
        metrics = m.get("tsagent_statsd_metrics", 0.0)
        log(f"daemon holds {metrics:,.0f} aggregated metrics; {ingested:,.0f} samples written")
        return {
            "phases": phases,
            "samples_written": ingested,
            "metrics": metrics,
            "kernel_udp_drops": drops,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=500_000)
    p.add_argument("--keys", type=int, default=1_000, help="distinct metric names")
    p.add_argument("--per-packet", type=int, default=20)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument(
        "--queue-limit",
        type=int,
        default=1 << 20,
        help="pause sending while the daemon's UDP receive queue holds more bytes; 0: never",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    lines = make_lines(args.lines, args.keys)
    result: dict[str, Any] = {"lines": args.lines, "keys": args.keys}
    for per_packet in (args.per_packet, 1):
        fig = feed_figures(lines, per_packet)
        result[f"feed_{per_packet}_per_call"] = fig
        log(
            f"in-process feed, {per_packet:>2} lines/call: {fig['lines_per_s']:>12,.0f} lines/s"
            f" ({fig['us_per_line']:.2f} us/line)"
        )
    result["daemon"] = run_daemon_bench(args, lines, log)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
