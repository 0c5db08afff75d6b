"""Reusable value checks for schema fields, and the parsers they stand for.

A check returns None when the value is good, else the reason (the schema
adds the key path and what was found).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.durations import parse_duration


def check_duration(value: Any) -> str | None:
    try:
        parse_duration(value)
    except ValueError:
        return "expected a duration such as 15s, 5m, 1h30m, 7d or a number of seconds"
    return None


def check_port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "expected a port number from 0 to 65535"


def check_share(value: Any) -> str | None:
    if not 0 <= float(value) <= 1:
        return "must be between 0 and 1"
    return None


def check_positive(value: Any) -> str | None:
    return None if value > 0 else "expected a positive number"


def check_non_negative(value: Any) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def check_listen(value: Any) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9201")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def check_timezone(value: Any) -> str | None:
    if value == "":
        return None
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return "expected an IANA time zone name such as Europe/Berlin, or empty"
    return None


def parse_timestamp_ms(value: str | int) -> int:
    """Milliseconds since the epoch from an int or an RFC 3339 string (``limits.min_timestamp``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} needs a time zone (Z or +hh:mm)")
    return int(parsed.timestamp() * 1000)


def check_timestamp(value: Any) -> str | None:
    try:
        parse_timestamp_ms(value)
    except ValueError as exc:
        return f"expected an RFC 3339 time or ms since the epoch: {exc}"
    return None


def check_regex(value: Any) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"invalid regular expression ({exc})"
    return None


def check_bcrypt(value: Any) -> str | None:
    if not re.match(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$", value):
        return (
            "expected a bcrypt hash (generate one with `tsagent hash-password`); "
            "plain-text passwords are not accepted"
        )
    return None


def check_matchers(value: Any) -> str | None:
    from agent.alerting.routing import parse_matchers

    try:
        parse_matchers(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_child_routes(value: Any) -> str | None:
    from agent.alerting.routing import RouteError, build_route

    try:
        build_route({"routes": value})
    except RouteError as exc:
        return str(exc).replace("alerting.route.routes", "", 1)
    return None


def check_receivers(value: Any) -> str | None:
    from agent.alerting.routing import check_receivers

    errors = check_receivers(value)
    return "; ".join(errors) if errors else None


# Checks whose values are durations: typed views (agent.config.typed) hold them
# as float seconds. A schema's own duration checks add themselves here.
DURATION_CHECKS: set[Callable[[Any], str | None]] = {check_duration}
