"""Plugin discovery through entry points, failure isolation, and the hook contract."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from agent import hookspecs
from agent.plugins import PluginError, get_plugin_manager

BROKEN_DIST = """\
Metadata-Version: 2.1
Name: tsagent-broken
Version: 9.9.9
"""


@pytest.fixture
def broken_plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution whose entry point raises on import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "tsagent_broken.py").write_text("raise RuntimeError('boom at import')\n")
    info = site / "tsagent_broken-9.9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(BROKEN_DIST)
    (info / "entry_points.txt").write_text("[tsagent]\nbroken = tsagent_broken\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtin_and_contrib_plugins_found_through_entry_points() -> None:
    host = get_plugin_manager()
    assert host.loaded["codecs"].builtin
    beat = host.loaded["heartbeat"]
    assert not beat.builtin
    assert beat.distribution == "tsagent-heartbeat"
    assert beat.version == "0.1.0"
    assert host.failures == []


def test_broken_plugin_is_skipped_and_named(broken_plugin_path: Path) -> None:
    host = get_plugin_manager()
    assert "broken" not in host.loaded
    assert [(f.name, f.stage) for f in host.failures] == [("broken", "load")]
    assert "boom at import" in host.failures[0].error
    assert "codecs" in host.loaded  # the others still load


def test_broken_plugin_required_refuses(broken_plugin_path: Path) -> None:
    with pytest.raises(PluginError) as info:
        get_plugin_manager(enabled=["broken"])
    assert "plugin 'broken' failed at load: RuntimeError: boom at import" in str(info.value)


def test_disabled_plugin_is_not_imported(broken_plugin_path: Path) -> None:
    host = get_plugin_manager(disabled=["broken"])
    assert host.failures == []
    assert "broken" in host.skipped


def test_required_plugin_missing() -> None:
    with pytest.raises(PluginError, match="'nosuch' failed at load: no such plugin"):
        get_plugin_manager(enabled=["nosuch"])


def test_cli_plugins_lists_versions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "plugins"], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "built-in" in lines["codecs"]
    assert "0.1.0" in lines["heartbeat"] and "third-party" in lines["heartbeat"]


def test_cli_plugins_reports_broken(broken_plugin_path: Path) -> None:
    env_path = f"{broken_plugin_path}"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "plugins"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "FAILED plugin 'broken' failed at load: RuntimeError: boom at import" in proc.stderr


def test_every_hookspec_is_documented() -> None:
    specs = [
        (name, fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "tsagent_spec")
    ]
    assert len(specs) >= 10
    for name, fn in specs:
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc or "Run once" in doc, f"{name}: say when it is called"
        assert ":return:" in doc or "May be" in doc, f"{name}: say what it returns"


def test_every_hook_has_a_test() -> None:
    """datasette's habit: a ``test_hook_<name>`` for every hook."""
    here = Path(__file__).parent
    source = "\n".join(p.read_text() for p in here.glob("test_*.py"))
    specs = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "tsagent_spec")
    ]
    missing = [n for n in specs if f"def test_hook_{n}" not in source]
    assert missing == []
