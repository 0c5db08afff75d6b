"""The ``ingest.scrape`` config section: schema, cross-field checks, compiled job specs.

Keys mirror Prometheus' ``scrape_config`` so that a job can be pasted from a
``prometheus.yml``. The schema checks types and per-field values (with key
paths such as ``ingest.scrape.scrape_configs[0].relabel_configs[1].regex``);
:func:`check` adds what a schema cannot say (exclusive auth settings, timeout
above interval, rule fields that depend on the action); :func:`compile_jobs`
turns the validated mapping into immutable specs the scraper runs.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.plugin_api import (
    RELABEL_SCHEMA,
    Field,
    Labels,
    RelabelError,
    RelabelRule,
    Schema,
    check_duration,
    compile_rule,
    make_labels,
    parse_duration,
    tls_config_errors,
    tls_config_schema,
    valid_label_name,
)

SECTION = "ingest.scrape"

# Prometheus' scrape protocol names and the media types they ask for.
PROTOCOL_HEADERS = {
    "OpenMetricsText1.0.0": "application/openmetrics-text;version=1.0.0",
    "OpenMetricsText0.0.1": "application/openmetrics-text;version=0.0.1",
    "PrometheusText1.0.0": "text/plain;version=1.0.0",
    "PrometheusText0.0.4": "text/plain;version=0.0.4",
}
DEFAULT_PROTOCOLS = ["OpenMetricsText1.0.0", "OpenMetricsText0.0.1", "PrometheusText0.0.4"]


def _check_label(value: Any) -> str | None:
    return None if valid_label_name(value) else "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*)"


def _check_non_negative(value: Any) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def _check_target(value: Any) -> str | None:
    if not value or "/" in value or " " in value:
        return "expected host:port (no scheme or path; use scheme and metrics_path)"
    return None


def _check_protocol(value: Any) -> str | None:
    if value in PROTOCOL_HEADERS:
        return None
    return "expected one of " + ", ".join(repr(p) for p in PROTOCOL_HEADERS)


def _check_positive_duration(value: Any) -> str | None:
    problem = check_duration(value)
    if problem:
        return problem
    return None if parse_duration(value) > 0 else "expected a duration > 0"


_DURATION = (str, int, float)


_JOB_SCHEMA = Schema(
    {
        "job_name": Field(str, "", "Required, unique; the job label of every series."),
        "scrape_interval": Field(
            _DURATION, None, "Default: global.", nullable=True, check=_check_positive_duration
        ),
        "scrape_timeout": Field(
            _DURATION,
            None,
            "Default: global, capped at scrape_interval.",
            nullable=True,
            check=_check_positive_duration,
        ),
        "metrics_path": Field(str, "/metrics"),
        "scheme": Field(str, "http", choices=("http", "https")),
        "params": Schema(
            {},
            "URL query parameters: name: [values].",
            open=True,
            value=Field(list, [], item=Field(str, "")),
        ),
        "honor_labels": Field(
            bool,
            False,
            "On a clash with a target label keep the scraped value\n"
            "(else the scraped one becomes exported_NAME).",
        ),
        "honor_timestamps": Field(bool, True, "Use timestamps the target exposes."),
        "track_timestamps_staleness": Field(
            bool, False, "Also write staleness markers for series with explicit timestamps."
        ),
        "scrape_protocols": Field(
            list,
            list(DEFAULT_PROTOCOLS),
            "Accept header preference, most preferred first.",
            item=Field(str, "", check=_check_protocol),
        ),
        "sample_limit": Field(
            int,
            0,
            "More samples than this after metric relabeling fail the scrape; 0: no limit.",
            check=_check_non_negative,
        ),
        "label_limit": Field(
            int,
            0,
            "Most labels per series, else the scrape fails; 0: no limit.",
            check=_check_non_negative,
        ),
        "label_name_length_limit": Field(int, 0, check=_check_non_negative),
        "label_value_length_limit": Field(int, 0, check=_check_non_negative),
        "body_size_limit": Field(
            int,
            0,
            "Largest uncompressed response in bytes, else the scrape fails; 0: no limit.",
            check=_check_non_negative,
        ),
        "follow_redirects": Field(bool, True),
        "basic_auth": Schema(
            {
                "username": Field(str, ""),
                "password": Field(str, "", "Use ${ENV} expansion or password_file."),
                "password_file": Field(str, "", "Read at every scrape."),
            }
        ),
        "authorization": Schema(
            {
                "type": Field(str, "Bearer"),
                "credentials": Field(str, ""),
                "credentials_file": Field(str, "", "Read at every scrape."),
            }
        ),
        "bearer_token": Field(str, "", "Same as authorization.credentials."),
        "bearer_token_file": Field(str, "", "Same as authorization.credentials_file."),
        "tls_config": tls_config_schema(),
        "static_configs": Field(
            list,
            [],
            "List of {targets: [host:port, ...], labels: {name: value}}.",
            item=Schema(
                {
                    "targets": Field(list, [], item=Field(str, "", check=_check_target)),
                    "labels": Schema({}, open=True, value=Field(str, "", check=None)),
                }
            ),
        ),
        "file_sd_configs": Field(
            list,
            [],
            "List of {files: [glob, ...], refresh_interval}: target groups in YAML/JSON files, "
            "re-read when they change and every refresh_interval (__meta_filepath).",
            item=Schema(
                {
                    "files": Field(list, [], item=Field(str, "")),
                    "refresh_interval": Field(_DURATION, "5m", check=_check_positive_duration),
                }
            ),
        ),
        "http_sd_configs": Field(
            list,
            [],
            "List of {url, refresh_interval}: Prometheus HTTP SD (a JSON list of target "
            "groups), fetched every refresh_interval (__meta_url).",
            item=Schema(
                {
                    "url": Field(str, ""),
                    "refresh_interval": Field(_DURATION, "60s", check=_check_positive_duration),
                }
            ),
        ),
        "relabel_configs": Field(
            list, [], "Applied to each target before scraping.", item=RELABEL_SCHEMA
        ),
        "metric_relabel_configs": Field(
            list, [], "Applied to each scraped series before storing.", item=RELABEL_SCHEMA
        ),
    }
)

_JOBS_HELP = "\n".join(
    [
        "Prometheus scrape_config jobs, same keys and defaults, for example:",
        "  - job_name: node",
        "    scrape_interval: 15s",
        "    static_configs: [{targets: ['localhost:9100'], labels: {env: prod}}]",
        "    metric_relabel_configs: [{source_labels: [__name__], regex: go_.*, action: drop}]",
        "Keys per job:",
        *textwrap.wrap(
            ", ".join(_JOB_SCHEMA.fields) + ".", 80, initial_indent="  ", subsequent_indent="  "
        ),
    ]
)

SCHEMA = Schema(
    {
        "global": Schema(
            {
                "scrape_interval": Field(
                    _DURATION, "1m", "Default scrape interval.", check=_check_positive_duration
                ),
                "scrape_timeout": Field(
                    _DURATION, "10s", "Default scrape timeout.", check=_check_positive_duration
                ),
                "external_labels": Schema(
                    {},
                    "Added to every scraped series (and up/scrape_*) lacking the label.",
                    open=True,
                    value=Field(str, ""),
                ),
            }
        ),
        "stale_markers_on_stop": Field(
            bool,
            True,
            "Write staleness markers for every scraped series when tsagent stops\n"
            "(Prometheus does so only when a target goes away, not at shutdown).",
        ),
        "scrape_configs": Field(
            list,
            [],
            _JOBS_HELP,
            item=_JOB_SCHEMA,
        ),
    },
    help="Scrape Prometheus/OpenMetrics targets (Prometheus agent style).",
)


# --- compiled specs ---------------------------------------------------------------


@dataclass(frozen=True)
class HttpSpec:
    """Client settings of a job; secrets stay as given (files are read per scrape)."""

    basic_username: str = ""
    basic_password: str = ""
    basic_password_file: str = ""
    auth_type: str = "Bearer"
    auth_credentials: str = ""
    auth_credentials_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False
    follow_redirects: bool = True


@dataclass(frozen=True)
class JobSpec:
    name: str
    interval: float
    timeout: float
    metrics_path: str
    scheme: str
    params: tuple[tuple[str, tuple[str, ...]], ...]
    honor_labels: bool
    honor_timestamps: bool
    track_timestamps_staleness: bool
    accept: str
    sample_limit: int
    label_limit: int
    label_name_length_limit: int
    label_value_length_limit: int
    body_size_limit: int
    http: HttpSpec
    relabel: tuple[RelabelRule, ...]
    metric_relabel: tuple[RelabelRule, ...]
    # (address, group labels) per static target
    targets: tuple[tuple[str, Labels], ...]
    external_labels: Labels = ()
    # (kind "file"|"http", files or url, refresh seconds) per discovery config
    discovery: tuple[tuple[str, tuple[str, ...], float], ...] = ()
    interval_text: str = field(default="", compare=False)
    timeout_text: str = field(default="", compare=False)


def format_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration string (``1m30s``, ``200ms``), for ``__scrape_*__``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    if ms:
        out.append(f"{ms}ms")
    return "".join(out)


def accept_header(protocols: list[str]) -> str:
    """The Accept header Prometheus sends for a protocol preference list."""
    vals = []
    weight = len(PROTOCOL_HEADERS) + 1
    for proto in protocols:
        vals.append(f"{PROTOCOL_HEADERS[proto]};q=0.{weight}")
        weight -= 1
    vals.append(f"*/*;q=0.{weight}")
    return ",".join(vals)


def check(section: Mapping[str, Any], prefix: str = SECTION) -> list[str]:
    """Cross-field problems, each starting with its key path."""
    errors: list[str] = []
    g = section.get("global", {})
    seen: dict[str, int] = {}
    for i, job in enumerate(section.get("scrape_configs", [])):
        path = f"{prefix}.scrape_configs[{i}]"
        name = job.get("job_name", "")
        if not name:
            errors.append(f"{path}.job_name: required")
        elif name in seen:
            first = seen[name]
            errors.append(f"{path}.job_name: {name!r} is already used by scrape_configs[{first}]")
        else:
            seen[name] = i
        interval = parse_duration(job.get("scrape_interval") or g.get("scrape_interval", "1m"))
        if job.get("scrape_timeout") is not None:
            timeout = parse_duration(job["scrape_timeout"])
            if timeout > interval:
                errors.append(
                    f"{path}.scrape_timeout: must not exceed scrape_interval "
                    f"({format_duration(timeout)} > {format_duration(interval)})"
                )
        ba = job.get("basic_auth", {})
        az = job.get("authorization", {})
        if ba.get("password") and ba.get("password_file"):
            errors.append(f"{path}.basic_auth: set password or password_file, not both")
        if (ba.get("password") or ba.get("password_file")) and not ba.get("username"):
            errors.append(f"{path}.basic_auth.username: required with a password")
        if az.get("credentials") and az.get("credentials_file"):
            errors.append(f"{path}.authorization: set credentials or credentials_file, not both")
        if job.get("bearer_token") and job.get("bearer_token_file"):
            errors.append(f"{path}: set bearer_token or bearer_token_file, not both")
        kinds = [
            k
            for k, on in (
                ("basic_auth", bool(ba.get("username"))),
                ("authorization", bool(az.get("credentials") or az.get("credentials_file"))),
                ("bearer_token", bool(job.get("bearer_token") or job.get("bearer_token_file"))),
            )
            if on
        ]
        if len(kinds) > 1:
            errors.append(f"{path}: at most one of {', '.join(kinds)} may be configured")
        errors += tls_config_errors(job.get("tls_config", {}), f"{path}.tls_config")
        for j, group in enumerate(job.get("static_configs", [])):
            for name_ in group.get("labels", {}):
                if not valid_label_name(name_):
                    errors.append(f"{path}.static_configs[{j}].labels.{name_}: invalid label name")
        for j, sd in enumerate(job.get("file_sd_configs", [])):
            if not sd.get("files"):
                errors.append(f"{path}.file_sd_configs[{j}].files: at least one file or glob")
            for f in sd.get("files", []):
                if not f.endswith((".json", ".yml", ".yaml")):
                    errors.append(
                        f"{path}.file_sd_configs[{j}].files: {f!r} must end in .json, .yml or .yaml"
                    )
        for j, sd in enumerate(job.get("http_sd_configs", [])):
            if not str(sd.get("url", "")).startswith(("http://", "https://")):
                errors.append(f"{path}.http_sd_configs[{j}].url: expected an http(s):// URL")
        for key in ("relabel_configs", "metric_relabel_configs"):
            for j, rule in enumerate(job.get(key, [])):
                try:
                    compile_rule(rule)
                except RelabelError as exc:
                    errors.append(f"{path}.{key}[{j}].{exc.key}: {exc}")
    for name_ in g.get("external_labels", {}):
        if not valid_label_name(name_):
            errors.append(f"{prefix}.global.external_labels.{name_}: invalid label name")
    return errors


def compile_jobs(section: Mapping[str, Any]) -> list[JobSpec]:
    """Validated section -> job specs (assumes :func:`check` found nothing)."""
    g = section.get("global", {})
    g_interval = parse_duration(g.get("scrape_interval", "1m"))
    g_timeout = parse_duration(g.get("scrape_timeout", "10s"))
    external = make_labels(dict(g.get("external_labels", {})))
    jobs = []
    for job in section.get("scrape_configs", []):
        interval = g_interval
        if job.get("scrape_interval"):
            interval = parse_duration(job["scrape_interval"])
        if job.get("scrape_timeout") is not None:
            timeout = parse_duration(job["scrape_timeout"])
        else:
            timeout = min(g_timeout, interval)
        ba, az, tls = job["basic_auth"], job["authorization"], job["tls_config"]
        http = HttpSpec(
            basic_username=ba["username"],
            basic_password=ba["password"],
            basic_password_file=ba["password_file"],
            auth_type=az["type"] or "Bearer",
            auth_credentials=az["credentials"] or job["bearer_token"],
            auth_credentials_file=az["credentials_file"] or job["bearer_token_file"],
            ca_file=tls["ca_file"],
            cert_file=tls["cert_file"],
            key_file=tls["key_file"],
            server_name=tls["server_name"],
            insecure_skip_verify=tls["insecure_skip_verify"],
            follow_redirects=job["follow_redirects"],
        )
        targets = tuple(
            (addr, make_labels(dict(group.get("labels", {}))))
            for group in job["static_configs"]
            for addr in group.get("targets", [])
        )
        jobs.append(
            JobSpec(
                name=job["job_name"],
                interval=interval,
                timeout=timeout,
                metrics_path=job["metrics_path"],
                scheme=job["scheme"],
                params=tuple(sorted((k, tuple(v)) for k, v in job["params"].items())),
                honor_labels=job["honor_labels"],
                honor_timestamps=job["honor_timestamps"],
                track_timestamps_staleness=job["track_timestamps_staleness"],
                accept=accept_header(job["scrape_protocols"] or DEFAULT_PROTOCOLS),
                sample_limit=job["sample_limit"],
                label_limit=job["label_limit"],
                label_name_length_limit=job["label_name_length_limit"],
                label_value_length_limit=job["label_value_length_limit"],
                body_size_limit=job["body_size_limit"],
                http=http,
                relabel=tuple(compile_rule(r) for r in job["relabel_configs"]),
                metric_relabel=tuple(compile_rule(r) for r in job["metric_relabel_configs"]),
                targets=targets,
                external_labels=external,
                discovery=tuple(
                    ("file", tuple(sd["files"]), parse_duration(sd["refresh_interval"]))
                    for sd in job["file_sd_configs"]
                )
                + tuple(
                    ("http", (sd["url"],), parse_duration(sd["refresh_interval"]))
                    for sd in job["http_sd_configs"]
                ),
                interval_text=format_duration(interval),
                timeout_text=format_duration(timeout),
            )
        )
    return jobs
