"""Builds the aiohttp application: keys, middlewares, routes and lifecycle.

Every long-lived resource is a ``cleanup_ctx`` generator, torn down in
reverse order: store -> plugins (exporters, then ingestors). A required
plugin that fails to start aborts startup, and aiohttp then unwinds what
already started, so the daemon never half-starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import exposition

from agent import __version__
from agent.clock import Clock
from agent.config import Config, ConfigError
from agent.context import CONTEXT_KEY, AgentContext, Route
from agent.context import context_of as context_of  # re-exported for callers of agent.web.app
from agent.forward.export_log import ExportHub, batch_exporters
from agent.metrics import AgentMetrics
from agent.plugin_calls import StartupError, call_each, collect, plugin_failed
from agent.plugins import PluginHost, await_maybe
from agent.query import extensions as query_extensions
from agent.query.limits import WRITES
from agent.web.security import (
    RATE_LIMITED,
    Authenticator,
    forbidden,
    too_many_failures,
    unauthorized,
)

log = logging.getLogger("tsagent.app")

AUTH_KEY = web.AppKey("authenticator", Authenticator)
ROUTE_GROUPS_KEY = web.AppKey("route_groups", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- middlewares ------------------------------------------------------------


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        ctx = request.app[CONTEXT_KEY]
        ctx.metrics.http_duration.labels(name, request.method, str(code)).observe(
            time.perf_counter() - start
        )


@web.middleware
async def _security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    group = request.app[ROUTE_GROUPS_KEY].get(resource.canonical if resource else "", "admin")
    auth = request.app[AUTH_KEY]
    if not auth.is_open(group):
        decision = await auth.authorize(group, request.headers.get("Authorization"), request.remote)
        if decision == RATE_LIMITED:
            return too_many_failures()
        if decision == 401:
            return unauthorized()
        if decision == 403:
            return forbidden()
    limit = request.app[CONTEXT_KEY].config.raw["server"]["max_body_bytes"]
    if request.content_length is not None and request.content_length > limit:
        return web.Response(
            status=413, text=f"request body of {request.content_length} bytes exceeds {limit}\n"
        )
    if group == "write":
        with WRITES.writing():  # query workers wait while writes are in flight
            return await handler(request)
    return await handler(request)


# --- core routes --------------------------------------------------------------


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="tsagent is Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[CONTEXT_KEY].ready:
        return web.Response(text="tsagent is Ready.\n")
    return web.Response(status=503, text="Service Unavailable\n")


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[CONTEXT_KEY].metrics.registry
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def buildinfo(request: web.Request) -> web.Response:
    import platform

    return web.json_response(
        {
            "status": "success",
            "data": {
                "version": __version__,
                "revision": "",
                "branch": "",
                "buildUser": "",
                "buildDate": "",
                "goVersion": f"python{platform.python_version()}",
            },
        }
    )


async def list_plugins(request: web.Request) -> web.Response:
    host = request.app[CONTEXT_KEY].plugins
    return web.json_response(
        {
            "loaded": [vars(p) for p in host.loaded.values()],
            "failed": [vars(f) for f in host.failures],
        }
    )


CORE_ROUTES = [
    Route("GET", "/-/healthy", healthy, "public"),
    Route("GET", "/-/ready", ready, "public"),
    Route("GET", "/metrics", metrics, "read"),
    Route("GET", "/api/v1/status/buildinfo", buildinfo, "read"),
    Route("GET", "/api/v1/status/plugins", list_plugins, "admin"),
]


# --- lifecycle --------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store, and the :class:`~agent.root.Agent` built around it (query service, streams).

    The dispatcher, export hub and rule engine are added to the agent by the
    contexts that follow, in dependency order, and removed in reverse.
    """
    from agent.configured_store import open_store
    from agent.query.service import QueryOptions
    from agent.root import Agent

    ctx = app[CONTEXT_KEY]
    store = await open_store(ctx)
    ctx.agent = Agent(store, query_options=QueryOptions.from_config(ctx.config))
    try:
        yield
    finally:
        agent, ctx.agent = ctx.agent, None
        await agent.close()
        await store.flush(all=True)
        await store.close()


async def _dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """Notifiers and the alert dispatcher, after the store (its outbox lives there)
    and before plugins and rules, which submit alerts to it; stopped after them."""
    from agent.alerting.dispatch import Dispatcher

    ctx = app[CONTEXT_KEY]
    for _plugin, made in collect(ctx, "register_notifiers", ctx=ctx):
        for notifier in made:
            ctx.notifiers[notifier.name] = notifier
    from agent.alerting.routing import unknown_notifier_types

    problems = unknown_notifier_types(ctx.config.section("alerting"), set(ctx.notifiers))
    if problems:
        raise StartupError("; ".join(problems))
    try:
        dispatcher = Dispatcher(
            lambda: ctx.config.section("alerting"),
            ctx.notifiers,
            store=ctx.store,
            registry=ctx.metrics.registry,
            clock=ctx.clock,
        )
        await dispatcher.start()
    except Exception as exc:
        raise StartupError(f"alerting: {exc}") from exc
    agent = ctx.require_agent()
    agent.dispatcher = dispatcher
    try:
        yield
    finally:
        agent.dispatcher = None
        await dispatcher.stop()


async def _plugins_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT_KEY]
    for plugin, functions in call_each(ctx, "register_query_functions"):
        try:  # each must be a RangeFunction: the engine knows only that calling convention
            query_extensions.register_all(functions or {})
        except (TypeError, ValueError) as exc:
            plugin_failed(ctx, plugin, "register_query_functions", exc)
            continue
        ctx.query_functions.update(functions or {})
    started: list[tuple[str, Any]] = []
    started_hooks = False
    try:
        exporters = collect(ctx, "register_exporters", ctx=ctx)
        ingestors = collect(ctx, "register_ingestors", ctx=ctx)
        for kind, batch in (("exporter", exporters), ("ingestor", ingestors)):
            if kind == "ingestor":
                hub = await _start_export_hub(ctx)
                if hub is not None:  # stopped after the ingestors, before the exporters
                    started.append(("export", hub))
            for plugin, objs in batch:
                for obj in objs:
                    try:
                        await obj.start(ctx)
                    except Exception as exc:  # noqa: BLE001 - plugin code
                        plugin_failed(ctx, plugin, f"{kind} {obj.name} start", exc)
                        continue
                    started.append((plugin, obj))
                    (ctx.exporters if kind == "exporter" else ctx.ingestors).append(obj)
        started_hooks = True
        for plugin, result in call_each(ctx, "startup", ctx=ctx):
            try:
                await await_maybe(result)
            except Exception as exc:  # noqa: BLE001
                plugin_failed(ctx, plugin, "startup", exc)
        ctx.ready = True
        yield
    finally:
        ctx.ready = False
        if started_hooks:
            for plugin, result in call_each(ctx, "shutdown", ctx=ctx):
                try:
                    await await_maybe(result)
                except Exception as exc:  # noqa: BLE001
                    log.error("plugin %s failed at shutdown: %s", plugin, exc)
        for plugin, obj in reversed(started):
            try:
                await obj.stop()
            except Exception as exc:  # noqa: BLE001
                log.error("plugin %s failed to stop: %s", plugin, exc)
        ctx.ingestors.clear()
        ctx.exporters.clear()


async def _start_export_hub(ctx: AgentContext) -> ExportHub | None:
    """Feed the started batch exporters from the export log, before any ingestor starts.

    Installing the log's transaction hook before the first ingestor runs is
    what guarantees that every batch acknowledged from then on reaches them.
    """
    batch = batch_exporters(ctx.exporters)
    if not batch:
        return None
    hub = ExportHub(ctx.require_store(), ctx.metrics.registry, clock=ctx.clock)
    try:
        await hub.open(batch)
    except Exception as exc:
        raise StartupError(f"export log: {exc}") from exc
    hub.start()
    ctx.require_agent().export_hub = hub
    return hub


async def _rules_ctx(app: web.Application) -> AsyncIterator[None]:
    """The rule engine: after the store (it reads and writes it) and the plugins (notifiers).

    Invalid rule files stop startup, as in Prometheus; at reload they are
    refused instead (see ``agent.daemon``). The dispatcher (``_dispatcher_ctx``)
    is looked up at each send, so a rebuilt one is picked up.
    """
    from agent.alerting.engine import AlertingOptions, RuleEngine
    from agent.alerting.rules import load_configured_rules

    ctx = app[CONTEXT_KEY]
    try:
        groups = load_configured_rules(ctx.config)
    except ConfigError as exc:
        raise StartupError(f"rule files: {exc}") from exc
    engine = RuleEngine(
        ctx.require_store(),
        options=AlertingOptions.from_config(ctx.config),
        dispatcher=lambda: ctx.dispatcher,
        registry=ctx.metrics.registry,
        writer=lambda rows: ctx.append_samples(rows, source="rule"),
        clock=ctx.clock,
    )
    engine.set_groups(groups)
    await engine.start()
    agent = ctx.require_agent()
    agent.rules = engine
    try:
        yield
    finally:
        agent.rules = None
        await engine.stop()


def make_app(
    config: Config,
    plugins: PluginHost,
    metrics: AgentMetrics | None = None,
    *,
    clock: Clock | None = None,
) -> web.Application:
    """The daemon's application; usable directly with pytest-aiohttp.

    ``clock`` (default: the system clock) is the time of the rule engine, the
    alert dispatcher and the export log, so tests can step it by hand.
    """
    ctx = AgentContext(config=config, plugins=plugins, metrics=metrics or AgentMetrics())
    if clock is not None:
        ctx.clock = clock
    app = web.Application(
        middlewares=[_metrics_middleware, _security_middleware],
        client_max_size=config.raw["server"]["max_body_bytes"],
    )
    app[CONTEXT_KEY] = ctx
    app[AUTH_KEY] = Authenticator(config.raw["auth"])
    groups: dict[str, str] = {}
    from agent.web.api.alerting import ROUTES as alerting_routes
    from agent.web.api.rollup_routes import ROUTES as rollup_routes
    from agent.web.api.routes import install as install_query_api  # imports the engine: lazily
    from agent.web.api.service import service_routes

    routes = [
        *CORE_ROUTES,
        *install_query_api(app, ctx),
        *rollup_routes,
        *alerting_routes,
        *service_routes(ctx),
    ]
    for _plugin, made in collect(ctx, "register_routes", ctx=ctx):
        routes.extend(made)
    for route in routes:
        resource = app.router.add_route(route.method, route.path, route.handler, name=route.name)
        groups[resource.resource.canonical if resource.resource else route.path] = route.group
    app[ROUTE_GROUPS_KEY] = groups
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_dispatcher_ctx)
    app.cleanup_ctx.append(_plugins_ctx)
    app.cleanup_ctx.append(_rules_ctx)
    return app
