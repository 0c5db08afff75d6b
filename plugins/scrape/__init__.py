"""Prometheus-style scraping (``ingest.scrape``): pull targets, store their series.

A built-in ingestor in the spirit of Prometheus' agent mode: ``scrape_configs``
with ``static_configs``, ``relabel_configs`` and ``metric_relabel_configs``,
honor_labels/honor_timestamps, basic/bearer auth and TLS, ``sample_limit``
and label limits, the ``up`` / ``scrape_*`` series and staleness markers.
Modules: :mod:`.relabel` (pure relabeling), :mod:`.parse` (exposition
parsing), :mod:`.targets` (target label population), :mod:`.config` (the
section), :mod:`.scraper` (loops and the manager).
"""

from __future__ import annotations

from agent.plugin_api import AgentContext, Config, Schema, hookimpl
from plugins.scrape.config import SCHEMA, SECTION, check
from plugins.scrape.scraper import ScrapeManager

__all__ = ["ScrapeManager", "config_schema", "register_ingestors", "validate_config"]


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {SECTION: SCHEMA}


@hookimpl
def validate_config(config: Config) -> list[str]:
    return check(config.section(SECTION))


@hookimpl
def register_ingestors(ctx: AgentContext) -> list[ScrapeManager]:
    # Always registered, even with no jobs, so that a reload can add some.
    return [ScrapeManager()]
