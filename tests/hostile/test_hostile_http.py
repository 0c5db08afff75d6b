"""The header-read timeout on every request of a connection (issue 13, item 9).

A real aiohttp server behind :class:`agent.web.http_guard.GuardedTCPSite`, driven
by raw sockets: a keep-alive client that sends one good request and then
dribbles the next one's headers is cut off, while one that pauses (idle, no
bytes) and then sends a whole request is served. The timeout is short; the
tests assert on what happens to the connection, never on how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.web.http_guard import GuardedTCPSite

TIMEOUT = 0.3
REQUEST = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENTS = 10  # keep-alive clients sending their next request at once


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def upload(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GuardedTCPSite(runner, "127.0.0.1", 0, header_timeout=TIMEOUT)
    await site.start()
    server = site._server
    assert server is not None
    try:
        yield server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with _server() as p:
        yield p


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


def _next_request_right_after_a_response(port: int) -> int:
    """Clients sending the next request's first bytes the moment a response is read (the
    hostile benchmark's slow clients), on blocking sockets; how many the server cut off.

    With uvloop those bytes can reach the server while the handler that answered
    is still finishing, before aiohttp waits for a request again.
    """
    cut = 0
    for _ in range(CLIENTS):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT * 10) as s:
            s.sendall(REQUEST)
            got = b""
            while not got.endswith(b"ok"):
                got += s.recv(4096)
            s.sendall(REQUEST[:-2] + b"X-Slow: ")
            with contextlib.suppress(TimeoutError):
                cut += s.recv(100) == b""
    return cut


async def _slow_body_is_not_cut_off(port: int) -> None:
    """Bytes of a body being uploaded start no header timer: only its headers are timed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b"x" * 12
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        for i in range(0, len(body), 3):
            await asyncio.sleep(TIMEOUT / 2)  # two seconds in all, past the header timeout
            writer.write(body[i : i + 3])
        assert await response(reader) == b"12"
        writer.write(REQUEST)  # and the connection still serves the next request
        assert await response(reader) == b"ok"
    finally:
        writer.close()


async def test_next_request_right_after_a_response_is_timed(port: int) -> None:
    assert await asyncio.to_thread(_next_request_right_after_a_response, port) == CLIENTS


async def test_slow_body_is_not_cut_off(port: int) -> None:
    await _slow_body_is_not_cut_off(port)


_SERVER = """
import asyncio, sys, uvloop
from aiohttp import web
from agent.web.http_guard import GuardedTCPSite

async def main():
    async def ok(_request):
        return web.Response(text="ok")

    async def upload(request):
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GuardedTCPSite(runner, "127.0.0.1", 0, header_timeout=float(sys.argv[1]))
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(main())
"""


async def test_the_same_with_uvloop_in_another_process() -> None:
    """``server.event_loop: uvloop`` (the default), the server in a process of its own
    as a daemon is: without the guard's body check, most clients sending their next
    request as soon as a response was read outlived the timeout (17 of 20, and 19 of
    20 against the daemon)."""
    pytest.importorskip("uvloop")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, str(TIMEOUT), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert await asyncio.to_thread(_next_request_right_after_a_response, port) == CLIENTS
        await _slow_body_is_not_cut_off(port)
        await test_idle_keep_alive_then_a_prompt_request_is_served(port)
        await test_second_request_dribbled_on_keep_alive_is_cut_off(port)
    finally:
        proc.kill()
        await proc.wait()
