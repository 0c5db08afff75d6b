"""``tsagent audit verify|log``: inspect the audit trail without the daemon's help.

The database is opened read-only (``mode=ro``), never through ``Store``: no
migrations, no lock, no writes, so both commands run safely next to a live
daemon.  On a WAL database every statement reads one consistent snapshot, so
a chain being extended meanwhile verifies up to the rows that existed when
the read began.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_UNUSABLE = 2


def add_audit_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    audit = sub.add_parser("audit", help="verify or show the audit trail (read-only)")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = asub.add_parser("verify", help="check the hash chain; exit 1 at the first broken row")
    add_common(verify)
    show = asub.add_parser("log", help="print the most recent audit rows, oldest first")
    add_common(show)
    show.add_argument("--limit", type=int, default=20, help="how many rows (default 20)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")


def resolve_db(config_path: str | None, overrides: dict[str, Any]) -> Path:
    """The database ``tsagent run`` with the same ``-c``/``--data-dir`` would use."""
    from agent.configured_store import DB_FILE
    from agent.daemon import load

    config, _ = load(config_path, overrides)
    return config.data_dir / DB_FILE


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30.0
    )
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = ON")
    has_audit = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
    ).fetchone()
    if has_audit is None:
        conn.close()
        raise LookupError(
            f"{path} has no audit table (created by an older tsagent; the next start adds it)"
        )
    return conn


def run_audit(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from agent.config import ConfigError
    from agent.plugins import PluginError
    from agent.storage import audit

    try:
        path = resolve_db(args.config, overrides)
        conn = open_readonly(path)
    except (ConfigError, PluginError, FileNotFoundError, LookupError, sqlite3.Error) as exc:
        print(f"tsagent audit: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        if args.audit_command == "verify":
            res = audit.verify_chain(conn)
            if res.ok:
                print(f"audit chain OK: {res.rows_checked} rows")
                if res.rows_checked:
                    last_id, last_hash = audit.chain_head(conn)
                    print(f"newest row {last_id}, hash {last_hash.hex()}")
                return EXIT_OK
            print(
                f"audit chain BROKEN at row {res.first_broken_id}: {res.reason}"
                f" ({res.rows_checked} rows before it verified)"
            )
            return EXIT_BROKEN
        if args.limit < 1:
            print("tsagent audit log: --limit must be >= 1", file=sys.stderr)
            return EXIT_UNUSABLE
        for row in audit.recent_rows(conn, args.limit):
            print(_format(row, as_json=args.json))
        return EXIT_OK
    except sqlite3.Error as exc:
        print(f"tsagent audit: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        conn.close()


def _format(row: Any, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {
                "id": row.id,
                "at_ms": row.at_ms,
                "op": row.op,
                "source": row.source,
                "user": row.user,
                "sample_count": row.sample_count,
                "series_count": row.series_count,
                "min_t": row.min_t,
                "max_t": row.max_t,
                "content_hash": row.content_hash.hex(),
                "detail": row.detail,
                "hash": row.hash.hex(),
            },
            sort_keys=True,
        )
    at = dt.datetime.fromtimestamp(row.at_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    span = "-" if row.min_t is None else f"{row.min_t}..{row.max_t}"
    detail = "" if not row.detail else " " + json.dumps(row.detail, sort_keys=True)
    return (
        f"{row.id:>6} {at} {row.op:<9} source={row.source} user={row.user or '-'}"
        f" samples={row.sample_count} series={row.series_count} t={span}"
        f" hash={row.hash.hex()[:16]}{detail}"
    )
