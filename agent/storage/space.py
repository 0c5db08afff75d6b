"""Disk space: giving freed pages back, keeping SQLite's ``-wal`` small, and showing where
the bytes are.

The log is the part of the file that churns: rows are written by every group
commit and deleted when the head flushes. SQLite reuses freed pages, but never
hands them back by itself, so one burst would leave the file at its largest
size for good. The database is created with ``auto_vacuum=INCREMENTAL``;
:func:`reclaim` runs ``PRAGMA incremental_vacuum`` in bounded steps (each a
short write transaction on the SQL thread, so appends interleave) once the
free pages are worth it, and then a passive checkpoint so the ``-wal`` file
is reset and cut back to ``journal_size_limit`` (see :func:`agent.storage.db.connect`).

:func:`measure` is what ``/metrics`` shows: file, ``-wal`` and free bytes
from the file header and the file system, and the bytes of the log and the
series tables from SQLite's ``dbstat`` (restricted to those tables, so the
cost is theirs, not the file's).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

# Free pages below StorageOptions.reclaim_min_bytes, or below this share of the file,
# are left for SQLite to reuse: vacuuming a file that is about to grow again costs I/O
# for nothing.
RECLAIM_MIN_SHARE = 0.02
# Pages moved per incremental_vacuum step: ~16 MiB, tens of milliseconds.
RECLAIM_STEP_PAGES = 4096

LOG_TABLES = ("wal",)
SERIES_TABLES = ("series", "label_pairs")


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Where a database's bytes are (``tsagent_storage_*_bytes`` in ``/metrics``).

    ``file_bytes`` is the database's own size (pages times page size, including
    pages not yet checkpointed from the ``-wal``); ``wal_file_bytes`` is the
    ``-wal`` file beside it; both are on disk at the same time.
    """

    file_bytes: int = 0
    wal_file_bytes: int = 0  # SQLite's -wal journal, not tsagent's log
    free_bytes: int = 0
    log_bytes: int = 0
    series_bytes: int = 0

    @property
    def free_share(self) -> float:
        return self.free_bytes / self.file_bytes if self.file_bytes else 0.0


def _pages(conn: sqlite3.Connection) -> tuple[int, int, int]:
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    count = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return page_size, count, free


def _table_bytes(conn: sqlite3.Connection, tables: tuple[str, ...]) -> int:
    """Pages of these tables and their indexes, as ``dbstat`` counts them."""
    names = list(tables)
    names += [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name IN"
            f" ({', '.join('?' * len(tables))})",
            tables,
        )
    ]
    total = 0
    for name in names:
        try:
            row = conn.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ? AND aggregate = 1",
                (name,),
            ).fetchone()
        except sqlite3.OperationalError:
            return -1  # SQLite built without dbstat: unknown, not zero
        total += int(row[0])
    return total


def measure(conn: sqlite3.Connection, path: Path) -> DiskUsage:
    """Current usage (any connection; a reader's snapshot is fine)."""
    page_size, count, free = _pages(conn)
    try:
        wal_file = os.stat(f"{path}-wal").st_size
    except OSError:
        wal_file = 0
    return DiskUsage(
        # The file as SQLite sees it: pages still in the -wal count where they will land.
        file_bytes=page_size * count,
        wal_file_bytes=wal_file,
        free_bytes=free * page_size,
        log_bytes=_table_bytes(conn, LOG_TABLES),
        series_bytes=_table_bytes(conn, SERIES_TABLES),
    )


def worth_reclaiming(conn: sqlite3.Connection, min_bytes: int) -> bool:
    page_size, count, free = _pages(conn)
    if not free or int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
        return False  # nothing free, or created before INCREMENTAL (only VACUUM helps)
    if min_bytes <= 0:
        return True
    return free * page_size >= min_bytes and free >= RECLAIM_MIN_SHARE * count


def reclaim_step(conn: sqlite3.Connection, pages: int = RECLAIM_STEP_PAGES) -> int:
    """Hand up to ``pages`` free pages back to the file system; returns those still free.

    Runs on the SQL thread outside any transaction (``incremental_vacuum`` is
    its own write transaction). ``executescript`` because the sqlite3 module
    steps a statement without result columns only once.
    """
    conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def checkpoint(conn: sqlite3.Connection) -> None:
    """A passive checkpoint: never waits for readers; a complete one resets the ``-wal``."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def truncate_wal(conn: sqlite3.Connection) -> None:
    """At shutdown, with readers gone: fold the ``-wal`` into the file and cut it to zero."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
