"""Plugin discovery: built-in and third-party plugins through one entry-point group.

We load entry points one by one instead of calling pluggy's
``load_setuptools_entrypoints`` so that one broken plugin is reported by name
and either stops the daemon (when the config requires it) or is skipped,
without taking the others down with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import metadata

import pluggy

from agent import ENTRY_POINT_GROUP, PROJECT_NAME, hookspecs
from agent.plugin_host import (
    PluginError,
    PluginFailure,
    PluginHost,
    PluginInfo,
    await_maybe,
    protocol_problem,
)

log = logging.getLogger("tsagent.plugins")

__all__ = [
    "PluginError",
    "PluginFailure",
    "PluginHost",
    "PluginInfo",
    "await_maybe",
    "get_plugin_manager",
    "protocol_problem",
]


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _describe(ep: metadata.EntryPoint, module: str) -> PluginInfo:
    dist = ep.dist
    dist_name = dist.metadata["Name"] if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    return PluginInfo(
        name=ep.name,
        module=module,
        version=version,
        distribution=dist_name,
        builtin=module.startswith("plugins.") or module == "plugins",
    )


def get_plugin_manager(
    *,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, object]] = (),
    entry_points: bool = True,
) -> PluginHost:
    """Build a fresh plugin manager (a factory, so each test gets its own).

    :param enabled: plugins that must load; a failure raises :class:`PluginError`.
    :param disabled: plugins that are not loaded at all.
    :param extra_plugins: (name, module-or-object) pairs registered directly (tests).
    """
    required = set(enabled)
    blocked = set(disabled)
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    for name in blocked:
        pm.set_blocked(name)
    found: set[str] = set()
    for ep in _entry_points() if entry_points else []:
        found.add(ep.name)
        if ep.name in blocked:
            host.skipped.append(ep.name)
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any error in third-party code
            failure = PluginFailure(ep.name, "load", f"{type(exc).__name__}: {exc}")
            host.failures.append(failure)
            log.error("plugin failed to load: %s", failure)
            continue
        host.loaded[ep.name] = _describe(ep, getattr(plugin, "__name__", ep.value))
    for name, plugin in extra_plugins:
        found.add(name)
        if name in blocked:
            continue
        pm.register(plugin, name=name)
        host.loaded[name] = PluginInfo(name, getattr(plugin, "__name__", name), "-", "-", False)
    missing = required - found
    for name in sorted(missing):
        host.failures.append(PluginFailure(name, "load", "no such plugin is installed"))
    pm.check_pending()
    fatal = [f for f in host.failures if f.name in required]
    if fatal:
        raise PluginError(fatal)
    return host
