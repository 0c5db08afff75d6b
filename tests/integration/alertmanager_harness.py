"""A real Alertmanager subprocess for the integration tests, with one webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import free_port

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")


@contextlib.asynccontextmanager
async def running_alertmanager(workdir: Path, webhook_url: str) -> AsyncIterator[str]:
    """Start Alertmanager (group by alertname, 1s waits) and yield its base URL."""
    port = free_port()
    config = workdir / "alertmanager.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                    }
                ],
            }
        )
    )
    logfile = workdir / "alertmanager.log"
    with logfile.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={config}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError("alertmanager exited: " + logfile.read_text()[-2000:])
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/-/ready") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("alertmanager never became ready")
            await asyncio.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
