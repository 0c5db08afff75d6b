"""The Prometheus API error envelope: one mapping of errors to ``errorType`` and status.

``{"status": "error", "errorType": ..., "error": ...}`` with Prometheus's
status codes (``bad_data`` 400, ``execution`` 422, ``timeout``/``canceled``/
``unavailable`` 503, ``internal`` 500). Every endpoint, core or plugin
(through :mod:`agent.plugin_api`), answers errors through :func:`api_errors`
or :func:`failure`, so a storage or query error reads the same everywhere.
Kept free of the query engine so that ``agent.plugin_api`` can offer it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.query.errors import QueryError
from agent.storage.errors import StorageError, StoreClosed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS = {
    "bad_data": 400,
    "not_found": 404,
    "execution": 422,
    "internal": 500,
    "timeout": 503,
    "canceled": 503,
    "unavailable": 503,
}


class ApiError(Exception):
    """An error answer; raised anywhere in a handler, rendered by :func:`handle_errors`."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type

    @property
    def status(self) -> int:
        return STATUS.get(self.error_type, 500)


def error_body(error_type: str, message: str) -> dict[str, str]:
    """The error envelope as a dict (also sent as an event by the live streams)."""
    return {"status": "error", "errorType": error_type, "error": message}


def failure(error_type: str, message: str) -> web.Response:
    return web.Response(
        body=json.dumps(
            error_body(error_type, message), separators=(",", ":"), ensure_ascii=False
        ).encode(),
        status=STATUS.get(error_type, 500),
        content_type="application/json",
    )


def error_of(exc: BaseException) -> tuple[str, str] | None:
    """``(errorType, message)`` of an exception a handler let out; None if it is no API error.

    The one mapping for every endpoint (core and plugins): :class:`ApiError`
    and query errors carry their type; a store closed under a request is
    ``canceled`` (the request was cut short, as Prometheus says for a query
    canceled at shutdown); any other storage error is ``unavailable``.
    """
    if isinstance(exc, ApiError | QueryError):
        return exc.error_type, str(exc)
    if isinstance(exc, StoreClosed):
        return "canceled", f"query was canceled in query execution: {exc}"
    if isinstance(exc, StorageError):
        return "unavailable", str(exc)
    return None


def api_errors(
    fn: Handler,
    *,
    bad_data: tuple[type[BaseException], ...] = (),
    unavailable: tuple[type[BaseException], ...] = (),
) -> Handler:
    """Turn every failure of ``fn`` into the error envelope with the matching status.

    ``bad_data`` and ``unavailable`` name an endpoint's own exceptions that
    mean a 400 or a 503; anything else that :func:`error_of` does not know
    propagates (a 500 from aiohttp).
    """

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except bad_data as exc:
            return failure("bad_data", str(exc))
        except Exception as exc:
            found = error_of(exc)
            if found is None:
                if isinstance(exc, unavailable):
                    return failure("unavailable", str(exc))
                raise
            return failure(*found)

    return wrapper
