"""``export.remote_write``: the upstreams the forwarder sends to, checked and compiled.

Keys follow Prometheus' ``remote_write`` (``url``, ``remote_timeout``,
``write_relabel_configs``, ``basic_auth``, ``bearer_token``, ``tls_config``,
``queue_config`` as ``queue``), so a block can be pasted from a Prometheus
config, plus ``name`` (required: it keys the upstream's durable queue
position and its metrics, so renaming an upstream starts it afresh),
``match`` (series selectors, like ``match[]`` of ``/federate``) and
``external_labels`` (per upstream; Prometheus has them globally).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.plugin_api import (
    RELABEL_SCHEMA,
    Field,
    Labels,
    Matcher,
    RelabelError,
    RelabelRule,
    Schema,
    check_duration,
    client_ssl_context,
    compile_rule,
    parse_duration,
    tls_config_errors,
    tls_config_schema,
    valid_label_name,
)

SECTION = "export.remote_write"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# Headers the protocol owns (the spec forbids letting users override them).
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Authorization",
        "Host",
        "Content-Encoding",
        "Content-Length",
        "Content-Type",
        "User-Agent",
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Www-Authenticate",
        "Retry-After",
        "X-Prometheus-Remote-Write-Version",
    )
)


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and value > 0 else "must be > 0"


def _non_negative_int(value: Any) -> str | None:
    return None if isinstance(value, int) and value >= 0 else "must be >= 0"


_DURATION = (str, int, float)

QUEUE_SCHEMA = Schema(
    {
        "max_samples_per_send": Field(
            int, 2000, "Most samples in one request.", check=_positive_int
        ),
        "batch_send_deadline": Field(
            _DURATION,
            "5s",
            "Longest a sample waits for a request to fill up before it is sent anyway.",
            check=check_duration,
        ),
        "shards": Field(
            int,
            2,
            "Concurrent senders; a series always goes to the same one (hash of its\n"
            "labels), which keeps per-series order. Changing it re-sends the part of a\n"
            "batch that was in flight at the last stop.",
            check=_positive_int,
        ),
        "min_backoff": Field(
            _DURATION, "30ms", "First retry delay; doubles per retry.", check=check_duration
        ),
        "max_backoff": Field(_DURATION, "5s", "Cap of the retry delay.", check=check_duration),
        "retry_on_http_429": Field(
            bool,
            True,
            "Retry 429 Too Many Requests (honouring Retry-After); false drops the request.",
        ),
        "max_backlog_samples": Field(
            int,
            10_000_000,
            "Undelivered samples kept for this upstream (on disk, ~20 bytes each);\n"
            "beyond it the oldest are dropped (counted, logged). 0: no limit.",
            check=_non_negative_int,
        ),
        "max_backlog_age": Field(
            _DURATION,
            "0",
            "Undelivered samples ingested longer ago than this are dropped (counted,\n"
            "logged). 0: no limit.",
            check=check_duration,
        ),
    },
    "Prometheus' queue_config, same names and defaults where it has them.",
)

UPSTREAM_SCHEMA = Schema(
    {
        "name": Field(str, "", "Required, unique: keys the durable queue position and metrics."),
        "url": Field(str, "", "Required: the receiver, e.g. http://vm:8428/api/v1/write."),
        "remote_timeout": Field(_DURATION, "30s", "Per request.", check=check_duration),
        "match": Field(
            list,
            [],
            "Series selectors (as match[] of /federate); a series is sent when any\n"
            "matches. Empty: every series.",
            item=Field(str, ""),
        ),
        "write_relabel_configs": Field(
            list,
            [],
            "Prometheus relabel rules applied to each series before sending\n"
            "(keep, drop, replace, labeldrop, labelkeep, ...).",
            item=RELABEL_SCHEMA,
        ),
        "external_labels": Schema(
            {},
            "Added to every series that does not have the label already.",
            open=True,
            value=Field(str, ""),
        ),
        "headers": Schema(
            {},
            "Extra HTTP headers (not the ones the protocol or auth own).",
            open=True,
            value=Field(str, ""),
        ),
        "basic_auth": Schema(
            {
                "username": Field(str, ""),
                "password": Field(str, "", "Use ${ENV} expansion or password_file."),
                "password_file": Field(str, "", "Read at every request (rotation-friendly)."),
            }
        ),
        "bearer_token": Field(str, "", "Sent as Authorization: Bearer ..."),
        "bearer_token_file": Field(str, "", "Read at every request."),
        "tls_config": tls_config_schema(),
        "queue": QUEUE_SCHEMA,
    }
)


def _show(spec: Field | Schema) -> str:
    default = spec.default if isinstance(spec, Field) else None
    return str(default).lower() if isinstance(default, bool) else str(default)


UPSTREAMS_FIELD = Field(
    list,
    [],
    "Remote-write upstreams (VictoriaMetrics, Mimir, Thanos Receive, Prometheus), each\n"
    "with its own durable queue, for example:\n"
    "  - name: vm\n"
    "    url: http://127.0.0.1:8428/api/v1/write\n"
    "    external_labels: {agent: edge-1}\n"
    "    queue: {max_samples_per_send: 2000, shards: 2}\n"
    "Keys per upstream: " + ", ".join(UPSTREAM_SCHEMA.fields) + ".\n"
    "queue keys and defaults: "
    + ", ".join(f"{k}: {_show(f)}" for k, f in QUEUE_SCHEMA.fields.items())
    + ".\n"
    "Guarantees, metrics and examples: docs/forwarding.md.",
    item=UPSTREAM_SCHEMA,
)


@dataclass(frozen=True)
class QueueSpec:
    max_samples_per_send: int = 2000
    batch_send_deadline_s: float = 5.0
    shards: int = 2
    min_backoff_s: float = 0.03
    max_backoff_s: float = 5.0
    retry_on_http_429: bool = True
    max_backlog_samples: int = 10_000_000
    max_backlog_age_s: float = 0.0


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream, compiled: what the exporter needs, nothing re-parsed per request."""

    name: str
    url: str
    timeout_s: float = 30.0
    selectors: tuple[tuple[Matcher, ...], ...] = ()
    relabel: tuple[RelabelRule, ...] = ()
    external_labels: Labels = ()
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth: tuple[str, str, str] | None = None  # username, password, password_file
    bearer_token: str = ""
    bearer_token_file: str = ""
    tls: Mapping[str, Any] = field(default_factory=dict)
    queue: QueueSpec = field(default_factory=QueueSpec)

    def ssl_context(self) -> ssl.SSLContext | None:
        """None for plain http or default verification; else a context from tls_config."""
        t = self.tls
        if not self.url.startswith("https:") or not any(
            t.get(k) for k in ("ca_file", "cert_file", "insecure_skip_verify")
        ):
            return None
        return client_ssl_context(
            ca_file=t.get("ca_file"),
            cert_file=t.get("cert_file"),
            key_file=t.get("key_file"),
            insecure_skip_verify=bool(t.get("insecure_skip_verify")),
        )


def upstreams(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The validated list from the whole config (``raw``)."""
    export = raw.get("export") or {}
    items = export.get("remote_write") if isinstance(export, dict) else None
    return list(items or [])


def parse_selector(text: str) -> tuple[Matcher, ...]:
    from agent.plugin_api import ast, parse

    node = ast.unwrap(parse(text))
    if not isinstance(node, ast.VectorSelector) or node.offset_ms or node.at is not None:
        raise ValueError(f"expected a series selector, got {text!r}")
    return tuple(node.matchers)


def check(raw: Mapping[str, Any]) -> list[str]:
    """Cross-field problems, each starting with its key path."""
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, up in enumerate(upstreams(raw)):
        path = f"{SECTION}[{i}]"
        name = up.get("name", "")
        if not name:
            errors.append(f"{path}.name: required")
        elif not _NAME_RE.match(name):
            errors.append(f"{path}.name: use letters, digits, '_', '.', '-' only, found {name!r}")
        elif name in seen:
            errors.append(f"{path}.name: {name!r} is already used by remote_write[{seen[name]}]")
        else:
            seen[name] = i
        url = up.get("url", "")
        if not url:
            errors.append(f"{path}.url: required")
        elif not url.startswith(("http://", "https://")):
            errors.append(f"{path}.url: expected an http:// or https:// URL, found {url!r}")
        for j, sel in enumerate(up.get("match", [])):
            try:
                parse_selector(sel)
            except Exception as exc:  # noqa: BLE001 - parser errors of any kind
                errors.append(f"{path}.match[{j}]: {exc}")
        for j, rule in enumerate(up.get("write_relabel_configs", [])):
            try:
                compile_rule(rule)
            except RelabelError as exc:
                errors.append(f"{path}.write_relabel_configs[{j}].{exc.key}: {exc}")
        for lname in up.get("external_labels", {}):
            if not valid_label_name(lname):
                errors.append(f"{path}.external_labels.{lname}: invalid label name")
        for hname in up.get("headers", {}):
            if hname.lower() in RESERVED_HEADERS:
                errors.append(f"{path}.headers.{hname}: reserved, cannot be set")
        ba = up.get("basic_auth", {})
        if ba.get("password") and ba.get("password_file"):
            errors.append(f"{path}.basic_auth: set password or password_file, not both")
        if (ba.get("password") or ba.get("password_file")) and not ba.get("username"):
            errors.append(f"{path}.basic_auth.username: required with a password")
        if up.get("bearer_token") and up.get("bearer_token_file"):
            errors.append(f"{path}: set bearer_token or bearer_token_file, not both")
        if ba.get("username") and (up.get("bearer_token") or up.get("bearer_token_file")):
            errors.append(f"{path}: at most one of basic_auth, bearer_token may be configured")
        errors += tls_config_errors(up.get("tls_config", {}), f"{path}.tls_config")
        q = up.get("queue", {})
        try:
            lo, hi = parse_duration(q["min_backoff"]), parse_duration(q["max_backoff"])
        except (KeyError, ValueError):
            continue
        if lo <= 0:
            errors.append(f"{path}.queue.min_backoff: must be > 0")
        if hi < lo:
            errors.append(f"{path}.queue.max_backoff: must be >= min_backoff")
    return errors


def compile_upstream(up: Mapping[str, Any]) -> UpstreamSpec:
    q = up["queue"]
    ba = up.get("basic_auth", {})
    return UpstreamSpec(
        name=up["name"],
        url=up["url"],
        timeout_s=parse_duration(up["remote_timeout"]),
        selectors=tuple(parse_selector(s) for s in up.get("match", [])),
        relabel=tuple(compile_rule(r) for r in up.get("write_relabel_configs", [])),
        external_labels=tuple(sorted(up.get("external_labels", {}).items())),
        headers=tuple(up.get("headers", {}).items()),
        basic_auth=(
            (ba["username"], ba.get("password", ""), ba.get("password_file", ""))
            if ba.get("username")
            else None
        ),
        bearer_token=up.get("bearer_token", ""),
        bearer_token_file=up.get("bearer_token_file", ""),
        tls=dict(up.get("tls_config", {})),
        queue=QueueSpec(
            max_samples_per_send=q["max_samples_per_send"],
            batch_send_deadline_s=parse_duration(q["batch_send_deadline"]),
            shards=q["shards"],
            min_backoff_s=parse_duration(q["min_backoff"]),
            max_backoff_s=parse_duration(q["max_backoff"]),
            retry_on_http_429=q["retry_on_http_429"],
            max_backlog_samples=q["max_backlog_samples"],
            max_backlog_age_s=parse_duration(q["max_backlog_age"]),
        ),
    )
