"""Remote-write ingestion benchmark: the real daemons, end to end, side by side.

Run: ``python benchmarks/bench_remote_write.py`` (a few minutes with the
comparisons; ``--systems tsagent`` for tsagent alone).

1. Decoder micro-benchmark, in this process: one 2,000-series request
   decoded by the hand-written decoder (``plugins.remote_write.wire``) and by
   the upb-generated classes doing the same job (label tuple per series as
   cache key), each with a warm series cache, as in steady state.
2. Starts ``tsagent run``, then VictoriaMetrics and Prometheus 2.42 when
   their Debian packages are installed, one after the other, each fresh with
   a temporary data directory (``benchmarks/harness.py``), and sends each the
   same load with ``benchmarks/loadgen.py`` (default 100,000 series, 4
   senders, 20 rounds, 2,000 series a request; identical timestamps and
   values, the last round shortly before now). Reports per daemon: accepted
   samples/s, the whole run's samples per CPU-second (utime + stime from
   /proc/PID/stat around the load, so the first round, which creates the
   series, is included), its peak RSS (VmHWM), then stops it with SIGTERM
   (tsagent flushes its head) and reports the on-disk bytes per sample of the
   whole data directory; and the ratio tsagent / VictoriaMetrics.

``--json`` prints the figures as JSON; ``--profile`` runs py-spy on tsagent
during its load and writes a flame graph (needs py-spy installed; sampling
slows the daemon, so its CPU figures are then not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402
import loadgen  # noqa: E402

# Kept importable from here for scripts written against the old module.
free_port = harness.free_port
wait_ready = harness.wait_ready


# --- decoder micro-benchmark -----------------------------------------------------------


def decoder_figures(batch: int = 2_000, repeat: int = 30) -> dict[str, float]:
    import cramjam

    from agent.prompb import remote_pb2
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


def run_one(d: harness.Daemon, args: argparse.Namespace, start_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": harness.machine_load()}
    cpu0 = d.cpu_seconds()
    spy = None
    if args.profile and d.name == "tsagent":
        spy = harness.start_py_spy(d.pid, args.profile, args.profile_format)
    try:
        res = asyncio.run(
            loadgen.run_load(
                d.write_url,
                series=args.series,
                senders=args.senders,
                rounds=args.rounds,
                batch=args.batch,
                start_ms=start_ms,
            )
        )
        cpu = d.cpu_seconds() - cpu0
    finally:
        if spy is not None:
            harness.stop_py_spy(spy)
    out["load"] = {
        k: v for k, v in vars(res).items() if k not in ("series", "senders", "rounds", "batch")
    }
    out["daemon_cpu_seconds"] = round(cpu, 2)
    out["samples_per_cpu_second"] = round(res.samples_accepted / cpu, 0) if cpu > 0 else None
    out["accepted_samples_per_second"] = round(res.samples_per_second, 0)
    out["peak_rss_mib"] = round(d.peak_rss_bytes() / 2**20, 1)
    out["shutdown_seconds"] = round(d.stop(), 2)
    files = harness.dir_files(d.data_dir)
    total = sum(files.values())
    out["disk_files"] = harness.group_files(files)
    out["disk_bytes"] = total
    out["disk_bytes_per_sample"] = (
        round(total / res.samples_accepted, 2) if res.samples_accepted else None
    )
    out["notes"] = d.notes
    return out


def run_daemon_bench(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Each system in turn, fresh, same samples; (figures per system name, notes)."""
    interval = 15_000
    start_ms = (int(time.time() * 1000) - args.rounds * interval) // interval * interval
    results: dict[str, Any] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tsagent-bench-rw-") as d:
        tmp = Path(d)
        for which in args.systems:
            daemon = harness.start(which, tmp)
            if daemon is None:
                notes.append(harness.missing_note(which))
                continue
            try:
                results[daemon.name] = run_one(daemon, args, start_ms)
            finally:
                daemon.stop(30)
            r = results[daemon.name]
            print(
                f"  {daemon.name}: {r['samples_per_cpu_second']:,.0f} samples per CPU-second",
                file=sys.stderr,
                flush=True,
            )
            if args.keep:
                keep = Path(tempfile.mkdtemp(prefix=f"tsagent-bench-rw-{which}-"))
                shutil.copytree(daemon.data_dir, keep / "data")
                r["kept_data"] = str(keep)
    return results, notes


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        f"remote write: {c['series']:,} series, {c['senders']} senders, {c['rounds']} rounds, "
        f"{c['batch']:,} series a request ({c['series'] * c['rounds']:,} samples)",
        "",
        "| system | samples per CPU-s (whole run) | daemon CPU s | accepted samples/s | wall s | "
        "p50 / p99 ms | peak RSS MiB | B/sample on disk after shutdown | failed | machine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in result["daemons"].items():
        load = r["load"]
        lines.append(
            f"| {name} | {r['samples_per_cpu_second'] or 0:,.0f} | {r['daemon_cpu_seconds']:.1f} | "
            f"{r['accepted_samples_per_second']:,.0f} | {load['seconds']:.1f} | "
            f"{load['latency_p50_ms']:.0f} / {load['latency_p99_ms']:.0f} | "
            f"{r['peak_rss_mib']:,.0f} | {r['disk_bytes_per_sample']} | "
            f"{load['samples_failed']:,} | {r['machine']} |"
        )
    ts = result["daemons"].get("tsagent")
    vm = result["daemons"].get("VictoriaMetrics")
    if ts and vm and ts["samples_per_cpu_second"] and vm["samples_per_cpu_second"]:
        ratio = ts["samples_per_cpu_second"] / vm["samples_per_cpu_second"]
        lines.append(f"\ntsagent / VictoriaMetrics samples per CPU-second: **{ratio:.2f}**")
    for note in result["notes"]:
        lines.append(f"\nnote: {note}")
    for name, r in result["daemons"].items():
        if r["load"]["errors"] or r["notes"]:
            lines.append(f"\n{name}: {r['load']['errors']} {r['notes']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--series", type=int, default=100_000)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument(
        "--systems", nargs="+", choices=tuple(harness.STARTERS), default=list(harness.STARTERS)
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--skip-decoder", action="store_true", help="only the end-to-end runs")
    p.add_argument("--keep", action="store_true", help="keep a copy of each data directory")
    p.add_argument("--profile", metavar="FILE", help="py-spy tsagent during its load")
    p.add_argument("--profile-format", default="flamegraph", help="py-spy format (speedscope, raw)")
    args = p.parse_args(argv)

    result: dict[str, Any] = {
        "config": {k: getattr(args, k) for k in ("series", "senders", "rounds", "batch")}
    }
    if not args.skip_decoder:
        result["decoder"] = decoder_figures(args.batch)
    result["daemons"], result["notes"] = run_daemon_bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "decoder" in result:
        d = result["decoder"]
        print("decoder, one request, warm series cache (samples/s, best of 30):\n")
        print("| decoder | samples/s |\n|---|---:|")
        for k in (
            "hand_decoder_samples_per_s",
            "upb_with_label_tuples_samples_per_s",
            "upb_parse_only_samples_per_s",
            "snappy_decompress_samples_per_s",
        ):
            print(f"| {k} | {d[k]:,.0f} |")
        print()
    print(markdown(result))
    failed = any(r["load"]["samples_failed"] for r in result["daemons"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
