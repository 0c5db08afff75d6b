"""The same line protocol to tsagent's ``/write`` and VictoriaMetrics' ``/write``:
the same series names, labels and values come out of both.

The lines cover what users send: integers, floats, booleans, a string,
escaped spaces and commas in tag values, several fields per line, every
precision VictoriaMetrics and InfluxDB v1 share, a ``db`` argument (a label
in both) and a line with its own ``db`` tag (the tag wins in both).

Two designed differences (docs/protocols.md): VictoriaMetrics 1.79 (Debian's)
stores ``cpu.load`` as is, where tsagent writes ``cpu_load``, so names here
are Prometheus-valid; and it stores a string field as the number it spells
(0 when none), where tsagent skips it and counts it.

Skipped, with the reason, when ``/usr/bin/victoria-metrics`` is absent;
``.ci/run`` installs the Debian package ``victoria-metrics``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.model import Matcher
from agent.web.app import context_of, make_app
from tests.conftest import free_port
from tests.integration.test_prometheus import Proc, http_get
from tests.integration.test_victoriametrics import VICTORIA, victoria

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not VICTORIA.exists(),
        reason=f"{VICTORIA} not installed (Debian package 'victoria-metrics'; .ci/run installs it)",
    ),
]

NOW_S = int(time.time()) - 3600
Key = tuple[tuple[str, str], ...]

REQUESTS: list[tuple[str, str]] = [
    (
        "db=telegraf&precision=s",
        "\n".join(
            [
                f"lpcmp_cpu,host=web-1,dc=eu usage_idle=97.5,usage_user=1.25 {NOW_S}",
                f"lpcmp_cpu,host=web-2,dc=eu usage_idle=88,usage_user=7i {NOW_S}",
                f'lpcmp_svc,name=api up=true,down=f,version="1.2.3" {NOW_S + 10}',
                f"lpcmp_room,place=lab\\ 1,kind=a\\,b temp=-3.5e1 {NOW_S + 20}",
                f"lpcmp_own,db=mine v=5i {NOW_S + 30}",
            ]
        ),
    ),
    ("precision=ms", f"lpcmp_ms,src=x v=1.5 {NOW_S * 1000 + 123}"),
    ("precision=us", f"lpcmp_us,src=x v=2 {NOW_S * 1_000_000 + 456_000}"),
    ("", f"lpcmp_ns,src=x v=3 {NOW_S * 10**9 + 789_000_000}"),
    ("precision=m", f"lpcmp_minutes v=4 {NOW_S // 60}"),
]


def post(url: str, body: str) -> int:
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def vm_series(port: int) -> dict[Key, list[tuple[int, float]]]:
    http_get(f"http://127.0.0.1:{port}/internal/force_flush", 10)
    query = urllib.parse.urlencode(
        {"match[]": '{__name__=~"lpcmp_.*"}', "start": "0", "end": str(int(time.time()) + 60)}
    )
    status, body = http_get(f"http://127.0.0.1:{port}/api/v1/export?{query}", 10)
    assert status == 200, body[:500]
    out: dict[Key, list[tuple[int, float]]] = {}
    for line in body.decode().splitlines():
        if line.strip():
            row = json.loads(line)
            key = tuple(sorted(row["metric"].items()))
            out[key] = sorted(zip(row["timestamps"], map(float, row["values"]), strict=True))
    return out


async def test_same_series_as_victoriametrics(
    tmp_path: Path, aiohttp_client: Any, make_config: Any
) -> None:
    vm_port = free_port()
    vm: Proc = victoria(tmp_path, vm_port).start()
    try:
        config, host = make_config()
        client = await aiohttp_client(make_app(config, host))
        for query, body in REQUESTS:
            assert post(f"http://127.0.0.1:{vm_port}/write?{query}", body) == 204
            resp = await client.post(f"/write?{query}", data=body)
            assert resp.status == 204, await resp.text()
        # VictoriaMetrics makes new series searchable after a moment.
        deadline = time.monotonic() + 20
        theirs = vm_series(vm_port)
        while len(theirs) < 13 and time.monotonic() < deadline:
            time.sleep(0.5)
            theirs = vm_series(vm_port)
        store = context_of(client.server.app).require_store()
        found = await store.select([Matcher.of("__name__", "=~", "lpcmp_.*")], 0, 2**62)
        ours = {
            s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True))
            for s in found
        }
    finally:
        vm.stop()
    # The one designed difference: VictoriaMetrics stores a string field as its number
    # (0 when it is not one); tsagent skips string fields and counts them.
    version = (("__name__", "lpcmp_svc_version"), ("db", "telegraf"), ("name", "api"))
    assert theirs.pop(version) == [((NOW_S + 10) * 1000, 0.0)]
    assert sorted(ours) == sorted(theirs), vm.output()
    assert ours == theirs
    assert len(ours) == 12
    assert (("__name__", "lpcmp_svc_up"), ("db", "telegraf"), ("name", "api")) in ours
    assert (("__name__", "lpcmp_own_v"), ("db", "mine")) in ours
