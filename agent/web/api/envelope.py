"""Prometheus's JSON envelope, its error types and status codes, and request parameters.

Every API answer is ``{"status": "success", "data": ...}`` (with optional
``warnings`` and ``infos``) or ``{"status": "error", "errorType": ..., "error":
...}``; clients such as Grafana branch on ``errorType``, so the mapping to
status codes is Prometheus's: ``bad_data`` 400, ``execution`` 422,
``timeout``/``canceled``/``unavailable`` 503, ``internal`` 500.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import tzinfo
from typing import Any, cast

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from agent.query.errors import BadDataError
from agent.query.service import CacheMode, parse_duration_param
from agent.query.timezone import MAX_TIME_MS, MIN_TIME_MS, DstRule, parse_time
from agent.web.api.errors import STATUS as STATUS
from agent.web.api.errors import ApiError as ApiError
from agent.web.api.errors import Handler as Handler
from agent.web.api.errors import api_errors as api_errors
from agent.web.api.errors import error_body as error_body
from agent.web.api.errors import error_of as error_of
from agent.web.api.errors import failure as failure
from agent.web.large_body import LARGE, PartsPayload


def bad_param(name: str, problem: str) -> ApiError:
    return ApiError("bad_data", f'invalid parameter "{name}": {problem}')


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def success(
    data: Any = None,
    *,
    data_json: bytes | None = None,
    warnings: Sequence[str] = (),
    infos: Sequence[str] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The success envelope; ``data_json`` lets a cached, pre-encoded ``data`` go out as is."""
    parts = [b'{"status":"success","data":', data_json if data_json is not None else _dumps(data)]
    if warnings:
        parts += [b',"warnings":', _dumps(list(warnings))]
    if infos:
        parts += [b',"infos":', _dumps(list(infos))]
    parts.append(b"}")
    if len(parts[1]) >= LARGE:
        body = PartsPayload(parts, content_type="application/json")
        return web.Response(body=body, headers=headers or None)
    return web.Response(
        body=b"".join(parts), content_type="application/json", headers=headers or None
    )


# --- parameters --------------------------------------------------------------------------


async def form(request: web.Request) -> MultiDictProxy[str]:
    """Query string and form-encoded body together, body first (as Go's ``r.Form``).

    Grafana sends POST ``application/x-www-form-urlencoded`` bodies; any
    Prometheus client may also use GET. Non-text multipart parts are ignored.
    """
    merged: MultiDict[str] = MultiDict()
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        try:
            body = await request.post()
        except ValueError as exc:
            raise ApiError("bad_data", f"error parsing form values: {exc}") from None
        if request.content_type[0] == "a" and not request.query_string:
            # Grafana's requests: an url-encoded body holds text only, and no query
            # string is to be merged into it, so it needs no copy.
            return cast("MultiDictProxy[str]", body)
        for key, value in body.items():
            if isinstance(value, str):
                merged.add(key, value)
    for key, value in request.query.items():
        merged.add(key, value)
    return MultiDictProxy(merged)


def time_param(
    params: MultiDictProxy[str],
    name: str,
    default: int | None,
    tz: tzinfo | None,
    rule: DstRule,
) -> int:
    """An ``<rfc3339 | unix_timestamp>`` parameter in ms (or a local time with ``tz``)."""
    text = params.get(name, "")
    if text == "":
        if default is None:
            raise bad_param(name, 'cannot parse "" to a valid timestamp')
        return default
    try:
        return parse_time(text, tz, rule)
    except BadDataError as exc:
        raise bad_param(name, str(exc)) from None
    except ValueError:
        raise bad_param(name, f"cannot parse {text!r} to a valid timestamp") from None


def duration_param(params: MultiDictProxy[str], name: str) -> int | None:
    """A ``<duration | float>`` parameter in ms, or None when absent."""
    text = params.get(name, "")
    if text == "":
        return None
    try:
        return parse_duration_param(text)
    except BadDataError:
        raise bad_param(name, f"cannot parse {text!r} to a valid duration") from None


def int_param(params: MultiDictProxy[str], name: str, default: int) -> int:
    text = params.get(name, "")
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise bad_param(name, f"cannot parse {text!r} to a valid integer") from None


def bool_param(params: MultiDictProxy[str], name: str) -> bool:
    text = params.get(name, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise bad_param(name, f"expected true or false, got {text!r}")


def range_params(params: MultiDictProxy[str], tz: tzinfo | None, rule: DstRule) -> tuple[int, int]:
    """Optional ``start``/``end`` of the series and label endpoints (all time by default)."""
    start = time_param(params, "start", MIN_TIME_MS, tz, rule)
    end = time_param(params, "end", MAX_TIME_MS, tz, rule)
    if end < start:
        raise bad_param("end", "end timestamp must not be before start time")
    return start, end


def cache_mode(request: web.Request) -> CacheMode:
    """``Cache-Control: no-store`` skips the cache; ``no-cache`` (or ``Pragma``) refreshes it."""
    directives = {
        d.strip().lower().split("=", 1)[0]
        for d in request.headers.get("Cache-Control", "").split(",")
    }
    if "no-store" in directives:
        return "off"
    if "no-cache" in directives or "no-cache" in request.headers.get("Pragma", "").lower():
        return "refresh"
    return "use"
