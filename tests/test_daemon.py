"""The daemon as users run it: a real process, real signals, systemd notify, TLS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.test_security_unit import make_cert

CLI = [sys.executable, "-m", "agent.cli"]


class Daemon:
    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.sock_path = str(tmp_path / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.sock_path)
        full_env = {**os.environ, "NOTIFY_SOCKET": self.sock_path, **(env or {})}
        self.log = open(tmp_path / "daemon.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen([*CLI, *args], env=full_env, stdout=self.log, stderr=self.log)

    def wait_notify(self, expected: str) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + 30
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    break  # it exited: no point waiting
                continue
            got.append(msg)
            if expected in msg.split("\n"):
                return got
        raise AssertionError(f"no {expected} after {got}; log:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.notify.close()
            self.log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(tmp_path, args, env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.notify.close()
        d.log.close()


def get(url: str, **kw: Any) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10, **kw) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_run_ready_reload_and_sigterm(daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("log:\n  level: info\n")
    d = daemon(
        ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")]
    )
    assert "READY=1" in d.wait_notify("READY=1")[-1]
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and metric(body, "tsagent_build_info") == 1
    assert (tmp_path / "d" / "tsagent.db").exists()

    # a valid new config is applied on SIGHUP
    cfg.write_text("log:\n  level: debug\n  format: json\n")
    d.proc.send_signal(signal.SIGHUP)
    msgs = d.wait_notify("READY=1")
    assert msgs[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    body = get(f"http://127.0.0.1:{port}/metrics")[1]
    assert metric(body, "tsagent_config_reloads_total", result="success") == 1

    # an invalid one is refused and the old one keeps running
    cfg.write_text("log:\n  level: loud\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_notify("READY=1")
    body = get(f"http://127.0.0.1:{port}/metrics")[1]
    assert metric(body, "tsagent_config_reloads_total", result="failure") == 1
    assert "config reload failed, keeping the running config" in d.output()
    assert "log.level: expected one of" in d.output()

    d.proc.send_signal(signal.SIGTERM)
    d.wait_notify("STOPPING=1")
    assert d.proc.wait(30) == 0
    assert '"msg": "stopped"' in d.output()  # JSON logs after the reload


@pytest.mark.parametrize("choice", ["asyncio", "auto"])
def test_event_loop_choice(daemon: Any, tmp_path: Path, choice: str) -> None:
    """``server.event_loop``: the standard library's loop, or uvloop (a dependency)."""
    port = free_port()
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text(f"log:\n  level: info\nserver:\n  event_loop: {choice}\n")
    d = daemon(
        ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")]
    )
    d.wait_notify("READY=1")
    status, body = get(f"http://127.0.0.1:{port}/api/v1/query?query=vector(1)")
    assert status == 200 and '"value":[' in body
    want = "asyncio" if choice == "asyncio" else "uvloop"
    assert f"event_loop={want}" in d.output()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0


def test_loop_factory_and_peek(tmp_path: Path) -> None:
    from agent.config import peek_event_loop
    from agent.daemon import loop_factory

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is not None and loop_factory("uvloop") is not None
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  event_loop: asyncio\n")
    assert peek_event_loop(cfg) == "asyncio"
    assert peek_event_loop(cfg, {"server.event_loop": "uvloop"}) == "uvloop"
    cfg.write_text("server: [not, a, mapping\n")
    assert peek_event_loop(cfg) == "auto"  # the full validation reports it
    assert peek_event_loop(None) == "auto"


def test_sigint_is_graceful_too(daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    d = daemon(["run", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")])
    d.wait_notify("READY=1")
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(30) == 0
    assert "msg=stopped" in d.output()


def test_no_arguments_uses_embedded_defaults(daemon: Any, tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9201)) == 0:
            pytest.skip("port 9201 (the default) is taken on this machine")
    d = daemon(["run"], env={"XDG_DATA_HOME": str(tmp_path / "xdg"), "STATE_DIRECTORY": ""})
    d.wait_notify("READY=1")
    status, body = get("http://127.0.0.1:9201/metrics")
    assert status == 200 and "tsagent_build_info" in body
    assert (tmp_path / "xdg" / "tsagent" / "tsagent.db").exists()
    assert d.stop() == 0


def test_contrib_plugin_runs_in_the_daemon(daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  heartbeat:\n    enabled: true\n    interval: 1s\n    job: ci\n")
    d = daemon(
        ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)]
    )
    d.wait_notify("READY=1")
    body = get(f"http://127.0.0.1:{port}/metrics")[1]
    assert metric(body, "tsagent_samples_ingested_total", source="heartbeat") >= 1  # type: ignore[operator]
    assert d.stop() == 0


def test_required_broken_plugin_refuses_to_start(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "tsagent_broken-1.0.dist-info").mkdir(parents=True)
    (site / "tsagent_broken.py").write_text("raise ImportError('missing dependency foo')\n")
    (site / "tsagent_broken-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tsagent-broken\nVersion: 1.0\n"
    )
    (site / "tsagent_broken-1.0.dist-info" / "entry_points.txt").write_text(
        "[tsagent]\nbroken = tsagent_broken\n"
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins:\n  enabled: [broken]\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)]
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "plugin 'broken' failed at load: ImportError: missing dependency foo" in proc.stderr
    assert not (tmp_path / "tsagent.db").exists()
    # not required: the daemon starts and reports it
    cfg.write_text("")
    out = subprocess.run([*CLI, "check-config", str(cfg)], env=env, capture_output=True, text=True)
    assert out.returncode == 0


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage:\n  block_size: -1\n  retension: 5d\n")
    proc = subprocess.run([*CLI, "check-config", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{bad}: storage.block_size: expected a positive number, found integer -1" in proc.stderr
    assert f"{bad}: storage.retension: unknown key (did you mean 'retention'?)" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text("storage:\n  retention: 30d\n")
    proc = subprocess.run([*CLI, "check-config", str(good)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bad_listen_flag_is_rejected() -> None:
    proc = subprocess.run([*CLI, "run", "--listen", "nowhere"], capture_output=True, text=True)
    assert proc.returncode == 2 and "expected HOST:PORT" in proc.stderr


def test_tls_with_client_certificates(daemon: Any, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    ccert, ckey = make_cert(tmp_path, "client")
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(
        f"server:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
        f"    client_ca_file: {ccert}\n"
    )
    port = free_port()
    d = daemon(
        ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)]
    )
    d.wait_notify("READY=1")
    url = f"https://127.0.0.1:{port}/-/healthy"
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.load_cert_chain(str(ccert), str(ckey))
    assert get(url, context=ctx)[0] == 200
    # no client certificate: the handshake fails
    bare = ssl.create_default_context(cafile=str(cert))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        get(url, context=bare)
    # TLS 1.1 is refused
    old = ssl.create_default_context(cafile=str(cert))
    old.load_cert_chain(str(ccert), str(ckey))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        get(url, context=old)
    # plain HTTP gets nothing useful
    with pytest.raises((urllib.error.URLError, ConnectionResetError, OSError)):
        get(f"http://127.0.0.1:{port}/-/healthy")
    assert d.stop() == 0


def test_shutdown_is_prompt(daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    d = daemon(["run", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)])
    d.wait_notify("READY=1")
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 20
