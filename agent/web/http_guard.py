"""A header-read timeout for aiohttp's server (slow-loris defence).

aiohttp bounds idle keep-alive connections but not a connection that sends
its request headers one byte a minute: 1,500 such connections stayed open for
90 s and more (issue 13), each holding a socket and a parser. Go's servers
have ``ReadHeaderTimeout`` for this; here :class:`GuardedTCPSite` gives every
request ``timeout`` seconds to deliver complete headers (the first from the
moment the connection is accepted, each later one on a keep-alive connection
from its first byte), and closes the connection otherwise. Idle keep-alive
connections are left to ``keepalive_timeout``; bodies to the handlers' limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class _HeaderGuard(asyncio.Protocol):
    """Stands between the transport and aiohttp's ``RequestHandler`` and times headers.

    A timer runs from the moment a connection is accepted, and again from the
    first byte of each later request, until that request's headers are
    parsed; when it fires first, the connection is closed. An idle keep-alive
    connection (no bytes since the last response) is left to aiohttp's
    ``keepalive_timeout``, so a client that pauses and then sends a whole
    request is served.

    Bytes that complete no headers start the timer when the connection was
    waiting for a request, or when the last request's body had been read
    before they came: with uvloop a client's next request can arrive while
    the handler that answered the last one is still finishing, before
    aiohttp waits again. Bytes of a body being uploaded start nothing.

    Relies on three attributes of aiohttp's ``RequestHandler``:
    ``_request_count`` (incremented as a request's headers are parsed),
    ``_messages`` (the parsed requests and their bodies) and ``_waiter`` (set
    while it waits for the next request). Should they ever disappear, the
    guard times only the first request, as before, rather than close good
    connections.
    """

    def __init__(self, inner: Any, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.armed_at = 0  # requests parsed when the timer was started
        self.body: Any = None  # the last parsed request's body (a StreamReader)
        self.per_request = all(
            hasattr(inner, name) for name in ("_request_count", "_waiter", "_messages")
        )
        self.loop = asyncio.get_running_loop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _arm(self) -> None:
        self.armed_at = getattr(self.inner, "_request_count", 0)
        self.timer = self.loop.call_later(self.timeout, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        transport = getattr(self.inner, "transport", None)
        if transport is None or transport.is_closing():
            return
        if getattr(self.inner, "_request_count", 1) > self.armed_at:
            return  # the headers did arrive
        log.debug("closing a connection that sent no complete request headers in time")
        transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if not self.per_request:
            inner.data_received(data)
            return
        waiter = inner._waiter
        idle = waiter is not None and not waiter.done()  # waiting for the next request
        read = self.body is None or self.body.is_eof()  # the last body was read before
        before = inner._request_count
        inner.data_received(data)
        if inner._request_count > before:
            self._disarm()  # headers parsed (a new timer starts with the next request)
            messages = inner._messages
            self.body = messages[-1][1] if messages else None
        elif (idle or read) and self.timer is None:
            self._arm()  # the first bytes of a request: its headers have `timeout` from now

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def guard_headers(factory: Callable[[], Any], timeout: float) -> Callable[[], Any]:
    """Wrap a protocol factory: every request's headers must arrive within ``timeout``.

    For the first request the timer starts when the connection is accepted;
    for each later one, at its first byte (see :class:`_HeaderGuard`).
    """

    def make() -> Any:
        return _HeaderGuard(factory(), timeout)

    return make


class GuardedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections get a header-read timeout (``0`` disables it)."""

    def __init__(self, runner: web.BaseRunner, *args: Any, header_timeout: float, **kw: Any):
        super().__init__(runner, *args, **kw)
        self._header_timeout = header_timeout

    async def start(self) -> None:
        if self._header_timeout <= 0:
            await super().start()
            return
        server = self._runner.server
        assert server is not None
        self._runner._server = guard_headers(server, self._header_timeout)  # type: ignore[assignment]
        try:
            await super().start()
        finally:
            self._runner._server = server


class ClientFaultFilter(logging.Filter):
    """aiohttp logs a malformed request (an over-long URL or header, a bad request
    line) at ERROR with a traceback, as if the server had failed. It is the
    client's fault: keep one INFO line naming it, so ERROR stays for our own
    faults (issue 13). A handler that crashes still logs at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _client_fault(exc):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _client_fault(exc: BaseException | None) -> bool:
    from aiohttp.http_exceptions import HttpProcessingError

    if isinstance(exc, HttpProcessingError):
        return 400 <= (exc.code or 400) < 500
    return isinstance(exc, ConnectionResetError)


def install_log_filters() -> None:
    """Attach :class:`ClientFaultFilter` to aiohttp's server logger (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())
