"""Run tsagent as systemd or a container would, on its default ports, in a test.

The deployment tests and the docs' snippets use the defaults (127.0.0.1:9201)
on purpose, yet several test runs share one machine. Each daemon therefore
gets a private network namespace (``unshare --net``, its own loopback), and
clients reach it with ``nsenter --net``. The daemon can drop to an
unprivileged user with ``setpriv``, as ``DynamicUser=yes`` would. Both need
root (CI runs as root); without it the tests that need them skip and say why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:9201"

# What systemd gives a service: a fixed PATH and nothing from the caller's shell.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        sys.stdout.write(str(r.status) + "\\n" + r.read().decode())
except urllib.error.HTTPError as e:
    sys.stdout.write(str(e.code) + "\\n" + e.read().decode())
"""


def private_net_unavailable() -> str | None:
    """Why a private network namespace cannot be had here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root for a private network namespace (unshare --net, nsenter)"
    for tool in ("unshare", "nsenter", "ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux/iproute2) is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net is not permitted here: {probe.stderr.strip()}"
    return None


def unprivileged_ids() -> tuple[int, int]:
    """The ``nobody`` user's uid and gid: the closest thing to a DynamicUser."""
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def install_python() -> str:
    """The interpreter a production install would use: the system's python3 if >= 3.11.

    Falls back to the one running the tests (which may live where ``nobody``
    cannot read it; :func:`unprivileged_unavailable` then says so).
    """
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        ok = Path(candidate).exists() and subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
        )
        if ok and ok.returncode == 0:
            return candidate
    return sys.executable


def unprivileged_unavailable(program: Path) -> str | None:
    """Why ``nobody`` cannot run ``program`` (a script whose interpreter must be readable)."""
    uid, gid = unprivileged_ids()
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    probe = subprocess.run(
        [*drop, "sh", "-c", 'exec "$0" --version', str(program)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"nobody cannot run {program}: {probe.stderr.strip()}"
    return None


def open_tree(path: Path) -> None:
    """Let an unprivileged user traverse ``path`` (pytest's tmp dirs are 0700)."""
    path.chmod(0o755)


class NotifySocket:
    """The ``NOTIFY_SOCKET`` systemd would listen on, to see READY=1 and friends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # the service may run as another user

    def wait_for(self, expected: str, service: ServiceProcess, timeout: float = 60) -> str:
        proc = service.proc
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"exited {proc.returncode} before {expected}: {service.log()}"
                    ) from None
                continue
            if expected in msg.split("\n"):
                return msg
        raise AssertionError(f"no {expected} within {timeout}s")

    def close(self) -> None:
        self.sock.close()


class ServiceProcess:
    """A command started like a unit's ExecStart: own netns, service env, maybe another user."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        user: tuple[int, int] | None = None,
        cwd: str = "/",
    ) -> None:
        cmd = list(argv)
        if user is not None:
            uid, gid = user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **env}
        self.proc = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=self._log, stderr=self._log)

    def run_in_net(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command inside the service's network namespace."""
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def get(self, path: str) -> tuple[int, str]:
        out = self.run_in_net([sys.executable, "-c", _GET, DEFAULT_URL + path])
        assert out.returncode == 0, out.stderr
        status, _, body = out.stdout.partition("\n")
        return int(status), body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        """The exit status of a process expected to end by itself."""
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code


def exec_start(unit_text: str) -> list[str]:
    """The unit's ``ExecStart=`` split into argv (no systemd specifiers are used in ours)."""
    import shlex

    lines = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


def unit_directives(unit_text: str) -> dict[str, str]:
    """``Key=value`` lines of a unit (the last one wins, as in systemd for most keys)."""
    out: dict[str, str] = {}
    for line in unit_text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out
