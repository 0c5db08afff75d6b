"""StatsD over TCP under attack (issue 13): malformed lines, a line that never ends,
more connections than allowed, and connections that hold a partial line and go quiet.

The listener must keep every buffer bounded (an unfinished line is held up to
``max_line_bytes`` and no further), refuse connections beyond
``tcp_max_connections``, close idle ones, and keep counting good lines.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from agent.web.app import make_app
from tests.conftest import free_port
from tests.test_statsd import Harness, statsd_yaml


@pytest.fixture
def start(aiohttp_client: Any, make_config: Callable[..., Any]) -> Callable[..., Any]:
    async def go(extra: str = "") -> Harness:
        config, host = make_config(statsd_yaml(free_port(), free_port(), extra))
        return Harness(await aiohttp_client(make_app(config, host)))

    return go


async def closed_by_server(reader: asyncio.StreamReader, wait: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), wait) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_garbage_and_malformed_lines_are_counted_and_good_lines_kept(start: Any) -> None:
    h = await start()
    rng = random.Random(13)
    base = [b"page.views:1|c", b"latency:320|ms|@0.1|#env:prod", b"gauge:-5|g", b"uniq:foo|s"]
    _, writer = await asyncio.open_connection("127.0.0.1", h.tcp_port)
    for _ in range(300):
        line = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            line.insert(rng.randrange(len(line) + 1), rng.randrange(256))
        writer.write(bytes(line) + b"\n")
    writer.write(bytes(rng.randrange(256) for _ in range(50_000)) + b"\n")
    writer.write(b"good.after:7|g\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await h.wait_lines(301)
    await h.ing.flush()
    assert await h.value("good_after") == [7.0]
    assert sum(h.ing.agg.malformed.values()) > 0


async def test_a_line_without_newline_is_bounded_then_discarded(start: Any) -> None:
    h = await start("max_line_bytes: 1000")
    _, writer = await asyncio.open_connection("127.0.0.1", h.tcp_port)
    for _ in range(200):  # 2 MB that never ends a line, in 10 KB writes
        writer.write(b"x" * 10_000)
        await writer.drain()
    for _ in range(100):  # let the listener read it all
        if h.ing.tcp_reads and all(c.discarding for c in h.ing.tcp_conns):
            break
        await asyncio.sleep(0.01)
    [conn] = h.ing.tcp_conns
    assert conn.discarding and len(conn.buf) == 0  # nothing of it held
    writer.write(b"\nafter.huge:1|c\npartial.held:2|g")
    await writer.drain()
    for _ in range(100):
        if len(conn.buf):
            break
        await asyncio.sleep(0.01)
    assert len(conn.buf) <= 1000
    writer.close()
    await writer.wait_closed()
    await h.wait_lines(3)
    await h.ing.flush()
    assert h.ing.agg.malformed == {"line_too_long": 1}
    assert await h.value("after_huge") == [1.0]
    assert await h.value("partial_held") == [2.0]


async def test_connections_beyond_the_limit_are_closed_and_the_rest_served(start: Any) -> None:
    h = await start("tcp_max_connections: 20")
    kept = [await asyncio.open_connection("127.0.0.1", h.tcp_port) for _ in range(20)]
    for _ in range(100):
        if len(h.ing.tcp_conns) == 20:
            break
        await asyncio.sleep(0.01)
    extra = [await asyncio.open_connection("127.0.0.1", h.tcp_port) for _ in range(5)]
    assert all([await closed_by_server(r) for r, _ in extra])
    for _, w in extra:
        w.close()
    for i, (_, w) in enumerate(kept):
        w.write(b"kept:1|c\nkept.g:%d|g|#c:%d\n" % (i, i))
        await w.drain()
    await h.wait_lines(40)
    await h.ing.flush()
    assert await h.value("kept") == [20.0]
    metrics = await h.metrics()
    assert (
        metrics[("tsagent_statsd_tcp_closed_connections_total", (("reason", "max_connections"),))]
        == 5
    )
    for _, w in kept:
        w.close()


async def test_idle_and_slow_partial_line_connections_are_closed(start: Any) -> None:
    """Slow loris: connections that send part of a line and then nothing are closed
    after tcp_idle_timeout; an active connection is not."""
    h = await start("tcp_idle_timeout: 0.3")
    quiet = [await asyncio.open_connection("127.0.0.1", h.tcp_port) for _ in range(10)]
    for _, w in quiet:
        w.write(b"slow.loris:1|")
        await w.drain()
    active_r, active_w = await asyncio.open_connection("127.0.0.1", h.tcp_port)
    for _ in range(10):
        active_w.write(b"busy:1|c\n")
        await active_w.drain()
        await asyncio.sleep(0.1)
    assert all([await closed_by_server(r) for r, _ in quiet])
    assert not await closed_by_server(active_r, wait=0.05)
    assert h.ing.tcp_idle_closed >= 10
    active_w.close()
    await h.wait_lines(10)
    await h.ing.flush()
    assert await h.value("busy") == [10.0]
