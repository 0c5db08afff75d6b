"""CSV import benchmark: ``tsagent import-csv`` end to end on a generated file.

Run: ``python benchmarks/bench_csv_import.py [--series 1000 --timestamps 1000]``.
The default file has 1,000,000 rows (1,000 hosts x 1,000 timestamps at 15 s),
two label columns (host, region) and three value columns (cpu, mem, disk),
so 3,000,000 samples in 3,000 series.  The timed part is the real command in
a subprocess with a fresh data directory: interpreter start, config and
plugin loading, opening the store, parsing, series creation, the backfill
transaction with encoding into segments and the audit row, and closing.
The import is then checked through the store (sample count and one series).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.model import Matcher
from agent.storage import StorageOptions, Store
from plugins.codecs import DEFAULT_CODEC, all_codecs

BASE_S = 1_600_000_000
STEP_S = 15

MAPPING = """\
timestamp: {column: time, format: unix_s}
labels: [host, region]
values: [cpu, mem, disk]
metric: "node_{column}"
"""


def generate(path: Path, series: int, timestamps: int) -> int:
    rnd = random.Random(1)
    with path.open("w") as fh:
        fh.write("time,host,region,cpu,mem,disk\n")
        for t in range(timestamps):
            ts = BASE_S + t * STEP_S
            fh.writelines(
                f"{ts},host-{s:05d},r{s % 7},{rnd.random():.4f},{s * 1000 + t},{(s + t) % 100}.5\n"
                for s in range(series)
            )
    return series * timestamps


async def check(db: Path, rows: int, timestamps: int) -> None:
    store = await Store.open(
        db, StorageOptions(default_codec=DEFAULT_CODEC), {c.name: c for c in all_codecs()}
    )
    try:
        everything = await store.select([Matcher.of("__name__", "=~", "node_.*")], 0, 2**62)
        total = sum(s.timestamps.size for s in everything)
        assert total == rows * 3, (total, rows * 3)
        one = await store.select(
            [Matcher.of("__name__", "=", "node_mem"), Matcher.of("host", "=", "host-00007")],
            0,
            2**62,
        )
        assert one[0].values.tolist() == [7000.0 + t for t in range(timestamps)]
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--timestamps", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsagent-bench-csv-") as tmp:
        tmpdir = Path(tmp)
        data = tmpdir / "metrics.csv"
        mapping = tmpdir / "mapping.yaml"
        mapping.write_text(MAPPING)
        rows = generate(data, args.series, args.timestamps)
        size = data.stat().st_size
        cmd = [
            sys.executable,
            "-m",
            "agent.cli",
            "import-csv",
            str(data),
            "--mapping",
            str(mapping),
            "--data-dir",
            str(tmpdir / "data"),
            "--progress",
            "never",
        ]
        started = time.perf_counter()
        res = subprocess.run(
            cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        elapsed = time.perf_counter() - started
        if res.returncode != 0:
            sys.exit(f"import failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        asyncio.run(check(tmpdir / "data" / "tsagent.db", rows, args.timestamps))
        db_size = (tmpdir / "data" / "tsagent.db").stat().st_size
    print("| measurement | result |")
    print("|---|---|")
    print(f"| file | {rows:,} rows, {rows * 3:,} samples, {size / 1e6:.1f} MB |")
    print(f"| `tsagent import-csv`, end to end (process start to exit) | {elapsed:.2f} s |")
    print(f"| rate | {rows / elapsed:,.0f} rows/s ({rows * 3 / elapsed:,.0f} samples/s) |")
    print(f"| database afterwards | {db_size / 1e6:.1f} MB |")
    print(f"| command's own report | {res.stdout.strip()} |")


if __name__ == "__main__":
    main()
