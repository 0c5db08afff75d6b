"""``tsagent audit verify|log`` as a real subprocess, next to a live store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from agent.configured_store import DB_FILE
from agent.storage import Store
from tests.conftest import open_store, tsagent_cmd

T0 = 1_700_000_000_000


def run_cli(env: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tsagent_cmd(), "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def fill(store: Store, batches: int) -> None:
    [sid] = await store.get_or_create_series([(("__name__", "m"),)])
    for i in range(batches):
        await store.append([sid], [T0 + i], [float(i)], client=f"client-{i}")


async def test_verify_ok_while_the_store_is_open(
    data_dir: Path, subprocess_env: dict[str, Any]
) -> None:
    store = await open_store(data_dir)
    try:
        await fill(store, 4)
        # The writer still holds the database: verify must only read.
        proc = await asyncio.to_thread(
            run_cli, subprocess_env, "verify", "--data-dir", str(data_dir)
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "audit chain OK: 4 rows"
        await fill(store, 1)
        proc = await asyncio.to_thread(
            run_cli, subprocess_env, "log", "--limit", "2", "--json", "--data-dir", str(data_dir)
        )
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [(r["id"], r["op"], r["user"], r["sample_count"]) for r in rows] == [
            (4, "append", "client-3", 1),
            (5, "append", "client-0", 0),  # T0 again: out of order, nothing stored
        ]
        assert rows[1]["detail"]["rejected"] == 1
    finally:
        await store.close()


async def test_verify_names_the_first_broken_row(
    data_dir: Path, tmp_path: Path, subprocess_env: dict[str, Any]
) -> None:
    store = await open_store(data_dir)
    await fill(store, 5)
    await store.close()
    conn = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET user = 'mallory' WHERE id = 3")
    conn.close()
    # Resolved through a config file exactly as `tsagent run -c` would.
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text(f"data_dir: {data_dir}\n")
    proc = run_cli(subprocess_env, "verify", "-c", str(cfg))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BROKEN at row 3" in proc.stdout
    assert "does not match its contents" in proc.stdout
    proc = run_cli(subprocess_env, "log", "-c", str(cfg))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and "user=mallory" in lines[2] and lines[0].split()[0] == "1"


def test_verify_without_database_or_audit_table(
    data_dir: Path, subprocess_env: dict[str, Any]
) -> None:
    proc = run_cli(subprocess_env, "verify", "--data-dir", str(data_dir))
    assert proc.returncode == 2 and "no database" in proc.stderr
    assert not (data_dir / DB_FILE).exists()  # read-only: nothing was created
    sqlite3.connect(data_dir / DB_FILE).close()
    proc = run_cli(subprocess_env, "verify", "--data-dir", str(data_dir))
    assert proc.returncode == 2 and "no audit table" in proc.stderr
