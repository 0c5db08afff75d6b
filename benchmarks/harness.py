"""Shared benchmark harness: start and stop the daemons, read /proc, size data directories.

Every end-to-end benchmark that compares tsagent with VictoriaMetrics or
Prometheus starts them the same way, so the comparisons are like for like:

- :func:`start_tsagent` runs ``python -m agent.cli run`` with a temporary
  data directory on a free loopback port (the defaults of a new user's
  configuration, except a larger request-body limit for big batches);
- :func:`start_victoria` runs the Debian ``victoria-metrics`` binary
  (remote write on ``/api/v1/write``);
- :func:`start_prometheus` runs the Debian ``prometheus`` 2.42 binary with
  ``--web.enable-remote-write-receiver``.

The figures a user pays for come from the kernel, not from the daemons'
own metrics: CPU-seconds are utime + stime from ``/proc/PID/stat`` (less
affected than wall time by the other processes sharing a small machine),
memory is ``VmRSS`` / ``VmHWM`` from ``/proc/PID/status``, disk is the sum
of the regular files under the data directory. :func:`sqlite_breakdown`
splits tsagent's database by table and index with SQLite's ``dbstat``.

Only loopback addresses are used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
VICTORIA = Path("/usr/bin/victoria-metrics")
PROMETHEUS = Path("/usr/bin/prometheus")
TSAGENT_DB = "tsagent.db"  # agent.configured_store.DB_FILE; not imported so --help stays cheap
# tsagent's storage.flush_interval default: the "while running" snapshot waits this long.
TSAGENT_FLUSH_INTERVAL_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...), 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_load() -> str:
    """The 1/5/15-minute load averages, to print next to every figure (2 shared cores)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def dir_files(path: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under ``path`` (missing files skipped)."""
    out: dict[str, int] = {}
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(path))] = p.stat().st_size
        except FileNotFoundError:  # a daemon removed it while we walked
            continue
    return out


def dir_bytes(path: Path) -> int:
    return sum(dir_files(path).values())


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; raise if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout:.0f} s")


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait for a Prometheus-style ``/-/ready`` (tsagent, Prometheus)."""
    wait_http(base + "/-/ready", proc, timeout)


@dataclass
class Daemon:
    """One running daemon under test and where its data lives."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    write_path: str  # remote-write path under base
    data_dir: Path
    log_path: Path
    stopped_after_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def write_url(self) -> str:
        return self.base + self.write_path

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return status_kb(self.pid, "VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        return status_kb(self.pid, "VmHWM") * 1024

    def stop(self, timeout: float = 600.0) -> float:
        """SIGTERM, wait for a clean exit (killing after ``timeout``); seconds taken."""
        t0 = time.perf_counter()
        if not stop_process(self.proc, timeout):
            self.notes.append(f"did not stop within {timeout:.0f} s; killed")
        self.stopped_after_s = time.perf_counter() - t0
        return self.stopped_after_s

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    """SIGTERM and wait; kill after ``timeout``. False when it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    return True


def _spawn(
    argv: list[str], log: Path, cwd: Path | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    env.pop("NOTIFY_SOCKET", None)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def start_tsagent(
    tmp: Path,
    *,
    extra_config: str = "",
    entry: tuple[str, ...] = ("-m", "agent.cli"),
    env_extra: dict[str, str] | None = None,
) -> Daemon:
    """``tsagent run`` on a free port; data in ``tmp/tsagent``; default storage settings.

    ``entry`` replaces ``-m agent.cli`` (``benchmarks/traced_daemon.py`` runs
    the same CLI with tracemalloc on); ``env_extra`` adds environment variables.
    """
    data = tmp / "tsagent"
    data.mkdir(parents=True)
    port = free_port()
    cfg = tmp / "tsagent.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"data_dir: {data}\n"
        "log:\n  level: warning\n"
        f"server:\n  max_body_bytes: {64 * 1024 * 1024}\n" + extra_config
    )
    proc = _spawn(
        [sys.executable, *entry, "run", "-c", str(cfg)], tmp / "tsagent.log", ROOT, env_extra
    )
    base = f"http://127.0.0.1:{port}"
    d = Daemon("tsagent", proc, base, "/api/v1/write", data, tmp / "tsagent.log")
    try:
        wait_ready(d.base, proc)
    except Exception:
        d.stop(10)
        raise
    return d


def start_victoria(tmp: Path) -> Daemon | None:
    """VictoriaMetrics single-node with its defaults; None when not installed."""
    if not VICTORIA.exists():
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "victoria"
    port = free_port()
    proc = _spawn(
        [
            str(VICTORIA),
            f"-storageDataPath={data}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
        ],
        tmp / "victoria.log",
    )
    d = Daemon(
        "VictoriaMetrics",
        proc,
        f"http://127.0.0.1:{port}",
        "/api/v1/write",
        data,
        tmp / "victoria.log",
    )
    try:
        wait_http(d.base + "/health", proc)
    except Exception:
        d.stop(10)
        raise
    return d


def start_prometheus(tmp: Path, extra_args: tuple[str, ...] = ()) -> Daemon | None:
    """Prometheus 2.42 as a remote-write receiver with its defaults; None when not installed."""
    if not PROMETHEUS.exists():
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "prometheus"
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text('{"global": {"evaluation_interval": "1m"}}\n')
    proc = _spawn(
        [
            str(PROMETHEUS),
            f"--config.file={cfg}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-remote-write-receiver",
            "--log.level=warn",
            *extra_args,
        ],
        tmp / "prometheus.log",
    )
    d = Daemon(
        "Prometheus 2.42",
        proc,
        f"http://127.0.0.1:{port}",
        "/api/v1/write",
        data,
        tmp / "prometheus.log",
    )
    try:
        wait_ready(d.base, proc)
    except Exception:
        d.stop(10)
        raise
    return d


def tracemalloc_snapshot(d: Daemon, out: Path, timeout: float = 300.0) -> Any:
    """Ask a daemon started from ``traced_daemon.py`` for a snapshot (SIGUSR1) and load it."""
    import tracemalloc

    out.unlink(missing_ok=True)
    d.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not out.exists():
        if d.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no tracemalloc snapshot from {d.name}: {d.log_tail()}")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(out))


STARTERS = {"tsagent": start_tsagent, "victoria": start_victoria, "prometheus": start_prometheus}


def start(which: str, tmp: Path) -> Daemon | None:
    """Start ``tsagent``, ``victoria`` or ``prometheus`` in its own subdirectory of ``tmp``."""
    sub = tmp / which
    sub.mkdir(parents=True, exist_ok=True)
    return STARTERS[which](sub)


def missing_note(which: str) -> str:
    path = {"victoria": VICTORIA, "prometheus": PROMETHEUS}.get(which)
    return f"{path} not installed (Debian package '{path.name if path else which}')"


# --- SQLite breakdown ------------------------------------------------------------------------


def sqlite_breakdown(db: Path) -> dict[str, Any]:
    """Where the bytes of a tsagent database go, from ``dbstat`` and the freelist.

    Opened read-only (``mode=ro``), so it works on a live database (it sees
    the last committed state, WAL included) and on a stopped one. Size the
    directory *before* calling this: a read-only WAL connection may create
    the ``-shm``/``-wal`` files of a stopped database.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_schema"))
        rows = conn.execute(
            "SELECT name, count(*), sum(pgsize), sum(payload), sum(unused)"
            " FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC"
        ).fetchall()
    finally:
        conn.close()
    objects = [
        {
            "name": name,
            "type": kinds.get(name, "table" if name.startswith("sqlite_") else "?"),
            "pages": pages,
            "bytes": size,
            "payload": payload,
            "unused": unused,
        }
        for name, pages, size, payload, unused in rows
    ]
    return {
        "page_size": page_size,
        "page_count": page_count,
        "file_bytes": page_size * page_count,
        "free_pages": free_pages,
        "free_bytes": free_pages * page_size,
        "objects": objects,
    }


def breakdown_markdown(bd: dict[str, Any], samples: int, series: int) -> str:
    """A Markdown table of :func:`sqlite_breakdown`, per object, free pages last."""
    lines = [
        "| object | type | bytes | B/sample | B/series | payload | unused in pages |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    small = [o for o in bd["objects"] if o["pages"] <= 1]
    for o in bd["objects"]:
        if o["pages"] <= 1:
            continue
        lines.append(
            f"| `{o['name']}` | {o['type']} | {o['bytes']:,} | {o['bytes'] / samples:.3f} | "
            f"{o['bytes'] / series:,.0f} | {o['payload']:,} | {o['unused']:,} |"
        )
    if small:
        size = sum(o["bytes"] for o in small)
        lines.append(
            f"| {len(small)} other tables and indexes of one page each | | {size:,} | "
            f"{size / samples:.3f} | {size / series:,.0f} | | |"
        )
    lines.append(
        f"| free pages ({bd['free_pages']:,} x {bd['page_size']}) | freelist | "
        f"{bd['free_bytes']:,} | {bd['free_bytes'] / samples:.3f} | "
        f"{bd['free_bytes'] / series:,.0f} | | |"
    )
    lines.append(
        f"| **whole file** ({bd['page_count']:,} pages) | | **{bd['file_bytes']:,}** | "
        f"**{bd['file_bytes'] / samples:.3f}** | {bd['file_bytes'] / series:,.0f} | | |"
    )
    return "\n".join(lines)


# --- py-spy ----------------------------------------------------------------------------------


def py_spy_path() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start_py_spy(pid: int, out: str, fmt: str = "raw", rate: int = 200) -> subprocess.Popen[bytes]:
    """``py-spy record`` on ``pid`` until :func:`stop_py_spy`; ``raw`` = collapsed stacks."""
    spy = subprocess.Popen(
        [py_spy_path(), "record", "-o", out, "-p", str(pid), "-r", str(rate), "-f", fmt],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches before the load starts
    if spy.poll() is not None:
        err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
        raise RuntimeError(f"py-spy exited with {spy.returncode}: {err[:500]}")
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(120)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


# Innermost frames that are a thread waiting, not working, which py-spy's idle
# detection does not always recognise (a pool worker blocked in queue.get, the
# event loop in epoll_wait).
IDLE_LEAVES = frozenset(
    {
        ("_worker", "thread.py"),
        ("EpollSelector.select", "selectors.py"),
        ("Condition.wait", "threading.py"),
    }
)


def collapsed_top(path: Path, top: int = 15) -> tuple[int, int, list[tuple[str, float, float]]]:
    """Summarise py-spy ``raw`` (collapsed) stacks: (busy samples, idle samples, rows).

    Each row is (function, self %, total %) of the busy samples. Self share
    counts samples whose innermost frame is the function (native code such
    as SQLite's is charged to the Python line that called it); total share
    counts samples with the function anywhere on the stack (once per
    sample). Line numbers are dropped so a function is one row. Samples
    whose innermost frame is in :data:`IDLE_LEAVES` are counted apart.
    """
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    n = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        leaf, _, where = stack.rsplit(";", 1)[-1].partition(" (")
        if (leaf, Path(where.rsplit(":", 1)[0]).name) in IDLE_LEAVES:
            idle += c
            continue
        n += c
        self_c[frames[-1]] += c
        for f in set(frames):
            total_c[f] += c
    rows = [(f, 100 * self_c[f] / n, 100 * total_c[f] / n) for f, _ in self_c.most_common(top)]
    return n, idle, rows


def _frame_name(frame: str) -> str:
    # py-spy frames look like "function (path/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    short = "/".join(Path(file).parts[-2:]) if file else ""
    return f"{name} ({short})" if short else name


def group_files(files: dict[str, int]) -> dict[str, int]:
    """Bytes per component of a data directory, for the "where the bytes go" tables.

    tsagent: per file (``tsagent.db``, ``-wal``, ``-shm``); VictoriaMetrics:
    ``data/small``, ``data/big``, ``indexdb``...; Prometheus: ``wal``,
    ``chunks_head`` and ``blocks`` (its ULID-named block directories).
    """
    out: Counter[str] = Counter()
    for rel, size in files.items():
        parts = Path(rel).parts
        head = parts[0]
        if len(head) == 26 and head.isalnum() and head.isupper():
            key = "blocks"
        elif head == "data" and len(parts) > 2:
            key = "/".join(parts[:2])
        else:
            key = head
        out[key] += size
    return dict(out.most_common())
