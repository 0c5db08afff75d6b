"""The daemon under attack, as a subprocess with a memory ceiling (issue 13, "Done when").

Every non-query case of the catalogue and a mutated corpus of real bodies,
from 8 concurrent clients, while a remote-write sender keeps writing and a
probe polls ``/-/healthy``; plus slow-loris connections, password guessing,
StatsD garbage over UDP and TCP, and clients hanging up mid-export. Asserted: the daemon stays
up, its peak RSS stays under 1 GiB, every case gets an answer it may get (a
4xx naming the problem, never a 5xx), every acknowledged sample is stored,
and nothing was logged as our fault. Latencies are the benchmark's business
(``benchmarks/bench_hostile.py``); query cases belong to the query branch.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.hostile.cases import FORMULA_VALUES, formula_seed, fuzz_corpus, write_cases
from tests.hostile.harness import GiB, run_attack

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc for the RSS high-water mark"
)


async def test_daemon_survives_every_case_and_the_fuzz_corpus(tmp_path: Path) -> None:
    cases = write_cases(scale=0.1) + list(fuzz_corpus(per_body=12))
    report = await run_attack(
        tmp_path,
        cases,
        seed_cases=[formula_seed()],
        slow_connections=150,
        guesses=14,
        statsd_tcp_connections=60,
    )
    summary = json.dumps(report.to_json(), indent=1)
    assert report.alive, summary
    assert report.peak_rss < 1 * GiB, summary
    for name, st in report.classes.items():
        assert not st.unexpected, f"{name}: {st.unexpected}\n{summary}"
    assert report.health_failures == 0, summary
    assert report.acked > 0 and report.missing == 0, summary
    # Nothing the attack did was logged as our fault, nor anything while it stopped.
    assert report.error_lines == [], summary
    assert report.shutdown_error_lines == [], summary
    # The export neutralised every formula, and reads back to the stored values.
    body = report.export_bodies["csv export of formula labels"].decode()
    cells = [row[2] for row in csv.reader(io.StringIO(body))][1:]
    assert sorted(cells) == sorted("'" + v for v in FORMULA_VALUES)
