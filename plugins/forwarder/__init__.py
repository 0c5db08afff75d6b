"""Store-and-forward to remote-write upstreams (VictoriaMetrics, Mimir, Thanos, Prometheus).

Configured under ``export.remote_write`` (a list; see
:mod:`plugins.forwarder.config`). Each upstream is one exporter named
``remote_write:<name>`` fed by the core's durable export log, so every
sample tsagent acknowledged reaches each upstream exactly once, in per-series
order, across upstream outages, restarts and SIGKILL (at-least-once only
for a crash in the single commit right after an upstream's 2xx). See
:mod:`plugins.forwarder.exporter` for sending, sharding and retries, and
:mod:`agent.forward.export_log` for the queue itself.

The upstream list is read at startup; a reload does not add or remove
upstreams (restart for that), as with the listen address.
"""

from __future__ import annotations

from typing import Any, cast

from agent.plugin_api import AgentContext, Config, Schema, hookimpl
from plugins.forwarder.config import SECTION, UPSTREAMS_FIELD, check, compile_upstream, upstreams
from plugins.forwarder.exporter import ForwarderMetrics, RemoteWriteExporter

__all__ = ["RemoteWriteExporter", "config_schema", "register_exporters", "validate_config"]


@hookimpl
def config_schema() -> dict[str, Schema]:
    # A list rather than a mapping section: the config grafting and validation take any
    # field at a dotted path, the hook's type names the usual case.
    return {SECTION: cast(Schema, UPSTREAMS_FIELD)}


@hookimpl
def validate_config(config: Config) -> list[str]:
    return check(config.raw)


@hookimpl
def register_exporters(ctx: AgentContext) -> list[Any]:
    items = upstreams(ctx.config.raw)
    if not items:
        return []
    metrics = ForwarderMetrics(ctx.metrics.registry)
    return [RemoteWriteExporter(compile_upstream(up), metrics) for up in items]
