"""Rule files in a real daemon: evaluation on schedule, SIGHUP reload, refused broken rules."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until_sync
from tests.test_daemon import Daemon, get, metric

GOOD = """
groups:
  - name: g
    interval: 1s
    rules:
      - alert: Always
        expr: vector(1)
        labels: {severity: info}
"""
BROKEN = GOOD.replace("vector(1)", "vector(1")
OTHER = GOOD.replace("Always", "Other")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.notify.close()
        d.log.close()


def poll(url: str, ready: Any, timeout: float = 20.0) -> Any:
    """Ask the daemon until ``ready(body)`` holds; the daemon's own clock drives evaluation."""
    last: list[Any] = [None]

    def check() -> Any:
        status, text = get(url)
        last[0] = body = json.loads(text) if status == 200 else None
        return body if body is not None and ready(body) else None

    return wait_until_sync(
        f"{url} to answer as expected", check, timeout, 0.1, lambda: f"last answer {last[0]}"
    )


def logged(d: Daemon) -> str:
    """The daemon's log with logfmt's quote escaping undone."""
    return d.output().replace('\\"', '"')


def rule_names(body: Any) -> list[str]:
    return [r["name"] for g in body["data"]["groups"] for r in g["rules"]]


def test_rules_evaluate_and_reload_on_sighup(daemons: list[Daemon], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(GOOD)
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("alerting:\n  rule_files: [rules.yml]\n")
    port = free_port()
    d = Daemon(
        tmp_path,
        ["run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")],
    )
    daemons.append(d)
    d.wait_notify("READY=1")
    base = f"http://127.0.0.1:{port}"
    body = poll(f"{base}/api/v1/alerts", lambda b: b["data"]["alerts"])
    [alert] = body["data"]["alerts"]
    assert alert["labels"] == {"alertname": "Always", "severity": "info"}
    assert alert["state"] == "firing" and alert["value"] == "1e+00"

    # A broken rule file is refused: the running rules stay, the failure is counted and logged.
    rules.write_text(BROKEN)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_notify("READY=1")
    assert rule_names(json.loads(get(f"{base}/api/v1/rules")[1])) == ["Always"]
    text = get(f"{base}/metrics")[1]
    assert metric(text, "tsagent_config_reloads_total", result="failure") == 1
    assert 'rules.yml: group "g", rule 1 (alert Always): expr: parse error' in logged(d)

    # A valid one replaces them; the removed rule's alert goes away.
    rules.write_text(OTHER)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_notify("READY=1")
    assert rule_names(json.loads(get(f"{base}/api/v1/rules")[1])) == ["Other"]
    body = poll(
        f"{base}/api/v1/alerts",
        lambda b: [a["labels"]["alertname"] for a in b["data"]["alerts"]] == ["Other"],
    )
    text = get(f"{base}/metrics")[1]
    assert metric(text, "tsagent_config_reloads_total", result="success") == 1
    assert (metric(text, "tsagent_rule_evaluations_total", rule_group="rules.yml;g") or 0) >= 1
    assert d.stop() == 0


def test_broken_rules_stop_startup(daemons: list[Daemon], tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(BROKEN)
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("alerting:\n  rule_files: [rules.yml]\n")
    d = Daemon(
        tmp_path,
        [
            "run",
            "-c",
            str(cfg),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path),
        ],
    )
    daemons.append(d)
    assert d.proc.wait(30) != 0
    assert 'rules.yml: group "g", rule 1 (alert Always): expr: parse error' in logged(d)
