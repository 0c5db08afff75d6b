"""``tsagent generate``: synthetic samples into the local store or a remote-write URL.

Local writes open the store as the daemon would, so they take its lock;
while the daemon runs the command says so and shows the ``--remote-write``
line that sends the same samples through the daemon instead. Exit status:
0 all samples written, 1 some refused (listed), 2 nothing could start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from agent.analytics.generate import (
    PATTERN_CHOICES,
    GeneratedSeries,
    GenerateError,
    PatternOptions,
    WriteReport,
    generate,
    send_json,
    send_remote_write,
    write_to_store,
)
from agent.cli.setup import (
    AddCommon,
    DaemonRunning,
    daemon_url,
    load_config,
    offline_store,
    print_json,
)


def _seconds(text: str) -> float:
    """Seconds as a number (``300``) or a duration (``5m``, ``1h30m``)."""
    try:
        value = float(text)
    except ValueError:
        from agent.query.errors import BadDataError
        from agent.query.parser import parse_duration_ms

        try:
            value = parse_duration_ms(text) / 1000
        except BadDataError:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 300, 5m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _label(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected k=v, got {part!r}")
        out.append((name.strip(), value.strip()))
    return out


def add_generate_parser(sub: Any, add_common: AddCommon) -> None:
    p = sub.add_parser(
        "generate", help="write synthetic samples (sine, noise, ...) for demos and benchmarks"
    )
    add_common(p)
    p.add_argument("--metric", required=True, help="metric name, e.g. cpu_usage")
    p.add_argument(
        "--pattern", choices=PATTERN_CHOICES, default="combined", help="shape of the values"
    )
    p.add_argument("--duration", type=_seconds, default=300.0, help="seconds or 5m (default 300)")
    p.add_argument("--interval", type=_seconds, default=5.0, help="seconds between samples (5)")
    p.add_argument("--series", type=int, default=1, help="series count; each gets instance=gen-i")
    p.add_argument(
        "--labels",
        type=_label,
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="extra labels (repeatable)",
    )
    p.add_argument(
        "--start",
        help="first timestamp (RFC 3339 or Unix seconds); default: duration before now",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples)")
    p.add_argument("--remote-write", metavar="URL", help="send to this remote-write URL instead")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="send to a running agent's JSON endpoint (URL/backfill/import), "
        "e.g. http://localhost:9201",
    )
    p.add_argument("--bearer-token", help="with --remote-write/--base-url: Bearer token")
    d = PatternOptions()
    p.add_argument("--base", type=float, default=d.base, help=f"base level ({d.base})")
    p.add_argument("--amplitude", type=float, default=d.amplitude, help="sine amplitude")
    p.add_argument("--period", type=_seconds, default=d.period_s, help="sine period (300s)")
    p.add_argument("--slope", type=float, default=d.slope, help="linear slope per second")
    p.add_argument("--noise", type=float, default=d.noise, help="noise standard deviation")
    p.add_argument("--spike-probability", type=float, default=d.spike_probability)
    p.add_argument("--spike-height", type=float, default=d.spike_height)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_generate(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    err = sys.stderr
    if args.series < 1:
        print("tsagent generate: --series must be at least 1", file=err)
        return 2
    try:
        start_ms = _start_ms(args)
        batches = generate(
            args.metric,
            args.pattern,
            start_ms=start_ms,
            duration_s=args.duration,
            interval_s=args.interval,
            series=args.series,
            labels=dict(kv for group in args.labels for kv in group),
            seed=args.seed,
            options=PatternOptions(
                base=args.base,
                amplitude=args.amplitude,
                period_s=args.period,
                slope=args.slope,
                noise=args.noise,
                spike_probability=args.spike_probability,
                spike_height=args.spike_height,
            ),
        )
    except ValueError as exc:
        print(f"tsagent generate: {exc}", file=err)
        return 2
    if args.remote_write and args.base_url:
        print("tsagent generate: give --remote-write or --base-url, not both", file=err)
        return 2
    if args.base_url:
        try:
            report = asyncio.run(send_json(args.base_url, batches, bearer_token=args.bearer_token))
        except GenerateError as exc:
            print(f"tsagent generate: {exc}", file=err)
            return 2 if "cannot reach" in str(exc) else 1
        return _print(report, args, f"sent to {args.base_url}")
    if args.remote_write:
        try:
            report = asyncio.run(
                send_remote_write(args.remote_write, batches, bearer_token=args.bearer_token)
            )
        except GenerateError as exc:
            print(f"tsagent generate: {exc}", file=err)
            return 2 if "cannot reach" in str(exc) else 1
        return _print(report, args, f"sent to {args.remote_write}")
    loaded = load_config(args.config, overrides, err)
    if loaded is None:
        return 2
    config, host = loaded
    try:
        report = asyncio.run(_local(config, host, batches))
    except DaemonRunning as exc:
        url = daemon_url(config, "/api/v1/write")
        print(
            f"tsagent generate: {exc}\nThe daemon is running and holds the database. Send the"
            f" samples through it instead:\n  tsagent generate {_argv_hint()}"
            f" --remote-write {url}",
            file=err,
        )
        return 2
    return _print(report, args, f"written to {config.data_dir}")


def _argv_hint() -> str:
    argv = sys.argv[1:]
    if argv and argv[0] == "generate":
        argv = argv[1:]
    return " ".join(a for a in argv if not a.startswith("--remote-write"))


def _start_ms(args: argparse.Namespace) -> int:
    if args.start:
        from agent.query.timezone import parse_time

        try:
            return parse_time(args.start)
        except Exception as exc:  # noqa: BLE001 - BadDataError or ValueError, same message
            raise ValueError(f"--start: {exc}") from None
    step = round(args.interval * 1000)
    now = time.time_ns() // 1_000_000
    return (now - round(args.duration * 1000)) // step * step


async def _local(config: Any, host: Any, batches: list[GeneratedSeries]) -> WriteReport:
    async with offline_store(config, host) as store:
        return await write_to_store(store, batches)


def _print(report: WriteReport, args: argparse.Namespace, where: str) -> int:
    if args.json:
        print_json(report.to_json())
    else:
        print(
            f"{args.metric}: {report.samples} samples of {report.series} series {where}"
            f" ({report.stored} stored, {report.duplicates} duplicates,"
            f" {report.rejected} rejected)"
        )
        for e in report.errors:
            print(f"  rejected: {e}", file=sys.stderr)
    return 1 if report.rejected else 0
