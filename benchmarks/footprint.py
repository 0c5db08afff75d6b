"""The "whole data directory" part of ``bench_storage.py`` (issue 12).

Kept in its own module so ``bench_storage.py`` stays one topic per file; run
it through ``python benchmarks/bench_storage.py --part footprint [--small]``.
See that script's docstring for the load and why it is fair to each system.

The daemons are loaded one after the other (so their CPU figures do not mix);
the "while running" snapshot of each is taken by a timer thread exactly
``--idle`` seconds after its own load ended, while the next one is loading:
directory sizes do not depend on the CPU the next load takes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
import loadgen

INTERVAL_MS = 15_000
SYSTEMS = ("tsagent", "victoria", "prometheus")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("footprint part")
    g.add_argument("--small", action="store_true", help="1,000 series x 240 samples (quick)")
    g.add_argument("--fp-series", type=int, help="series (default 10,000; --small 1,000)")
    g.add_argument("--fp-rounds", type=int, help="samples per series (default 1,440; small 240)")
    g.add_argument("--fp-senders", type=int, default=4, help="concurrent senders")
    g.add_argument("--fp-batch", type=int, default=2_500, help="series (= samples) per request")
    g.add_argument(
        "--idle",
        type=float,
        default=harness.TSAGENT_FLUSH_INTERVAL_S + 5,
        help="seconds after a load before the 'while running' snapshot",
    )
    g.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="what to compare"
    )
    g.add_argument("--keep", action="store_true", help="keep the temporary data directories")


def _snapshot(d: harness.Daemon, samples: int) -> dict[str, Any]:
    files = harness.dir_files(d.data_dir)
    snap: dict[str, Any] = {
        "bytes": sum(files.values()),
        "groups": harness.group_files(files),
        "machine": harness.machine_load(),
    }
    snap["bytes_per_sample"] = snap["bytes"] / samples if samples else None
    db = d.data_dir / harness.TSAGENT_DB
    if d.name == "tsagent" and db.exists():
        try:
            snap["sqlite"] = harness.sqlite_breakdown(db)
        except sqlite3.Error as exc:  # a live database can be busy; the sizes above still count
            snap["sqlite_error"] = repr(exc)
    return snap


def measure(args: argparse.Namespace) -> dict[str, Any]:
    series = args.fp_series or (1_000 if args.small else 10_000)
    rounds = args.fp_rounds or (240 if args.small else 1_440)
    now = int(time.time() * 1000)
    start_ms = (now - rounds * INTERVAL_MS) // INTERVAL_MS * INTERVAL_MS
    tmp = Path(tempfile.mkdtemp(prefix="tsagent-bench-footprint-"))
    out: dict[str, Any] = {
        "series": series,
        "rounds": rounds,
        "senders": args.fp_senders,
        "batch": args.fp_batch,
        "idle_s": args.idle,
        "systems": {},
        "notes": [],
        "tmp_dir": str(tmp),
    }
    daemons: list[harness.Daemon] = []
    timers: list[threading.Timer] = []
    try:
        for which in args.systems:
            d = harness.start(which, tmp)
            if d is None:
                out["notes"].append(harness.missing_note(which))
                continue
            daemons.append(d)
            r: dict[str, Any] = {"machine_before": harness.machine_load()}
            out["systems"][d.name] = r
            cpu0 = d.cpu_seconds()
            res = asyncio.run(
                loadgen.run_load(
                    d.write_url,
                    series=series,
                    senders=args.fp_senders,
                    rounds=rounds,
                    batch=args.fp_batch,
                    start_ms=start_ms,
                    interval_ms=INTERVAL_MS,
                )
            )
            r["load_cpu_s"] = d.cpu_seconds() - cpu0
            r["load_s"] = res.seconds
            r["accepted"] = res.samples_accepted
            r["failed"] = res.samples_failed
            r["retries"] = res.retries
            r["errors"] = res.errors
            r["peak_rss"] = d.peak_rss_bytes()

            def snap(
                d: harness.Daemon = d, r: dict[str, Any] = r, n: int = res.samples_accepted
            ) -> None:
                r["running"] = _snapshot(d, n)

            t = threading.Timer(args.idle, snap)
            t.start()
            timers.append(t)
            print(
                f"  {d.name}: {res.samples_accepted:,} samples accepted "
                f"({res.samples_failed:,} failed) in {res.seconds:.0f} s, "
                f"daemon CPU {r['load_cpu_s']:.1f} s; {harness.machine_load()}",
                flush=True,
            )
        for t in timers:
            t.join()
        for d in daemons:
            r = out["systems"][d.name]
            r["shutdown_s"] = d.stop()
            r["notes"] = d.notes
            files = harness.dir_files(d.data_dir)  # before sqlite_breakdown opens the file
            r["stopped"] = {
                "bytes": sum(files.values()),
                "groups": harness.group_files(files),
                "bytes_per_sample": sum(files.values()) / r["accepted"] if r["accepted"] else None,
            }
            db = d.data_dir / harness.TSAGENT_DB
            if d.name == "tsagent" and db.exists():
                r["stopped"]["sqlite"] = harness.sqlite_breakdown(db)
    finally:
        for t in timers:
            t.cancel()
        for d in daemons:
            d.stop(30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def markdown(out: dict[str, Any]) -> str:
    n = out["series"] * out["rounds"]
    lines = [
        f"whole data directory: {out['series']:,} node-exporter-like series x {out['rounds']:,} "
        f"samples at 15 s ({n:,} samples), remote write, {out['senders']} senders, "
        f"{out['batch']:,} series a request; 'running' = {out['idle_s']:.0f} s after the load",
        "",
        "| system | B/sample while running | B/sample after shutdown | directory running | "
        "directory after shutdown | load: daemon CPU s | load wall s | failed | machine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in out["systems"].items():
        run = r.get("running", {})
        stp = r.get("stopped", {})
        lines.append(
            f"| {name} | {_f(run.get('bytes_per_sample'))} | {_f(stp.get('bytes_per_sample'))} | "
            f"{_mb(run.get('bytes'))} | {_mb(stp.get('bytes'))} | {r['load_cpu_s']:.1f} | "
            f"{r['load_s']:.0f} | {r['failed']:,} | {run.get('machine', '')} |"
        )
    lines += ["", "where the bytes go (per file or component):", ""]
    lines += ["| system | state | component | bytes | B/sample |", "|---|---|---|---:|---:|"]
    for name, r in out["systems"].items():
        for state in ("running", "stopped"):
            for comp, size in r.get(state, {}).get("groups", {}).items():
                lines.append(f"| {name} | {state} | `{comp}` | {size:,} | {size / n:.3f} |")
    ts = out["systems"].get("tsagent", {})
    for state, title in (("running", "while running"), ("stopped", "after shutdown")):
        bd = ts.get(state, {}).get("sqlite")
        if bd:
            lines += ["", f"tsagent's SQLite file {title} (dbstat):", ""]
            lines.append(harness.breakdown_markdown(bd, n, out["series"]))
        elif ts.get(state, {}).get("sqlite_error"):
            lines += ["", f"dbstat {title} failed: {ts[state]['sqlite_error']}"]
    for note in out["notes"]:
        lines.append(f"\nnote: {note}")
    for name, r in out["systems"].items():
        if r["errors"] or r.get("notes"):
            lines.append(f"\n{name}: {r['errors']} {r.get('notes')}")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mb(x: int | None) -> str:
    return "-" if x is None else f"{x / 1e6:,.1f} MB"


def run(args: argparse.Namespace) -> int:
    print(f"footprint benchmark ({harness.machine_load()}):", flush=True)
    out = measure(args)
    print()
    print(markdown(out))
    failed = any(r["failed"] for r in out["systems"].values())
    return 1 if failed else 0
