"""systemd notify protocol, received on a datagram socket the test creates."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.sdnotify import monotonic_usec, notify


def test_ready_reaches_a_real_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notify("READY=1", "STATUS=ok", env={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_abstract_namespace_socket() -> None:
    name = f"tsagent-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_no_socket_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False


def test_monotonic_usec_format() -> None:
    key, _, value = monotonic_usec().partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0


def test_unit_file_is_notify_and_hardened() -> None:
    import configparser

    unit = Path(__file__).parent.parent / "systemd" / "tsagent.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].split()[1] == "run"
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "tsagent",
    }.items():
        assert service[key] == value, key


def test_unit_file_passes_systemd_analyze() -> None:
    import shutil
    import subprocess

    import pytest

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = Path(__file__).parent.parent / "systemd" / "tsagent.service"
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        # the binary is installed by the user, not present on a test machine
        if line.strip() and "is not executable" not in line
    ]
    assert problems == []
