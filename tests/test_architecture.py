"""The import contracts of docs/architecture.md, checked on the source tree.

Every import counts: module level, inside functions and under
``TYPE_CHECKING`` (a cycle hidden in a function is still a cycle to a
reader, and still an import-order trap at runtime). The graph is built with
``ast`` from the files, the same way ``../shared/tools/import_cycles.py``
builds it, so the two agree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "plugins")


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in path.parts or path.name.endswith("_pb2.py"):
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name ``module`` imports (``from a.b import c`` yields a.b and a.b.c)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name in _imported_names(module, path):
            target = _resolve(name)
            if target and target != module and not module.startswith(target + "."):
                edges[module].add(target)
    return edges


GRAPH = _graph()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _violations(source: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """Edges from modules under ``source`` into ``forbidden`` and not into ``allowed``."""
    out = []
    for module, targets in sorted(GRAPH.items()):
        if not (module == source or module.startswith(source + ".")):
            continue
        for target in sorted(targets):
            inside = any(target == f or target.startswith(f + ".") for f in forbidden)
            ok = any(target == a or target.startswith(a + ".") for a in allowed)
            if inside and not ok:
                out.append(f"{module} -> {target}")
    return out


def test_the_graph_sees_the_tree() -> None:
    # Guards the contracts below against passing because the graph is empty.
    assert len(MODULES) > 100
    assert "agent.storage.store" in GRAPH and "agent.storage.codec" in GRAPH["agent.storage.store"]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_storage_imports_nothing_above_the_model() -> None:
    assert _violations("agent.storage", ("agent.storage", "agent.model"), ("agent",)) == []


def test_the_query_engine_imports_no_service_above_it() -> None:
    above = ("agent.root", "agent.web.app", "agent.context", "agent.web.api", "agent.alerting")
    assert _violations("agent.query", (), above) == []


def test_the_core_imports_no_plugin() -> None:
    assert _violations("agent", (), ("plugins",)) == []


def test_the_core_does_not_import_the_plugin_surface() -> None:
    # agent.plugin_api sits on top of every layer it re-exports; a core module
    # importing it would close a cycle through whatever it re-exports.
    users = [m for m, t in GRAPH.items() if "agent.plugin_api" in t and m.startswith("agent.")]
    assert users == []


PLUGINS = sorted({m.split(".")[1] for m in MODULES if m.startswith("plugins.")})


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugins_import_only_the_plugin_api(plugin: str) -> None:
    """From tsagent, only agent.plugin_api; from plugins/, only the plugin's own package."""
    own = f"plugins.{plugin}"
    assert _violations(own, ("agent.plugin_api",), ("agent",)) == []
    assert _violations(own, (own,), ("plugins",)) == []


def test_the_third_party_example_imports_only_the_plugin_api() -> None:
    """contrib/tsagent-heartbeat is what plugin authors copy: it must show the rule."""
    package = ROOT / "contrib" / "tsagent-heartbeat" / "tsagent_heartbeat"
    imported = set()
    for path in package.rglob("*.py"):
        for name in _imported_names("tsagent_heartbeat", path):
            if name == "agent" or name.startswith("agent."):
                imported.add(_resolve(name) or name)
    assert imported == {"agent.plugin_api"}


def test_the_plugin_api_is_what_plugins_use() -> None:
    import agent.plugin_api as api

    for name in ("hookimpl", "AgentContext", "Codec", "Ingestor", "Exporter", "Notifier", "Route"):
        assert name in api.__all__ and getattr(api, name) is not None
