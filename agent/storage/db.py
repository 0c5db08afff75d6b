"""SQLite connections and schema migrations.

Every connection is opened in autocommit mode (``isolation_level=None``) so the
engine states its transactions explicitly: ``BEGIN IMMEDIATE`` takes the write
lock up front, which turns a would-be mid-transaction ``SQLITE_BUSY`` into a
wait at the start, where nothing has to be undone.

Migrations follow sqlite-utils/sqlite-migrate: named functions in named sets,
applied in name order, each in its own transaction and recorded in
``_migrations``, so a crash between two migrations leaves a database that the
next start simply continues migrating.  :data:`MIGRATIONS` is the storage
engine's set (series, log, segments, audit, versions, cardinality limits);
other subsystems own theirs (see :class:`Migrations`).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bytes of SQLite's -wal journal kept after a checkpoint resets it.
JOURNAL_SIZE_LIMIT = 8 << 20

MigrationFn = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    name: str
    fn: MigrationFn


class Migrations:
    """An ordered, named set of schema changes, one per subsystem.

    The storage engine's own set is applied when the store opens; every other
    subsystem (alert state, notification outbox, export log, rollups) owns a
    set and applies it when it attaches to the store (:meth:`Store.attach`),
    so no table depends on which modules happened to be imported.
    ``formerly`` names the set a migration was recorded under before it had a
    set of its own, so existing databases do not run it twice.
    """

    def __init__(self, name: str, *, formerly: str | None = None) -> None:
        self.name = name
        self.formerly = formerly
        self._items: list[Migration] = []

    def __call__(self, *, name: str | None = None) -> Callable[[MigrationFn], MigrationFn]:
        def register(fn: MigrationFn) -> MigrationFn:
            mname = name or fn.__name__
            if any(m.name == mname for m in self._items):
                raise ValueError(f"duplicate migration name {mname!r}")
            self._items.append(Migration(mname, fn))
            return fn

        return register

    def __iter__(self) -> Iterator[Migration]:
        return iter(self._items)

    def pending(self, conn: sqlite3.Connection) -> list[Migration]:
        """What is not applied yet, in name order (names carry their order: m001, m002...)."""
        _ensure_migrations_table(conn)
        done = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM _migrations WHERE migration_set IN (?, ?)",
                (self.name, self.formerly or self.name),
            )
        }
        return sorted((m for m in self._items if m.name not in done), key=lambda m: m.name)

    def apply(self, conn: sqlite3.Connection) -> list[str]:
        """Apply what is missing; returns the names applied, for logging."""
        applied = []
        for m in self.pending(conn):
            with transaction(conn):
                # Re-check under the write lock: another process may have won the race.
                row = conn.execute(
                    "SELECT 1 FROM _migrations WHERE migration_set IN (?, ?) AND name = ?",
                    (self.name, self.formerly or self.name, m.name),
                ).fetchone()
                if row is not None:
                    continue
                m.fn(conn)
                conn.execute(
                    "INSERT INTO _migrations(migration_set, name, applied_at) VALUES (?, ?, ?)",
                    (self.name, m.name, time.time()),
                )
            applied.append(m.name)
        return applied


def _ensure_migrations_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        " migration_set TEXT NOT NULL, name TEXT NOT NULL, applied_at REAL NOT NULL,"
        " PRIMARY KEY (migration_set, name))"
    )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


MIGRATIONS = Migrations("tsagent.storage")
# Where subsystems' migrations were recorded before each had a set of its own.
LEGACY_SET = MIGRATIONS.name


@MIGRATIONS()
def m001_series(conn: sqlite3.Connection) -> None:
    # flushed_seq: log sequence up to which this series' samples live in segments;
    # max_t/last_bits: newest sample ever stored, so out-of-order and duplicate
    # checks still work after the head was flushed and the process restarted.
    conn.execute(
        "CREATE TABLE series ("
        " id INTEGER PRIMARY KEY,"
        " labels TEXT NOT NULL UNIQUE,"
        " created_ms INTEGER NOT NULL,"
        " flushed_seq INTEGER NOT NULL DEFAULT 0,"
        " max_t INTEGER,"
        " last_bits INTEGER)"
    )


@MIGRATIONS()
def m002_wal(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE wal ("
        " seq INTEGER PRIMARY KEY,"
        " created_ms INTEGER NOT NULL,"
        " count INTEGER NOT NULL,"
        " data BLOB NOT NULL)"
    )


@MIGRATIONS()
def m003_segments(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE segments ("
        " id INTEGER PRIMARY KEY,"
        " series_id INTEGER NOT NULL,"
        " min_t INTEGER NOT NULL,"
        " max_t INTEGER NOT NULL,"
        " count INTEGER NOT NULL,"
        " codec TEXT NOT NULL,"
        " data BLOB NOT NULL)"
    )
    # Range reads ask "series = ? AND max_t >= start AND min_t <= end": the index
    # answers the first two and covers the third without touching the table.
    conn.execute("CREATE INDEX segments_by_series ON segments(series_id, max_t, min_t)")


@MIGRATIONS()
def m006_series_label_pairs(conn: sqlite3.Connection) -> None:
    """Label sets as lists of pair ids instead of JSON text with a UNIQUE index.

    The old table stored every label set twice (the row and its UNIQUE index),
    about 300 bytes for a node-exporter-like series. Uniqueness is the
    in-memory index's job (one writing process per database, see
    ``agent.storage.lock``), so the row keeps only little-endian uint32 ids
    into ``label_pairs``, where each distinct name/value pair is stored once.
    """
    conn.execute(
        "CREATE TABLE label_pairs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE series_v2 ("
        " id INTEGER PRIMARY KEY,"
        " labels BLOB NOT NULL,"
        " created_ms INTEGER NOT NULL,"
        " flushed_seq INTEGER NOT NULL DEFAULT 0,"
        " max_t INTEGER,"
        " last_bits INTEGER)"
    )
    pair_ids: dict[tuple[str, str], int] = {}
    pair_rows: list[tuple[int, str, str]] = []
    rows = []
    for sid, text, created, fseq, max_t, last_bits in conn.execute(
        "SELECT id, labels, created_ms, flushed_seq, max_t, last_bits FROM series ORDER BY id"
    ):
        ids = array("I")
        for name, value in json.loads(text):
            pair = (str(name), str(value))
            pid = pair_ids.get(pair)
            if pid is None:
                pid = pair_ids[pair] = len(pair_ids) + 1
                pair_rows.append((pid, pair[0], pair[1]))
            ids.append(pid)
        if sys.byteorder == "big":
            ids.byteswap()
        rows.append((sid, ids.tobytes(), created, fseq, max_t, last_bits))
        if len(rows) >= 10_000:
            _copy_series(conn, pair_rows, rows)
    _copy_series(conn, pair_rows, rows)
    conn.execute("DROP TABLE series")
    conn.execute("ALTER TABLE series_v2 RENAME TO series")


def _copy_series(conn: sqlite3.Connection, pair_rows: list[Any], rows: list[Any]) -> None:
    conn.executemany("INSERT INTO label_pairs(id, name, value) VALUES (?, ?, ?)", pair_rows)
    conn.executemany("INSERT INTO series_v2 VALUES (?, ?, ?, ?, ?, ?)", rows)
    pair_rows.clear()
    rows.clear()


def connect(
    path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False
) -> sqlite3.Connection:
    """Open one connection with the engine's PRAGMAs.

    ``check_same_thread=False`` because connections are created on the event
    loop and then used from exactly one worker thread each; the engine, not
    the sqlite3 module, guarantees that single-thread use.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        # Must precede the first table of a new database to take effect; on an existing
        # one it only changes what a later VACUUM would do (see agent.storage.retention).
        # INCREMENTAL lets retention hand freed pages back with ``incremental_vacuum``.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise sqlite3.OperationalError(f"could not enable WAL journal (got {mode!r})")
        # A complete checkpoint resets the -wal; this cuts the file back when it does,
        # so one large flush does not leave a large -wal behind for good.
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        # Some builds (Debian's among them) default to overwriting deleted content with
        # zeros: every trimmed log page would be written twice. Nothing secret lives here.
        conn.execute("PRAGMA secure_delete = OFF")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -16384")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA mmap_size = 268435456")
    return conn
