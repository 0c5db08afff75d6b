"""Remote-write ingestion benchmark: the real daemon, end to end.

Run: ``python benchmarks/bench_remote_write.py`` (about a minute).

1. Decoder micro-benchmark, in this process: one 2,000-series request
   decoded by the hand-written decoder (``plugins.remote_write.wire``) and by
   the upb-generated classes doing the same job (label tuple per series as
   cache key), each with a warm series cache, as in steady state.
2. Starts ``tsagent run`` as a subprocess on a free loopback port with a
   temporary data directory, runs ``benchmarks/loadgen.py`` against it
   (default 100,000 series, 4 senders, 20 rounds, 2,000 series a request),
   and reports accepted samples/s, the daemon's samples per CPU-second (utime
   + stime from /proc/PID/stat around the load), its peak RSS (VmHWM), then
   stops it with SIGTERM (which flushes the head) and reports the on-disk
   bytes per sample (database + SQLite WAL files).

``--json`` prints the figures as JSON; ``--profile`` runs py-spy on the
daemon during the load and writes a flame graph (needs py-spy installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import loadgen  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


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


# --- decoder micro-benchmark -----------------------------------------------------------


def decoder_figures(batch: int = 2_000, repeat: int = 30) -> dict[str, float]:
    import cramjam

    from plugins.prompb import remote_pb2
    from plugins.remote_write.wire import decode_write_request

    label_bytes = [loadgen.encode_labels(loadgen.series_labels(i)) for i in range(batch)]
    values = [float(i) * 1.5 for i in range(batch)]
    body = loadgen.encode_request(label_bytes, 1_700_000_000_000, values)
    raw = bytes(cramjam.snappy.decompress_raw(body))

    cache: dict[Any, int] = {}
    cold = decode_write_request(raw, cache)
    for i, key in enumerate(cold.misses):
        cache[key] = i + 1

    def hand() -> None:
        d = decode_write_request(raw, cache)
        assert not d.misses

    tcache: dict[Any, int] = {}
    for i, ts in enumerate(remote_pb2.WriteRequest.FromString(raw).timeseries):
        tcache[tuple((lab.name, lab.value) for lab in ts.labels)] = i + 1

    def upb() -> None:
        from array import array

        req = remote_pb2.WriteRequest.FromString(raw)
        ids, tss, vals = array("q"), array("q"), array("d")
        get = tcache.get
        for ts in req.timeseries:
            sid = get(tuple((lab.name, lab.value) for lab in ts.labels))
            for s in ts.samples:
                ids.append(sid or 0)
                tss.append(s.timestamp)
                vals.append(s.value)

    def upb_parse_only() -> None:
        req = remote_pb2.WriteRequest.FromString(raw)
        sum(len(ts.samples) for ts in req.timeseries)

    def snappy() -> None:
        bytes(cramjam.snappy.decompress_raw(body))

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return batch / min(times)

    return {
        "hand_decoder_samples_per_s": best(hand),
        "upb_with_label_tuples_samples_per_s": best(upb),
        "upb_parse_only_samples_per_s": best(upb_parse_only),
        "snappy_decompress_samples_per_s": best(snappy),
        "request_bytes_compressed": len(body),
        "request_bytes_decompressed": len(raw),
    }


# --- end to end ---------------------------------------------------------------------------


def run_daemon_bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-rw-"))
    data = tmp / "data"
    data.mkdir()
    port = free_port()
    cfg = tmp / "tsagent.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"data_dir: {data}\n"
        "log:\n  level: warning\n"
        f"server:\n  max_body_bytes: {64 * 1024 * 1024}\n"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    spy: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        cpu0 = cpu_seconds(proc.pid)
        if args.profile:
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or "py-spy",
                    "record",
                    "-o",
                    args.profile,
                    "-p",
                    str(proc.pid),
                    "-r",
                    "200",
                    "-f",
                    args.profile_format,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        res = asyncio.run(
            loadgen.run_load(
                base + "/api/v1/write",
                series=args.series,
                senders=args.senders,
                rounds=args.rounds,
                batch=args.batch,
            )
        )
        cpu1 = cpu_seconds(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        out["load"] = {
            k: v for k, v in vars(res).items() if k not in ("series", "senders", "rounds", "batch")
        }
        daemon_cpu = cpu1 - cpu0
        out["daemon_cpu_seconds"] = round(daemon_cpu, 2)
        out["samples_per_cpu_second"] = round(res.samples_accepted / daemon_cpu, 0)
        out["accepted_samples_per_second"] = round(res.samples_per_second, 0)
        out["peak_rss_mib"] = round(status_kb(proc.pid, "VmHWM") / 1024, 1)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        out["shutdown_seconds"] = round(time.perf_counter() - t0, 2)
        files = {p.name: p.stat().st_size for p in data.rglob("*") if p.is_file()}
        total = sum(files.values())
        out["disk_files"] = files
        out["disk_bytes"] = total
        out["disk_bytes_per_sample"] = (
            round(total / res.samples_accepted, 2) if res.samples_accepted else None
        )
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            out["tmp_dir"] = str(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--skip-decoder", action="store_true", help="only the end-to-end run")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.add_argument("--profile", metavar="FILE", help="py-spy the daemon during the load")
    p.add_argument("--profile-format", default="flamegraph", help="py-spy format (speedscope, raw)")
    args = p.parse_args(argv)

    result: dict[str, Any] = {
        "config": {k: getattr(args, k) for k in ("series", "senders", "rounds", "batch")}
    }
    if not args.skip_decoder:
        result["decoder"] = decoder_figures(args.batch)
    result["daemon"] = run_daemon_bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    c = result["config"]
    print(
        f"remote-write benchmark: {c['series']:,} series, {c['senders']} senders, "
        f"{c['rounds']} rounds, {c['batch']:,} series a request"
    )
    if "decoder" in result:
        d = result["decoder"]
        print("\ndecoder, one request, warm series cache (samples/s, best of 30):")
        for k in (
            "hand_decoder_samples_per_s",
            "upb_with_label_tuples_samples_per_s",
            "upb_parse_only_samples_per_s",
            "snappy_decompress_samples_per_s",
        ):
            print(f"  {k:<40} {d[k]:>14,.0f}")
    r = result["daemon"]
    load = r["load"]
    print("\ndaemon, end to end:")
    print(
        f"  accepted samples          {load['samples_accepted']:>14,} "
        f"(failed {load['samples_failed']}, retries {load['retries']})"
    )
    print(f"  statuses                  {load['statuses']}")
    print(f"  wall time                 {load['seconds']:>14.2f} s")
    print(f"  accepted samples/s        {r['accepted_samples_per_second']:>14,.0f}")
    print(f"  daemon CPU                {r['daemon_cpu_seconds']:>14.2f} s")
    print(f"  samples per CPU-second    {r['samples_per_cpu_second']:>14,.0f}")
    print(
        f"  request latency p50/p99   {load['latency_p50_ms']:>8.1f} / "
        f"{load['latency_p99_ms']:.1f} ms"
    )
    print(f"  peak RSS (VmHWM)          {r['peak_rss_mib']:>14.1f} MiB")
    print(f"  shutdown (SIGTERM flush)  {r['shutdown_seconds']:>14.2f} s")
    print(f"  on disk after flush       {r['disk_bytes']:>14,} bytes  {r['disk_files']}")
    print(f"  bytes per sample on disk  {r['disk_bytes_per_sample']:>14}")
    if load["errors"]:
        print("  errors:", *load["errors"], sep="\n    ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
