"""Every hook tsagent calls, in one place.

Hooks follow datasette's habit: most are ``register_*`` hooks, called once at
startup, returning objects the core then uses directly. Implementations may
accept fewer arguments than a spec names (pluggy passes only what they ask
for), so hooks grow by adding arguments, never by renaming them.

A hook implementation may be ``def`` or ``async def`` where the docstring says
so; the core awaits whatever comes back (see ``agent.plugins.await_maybe``).

When each hook runs, at startup, in this order:

1. ``config_schema``, ``validate_config``: before anything else, at load and reload.
2. ``register_routes``: while the application is built, **before the store is
   open**: a handler must look the store up per request (``ctx.require_store()``
   answers 503-worthy ``RuntimeError`` until then; ``ctx.store`` is None).
3. ``register_codecs``: as the store opens.
4. ``register_notifiers``: the store is open (``ctx.store``, ``ctx.queries``).
5. ``register_query_functions``, ``register_exporters``, ``register_ingestors``,
   then ``startup``: the store is open; exporters start before ingestors.
6. ``shutdown``: before ingestors stop; the store is still open.

The core calls each plugin's implementation through pluggy, one plugin at a
time (``agent.plugin_calls.call_each``), and checks what ``register_*`` hooks return
against the protocols below: an object of the wrong kind is a failure naming
the plugin (fatal when the plugin is in ``plugins.enabled``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from agent import PROJECT_NAME

if TYPE_CHECKING:
    from agent.alerting.notify import Notifier
    from agent.config import Config, Schema
    from agent.context import AgentContext, Exporter, Ingestor, QueryFunction, Route
    from agent.storage.codec import Codec

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# --- configuration --------------------------------------------------------


@hookspec
def config_schema() -> dict[str, Schema] | None:
    """Contribute configuration sections.

    Called once, before the YAML file is validated, so that a plugin's keys are
    checked with the same rigour (key paths, types, "did you mean") as the
    core's.

    :return: a mapping from a dotted section path (``"ingest.statsd"``) to the
        :class:`agent.config.Schema` of that section, or None.
    """


@hookspec
def validate_config(config: Config) -> list[str] | None:
    """Check relations between keys that a schema cannot express.

    Called after every section passed its schema, at load and on reload.

    :param config: the validated configuration.
    :return: error messages, each starting with the key path it is about
        (``"ingest.statsd.port: ..."``), or None when all is well.
    """


# --- storage ---------------------------------------------------------------


@hookspec
def register_codecs() -> list[Codec] | None:
    """Offer chunk codecs to the store.

    Called once as the store opens (before it is open: no ``ctx``). The store
    has ``raw`` of its own; a plugin's codec of the same name replaces it.
    Codec names are stored beside every segment, so a name must never change
    meaning once released.

    :return: codec objects (see :class:`agent.plugin_api.Codec`).
    """


# --- data sources and sinks -------------------------------------------------


@hookspec
def register_ingestors(ctx: AgentContext) -> list[Ingestor] | None:
    """Create the sources that feed samples to storage.

    Called once at startup after the store is open. The core then calls each
    ingestor's ``start(ctx)`` in order and ``stop()`` in reverse order at
    shutdown; an ingestor appends through ``ctx.store`` and must acknowledge
    its client only after ``append`` returned (the samples are durable then).

    :param ctx: the running agent: config, store, metrics registry, logger.
    :return: ingestor objects, or None when this plugin has none enabled.
    """


@hookspec
def register_exporters(ctx: AgentContext) -> list[Exporter] | None:
    """Create the sinks that receive written data or expose it elsewhere.

    Called once at startup, after the ingestors were created and before they
    start, so an exporter never misses a batch. Exporters start before the
    ingestors and stop after them.

    An exporter that implements :class:`agent.plugin_api.BatchExporter`
    (an ``export(batches, progress)`` coroutine) receives every accepted
    batch (appends and backfills) from the durable export log, in order and
    at least once, after it was committed: the same path the built-in
    remote-write forwarder uses (see :mod:`agent.forward.export_log`). Its ``name``
    keys its durable position, so it must not change between restarts.

    :return: exporter objects (see :class:`agent.plugin_api.Exporter`).
    """


@hookspec
def register_notifiers(ctx: AgentContext) -> list[Notifier] | None:
    """Offer alert notification channels (webhook, email, Slack, ...).

    Called once at startup, after the store is open; the alerting engine looks receivers up by the
    notifier's ``name``. The engine calls each notifier in its own
    try/except, so one failing channel never silences another.

    :return: notifier objects (see :class:`agent.plugin_api.Notifier`).
    """


# --- HTTP and query -----------------------------------------------------------


@hookspec
def register_routes(ctx: AgentContext) -> list[Route] | None:
    """Add HTTP endpoints to the daemon.

    Called once while the application is built, **before the store is open**:
    keep ``ctx``, and reach the store from the handler (``ctx.require_store()``).
    Each route names its group (``write``, ``read``, ``admin`` or ``public``); the core applies that
    group's authentication and the request-body limit, so a plugin never
    handles credentials itself.

    :return: :class:`agent.plugin_api.Route` objects.
    """


@hookspec
def register_query_functions() -> dict[str, QueryFunction] | None:
    """Add functions to the query language.

    Called once at startup, after the store is open.

    :return: a mapping from function name to an
        :class:`agent.plugin_api.RangeFunction` of that name (the engine's
        calling convention for range functions, see :mod:`agent.query.extensions`);
        any other value is refused, naming the plugin.
    """


# --- lifecycle ---------------------------------------------------------------


@hookspec
def startup(ctx: AgentContext) -> Any:
    """Run once after the store, ingestors and exporters are up.

    May be ``async def``. An exception here from an enabled plugin stops the
    daemon from starting (everything already started is stopped again).
    """


@hookspec
def shutdown(ctx: AgentContext) -> Any:
    """Run once at shutdown, before ingestors stop. May be ``async def``."""
