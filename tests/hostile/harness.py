"""Attack a real daemon: a subprocess under a memory ceiling, 8 attacking clients, a
remote-write sender and a health probe running throughout (issue 13, "Done when").

Used by ``tests/hostile/test_hostile_daemon.py`` (small sizes, assertions on
survival, memory, statuses and data) and ``benchmarks/bench_hostile.py`` (the
issue's sizes, latency figures). Latencies are measured and reported here,
never asserted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.web.security import hash_password
from tests.hostile.cases import V1, Case, now_ms, rw_v1

GiB = 1024**3
RETRIES_429 = 60
STATSD_TCP_MAX = 200  # the daemon's ingest.statsd.tcp_max_connections in the attack
TOKENS = {"write": "hostile-write", "read": "hostile-read", "admin": "hostile-admin"}
BASIC_USER, BASIC_PASSWORD = "sender", "correct horse"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Daemon:
    """``tsagent run`` as a subprocess with an address-space ceiling (``RLIMIT_AS``)."""

    def __init__(
        self, tmp: Path, *, memory_limit: int = 4 * GiB, header_timeout: float = 2.0
    ) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.statsd_port = free_port(socket.SOCK_DGRAM)
        self.statsd_tcp_port = free_port()
        self.memory_limit = memory_limit
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        basic = hash_password(BASIC_PASSWORD, rounds=10)
        self.config = tmp / "tsagent.yaml"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"data_dir: {tmp / 'data'}\n"
            f"server:\n  header_read_timeout: {header_timeout}\n"
            # Background passes run during the attack: their cost must follow the data.
            "storage:\n  retention: 30d\n  retention_interval: 2s\n"
            "  rollups:\n    interval: 1s\n"
            "auth:\n"
            f"  write:\n    bearer_tokens: [{TOKENS['write']}]\n"
            f"    basic_auth:\n      {BASIC_USER}: '{basic}'\n"
            f"  read:\n    bearer_tokens: [{TOKENS['read']}]\n"
            f"  admin:\n    bearer_tokens: [{TOKENS['admin']}]\n"
            "ingest:\n  statsd:\n    enabled: true\n"
            f"    udp_listen: 127.0.0.1:{self.statsd_port}\n"
            f"    tcp_listen: 127.0.0.1:{self.statsd_tcp_port}\n"
            f"    tcp_max_connections: {STATSD_TCP_MAX}\n"
            f"    tcp_idle_timeout: {header_timeout}\n"
            "    max_line_bytes: 65536\n"
            "plugins:\n  disabled: [scrape]\n"
        )

    def _limit(self) -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    async def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=self._limit,  # only setrlimit between fork and exec
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/-/ready") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError("daemon did not become ready")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss(self) -> int:
        """Bytes: the kernel's high-water mark of the daemon's resident set (VmHWM)."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def error_lines(self) -> tuple[list[str], list[str]]:
        """ERROR lines logged (before, after) shutdown began: the attack's, and the stop's."""
        during: list[str] = []
        after: list[str] = []
        bucket = during
        for line in self.log_path.read_text(errors="replace").splitlines():
            if 'msg="shutting down"' in line:
                bucket = after
            if "level=error" in line or "Traceback" in line:
                bucket.append(line)
        return during, after


def auth_header(group: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[group]}"}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class ClassStats:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "unexpected": self.unexpected[:20],
            "slowest_s": round(self.slowest_s, 3),
        }


@dataclass
class Background:
    """The remote-write sender and the health probe, and what they saw."""

    acked: dict[int, float] = field(default_factory=dict)
    rw_latency: list[float] = field(default_factory=list)
    rw_statuses: Counter[str] = field(default_factory=Counter)
    health_latency: list[float] = field(default_factory=list)
    health_failures: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def sender(session: aiohttp.ClientSession, url: str, bg: Background) -> None:
    labels = [("__name__", "hostile_ack"), ("sender", "0")]
    t = now_ms()
    n = 0
    while not bg.stop.is_set():
        t = max(t + 1, now_ms())
        n += 1
        body = rw_v1([(labels, [(t, float(n))])])
        started = time.perf_counter()
        try:
            async with session.post(
                url + "/api/v1/write", data=body, headers={**V1, **auth_header("write")}
            ) as resp:
                await resp.read()
                bg.rw_statuses[str(resp.status)] += 1
                if resp.status == 204:
                    bg.acked[t] = float(n)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            bg.rw_statuses[type(exc).__name__] += 1
        bg.rw_latency.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)


async def prober(session: aiohttp.ClientSession, url: str, bg: Background) -> None:
    while not bg.stop.is_set():
        started = time.perf_counter()
        try:
            async with session.get(url + "/-/healthy") as resp:
                await resp.read()
                if resp.status != 200:
                    bg.health_failures += 1
        except (TimeoutError, aiohttp.ClientError, OSError):
            bg.health_failures += 1
        bg.health_latency.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


async def fire(
    session: aiohttp.ClientSession,
    url: str,
    cases: Iterable[Case],
    stats: dict[str, ClassStats],
    bodies: dict[str, bytes],
    *,
    clients: int = 8,
) -> None:
    """Every case once, from ``clients`` concurrent workers; statuses per class."""
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)

    async def worker() -> None:
        while not queue.empty():
            case = queue.get_nowait()
            headers = {**auth_header(case.group), **case.headers}
            st = stats.setdefault(case.cls, ClassStats())
            started = time.perf_counter()
            for attempt in range(RETRIES_429 + 1):
                try:
                    # A file object: aiohttp warns (an error under pytest) about big bytes.
                    data = io.BytesIO(case.body) if len(case.body) > 2**16 else case.body or None
                    async with session.request(
                        case.method, url + case.path, data=data, headers=headers
                    ) as resp:
                        body = await resp.read()
                        status = str(resp.status)
                        if case.cls == "export":
                            bodies[case.name] = body
                        ok = resp.status in case.expect
                        retry_after = float(resp.headers.get("Retry-After", "1") or 1)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    status, ok = type(exc).__name__, False
                if status != "429" or attempt == RETRIES_429 or case.cls == "auth":
                    break
                # As a real sender does: back off and retry, so the work gets done.
                st.statuses["429 (retried)"] += 1
                await asyncio.sleep(min(retry_after, 2.0))
            elapsed = time.perf_counter() - started
            st.requests += 1
            st.statuses[status] += 1
            st.slowest_s = max(st.slowest_s, elapsed)
            if not ok:
                st.unexpected.append(f"{case.name}: {status}")

    await asyncio.gather(*(worker() for _ in range(clients)))


async def brute_force(session: aiohttp.ClientSession, url: str, tries: int) -> ClassStats:
    """Wrong passwords and unknown users, from one address: 401s, then 429s."""
    st = ClassStats()
    for i in range(tries):
        user = BASIC_USER if i % 2 else f"nobody{i}"
        async with session.post(
            url + "/api/v1/write", data=b"", headers={**V1, **basic(user, f"guess{i}")}
        ) as resp:
            st.requests += 1
            st.statuses[str(resp.status)] += 1
            if resp.status not in (401, 429):
                st.unexpected.append(f"guess {i}: {resp.status}")
    if tries > 10 and not st.statuses.get("429"):
        st.unexpected.append("no 429 after repeated failures")
    return st


async def slowloris(port: int, connections: int, timeout_s: float) -> ClassStats:
    """Connections sending partial headers must be closed by the header-read timeout:
    half of them on a fresh connection, half after a first request served on it."""
    st = ClassStats()
    writers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(connections):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if i % 2:  # keep-alive: one good request first, then the slow one
                writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                size = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(size)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            st.statuses[type(exc).__name__] += 1
            continue
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        writers.append((reader, writer))
    started = time.perf_counter()

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(), timeout_s + 5)
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    results = await asyncio.gather(*(closed(r) for r, _ in writers))
    for (_, writer), was_closed in zip(writers, results, strict=True):
        st.requests += 1
        st.statuses["closed by server" if was_closed else "still open"] += 1
        writer.close()
    st.slowest_s = time.perf_counter() - started
    if not all(results):
        st.unexpected.append(f"{results.count(False)} connections outlived the timeout")
    return st


async def disconnect_mid_export(session: aiohttp.ClientSession, url: str, times: int) -> ClassStats:
    """Start exports and hang up after the first bytes (must not be logged as our fault)."""
    st = ClassStats()
    for _ in range(times):
        st.requests += 1
        try:
            async with session.get(
                url + "/api/v1/export/csv?match[]=" + "%7B__name__%3D~%22.%2B%22%7D",
                headers=auth_header("read"),
            ) as resp:
                st.statuses[f"{resp.status}, hung up"] += 1
                await resp.content.read(10)
                resp.close()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            st.statuses[type(exc).__name__] += 1
    return st


def statsd_garbage(port: int, datagrams: int, seed: int = 7) -> ClassStats:
    rng = random.Random(seed)
    st = ClassStats()
    base = [b"page.views:1|c", b"latency:320|ms|@0.1|#env:prod", b"gauge:-5|g", b"uniq:foo|s"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(datagrams):
            line = bytearray(rng.choice(base))
            for _ in range(rng.randint(1, 4)):
                line.insert(rng.randrange(len(line) + 1), rng.randrange(256))
            s.sendto(bytes(line) * rng.randint(1, 20), ("127.0.0.1", port))
            st.requests += 1
    st.statuses["sent"] = st.requests
    return st


async def statsd_tcp(port: int, connections: int, idle_s: float, seed: int = 11) -> ClassStats:
    """StatsD over TCP: mutated lines, lines that never end (1 MB with no newline),
    connections that send part of a line and go quiet (closed after ``idle_s``), and
    more connections than ``tcp_max_connections`` (the extra ones closed at once)."""
    rng = random.Random(seed)
    st = ClassStats()
    base = [b"page.views:1|c", b"latency:320|ms|@0.1|#env:prod", b"gauge:-5|g", b"uniq:foo|s"]
    opened: list[tuple[int, asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(connections):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            st.statuses[type(exc).__name__] += 1
            continue
        opened.append((i, reader, writer))

    async def closed(reader: asyncio.StreamReader, wait: float) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), wait) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    async def one(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        kind = i % 3
        try:
            if kind == 0:  # garbage lines, then a clean close
                lines = []
                for _ in range(50):
                    line = bytearray(rng.choice(base))
                    for _ in range(rng.randint(1, 4)):
                        line.insert(rng.randrange(len(line) + 1), rng.randrange(256))
                    lines.append(bytes(line))
                writer.write(b"\n".join(lines) + b"\n")
            elif kind == 1:  # a line that never ends
                for _ in range(16):
                    writer.write(b"x" * 65_536)
                    await writer.drain()
            else:  # slow loris: part of a line, then nothing
                writer.write(b"slow.loris:1|")
            await writer.drain()
        except OSError:
            return "closed by server"
        if kind == 0:
            writer.close()
            return "sent"
        return "closed by server" if await closed(reader, idle_s + 5) else "still open"

    results = await asyncio.gather(*(one(*o) for o in opened))
    for (_, _, writer), result in zip(opened, results, strict=True):
        st.requests += 1
        st.statuses[result] += 1
        writer.close()
    if st.statuses.get("still open"):
        st.unexpected.append(f"{st.statuses['still open']} connections outlived the idle timeout")
    return st


async def acked_missing(session: aiohttp.ClientSession, url: str, bg: Background) -> int:
    """How many acknowledged samples of the sender are not stored (must be 0)."""
    async with session.get(
        url + "/api/v1/export?match[]=hostile_ack", headers=auth_header("read")
    ) as resp:
        text = await resp.text()
    import json

    stored: dict[int, float] = {}
    for line in text.splitlines():
        row = json.loads(line)
        stored.update(zip(row["timestamps"], row["values"], strict=True))
    return sum(1 for t, v in bg.acked.items() if stored.get(t) != v)


@dataclass
class AttackReport:
    classes: dict[str, ClassStats]
    alive: bool
    peak_rss: int
    health_p99_s: float
    health_failures: int
    rw_p99_s: float
    rw_statuses: dict[str, int]
    acked: int
    missing: int | None
    error_lines: list[str]
    shutdown_error_lines: list[str]
    export_bodies: dict[str, bytes]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": {k: v.to_json() for k, v in sorted(self.classes.items()) if v.requests},
            "alive": self.alive,
            "peak_rss_mib": round(self.peak_rss / 2**20, 1) if self.peak_rss else None,
            "healthy_p99_ms": round(self.health_p99_s * 1000, 1),
            "healthy_failures": self.health_failures,
            "remote_write_p99_ms": round(self.rw_p99_s * 1000, 1),
            "remote_write_statuses": self.rw_statuses,
            "acked_samples": self.acked,
            "acked_missing": self.missing,
            "error_log_lines": self.error_lines[:10],
            "shutdown_error_log_lines": self.shutdown_error_lines[:10],
            "seconds": round(self.seconds, 1),
        }


async def run_attack(
    tmp: Path,
    cases: list[Case],
    *,
    seed_cases: list[Case] = (),  # type: ignore[assignment]
    slow_connections: int = 100,
    guesses: int = 20,
    statsd_datagrams: int = 500,
    export_hangups: int = 5,
    statsd_tcp_connections: int = 0,
    memory_limit: int = 4 * GiB,
    header_timeout_s: float = 2.0,
    request_timeout_s: float = 120.0,
) -> AttackReport:
    """Start a daemon, attack it with everything at once, and say how it fared."""
    started = time.perf_counter()
    daemon = Daemon(tmp, memory_limit=memory_limit, header_timeout=header_timeout_s)
    await daemon.start()
    stats: dict[str, ClassStats] = {}
    bodies: dict[str, bytes] = {}
    bg = Background()
    peaks: list[int] = [0]
    try:
        timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as attack,
            aiohttp.ClientSession(timeout=timeout) as quiet,
        ):

            async def watch_rss() -> None:  # the last reading survives a dying daemon
                while not bg.stop.is_set():
                    peaks.append(max(peaks[-1], daemon.peak_rss()))
                    await asyncio.sleep(0.2)

            background = [
                asyncio.create_task(sender(quiet, daemon.url, bg)),
                asyncio.create_task(prober(quiet, daemon.url, bg)),
                asyncio.create_task(watch_rss()),
            ]
            await fire(attack, daemon.url, list(seed_cases), stats, bodies, clients=1)
            results = await asyncio.gather(
                fire(attack, daemon.url, cases, stats, bodies),
                slowloris(daemon.port, slow_connections, header_timeout_s),
                brute_force(attack, daemon.url, guesses),
                asyncio.to_thread(statsd_garbage, daemon.statsd_port, statsd_datagrams),
                disconnect_mid_export(attack, daemon.url, export_hangups),
                statsd_tcp(daemon.statsd_tcp_port, statsd_tcp_connections, header_timeout_s),
            )
            stats["slow clients"], stats["auth"], stats["statsd"], stats["hang-ups"] = results[1:5]
            if statsd_tcp_connections:
                stats["statsd tcp"] = results[5]
            await asyncio.sleep(0.5)
            bg.stop.set()
            await asyncio.gather(*background)
            alive = daemon.alive
            # A dead daemon cannot be asked: unknown (None), not "all missing".
            missing = await acked_missing(quiet, daemon.url, bg) if alive else None
    finally:
        peak = max(daemon.peak_rss(), *peaks)
        alive_at_end = daemon.alive
        daemon.stop()
        errors = daemon.error_lines()
    return AttackReport(
        classes=stats,
        alive=alive and alive_at_end,
        peak_rss=peak,
        health_p99_s=p99(bg.health_latency),
        health_failures=bg.health_failures,
        rw_p99_s=p99(bg.rw_latency),
        rw_statuses=dict(bg.rw_statuses),
        acked=len(bg.acked),
        missing=missing,
        error_lines=errors[0],
        shutdown_error_lines=errors[1],
        export_bodies=bodies,
        seconds=time.perf_counter() - started,
    )
