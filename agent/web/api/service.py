"""The status endpoints of the metrics service this project grew from.

Its users' scripts and dashboards call these three, so they answer in that
service's plain JSON (not Prometheus's envelope):

* ``GET /health``: ``{"status": "healthy"|"starting", "version", "uptime_seconds"}``;
  503 while the store is not open, so a load balancer can use it too;
* ``GET /db/status``: ``{"status": "ok", "database": {"reachable", "path",
  "file_size_bytes", "series", "samples", "oldest_timestamp",
  "newest_timestamp"}}``: ``samples`` counts flushed segments plus the head;
  the database is probed with a real read, so "reachable" means it answered;
* ``GET /metrics/names``: ``{"status": "ok", "names": [...], "count": n}``,
  sorted, optionally narrowed with ``?prefix=``.

Prometheus's own ``/-/healthy`` and ``/api/v1/label/__name__/values`` stay as
they are; these are the same facts in the other service's shape.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import __version__
from agent.context import Route
from agent.model import METRIC_NAME
from agent.storage.errors import StorageError

if TYPE_CHECKING:
    from agent.context import AgentContext


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


class ServiceRoutes:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.started = time.monotonic()

    async def health(self, request: web.Request) -> web.Response:
        up = self.ctx.store is not None
        body = {
            "status": "healthy" if up else "starting",
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
        }
        return web.json_response(body, status=200 if up else 503)

    async def db_status(self, request: web.Request) -> web.Response:
        store = self.ctx.store
        if store is None:
            return web.json_response(
                {"status": "error", "database": {"reachable": False}, "error": "store not open"},
                status=503,
            )

        def probe(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT coalesce(sum(count), 0) FROM segments").fetchone()
            return int(row[0])

        try:
            flushed = await store.run_read(probe)
            bounds = await store.time_bounds()
        except (StorageError, sqlite3.Error) as exc:
            return web.json_response(
                {"status": "error", "database": {"reachable": False}, "error": str(exc)},
                status=503,
            )
        stats = store.stats()
        path = str(store.path)
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):  # -wal/-shm exist only while open in WAL mode
                size += os.path.getsize(path + suffix)
        database: dict[str, Any] = {
            "reachable": True,
            "path": path,
            "file_size_bytes": size,
            "series": stats.total_series,
            "samples": flushed + stats.head_samples,
            "oldest_timestamp": _iso(bounds[0]) if bounds else None,
            "newest_timestamp": _iso(bounds[1]) if bounds else None,
        }
        return web.json_response({"status": "ok", "database": database})

    async def metric_names(self, request: web.Request) -> web.Response:
        store = self.ctx.store
        if store is None:
            return web.json_response({"status": "error", "error": "store not open"}, status=503)
        prefix = request.query.get("prefix", "")
        names = sorted(n for n in store.label_values(METRIC_NAME) if n.startswith(prefix))
        return web.json_response({"status": "ok", "names": names, "count": len(names)})


def service_routes(ctx: AgentContext) -> list[Route]:
    r = ServiceRoutes(ctx)
    return [
        Route("GET", "/health", r.health, "public", name="service_health"),
        Route("GET", "/db/status", r.db_status, "read", name="service_db_status"),
        Route("GET", "/metrics/names", r.metric_names, "read", name="service_metric_names"),
    ]
