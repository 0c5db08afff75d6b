"""The benchmark harness's accounting (``benchmarks/harness.py``), not its timings.

The footprint and churn figures of issue 12 are only as good as the code that
adds up bytes and profile samples, so that code is checked on inputs whose
answers are known: a real SQLite file with pages freed by a delete, data
directories laid out like tsagent's, VictoriaMetrics' and Prometheus', and a
hand-written py-spy collapsed-stack file.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import harness


def test_sqlite_breakdown_adds_up_to_the_file_and_counts_freed_pages(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute("CREATE TABLE small (labels TEXT NOT NULL UNIQUE)")
    conn.executemany("INSERT INTO big(data) VALUES (?)", [(b"x" * 1000,) for _ in range(400)])
    conn.executemany("INSERT INTO small VALUES (?)", [(f"label-{i}",) for i in range(50)])
    conn.commit()
    conn.execute("DELETE FROM big WHERE id > 100")
    conn.commit()
    conn.close()

    bd = harness.sqlite_breakdown(db)

    assert bd["file_bytes"] == db.stat().st_size
    assert bd["free_pages"] > 50  # 300 deleted rows of 1 kB, 4 per 4 KiB page
    used = sum(o["bytes"] for o in bd["objects"])
    assert used + bd["free_bytes"] == bd["file_bytes"]
    by_name = {o["name"]: o for o in bd["objects"]}
    assert by_name["sqlite_autoindex_small_1"]["type"] == "index"
    assert by_name["big"]["type"] == "table"
    assert by_name["big"]["payload"] >= 100 * 1000
    table = harness.breakdown_markdown(bd, samples=1000, series=10)
    assert "free pages" in table and f"**{bd['file_bytes']:,}**" in table


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"tsagent.db": 100, "tsagent.db-wal": 50, "tsagent.db-shm": 8},
            {"tsagent.db": 100, "tsagent.db-wal": 50, "tsagent.db-shm": 8},
        ),
        (
            {
                "data/small/2026_12/part1/values.bin": 10,
                "data/small/2026_12/part2/values.bin": 5,
                "data/big/2026_12/x": 1,
                "indexdb/17/a": 7,
                "cache/metricName": 3,
            },
            {"data/small": 15, "data/big": 1, "indexdb": 7, "cache": 3},
        ),
        (
            {
                "wal/00000000": 40,
                "chunks_head/000001": 9,
                "01HB2V3X4Y5Z6A7B8C9D0E1F2G/chunks/000001": 20,
                "01HB2V3X4Y5Z6A7B8C9D0E1F2H/index": 2,
            },
            {"wal": 40, "chunks_head": 9, "blocks": 22},
        ),
    ],
)
def test_group_files(files: dict[str, int], expected: dict[str, int]) -> None:
    assert harness.group_files(files) == expected


def test_dir_files_sizes_every_regular_file(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "0001").write_bytes(b"a" * 10)
    (tmp_path / "tsagent.db").write_bytes(b"b" * 3)
    assert harness.dir_files(tmp_path) == {"wal/0001": 10, "tsagent.db": 3}
    assert harness.dir_bytes(tmp_path) == 13


def test_collapsed_top_shares_and_idle_samples(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "main (a/app.py:1);decode (p/wire.py:10) 6\n"
        "main (a/app.py:1);decode (p/wire.py:12);varint (p/wire.py:3) 2\n"
        "main (a/app.py:1);commit (s/db.py:5) 2\n"
        "Thread.run (lib/threading.py:1);_worker (concurrent/futures/thread.py:81) 30\n"
        "run (lib/asyncio/base_events.py:1);EpollSelector.select (lib/selectors.py:468) 5\n"
    )
    busy, idle, rows = harness.collapsed_top(raw, top=10)
    assert (busy, idle) == (10, 35)
    shares = {name: (self_pct, total_pct) for name, self_pct, total_pct in rows}
    assert shares["decode (p/wire.py)"] == (60.0, 80.0)  # two lines of one function, one row
    assert shares["varint (p/wire.py)"] == (20.0, 20.0)
    assert shares["commit (s/db.py)"] == (20.0, 20.0)
    assert "main (a/app.py)" not in shares  # never innermost
