"""Functions over instant vectors and scalars (math, dates, labels, sorting, histograms).

Range-vector functions live in :mod:`agent.query.rangefuncs`; the engine
evaluates arguments and calls these with ``(series, steps)`` arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cmp_to_key
from typing import Any

import numpy as np

from agent.model import METRIC_NAME, Labels, MatchOp, compile_anchored, valid_label_name
from agent.query import ast
from agent.query.blocks import Block, merge_same_labels
from agent.query.errors import ExecutionError
from agent.query.numfmt import go_g
from agent.query.values import Annotations

Arr = np.ndarray

MATH: dict[str, Callable[[Arr], Arr]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "rad": lambda v: v * math.pi / 180,
    "deg": lambda v: v * 180 / math.pi,
    "sgn": np.sign,
}


def math_func(name: str, block: Block) -> Block:
    with np.errstate(all="ignore"):
        values = MATH[name](block.values)
    return Block(block.labels, values, block.present, np.ones(len(block), dtype=bool))


def _seconds(values: Arr) -> tuple[Arr, Arr]:
    """Whole seconds (Go's ``int64(f)`` truncation) and a mask of convertible values."""
    ok = np.isfinite(values) & (np.abs(values) < 2.0**62)
    secs = np.where(ok, np.trunc(np.where(ok, values, 0.0)), 0.0).astype(np.int64)
    return secs, ok


def date_parts(name: str, values: Arr) -> Arr:
    secs, ok = _seconds(values)
    t = secs.astype("datetime64[s]")
    days = t.astype("datetime64[D]")
    months = t.astype("datetime64[M]")
    if name == "year":
        out = t.astype("datetime64[Y]").astype(np.int64) + 1970
    elif name == "month":
        out = months.astype(np.int64) % 12 + 1
    elif name == "day_of_month":
        out = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_week":
        out = (days.astype(np.int64) + 4) % 7
    elif name == "day_of_year":
        out = (days - t.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "days_in_month":
        nxt = (months + 1).astype("datetime64[D]")
        out = (nxt - months.astype("datetime64[D]")).astype(np.int64)
    elif name == "hour":
        out = secs // 3600 % 24
    elif name == "minute":
        out = secs // 60 % 60
    else:  # pragma: no cover - the caller only passes known names
        raise ExecutionError(f"unknown date function {name}")
    return np.where(ok, out.astype(np.float64), np.nan)


DATE_FUNCS = frozenset(
    {
        "year",
        "month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "hour",
        "minute",
    }
)


def clamp(block: Block, lo: Arr, hi: Arr) -> Block:
    with np.errstate(invalid="ignore"):
        values = np.maximum(lo[None, :], np.minimum(hi[None, :], block.values))
    present = block.present & ~(hi < lo)[None, :]
    return Block(block.labels, values, present, np.ones(len(block), dtype=bool))


def round_to(block: Block, to_nearest: Arr) -> Block:
    with np.errstate(all="ignore"):
        inv = 1.0 / to_nearest[None, :]
        values = np.floor(block.values * inv + 0.5) / inv
    return Block(block.labels, values, block.present, np.ones(len(block), dtype=bool))


def scalar_of(block: Block, steps: int) -> Arr:
    if len(block) == 0:
        return np.full(steps, np.nan)
    count = block.present.sum(axis=0)
    first = np.argmax(block.present, axis=0)
    vals = block.values[first, np.arange(steps)]
    return np.where(count == 1, vals, np.nan)


def absent_labels(node: ast.Node) -> Labels:
    """Labels of ``absent()``'s output: the selector's unique equality matchers."""
    node = ast.unwrap(node)
    if isinstance(node, ast.MatrixSelector):
        node = node.selector
    if not isinstance(node, ast.VectorSelector):
        return ()
    out: dict[str, str] = {}
    has: set[str] = set()
    for m in node.matchers:
        if m.name == METRIC_NAME:
            continue
        if m.op is MatchOp.EQ and m.name not in has:
            out[m.name] = m.value
            has.add(m.name)
        else:
            out.pop(m.name, None)
    return tuple(sorted((k, v) for k, v in out.items() if v))


def absent(block: Block, node: ast.Node, steps: int) -> Block:
    missing = np.asarray(~block.present.any(axis=0)) if len(block) else np.ones(steps, bool)
    if not missing.any():
        return Block.empty(steps)
    return Block(
        [absent_labels(node)], np.ones((1, steps)), missing[None, :], np.ones(1, dtype=bool)
    )


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p]


def _natcmp(a: str, b: str) -> int:
    ka, kb = _natural_key(a), _natural_key(b)
    return -1 if ka < kb else (1 if ka > kb else 0)


def sort_rows(name: str, block: Block, label_args: list[str]) -> Block:
    """Reorder rows by the first step's value (sort/sort_desc) or by labels."""
    if len(block) < 2:
        return block
    if name in ("sort", "sort_desc"):
        v = block.values[:, 0]
        nan = np.isnan(v)
        key = v if name == "sort" else -v
        order = np.lexsort((np.where(nan, 0.0, key), nan))
        return block.take(order)
    desc = name == "sort_by_label_desc"

    def cmp(i: int, j: int) -> int:
        a, b = dict(block.labels[i]), dict(block.labels[j])
        for lab in label_args:
            c = _natcmp(a.get(lab, ""), b.get(lab, ""))
            if c:
                return -c if desc else c
        la, lb = block.labels[i], block.labels[j]
        c = -1 if la < lb else (1 if la > lb else 0)
        return -c if desc else c

    return block.take(sorted(range(len(block)), key=cmp_to_key(cmp)))


def _compile_replacement(repl: str) -> Callable[[Any], str]:
    """Go's ``Regexp.Expand`` syntax: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    token = re.compile(r"\$(\$|\{(\w+)\}|(\w+))")

    def expand(m: Any) -> str:  # an RE2 match
        def sub(t: re.Match[str]) -> str:
            if t.group(1) == "$":
                return "$"
            ref = t.group(2) or t.group(3)
            try:
                val = m.group(int(ref)) if ref.isdigit() else m.group(ref)
            except IndexError:
                return ""
            return val or ""

        return token.sub(sub, repl)

    return expand


def label_replace(block: Block, dst: str, repl: str, src: str, regex: str) -> Block:
    try:
        rx = compile_anchored(regex)  # RE2: linear time, Go's syntax, as Prometheus
    except ValueError:
        raise ExecutionError(f"invalid regular expression in label_replace(): {regex}") from None
    if not valid_label_name(dst) and dst != METRIC_NAME:
        raise ExecutionError(f"invalid destination label name in label_replace(): {dst}")
    expand = _compile_replacement(repl)
    labels = list(block.labels)
    drop = block.drop.copy()
    for i, lab in enumerate(labels):
        d = dict(lab)
        m = rx.match(d.get(src, ""))
        if m is None:
            continue
        d[dst] = expand(m)
        labels[i] = tuple(sorted((k, v) for k, v in d.items() if v))
        if dst == METRIC_NAME:
            drop[i] = False
    return merge_same_labels(Block(labels, block.values, block.present, drop))


def label_join(block: Block, dst: str, sep: str, srcs: list[str]) -> Block:
    for s in srcs:
        if not valid_label_name(s) and s != METRIC_NAME:
            raise ExecutionError(f"invalid source label name in label_join(): {s}")
    if not valid_label_name(dst) and dst != METRIC_NAME:
        raise ExecutionError(f"invalid destination label name in label_join(): {dst}")
    labels = list(block.labels)
    drop = block.drop.copy()
    for i, lab in enumerate(labels):
        d = dict(lab)
        d[dst] = sep.join(d.get(s, "") for s in srcs)
        labels[i] = tuple(sorted((k, v) for k, v in d.items() if v))
        if dst == METRIC_NAME:
            drop[i] = False
    return merge_same_labels(Block(labels, block.values, block.present, drop))


def _bucket_quantile(q: float, bounds: Arr, counts: Arr) -> tuple[float, bool]:
    """Prometheus's ``BucketQuantile`` over classic buckets (sorted by ``bounds``)."""
    if math.isnan(q):
        return math.nan, False
    if q < 0:
        return -math.inf, False
    if q > 1:
        return math.inf, False
    order = np.argsort(bounds, kind="stable")
    bounds, counts = bounds[order], counts[order].astype(np.float64)
    if not math.isinf(bounds[-1]) or bounds[-1] < 0:
        return math.nan, False
    # Coalesce buckets with the same upper bound.
    uniq, start = np.unique(bounds, return_index=True)
    if len(uniq) != len(bounds):
        counts = np.add.reduceat(counts, start)
        bounds = uniq
    forced = False
    prev = counts[0]
    for i in range(1, len(counts)):
        cur = counts[i]
        if cur == prev:
            continue
        if _almost_equal(prev, cur, 1e-12):
            counts[i] = prev
            continue
        if cur < prev:
            counts[i] = prev
            forced = True
            continue
        prev = cur
    if len(counts) < 2:
        return math.nan, forced
    observations = counts[-1]
    if observations == 0:
        return math.nan, forced
    rank = q * observations
    b = int(np.searchsorted(counts[:-1], rank, "left"))
    if b == len(counts) - 1:
        return float(bounds[-2]), forced
    if b == 0 and bounds[0] <= 0:
        return float(bounds[0]), forced
    start_b, end_b, count = 0.0, float(bounds[b]), float(counts[b])
    if b > 0:
        start_b = float(bounds[b - 1])
        count -= float(counts[b - 1])
        rank -= float(counts[b - 1])
    return start_b + (end_b - start_b) * (rank / count), forced


def _almost_equal(a: float, b: float, eps: float) -> bool:
    min_normal = 2.2250738585072014e-308
    if a == b:
        return True
    diff = abs(a - b)
    total = abs(a) + abs(b)
    if a == 0 or b == 0 or total < min_normal:
        return diff < eps * min_normal
    return diff / min(total, 1.7976931348623157e308) < eps


def _interp(v: float, lb: float, ub: float, rank: float, count: float) -> float:
    """Rank of ``v`` inside bucket (lb, ub]; infinitely wide buckets contribute nothing."""
    if math.isinf(lb):
        return count
    if math.isinf(ub):
        return rank
    return rank + (count - rank) * (v - lb) / (ub - lb)


def _bucket_fraction(lower: float, upper: float, bounds: Arr, counts: Arr) -> float:
    """Prometheus's ``BucketFraction``: interpolated share of observations in [lower, upper]."""
    order = np.argsort(bounds, kind="stable")
    bounds, counts = bounds[order], counts[order].astype(np.float64)
    if not math.isinf(bounds[-1]) or bounds[-1] < 0:
        return math.nan
    uniq, start = np.unique(bounds, return_index=True)
    if len(uniq) != len(bounds):
        counts = np.add.reduceat(counts, start)
        bounds = uniq
    count = float(counts[-1])
    if count == 0 or math.isnan(lower) or math.isnan(upper):
        return math.nan
    if lower >= upper:
        return 0.0
    rank = lower_rank = upper_rank = 0.0
    lower_set = upper_set = False
    for i in range(len(bounds)):
        upper_b = float(bounds[i])
        lower_b = float(bounds[i - 1]) if i > 0 else (0.0 if upper_b > 0 else -math.inf)
        b_count = float(counts[i])
        if not lower_set and lower_b >= lower:
            lower_rank, lower_set = rank, True
        if not upper_set and lower_b >= upper:
            upper_rank, upper_set = rank, True
        if lower_set and upper_set:
            break
        if not lower_set and lower_b < lower < upper_b:
            lower_rank, lower_set = _interp(lower, lower_b, upper_b, rank, b_count), True
        if not upper_set and lower_b < upper < upper_b:
            upper_rank, upper_set = _interp(upper, lower_b, upper_b, rank, b_count), True
        if lower_set and upper_set:
            break
        rank = b_count
    if not lower_set or lower_rank > count:
        lower_rank = count
    if not upper_set or upper_rank > count:
        upper_rank = count
    return (upper_rank - lower_rank) / count


def classic_histograms(
    block: Block, annos: Annotations, pos: str, delayed: bool
) -> tuple[list[Labels], list[list[int]], Arr, Arr]:
    """Group ``_bucket`` rows by their labels without ``le``."""
    groups: dict[Labels, list[int]] = {}
    bounds: list[float] = []
    rows: list[int] = []
    for i, lab in enumerate(block.labels):
        d = dict(lab)
        try:
            le = float(d.get("le", "").replace("+Inf", "inf").replace("Inf", "inf"))
        except ValueError:
            annos.warn(
                f'PromQL warning: bucket label "le" is missing or has a malformed value of '
                f'"{d.get("le", "")}" for metric name "{d.get(METRIC_NAME, "")}"' + pos
            )
            continue
        key = tuple(p for p in lab if p[0] != "le" and (delayed or p[0] != METRIC_NAME))
        groups.setdefault(key, []).append(len(rows))
        rows.append(i)
        bounds.append(le)
    return list(groups), list(groups.values()), np.array(rows, dtype=np.int64), np.array(bounds)


def histogram_quantile(
    q: Arr, block: Block, annos: Annotations, pos: str, info_pos: str, delayed: bool
) -> Block:
    steps = len(q)
    bad = np.isnan(q) | (q < 0) | (q > 1)
    for v in np.unique(q[bad]).tolist() if bad.any() else []:
        annos.warn("PromQL warning: quantile value should be between 0 and 1, got " + go_g(v) + pos)
    keys, members, rows, bounds = classic_histograms(block, annos, info_pos, delayed)
    out_vals = np.full((len(keys), steps), np.nan)
    out_pres = np.zeros((len(keys), steps), dtype=bool)
    for g, mem in enumerate(members):
        r = rows[mem]
        b = bounds[mem]
        vals, pres = block.values[r], block.present[r]
        for s in np.flatnonzero(pres.any(axis=0)).tolist():
            m = pres[:, s]
            val, forced = _bucket_quantile(float(q[s]), b[m], vals[m, s])
            if forced:
                name = dict(keys[g]).get(METRIC_NAME, "") if delayed else ""
                annos.info(
                    "PromQL info: input to histogram_quantile needed to be fixed for "
                    "monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/"
                    f'functions/#histogram_quantile) for metric name "{name}"' + info_pos
                )
            out_vals[g, s] = val
            out_pres[g, s] = True
    return Block(keys, out_vals, out_pres, np.ones(len(keys), dtype=bool)).compact()


def histogram_fraction(
    lower: Arr, upper: Arr, block: Block, annos: Annotations, pos: str, delayed: bool
) -> Block:
    steps = len(lower)
    keys, members, rows, bounds = classic_histograms(block, annos, pos, delayed)
    out_vals = np.full((len(keys), steps), np.nan)
    out_pres = np.zeros((len(keys), steps), dtype=bool)
    for g, mem in enumerate(members):
        r = rows[mem]
        b = bounds[mem]
        vals, pres = block.values[r], block.present[r]
        for s in np.flatnonzero(pres.any(axis=0)).tolist():
            m = pres[:, s]
            out_vals[g, s] = _bucket_fraction(float(lower[s]), float(upper[s]), b[m], vals[m, s])
            out_pres[g, s] = True
    return Block(keys, out_vals, out_pres, np.ones(len(keys), dtype=bool)).compact()
