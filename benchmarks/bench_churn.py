"""Series-churn benchmark: never-seen series over remote write, as after a fleet redeploy.

Run: ``python benchmarks/bench_churn.py`` (a few minutes; prints a Markdown table).

Each system (tsagent, then VictoriaMetrics and Prometheus 2.42 when their
Debian packages are installed) is started fresh by ``benchmarks/harness.py``
and receives the same load from ``benchmarks/loadgen.py``: 200,000
node-exporter-like series it has never seen, one sample each (one timestamp,
15 s before the run started), four concurrent senders of 2,000 series per
request. For each daemon:

- new series per CPU-second: series accepted / (utime + stime from
  ``/proc/PID/stat`` after the load minus before it); also with the 10 s
  after the load included, for daemons that finish the work in the
  background (index merges);
- RSS growth per series: ``VmRSS`` from ``/proc/PID/status`` after the load
  (and 10 s later) minus before it (after startup and a 3 s settle), divided
  by the series.

``--memory`` adds a separate tsagent run under tracemalloc
(``benchmarks/traced_daemon.py``) and lists the Python memory each new
series costs, per file and per line of ``agent/`` and ``plugins/`` that
allocated it, next to the RSS growth of that run.

``--profile FILE`` adds a separate tsagent run under ``py-spy record``
(sampling slows the daemon, so the measured runs are never profiled),
writes the profile to FILE (``--profile-format``, default ``raw``: collapsed
stacks) and, for ``raw``, prints the functions with the largest share of
the daemon's samples and the CPU per new series they stand for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import linecache
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import loadgen

SETTLE_S = 3.0
AFTER_S = 10.0


def send_churn(d: harness.Daemon, args: argparse.Namespace, start_ms: int) -> loadgen.LoadResult:
    """The churn load: every series once, one sample each."""
    return asyncio.run(
        loadgen.run_load(
            d.write_url,
            series=args.series,
            senders=args.senders,
            rounds=1,
            batch=args.batch,
            start_ms=start_ms,
        )
    )


def churn_one(d: harness.Daemon, args: argparse.Namespace, start_ms: int) -> dict[str, Any]:
    time.sleep(SETTLE_S)
    r: dict[str, Any] = {"machine": harness.machine_load()}
    cpu0, rss0 = d.cpu_seconds(), d.rss_bytes()
    res = send_churn(d, args, start_ms)
    cpu1, rss1 = d.cpu_seconds(), d.rss_bytes()
    time.sleep(AFTER_S)
    cpu2, rss2 = d.cpu_seconds(), d.rss_bytes()
    n = res.samples_accepted
    r.update(
        accepted=n,
        failed=res.samples_failed,
        retries=res.retries,
        errors=res.errors,
        wall_s=res.seconds,
        cpu_s=cpu1 - cpu0,
        cpu_after_s=cpu2 - cpu0,
        rss_before=rss0,
        rss_growth=rss1 - rss0,
        rss_growth_after=rss2 - rss0,
        peak_rss=d.peak_rss_bytes(),
    )
    r["series_per_cpu_s"] = n / r["cpu_s"] if r["cpu_s"] > 0 else None
    r["series_per_cpu_s_after"] = n / r["cpu_after_s"] if r["cpu_after_s"] > 0 else None
    r["rss_per_series"] = r["rss_growth"] / n if n else None
    r["rss_per_series_after"] = r["rss_growth_after"] / n if n else None
    return r


def profile_tsagent(
    tmp: Path, args: argparse.Namespace, start_ms: int
) -> tuple[dict[str, Any], list[str]]:
    d = harness.start("tsagent", tmp / "profiled")
    assert d is not None
    try:
        time.sleep(SETTLE_S)
        cpu0 = d.cpu_seconds()
        spy = harness.start_py_spy(d.pid, args.profile, args.profile_format)
        try:
            res = send_churn(d, args, start_ms)
            cpu = d.cpu_seconds() - cpu0
        finally:
            harness.stop_py_spy(spy)
    finally:
        d.stop()
    info = {"accepted": res.samples_accepted, "cpu_s": cpu, "wall_s": res.seconds}
    lines: list[str] = []
    if args.profile_format == "raw" and Path(args.profile).exists():
        samples, idle, rows = harness.collapsed_top(Path(args.profile), args.profile_top)
        per_series_us = 1e6 * cpu / res.samples_accepted if res.samples_accepted else 0.0
        lines += [
            f"py-spy on tsagent during the churn load ({samples:,} busy stack samples, {idle:,} "
            f"idle ones left out; daemon CPU {cpu:.1f} s under the profiler = "
            f"{per_series_us:.1f} µs per new series; shares are of the busy samples, µs = "
            "share x CPU per series):",
            "",
            "| function (innermost frame) | self share | total share | self µs per new series |",
            "|---|---:|---:|---:|",
        ]
        for name, self_pct, total_pct in rows:
            lines.append(
                f"| `{name}` | {self_pct:.1f} % | {total_pct:.1f} % | "
                f"{per_series_us * self_pct / 100:.2f} |"
            )
    return info, lines


def _owner(trace: Any) -> tuple[str, int]:
    """The innermost frame of an allocation inside agent/ or plugins/ (else the innermost)."""
    frames = list(trace.traceback)  # oldest first
    for f in reversed(frames):
        rel = _relative(f.filename)
        if rel.startswith(("agent/", "plugins/")):
            return rel, f.lineno
    f = frames[-1]
    return _relative(f.filename), f.lineno


def _relative(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(harness.ROOT))
    except ValueError:
        return "/".join(Path(filename).parts[-2:])


def _by_owner(snapshot: Any) -> Counter[tuple[str, int]]:
    out: Counter[tuple[str, int]] = Counter()
    for trace in snapshot.traces:
        out[_owner(trace)] += trace.size
    return out


def memory_breakdown(
    tmp: Path, args: argparse.Namespace, start_ms: int, untraced_rss_per_series: float | None
) -> tuple[dict[str, Any], list[str]]:
    """Python allocations per new series, by the agent/plugins line that made them.

    A separate tsagent run from ``traced_daemon.py`` (tracemalloc, 10 frames,
    started after startup): a snapshot before and after a churn load of
    ``--memory-series`` new series (tracing is slow); the difference, per
    owning line, divided by the new series. RSS growth minus the traced
    growth is what tracemalloc cannot see: SQLite's page cache and
    allocations, allocator slack, freed-but-kept arenas.
    """
    snap_file = tmp / "tracemalloc.snapshot"
    d = harness.start_tsagent(
        tmp / "traced",
        entry=(str(Path(__file__).resolve().parent / "traced_daemon.py"),),
        env_extra={"TSAGENT_TRACEMALLOC_OUT": str(snap_file)},
    )
    try:
        time.sleep(SETTLE_S)
        before = _by_owner(harness.tracemalloc_snapshot(d, snap_file))
        rss0 = d.rss_bytes()
        res = asyncio.run(
            loadgen.run_load(
                d.write_url,
                series=args.memory_series,
                senders=args.senders,
                rounds=1,
                batch=args.batch,
                start_ms=start_ms,
            )
        )
        rss1 = d.rss_bytes()  # before the snapshot, which allocates on its own
        after = _by_owner(harness.tracemalloc_snapshot(d, snap_file))
    finally:
        d.stop()
    n = res.samples_accepted
    growth = Counter(after)
    growth.subtract(before)
    traced = sum(growth.values())
    files: Counter[str] = Counter()
    for (file, _), size in growth.items():
        files[file] += size
    info = {"accepted": n, "rss_growth": rss1 - rss0, "traced_growth": traced}
    if not n:
        return info, [f"memory breakdown: no series accepted {res.errors}"]
    if untraced_rss_per_series:
        rest = (
            f"of the {untraced_rss_per_series:,.0f} B RSS growth per series of the untraced "
            f"tsagent run above; the other {untraced_rss_per_series - traced / n:,.0f} B are "
            "what tracemalloc cannot see (SQLite's page cache and allocations, allocator "
            "slack)"
        )
    else:
        rest = "(run with tsagent in --systems for the untraced RSS growth to compare)"
    lines = [
        f"Python memory per new series (tracemalloc in the daemon, {n:,} series): "
        f"{traced / n:,.0f} B traced {rest}. This traced run's own RSS grew "
        f"{(rss1 - rss0) / n:,.0f} B per series, tracemalloc's bookkeeping included.",
        "",
        "| file | B per new series |",
        "|---|---:|",
    ]
    for file, size in files.most_common(args.profile_top):
        if size / n >= 1:
            lines.append(f"| `{file}` | {size / n:,.0f} |")
    lines += ["", "| line (innermost agent/plugins frame) | B per new series | code |"]
    lines.append("|---|---:|---|")
    for (file, lineno), size in growth.most_common(args.profile_top):
        if size / n < 1:
            break
        code = linecache.getline(str(harness.ROOT / file), lineno).strip().replace("|", "\\|")
        lines.append(f"| `{file}:{lineno}` | {size / n:,.0f} | `{code[:90]}` |")
    return info, lines


def markdown(out: dict[str, Any]) -> str:
    c = out["config"]
    lines = [
        f"churn: {c['series']:,} never-seen series, one sample each, {c['senders']} senders x "
        f"{c['batch']:,} series a request",
        "",
        "| system | new series per CPU-s | incl. 10 s after | RSS growth per series | "
        "10 s after | peak RSS | daemon CPU s | wall s | failed | machine before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in out["systems"].items():
        lines.append(
            f"| {name} | {_n(r['series_per_cpu_s'])} | {_n(r['series_per_cpu_s_after'])} | "
            f"{_n(r['rss_per_series'])} B | {_n(r['rss_per_series_after'])} B | "
            f"{r['peak_rss'] / 2**20:,.0f} MiB | {r['cpu_s']:.2f} | {r['wall_s']:.1f} | "
            f"{r['failed']:,} | {r['machine']} |"
        )
    vm = out["systems"].get("VictoriaMetrics")
    ts = out["systems"].get("tsagent")
    if vm and ts and vm["series_per_cpu_s"] and ts["series_per_cpu_s"]:
        lines.append(
            f"\ntsagent / VictoriaMetrics: new series per CPU-s "
            f"{ts['series_per_cpu_s'] / vm['series_per_cpu_s']:.2f}, RSS per series "
            f"{ts['rss_per_series'] / vm['rss_per_series']:.2f}"
        )
    for note in out["notes"]:
        lines.append(f"\nnote: {note}")
    for name, r in out["systems"].items():
        if r["errors"]:
            lines.append(f"\n{name} errors: {r['errors']}")
    if out.get("profile"):
        lines += ["", *out["profile"]]
    if out.get("memory"):
        lines += ["", *out["memory"]]
    return "\n".join(lines)


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--series", type=int, default=200_000)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--batch", type=int, default=2_000, help="series per request")
    p.add_argument(
        "--systems", nargs="+", choices=tuple(harness.STARTERS), default=list(harness.STARTERS)
    )
    p.add_argument("--profile", metavar="FILE", help="also profile a tsagent run with py-spy")
    p.add_argument("--profile-format", default="raw", help="py-spy format (raw, speedscope...)")
    p.add_argument(
        "--profile-top", type=int, default=20, help="rows listed from the profile and --memory"
    )
    p.add_argument(
        "--memory", action="store_true", help="also a traced tsagent run: memory per line"
    )
    p.add_argument("--memory-series", type=int, default=50_000, help="new series, traced run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    args = p.parse_args(argv)

    start_ms = (int(time.time() * 1000) - 15_000) // 1000 * 1000
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-churn-"))
    out: dict[str, Any] = {
        "config": {"series": args.series, "senders": args.senders, "batch": args.batch},
        "systems": {},
        "notes": [],
    }
    try:
        for which in args.systems:
            d = harness.start(which, tmp)
            if d is None:
                out["notes"].append(harness.missing_note(which))
                continue
            try:
                out["systems"][d.name] = churn_one(d, args, start_ms)
            finally:
                d.stop()
            print(f"  {d.name}: {out['systems'][d.name]}", file=sys.stderr, flush=True)
        if args.profile:
            info, lines = profile_tsagent(tmp, args, start_ms)
            out["profiled_run"] = info
            out["profile"] = lines
        if args.memory:
            untraced = out["systems"].get("tsagent", {}).get("rss_per_series")
            info, lines = memory_breakdown(tmp, args, start_ms, untraced)
            out["traced_run"] = info
            out["memory"] = lines
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(markdown(out))
    return 1 if any(r["failed"] for r in out["systems"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
