"""From a static target to a scrapeable target: Prometheus' label population, pure.

Prometheus gives each discovered target the labels ``job``, ``__address__``,
``__scheme__``, ``__metrics_path__``, ``__scrape_interval__``,
``__scrape_timeout__`` and ``__param_<name>`` before ``relabel_configs`` run,
so rules can rewrite where and how a target is scraped; afterwards every
label starting with ``__`` is dropped from the series labels (``__tmp_*`` is
the conventional scratch space) and ``instance`` defaults to the address.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlencode

from agent.plugin_api import Labels, make_labels, parse_duration, process
from plugins.scrape.config import JobSpec

ADDRESS = "__address__"
SCHEME = "__scheme__"
METRICS_PATH = "__metrics_path__"
SCRAPE_INTERVAL = "__scrape_interval__"
SCRAPE_TIMEOUT = "__scrape_timeout__"
PARAM_PREFIX = "__param_"
RESERVED_PREFIX = "__"


class TargetError(ValueError):
    """A target that relabeling left unusable (no address, bad interval, ...)."""


@dataclass(frozen=True)
class TargetSpec:
    """One target to scrape: where, how often, and the labels its series get."""

    job: str
    url: str
    labels: Labels  # public labels: job, instance and static/relabeled ones
    interval: float
    timeout: float

    @property
    def key(self) -> tuple[str, str, Labels]:
        """Identity across config reloads (Prometheus hashes labels and URL likewise)."""
        return (self.job, self.url, self.labels)

    def offset(self, seed: int) -> float:
        """Where in each interval this target is scraped: spread, but stable across restarts.

        Prometheus derives the phase from a hash of the target so that many
        targets don't all fire at once, and restarts keep their rhythm.
        """
        digest = hashlib.blake2b(repr(self.key).encode(), digest_size=8).digest()
        h = int.from_bytes(digest, "big") ^ seed
        period_us = max(1, round(self.interval * 1e6))
        return (h % period_us) / 1e6


def populate(address: str, group_labels: Labels, job: JobSpec) -> TargetSpec | None:
    """Apply the job's defaults and ``relabel_configs``; None when a rule drops the target."""
    lb: dict[str, str] = dict(group_labels)
    lb[ADDRESS] = address
    defaults = (
        ("job", job.name),
        (SCRAPE_INTERVAL, job.interval_text),
        (SCRAPE_TIMEOUT, job.timeout_text),
        (METRICS_PATH, job.metrics_path),
        (SCHEME, job.scheme),
    )
    for name, value in defaults:
        if not lb.get(name):
            lb[name] = value
    for name, values in job.params:
        if values:
            lb[PARAM_PREFIX + name] = values[0]
    out = process(lb, job.relabel)
    if out is None:
        return None
    addr = out.get(ADDRESS, "")
    if not addr:
        raise TargetError("no __address__ after relabeling")
    if "/" in addr or " " in addr:
        raise TargetError(f"invalid __address__ {addr!r}: expected host:port")
    scheme = out.get(SCHEME, "http")
    if scheme not in ("http", "https"):
        raise TargetError(f"invalid __scheme__ {scheme!r}")
    try:
        interval = parse_duration(out.get(SCRAPE_INTERVAL, ""))
        timeout = parse_duration(out.get(SCRAPE_TIMEOUT, ""))
    except ValueError as exc:
        raise TargetError(f"invalid __scrape_interval__/__scrape_timeout__: {exc}") from None
    if interval <= 0 or timeout <= 0:
        raise TargetError("scrape interval and timeout must be > 0")
    if timeout > interval:
        raise TargetError("scrape timeout cannot be greater than scrape interval")
    params: dict[str, list[str]] = {k: list(v) for k, v in job.params}
    for name, value in out.items():
        if name.startswith(PARAM_PREFIX):
            key = name[len(PARAM_PREFIX) :]
            if params.get(key):
                params[key][0] = value
            else:
                params[key] = [value]
    path = out.get(METRICS_PATH, "")
    if not path.startswith("/"):
        path = "/" + path
    query = urlencode(sorted(params.items()), doseq=True)
    url = f"{scheme}://{addr}{path}" + (f"?{query}" if query else "")
    public = {k: v for k, v in out.items() if not k.startswith(RESERVED_PREFIX)}
    public.setdefault("instance", addr)
    return TargetSpec(job.name, url, make_labels(public), interval, timeout)


def targets_of(job: JobSpec) -> tuple[list[TargetSpec], list[str]]:
    """All targets of a job, and one message per target that could not be built."""
    found: list[TargetSpec] = []
    errors: list[str] = []
    seen: set[tuple[str, str, Labels]] = set()
    for address, labels in job.targets:
        try:
            spec = populate(address, labels, job)
        except TargetError as exc:
            errors.append(f"job {job.name!r} target {address!r}: {exc}")
            continue
        if spec is not None and spec.key not in seen:
            seen.add(spec.key)
            found.append(spec)
    return found, errors
