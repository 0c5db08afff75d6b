"""Alertmanager-style routing: which receiver gets an alert, and in which group.

The route tree has Alertmanager's semantics so that a config written for an
Alertmanager reads the same here:

* an alert enters at the root (which matches everything) and descends into
  the first child route whose ``matchers`` all match; ``continue: true`` on a
  child lets matching go on to its later siblings, so one alert may reach
  several receivers; when no child matches, the node itself takes the alert;
* a child inherits ``receiver``, ``group_by`` and the three intervals from its
  parent unless it sets them;
* ``group_by`` names the labels that split a route's alerts into groups (only
  labels the alert has count); ``['...']`` groups by every label (one alert per
  group); an empty list puts all of a route's alerts in one group;
* matchers are strings ``name="value"``, ``name!="value"``, ``name=~"regex"``,
  ``name!~"regex"`` (quotes optional, regexes fully anchored, a missing label
  is the empty string), as in Alertmanager's ``matchers``.

The group key sent to receivers (``groupKey`` in the webhook payload) is built
as Alertmanager builds it, ``{}/{severity="critical"}:{alertname="X"}``: the
route's matcher path, a colon, then the group labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.durations import parse_duration
from agent.model import Matcher

GROUP_BY_ALL = "..."

ROUTE_KEYS = frozenset(
    {
        "receiver",
        "group_by",
        "group_wait",
        "group_interval",
        "repeat_interval",
        "matchers",
        "continue",
        "routes",
    }
)

DEFAULT_GROUP_WAIT = 30.0
DEFAULT_GROUP_INTERVAL = 300.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0

_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


class RouteError(ValueError):
    """A route or receiver definition is wrong; the message starts with its key path."""


def parse_matcher(text: str) -> Matcher:
    """One ``name<op>value`` matcher; a double-quoted value may use JSON escapes."""
    m = _MATCHER_RE.match(text)
    if not m:
        raise ValueError(
            f'cannot parse matcher {text!r}; expected name="value", name!="value", '
            'name=~"regex" or name!~"regex"'
        )
    name, op, raw = m.groups()
    value = raw
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ValueError(f"unterminated quoted value in matcher {text!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad quoted value in matcher {text!r}: {exc.msg}") from exc
    return Matcher.of(name, op, value)


def parse_matchers(items: Sequence[str]) -> list[Matcher]:
    """A ``matchers`` list; an item may also hold several, ``{a="1", b=~"2"}``."""
    out: list[Matcher] = []
    for item in items:
        text = item.strip()
        if text.startswith("{") and text.endswith("}"):
            out.extend(parse_matcher(part) for part in _split_braced(text[1:-1]))
        else:
            out.append(parse_matcher(text))
    return out


def _split_braced(body: str) -> list[str]:
    """Split ``a="1", b="x,y"`` on the commas outside quotes."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _matcher_text(m: Matcher) -> str:
    return f"{m.name}{m.op.value}{json.dumps(m.value)}"


def labels_text(labels: Mapping[str, str]) -> str:
    """``{a="1", b="2"}``: how Alertmanager prints label sets in group keys."""
    return "{" + ", ".join(f"{k}={json.dumps(labels[k])}" for k in sorted(labels)) + "}"


@dataclass(frozen=True)
class RouteOptions:
    receiver: str
    group_by: tuple[str, ...]
    group_wait: float
    group_interval: float
    repeat_interval: float

    @property
    def group_by_all(self) -> bool:
        return GROUP_BY_ALL in self.group_by

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.group_by_all:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}


@dataclass
class Route:
    """One node of the tree; ``id`` is its position (``0.2.1``), ``key`` its matcher path."""

    id: str
    key: str
    matchers: list[Matcher]
    options: RouteOptions
    continue_: bool = False
    routes: list[Route] = field(default_factory=list)
    path: str = "alerting.route"

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes that take an alert with these labels (Alertmanager's ``Match``)."""
        if not all(m.matches(labels.get(m.name, "")) for m in self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            hit = child.match(labels)
            found.extend(hit)
            if hit and not child.continue_:
                break
        return found or [self]

    def walk(self) -> list[Route]:
        out = [self]
        for child in self.routes:
            out.extend(child.walk())
        return out

    def group_key(self, group_labels: Mapping[str, str]) -> str:
        return f"{self.key}:{labels_text(group_labels)}"


def _duration(value: Any, path: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise RouteError(f"{path}: {exc}") from exc


def build_route(
    data: Mapping[str, Any],
    parent: RouteOptions | None = None,
    *,
    path: str = "alerting.route",
    route_id: str = "0",
    parent_key: str = "",
) -> Route:
    """Parse a route mapping (children inherit unset options); raises :class:`RouteError`."""
    if not isinstance(data, Mapping):
        raise RouteError(f"{path}: expected a mapping, found {type(data).__name__}")
    unknown = sorted(set(data) - ROUTE_KEYS)
    if unknown:
        known = ", ".join(sorted(ROUTE_KEYS))
        raise RouteError(f"{path}.{unknown[0]}: unknown key; known keys here: {known}")
    base = parent or RouteOptions(
        "", (), DEFAULT_GROUP_WAIT, DEFAULT_GROUP_INTERVAL, DEFAULT_REPEAT_INTERVAL
    )
    group_by = data.get("group_by")
    if group_by is not None:
        if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
            raise RouteError(f"{path}.group_by: expected a list of label names")
        if GROUP_BY_ALL in group_by and len(group_by) > 1:
            raise RouteError(f"{path}.group_by: '...' must be the only entry when used")
    receiver = data.get("receiver")
    if receiver is not None and not isinstance(receiver, str):
        raise RouteError(f"{path}.receiver: expected a string")
    opts = RouteOptions(
        receiver=receiver or base.receiver,
        group_by=tuple(group_by) if group_by is not None else base.group_by,
        group_wait=_duration(data["group_wait"], f"{path}.group_wait")
        if "group_wait" in data
        else base.group_wait,
        group_interval=_duration(data["group_interval"], f"{path}.group_interval")
        if "group_interval" in data
        else base.group_interval,
        repeat_interval=_duration(data["repeat_interval"], f"{path}.repeat_interval")
        if "repeat_interval" in data
        else base.repeat_interval,
    )
    if opts.group_interval <= 0:
        raise RouteError(f"{path}.group_interval: must be greater than 0")
    if opts.repeat_interval <= 0:
        raise RouteError(f"{path}.repeat_interval: must be greater than 0")
    raw_matchers = data.get("matchers") or []
    if not isinstance(raw_matchers, list) or not all(isinstance(m, str) for m in raw_matchers):
        raise RouteError(f"{path}.matchers: expected a list of strings")
    try:
        matchers = parse_matchers(raw_matchers)
    except ValueError as exc:
        raise RouteError(f"{path}.matchers: {exc}") from exc
    if parent is None and matchers:
        raise RouteError(f"{path}.matchers: the root route matches every alert; remove them")
    cont = data.get("continue", False)
    if not isinstance(cont, bool):
        raise RouteError(f"{path}.continue: expected a boolean")
    own = "{" + ",".join(_matcher_text(m) for m in matchers) + "}"
    key = own if not parent_key else f"{parent_key}/{own}"
    children = data.get("routes") or []
    if not isinstance(children, list):
        raise RouteError(f"{path}.routes: expected a list")
    route = Route(route_id, key, matchers, opts, cont, path=path)
    route.routes = [
        build_route(
            child,
            opts,
            path=f"{path}.routes[{i}]",
            route_id=f"{route_id}.{i}",
            parent_key=key,
        )
        for i, child in enumerate(children)
    ]
    return route


def direct_route(receiver: str, root: RouteOptions) -> Route:
    """The route for alerts addressed to one receiver by name (``__receiver__`` or
    ``submit(receiver=...)``): no matchers, one group per alert, no group_wait, the
    root's group and repeat intervals. A Python callback expects to hear about its
    alert when it fires, not 30 seconds later."""
    opts = RouteOptions(receiver, (GROUP_BY_ALL,), 0.0, root.group_interval, root.repeat_interval)
    return Route(f"direct:{receiver}", f"{{}}/direct:{receiver}", [], opts)


def receiver_targets(receiver: Mapping[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """``(notifier type, index, config)`` for each ``<type>_configs`` entry of a receiver."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    for key, entries in receiver.items():
        if key == "name" or not key.endswith("_configs"):
            continue
        for i, entry in enumerate(entries or []):
            out.append((key.removesuffix("_configs"), i, dict(entry)))
    return out


def check_receivers(receivers: Any) -> list[str]:
    """Structural checks of ``alerting.receivers`` (notifier keys are the plugins' business)."""
    errors: list[str] = []
    seen: set[str] = set()
    if not isinstance(receivers, list):
        return ["alerting.receivers: expected a list"]
    for i, rcv in enumerate(receivers):
        path = f"alerting.receivers[{i}]"
        if not isinstance(rcv, Mapping):
            errors.append(f"{path}: expected a mapping")
            continue
        name = rcv.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"{path}.name: every receiver needs a non-empty name")
        elif name in seen:
            errors.append(f"{path}.name: duplicate receiver name {name!r}")
        else:
            seen.add(name)
        for key, value in rcv.items():
            if key == "name":
                continue
            if not str(key).endswith("_configs"):
                errors.append(
                    f"{path}.{key}: unknown key; a receiver has a name and "
                    "<type>_configs lists (webhook_configs, email_configs, slack_configs, "
                    "alertmanager_configs, callback_configs, or a plugin's type)"
                )
            elif not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                errors.append(f"{path}.{key}: expected a list of mappings")
            elif key == "callback_configs":
                errors.extend(_callback_errors(value, f"{path}.{key}"))
    return errors


def _callback_errors(entries: list[Mapping[str, Any]], path: str) -> list[str]:
    """``callback_configs`` entries name a Python callback registered with
    ``Dispatcher.register_callback`` (registered at run time, so only the shape is
    checked here)."""
    errors: list[str] = []
    for j, entry in enumerate(entries):
        where = f"{path}[{j}]"
        for key in sorted(set(entry) - {"name", "send_resolved"}):
            errors.append(f"{where}.{key}: unknown key; known keys here: name, send_resolved")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}.name: required: the name a callback is registered under")
        if not isinstance(entry.get("send_resolved", True), bool):
            errors.append(f"{where}.send_resolved: expected a boolean")
    return errors


def check_alerting(section: Mapping[str, Any]) -> list[str]:
    """Every problem of ``alerting.route``/``alerting.receivers``, each naming its key path."""
    receivers = section.get("receivers", [])
    errors = check_receivers(receivers)
    if errors:
        return errors
    names = {r["name"] for r in receivers}
    try:
        root = build_route(section.get("route") or {})
    except RouteError as exc:
        return [str(exc)]
    for route in root.walk():
        rcv = route.options.receiver
        if not rcv and names:
            errors.append(f"{route.path}.receiver: needed once receivers are configured")
        elif rcv and rcv not in names:
            known = ", ".join(sorted(names)) or "none"
            errors.append(f"{route.path}.receiver: unknown receiver {rcv!r}; configured: {known}")
    return errors


def unknown_notifier_types(section: Mapping[str, Any], loaded: set[str]) -> list[str]:
    """``<type>_configs`` keys naming no loaded notifier (a typo, or a plugin not installed).

    Only known once plugins are loaded, so the daemon checks this at startup;
    otherwise the mistake would first show as deliveries failing for an hour.
    """
    import difflib

    known = loaded | {"callback"}
    problems: list[str] = []
    for i, rcv in enumerate(section.get("receivers") or []):
        if not isinstance(rcv, Mapping):
            continue
        for key in rcv:
            kind = str(key).removesuffix("_configs")
            if key == "name" or kind in known:
                continue
            close = difflib.get_close_matches(kind, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}_configs'?)" if close else ""
            problems.append(
                f"alerting.receivers[{i}].{key}: no notifier {kind!r} is loaded{hint}; "
                f"loaded: {', '.join(sorted(known))}"
            )
    return problems
