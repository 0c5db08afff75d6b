"""The dashboard's routes and assets, and the Grafana dashboard in contrib/.

The browser test (tests/browser/) proves the page works; these prove what it
is made of: served from the package with the right types and headers, with
no URL that would reach outside the agent, and a Grafana dashboard whose every
query our own PromQL parser accepts.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.plugins import get_plugin_manager
from agent.query.parser import parse
from agent.web.app import make_app
from agent.web.security import hash_password
from plugins.dashboard import CSP, load_assets

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "plugins" / "dashboard" / "static"
GRAFANA = ROOT / "contrib" / "grafana" / "tsagent.json"
OWN_TEXT = (".html", ".js", ".css")


@pytest.fixture
async def client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    hashed = hash_password("pw", rounds=4)
    config, host = make_config(f"auth:\n  read:\n    basic_auth:\n      viewer: '{hashed}'\n")
    return await aiohttp_client(make_app(config, host))


def static_files() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", ["/", "/dashboard"])
async def test_page_is_public_with_a_strict_csp(client: Any, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="dashboard/static/app.js">' in await resp.text()
    # the data behind it stays in the read group
    assert (await client.get("/api/v1/label/__name__/values")).status == 401


async def test_trailing_slash_redirects_relatively(client: Any) -> None:
    resp = await client.get("/dashboard/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "../dashboard"


async def test_every_referenced_asset_is_served_with_its_type(client: Any) -> None:
    html = (await (await client.get("/dashboard")).text()).replace("&amp;", "&")
    refs = re.findall(r'(?:src|href)="(dashboard/static/[^"]+)"', html)
    assert {"dashboard/static/app.js", "dashboard/static/vendor/uPlot.iife.min.js"} <= set(refs)
    # module imports between our scripts resolve to served files too
    for js in STATIC.glob("*.js"):
        for imported in re.findall(r'from "\./([^"]+)"', js.read_text()):
            refs.append(f"dashboard/static/{imported}")
    expected = {".js": "text/javascript", ".css": "text/css"}
    for ref in set(refs):
        resp = await client.get("/" + ref)
        assert resp.status == 200, ref
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith(expected[Path(ref).suffix]), (ref, ctype)
        assert await resp.read() == (STATIC / ref.removeprefix("dashboard/static/")).read_bytes()


async def test_etag_revalidation_and_unknown_paths(client: Any) -> None:
    first = await client.get("/dashboard/static/app.js")
    tag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/dashboard/static/app.js", headers={"If-None-Match": tag})
    assert again.status == 304 and await again.read() == b""
    for bad in ("nope.js", "../__init__.py", "%2e%2e/__init__.py", "vendor/../../__init__.py"):
        assert (await client.get(f"/dashboard/static/{bad}")).status == 404, bad


async def test_disabled_plugin_serves_nothing(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    config, _host = make_config()
    host = get_plugin_manager(disabled=["dashboard"])  # what plugins.disabled does at start
    client = await aiohttp_client(make_app(config, host))
    assert (await client.get("/dashboard")).status == 404


def test_no_url_leaves_the_agent() -> None:
    """Our own files name no absolute URL at all; vendored ones only in their banner comment."""
    url = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
    for path in static_files():
        if path.suffix not in OWN_TEXT:
            continue
        text = path.read_text()
        if "vendor" in path.parts:
            text = re.sub(r"/\*!.*?\*/", "", text, flags=re.DOTALL)  # licence banners
        found = [m.group(0) for m in url.finditer(text)]
        assert not found, f"{path.relative_to(ROOT)} refers to {found}"


def test_vendored_uplot_matches_its_readme() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text()
    listed = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)
    )
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest
    assert "(v1.6.32)" in (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()


def test_package_data_ships_every_static_file() -> None:
    """A wheel holds only what package-data names: every asset must match a pattern."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["plugins.dashboard"]
    base = ROOT / "plugins" / "dashboard"
    for path in static_files():
        rel = path.relative_to(base).as_posix()
        assert any(
            fnmatch.fnmatch(rel, p) and "/" not in rel[len(p.rsplit("/", 1)[0]) + 1 :]
            for p in patterns
        ), rel
    assert set(load_assets()) == {p.relative_to(STATIC).as_posix() for p in static_files()}


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to check JS syntax")
def test_scripts_are_valid_es_modules() -> None:
    for path in STATIC.glob("*.js"):
        done = subprocess.run(
            ["node", "--check", "--input-type=module"],
            input=path.read_text(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, f"{path.name}: {done.stderr}"


# --- contrib/grafana ------------------------------------------------------------------------

GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "6h",
    "$job": ".*",
    "$instance": ".*",
}


def grafana_targets(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "expr" in node:
            yield node
        for value in node.values():
            yield from grafana_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from grafana_targets(value)


def grafana_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GRAFANA.read_text())
    return data


def test_grafana_dashboard_queries_parse() -> None:
    targets = list(grafana_targets(grafana_dashboard()))
    assert len(targets) >= 20
    for target in targets:
        expr = target["expr"]
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {target['expr']}"
        parse(expr)  # raises on anything our engine would refuse


def test_grafana_dashboard_covers_the_agent_and_uses_one_datasource_input() -> None:
    dash = grafana_dashboard()
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    exprs = " ".join(t["expr"] for t in grafana_targets(dash))
    for name in (
        "tsagent_samples_ingested_total",
        "tsagent_samples_rejected_total",
        "tsagent_active_series",
        "tsagent_head_bytes",
        "tsagent_flush_duration_seconds_count",
        "tsagent_http_request_duration_seconds_bucket",
        "tsagent_query_cache_hits_total",
        "tsagent_notifications_total",
        "tsagent_export_pending_samples",
        "tsagent_forwarder_sent_samples_total",
    ):
        assert name in exprs, name
