"""A header-read timeout for aiohttp's server (slow-loris defence).

aiohttp bounds idle keep-alive connections but not a connection that sends
its request headers one byte a minute: 1,500 such connections stayed open for
90 s and more (issue 13), each holding a socket and a parser. Go's servers
have ``ReadHeaderTimeout`` for this; here :class:`GuardedTCPSite` gives every
new connection ``timeout`` seconds to deliver complete request headers, and
closes it otherwise. Once a request has arrived the usual limits apply
(``keepalive_timeout`` between requests, the handlers' own for bodies).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def _expire(proto: Any) -> None:
    transport = getattr(proto, "transport", None)
    if transport is None or transport.is_closing() or getattr(proto, "_request_count", 1) > 0:
        return
    log.debug("closing a connection that sent no complete request headers in time")
    transport.close()


def guard_headers(factory: Callable[[], Any], timeout: float) -> Callable[[], Any]:
    """Wrap a protocol factory: connections without request headers by ``timeout`` are closed.

    The timer starts when the protocol is made (as the connection is
    accepted). Relies on aiohttp's ``RequestHandler._request_count``
    (incremented when a request's headers are parsed); should it ever
    disappear, the guard does nothing rather than close good connections.
    """

    def make() -> Any:
        proto = factory()
        asyncio.get_running_loop().call_later(timeout, _expire, proto)
        return proto

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
