"""tsagent forwarding to a real VictoriaMetrics through an outage and a SIGKILL.

The scenario of issue 8: ingest into tsagent by remote-write while it
forwards to VictoriaMetrics; stop VictoriaMetrics (SIGTERM) and keep
ingesting; SIGKILL tsagent in the middle of its retries and start it again on
the same data directory; ingest some more; start VictoriaMetrics again on the
same storage directory and port; wait until tsagent's queue is empty. Then
VictoriaMetrics must hold exactly the samples tsagent acknowledged: none
missing, none twice. VictoriaMetrics keeps exact duplicates unless
``-dedup.minScrapeInterval`` is set (it is not here; checked with
``/api/v1/export``, which returns raw samples), so a re-sent request would
show up as a repeated timestamp.

Skipped, with the reason, when ``/usr/bin/victoria-metrics`` is absent;
``.ci/run`` installs the Debian package ``victoria-metrics``.
"""

from __future__ import annotations

import json
import struct
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import cramjam
import pytest

from agent.prompb import remote_pb2, types_pb2
from tests.conftest import free_port, wait_until_sync
from tests.integration.test_prometheus import CLI, ROOT, Proc, http_get

VICTORIA = Path("/usr/bin/victoria-metrics")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not VICTORIA.exists(),
        reason=f"{VICTORIA} not installed (Debian package 'victoria-metrics'; .ci/run installs it)",
    ),
]

SERIES = 20
METRIC = "fwd_test"
Key = tuple[tuple[str, str], ...]


def victoria(tmp: Path, port: int) -> Proc:
    return Proc(
        "victoria-metrics",
        [
            str(VICTORIA),
            f"-storageDataPath={tmp / 'vm-data'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
        ],
        f"http://127.0.0.1:{port}/health",
        tmp / "vm.log",
    )


def tsagent(tmp: Path, port: int, vm_port: int) -> Proc:
    conf = tmp / "tsagent.json"
    conf.write_text(
        json.dumps(
            {
                "export": {
                    "remote_write": [
                        {
                            "name": "vm",
                            "url": f"http://127.0.0.1:{vm_port}/api/v1/write",
                            "remote_timeout": "5s",
                            "external_labels": {"forwarded_by": "tsagent"},
                            "queue": {
                                "max_samples_per_send": 50,
                                "batch_send_deadline": "100ms",
                                "shards": 3,
                                "min_backoff": "30ms",
                                "max_backoff": "300ms",
                            },
                        }
                    ]
                }
            }
        )
    )
    return Proc(
        "tsagent",
        [
            *CLI,
            "run",
            "-c",
            str(conf),
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp / "tsagent-data"),
        ],
        f"http://127.0.0.1:{port}/-/ready",
        tmp / "tsagent.log",
        env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": ""},
    )


class Ingest:
    """Remote-writes rounds of samples to tsagent and remembers what was acknowledged."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/write"
        self.t0 = (int(time.time()) - 3600) * 1000
        self.round = 0
        self.accepted: dict[Key, list[tuple[int, int]]] = {}

    def send_round(self) -> None:
        t = self.t0 + self.round * 1000
        series = []
        expected = []
        for i in range(SERIES):
            value = self.round * 100.0 + i + 0.25
            labels = [("__name__", METRIC), ("i", f"{i:02d}"), ("job", "itest")]
            series.append(
                types_pb2.TimeSeries(
                    labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
                    samples=[types_pb2.Sample(timestamp=t, value=value)],
                )
            )
            key = (*labels, ("forwarded_by", "tsagent"))
            expected.append((tuple(sorted(key)), (t, _bits(value))))
        body = remote_pb2.WriteRequest(timeseries=series).SerializeToString()
        req = urllib.request.Request(
            self.url,
            data=bytes(cramjam.snappy.compress_raw(body)),
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204
        for key, sample in expected:  # acknowledged: now it must arrive upstream
            self.accepted.setdefault(key, []).append(sample)
        self.round += 1

    def rounds(self, n: int) -> None:
        for _ in range(n):
            self.send_round()


def _bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def agent_metric(port: int, name: str) -> float | None:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", 5)
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def vm_export(vm_port: int) -> dict[Key, list[tuple[int, int]]]:
    """Raw samples VictoriaMetrics holds for our metric (after a forced flush)."""
    http_get(f"http://127.0.0.1:{vm_port}/internal/force_flush", 10)
    query = urllib.parse.urlencode(
        {"match[]": f'{{__name__="{METRIC}"}}', "start": "0", "end": str(int(time.time()) + 60)}
    )
    status, body = http_get(f"http://127.0.0.1:{vm_port}/api/v1/export?{query}", 10)
    assert status == 200, body[:500]
    out: dict[Key, list[tuple[int, int]]] = {}
    for line in body.decode().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        key = tuple(sorted(row["metric"].items()))
        samples = out.setdefault(key, [])
        samples.extend(
            (int(t), _bits(float(v))) for t, v in zip(row["timestamps"], row["values"], strict=True)
        )
    for samples in out.values():
        samples.sort()
    return out


def test_outage_sigkill_restart_exact_delivery(tmp_path: Path) -> None:
    started = time.monotonic()
    vm_port, agent_port = free_port(), free_port()
    vm = victoria(tmp_path, vm_port)
    agent = tsagent(tmp_path, agent_port, vm_port)
    logs = lambda: agent.output() + "\n" + vm.output()  # noqa: E731
    try:
        vm.start()
        agent.start()
        ingest = Ingest(agent_port)
        pending = "tsagent_export_pending_samples"

        # 1. Normal forwarding.
        ingest.rounds(10)
        wait_until_sync(
            "the queue to drain", lambda: agent_metric(agent_port, pending) == 0, 20, 0.2, logs
        )
        assert sum(len(v) for v in vm_export(vm_port).values()) == 10 * SERIES

        # 2. Upstream outage: keep ingesting; the backlog builds up.
        vm.stop()
        ingest.rounds(15)
        wait_until_sync(
            "failed sends during the outage",
            lambda: (agent_metric(agent_port, "tsagent_forwarder_failures_total") or 0) > 0,
            10,
            0.2,
            logs,
        )
        assert (agent_metric(agent_port, pending) or 0) >= 15 * SERIES

        # 3. SIGKILL in the middle of the retries; restart on the same data directory.
        agent.kill()
        agent.start()
        ingest.rounds(10)
        assert (agent_metric(agent_port, pending) or 0) >= 25 * SERIES

        # 4. The upstream comes back on the same storage and port; the queue drains.
        vm.start()
        wait_until_sync(
            "the backlog to drain", lambda: agent_metric(agent_port, pending) == 0, 30, 0.2, logs
        )
        ingest.rounds(3)
        wait_until_sync(
            "the last rounds", lambda: agent_metric(agent_port, pending) == 0, 20, 0.2, logs
        )

        got = vm_export(vm_port)
        want = {k: sorted(v) for k, v in ingest.accepted.items()}
        dupes = {k: [s for s, n in Counter(v).items() if n > 1] for k, v in got.items() if v}
        dupes = {k: v for k, v in dupes.items() if v}
        assert not dupes, f"duplicates in VictoriaMetrics: {list(dupes.items())[:3]}"
        missing = {k: sorted(set(v) - set(got.get(k, []))) for k, v in want.items()}
        missing = {k: v for k, v in missing.items() if v}
        assert not missing, f"missing in VictoriaMetrics: {list(missing.items())[:3]}"
        assert got == want
        assert sum(len(v) for v in got.values()) == 38 * SERIES
        assert time.monotonic() - started < 90
    finally:
        agent.stop()
        vm.stop()
