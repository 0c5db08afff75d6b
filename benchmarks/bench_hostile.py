"""Hostile-input benchmark (issue 13): the real daemon under attack, class by class.

Run: ``python benchmarks/bench_hostile.py`` (a few minutes; ``--quick`` for
a smaller run, ``--skip-queries`` before the query branch is merged).

For each class of the catalogue (``tests/hostile/cases.py``: timestamps,
malformed input, label limits, large bodies, backfills of 200,000 series,
export, fuzz corpus, slow clients, password guessing, StatsD garbage over UDP
and TCP, queries) a fresh ``tsagent run`` is started as a subprocess under an
address-space ceiling (``RLIMIT_AS``, 4 GiB by default), and the class is
fired from 8 concurrent clients while a remote-write sender keeps writing
and a probe polls ``/-/healthy`` every 50 ms. Then one more run fires
everything at once. Per run: requests,
answers by status, whether the daemon stayed alive, its peak RSS (VmHWM),
``/-/healthy`` p99 and remote-write p99 during the attack, and whether every
acknowledged sample was stored. The issue's bar: alive, RSS under 1 GiB,
``/-/healthy`` under 1 s, every case a 4xx (or a cheap correct answer).

``--fuzz-examples N`` also runs the hypothesis fuzz tests
(``tests/hostile/test_hostile_fuzz.py``) with N examples each: the long
campaign CI leaves out. ``--json`` prints the figures as JSON. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile.cases import (  # noqa: E402 - after the path set-up
    Case,
    backfill_cases,
    formula_seed,
    fuzz_corpus,
    query_cases,
    write_cases,
)
from tests.hostile.harness import AttackReport, GiB, run_attack  # noqa: E402


async def one_run(
    name: str, cases: list[Case], args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tsagent-hostile-") as tmp:
        report: AttackReport = await run_attack(
            Path(tmp),
            cases,
            seed_cases=[formula_seed()],
            memory_limit=args.memory_limit_gib * GiB,
            request_timeout_s=args.request_timeout,
            **{
                "slow_connections": 0,
                "guesses": 0,
                "statsd_datagrams": 0,
                "export_hangups": 0,
                "statsd_tcp_connections": 0,
                **extra,
            },
        )
    out = report.to_json()
    out["run"] = name
    out["verdict"] = verdict(report)
    return out


def verdict(r: AttackReport) -> str:
    problems = []
    if not r.alive:
        problems.append("daemon died")
    if r.peak_rss >= GiB:
        problems.append("RSS over 1 GiB")
    if r.health_p99_s >= 1.0 or r.health_failures:
        problems.append("/-/healthy slow or failing")
    if r.missing:
        problems.append(f"{r.missing} acked samples missing")
    elif r.missing is None:
        problems.append("stored samples not checked")
    bad = sum(len(c.unexpected) for c in r.classes.values())
    if bad:
        problems.append(f"{bad} unexpected answers")
    if r.error_lines:
        problems.append("ERROR lines logged")
    if r.shutdown_error_lines:
        problems.append("ERROR lines logged while stopping")
    return "ok" if not problems else "; ".join(problems)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | requests | answers | alive | peak RSS MiB | healthy p99 ms "
        "| remote-write p99 ms | acked / missing | verdict |",
        "|---|---:|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        requests = sum(c["requests"] for c in r["classes"].values())
        answers: dict[str, int] = {}
        for c in r["classes"].values():
            for k, v in c["statuses"].items():
                answers[k] = answers.get(k, 0) + v
        text = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
        lines.append(
            f"| {r['run']} | {requests} | {text} | {r['alive']} | {r['peak_rss_mib']} "
            f"| {r['healthy_p99_ms']} | {r['remote_write_p99_ms']} "
            f"| {r['acked_samples']} / {r['acked_missing']} | {r['verdict']} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    scale = 0.2 if args.quick else 1.0
    fuzz = list(fuzz_corpus(per_body=args.fuzz_per_body))
    by_class: dict[str, list[Case]] = {}
    for case in write_cases(scale):
        by_class.setdefault(case.cls, []).append(case)
    queries = [] if args.skip_queries else query_cases(scale)
    runs: list[tuple[str, list[Case], dict[str, Any]]] = [
        (name, cases, {}) for name, cases in by_class.items()
    ]
    runs += [
        ("fuzz corpus", fuzz, {}),
        ("slow clients", [], {"slow_connections": args.slow_connections}),
        ("password guessing", [], {"guesses": 40}),
        ("statsd garbage", [], {"statsd_datagrams": 5000}),
        ("statsd tcp", [], {"statsd_tcp_connections": args.statsd_tcp_connections}),
        ("export hang-ups", [], {"export_hangups": 50}),
    ]
    if queries:
        runs.append(("queries", queries, {}))
    rows = []
    for name, cases, extra in runs:
        if args.only and name not in args.only:
            continue
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append(await one_run(name, cases, args, **extra))
    if not args.only:
        # The 200,000-series backfills measure the store as it grows by 400,000 series,
        # not an attack: everything-at-once fires them at a quarter of the size.
        everything = [c for name, cs in by_class.items() if "backfill" not in name for c in cs]
        everything += backfill_cases(int(50_000 * scale)) + fuzz + queries
        print("... everything at once", file=sys.stderr, flush=True)
        rows.append(
            await one_run(
                "everything at once",
                everything,
                args,
                slow_connections=args.slow_connections,
                guesses=40,
                statsd_datagrams=5000,
                export_hangups=50,
                statsd_tcp_connections=args.statsd_tcp_connections,
            )
        )
    return rows


def run_fuzz_campaign(examples: int) -> int:
    env = dict(os.environ, TSAGENT_FUZZ_EXAMPLES=str(examples))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--timeout=0"]
    cmd.append(str(ROOT / "tests" / "hostile" / "test_hostile_fuzz.py"))
    return subprocess.call(cmd, env=env, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="scale the big cases down to 20%%")
    parser.add_argument("--skip-queries", action="store_true", help="leave out the query cases")
    parser.add_argument("--fuzz-per-body", type=int, default=150, help="mutations per body")
    parser.add_argument("--slow-connections", type=int, default=1500)
    parser.add_argument(
        "--statsd-tcp-connections", type=int, default=300, help="StatsD TCP attack connections"
    )
    parser.add_argument("--memory-limit-gib", type=int, default=4, help="RLIMIT_AS of the daemon")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="client timeout, s")
    parser.add_argument("--only", nargs="*", help="run only these runs (by name)")
    parser.add_argument("--fuzz-examples", type=int, default=0, help="hypothesis campaign size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(table(rows))
        for r in rows:
            for name, c in r["classes"].items():
                if c["unexpected"]:
                    print(f"\n{r['run']} / {name}: unexpected {c['unexpected']}")
            for line in r["error_log_lines"][:3] + r["shutdown_error_log_lines"][:3]:
                print(f"\n{r['run']}: logged {line[:1000]}")
    failed = any(r["verdict"] != "ok" for r in rows)
    if args.fuzz_examples:
        failed |= run_fuzz_campaign(args.fuzz_examples) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
