"""Shared fixtures: configs in temporary data directories, stores, apps, real subprocesses.

Also the one way a test waits for something to happen: :func:`wait_until`
(or :func:`wait_until_sync` in a test without an event loop) polls a check
and fails the test, naming what it waited for, when the time is up. A
polling loop that falls through silently after its last try is a test that
passes without having seen the thing happen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.daemon import reload_config
from agent.plugins import PluginHost, get_plugin_manager
from agent.root import Agent
from agent.storage import StorageOptions, Store

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# --- waiting ----------------------------------------------------------------------------------


async def wait_until(
    what: str,
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy, and return that.

    Fails the test with ``timed out after ... waiting for <what>`` (and
    ``detail()``, e.g. a process log) when ``timeout`` seconds pass first;
    never returns without the condition.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


def wait_until_sync(
    what: str,
    check: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> Any:
    """:func:`wait_until` for a blocking test (subprocess tests): it blocks the caller."""
    waiting = wait_until(what, check, timeout, interval, detail)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(waiting)
    # Called from a coroutine: its loop is blocked for the while, as with time.sleep.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, waiting).result()


# --- stores ------------------------------------------------------------------------------------


async def open_store(
    path: Path, codec: str | None = None, *, all_codecs: bool = False, **opts: Any
) -> Store:
    """A store for a test, with no background flush or retention pass unless asked for.

    ``path`` is a data directory (the database is ``path/tsagent.db``) or a
    ``*.db`` file. Codecs: the bit-exact test codec, or every codec plugin
    with ``all_codecs`` or a ``codec`` (which becomes the default codec).
    """
    from tests.storage_helpers.raw_codec import codecs

    opts.setdefault("flush_interval_s", 3600.0)
    opts.setdefault("retention_interval_s", 3600.0)
    if codec is not None:
        opts["default_codec"] = codec
    db = path if path.suffix == ".db" else path / "tsagent.db"
    if codec is not None or all_codecs:
        from plugins.codecs import all_codecs as plugin_codecs

        return await Store.open(db, StorageOptions(**opts), {c.name: c for c in plugin_codecs()})
    return await Store.open(db, StorageOptions(**opts), codecs())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open test store in ``tmp_path`` (see :func:`open_store`), closed afterwards."""
    s = await open_store(tmp_path)
    yield s
    await s.close()


# --- configs and processes ---------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def make_config(data_dir: Path, tmp_path: Path) -> Callable[..., tuple[Config, PluginHost]]:
    """Write YAML to a file and load it the way the daemon does."""

    def factory(
        text: str = "", *, extra_plugins: list[tuple[str, object]] | None = None
    ) -> tuple[Config, PluginHost]:
        path = tmp_path / "tsagent.yaml"
        path.write_text(text)
        host = get_plugin_manager(extra_plugins=extra_plugins or [])
        return reload_config(path, host, {"data_dir": str(data_dir)}), host

    return factory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tsagent_cmd() -> list[str]:
    return [sys.executable, "-m", "agent.cli"]


@pytest.fixture
def subprocess_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    yield env


@pytest.fixture(scope="session")
def production_install() -> Iterator[Path]:
    """``contrib/install.sh`` into a scratch root that ``nobody`` can read (deployment tests).

    The venv is built from the system's Python when it is recent enough, as on a
    production machine: a Python under /root (pyenv) would be unreadable to the
    unprivileged user the service runs as.
    """
    from tests.deploy_helpers import install_python, open_tree

    root = Path(tempfile.mkdtemp(prefix="tsagent-install-"))
    open_tree(root)
    try:
        proc = subprocess.run(
            [
                str(ROOT / "contrib" / "install.sh"),
                "--prefix",
                str(root / "opt" / "tsagent"),
                "--bin-dir",
                str(root / "usr" / "local" / "bin"),
                "--unit-dir",
                str(root / "etc" / "systemd" / "system"),
                "--config-dir",
                str(root / "etc" / "tsagent"),
                "--python",
                install_python(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "tsagent 0." in proc.stdout and "systemctl enable --now tsagent" in proc.stdout
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def agent(store: Any) -> AsyncIterator[Agent]:
    """The composition root around the test module's ``store`` fixture (closed after the test).

    A module that wants the Python API (``agent.query``, ``agent.export_csv``,
    ...) defines ``store`` as usual and asks for ``agent``; the store stays
    the module's to close.
    """
    root = Agent(store)
    try:
        yield root
    finally:
        await root.close()


def range_data_of(times: list[list[int]], values: list[list[float]] | None = None) -> Any:
    """A ``RangeData``: series ``i`` holds ``times[i]`` (sorted) and ``values[i]`` (or zeros)."""
    import numpy as np

    from agent.query.blocks import RangeData

    ts = [sorted(t) for t in times]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in ts])]).astype(np.int64)
    flat_v = [x for v in values for x in v] if values is not None else [0.0] * int(offsets[-1])
    return RangeData(
        [(("i", str(i)),) for i in range(len(ts))],
        np.zeros(len(ts), dtype=bool),
        offsets,
        np.array([x for t in ts for x in t], dtype=np.int64),
        np.array(flat_v, dtype=np.float64),
    )
