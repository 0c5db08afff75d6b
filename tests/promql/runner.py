"""Executes parsed PromQL test-script evals against :class:`agent.query.Engine`.

Mirrors the checks of Prometheus's own ``promqltest`` runner: result values
within a relative 1e-6, result order for ``expect ordered``, failures and their
messages, and warning/info annotations.  Instant evals are additionally re-run
as a three-step range query (the middle step must agree) and with ``@`` pinned
to the evaluation time at other evaluation times, as upstream does.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np

from agent.model import Labels
from agent.query import Engine, MemoryQueryable, QueryError, ast
from agent.query.queryable import matches
from agent.query.values import Matrix, Result, Scalar, String, Vector
from tests.promql.script import Eval, Load

MIN_NORMAL = 2.2250738585072014e-308
EPSILON = 1e-6
AT_UNSAFE = frozenset(
    {
        "days_in_month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "hour",
        "minute",
        "month",
        "year",
        "predict_linear",
        "time",
        "timestamp",
        "start",
        "end",
        "range",
        "step",
    }
)
CONTEXT_FUNCS = re.compile(r"(start|end|range|step)\(\)")


class Mismatch(AssertionError):
    pass


def almost_equal(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < MIN_NORMAL:
        return diff < EPSILON * MIN_NORMAL
    return diff / min(abs_sum, 1.7976931348623157e308) < EPSILON


class Dataset:
    """The storage state for one run of ``load`` commands, plus native-histogram series."""

    def __init__(self, loads: list[Load]) -> None:
        self.store = MemoryQueryable()
        self.histogram_series: set[Labels] = set()
        for load in loads:
            for labels, values in load.series:
                ts = [
                    i * load.interval_ms
                    for i, v in enumerate(values)
                    if not v.omitted and not v.histogram
                ]
                vs = [v.v for v in values if not v.omitted and not v.histogram]
                if any(v.histogram for v in values):
                    self.histogram_series.add(labels)
                if ts:
                    self.store.add(labels, ts, vs)
                if load.nhcb:
                    self.histogram_series.add(_nhcb_base(labels))

    def selects_histograms(self, node: ast.Node) -> bool:
        return any(
            matches(lab, sel.matchers) for sel in selectors(node) for lab in self.histogram_series
        )


def _nhcb_base(labels: Labels) -> Labels:
    d = dict(labels)
    name = d.get("__name__", "")
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            d["__name__"] = name[: -len(suffix)]
            break
    d.pop("le", None)
    return tuple(sorted(d.items()))


def selectors(node: ast.Node) -> list[ast.VectorSelector]:
    out: list[ast.VectorSelector] = []

    def walk(n: ast.Node) -> None:
        if isinstance(n, ast.VectorSelector):
            out.append(n)
        elif isinstance(n, ast.MatrixSelector):
            out.append(n.selector)
        elif isinstance(n, ast.Subquery | ast.Paren | ast.Unary):
            walk(n.expr)
        elif isinstance(n, ast.Call):
            for a in n.args:
                walk(a)
        elif isinstance(n, ast.Aggregate):
            walk(n.expr)
            if n.param is not None:
                walk(n.param)
        elif isinstance(n, ast.Binary):
            walk(n.lhs)
            walk(n.rhs)

    walk(node)
    return out


def pin_at(node: ast.Node, at_ms: int) -> tuple[ast.Node, bool]:
    """Set ``@ at_ms`` on every selector and subquery lacking one (not inside an ``@`` subquery).

    Returns the new tree and whether it contains a function whose result
    depends on the evaluation time, which makes the variant meaningless.
    """
    unsafe = False
    at = ast.At(ast.AtKind.AT, at_ms)

    def walk(n: ast.Node) -> ast.Node:
        nonlocal unsafe
        if isinstance(n, ast.VectorSelector):
            return n if n.at is not None else replace(n, at=at)
        if isinstance(n, ast.MatrixSelector):
            return replace(n, selector=walk(n.selector))
        if isinstance(n, ast.Subquery):
            if n.at is not None:
                return n
            return replace(n, expr=walk(n.expr), at=at)
        if isinstance(n, ast.Paren | ast.Unary):
            return replace(n, expr=walk(n.expr))
        if isinstance(n, ast.Call):
            unsafe = unsafe or n.name in AT_UNSAFE
            return replace(n, args=tuple(walk(a) for a in n.args))
        if isinstance(n, ast.Aggregate):
            return replace(n, expr=walk(n.expr), param=None if n.param is None else walk(n.param))
        if isinstance(n, ast.Binary):
            return replace(n, lhs=walk(n.lhs), rhs=walk(n.rhs))
        return n

    return walk(node), unsafe


def check_annotations(ev: Eval, result: Result) -> None:
    annos = result.annotations
    for kind, actual in (("warn", annos.warnings), ("info", annos.infos)):
        expected = ev.of(kind)
        if expected:
            if not actual:
                raise Mismatch(f"expected {kind} annotations but none were found")
            for e in expected:
                if not any(e.matches(a) for a in actual):
                    raise Mismatch(f"no {kind} annotation matches {e}; got {actual}")
            for a in actual:
                if not any(e.matches(a) for e in expected):
                    raise Mismatch(f"unexpected {kind} annotation {a!r}")
        if ev.of("no_" + kind) and actual:
            raise Mismatch(f"unexpected {kind} annotations: {actual}")


def compare(ev: Eval, result: Result, *, start: int, step: int) -> None:
    ordered = bool(ev.of("ordered"))
    expected = {labels: (values, pos) for labels, values, pos in ev.series}
    if isinstance(result, String):
        if result.v != ev.expected_string:
            raise Mismatch(f"expected string {ev.expected_string!r}, got {result.v!r}")
        return
    if isinstance(result, Scalar):
        if ev.scalar is None:
            raise Mismatch(f"expected vector or matrix result, got scalar {result.v}")
        if not almost_equal(ev.scalar, result.v):
            raise Mismatch(f"expected scalar {ev.scalar}, got {result.v}")
        return
    if ev.scalar is not None:
        raise Mismatch(f"expected scalar result, got {result.result_type}")
    if isinstance(result, Vector):
        seen = set()
        for i, s in enumerate(result.samples):
            if s.labels not in expected:
                raise Mismatch(f"unexpected metric {dict(s.labels)} in result, value {s.v}")
            values, pos = expected[s.labels]
            if ordered and pos != i + 1:
                raise Mismatch(f"expected {dict(s.labels)} at position {pos}, was at {i + 1}")
            if values[0].histogram or not almost_equal(values[0].v, s.v):
                raise Mismatch(f"expected {values[0].v} for {dict(s.labels)}, got {s.v}")
            seen.add(s.labels)
        for labels in expected:
            if labels not in seen:
                raise Mismatch(f"expected metric {dict(labels)} not found")
        return
    assert isinstance(result, Matrix)
    if ordered:
        raise Mismatch("expected ordered result, but query returned a matrix")
    labels_list = [s.labels for s in result.series]
    if labels_list != sorted(labels_list):
        raise Mismatch("matrix results should always be sorted by labels")
    seen = set()
    for s in result.series:
        if s.labels not in expected:
            raise Mismatch(f"unexpected metric {dict(s.labels)} in result")
        values, _ = expected[s.labels]
        want_t = [start + i * step for i, v in enumerate(values) if not v.omitted]
        want_v = [v.v for v in values if not v.omitted]
        got_t, got_v = s.timestamps.tolist(), s.values.tolist()
        if want_t != got_t or not all(
            almost_equal(a, b) for a, b in zip(want_v, got_v, strict=True)
        ):
            raise Mismatch(
                f"series {dict(s.labels)}: expected {list(zip(want_t, want_v, strict=True))}, "
                f"got {list(zip(got_t, got_v, strict=True))}"
            )
        seen.add(s.labels)
    for labels in expected:
        if labels not in seen:
            raise Mismatch(f"expected metric {dict(labels)} not found")


async def run_eval(ev: Eval, engine: Engine) -> None:
    fail = ev.of("fail")
    node = engine.parse(ev.expr) if not fail else None
    try:
        if node is None:
            node = engine.parse(ev.expr)
        if ev.instant:
            result = await engine.instant(node, ev.start_ms)
        else:
            result = await engine.range(node, ev.start_ms, ev.end_ms, ev.step_ms)
    except QueryError as exc:
        if not fail:
            raise
        exp = fail[0]
        if (exp.message is not None or exp.regex is not None) and not exp.matches(str(exc)):
            raise Mismatch(f"expected error matching {exp}, got {exc}") from exc
        return
    if fail:
        raise Mismatch("expected the query to fail, but it succeeded")
    check_annotations(ev, result)
    if ev.instant:
        start, step = ev.start_ms, 0
        if ev.range_vector is not None:
            start, step = ev.range_vector[0], ev.range_vector[2]
        compare(ev, result, start=start, step=step)
        await _instant_variants(ev, engine, node, result)
    else:
        compare(ev, result, start=ev.start_ms, step=ev.step_ms)


async def _instant_variants(ev: Eval, engine: Engine, node: ast.Node, result: Result) -> None:
    if ev.range_vector is not None or ev.expected_string is not None:
        return
    t = ev.start_ms
    pinned, unsafe = pin_at(node, t)
    if not unsafe:
        times = [-1000, 0, 1000] if t == 0 else [-10 * t, 0, t // 5, t, 10 * t]
        for when in times:
            got = await engine.instant(pinned, when)
            try:
                compare(ev, got, start=when, step=0)
            except Mismatch as exc:
                raise Mismatch(f"with @ {t} evaluated at {when}: {exc}") from exc
    if CONTEXT_FUNCS.search(ev.expr) or ev.of("ordered"):
        return
    ranged = await engine.range(node, t - 60_000, t + 60_000, 60_000)
    assert isinstance(ranged, Matrix)
    if isinstance(result, Scalar):
        mid = [
            float(s.values[s.timestamps == t][0])
            for s in ranged.series
            if (s.timestamps == t).any()
        ]
        got_r: Result = Scalar(t, mid[0] if mid else math.nan)
    else:
        samples = []
        for s in ranged.series:
            hit = np.flatnonzero(s.timestamps == t)
            if len(hit):
                from agent.query.values import Sample

                samples.append(Sample(s.labels, t, float(s.values[hit[0]])))
        got_r = Vector(samples)
    try:
        compare(ev, got_r, start=t, step=0)
    except Mismatch as exc:
        raise Mismatch(f"in range mode: {exc}") from exc
