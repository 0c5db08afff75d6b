"""A real Prometheus federates from tsagent's ``/federate`` (skipped without prometheus)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, tsagent_cmd, wait_until_sync

PROMETHEUS = Path("/usr/bin/prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PROMETHEUS.exists(),
        reason=f"{PROMETHEUS} not installed (Debian package 'prometheus'; .ci/run installs it)",
    ),
]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def test_prometheus_scrapes_federate(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    ddir = tmp_path / "data"
    now = int(time.time())
    csv = tmp_path / "edge.csv"
    csv.write_text(
        "time,instance,temp\n"
        f"{now - 20},sensor-1,20.5\n{now - 10},sensor-1,21.25\n{now - 10},sensor-2,-3.0\n"
    )
    res = subprocess.run(
        [
            *tsagent_cmd(),
            "import-csv",
            str(csv),
            "--format",
            "1:time:unix_s,2:label:instance,3:metric:edge_temp",
            "--header",
            "--extra-label",
            "job=edge",
            "--data-dir",
            str(ddir),
        ],
        env=subprocess_env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    port, prom_port = free_port(), free_port()
    config = tmp_path / "tsagent.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\ndata_dir: {ddir}\n")
    prom_conf = tmp_path / "prometheus.yml"
    prom_conf.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: federate\n"
        "    honor_labels: true\n"
        "    metrics_path: /federate\n"
        "    params: {'match[]': ['{job=\"edge\"}']}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    logs = tmp_path / "logs.txt"
    with logs.open("wb") as log:
        agent = subprocess.Popen(
            [*tsagent_cmd(), "run", "-c", str(config)],
            env=subprocess_env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        prom = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={prom_conf}",
                f"--storage.tsdb.path={tmp_path / 'prom'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=log,
        )
        try:
            wait_until_sync(
                "tsagent", lambda: get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 60, 0.25
            )
            query = urllib.parse.quote("edge_temp")
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"

            def federated() -> list[dict[str, object]] | None:
                status, body = get(url)
                if status != 200:
                    return None
                result = json.loads(body)["data"]["result"]
                return result if len(result) == 2 else None

            result = wait_until_sync("Prometheus to federate edge_temp", federated, 60, 0.25)
        finally:
            for proc in (prom, agent):
                proc.terminate()
                proc.wait(timeout=30)
    got = {
        r["metric"]["instance"]: (r["metric"]["job"], r["value"][1])  # type: ignore[index]
        for r in result  # type: ignore[attr-defined]
    }
    # honor_labels kept tsagent's job/instance; the newest value per series arrived.
    assert got == {"sensor-1": ("edge", "21.25"), "sensor-2": ("edge", "-3")}
