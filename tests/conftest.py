"""Shared fixtures: configs in temporary data directories, apps, real subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.daemon import reload_config
from agent.plugins import PluginHost, get_plugin_manager
from agent.root import Agent

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
