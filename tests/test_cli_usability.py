"""Rough edges a first-time user hit: no tracebacks, one problem a line, readable times."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import tsagent_cmd


def test_run_with_a_bad_config_logs_one_line_per_problem(
    tmp_path: Path, subprocess_env: dict[str, Any]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  block_size: -1\n  retension: 5d\n")
    proc = subprocess.run(
        [*tsagent_cmd(), "run", "-c", str(bad), "--data-dir", str(tmp_path)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 2, proc.stderr
    assert "\\n" not in proc.stderr
    assert "storage.block_size: expected a positive number" in lines[0]
    assert "storage.retension: unknown key (did you mean 'retention'?)" in lines[1]
    assert all(str(bad) in line for line in lines)


def test_plugins_json_into_a_closed_pipe_is_quiet(subprocess_env: dict[str, Any]) -> None:
    """``tsagent plugins --json | head -1``: the reader leaves early."""
    proc = subprocess.Popen(
        [*tsagent_cmd(), "plugins", "--json"],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # Closed before tsagent has written anything (it is still importing): its write fails
    # with EPIPE, as when `head` has already exited.
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err  # 128 + SIGPIPE, what a shell would show
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_hash_password_without_input_is_an_error_not_a_traceback(
    subprocess_env: dict[str, Any],
) -> None:
    for args in (["hash-password"], ["hash-password", "--password-stdin"]):
        proc = subprocess.run(
            [*tsagent_cmd(), *args],
            env=subprocess_env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # no controlling terminal for getpass to fall back to
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "password" in proc.stderr


def test_rollup_once_prints_dates_not_epoch_milliseconds(
    tmp_path: Path, subprocess_env: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    # A few samples from 2023 through the CLI, so every rollup has something to do.
    gen = [
        *tsagent_cmd(),
        "generate",
        "--metric",
        "demo",
        "--duration",
        "7200",
        "--interval",
        "60",
        "--start",
        "2023-11-14T00:00:00Z",
        "--data-dir",
        str(data),
    ]
    done = subprocess.run(gen, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cmd = [*tsagent_cmd(), "rollup", "--once", "--data-dir", str(data)]
    human = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0, human.stderr
    lines = [line.strip() for line in human.stdout.splitlines()[1:]]
    assert [line.split()[0] for line in lines] == ["1h"]  # the default resolutions
    # The watermarks --json gives as epoch milliseconds, written as UTC dates (a second
    # pass may move them on by a bucket if the clock crossed a boundary meanwhile).
    shown = [datetime.strptime(line.split()[-1], "%Y-%m-%dT%H:%M:%S%z") for line in lines]
    raw = subprocess.run([*cmd, "--json"], env=subprocess_env, capture_output=True, text=True)
    done_to = json.loads(raw.stdout)["done_to"]
    for when, ms in zip(shown, (3_600_000,), strict=True):
        later = datetime.fromtimestamp(done_to[str(ms)] / 1000, UTC)
        assert timedelta(0) <= later - when <= timedelta(milliseconds=ms), human.stdout


def test_offline_commands_name_the_running_daemon_instead_of_a_traceback(
    tmp_path: Path, subprocess_env: dict[str, Any]
) -> None:
    """Every offline command opens the store through agent.cli.setup and says who holds it."""
    from agent.configured_store import DB_FILE
    from agent.storage.lock import DatabaseLock

    data = tmp_path / "data"
    data.mkdir()
    csv = tmp_path / "in.csv"
    csv.write_text("1700000000,1\n")
    lock = DatabaseLock(data / DB_FILE)
    lock.acquire()  # as a running daemon does
    try:
        common = ["--data-dir", str(data)]
        expected = {
            ("retention", "--once", *common): (1, "retention failed"),
            ("rollup", "--once", *common): (1, "rollup failed"),
            ("export-csv", *common): (2, "/api/v1/export/csv?"),
            ("import-csv", *common, "--format", "1:time:unix_s,2:metric:x", str(csv)): (
                2,
                "/api/v1/import/csv?",
            ),
            ("generate", "--metric", "m", "--duration", "60", *common): (2, "/api/v1/write"),
        }
        for args, (code, text) in expected.items():
            proc = subprocess.run(
                [*tsagent_cmd(), *args],
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == code, (args, proc.stderr)
            assert "Traceback" not in proc.stderr, proc.stderr
            assert "in use by another process" in proc.stderr, proc.stderr
            assert text in proc.stderr, proc.stderr
    finally:
        lock.release()
