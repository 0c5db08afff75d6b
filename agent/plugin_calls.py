"""How the core calls plugins' hooks: one plugin at a time, results checked.

Shared by the application (``agent.web.app``) and the store setup
(``agent.configured_store``), so every hook call has the same failure handling:
an exception or a wrong result names the plugin, and is fatal only for a
plugin listed in ``plugins.enabled``.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.alerting.notify import Notifier
from agent.context import AgentContext, Exporter, Ingestor, Route
from agent.plugin_host import PluginFailure, protocol_problem

log = logging.getLogger("tsagent.app")


class StartupError(Exception):
    """Startup failed; the message names the plugin or resource."""


def required(ctx: AgentContext, plugin: str) -> bool:
    cfg = ctx.config.section("plugins")
    return plugin in cfg.get("enabled", [])


def plugin_failed(ctx: AgentContext, plugin: str, stage: str, exc: BaseException) -> None:
    failure = PluginFailure(plugin, stage, f"{type(exc).__name__}: {exc}")
    ctx.plugins.failures.append(failure)
    ctx.metrics.plugin_errors.labels(plugin, stage).inc()
    if required(ctx, plugin):
        raise StartupError(str(failure)) from exc
    log.error("skipping plugin: %s", failure)


def call_each(ctx: AgentContext, hook: str, /, **kwargs: object) -> list[tuple[str, Any]]:
    """Call ``hook`` plugin by plugin through pluggy, so one failure names its plugin.

    Each call goes through a pluggy caller restricted to one plugin
    (``subset_hook_caller``): hookwrappers, tracing and argument checks apply
    as for any hook call, yet an exception is charged to the plugin that
    raised it and the others still run (in registration order).
    """
    pm = ctx.plugins.pm
    impls = getattr(pm.hook, hook).get_hookimpls()
    plugins = [impl.plugin for impl in reversed(impls) if not impl.hookwrapper and not impl.wrapper]
    out: list[tuple[str, Any]] = []
    for plugin in plugins:
        name = pm.get_name(plugin) or "?"
        one = pm.subset_hook_caller(hook, remove_plugins=[p for p in plugins if p is not plugin])
        try:
            results = one(**kwargs)
        except Exception as exc:  # noqa: BLE001 - plugin code
            plugin_failed(ctx, name, hook, exc)
            continue
        out.append((name, results[0] if results else None))
    return out


# What each ``register_*`` hook must return, checked before the core uses it.
HOOK_PROTOCOLS: dict[str, type] = {
    "register_ingestors": Ingestor,
    "register_exporters": Exporter,
    "register_notifiers": Notifier,
    "register_routes": Route,
}


def collect(ctx: AgentContext, hook: str, /, **kwargs: object) -> list[tuple[str, list[Any]]]:
    """The objects each plugin's ``hook`` returned, those not of the hook's protocol refused.

    A refused object is a plugin failure naming the plugin, the hook and what
    is missing (fatal for a plugin listed in ``plugins.enabled``).
    """
    kind = HOOK_PROTOCOLS[hook]
    out: list[tuple[str, list[Any]]] = []
    for name, result in call_each(ctx, hook, **kwargs):
        good = []
        for obj in result or []:
            problem = protocol_problem(obj, kind)
            if problem:
                plugin_failed(ctx, name, hook, TypeError(problem))
            else:
                good.append(obj)
        out.append((name, good))
    return out
