"""Every ``<!-- run -->`` example of docs/protocols.md, as written, against a real daemon.

The examples address ``localhost:9201`` (the default listen address) and
``localhost:1883`` (a broker); the test starts ``tsagent run`` on a free
port with its defaults (and mosquitto, for the MQTT example, with the
page's own configuration block), rewrites only those addresses, runs each
block (``sh`` with bash, ``python`` with this interpreter) and checks that
every line of the ``output`` block after it appears in what it printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_prometheus import Proc

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
BLOCK = re.compile(
    r"<!-- (run|config)(?:: (\w+))? -->\n```(\w+)\n(.*?)```\n(?:```output\n(.*?)```\n)?", re.S
)


def blocks() -> list[tuple[str, str, str, str, str]]:
    """(kind, tag, language, code, expected output) of every marked block, in order."""
    return [(m[1], m[2] or "", m[3], m[4], m[5] or "") for m in BLOCK.finditer(DOC.read_text())]


def daemon(tmp: Path, config: str = "") -> tuple[Proc, str]:
    port = free_port()
    args = [sys.executable, "-m", "agent.cli", "run", "--listen", f"127.0.0.1:{port}"]
    args += ["--data-dir", str(tmp / "data")]
    if config:
        (tmp / "tsagent.yaml").write_text(config)
        args += ["-c", str(tmp / "tsagent.yaml")]
    base = f"http://127.0.0.1:{port}"
    return Proc("tsagent", args, base + "/-/ready", tmp / "tsagent.log").start(), base


def run_block(lang: str, code: str, tmp: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if lang == "sh":
        cmd = ["bash", "-eo", "pipefail", "-c", code]
    else:
        script = tmp / "example.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def check(stdout: str, expected: str, rewrite: dict[str, str]) -> None:
    for line in expected.strip().splitlines():
        for old, new in rewrite.items():
            line = line.replace(old, new)
        assert line in stdout, f"{line!r} not in:\n{stdout}"


@pytest.fixture
def stopped() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for p in procs:
        p.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples use curl")
def test_examples_against_a_default_daemon(tmp_path: Path, stopped: list[Proc]) -> None:
    proc, base = daemon(tmp_path)
    stopped.append(proc)
    rewrite = {"http://localhost:9201": base}
    ran = 0
    for kind, tag, lang, code, expected in blocks():
        if kind != "run" or tag:
            continue
        for old, new in rewrite.items():
            code = code.replace(old, new)
        check(run_block(lang, code, tmp_path), expected, rewrite)
        ran += 1
    assert ran >= 8


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="mosquitto not installed")
def test_mqtt_example(tmp_path: Path, stopped: list[Proc]) -> None:
    from tests.integration.test_mqtt_mosquitto import Broker

    bdir = tmp_path / "broker"
    bdir.mkdir()
    broker = Broker(bdir).start()
    try:
        [config] = [c for k, t, _l, c, _e in blocks() if k == "config" and t == "mqtt"]
        config = config.replace("localhost:1883", f"127.0.0.1:{broker.port}")
        proc, base = daemon(tmp_path, config)
        stopped.append(proc)
        [(code, expected)] = [(c, e) for k, t, _l, c, e in blocks() if k == "run" and t == "mqtt"]
        code = code.replace("http://localhost:9201", base)
        code = code.replace('"localhost", 1883', f'"127.0.0.1", {broker.port}')
        check(run_block("python", code, tmp_path), expected, {})
    finally:
        broker.stop()


def test_scrape_discovery_config_is_valid(tmp_path: Path) -> None:
    [config] = [c for k, t, _l, c, _e in blocks() if k == "config" and t == "scrape"]
    path = tmp_path / "scrape.yaml"
    path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
