"""Scraping over real sockets: real aiohttp targets, the real app, read back from the store.

Each target serves a scripted list of pages, one per request (the last one
repeats), so a test knows exactly what scrape N saw. Scrape intervals are
0.2 s; tests wait for a number of completed scrapes, stop the scraper and
read the store.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.context import AgentContext
from agent.model import Labels, Matcher, is_stale_nan, make_labels
from agent.web.app import CONTEXT_KEY, make_app
from plugins.scrape.scraper import ScrapeManager, TargetLoop
from tests.conftest import wait_until

Points = list[tuple[int, float]]


@dataclass
class Page:
    body: str = ""
    status: int = 200
    delay: float = 0.0
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Target:
    """A scripted HTTP target: request i gets pages[i] (the last page repeats)."""

    pages: list[Page]
    requests: list[dict[str, Any]] = field(default_factory=list)
    check: Callable[[web.Request], web.Response | None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"headers": dict(request.headers), "query": dict(request.query)})
        if self.check is not None:
            refused = self.check(request)
            if refused is not None:
                return refused
        page = self.pages[min(len(self.requests), len(self.pages)) - 1]
        if page.delay:
            await asyncio.sleep(page.delay)
        return web.Response(
            status=page.status, body=page.body.encode(), headers={"Content-Type": page.content_type}
        )


async def serve(aiohttp_server: Any, target: Target, path: str = "/metrics") -> str:
    app = web.Application()
    app.router.add_get(path, target.handle)
    server = await aiohttp_server(app)
    return f"127.0.0.1:{server.port}"


def job_yaml(address: str, extra: str = "", name: str = "t") -> str:
    return f"""
ingest:
  scrape:
    stale_markers_on_stop: false
    global:
      scrape_interval: 0.2
      scrape_timeout: 0.15
    scrape_configs:
      - job_name: {name}
        static_configs:
          - targets: ['{address}']
            labels: {{env: test}}
{extra}
"""


async def start(aiohttp_client: Any, make_config: Any, text: str) -> AgentContext:
    config, host = make_config(text)
    app = make_app(config, host)
    await aiohttp_client(app)
    return app[CONTEXT_KEY]


def manager(ctx: AgentContext) -> ScrapeManager:
    [m] = [i for i in ctx.ingestors if isinstance(i, ScrapeManager)]
    return m


def only_loop(ctx: AgentContext) -> TargetLoop:
    [loop] = manager(ctx).loops.values()
    return loop


async def scrape_n(ctx: AgentContext, n: int) -> None:
    """Wait for n completed scrapes of the only target, then stop scraping."""
    loop = only_loop(ctx)
    await wait_until("loop.completed >= n", lambda: loop.completed >= n)
    await manager(ctx).stop()


async def read(ctx: AgentContext, name: str) -> dict[Labels, Points]:
    data = await ctx.require_store().select([Matcher.of("__name__", "=", name)], 0, 2**62)
    return {
        d.labels: list(zip(d.timestamps.tolist(), d.values.tolist(), strict=True)) for d in data
    }


async def read_one(ctx: AgentContext, name: str) -> tuple[Labels, Points]:
    found = await read(ctx, name)
    assert len(found) == 1, found
    [(labels, points)] = found.items()
    return labels, points


def lab(**kw: str) -> Labels:
    return make_labels(kw)


PAGE1 = """# HELP foo A gauge.
# TYPE foo gauge
foo{a="1"} 1
foo{a="2"} 2.5
# TYPE reqs counter
reqs 7
bar{job="exposed"} 3
dropme 1
"""
PAGE2 = """# TYPE foo gauge
foo{a="1"} 10
foo{a="2"} 20
# TYPE reqs counter
reqs 8
baz 1
dropme 2
"""


async def test_samples_labels_report_and_series_staleness(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    target = Target([Page(PAGE1), Page(PAGE2)])
    addr = await serve(aiohttp_server, target)
    extra = """        metric_relabel_configs:
          - source_labels: [__name__]
            regex: dropme
            action: drop
"""
    ctx = await start(aiohttp_client, make_config, job_yaml(addr, extra))
    await scrape_n(ctx, 3)

    base = {"job": "t", "instance": addr, "env": "test"}
    up_labels, up = await read_one(ctx, "up")
    assert up_labels == lab(__name__="up", **base)
    assert [v for _, v in up] == [1.0, 1.0, 1.0]
    t1, t2, t3 = (t for t, _ in up)
    assert t1 < t2 < t3

    foo = await read(ctx, "foo")
    assert foo == {
        lab(__name__="foo", a="1", **base): [(t1, 1.0), (t2, 10.0), (t3, 10.0)],
        lab(__name__="foo", a="2", **base): [(t1, 2.5), (t2, 20.0), (t3, 20.0)],
    }
    # a counter without _total keeps its exposed name (prometheus-client would rename it)
    assert (await read_one(ctx, "reqs"))[1] == [(t1, 7.0), (t2, 8.0), (t3, 8.0)]
    # the exposed job clashes with the target's: kept as exported_job
    bar_labels, bar = await read_one(ctx, "bar")
    assert bar_labels == lab(__name__="bar", exported_job="exposed", **base)
    # bar vanished in scrape 2: one staleness marker at scrape 2's timestamp, then nothing
    assert [t for t, _ in bar] == [t1, t2]
    assert bar[0][1] == 3.0 and is_stale_nan(bar[1][1])
    assert (await read_one(ctx, "baz"))[1] == [(t2, 1.0), (t3, 1.0)]
    assert await read(ctx, "dropme") == {}

    def report(name: str) -> Any:
        return read_one(ctx, name)

    assert [v for _, v in (await report("scrape_samples_scraped"))[1]] == [5, 5, 5]
    assert [v for _, v in (await report("scrape_samples_post_metric_relabeling"))[1]] == [4, 4, 4]
    # scrape 1: four new series; scrape 2: baz; scrape 3: none
    assert [v for _, v in (await report("scrape_series_added"))[1]] == [4, 1, 0]
    durations = [v for _, v in (await report("scrape_duration_seconds"))[1]]
    assert all(0 < d < 2 for d in durations)
    assert [t for t, _ in (await report("scrape_duration_seconds"))[1]] == [t1, t2, t3]

    # what the target saw: Prometheus' Accept header and timeout header
    headers = target.requests[0]["headers"]
    assert headers["Accept"].startswith("application/openmetrics-text;version=1.0.0;q=0.5,")
    assert "text/plain;version=0.0.4;q=0.3" in headers["Accept"]
    assert headers["X-Prometheus-Scrape-Timeout-Seconds"] == "0.15"
    assert headers["User-Agent"].startswith("tsagent/")


async def test_failed_scrape_marks_everything_stale_and_up_zero(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    target = Target(
        [Page("a 1\nb 2\n"), Page("oops", status=500), Page("oops", 500), Page("a 5\n")]
    )
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr))
    await scrape_n(ctx, 4)

    _, up = await read_one(ctx, "up")
    assert [v for _, v in up] == [1.0, 0.0, 0.0, 1.0]
    t1, t2, _t3, t4 = (t for t, _ in up)
    (_, a), (_, b) = (await read_one(ctx, "a")), (await read_one(ctx, "b"))
    # one marker at the first failure only; the second failure has nothing left to mark
    assert [t for t, _ in a] == [t1, t2, t4]
    assert is_stale_nan(a[1][1]) and a[2][1] == 5.0
    assert [t for t, _ in b] == [t1, t2] and is_stale_nan(b[1][1])
    scraped = [v for _, v in (await read_one(ctx, "scrape_samples_scraped"))[1]]
    assert scraped == [2, 0, 0, 1]
    added = [v for _, v in (await read_one(ctx, "scrape_series_added"))[1]]
    assert added == [2, 0, 0, 0]  # a came back; its series text was still cached


async def test_timeout_fails_the_scrape(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    target = Target([Page("a 1\n"), Page("a 2\n", delay=1.0), Page("a 3\n")])
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr))
    loop = only_loop(ctx)
    await wait_until("loop.completed >= 2", lambda: loop.completed >= 2)
    assert loop.last is not None and "timed out after 0.15s" in loop.last.error
    await scrape_n(ctx, 3)
    _, up = await read_one(ctx, "up")
    assert [v for _, v in up][:3] == [1.0, 0.0, 1.0]
    duration = (await read_one(ctx, "scrape_duration_seconds"))[1][1][1]
    assert 0.14 <= duration < 2
    _, a = await read_one(ctx, "a")
    assert a[0][1] == 1.0 and is_stale_nan(a[1][1]) and a[2][1] == 3.0


async def test_sample_limit_fails_the_whole_scrape(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    small = "a 1\nb 1\nc 1\n"
    big = small + "d 1\ne 1\n"
    target = Target([Page(small), Page(big), Page(small)])
    addr = await serve(aiohttp_server, target)
    extra = """        sample_limit: 3
        metric_relabel_configs:
          - {source_labels: [__name__], regex: e, action: drop}
"""
    ctx = await start(aiohttp_client, make_config, job_yaml(addr, extra))
    loop = only_loop(ctx)
    # e is dropped before the limit is applied, so 4 samples remain: still one too many
    await wait_until("loop.completed >= 2", lambda: loop.completed >= 2)
    assert loop.last is not None and "sample_limit exceeded (4 samples" in loop.last.error
    await scrape_n(ctx, 3)
    _, up = await read_one(ctx, "up")
    t1, t2, t3 = (t for t, _ in up)
    assert [v for _, v in up] == [1.0, 0.0, 1.0]
    assert await read(ctx, "d") == {}  # nothing from the oversized page was stored
    _, a = await read_one(ctx, "a")
    assert [t for t, _ in a] == [t1, t2, t3] and is_stale_nan(a[1][1])
    assert [v for _, v in (await read_one(ctx, "scrape_samples_scraped"))[1]] == [3, 5, 3]
    post = [v for _, v in (await read_one(ctx, "scrape_samples_post_metric_relabeling"))[1]]
    assert post == [3, 4, 3]


async def test_body_size_limit_fails_the_scrape(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    target = Target([Page("a 1\n"), Page("a 2\n" + "# padding\n" * 100), Page("a 3\n")])
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr, "        body_size_limit: 100\n"))
    loop = only_loop(ctx)
    await wait_until("loop.completed >= 2", lambda: loop.completed >= 2)
    assert loop.last is not None and "body size limit of 100 bytes exceeded" in loop.last.error
    await scrape_n(ctx, 3)
    _, a = await read_one(ctx, "a")
    assert a[0][1] == 1.0 and is_stale_nan(a[1][1]) and a[2][1] == 3.0


async def test_label_limit_fails_the_scrape(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    # __name__, job, instance and env make 4 labels; b has 6
    target = Target([Page("a 1\n"), Page('a 2\nb{x="1",y="2"} 1\n'), Page("a 3\n")])
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr, "        label_limit: 5\n"))
    loop = only_loop(ctx)
    await wait_until("loop.completed >= 2", lambda: loop.completed >= 2)
    assert loop.last is not None and "label_limit exceeded (metric: b" in loop.last.error
    await scrape_n(ctx, 3)
    assert [v for _, v in (await read_one(ctx, "up"))[1]] == [1.0, 0.0, 1.0]
    assert await read(ctx, "b") == {}


async def test_malformed_page_fails_like_prometheus(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    bad = 'a 2\nb{x="1" 2\n'  # valid first line, then an unterminated label set
    target = Target([Page("a 1\n"), Page(bad), Page("a 3\n")])
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr))
    await scrape_n(ctx, 3)
    _, up = await read_one(ctx, "up")
    assert [v for _, v in up] == [1.0, 0.0, 1.0]
    _, a = await read_one(ctx, "a")
    # a=2 from the broken page was not stored; a was marked stale instead
    assert a[0][1] == 1.0 and is_stale_nan(a[1][1]) and a[2][1] == 3.0
    assert await read(ctx, "b") == {}


async def test_basic_auth_and_bearer_token_file(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any, tmp_path: Path
) -> None:
    good_basic = "Basic " + base64.b64encode(b"prom:s3cret").decode()

    def need(expected: str) -> Callable[[web.Request], web.Response | None]:
        def check(request: web.Request) -> web.Response | None:
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="no")
            return None

        return check

    basic = Target([Page("secured 1\n")], check=need(good_basic))
    bearer = Target([Page("secured 2\n")], check=need("Bearer tok-1"))
    wrong = Target([Page("secured 3\n")], check=need("Bearer other"))
    a_basic = await serve(aiohttp_server, basic)
    a_bearer = await serve(aiohttp_server, bearer)
    a_wrong = await serve(aiohttp_server, wrong)
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    text = f"""
ingest:
  scrape:
    stale_markers_on_stop: false
    global: {{scrape_interval: 0.2, scrape_timeout: 0.15}}
    scrape_configs:
      - job_name: basic
        basic_auth: {{username: prom, password: s3cret}}
        static_configs: [{{targets: ['{a_basic}']}}]
      - job_name: bearer
        authorization: {{credentials_file: '{token}'}}
        static_configs: [{{targets: ['{a_bearer}']}}]
      - job_name: wrong
        bearer_token_file: '{token}'
        static_configs: [{{targets: ['{a_wrong}']}}]
"""
    ctx = await start(aiohttp_client, make_config, text)
    loops = list(manager(ctx).loops.values())
    await wait_until("two scrapes of every target", lambda: all(lp.completed >= 2 for lp in loops))
    await manager(ctx).stop()
    up = {labels: [v for _, v in pts] for labels, pts in (await read(ctx, "up")).items()}
    by_job = {dict(labels)["job"]: values for labels, values in up.items()}
    assert by_job["basic"][:2] == [1.0, 1.0]
    assert by_job["bearer"][:2] == [1.0, 1.0]
    assert by_job["wrong"][:2] == [0.0, 0.0]
    secured = {dict(k)["job"]: v[0][1] for k, v in (await read(ctx, "secured")).items()}
    assert secured == {"basic": 1.0, "bearer": 2.0}
    [wrong_loop] = [lp for lp in loops if lp.job.name == "wrong"]
    assert wrong_loop.last is not None and "HTTP status 401" in wrong_loop.last.error


async def test_honor_labels_and_timestamps(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    ahead = int(time.time() * 1000) + 3_600_000
    page = f'm{{job="pushed",instance="i-1"}} 1 1700000000000\nn 2\nnanv NaN\nfuture 1 {ahead}\n'
    honoring = Target([Page(page)])
    plain = Target([Page(page)])
    a1 = await serve(aiohttp_server, honoring)
    a2 = await serve(aiohttp_server, plain)
    text = f"""
ingest:
  scrape:
    stale_markers_on_stop: false
    global: {{scrape_interval: 0.2, scrape_timeout: 0.15}}
    scrape_configs:
      - job_name: honor
        honor_labels: true
        static_configs: [{{targets: ['{a1}']}}]
      - job_name: plain
        honor_timestamps: false
        static_configs: [{{targets: ['{a2}']}}]
"""
    ctx = await start(aiohttp_client, make_config, text)
    loops = list(manager(ctx).loops.values())
    await wait_until("two scrapes of every target", lambda: all(lp.completed >= 2 for lp in loops))
    await manager(ctx).stop()
    m = await read(ctx, "m")
    honored = m[lab(__name__="m", job="pushed", instance="i-1")]
    # the explicit timestamp is used; the repeat is an exact duplicate, stored once
    assert honored == [(1_700_000_000_000, 1.0)]
    plain_key = lab(__name__="m", job="plain", instance=a2, exported_job="pushed")
    plain_key = make_labels({**dict(plain_key), "exported_instance": "i-1"})
    points = m[plain_key]
    assert len(points) >= 2 and all(t > 1_700_000_000_000 for t, _ in points)
    # an hour ahead: dropped when honored (Prometheus' 10 minute bound), stamped now otherwise
    future = await read(ctx, "future")
    assert list(future) == [lab(__name__="future", job="plain", instance=a2)]
    nanv = (await read(ctx, "nanv"))[lab(__name__="nanv", job="plain", instance=a2)]
    assert math.isnan(nanv[0][1]) and not is_stale_nan(nanv[0][1])  # an exposed NaN stays NaN
    up_plain = (await read(ctx, "up"))[lab(__name__="up", job="plain", instance=a2)]
    assert [t for t, _ in points] == [t for t, _ in up_plain][: len(points)]


async def test_openmetrics_target(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    om = (
        "# TYPE jobs counter\n"
        'jobs_total{kind="a"} 3 1700000000.5\n'
        "# TYPE temp_celsius gauge\n"
        "# UNIT temp_celsius celsius\n"
        "temp_celsius 21.5\n"
        "# EOF\n"
    )
    ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    target = Target([Page(om, content_type=ctype), Page("jobs_total 1\n", content_type=ctype)])
    addr = await serve(aiohttp_server, target)
    ctx = await start(aiohttp_client, make_config, job_yaml(addr))
    await scrape_n(ctx, 2)
    _, jobs = await read_one(ctx, "jobs_total")
    assert jobs == [(1_700_000_000_500, 3.0)]  # OpenMetrics timestamps are seconds
    _, up = await read_one(ctx, "up")
    assert [v for _, v in up] == [1.0, 0.0]  # no "# EOF": invalid OpenMetrics
    _, temp = await read_one(ctx, "temp_celsius")
    assert temp[0][1] == 21.5 and is_stale_nan(temp[1][1])


async def test_target_relabeling_path_params_and_drop(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    target = Target([Page("x 1\n")])
    addr = await serve(aiohttp_server, target, path="/probe")
    extra = f"""        params: {{module: [http_2xx], extra: [a, b]}}
        relabel_configs:
          - {{source_labels: [__address__], target_label: __param_target}}
          - {{target_label: __metrics_path__, replacement: /probe}}
          - {{source_labels: [__address__], target_label: __tmp_addr}}
          - {{source_labels: [__tmp_addr], regex: '127\\.0\\.0\\.1:(\\d+)', target_label: port}}
          - {{source_labels: [env], target_label: stage, replacement: 'stage-$1'}}
      - job_name: dropped
        static_configs: [{{targets: ['{addr}']}}]
        relabel_configs:
          - {{source_labels: [__address__], modulus: 2, target_label: __tmp_shard,
              action: hashmod}}
          - {{source_labels: [__tmp_shard], regex: '.*', action: drop}}
"""
    ctx = await start(aiohttp_client, make_config, job_yaml(addr, extra))
    assert len(manager(ctx).loops) == 1  # the second job's only target was dropped
    await scrape_n(ctx, 1)
    assert target.requests[0]["query"] == {"module": "http_2xx", "extra": "a", "target": addr}
    port = addr.rsplit(":", 1)[1]
    x_labels, _ = await read_one(ctx, "x")
    assert x_labels == lab(
        __name__="x", job="t", instance=addr, env="test", port=port, stage="stage-test"
    )


async def test_stop_and_target_removal_write_staleness_markers(
    aiohttp_server: Any, aiohttp_client: Any, make_config: Any
) -> None:
    one, two = Target([Page("s 1\n")]), Target([Page("s 2\n")])
    a1, a2 = await serve(aiohttp_server, one), await serve(aiohttp_server, two)

    def text(targets: str) -> str:
        return f"""
ingest:
  scrape:
    global: {{scrape_interval: 0.2, scrape_timeout: 0.15}}
    scrape_configs:
      - job_name: t
        static_configs: [{{targets: [{targets}]}}]
"""

    ctx = await start(aiohttp_client, make_config, text(f"'{a1}', '{a2}'"))
    m = manager(ctx)
    await wait_until(
        "both targets scraped",
        lambda: len(m.loops) == 2 and all(lp.completed >= 1 for lp in m.loops.values()),
    )
    # a reload that drops the second target: the core swaps ctx.config, the manager follows
    new_config, _ = make_config(text(f"'{a1}'"))
    ctx.config = new_config
    await wait_until("one target left", lambda: len(m.loops) == 1, timeout=5)
    removed = (await read(ctx, "s"))[lab(__name__="s", job="t", instance=a2)]
    assert removed[-1][1] != removed[-1][1] and is_stale_nan(removed[-1][1])
    up_removed = (await read(ctx, "up"))[lab(__name__="up", job="t", instance=a2)]
    assert is_stale_nan(up_removed[-1][1])
    # the remaining target keeps scraping, then stopping marks it stale too
    [kept] = m.loops.values()
    done = kept.completed
    await wait_until("kept.completed >= done + 1", lambda: kept.completed >= done + 1)
    await m.stop()
    kept_points = (await read(ctx, "s"))[lab(__name__="s", job="t", instance=a1)]
    assert all(v == 1.0 for _, v in kept_points[:-1]) and is_stale_nan(kept_points[-1][1])
    up_kept = (await read(ctx, "up"))[lab(__name__="up", job="t", instance=a1)]
    assert is_stale_nan(up_kept[-1][1]) and up_kept[-1][0] > up_kept[-2][0]


async def test_start_offsets_are_spread_and_stable() -> None:
    from plugins.scrape.targets import TargetSpec

    specs = [
        TargetSpec("j", f"http://10.0.0.{i}:9100/metrics", lab(instance=f"10.0.0.{i}:9100"), 15, 10)
        for i in range(50)
    ]
    offsets = [s.offset(seed=42) for s in specs]
    assert all(0 <= o < 15 for o in offsets)
    assert offsets == [s.offset(seed=42) for s in specs]  # stable across restarts
    assert len({round(o, 3) for o in offsets}) == 50
    # spread over the interval, not bunched: every 3-second fifth holds some
    assert {int(o // 3) for o in offsets} == {0, 1, 2, 3, 4}
    assert offsets != [s.offset(seed=43) for s in specs]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "      - {action: bogus}\n",
            r"relabel_configs\[0\]\.action: expected one of 'replace'",
        ),
        (
            "      - {regex: '(unclosed', action: keep}\n",
            r"relabel_configs\[0\]\.regex: invalid regular expression",
        ),
        (
            "      - {source_labels: [a]}\n",
            r"relabel_configs\[0\]\.target_label: the replace action requires 'target_label'",
        ),
        (
            "      - {action: hashmod, target_label: x, source_labels: [a]}\n",
            r"relabel_configs\[0\]\.modulus: the hashmod action requires a modulus > 0",
        ),
    ],
)
def test_config_errors_name_the_key_path(make_config: Any, yaml_text: str, message: str) -> None:
    from agent.config import ConfigError

    text = (
        "ingest:\n  scrape:\n    scrape_configs:\n      - job_name: j\n"
        "        static_configs: [{targets: ['h:1']}]\n"
        "        relabel_configs:\n" + "  " + yaml_text.replace("\n", "\n  ").rstrip() + "\n"
    )
    with pytest.raises(ConfigError, match=r"ingest\.scrape\.scrape_configs\[0\]\." + message):
        make_config(text)


def test_config_timeout_defaults_and_limits(make_config: Any) -> None:
    from agent.config import ConfigError
    from plugins.scrape.config import SECTION, compile_jobs

    config, _ = make_config(
        "ingest:\n  scrape:\n    scrape_configs:\n"
        "      - {job_name: fast, scrape_interval: 5s, static_configs: [{targets: ['h:1']}]}\n"
        "      - {job_name: slow, static_configs: [{targets: ['h:2']}]}\n"
    )
    fast, slow = compile_jobs(config.section(SECTION))
    assert (fast.interval, fast.timeout) == (5.0, 5.0)  # global 10s capped at the interval
    assert (slow.interval, slow.timeout) == (60.0, 10.0)
    with pytest.raises(ConfigError, match=r"scrape_timeout: must not exceed scrape_interval"):
        make_config(
            "ingest:\n  scrape:\n    scrape_configs:\n"
            "      - {job_name: j, scrape_interval: 5s, scrape_timeout: 6s}\n"
        )
    with pytest.raises(ConfigError, match=r"scrape_configs\[1\]\.job_name: 'j' is already used"):
        make_config(
            "ingest:\n  scrape:\n    scrape_configs:\n"
            "      - {job_name: j}\n      - {job_name: j}\n"
        )
    with pytest.raises(ConfigError, match=r"targets\[0\]: expected host:port"):
        make_config(
            "ingest:\n  scrape:\n    scrape_configs:\n"
            "      - {job_name: j, static_configs: [{targets: ['http://h:1/metrics']}]}\n"
        )
