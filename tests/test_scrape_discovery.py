"""Scrape discovery: file_sd_configs (YAML/JSON, globs, change and refresh) and
http_sd_configs, with the ``__meta_*`` labels relabeling sees, over real sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from plugins.scrape.discovery import FileProvider, parse_groups
from tests.conftest import wait_until
from tests.test_scrape import Page, Target, lab, manager, read, serve, start

PAGE = "# TYPE up_probe gauge\nup_probe 1\n"


def sd_yaml(extra: str) -> str:
    return f"""
ingest:
  scrape:
    stale_markers_on_stop: false
    global:
      scrape_interval: 0.2
      scrape_timeout: 0.15
    scrape_configs:
      - job_name: sd
{extra}
"""


def test_parse_groups_and_errors() -> None:
    groups = [{"targets": ["a:1", "b:2"], "labels": {"env": "prod"}}, {"targets": ["c:3"]}]
    got = parse_groups(groups, {"__meta_filepath": "/x.json"}, "/x.json")
    assert got == [
        ("a:1", lab(__meta_filepath="/x.json", env="prod")),
        ("b:2", lab(__meta_filepath="/x.json", env="prod")),
        ("c:3", lab(__meta_filepath="/x.json")),
    ]
    for bad, where in (
        ({"targets": []}, "list"),
        ([{"targets": "a:1"}], "[0].targets"),
        ([{"targets": ["a:1"], "labels": {"bad-name": "x"}}], "[0].labels.bad-name"),
        ([{"targets": ["a:1"], "labels": {"n": 1}}], "[0].labels.n"),
        ([{"targets": ["a:1"], "lables": {}}], "[0].lables"),
    ):
        with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
            parse_groups(bad, {}, "f")


def test_file_provider_change_refresh_and_bad_file(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter

    count = Counter("c", "c", ["m", "r"], registry=CollectorRegistry())
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"targets": ["h:1"]}]))
    p = FileProvider((str(tmp_path / "*.json"),), refresh=300, count=count)
    assert p.poll(0.0) is True
    assert [a for a, _ in p.targets()] == ["h:1"]
    assert p.poll(1.0) is False  # nothing changed
    f.write_text(json.dumps([{"targets": ["h:1", "h:2"]}]))
    assert p.poll(2.0) is True and len(p.targets()) == 2
    f.write_text("{broken")  # a bad file keeps its last good targets
    assert p.poll(3.0) is False and len(p.targets()) == 2
    (tmp_path / "b.json").write_text(json.dumps([{"targets": ["h:3"]}]))
    assert p.poll(4.0) is True and len(p.targets()) == 3
    (tmp_path / "b.json").unlink()
    assert p.poll(5.0) is True and len(p.targets()) == 2


async def test_file_sd_targets_meta_labels_and_changes(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    a = await serve(aiohttp_server, Target([Page(PAGE)]))
    b = await serve(aiohttp_server, Target([Page(PAGE)]))
    sd_dir = tmp_path / "sd"
    sd_dir.mkdir()
    (sd_dir / "web.yml").write_text(f"- targets: ['{a}']\n  labels: {{team: web}}\n")
    extra = f"""        file_sd_configs:
          - files: ['{sd_dir}/*.yml', '{sd_dir}/*.json']
            refresh_interval: 5m
        relabel_configs:
          - source_labels: [__meta_filepath]
            regex: '.*/([^/]+)\\.(yml|json)'
            target_label: sd_file
            replacement: $1
"""
    ctx = await start(aiohttp_client, make_config, sd_yaml(extra))
    m = manager(ctx)

    async def probes() -> dict[Any, Any]:
        return await read(ctx, "up_probe")

    await wait_until("one scrape loop", lambda: len(m.loops) == 1)
    [first] = m.loops.values()
    assert first.target.labels == lab(instance=a, job="sd", sd_file="web", team="web")
    # A new file: picked up within a watch interval, without a reload.
    (sd_dir / "db.json").write_text(json.dumps([{"targets": [b], "labels": {"team": "db"}}]))
    await wait_until("two scrape loops", lambda: len(m.loops) == 2, timeout=10)
    assert first in m.loops.values()  # the unchanged target's loop was not restarted
    got = {dict(loop.target.labels)["sd_file"] for loop in m.loops.values()}
    assert got == {"web", "db"}
    await wait_until(
        "every target scraped", lambda: all(loop.completed >= 1 for loop in m.loops.values())
    )
    data = await probes()
    assert lab(__name__="up_probe", instance=b, job="sd", sd_file="db", team="db") in data
    # Removing the file removes the target.
    (sd_dir / "db.json").unlink()
    await wait_until("one scrape loop", lambda: len(m.loops) == 1, timeout=10)


async def test_http_sd(aiohttp_server: Any, aiohttp_client: Any, make_config: Any) -> None:
    a = await serve(aiohttp_server, Target([Page(PAGE)]))
    answers: list[web.Response] = []

    async def sd(request: web.Request) -> web.Response:
        return answers[0] if len(answers) == 1 else answers.pop(0)

    answers.append(web.json_response([{"targets": [a], "labels": {"dc": "eu"}}]))
    app = web.Application()
    app.router.add_get("/sd", sd)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/sd"
    extra = f"""        http_sd_configs:
          - url: {url}
            refresh_interval: 60s
        relabel_configs:
          - source_labels: [__meta_url]
            target_label: sd_source
"""
    ctx = await start(aiohttp_client, make_config, sd_yaml(extra))
    m = manager(ctx)
    await wait_until("one scrape loop", lambda: len(m.loops) == 1)
    [loop] = m.loops.values()
    assert loop.target.labels == lab(dc="eu", instance=a, job="sd", sd_source=url)
    await wait_until("loop.completed >= 1", lambda: loop.completed >= 1)
    assert lab(__name__="up_probe", dc="eu", instance=a, job="sd", sd_source=url) in await read(
        ctx, "up_probe"
    )
    # A failing refresh keeps the targets; counted as a failure.
    [provider] = m.discovery.providers.values()
    answers[:] = [web.Response(status=500)]
    assert await provider.fetch(m.discovery._http()) is False  # type: ignore[union-attr]
    assert [addr for addr, _ in provider.targets()] == [a]
    registry = ctx.metrics.registry
    failures = {"mechanism": "http", "result": "failure"}
    assert registry.get_sample_value("tsagent_sd_refreshes_total", failures) == 1


def test_config_errors(make_config: Any) -> None:
    from agent.config import ConfigError

    bad = """        file_sd_configs:
          - files: ['targets.txt']
        http_sd_configs:
          - url: ftp://x
"""
    with pytest.raises(ConfigError) as info:
        make_config(sd_yaml(bad))
    text = str(info.value)
    assert "file_sd_configs[0].files" in text and "http_sd_configs[0].url" in text


def test_file_provider_refresh_rereads_unchanged_stat(tmp_path: Path) -> None:
    """A change the stat check cannot see (same size, mtime put back) waits for refresh."""
    import os

    from prometheus_client import CollectorRegistry, Counter

    count = Counter("c", "c", ["m", "r"], registry=CollectorRegistry())
    f = tmp_path / "a.yml"
    f.write_text("- targets: ['h:1']\n")
    st = f.stat()
    p = FileProvider((str(f),), refresh=60, count=count)
    assert p.poll(0.0) is True
    f.write_text("- targets: ['h:2']\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.poll(30.0) is False and [a for a, _ in p.targets()] == ["h:1"]
    assert p.poll(61.0) is True and [a for a, _ in p.targets()] == ["h:2"]
