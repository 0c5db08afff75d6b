"""Rules defined from Python (``define_alert``): the PromQL they evaluate, and their spec.

``define_alert(rule_id, series, threshold, condition, callback)`` is turned
into an ordinary alerting rule (:class:`~agent.alerting.rules.RuleSpec`)
whose expression :func:`threshold_expr` writes, so a Python rule has the
same states, ``ALERTS`` series, persistence and API as a rule file's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.alerting.rules import RuleSpec, parse_rule
from agent.durations import parse_duration
from agent.query import ast
from agent.query.numfmt import promql_literal

if TYPE_CHECKING:
    from agent.storage import Store

CONDITIONS = (
    ">",
    ">=",
    "<",
    "<=",
    "==",
    "!=",
    "absent",
    "rate_of_change",
    "anomaly",
    "anomaly_robust",
)
ANOMALY_FUNCTIONS = {"anomaly": "zscore_over_time", "anomaly_robust": "robust_zscore_over_time"}


def python_rule_spec(
    store: Store | None,
    rule_id: str,
    series_id: int | str,
    threshold: float | str | None,
    condition: str,
    callback: Any,
    *,
    for_: float | str = 0,
    cooldown: float | str = 0,
    window: float | str = "5m",
    keep_firing_for: float | str = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> tuple[RuleSpec, float]:
    """The rule spec of a ``define_alert`` call and its cooldown in seconds; ValueError if bad."""
    expr = threshold_expr(store, series_id, threshold, condition, window)
    for_s = _seconds(for_, "for_")
    keep_s = _seconds(keep_firing_for, "keep_firing_for")
    cooldown_s = _seconds(cooldown, "cooldown")
    rule_labels = dict(labels or {})
    if isinstance(callback, str):
        if not callback:
            raise ValueError("callback: a receiver name must not be empty")
    elif callback is not None and not callable(callback):
        raise TypeError("callback must be callable, a coroutine function, or a receiver name")
    raw: dict[str, Any] = {
        "alert": rule_id,
        "expr": expr,
        "for": for_s,
        "keep_firing_for": keep_s,
        "labels": rule_labels,
        "annotations": dict(annotations or {}),
    }
    errors: list[str] = []
    spec = parse_rule(raw, 1, errors)
    if spec is None or errors:
        raise ValueError(f"define_alert {rule_id!r}: " + "; ".join(errors))
    return spec, cooldown_s


def _seconds(value: float | str, what: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def threshold_expr(
    store: Store | None,
    series: int | str,
    threshold: float | str | None,
    condition: str,
    window: float | str = "5m",
) -> str:
    """The PromQL expression ``define_alert`` evaluates (exposed for tests and the docs)."""
    from agent.query.parser import parse

    if isinstance(series, int) and not isinstance(series, bool):
        if store is None:
            raise ValueError("a series id needs a store to look its labels up")
        try:
            labels = store.labels(series)
        except (KeyError, IndexError, LookupError):
            raise ValueError(f"unknown series id {series}") from None
        if not labels:
            raise ValueError(f"unknown series id {series}")
        selector = "{" + ",".join(f"{k}={_quote(v)}" for k, v in labels) + "}"
    elif isinstance(series, str):
        selector = series.strip()
        node = ast.unwrap(parse(selector))
        if not isinstance(node, ast.VectorSelector):
            raise ValueError(f"not a series selector: {series!r}")
    else:
        raise TypeError("series_id must be a series id (int) or a selector (str)")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, not {condition!r}")
    if condition == "absent":
        span = threshold if threshold is not None else window
        ms = round(_seconds(span, "threshold") * 1000)
        if ms <= 0:
            raise ValueError("absent needs a positive duration")
        return f"absent_over_time({selector}[{ms}ms])"
    if condition in ANOMALY_FUNCTIONS:
        from agent.analytics.promql import ensure_registered

        ensure_registered()  # the functions parse even without the daemon's plugins
        if isinstance(threshold, str):
            raise ValueError(f"condition {condition!r} needs a numeric threshold")
        limit = 3.0 if threshold is None else float(threshold)
        if not limit > 0:
            raise ValueError(f"condition {condition!r} needs a positive threshold")
        ms = round(_seconds(window, "window") * 1000)
        fn = ANOMALY_FUNCTIONS[condition]
        return f"abs({fn}({selector}[{ms}ms])) > {promql_literal(limit)}"
    if threshold is None or isinstance(threshold, str):
        raise ValueError(f"condition {condition!r} needs a numeric threshold")
    value = float(threshold)
    if condition == "rate_of_change":
        ms = round(_seconds(window, "window") * 1000)
        op = "<" if value < 0 else ">"
        return f"deriv({selector}[{ms}ms]) {op} {promql_literal(value)}"
    return f"{selector} {condition} {promql_literal(value)}"
