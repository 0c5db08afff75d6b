"""The built-in web dashboard at ``/`` and ``/dashboard``.

A user without Grafana should see their metrics the moment tsagent runs, so
the daemon serves a small single-page application itself: plain ES modules,
CSS and a vendored copy of uPlot (``static/vendor``), read from the installed
package (no build step, no CDN, no network access from the browser beyond
this origin; the Content-Security-Policy header enforces that).

Every figure on the page comes from the same HTTP API any client uses
(``/api/v1/*``, ``/metrics`` and, when their plugins are loaded,
``/query/rollup``, ``/anomaly/detect`` and ``/api/v1/stream``), so the page
adds no data path of its own and the ``read`` group's authentication still
guards all data. The page and its assets are ``public``: they hold no data,
and serving them without credentials lets the page ask for a bearer token,
which a browser cannot send on a plain navigation. With ``basic_auth`` on
``read`` the browser's own prompt works too. Disable the dashboard with
``plugins.disabled: [dashboard]``.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from agent.plugin_api import Route, hookimpl

__all__ = ["CSP", "Asset", "load_assets", "register_routes"]

# Only this origin: scripts, styles, fetches. uPlot positions its cursor and
# legend through element.style, which 'unsafe-inline' for styles permits.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One static file, read once at startup: the package cannot change under us."""

    body: bytes
    content_type: str
    etag: str


def _content_type(name: str) -> str:
    for suffix, ctype in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return ctype
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def _walk(node: Traversable, prefix: str) -> dict[str, Asset]:
    out: dict[str, Asset] = {}
    for child in node.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            out.update(_walk(child, rel + "/"))
        elif child.is_file() and not child.name.startswith("."):
            body = child.read_bytes()
            tag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            out[rel] = Asset(body, _content_type(child.name), tag)
    return out


def load_assets() -> dict[str, Asset]:
    """Every file under ``static/``, keyed by its path relative to it.

    Serving from this fixed table (not the file system) is what makes path
    traversal impossible: a name that is not a key is a 404.
    """
    return _walk(resources.files(__package__).joinpath("static"), "")


def _respond(request: web.Request, asset: Asset) -> web.Response:
    headers = {
        "ETag": asset.etag,
        # Revalidate each time: cheap (304) and an upgraded tsagent is picked up at once.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    resp = web.Response(body=asset.body, headers=headers)
    resp.headers["Content-Type"] = asset.content_type
    return resp


class Dashboard:
    """The handlers, over the asset table loaded when the routes were made."""

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.assets = assets

    async def page(self, request: web.Request) -> web.Response:
        return _respond(request, self.assets["index.html"])

    async def slash(self, request: web.Request) -> web.Response:
        # Relative, so a reverse proxy serving tsagent under a prefix keeps working.
        raise web.HTTPFound("../dashboard")

    async def static(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["path"])
        if asset is None:
            raise web.HTTPNotFound(text="no such dashboard asset\n")
        return _respond(request, asset)


@hookimpl
def register_routes() -> list[Route]:
    dash = Dashboard(load_assets())
    return [
        Route("GET", "/", dash.page, "public"),
        Route("GET", "/dashboard", dash.page, "public"),
        Route("GET", "/dashboard/", dash.slash, "public"),
        Route("GET", "/dashboard/static/{path:.+}", dash.static, "public"),
    ]
