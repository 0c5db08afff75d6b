"""The container image's pieces, tested with or without a container runtime.

CI has ``docker`` only as a client at best, and no registry to pull
``python:3.11-slim`` from, so the image itself is built and run only where
``docker info`` answers (``test_image_builds_and_becomes_healthy``; skipped with
the reason otherwise). Everything the image runs is tested without it: the
entrypoint with the image's environment (``STATE_DIRECTORY=/data``-like,
``CONFIGURATION_DIRECTORY``, ``TSAGENT_LISTEN``) as an unprivileged user on the
default port in a private network namespace, the healthcheck script, and the
Kubernetes example's embedded config through ``check-config``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import tsagent_cmd
from tests.deploy_helpers import (
    NotifySocket,
    ServiceProcess,
    open_tree,
    private_net_unavailable,
    unprivileged_ids,
    unprivileged_unavailable,
)

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "contrib" / "container" / "entrypoint.sh"
HEALTHCHECK = ROOT / "contrib" / "container" / "healthcheck.py"
NO_NETNS = private_net_unavailable()


def _dockerfile() -> dict[str, list[str]]:
    """Instructions of the final stage, by keyword."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.M)
    final: dict[str, list[str]] = {"FROM": [stages[-1].splitlines()[0].strip()]}
    for line in stages[-1].splitlines()[1:]:
        word, _, rest = line.strip().partition(" ")
        if word.isupper():
            final.setdefault(word, []).append(rest.strip())
    return final


def test_dockerfile_is_slim_non_root_with_a_data_volume_and_a_healthcheck() -> None:
    d = _dockerfile()
    assert re.fullmatch(r"python:3\.1[1-9]-slim", d["FROM"][0])
    user = d["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert d["VOLUME"] == ['["/data"]']
    env = " ".join(d["ENV"])
    assert "STATE_DIRECTORY=/data" in env and "CONFIGURATION_DIRECTORY=/etc/tsagent" in env
    assert "tsagent-healthcheck" in d["HEALTHCHECK"][0]
    assert d["ENTRYPOINT"] == ['["/usr/local/bin/tsagent-entrypoint"]']
    copied = " ".join(d["COPY"])
    assert (
        "contrib/container/entrypoint.sh" in copied and "contrib/container/healthcheck.py" in copied
    )
    # Runtime dependencies only: the wheel, never the [test] extra.
    assert "[test]" not in (ROOT / "Dockerfile").read_text()


def _load_healthcheck() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_url_follows_the_listen_address() -> None:
    url = _load_healthcheck().health_url
    assert url({}) == "http://127.0.0.1:9201/-/healthy"
    assert url({"TSAGENT_LISTEN": "0.0.0.0:9300"}) == "http://127.0.0.1:9300/-/healthy"
    assert url({"TSAGENT_LISTEN": "[::]:9201"}) == "http://127.0.0.1:9201/-/healthy"
    assert url({"TSAGENT_LISTEN": "[::1]:9201"}) == "http://[::1]:9201/-/healthy"
    assert url({"TSAGENT_HEALTH_URL": "https://x/-/healthy"}) == "https://x/-/healthy"


def test_healthcheck_fails_when_nothing_answers(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = {**os.environ, "TSAGENT_LISTEN": f"127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True)
    assert proc.returncode == 1 and b"unhealthy" in proc.stderr


def _image_env(tmp_path: Path, install: Path, **extra: str) -> dict[str, str]:
    """What the Dockerfile's ENV gives, with scratch directories for /data and /etc/tsagent.

    ``install`` is a ``contrib/install.sh`` prefix: the image's /opt/tsagent.
    """
    data = tmp_path / "data"
    etc = tmp_path / "etc"
    tmp = tmp_path / "tmp"
    for d in (data, etc, tmp):
        d.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    open_tree(tmp_path)
    uid, gid = unprivileged_ids()
    os.chown(data, uid, gid)
    bin_dir = install / "opt" / "tsagent" / "bin"
    reason = unprivileged_unavailable(bin_dir / "tsagent")
    if reason:
        pytest.skip(reason)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "STATE_DIRECTORY": str(data),
        "CONFIGURATION_DIRECTORY": str(etc),
        "TSAGENT_LISTEN": "0.0.0.0:9201",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(tmp),
        **extra,
    }


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's own tree is 0700 under root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tsagent-container-"))
    open_tree(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(scratch: Path, env: dict[str, str], *args: str) -> tuple[ServiceProcess, NotifySocket]:
    notify = NotifySocket(scratch / "notify")
    service = ServiceProcess(
        [str(ENTRYPOINT), *args],
        {**env, "NOTIFY_SOCKET": str(notify.path)},
        scratch / "daemon.log",
        user=unprivileged_ids(),
    )
    notify.wait_for("READY=1", service)
    return service, notify


@pytest.mark.skipif(NO_NETNS is not None, reason=str(NO_NETNS))
def test_entrypoint_runs_on_defaults_and_is_healthy(
    scratch: Path, production_install: Path
) -> None:
    env = _image_env(scratch, production_install)
    service, notify = _start(scratch, env)
    try:
        assert service.get("/-/ready")[0] == 200
        health = service.run_in_net(
            ["env", f"TSAGENT_LISTEN={env['TSAGENT_LISTEN']}", sys.executable, str(HEALTHCHECK)]
        )
        assert health.returncode == 0, health.stderr
        assert "listen=http://0.0.0.0:9201" in service.log()
        assert "config=<defaults>" in service.log()
        assert (scratch / "data" / "tsagent.db").stat().st_uid == unprivileged_ids()[0]
        assert service.stop() == 0, service.log()
    finally:
        service.stop()
        notify.close()


@pytest.mark.skipif(NO_NETNS is not None, reason=str(NO_NETNS))
def test_entrypoint_reads_a_mounted_config_and_passes_flags(
    scratch: Path, production_install: Path
) -> None:
    env = _image_env(scratch, production_install)
    (scratch / "etc" / "tsagent.yaml").write_text("storage:\n  retention: 7d\n")
    service, notify = _start(scratch, env, "--retention", "3d")
    try:
        assert service.get("/-/ready")[0] == 200
        assert f"config={scratch / 'etc' / 'tsagent.yaml'}" in service.log()
        assert service.stop() == 0, service.log()
    finally:
        service.stop()
        notify.close()


@pytest.mark.skipif(NO_NETNS is not None, reason=str(NO_NETNS))
def test_entrypoint_takes_the_config_from_the_environment(
    scratch: Path, production_install: Path
) -> None:
    yaml_text = "ingest:\n  statsd:\n    enabled: true\n    udp_listen: 127.0.0.1:9125\n"
    env = _image_env(scratch, production_install, TSAGENT_CONFIG_YAML=yaml_text)
    service, notify = _start(scratch, env)
    try:
        assert service.get("/-/ready")[0] == 200
        assert "config=" + str(scratch) + "/tmp/tsagent-config." in service.log()
        sent = service.run_in_net(
            [sys.executable, "-c", _STATSD_SEND, "deploy_test_hits:3|c"], timeout=30
        )
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, body = service.get("/api/v1/query?query=deploy_test_hits")
            if '"deploy_test_hits"' in body:
                break
            time.sleep(0.5)
        assert '"deploy_test_hits"' in body, body
    finally:
        service.stop()
        notify.close()


_STATSD_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[1].encode(), ("127.0.0.1", 9125))
"""


def test_entrypoint_refuses_two_configs_and_runs_other_commands(
    scratch: Path, production_install: Path
) -> None:
    tmp_path = scratch
    env = {
        **_image_env(tmp_path, production_install),
        "TSAGENT_CONFIG_YAML": "storage: {retention: 1d}",
    }
    (tmp_path / "etc" / "tsagent.yaml").write_text("{}\n")
    both = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert both.returncode == 2 and "use one" in both.stderr
    del env["TSAGENT_CONFIG_YAML"]
    check = subprocess.run(
        [str(ENTRYPOINT), "check-config", str(tmp_path / "etc" / "tsagent.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "configuration is valid" in check.stdout, check.stderr


def test_kubernetes_sidecar_example_config_is_valid(
    tmp_path: Path, subprocess_env: dict[str, Any]
) -> None:
    docs = list(yaml.safe_load_all((ROOT / "contrib" / "kubernetes" / "sidecar.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    config = tmp_path / "tsagent.yaml"
    config.write_text(config_map["data"]["tsagent.yaml"])
    env = {**subprocess_env, "POD_NAME": "myapp-0", "POD_NAMESPACE": "default"}
    check = subprocess.run(
        [*tsagent_cmd(), "check-config", str(config)], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["containers"] if c["name"] == "tsagent")
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert sidecar["securityContext"]["runAsUser"] != 0
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts["/etc/tsagent"] == "tsagent-config" and "/data" in mounts
    # docs/deployment.md shows the same config
    from tests.test_docs import blocks

    shown = [
        yaml.safe_load(b.text)
        for b in blocks(ROOT / "docs" / "deployment.md")
        if b.lang == "yaml" and "victoria-metrics.monitoring.svc" in b.text
    ]
    assert shown == [yaml.safe_load(config_map["data"]["tsagent.yaml"])]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert any("localhost:9201/api/v1/write" in str(e.get("value")) for e in app["env"])


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no container daemon answers `docker info`: " + info.stderr.strip()[-200:]
    return None


NO_DOCKER = _docker_unavailable()


def _need_base_image() -> None:
    """CI reaches package registries only: without the base image there is nothing to build."""
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    image = base.group(1) if base else "python:3.11-slim"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        pull = subprocess.run(["docker", "pull", image], capture_output=True, timeout=600)
        if pull.returncode:
            pytest.skip(f"the base image {image} is not here and cannot be pulled (no registry)")


@pytest.mark.integration
@pytest.mark.skipif(NO_DOCKER is not None, reason=str(NO_DOCKER))
def test_image_builds_and_becomes_healthy() -> None:
    _need_base_image()
    tag = "tsagent-test:ci"
    build = subprocess.run(
        ["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800
    )
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run(
        ["docker", "run", "-d", "--rm", tag], capture_output=True, text=True, check=True
    )
    container = run.stdout.strip()
    try:
        deadline = time.monotonic() + 120
        status = ""
        while time.monotonic() < deadline and status != "healthy":
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                capture_output=True,
                text=True,
            ).stdout.strip()
            time.sleep(2)
        assert status == "healthy"
        user = subprocess.run(
            ["docker", "exec", container, "id", "-u"], capture_output=True, text=True
        ).stdout.strip()
        assert user == "10001"
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
