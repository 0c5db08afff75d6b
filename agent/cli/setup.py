"""What every offline command does first: load the config, open the store, print the result.

``tsagent retention``, ``rollup``, ``import-csv``, ``export-csv`` and
``generate`` all load the config and plugins exactly as ``tsagent run``
would (:func:`load_config`), open the store the daemon would open and take
its lock (:func:`offline_store`; :class:`DaemonRunning` when the daemon holds
it, so the command can print the HTTP alternative), name the daemon's URL
for that hint (:func:`daemon_url`) and print their report as JSON or text
(:func:`print_json`). Heavy imports stay inside the functions, so ``--help``
remains fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from agent.config import Config
    from agent.plugins import PluginHost
    from agent.storage import Store


# What ``agent.cli`` passes to each command's ``add_*_parser``: adds -c/--data-dir/...
AddCommon = Callable[[argparse.ArgumentParser], None]


class DaemonRunning(Exception):
    """The store is locked by a running daemon (the message says which process)."""


def load_config(
    path: str | None, overrides: Mapping[str, Any], err: TextIO | None = None
) -> tuple[Config, PluginHost] | None:
    """Config and plugins as ``tsagent run`` loads them; None after printing why not."""
    from agent.config import ConfigError
    from agent.daemon import load
    from agent.plugins import PluginError

    try:
        return load(path, overrides)
    except (ConfigError, PluginError) as exc:
        print(exc, file=err or sys.stderr)
        return None


@asynccontextmanager
async def offline_store(config: Config, host: PluginHost, **options: Any) -> AsyncIterator[Store]:
    """The store as the daemon opens it (``options`` go to ``open_store``), closed afterwards."""
    from agent.configured_store import open_store
    from agent.context import AgentContext
    from agent.metrics import AgentMetrics
    from agent.storage import StoreLocked

    ctx = AgentContext(config=config, plugins=host, metrics=AgentMetrics())
    try:
        store = await open_store(ctx, **options)
    except StoreLocked as exc:
        raise DaemonRunning(str(exc)) from None
    try:
        yield store
    finally:
        await store.close()


def daemon_url(config: Config, path: str) -> str:
    """``path`` on the daemon this config describes (loopback for a wildcard listen address)."""
    host, port = config.listen
    tls = config.raw.get("server", {}).get("tls", {}) or {}
    scheme = "https" if tls.get("cert_file") else "http"
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def bearer_hint(config: Config, group: str) -> str:
    """The ``curl`` header to show when route group ``group`` needs a bearer token."""
    auth = config.raw.get("auth", {}).get(group, {}) or {}
    return ' -H "Authorization: Bearer $TOKEN"' if auth.get("bearer_tokens") else ""


def print_json(data: Any, *, sort_keys: bool = True) -> None:
    """A command's ``--json`` report on standard output."""
    print(json.dumps(data, indent=2, sort_keys=sort_keys))
