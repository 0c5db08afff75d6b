"""The core's configuration schema: every section but those plugins contribute.

The example config (``tsagent example-config``) and the configuration
reference are generated from this table, so its help texts are the docs.
"""

from __future__ import annotations

from typing import Any

from agent.config.checks import (
    DURATION_CHECKS,
    check_bcrypt,
    check_child_routes,
    check_duration,
    check_listen,
    check_matchers,
    check_non_negative,
    check_positive,
    check_receivers,
    check_regex,
    check_share,
    check_timestamp,
    check_timezone,
)
from agent.config.schema import Field, Schema
from agent.durations import parse_duration

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
        check=check_receivers,
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
                check=check_matchers,
            ),
            "continue": Field(
                bool, False, "Child routes only: keep matching later siblings after this one."
            ),
            "routes": Field(
                list,
                [],
                "Child routes, with these same keys; unset ones inherit from the parent.",
                item=Field(dict, {}),
                check=check_child_routes,
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
                "event_loop": Field(
                    str,
                    "auto",
                    "The event loop: uvloop (answers each request ~0.1 ms sooner),\n"
                    "asyncio (the standard library's), or auto (uvloop when installed).\n"
                    "Read at start only.",
                    choices=("auto", "uvloop", "asyncio"),
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
                    check=check_share,
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
                    "Result cache of /api/v1/query, /api/v1/query_range and Agent.query*.",
                ),
            },
            "PromQL queries (HTTP API and Agent.query / Agent.query_range).",
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


DURATION_CHECKS.update({_check_interval, _check_resolution})
