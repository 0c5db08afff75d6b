"""``tsagent import-csv``: backfill a CSV file with the daemon stopped.

Why a command and not only the HTTP endpoint: the first import of years of
history usually happens before the daemon runs, and a file on disk should not
have to fit ``server.max_body_bytes``.  The command opens the store exactly as
the daemon would (config, data directory, codecs), so it takes the store's
lock; when the daemon holds it, the command says so and prints the ``curl``
line that does the same import through the running daemon.

Exit status: 0 every row imported; 1 some rows rejected (listed, the rest
imported) or the import aborted (``--on-error=abort``, nothing imported);
2 nothing could start (config, mapping, file, or the lock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from agent.cli.setup import (
    AddCommon,
    DaemonRunning,
    bearer_hint,
    daemon_url,
    load_config,
    offline_store,
    print_json,
)
from agent.dataio.importer import (
    CsvMapping,
    ImportReport,
    MappingError,
    parse_csv,
    parse_extra_labels,
    store_parsed,
)


def add_import_parser(sub: Any, add_common: AddCommon) -> None:
    p = sub.add_parser(
        "import-csv",
        help="backfill a CSV file into the database (daemon stopped; else use its HTTP endpoint)",
    )
    add_common(p)
    p.add_argument("file", help="the CSV file")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--mapping", help="YAML mapping: timestamp, label and value columns")
    how.add_argument(
        "--format",
        dest="vm_format",
        metavar="SPEC",
        help="VictoriaMetrics column spec, e.g. 1:time:unix_s,2:label:host,3:metric:cpu",
    )
    p.add_argument(
        "--header", action="store_true", help="with --format: the first line is a header; skip it"
    )
    p.add_argument(
        "--on-error",
        choices=("skip", "abort"),
        default="skip",
        help="skip: import the valid rows (default); abort: import nothing if any row is bad",
    )
    p.add_argument(
        "--extra-label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add a label to every series (repeatable)",
    )
    p.add_argument("--source", default="csv_import", help="source name in the audit trail")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    p.add_argument("--max-errors", type=int, default=20, help="bad rows to list (default 20)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


class ProgressBar:
    """A one-line bar with rows/s and ETA on stderr; no dependency, thread-safe enough.

    Updates come from the parser's worker thread once per chunk; drawing is
    throttled so a fast import does not spend its time on the terminal.
    """

    WIDTH = 28

    def __init__(self, total_bytes: int, stream: TextIO, *, tty: bool) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream
        self.tty = tty
        self.started = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()
        self._drawn = False

    def update(self, done_bytes: int, rows: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            interval = 0.2 if self.tty else 2.0
            if not final and now - self._last < interval:
                return
            self._last = now
            elapsed = max(now - self.started, 1e-9)
            frac = min(done_bytes / self.total, 1.0)
            rate = rows / elapsed
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("inf")
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            eta_text = "--" if eta == float("inf") else f"{eta:.1f}s"
            line = (
                f"parsing [{bar}] {frac * 100:5.1f}%  {rows:,} rows  {rate:,.0f} rows/s"
                f"  ETA {eta_text}"
            )
            if self.tty:
                self.stream.write("\r" + line + "\x1b[K")
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
            self._drawn = True

    def phase(self, text: str) -> None:
        with self._lock:
            if self._drawn and self.tty:
                self.stream.write("\n")
            self.stream.write(text + "\n")
            self.stream.flush()
            self._drawn = False


def _mapping(args: argparse.Namespace) -> tuple[CsvMapping, str]:
    """The mapping and the query string that would do the same over HTTP."""
    extra = parse_extra_labels(args.extra_label)
    if args.vm_format:
        mapping = CsvMapping.from_vm_format(args.vm_format, header=args.header)
        query = "format=" + quote(args.vm_format, safe=":,")
    else:
        import yaml

        try:
            raw = yaml.safe_load(Path(args.mapping).read_text()) or {}
        except yaml.YAMLError as exc:
            raise MappingError(f"{args.mapping}: not valid YAML: {exc}") from exc
        try:
            mapping = CsvMapping.from_dict(raw)
        except MappingError as exc:
            raise MappingError(f"{args.mapping}: {exc}") from exc
        query = "mapping=" + quote(json.dumps(raw, separators=(",", ":")), safe="")
    mapping.extra_labels.update(extra)
    mapping.check_extra_labels()
    for item in args.extra_label:
        query += "&extra_label=" + quote(item, safe="=")
    if args.on_error != "skip":
        query += f"&on_error={args.on_error}"
    if args.vm_format and args.header:
        query += "&header=true"
    return mapping, query


def run_import(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    err = sys.stderr
    loaded = load_config(args.config, overrides, err)
    if loaded is None:
        return 2
    config, host = loaded
    try:
        mapping, query = _mapping(args)
    except (MappingError, OSError) as exc:
        print(f"tsagent import-csv: {exc}", file=err)
        return 2
    path = Path(args.file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        print(f"tsagent import-csv: {exc}", file=err)
        return 2
    show = args.progress == "always" or (args.progress == "auto" and err.isatty())
    bar = ProgressBar(size, err, tty=err.isatty()) if show else None
    try:
        report = asyncio.run(_import(config, host, path, mapping, args, bar))
    except DaemonRunning as exc:
        hint = bearer_hint(config, "write")
        url = daemon_url(config, "/api/v1/import/csv")
        print(
            f"tsagent import-csv: {exc}\n"
            "The daemon is running and holds the database. Import through its HTTP endpoint"
            " instead (same mapping, same result):\n"
            f"  curl{hint} --data-binary @{args.file} '{url}?{query}'",
            file=err,
        )
        return 2
    except (MappingError, UnicodeDecodeError, OSError) as exc:
        print(f"tsagent import-csv: {exc}", file=err)
        return 2
    _print_report(report, args, path)
    return 0 if report.ok else 1


async def _import(
    config: Any,
    host: Any,
    path: Path,
    mapping: CsvMapping,
    args: argparse.Namespace,
    bar: ProgressBar | None,
) -> ImportReport:
    import io

    async with offline_store(config, host) as store:
        loop = asyncio.get_running_loop()

        def parse() -> Any:
            with path.open("rb") as raw, io.TextIOWrapper(raw, "utf-8", newline="") as fh:
                tick = None
                if bar is not None:
                    progress_bar = bar

                    def tick(rows: int) -> None:
                        progress_bar.update(raw.tell(), rows)

                parsed = parse_csv(fh, mapping, progress=tick)
                if bar is not None:
                    bar.update(raw.tell(), parsed.report.received, final=True)
                return parsed

        parsed = await loop.run_in_executor(None, parse)
        if bar is not None:
            bar.phase(
                f"writing {parsed.series_idx.size:,} samples in one transaction"
                f" ({parsed.report.problems_total:,} bad rows so far)"
            )
        return await store_parsed(
            store, parsed, on_error=args.on_error, source=args.source, client=_client()
        )


def _client() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = str(os.getuid())
    return f"cli:{user}"


def _print_report(report: ImportReport, args: argparse.Namespace, path: Path) -> None:
    if args.json:
        data = report.to_dict(max_problems=max(args.max_errors, 0))
        data["seconds"] = round(report.seconds, 3)
        print_json(data, sort_keys=False)
        return
    rate = report.received / report.seconds if report.seconds > 0 else 0.0
    if report.aborted:
        print(
            f"{path}: aborted, nothing imported (--on-error=abort):"
            f" {report.problems_total:,} problems in {report.received:,} rows"
        )
    else:
        print(
            f"{path}: imported {report.received - report.rejected:,} of {report.received:,} rows"
            f" ({report.stored:,} new samples, {report.duplicates:,} already stored,"
            f" {report.series:,} series) in {report.seconds:.2f}s ({rate:,.0f} rows/s);"
            f" audit id {report.audit_id}"
        )
    if report.problems_total:
        err = sys.stderr
        print(f"{report.problems_total:,} problems:", file=err)
        for p in report.problems[: max(args.max_errors, 0)]:
            print(f"  {p}", file=err)
        more = report.problems_total - min(len(report.problems), max(args.max_errors, 0))
        if more > 0:
            print(f"  ... and {more:,} more (--max-errors N, or --json)", file=err)
