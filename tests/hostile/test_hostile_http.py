"""The header-read timeout on every request of a connection (issue 13, item 9).

A real aiohttp server behind :class:`agent.web.http_guard.GuardedTCPSite`, driven
by raw sockets: a keep-alive client that sends one good request and then
dribbles the next one's headers is cut off, while one that pauses (idle, no
bytes) and then sends a whole request is served. The timeout is short; the
tests assert on what happens to the connection, never on how long it took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.web.http_guard import GuardedTCPSite

TIMEOUT = 0.3
REQUEST = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GuardedTCPSite(runner, "127.0.0.1", 0, header_timeout=TIMEOUT)
    await site.start()
    server = site._server
    assert server is not None
    yield server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    await runner.cleanup()


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def closed_while_dribbling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bool:
    """Send ``data`` a byte every TIMEOUT/3 seconds; True when the server hangs up first."""
    for byte in data:
        writer.write(bytes([byte]))
        try:
            await writer.drain()
            got = await asyncio.wait_for(reader.read(1), TIMEOUT / 3)
        except TimeoutError:
            continue
        except OSError:
            return True
        if got == b"":
            return True
    return False


async def test_first_request_dribbled_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await closed_while_dribbling(reader, writer, REQUEST[:-2] + b"X-Slow: " + b"a" * 40)
    finally:
        writer.close()


async def test_second_request_dribbled_on_keep_alive_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        assert await response(reader) == b"ok"
        # The next request's headers, one byte at a time, never finished in time.
        assert await closed_while_dribbling(reader, writer, REQUEST[:-2] + b"X-Slow: " + b"a" * 40)
    finally:
        writer.close()


async def test_idle_keep_alive_then_a_prompt_request_is_served(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):
            writer.write(REQUEST)
            assert await response(reader) == b"ok"
            await asyncio.sleep(TIMEOUT * 3)  # idle: no bytes, well past the header timeout
        # A request split in two parts that arrive together quickly is served too.
        writer.write(REQUEST[:10])
        await writer.drain()
        writer.write(REQUEST[10:])
        assert await response(reader) == b"ok"
    finally:
        writer.close()
