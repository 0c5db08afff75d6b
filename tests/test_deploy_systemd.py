"""The production install and the systemd unit, as a fresh machine would run them.

There is no systemd as PID 1 in CI, so the unit is exercised the closest way
there is: ``contrib/install.sh`` installs into a scratch prefix (runtime
dependencies only), ``systemd-analyze verify`` checks the installed unit, and
the unit's own ``ExecStart`` line runs with the environment its directives give
(``STATE_DIRECTORY``, ``CONFIGURATION_DIRECTORY``, ``NOTIFY_SOCKET``, a clean
``PATH``, cwd ``/``) as the unprivileged ``nobody`` (``DynamicUser=yes``), on
the default port in a private network namespace. What is not exercised:
systemd's sandboxing itself (``ProtectSystem=`` and friends) and the
``SystemCallFilter=``, which only systemd can apply.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy_helpers import (
    NotifySocket,
    ServiceProcess,
    exec_start,
    open_tree,
    private_net_unavailable,
    unit_directives,
    unprivileged_ids,
    unprivileged_unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tsagent.service"
TEST_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "selenium", "aiosmtpd", "statsd", "datadog"}


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_install_has_runtime_dependencies_only(production_install: Path) -> None:
    pip = production_install / "opt" / "tsagent" / "bin" / "pip"
    listed = subprocess.run(
        [str(pip), "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"tsagent", "aiohttp", "numpy", "pluggy"} <= names
    assert not names & TEST_TOOLS, names & TEST_TOOLS
    link = production_install / "usr" / "local" / "bin" / "tsagent"
    assert (
        link.is_symlink()
        and link.resolve() == (production_install / "opt/tsagent/bin/tsagent").resolve()
    )
    # Not the checkout: the installed package is what runs (the dashboard's files included).
    py = production_install / "opt" / "tsagent" / "bin" / "python"
    where = subprocess.run(
        [str(py), "-c", "import agent, plugins.dashboard as d; print(agent.__file__, d.__file__)"],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    ).stdout
    assert str(ROOT) not in where and "site-packages" in where
    dashboard = Path(where.split()[1]).parent / "static"
    assert (dashboard / "index.html").is_file() and (dashboard / "vendor").is_dir()


def test_install_refuses_a_prefix_under_home(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "contrib" / "install.sh"), "--prefix", "/home/someone/tsagent"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "ProtectHome=yes" in proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_installed_unit_passes_systemd_analyze_verify(production_install: Path) -> None:
    unit = production_install / "etc" / "systemd" / "system" / "tsagent.service"
    proc = _verify(unit)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_shipped_unit_verifies_but_for_the_binary_it_expects() -> None:
    """Without an install, the only complaint may be the missing /usr/local/bin/tsagent."""
    proc = _verify(UNIT)
    if Path("/usr/local/bin/tsagent").exists():
        assert proc.returncode == 0, proc.stderr
    else:
        problems = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert problems == [
            "tsagent.service: Command /usr/local/bin/tsagent is not executable:"
            " No such file or directory"
        ], proc.stderr


def test_unit_keeps_its_hardening_and_needs_no_config_file() -> None:
    d = unit_directives(UNIT.read_text())
    assert d["DynamicUser"] == "yes" and d["StateDirectory"] == "tsagent"
    assert d["ConfigurationDirectory"] == "tsagent"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert d[key] == "yes", key
    assert d["ProtectSystem"] == "strict" and d["CapabilityBoundingSet"] == ""
    assert d["Type"] == "notify"
    argv = exec_start(UNIT.read_text())
    assert argv == ["/usr/local/bin/tsagent", "run"]  # no -c: a missing file is fine


@pytest.mark.skipif(private_net_unavailable() is not None, reason=str(private_net_unavailable()))
def test_exec_start_serves_on_a_fresh_machine_without_config(production_install: Path) -> None:
    """The Done-when: install, then the unit's ExecStart, answers /-/ready with no config."""
    unit = (production_install / "etc" / "systemd" / "system" / "tsagent.service").read_text()
    argv = exec_start(unit)
    assert argv[0] == str(production_install / "usr" / "local" / "bin" / "tsagent")
    state = production_install / "var" / "lib" / "tsagent"
    state.mkdir(parents=True)
    reason = unprivileged_unavailable(Path(argv[0]))
    if reason:
        pytest.skip(reason)
    uid, gid = unprivileged_ids()
    os.chown(state, uid, gid)
    state.chmod(0o750)
    etc = production_install / "etc" / "tsagent"
    assert list(etc.iterdir()) == []  # the install left no config behind
    run = production_install / "run"
    run.mkdir()
    open_tree(run)
    notify = NotifySocket(run / "notify")
    service = ServiceProcess(
        argv,
        {
            "STATE_DIRECTORY": str(state),
            "CONFIGURATION_DIRECTORY": str(etc),
            "NOTIFY_SOCKET": str(notify.path),
        },
        production_install / "daemon.log",
        user=(uid, gid),
    )
    try:
        notify.wait_for("READY=1", service)
        assert service.get("/-/ready") == (200, "tsagent is Ready.\n")
        db = state / "tsagent.db"
        assert db.exists() and db.stat().st_uid == uid
        assert "config=<defaults>" in service.log()

        # A config written later is read on reload (systemctl reload = SIGHUP).
        (etc / "tsagent.yaml").write_text("storage:\n  retention: 30d\n")
        service.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1", service)
        notify.wait_for("READY=1", service)
        status, metrics = service.get("/metrics")
        assert status == 200
        assert 'tsagent_config_reloads_total{result="success"} 1.0' in metrics, service.log()

        assert service.stop() == 0, service.log()
        assert not (state / "tsagent.db.lock").exists()  # a clean stop leaves no lock file
    finally:
        service.stop()
        notify.close()


@pytest.mark.skipif(private_net_unavailable() is not None, reason=str(private_net_unavailable()))
def test_exec_start_with_a_bad_config_exits_2_which_the_unit_does_not_restart(
    production_install: Path, tmp_path: Path
) -> None:
    unit = (production_install / "etc" / "systemd" / "system" / "tsagent.service").read_text()
    assert unit_directives(unit)["RestartPreventExitStatus"] == "2"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tsagent.yaml").write_text("storage:\n  retension: 5d\n")
    service = ServiceProcess(
        exec_start(unit),
        {"STATE_DIRECTORY": str(tmp_path), "CONFIGURATION_DIRECTORY": str(etc)},
        tmp_path / "daemon.log",
    )
    assert service.wait() == 2
    assert "storage.retension: unknown key" in service.log()


def test_install_from_a_wheel_built_elsewhere(tmp_path: Path) -> None:
    """The wheel route (docs/deployment.md, and the Dockerfile's build stage)."""
    from tests.deploy_helpers import install_python

    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = dist.glob("tsagent-*.whl")
    prefix = tmp_path / "opt" / "tsagent"
    where = ["--prefix", str(prefix), "--bin-dir", str(tmp_path / "bin")]
    where += ["--config-dir", str(tmp_path / "etc"), "--python", install_python()]
    done = subprocess.run(
        [str(ROOT / "contrib" / "install.sh"), "--source", str(wheel), "--no-systemd", *where],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "etc" / "systemd").exists()
    version = subprocess.run(
        [str(tmp_path / "bin" / "tsagent"), "--version"], capture_output=True, text=True, cwd="/"
    )
    assert version.stdout.startswith("tsagent 0.")
