"""The application in-process: routes, /metrics, auth, body limits, plugin lifecycle."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.plugin_api import hookimpl
from agent.web.app import CONTEXT_KEY, StartupError, make_app
from agent.web.security import hash_password
from tests.fixture_plugins import recorder

PASSWORD_HASH = hash_password("pw", rounds=4)

AUTH_CONFIG = f"""
auth:
  write:
    bearer_tokens: [write-secret]
  read:
    basic_auth:
      grafana: '{PASSWORD_HASH}'
  admin:
    bearer_tokens: [admin-secret]
server:
  max_body_bytes: 1000
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def recorder_plugin() -> list[tuple[str, object]]:
    recorder.EVENTS.clear()
    return [("recorder", recorder)]


async def test_health_ready_and_metrics(
    aiohttp_client: Any, make_config: Callable[..., Any], recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    assert (await client.get("/-/healthy")).status == 200
    ready = await client.get("/-/ready")
    assert ready.status == 200 and "Ready" in await ready.text()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    metrics = samples(await resp.text())
    assert metrics[("tsagent_samples_ingested_total", (("source", "recorder"),))] == 1
    assert metrics[("tsagent_active_series", ())] >= 1
    build = [k for k in metrics if k[0] == "tsagent_build_info"]
    assert build and ("version", "0.1.0") in build[0][1]
    durations = [k for k in metrics if k[0] == "tsagent_http_request_duration_seconds_count"]
    assert any(("handler", "/-/healthy") in k[1] for k in durations)
    assert metrics[("tsagent_flush_duration_seconds_count", ())] == 0
    await client.app[CONTEXT_KEY].require_store().flush(all=True)
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics[("tsagent_flush_duration_seconds_count", ())] >= 1
    assert metrics[("tsagent_segments", ())] == 1
    # Where the disk goes: the file, SQLite's -wal, free pages, the log, the series tables.
    await client.app[CONTEXT_KEY].require_store().refresh_disk_usage()
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics[("tsagent_storage_file_bytes", ())] > 0
    assert metrics[("tsagent_storage_series_index_bytes", ())] > 0
    for name in ("sqlite_wal", "free", "log"):
        assert metrics[(f"tsagent_storage_{name}_bytes", ())] >= 0
    assert ("tsagent_wal_checkpoints_total", ()) in metrics


async def test_openmetrics_negotiation(aiohttp_client: Any, make_config: Any) -> None:
    config, host = make_config()
    client = await aiohttp_client(make_app(config, host))
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


async def test_auth_per_group(aiohttp_client: Any, make_config: Any, recorder_plugin: Any) -> None:
    config, host = make_config(AUTH_CONFIG, extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    good_basic = "Basic " + base64.b64encode(b"grafana:pw").decode()
    bad_basic = "Basic " + base64.b64encode(b"grafana:nope").decode()
    # public
    assert (await client.get("/-/healthy")).status == 200
    # read group: basic auth
    missing = await client.get("/metrics")
    assert missing.status == 401
    assert await missing.text() == "unauthorized\n"
    assert "WWW-Authenticate" in missing.headers
    assert (await client.get("/metrics", headers={"Authorization": bad_basic})).status == 401
    assert (await client.get("/metrics", headers={"Authorization": good_basic})).status == 200
    # write group: bearer; someone else's credentials are 403, nonsense is 401
    post = client.post
    assert (await post("/test/echo", data=b"x")).status == 401
    assert (
        await post("/test/echo", data=b"x", headers={"Authorization": "Bearer nope"})
    ).status == 401
    assert (
        await post("/test/echo", data=b"x", headers={"Authorization": good_basic})
    ).status == 403
    ok = await post("/test/echo", data=b"xyz", headers={"Authorization": "Bearer write-secret"})
    assert ok.status == 200 and await ok.text() == "3 bytes"
    # admin group
    admin = {"Authorization": "Bearer admin-secret"}
    assert (await client.get("/api/v1/status/plugins")).status == 401
    assert (await client.get("/api/v1/status/plugins", headers=admin)).status == 200
    # a 401 body says nothing about why
    texts = {
        await (await client.get("/metrics", headers={"Authorization": h})).text()
        for h in ("Bearer nope", bad_basic, "Digest x")
    }
    assert texts == {"unauthorized\n"}


async def test_oversized_body_is_413(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(AUTH_CONFIG, extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    headers = {"Authorization": "Bearer write-secret"}
    resp = await client.post("/test/echo", data=b"x" * 1001, headers=headers)
    assert resp.status == 413
    resp = await client.post("/test/echo", data=b"x" * 1000, headers=headers)
    assert resp.status == 200

    async def chunks() -> Any:  # no Content-Length: the read limit still applies
        for _ in range(11):
            yield b"x" * 100

    resp = await client.post("/test/echo", data=chunks(), headers=headers)
    assert resp.status == 413


async def test_unauthenticated_oversized_body_is_401_first(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(AUTH_CONFIG, extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    assert (await client.post("/test/echo", data=b"x" * 5000)).status == 401


# --- hooks: one test each (see test_plugins.test_every_hook_has_a_test) ---------


async def test_hook_config_schema(make_config: Any, recorder_plugin: Any) -> None:
    from agent.config import ConfigError

    config, _ = make_config("test:\n  recorder:\n    level: 3\n", extra_plugins=recorder_plugin)
    assert config.section("test.recorder")["level"] == 3
    with pytest.raises(ConfigError, match=r"test\.recorder\.levl: unknown key"):
        make_config("test:\n  recorder:\n    levl: 3\n", extra_plugins=recorder_plugin)


def test_hook_validate_config(make_config: Any, recorder_plugin: Any) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match=r"test\.recorder\.level: must be 0\.\.10, found 11"):
        make_config("test:\n  recorder:\n    level: 11\n", extra_plugins=recorder_plugin)


async def test_hook_register_codecs(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config("storage:\n  codec: test-raw\n", extra_plugins=recorder_plugin)
    app = make_app(config, host)
    await aiohttp_client(app)
    ctx = app[CONTEXT_KEY]
    assert "test-raw" in ctx.codecs and "raw" in ctx.codecs


async def test_unknown_codec_refuses_to_start(make_config: Any) -> None:
    config, host = make_config("storage:\n  codec: nosuch\n")
    app = make_app(config, host)
    app.freeze()
    with pytest.raises(ValueError, match=r"storage\.codec: unknown codec 'nosuch'"):
        await app.startup()
    await app.cleanup()


async def test_hook_register_ingestors_and_lifecycle_order(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    app = make_app(config, host)
    client = await aiohttp_client(app)
    assert recorder.EVENTS == ["exporter.start", "ingestor.start", "startup"]
    await client.close()
    assert recorder.EVENTS[3:] == ["shutdown", "ingestor.stop", "exporter.stop"]


async def test_hook_register_exporters(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    app = make_app(config, host)
    await aiohttp_client(app)
    assert [e.name for e in app[CONTEXT_KEY].exporters] == ["recorder-out"]


async def test_hook_register_notifiers(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    app = make_app(config, host)
    await aiohttp_client(app)
    notifier = app[CONTEXT_KEY].notifiers["recorder-notify"]
    await notifier.notify([{"labels": {}}], {})
    assert "notify:1" in recorder.EVENTS


async def test_hook_register_routes(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    resp = await client.post("/test/echo", data=b"hello")
    assert await resp.text() == "5 bytes"


async def test_hook_register_query_functions(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    app = make_app(config, host)
    client = await aiohttp_client(app)
    assert "double_count_over_time" in app[CONTEXT_KEY].query_functions
    ctx = app[CONTEXT_KEY]
    await ctx.append_samples(
        [((("__name__", "x"),), t, 1.0) for t in (1_000, 16_000, 31_000)], source="test"
    )
    resp = await client.get(
        "/api/v1/query", params={"query": "double_count_over_time(x[1m])", "time": "40"}
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["data"]["result"][0]["value"][1] == "6"


class _WrongPlugins:
    """A plugin whose hooks return objects of the wrong kind."""

    @hookimpl
    def register_query_functions(self) -> dict[str, Any]:
        return {"double": lambda x: 2 * x}  # not a RangeFunction: PromQL could never call it

    @hookimpl
    def register_ingestors(self) -> list[Any]:
        return [object()]


async def test_hook_results_are_checked_against_their_protocols(
    aiohttp_client: Any, make_config: Any
) -> None:
    config, host = make_config(extra_plugins=[("wrong", _WrongPlugins())])
    app = make_app(config, host)
    await aiohttp_client(app)
    failures = {(f.name, f.stage): f.error for f in host.failures}
    assert (
        "not an agent.plugin_api.RangeFunction" in failures[("wrong", "register_query_functions")]
    )
    error = failures[("wrong", "register_ingestors")]
    assert "which is not Ingestor (missing name, start, stop)" in error
    assert "double" not in app[CONTEXT_KEY].query_functions


async def test_a_required_plugin_with_a_wrong_hook_result_stops_startup(
    aiohttp_client: Any, make_config: Any
) -> None:
    config, host = make_config(
        "plugins:\n  enabled: [wrong]\n", extra_plugins=[("wrong", _WrongPlugins())]
    )
    with pytest.raises(StartupError, match=r"'wrong' failed at register_query_functions"):
        await aiohttp_client(make_app(config, host))


async def test_hook_startup(aiohttp_client: Any, make_config: Any, recorder_plugin: Any) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    await aiohttp_client(make_app(config, host))
    assert "startup" in recorder.EVENTS


async def test_hook_shutdown(aiohttp_client: Any, make_config: Any, recorder_plugin: Any) -> None:
    config, host = make_config(extra_plugins=recorder_plugin)
    client = await aiohttp_client(make_app(config, host))
    await client.close()
    assert recorder.EVENTS[-3] == "shutdown"


async def test_failing_optional_plugin_is_skipped(
    aiohttp_client: Any, make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(
        "test:\n  recorder:\n    fail_start: true\n", extra_plugins=recorder_plugin
    )
    app = make_app(config, host)
    client = await aiohttp_client(app)
    ctx = app[CONTEXT_KEY]
    assert ctx.ready
    assert [(f.name, f.stage) for f in ctx.plugins.failures] == [
        ("recorder", "ingestor recorder-in start")
    ]
    metrics = samples(await (await client.get("/metrics")).text())
    key = (
        "tsagent_plugin_errors_total",
        (("plugin", "recorder"), ("stage", "ingestor recorder-in start")),
    )
    assert metrics[key] == 1


async def test_failing_required_plugin_refuses_and_unwinds(
    make_config: Any, recorder_plugin: Any
) -> None:
    config, host = make_config(
        "plugins:\n  enabled: [recorder]\ntest:\n  recorder:\n    fail_start: true\n",
        extra_plugins=recorder_plugin,
    )
    app = make_app(config, host)
    app.freeze()
    with pytest.raises(
        StartupError, match="plugin 'recorder' failed at ingestor recorder-in start"
    ):
        await app.startup()
    await app.cleanup()
    # the exporter that had started was stopped again; nothing is left half-running
    assert recorder.EVENTS == ["exporter.start", "exporter.stop"]
    assert app[CONTEXT_KEY].store is None
