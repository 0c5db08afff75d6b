"""YAML configuration: loaded, expanded, validated against a schema, typed.

Every error names the file, the key path (``ingest.statsd.port``), what was
found and what was expected, because a daemon that refuses to start must say
exactly why. Plugins add sections through the ``config_schema`` hook and are
validated by the same code as the core.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent.durations import parse_duration


class ConfigError(Exception):
    """One or more configuration errors; ``str()`` lists them all."""

    def __init__(self, errors: list[str], source: str = "<config>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


# --- schema -----------------------------------------------------------------

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    """A leaf key: its type, default and help (which the example config mirrors)."""

    type: type | tuple[type, ...]
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    check: Check | None = None
    nullable: bool = False
    item: Schema | Field | None = None  # for list fields: schema of each element


@dataclass(frozen=True)
class Schema:
    """A mapping section with known keys (unknown keys are errors)."""

    fields: Mapping[str, Field | Schema]
    help: str = ""
    open: bool = False  # accept any key (values must still be of ``value_type``)
    value: Field | Schema | None = None  # schema of each value when ``open``


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _found(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _is_type(value: Any, t: type | tuple[type, ...]) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    for x in types:
        if x is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if x is int and isinstance(value, bool):
            continue
        if isinstance(value, x):
            return True
    return False


def defaults(schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in schema.fields.items():
        out[key] = defaults(f) if isinstance(f, Schema) else copy.deepcopy(f.default)
    return out


def validate(data: Any, schema: Schema, path: str, errors: list[str]) -> dict[str, Any]:
    """Validate ``data`` against ``schema``; return it merged with defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or '<top level>'}: expected a mapping, found {_found(data)}")
        return defaults(schema)
    out = defaults(schema)
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        spec: Field | Schema | None = schema.fields.get(key)
        if spec is None and schema.open:
            spec = schema.value
        if spec is None:
            if schema.open:
                out[key] = value
                continue
            close = difflib.get_close_matches(str(key), list(schema.fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(schema.fields)) or "none"
            errors.append(f"{key_path}: unknown key{hint}; known keys here: {known}")
            continue
        out[key] = _validate_value(value, spec, key_path, errors)
    return out


def _validate_value(value: Any, spec: Field | Schema, path: str, errors: list[str]) -> Any:
    if isinstance(spec, Schema):
        return validate(value, spec, path, errors)
    if value is None:
        if spec.nullable:
            return None
        errors.append(f"{path}: expected {_type_name(spec.type)}, found null")
        return spec.default
    if not _is_type(value, spec.type):
        errors.append(f"{path}: expected {_type_name(spec.type)}, found {_found(value)}")
        return spec.default
    if spec.type is float and isinstance(value, int):
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        choices = ", ".join(repr(c) for c in spec.choices)
        errors.append(f"{path}: expected one of {choices}, found {_found(value)}")
        return spec.default
    if isinstance(value, list) and spec.item is not None:
        value = [_validate_value(v, spec.item, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            errors.append(f"{path}: {problem}, found {_found(value)}")
            return spec.default
    return value


# --- reusable checks --------------------------------------------------------


def check_duration(value: Any) -> str | None:
    try:
        parse_duration(value)
    except ValueError:
        return "expected a duration such as 15s, 5m, 1h30m, 7d or a number of seconds"
    return None


def check_port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "expected a port number from 0 to 65535"


def _check_share(value: Any) -> str | None:
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


def _check_matchers(value: Any) -> str | None:
    from agent.alerting.routing import parse_matchers

    try:
        parse_matchers(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_child_routes(value: Any) -> str | None:
    from agent.alerting.routing import RouteError, build_route

    try:
        build_route({"routes": value})
    except RouteError as exc:
        return str(exc).replace("alerting.route.routes", "", 1)
    return None


def _check_receivers(value: Any) -> str | None:
    from agent.alerting.routing import check_receivers

    errors = check_receivers(value)
    return "; ".join(errors) if errors else None


# --- the core schema --------------------------------------------------------

DEFAULT_LISTEN = "127.0.0.1:9201"

_AUTH_GROUP = Schema(
    {
        "bearer_tokens": Field(
            list,
            [],
            "Accepted bearer tokens (use ${ENV} expansion; never commit them).",
            item=Field(str, ""),
        ),
        "basic_auth": Schema(
            {},
            "username: bcrypt hash of the password",
            open=True,
            value=Field(str, "", check=check_bcrypt),
        ),
    },
    "Credentials for one route group; with none set the group is open.",
)


def _check_interval(value: Any) -> str | None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return "expected a duration such as 15s, 1m or 1h"
    return None if seconds > 0 else "expected a duration greater than 0"


def _check_resolution(value: Any) -> str | None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return "expected a duration such as 1m, 5m or 1h"
    if seconds < 1 or seconds != int(seconds) or seconds > 2**31 / 1000:
        return "expected whole seconds from 1s to 24d"
    return None


# The rule half of ``alerting`` (agent.alerting.rules / engine).
ALERTING_RULE_FIELDS: dict[str, Field | Schema] = {
    "rule_files": Field(
        list,
        [],
        "Prometheus rule files (alerting and recording rules); globs allowed, relative\n"
        "paths from this file's directory. Checked by check-config, reloaded on SIGHUP.",
        item=Field(str, ""),
    ),
    "evaluation_interval": Field(
        (str, int, float),
        "1m",
        "How often rule groups without their own interval are evaluated.",
        check=_check_interval,
    ),
    "external_labels": Schema(
        {},
        "Labels added to every alert sent (where the alert lacks them); $externalLabels\n"
        "in rule templates.",
        open=True,
        value=Field(str, ""),
    ),
}

# The notification half of ``alerting`` (routing, receivers, delivery); the
# rule half adds its keys next to these.
ALERTING_NOTIFY_FIELDS: dict[str, Field | Schema] = {
    "external_url": Field(
        str, "", "Link back to this agent in notifications (the payload's externalURL)."
    ),
    "resend_delay": Field(
        (str, int, float),
        "1m",
        "Alertmanager notifiers get firing alerts again this often (endsAt = 4x this).",
        check=check_duration,
    ),
    "receivers": Field(
        list,
        [],
        "List of {name: NAME, <type>_configs: [...]}, type being webhook, email, slack,\n"
        "alertmanager or a plugin's notifier; every entry takes send_resolved (default\n"
        "true). See docs/notifiers.md.",
        item=Field(dict, {}),
        check=_check_receivers,
    ),
    "route": Schema(
        {
            "receiver": Field(str, "", "Receiver of every alert no child route takes."),
            "group_by": Field(
                list,
                [],
                "Labels that split alerts into groups; ['...'] groups by every label,\n"
                "[] puts all alerts of the route into one group.",
                item=Field(str, ""),
            ),
            "group_wait": Field(
                (str, int, float),
                "30s",
                "Wait this long after a group's first alert before notifying.",
                check=check_duration,
            ),
            "group_interval": Field(
                (str, int, float),
                "5m",
                "Then notify about changes (new or resolved alerts) at most this often.",
                check=check_duration,
            ),
            "repeat_interval": Field(
                (str, int, float),
                "4h",
                "Re-notify a group that keeps firing unchanged after this long.",
                check=check_duration,
            ),
            "matchers": Field(
                list,
                [],
                'Child routes only: label="v", label!="v", label=~"re", label!~"re".',
                item=Field(str, ""),
                check=_check_matchers,
            ),
            "continue": Field(
                bool, False, "Child routes only: keep matching later siblings after this one."
            ),
            "routes": Field(
                list,
                [],
                "Child routes, with these same keys; unset ones inherit from the parent.",
                item=Field(dict, {}),
                check=_check_child_routes,
            ),
        },
        "Alertmanager-style routing tree; the root takes every alert.",
    ),
    "delivery": Schema(
        {
            "max_attempts": Field(
                int, 10, "Give a notification up after this many failures.", check=check_positive
            ),
            "initial_backoff": Field(
                (str, int, float),
                "1s",
                "Wait after the first failure; doubles after each further one.",
                check=check_duration,
            ),
            "max_backoff": Field(
                (str, int, float), "5m", "Longest wait between attempts.", check=check_duration
            ),
            "max_age": Field(
                (str, int, float),
                "1h",
                "Give a notification up once it is this old.",
                check=check_duration,
            ),
            "timeout": Field(
                (str, int, float),
                "30s",
                "Upper bound on one delivery attempt (notifiers have their own timeouts).",
                check=check_duration,
            ),
        },
        "Retries of failed notifications (kept in the database across restarts).",
    ),
}

CORE_SCHEMA = Schema(
    {
        "listen": Field(str, DEFAULT_LISTEN, "HOST:PORT to serve HTTP on.", check=check_listen),
        "data_dir": Field(
            str,
            "",
            "Directory for the SQLite database; empty means $STATE_DIRECTORY, "
            "else $XDG_DATA_HOME/tsagent (~/.local/share/tsagent).",
        ),
        "log": Schema(
            {
                "level": Field(
                    str, "info", "Log level.", choices=("debug", "info", "warning", "error")
                ),
                "format": Field(str, "logfmt", "One event a line.", choices=("logfmt", "json")),
            }
        ),
        "server": Schema(
            {
                "max_body_bytes": Field(
                    int, 32 * 1024 * 1024, "Largest request body.", check=check_positive
                ),
                "shutdown_timeout": Field(
                    (str, int, float), "30s", "Grace period on SIGTERM.", check=check_duration
                ),
                "max_inflight_ingest_bytes": Field(
                    int,
                    48 * 1024 * 1024,
                    "Bytes of large (64 KiB+) ingest requests processed at once (remote\n"
                    "write: decompressed); more get 429 with Retry-After. See docs/security.md.",
                    check=check_positive,
                ),
                "header_read_timeout": Field(
                    (str, int, float),
                    "15s",
                    "Close a new connection that has not sent complete request headers\n"
                    "by then (slow-loris defence); 0 disables.",
                    check=check_duration,
                ),
                "tls": Schema(
                    {
                        "cert_file": Field(str, "", "PEM certificate; TLS is on when set."),
                        "key_file": Field(str, "", "PEM private key."),
                        "client_ca_file": Field(
                            str, "", "CA bundle; when set, clients must present a certificate."
                        ),
                        "min_version": Field(str, "TLS1.2", choices=("TLS1.2", "TLS1.3")),
                    }
                ),
            }
        ),
        "auth": Schema(
            {"write": _AUTH_GROUP, "read": _AUTH_GROUP, "admin": _AUTH_GROUP},
            "Authentication per route group.",
        ),
        "storage": Schema(
            {
                "synchronous": Field(
                    str,
                    "NORMAL",
                    "SQLite synchronous mode of the log: NORMAL survives a killed process,\n"
                    "FULL also a power cut (slower).",
                    choices=("OFF", "NORMAL", "FULL", "EXTRA"),
                ),
                "retention": Field(
                    (str, int),
                    "0",
                    "Delete samples older than this; 0 keeps all.",
                    check=check_duration,
                ),
                "retention_rules": Field(
                    list,
                    [],
                    "List of {match: REGEX, retention: DURATION}; the first regex matching\n"
                    "the whole metric name overrides storage.retention (0 keeps all).",
                    item=Schema(
                        {
                            "match": Field(str, ".*", check=check_regex),
                            "retention": Field((str, int), "0", check=check_duration),
                        }
                    ),
                ),
                "retention_interval": Field(
                    (str, int, float),
                    "5m",
                    "How often expired samples are deleted (and their space freed).",
                    check=check_duration,
                ),
                "out_of_order_window": Field(
                    (str, int),
                    "0",
                    "Accept samples this far behind a series' newest; 0 rejects them.",
                    check=check_duration,
                ),
                "block_size": Field(
                    int, 720, "Samples per series that trigger a flush.", check=check_positive
                ),
                "flush_age": Field(
                    (str, int), "2h", "Flush head data older than this.", check=check_duration
                ),
                "flush_interval": Field(
                    (str, int, float),
                    "60s",
                    "How often to look for data to flush.",
                    check=check_duration,
                ),
                "head_memory_limit_bytes": Field(
                    int,
                    512 * 1024 * 1024,
                    "Above this, ingestion answers back-off (HTTP 429) instead of growing.",
                    check=check_positive,
                ),
                "reclaim_min_bytes": Field(
                    int,
                    1 << 20,
                    "Give free pages back to the file system (after a flush) once they\n"
                    "are at least this many bytes and 2% of the file; 0: whenever any.",
                    check=check_non_negative,
                ),
                "checkpoint_min_bytes": Field(
                    int,
                    4 << 20,
                    "Rewrite the log as a compact copy of the head once the log rows\n"
                    "written since the last rewrite exceed this and its size.",
                    check=check_non_negative,
                ),
                "free_pages_warn_share": Field(
                    (float, int),
                    0.5,
                    "Log a warning when free pages are this share of the database file\n"
                    "(tsagent_storage_free_bytes); 0 never warns.",
                    check=_check_share,
                ),
                "rollups": Schema(
                    {
                        "enabled": Field(
                            bool,
                            True,
                            "Compute rollups (min/max/sum/count/first/last per bucket) in the\n"
                            "background; PromQL *_over_time uses them when provably exact.",
                        ),
                        "resolutions": Field(
                            list,
                            ["1h"],
                            "Bucket widths (whole seconds); buckets are [t, t+res), t a multiple.\n"
                            "A bucket takes ~23 bytes: at a 15 s scrape interval 1m buckets\n"
                            "cost more than the raw samples they summarise, so add 1m or 5m\n"
                            "only where raw retention is shorter than the range you query.",
                            item=Field((str, int), "1m", check=_check_resolution),
                        ),
                        "retention": Schema(
                            {
                                "1m": Field((str, int), "30d", check=check_duration),
                                "5m": Field((str, int), "365d", check=check_duration),
                                "1h": Field((str, int), "0", check=check_duration),
                            },
                            "Retention per resolution (key: a resolution); 0 keeps forever.\n"
                            "Independent of storage.retention, which never deletes rollups.",
                            open=True,
                            value=Field((str, int), "0", check=check_duration),
                        ),
                        "interval": Field(
                            (str, int, float),
                            "1m",
                            "How often a pass rolls up closed blocks and recomputes late data.",
                            check=_check_interval,
                        ),
                        "delay": Field(
                            (str, int, float),
                            "1m",
                            "A block is rolled up once it ended this long ago.",
                            check=check_duration,
                        ),
                    },
                    "Rollups (downsampling); see docs/rollups.md.",
                ),
                "codec": Field(str, "", "Default codec; empty picks the built-in default."),
                "codec_rules": Field(
                    list,
                    [],
                    "List of {match: REGEX, codec: NAME}; first match on the metric name wins.",
                    item=Schema(
                        {
                            "match": Field(str, ".*", check=check_regex),
                            "codec": Field(str, ""),
                        }
                    ),
                ),
            }
        ),
        "limits": Schema(
            {
                "max_active_series": Field(
                    int,
                    0,
                    "Refuse new series once this many have a sample inside active_window;\n"
                    "0: no cap.",
                    check=check_non_negative,
                ),
                "active_window": Field(
                    (str, int),
                    "1h",
                    "How recent a series' newest sample must be to count as active.",
                    check=check_duration,
                ),
                "rules": Field(
                    list,
                    [],
                    "Caps per metric. {metric: REGEX, max_series: N} caps a metric's\n"
                    "series; {metric: REGEX, label: NAME, max_values: N} caps one label's\n"
                    "distinct values. Existing series keep flowing; new ones over a cap\n"
                    "are refused, and the sender is told why.",
                    item=Schema(
                        {
                            "metric": Field(
                                str, ".*", "Regex on the whole metric name.", check=check_regex
                            ),
                            "label": Field(str, "", "Label whose distinct values are capped."),
                            "max_values": Field(
                                int, 0, "Distinct values of `label`.", check=check_non_negative
                            ),
                            "max_series": Field(
                                int, 0, "Series per metric.", check=check_non_negative
                            ),
                        }
                    ),
                ),
                "min_timestamp": Field(
                    (str, int),
                    "1970-01-01T00:00:00Z",
                    "Refuse samples older than this (RFC 3339, or ms since the epoch), on\n"
                    "every ingest path, backfills included (reason out_of_bounds).",
                    check=check_timestamp,
                ),
                "max_future": Field(
                    (str, int),
                    "2d",
                    "Refuse samples further than this ahead of the clock (out_of_bounds).",
                    check=check_duration,
                ),
                "max_labels_per_series": Field(
                    int,
                    40,
                    "Refuse new series with more labels; 0: no cap.",
                    check=check_non_negative,
                ),
                "max_label_name_length": Field(
                    int,
                    256,
                    "Longest label name of a new series; 0: no cap.",
                    check=check_non_negative,
                ),
                "max_label_value_length": Field(
                    int,
                    4096,
                    "Longest label value of a new series; 0: no cap.",
                    check=check_non_negative,
                ),
                "max_metric_name_length": Field(
                    int,
                    4096,
                    "Longest metric name of a new series; 0: no cap.",
                    check=check_non_negative,
                ),
            },
            "Cardinality control and input bounds. Caps also settable at run time with\n"
            "Store.limit_cardinality(); see docs/security.md for the bounds.",
        ),
        "query": Schema(
            {
                "lookback_delta": Field(
                    (str, int, float),
                    "5m",
                    "How far back an instant selector looks for a sample.",
                    check=check_duration,
                ),
                "timeout": Field(
                    (str, int, float),
                    "2m",
                    "Longest a query may run (503 timeout); a request's timeout= only lowers it.",
                    check=check_duration,
                ),
                "max_samples": Field(
                    int,
                    50_000_000,
                    "Samples one query may load (422 execution error beyond).",
                    check=check_positive,
                ),
                "max_memory_bytes": Field(
                    int,
                    1024 * 1024 * 1024,
                    "Intermediate results one query may hold, summed (422 beyond).",
                    check=check_positive,
                ),
                "max_concurrency": Field(
                    int,
                    20,
                    "Queries evaluated at once, each in a worker thread.",
                    check=check_positive,
                ),
                "cpu_workers": Field(
                    int,
                    0,
                    "Admitted queries evaluated at the same time; 0: CPU cores - 1, at least 1.",
                    check=check_non_negative,
                ),
                "max_queued": Field(
                    int,
                    200,
                    "Queries waiting for a slot; more are refused (503 unavailable).",
                    check=check_non_negative,
                ),
                "max_query_length": Field(
                    int,
                    65536,
                    "Longest query text, checked before parsing (400 beyond).",
                    check=check_positive,
                ),
                "max_query_depth": Field(
                    int,
                    256,
                    "Deepest bracket nesting, checked before parsing (400 beyond).",
                    check=check_positive,
                ),
                "max_query_operators": Field(
                    int,
                    512,
                    "Most binary operators in one query, checked before parsing (400 beyond).",
                    check=check_positive,
                ),
                "default_timezone": Field(
                    str,
                    "",
                    "IANA zone for tz-less local times, align=calendar and localtime=true;\n"
                    "empty: the machine's zone.",
                    check=check_timezone,
                ),
                "cache": Schema(
                    {
                        "enabled": Field(
                            bool, True, "Cache query results (invalidated by writes)."
                        ),
                        "max_bytes": Field(
                            int,
                            128 * 1024 * 1024,
                            "Memory for cached results; least recently used go first.",
                            check=check_non_negative,
                        ),
                        "ttl": Field(
                            (str, int, float),
                            "5m",
                            "Longest a result is served from the cache.",
                            check=check_duration,
                        ),
                    },
                    "Result cache of /api/v1/query, /api/v1/query_range and Store.query*.",
                ),
            },
            "PromQL queries (HTTP API and Store.query / Store.query_range).",
        ),
        "plugins": Schema(
            {
                "enabled": Field(
                    list,
                    [],
                    "Plugins that must load; the daemon refuses to start without them.",
                    item=Field(str, ""),
                ),
                "disabled": Field(list, [], "Plugins never to load.", item=Field(str, "")),
            }
        ),
        "alerting": Schema(
            {**ALERTING_RULE_FIELDS, **ALERTING_NOTIFY_FIELDS},
            "Alerting: rule files and their evaluation; notifications: receivers,\n"
            "routing and grouping, delivery retries.",
        ),
        "ingest": Schema({}, "Ingestor sections, added by plugins."),
        "export": Schema({}, "Exporter sections, added by plugins."),
    }
)


# --- environment expansion --------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, path: str, errors: list[str], env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string values (secrets stay out of files)."""
    if isinstance(data, dict):
        return {
            k: expand_env(v, f"{path}.{k}" if path else str(k), errors, env)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [expand_env(v, f"{path}[{i}]", errors, env) for i, v in enumerate(data)]
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(sub, data)
    return data


# --- the typed result ---------------------------------------------------------


@dataclass
class Config:
    """The validated configuration; ``raw`` keeps every section, plugins' included."""

    raw: dict[str, Any]
    source: str = "<defaults>"
    extra_schemas: dict[str, Schema] = field(default_factory=dict)

    def section(self, dotted: str) -> dict[str, Any]:
        node: Any = self.raw
        for part in dotted.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.raw["listen"])

    @property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.raw["data_dir"])

    def duration(self, dotted: str) -> float:
        section, _, key = dotted.rpartition(".")
        return parse_duration(self.section(section)[key])


def resolve_data_dir(configured: str) -> Path:
    if configured:
        return Path(configured).expanduser()
    state = os.environ.get("STATE_DIRECTORY")
    if state:  # systemd StateDirectory=; may hold several paths separated by ':'
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tsagent"


def build_schema(extra: Mapping[str, Schema]) -> Schema:
    """Graft plugin sections into the core schema at their dotted paths."""
    root: dict[str, Any] = dict(CORE_SCHEMA.fields)

    def graft(fields: dict[str, Any], parts: list[str], schema: Schema) -> dict[str, Any]:
        head, rest = parts[0], parts[1:]
        if not rest:
            existing = fields.get(head)
            if isinstance(existing, Schema) and isinstance(schema, Schema) and existing.fields:
                # Several plugins may contribute to one section ("export" itself and
                # "export.remote_write"): merge instead of letting the last one win.
                merged = {**existing.fields, **schema.fields}
                fields[head] = Schema(merged, schema.help or existing.help)
            else:
                fields[head] = schema
            return fields
        existing = fields.get(head)
        sub = dict(existing.fields) if isinstance(existing, Schema) else {}
        help_text = existing.help if isinstance(existing, Schema) else ""
        fields[head] = Schema(graft(sub, rest, schema), help_text)
        return fields

    for dotted, schema in extra.items():
        root = graft(root, dotted.split("."), schema)
    return Schema(root, CORE_SCHEMA.help)


def load_config(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    extra_schemas: Mapping[str, Schema] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load, expand and validate. Raises :class:`ConfigError` listing every problem."""
    source = str(path) if path is not None else "<defaults>"
    if text is None and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read file: {exc.strerror}"], source) from exc
    data: Any = {}
    if text:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = ""
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f"line {mark.line + 1}, column {mark.column + 1}: "
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{where}invalid YAML: {problem}"], source) from exc
    errors: list[str] = []
    data = expand_env(data if data is not None else {}, "", errors, env or os.environ)
    if overrides:
        data = _apply_overrides(data if isinstance(data, dict) else {}, overrides)
    schemas = dict(extra_schemas or {})
    raw = validate(data, build_schema(schemas), "", errors)
    if errors:
        raise ConfigError(errors, source)
    return Config(raw=raw, source=source, extra_schemas=schemas)


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``storage.retention``) from command-line flags over the file."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


def peek_plugins_section(path: str | Path | None) -> dict[str, list[str]]:
    """Read ``plugins.enabled/disabled`` before full validation.

    Plugins must be loaded before the file can be validated (they add
    sections to the schema), so this look is deliberately lenient; the full
    validation that follows reports anything wrong here too.
    """
    out: dict[str, list[str]] = {"enabled": [], "disabled": []}
    if path is None:
        return out
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return out
    section = data.get("plugins") if isinstance(data, dict) else None
    if isinstance(section, dict):
        for key in out:
            value = section.get(key)
            if isinstance(value, list):
                out[key] = [str(v) for v in value]
    return out


def render_example(schema: Schema, indent: int = 0) -> str:
    """The example config: every key, its default and its help, from the schema itself.

    Generating it keeps ``config/tsagent.example.yaml`` true; a test compares
    the committed file with this output.
    """
    lines: list[str] = []
    pad = "  " * indent
    for key, spec in schema.fields.items():
        if spec.help:
            lines.extend(f"{pad}# {h}" for h in spec.help.splitlines())
        if isinstance(spec, Schema):
            if not spec.fields:
                lines.append(f"{pad}{key}: {{}}")
                continue
            lines.append(f"{pad}{key}:")
            lines.append(render_example(spec, indent + 1).rstrip("\n"))
            continue
        if spec.choices:
            lines.append(f"{pad}# one of: {', '.join(str(c) for c in spec.choices)}")
        value = yaml.safe_dump(spec.default, default_flow_style=True).strip()
        if value.endswith("\n..."):
            value = value[: -len("\n...")]
        value = value.removesuffix("...").strip()
        lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines) + "\n"
