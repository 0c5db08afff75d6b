"""tsagent against a real Prometheus (the Debian package, 2.42 in CI).

A small HTTP target serves known series, including special floats and a
series that keeps disappearing (so Prometheus writes staleness markers).
Prometheus scrapes it every second and remote-writes to a tsagent subprocess.
Then:

* what tsagent answers on remote read equals, series for series and bit for
  bit, what Prometheus's own ``/api/v1/read`` answers for the same window, in
  both response types (which also checks our XOR chunk decoder against
  Prometheus's chunks);
* a second Prometheus with an empty TSDB and ``remote_read`` pointing at
  tsagent answers PromQL exactly like the first one, staleness included;
* tsagent killed with SIGKILL in the middle of the writes and restarted on
  the same data directory ends up with every sample Prometheus has;
* our XOR chunk encoder reproduces, byte for byte, the chunks ``promtool``
  writes into a TSDB block.

Skipped, with the reason, when ``/usr/bin/prometheus`` (or ``promtool``) is
absent; ``.ci/run`` installs the ``prometheus`` package.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cramjam
import pytest

from agent.prompb import remote_pb2, types_pb2
from agent.wire import read_uvarint
from plugins.remote_read import chunks
from tests.conftest import free_port, wait_until_sync

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
CLI = [sys.executable, "-m", "agent.cli"]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not PROMETHEUS.exists(),
        reason=f"{PROMETHEUS} not installed (Debian package 'prometheus'; .ci/run installs it)",
    ),
]

STALE_BITS = 0x7FF0000000000002
SAMPLES = remote_pb2.ReadRequest.SAMPLES
STREAMED = remote_pb2.ReadRequest.STREAMED_XOR_CHUNKS

Series = dict[tuple[tuple[str, str], ...], list[tuple[int, int]]]


def now_ms() -> int:
    return int(time.time() * 1000)


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# --- the scrape target -----------------------------------------------------------------


class DemoTarget:
    """Known series; ``demo_flap`` is present 3 scrapes out of 6, so it goes stale often."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def exposition(self) -> str:
        with self.lock:
            self.scrapes += 1
            n = self.scrapes
        lines = [
            "# TYPE demo_scrapes_total counter",
            f"demo_scrapes_total {n}",
            "# TYPE demo_gauge gauge",
            f'demo_gauge{{kind="sine"}} {math.sin(n / 3):.17g}',
            f'demo_gauge{{kind="step",Zone="EU"}} {n // 4 * 0.1:.17g}',
            'demo_special{v="nan"} NaN',
            'demo_special{v="inf"} +Inf',
            'demo_special{v="neginf"} -Inf',
            'demo_special{v="negzero"} -0.0',
        ]
        if n % 6 < 3:
            lines += ["# TYPE demo_flap gauge", f"demo_flap {n}"]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    argv: list[str]
    ready_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        log.close()
        wait_until_sync(
            f"{self.name} to be ready",
            lambda: self.alive() and http_get(self.ready_url, 1)[0] == 200,
            timeout,
            0.2,
            self.output,
        )
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited\n{self.output()}")
        return True

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log (last 4000 chars) ---\n{text[-4000:]}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def tsagent(tmp: Path, port: int, data_dir: Path) -> Proc:
    return Proc(
        "tsagent",
        [*CLI, "run", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        f"http://127.0.0.1:{port}/-/ready",
        tmp / "tsagent.log",
        env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": ""},
    )


def prometheus(tmp: Path, name: str, config: dict[str, Any]) -> tuple[Proc, str]:
    """A Prometheus with its own TSDB; the config is JSON, which is YAML too."""
    port = free_port()
    conf = tmp / f"{name}.yml"
    conf.write_text(json.dumps(config, indent=1))
    argv = [
        str(PROMETHEUS),
        f"--config.file={conf}",
        f"--storage.tsdb.path={tmp / (name + '-tsdb')}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    url = f"http://127.0.0.1:{port}"
    return Proc(name, argv, f"{url}/-/ready", tmp / f"{name}.log"), url


def writer_config(target_port: int, tsagent_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "800ms"},
        "scrape_configs": [
            {"job_name": "demo", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
        "remote_write": [
            {
                "url": f"http://127.0.0.1:{tsagent_port}/api/v1/write",
                "remote_timeout": "5s",
                "queue_config": {
                    "batch_send_deadline": "200ms",
                    "min_backoff": "50ms",
                    "max_backoff": "500ms",
                    "max_samples_per_send": 500,
                },
                "metadata_config": {"send": False},
            }
        ],
    }


# --- remote read client -----------------------------------------------------------------


def remote_read(
    base_url: str, start: int, end: int, accepted: Any = SAMPLES, name_re: str = ".+"
) -> Series:
    """Every series matching ``{__name__=~name_re}`` in [start, end], as (ts, value bits)."""
    query = remote_pb2.Query(
        start_timestamp_ms=start,
        end_timestamp_ms=end,
        matchers=[
            types_pb2.LabelMatcher(type=types_pb2.LabelMatcher.RE, name="__name__", value=name_re)
        ],
    )
    request = remote_pb2.ReadRequest(queries=[query], accepted_response_types=[accepted])
    http_req = urllib.request.Request(
        f"{base_url}/api/v1/read",
        data=bytes(cramjam.snappy.compress_raw(request.SerializeToString())),
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Read-Version": "0.1.0",
        },
        method="POST",
    )
    with urllib.request.urlopen(http_req, timeout=10) as resp:
        body = resp.read()
        content_type = resp.headers["Content-Type"]
    out: Series = {}
    if accepted == SAMPLES:
        assert content_type == "application/x-protobuf"
        decoded = remote_pb2.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        (result,) = decoded.results
        for ts in result.timeseries:
            labels = tuple((lab.name, lab.value) for lab in ts.labels)
            out[labels] = [(s.timestamp, _bits(s.value)) for s in ts.samples]
    else:
        assert content_type.startswith("application/x-streamed-protobuf")
        for message in chunks.read_frames(body):
            frame = remote_pb2.ChunkedReadResponse.FromString(message)
            for series in frame.chunked_series:
                labels = tuple((lab.name, lab.value) for lab in series.labels)
                samples = out.setdefault(labels, [])
                for chunk in series.chunks:
                    assert chunk.type == types_pb2.Chunk.XOR
                    ts_list, bits = chunks.decode_xor_chunk(chunk.data)
                    # Prometheus sends whole chunks, which may reach outside the range.
                    samples.extend(
                        (t, b) for t, b in zip(ts_list, bits, strict=True) if start <= t <= end
                    )
    return {k: v for k, v in out.items() if v}


def _bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def diff(want: Series, got: Series) -> str:
    lines = []
    for labels in sorted(set(want) | set(got)):
        w, g = want.get(labels), got.get(labels)
        if w != g:
            missing = sorted(set(w or []) - set(g or []))
            extra = sorted(set(g or []) - set(w or []))
            lines.append(
                f"{labels}: missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}"
            )
    return "\n".join(lines[:20])


# --- fixtures ---------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    target: DemoTarget
    agent: Proc
    agent_url: str
    prom: Proc
    prom_url: str
    started_ms: int

    def logs(self) -> str:
        return self.agent.output() + "\n" + self.prom.output()

    def settled_window(self, min_scrapes: int) -> tuple[int, int]:
        """A window ending in the past that holds at least ``min_scrapes`` scrapes."""
        wait_until_sync(
            f"{min_scrapes} scrapes",
            lambda: self.target.scrapes >= min_scrapes,
            min_scrapes * 1.5 + 10,
            0.2,
            self.logs,
        )
        return self.started_ms, now_ms() - 1500

    def wait_equal(self, start: int, end: int, timeout: float = 20) -> Series:
        """Prometheus's data in the window once tsagent holds the same (remote write lags)."""
        want = remote_read(self.prom_url, start, end)
        got: Series = {}

        def same() -> bool:
            nonlocal got
            got = remote_read(self.agent_url, start, end)
            return got == want

        try:
            wait_until_sync("tsagent to hold what Prometheus has", same, timeout, 0.2, self.logs)
        except AssertionError as exc:
            raise AssertionError(f"{diff(want, got)}\n{exc}") from None
        return want


@contextlib.contextmanager
def start_stack(tmp: Path) -> Iterator[Stack]:
    target = DemoTarget()
    port = free_port()
    data_dir = tmp / "tsagent-data"
    data_dir.mkdir()
    agent = tsagent(tmp, port, data_dir)
    prom, prom_url = prometheus(tmp, "prometheus", writer_config(target.port, port))
    try:
        agent.start()
        started = now_ms()
        prom.start()
        yield Stack(tmp, target, agent, f"http://127.0.0.1:{port}", prom, prom_url, started)
    finally:
        prom.stop()
        agent.stop()
        target.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def check_interesting(series: Series) -> None:
    """Guard against a vacuous pass: the data has to hold what the test is about."""
    names = {dict(k).get("__name__") for k in series}
    assert {"demo_scrapes_total", "demo_flap", "demo_special", "up"} <= names, names
    values = {b for samples in series.values() for _, b in samples}
    assert STALE_BITS in values, "no staleness marker in the window"
    assert {_bits(math.inf), _bits(-math.inf)} <= values
    assert any(math.isnan(_float(b)) and b != STALE_BITS for b in values)


def _float(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


# --- tests --------------------------------------------------------------------------------


def test_remote_write_then_read_matches_prometheus_exactly(stack: Stack) -> None:
    start, end = stack.settled_window(min_scrapes=8)
    want = stack.wait_equal(start, end)
    check_interesting(want)
    got = remote_read(stack.agent_url, start, end)
    assert list(got) == list(want), "series order or label order differs"
    # The streamed form, from both sides: Prometheus's chunks through our decoder,
    # ours through the same decoder; all four views must agree, but for one quirk:
    # Prometheus's protobuf code (gogoproto, proto3) skips a double that "== 0", so
    # -0.0 leaves Prometheus as 0.0 in remote write and in SAMPLES answers alike,
    # while its chunks keep the sign bit.
    negzero = _bits(-0.0)
    prom_chunks = remote_read(stack.prom_url, start, end, STREAMED)
    assert any(b == negzero for samples in prom_chunks.values() for _, b in samples)
    unsigned = {k: [(t, 0 if b == negzero else b) for t, b in v] for k, v in prom_chunks.items()}
    assert unsigned == want
    assert remote_read(stack.agent_url, start, end, STREAMED) == want


def promql(base_url: str, path: str, **params: Any) -> Any:
    status, body = http_get(f"{base_url}{path}?{urllib.parse.urlencode(params)}", 10)
    assert status == 200, body[:500]
    payload = json.loads(body)
    assert payload["status"] == "success", payload
    result = payload["data"]["result"]
    return sorted(result, key=lambda r: sorted(r["metric"].items()))


def test_prometheus_remote_read_from_tsagent(stack: Stack) -> None:
    start, end = stack.settled_window(min_scrapes=12)
    stack.wait_equal(start, end)
    reader, reader_url = prometheus(
        stack.tmp,
        "reader",
        {
            "global": {"scrape_interval": "1m"},
            "remote_read": [{"url": f"{stack.agent_url}/api/v1/read", "read_recent": True}],
        },
    )
    try:
        reader.start()
        at = end / 1000
        window = f"{int((end - start) / 1000)}s"
        # Raw samples of a range selector: stale markers must be dropped, NaN kept.
        # (-0.0 is left out: Prometheus itself remote-writes it as 0.0, see above.)
        for q in ('{job="demo",v!="negzero"}[' + window + "]", "demo_flap[" + window + "]"):
            want = promql(stack.prom_url, "/api/v1/query", query=q, time=at)
            assert want, q
            assert promql(reader_url, "/api/v1/query", query=q, time=at) == want, q
        # Evaluated every 250 ms: the flapping series must have the same gaps, which only
        # happens if the reader saw the staleness markers.
        for q in ("demo_flap", "rate(demo_scrapes_total[5s])", 'demo_special{v!="negzero"}'):
            params = {"query": q, "start": start / 1000 + 5, "end": at, "step": "0.25"}
            want = promql(stack.prom_url, "/api/v1/query_range", **params)
            assert want, q
            assert promql(reader_url, "/api/v1/query_range", **params) == want, q
        flap = promql(
            stack.prom_url,
            "/api/v1/query_range",
            query="demo_flap",
            start=start / 1000,
            end=at,
            step="0.25",
        )[0]["values"]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(flap)]
        assert max(gaps) >= 1.5, "demo_flap never went stale in the window"
    finally:
        reader.stop()


def test_sigkill_and_restart_loses_nothing(tmp_path: Path) -> None:
    with start_stack(tmp_path) as s:
        s.settled_window(min_scrapes=4)
        s.agent.kill()
        killed = now_ms()
        time.sleep(5)
        s.agent.start()
        time.sleep(1.5)
        # Prometheus keeps retrying the batches it could not deliver.
        start, end = s.started_ms, now_ms() - 1000
        assert end - killed > 5000
        want = s.wait_equal(start, end, timeout=30)
        during = [t for samples in want.values() for t, _ in samples if killed < t < killed + 5000]
        assert len(during) > 20, "Prometheus scraped nothing while tsagent was down"


# --- chunk encoding against promtool --------------------------------------------------------


@pytest.mark.skipif(
    not PROMTOOL.exists(), reason=f"{PROMTOOL} not installed (package 'prometheus')"
)
def test_xor_chunks_byte_identical_to_promtool(tmp_path: Path) -> None:
    """``promtool tsdb create-blocks-from openmetrics`` writes chunks with Prometheus's own
    encoder; re-encoding their samples with ours must give the same bytes."""
    rng = random.Random(7)
    t = 1_700_000_000_000
    rows = []
    for _ in range(400):
        t += rng.choice([15_000, 15_000, 14_999, 16_500, 1, 8_192, 8_193, 65_537, 600_000, 600_001])
        value = rng.choice([1.0, 2.5, 1e300, -3.0, 0.1, 0.0, -0.0, math.inf, 42.0, rng.random()])
        rows.append((t, value))
    text = ["# TYPE demo gauge"]
    text += [f"demo {'+Inf' if v == math.inf else repr(v)} {ts / 1000:.3f}" for ts, v in rows]
    (tmp_path / "in.om").write_text("\n".join(text) + "\n# EOF\n")
    subprocess.run(
        [str(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics", "in.om", "out"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    decoded: list[tuple[int, int]] = []
    compared = 0
    for path in sorted((tmp_path / "out").glob("*/chunks/*")):
        data = path.read_bytes()
        assert data[:4] == bytes.fromhex("85bd40dd")  # chunk segment magic
        pos = 8
        while pos < len(data):
            size, pos = read_uvarint(data, pos)
            encoding, chunk = data[pos], data[pos + 1 : pos + 1 + size]
            crc = int.from_bytes(data[pos + 1 + size : pos + 5 + size], "big")
            assert crc == chunks.crc32c(data[pos : pos + 1 + size])
            assert encoding == chunks.XOR_ENCODING
            ts_list, bits = chunks.decode_xor_chunk(chunk)
            assert chunks.encode_xor_chunk(ts_list, bits) == chunk
            decoded.extend(zip(ts_list, bits, strict=True))
            compared += 1
            pos += 5 + size
    assert compared >= 3
    assert sorted(decoded) == [(ts, _bits(v)) for ts, v in rows]
