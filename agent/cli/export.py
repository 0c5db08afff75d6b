"""``tsagent export-csv``: write stored samples as CSV (or JSON lines) with the daemon stopped.

Why a command beside ``GET /api/v1/export/csv``: a full export of a large
database should not travel through HTTP and a proxy's timeouts. The command
opens the store exactly as the daemon would and therefore takes its lock;
when the daemon holds it, the command says so and prints the ``curl`` line
that streams the same export from the running daemon.

The export streams: series are read a chunk at a time (``--chunk-series``)
and written out before the next chunk is read. Exit status: 0 written;
2 nothing could start (config, arguments, the lock, the output file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from agent.cli.setup import (
    AddCommon,
    DaemonRunning,
    bearer_hint,
    daemon_url,
    load_config,
    offline_store,
)
from agent.dataio.export import (
    CHUNK_SERIES,
    TIME_FORMATS,
    ExportError,
    ExportStats,
    export_csv,
    export_jsonl,
    import_spec,
    label_columns,
    select_series,
    zone_of,
)


def add_export_parser(sub: Any, add_common: AddCommon) -> None:
    p = sub.add_parser(
        "export-csv",
        help="write stored samples as CSV (daemon stopped; else use GET /api/v1/export/csv)",
    )
    add_common(p)
    p.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="series selector such as 'cpu{host=~\"a.*\"}' (repeatable; default: every series)",
    )
    p.add_argument("--start", help="first timestamp: RFC 3339 or Unix seconds (default: all)")
    p.add_argument("--end", help="last timestamp: RFC 3339 or Unix seconds (default: all)")
    p.add_argument(
        "--timezone",
        default="UTC",
        help="IANA zone for rfc3339 timestamps and for --start/--end without an offset",
    )
    p.add_argument(
        "--time-format", choices=TIME_FORMATS, default="rfc3339", help="timestamp column format"
    )
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="write VictoriaMetrics JSON lines (one object per series) instead of CSV",
    )
    p.add_argument("-o", "--output", help="output file (default: standard output)")
    p.add_argument(
        "--chunk-series",
        type=int,
        default=CHUNK_SERIES,
        help=f"series read per step; bounds memory (default {CHUNK_SERIES})",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal and output is a file)",
    )


class _Progress:
    """Series done / total with samples/s on stderr, redrawn at most five times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int, samples: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 28) + "." * (28 - int(frac * 28))
        rate = samples / max(now - self.started, 1e-9)
        line = (
            f"exporting [{bar}] {done:,}/{total:,} series  {samples:,} samples"
            f"  {rate:,.0f} samples/s"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if final and self.tty:
            self.stream.write("\n")
        self.stream.flush()


def _endpoint(config: Any, args: argparse.Namespace) -> str:
    params: list[tuple[str, str]] = [("match[]", m) for m in args.match]
    for key in ("start", "end"):
        if getattr(args, key):
            params.append((key, getattr(args, key)))
    if args.jsonl:
        return daemon_url(config, f"/api/v1/export?{urlencode(params)}")
    params += [("time_format", args.time_format), ("tz", args.timezone)]
    return daemon_url(config, f"/api/v1/export/csv?{urlencode(params)}")


def run_export(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from agent.query.timezone import parse_time

    err = sys.stderr
    loaded = load_config(args.config, overrides, err)
    if loaded is None:
        return 2
    config, host = loaded
    try:
        zone = zone_of(args.timezone)
        start = None if args.start is None else parse_time(args.start, zone)
        end = None if args.end is None else parse_time(args.end, zone)
    except (ExportError, ValueError) as exc:
        print(f"tsagent export-csv: {exc}", file=err)
        return 2
    to_file = args.output not in (None, "-")
    show = args.progress == "always" or (args.progress == "auto" and err.isatty() and to_file)
    try:
        stats, labels = asyncio.run(_export(config, host, args, start, end, show))
    except DaemonRunning as exc:
        hint = bearer_hint(config, "read")
        out = f" -o {args.output}" if to_file else ""
        print(
            f"tsagent export-csv: {exc}\n"
            "The daemon is running and holds the database. Export through its HTTP endpoint"
            " instead (same selection, streamed):\n"
            f"  curl{hint}{out} '{_endpoint(config, args)}'",
            file=err,
        )
        return 2
    except (ExportError, OSError) as exc:
        print(f"tsagent export-csv: {exc}", file=err)
        return 2
    where = args.output if to_file else "stdout"
    note = f", {stats.stale_skipped:,} staleness markers left out" if stats.stale_skipped else ""
    print(f"{where}: {stats.samples:,} samples of {stats.series:,} series{note}", file=err)
    if not args.jsonl and to_file:
        spec = import_spec(labels, args.time_format)
        print(f"import back with: tsagent import-csv --header --format '{spec}' {where}", file=err)
    return 0


async def _export(
    config: Any,
    host: Any,
    args: argparse.Namespace,
    start: int | None,
    end: int | None,
    show: bool,
) -> tuple[ExportStats, list[str]]:
    async with offline_store(config, host) as store:
        filt = args.match or None
        labels = label_columns(store, select_series(store, None, filt))
        stats = ExportStats()
        bar = _Progress(sys.stderr) if show else None
        to_file = args.output not in (None, "-")
        with Path(args.output).open("w", newline="") if to_file else nullcontext(sys.stdout) as out:
            if args.jsonl:
                pieces = export_jsonl(
                    store, None, start, end, filt, chunk_series=args.chunk_series, stats=stats
                )
            else:
                pieces = export_csv(
                    store,
                    None,
                    start,
                    end,
                    filt,
                    time_format=args.time_format,
                    timezone=args.timezone,
                    chunk_series=args.chunk_series,
                    stats=stats,
                    progress=bar,
                )
            async for piece in pieces:
                out.write(piece)
        if bar is not None:
            bar(stats.series_total, stats.series_total, stats.samples, final=True)
        return stats, labels
