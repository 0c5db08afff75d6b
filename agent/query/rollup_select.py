"""Answering ``*_over_time`` from rollups, exactly when provable, approximately when asked.

Why it is shaped this way: a long-range dashboard query such as
``max_over_time(x[1h])`` over 30 days at a 1h step reads every raw sample,
while the 1h rollup has one bucket per series and step. The engine may only
switch silently when the answer is *provably* the one raw evaluation gives,
so :func:`range_call` checks, per step:

* the function is ``min``/``max``/``sum``/``count``/``avg``/``last_over_time``
  of a plain selector (no subquery);
* range and window end are multiples of the resolution, so a window
  ``(e - r, e]`` is the buckets starting in ``[e - r, e)``, corrected for a
  sample exactly at ``e - r`` (left out by PromQL; found via the head
  bucket's ``first_t``) and one exactly at ``e`` (taken in; the next
  bucket's ``first`` value). A correction ``min``/``max`` cannot make
  exactly (the dropped value was the bucket's extreme) sends the step to raw;
* ``sum``/``avg`` only over integral buckets whose total magnitude stays
  below 2**52, where float addition is exact in any order (Kahan included);
* every bucket involved is computed (below the watermark), not expired by
  rollup retention, and no late write to those series awaits recomputation.

Steps that fail go through the raw path, and the two parts are merged, so a
query over "the last 7 days" takes rollups for the old part and raw samples
for the recent hours. With ``resolution=`` the caller asks for rollups
regardless: windows are then the buckets starting in ``[e - r, e)`` (recent
buckets not rolled up yet are computed from raw samples on the fly), and
the answer carries an info annotation saying it is approximate.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from agent.model import Labels
from agent.query import ast
from agent.query.blocks import Block
from agent.query.queryable import RollupSource
from agent.query.values import Annotations
from agent.storage.rollup import (
    EXACT_SUM_LIMIT,
    SeriesBuckets,
    bucket_answer,
    window_indices,
    window_stats,
)

FUNCS = frozenset(
    {
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "avg_over_time",
        "last_over_time",
    }
)
_HALF_LIMIT = EXACT_SUM_LIMIT / 2


class _EngineView(Protocol):
    @property
    def rollups(self) -> RollupSource | None: ...

    @property
    def rollup_resolution_ms(self) -> int: ...


class _EvaluatorView(Protocol):
    """What :func:`range_call` needs of the engine's evaluator.

    A protocol, not an import of ``agent.query.engine._Evaluator``: the engine
    calls this module, so this module must not import the engine back.
    """

    @property
    def engine(self) -> _EngineView: ...

    @property
    def annos(self) -> Annotations: ...

    def pos(self, node: ast.Node | int) -> str: ...

    def _eval_times(self, at: ast.At | None, offset: int, steps: np.ndarray) -> np.ndarray: ...

    async def range_call(
        self,
        node: ast.Call,
        steps: np.ndarray,
        *,
        keep_names: bool = False,
        names_later: bool = False,
    ) -> Block: ...


def format_resolution(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


async def range_call(ev: _EvaluatorView, node: ast.Call, steps: np.ndarray) -> Block | None:
    """The block ``node`` evaluates to, using rollups where allowed; None: use raw only.

    The returned block still carries the metric names (the caller drops them).
    """
    source = ev.engine.rollups
    if source is None or node.name not in FUNCS or len(node.args) != 1:
        return None
    arg = ast.unwrap(node.args[0])
    if not isinstance(arg, ast.MatrixSelector):
        return None
    sel = arg.selector
    ends = ev._eval_times(sel.at, sel.offset_ms, steps)
    ids = source.match(list(sel.matchers))
    requested = ev.engine.rollup_resolution_ms
    if requested:
        return await _approximate(ev, node, source, ids, arg.range_ms, ends, requested)
    if not ids:
        return None
    return await _exact(ev, node, source, ids, arg.range_ms, ends, steps)


def _drop(name: str, n: int) -> np.ndarray:
    # last_over_time keeps the metric name, the others drop it (as in the raw path).
    return np.zeros(n, dtype=bool) if name == "last_over_time" else np.ones(n, dtype=bool)


async def _approximate(
    ev: _EvaluatorView,
    node: ast.Call,
    source: RollupSource,
    ids: list[int],
    range_ms: int,
    ends: np.ndarray,
    res: int,
) -> Block:
    lo, hi = ends - range_ms, ends
    sb = await source.effective(res, ids, int(lo.min()), int(hi.max()))
    i0, i1 = window_indices(sb, lo, hi)
    values, present = bucket_answer(node.name, window_stats(sb, i0, i1))
    ev.annos.info(
        f"PromQL info: {node.name} answered from the {format_resolution(res)} rollup"
        " (resolution parameter): each window is the whole buckets starting inside it,"
        " so values are approximate" + ev.pos(node)
    )
    return Block(list(sb.labels), values, present, _drop(node.name, len(sb.labels))).compact()


def _candidate(
    source: RollupSource, ids: list[int], range_ms: int, ends: np.ndarray, now: int
) -> tuple[int, np.ndarray] | None:
    """The resolution covering most steps (coarsest on ties) and its usable steps."""
    best: tuple[int, np.ndarray] | None = None
    spans = source.dirty_spans(ids)
    for res in sorted(source.resolutions, reverse=True):
        done = source.done_to.get(res)
        if done is None or range_ms % res or (ends % res).any():
            continue
        ok = (ends - range_ms >= source.retained_from(res, now)) & (ends + res <= done)
        for lo, hi in spans:  # buckets [e - r, e + res) must all be current
            ok &= ~((lo < ends + res) & (hi >= ends - range_ms))
        if ok.any() and (best is None or int(ok.sum()) > int(best[1].sum())):
            best = (res, ok)
    return best


def exact_windows(
    name: str, sb: SeriesBuckets, ends: np.ndarray, range_ms: int, res: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, present, provable) per (series, step) for windows ``(e - r, e]``."""
    lo, hi = ends - range_ms, ends
    i0, i1 = window_indices(sb, lo, hi)
    t0, t1 = window_indices(sb, hi, hi + res)
    bk = sb.buckets
    top = max(len(bk) - 1, 0)
    if not len(bk):
        shape = i0.shape
        return np.zeros(shape), np.zeros(shape, bool), np.ones(shape, bool)
    h = np.minimum(i0, top)
    t = np.minimum(t0, top)
    # A sample exactly at e - r is in the first bucket but not in the window.
    drop = (i1 > i0) & (bk.start[h] == lo[None, :]) & (bk.first_t[h] == lo[None, :])
    whole = drop & (bk.count[h] == 1)  # that sample was the bucket: skip the bucket
    part = drop & ~whole
    # A sample exactly at e is in the window but starts the next bucket.
    tail = (t1 > t0) & (bk.first_t[t] == hi[None, :])
    st = window_stats(sb, i0 + whole, i1)
    hv, tv = bk.first[h], bk.first[t]
    count = st.count - part + tail
    present = count > 0
    good = np.ones(i0.shape, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if name == "count_over_time":
            values = count.astype(np.float64)
        elif name == "last_over_time":
            values = np.where(tail, tv, st.last)
        elif name in ("min_over_time", "max_over_time"):
            edge = bk.min[h] if name == "min_over_time" else bk.max[h]
            good &= ~(part & (hv == edge))  # the dropped value may have been the extreme
            pick = np.fmin if name == "min_over_time" else np.fmax
            values = np.where(
                tail,
                pick(st.min if name == "min_over_time" else st.max, tv),
                st.min if name == "min_over_time" else st.max,
            )
        else:
            tail_ok = np.isfinite(tv) & (tv == np.trunc(tv)) & (np.abs(tv) <= _HALF_LIMIT)
            good &= st.integral & (~tail | tail_ok)
            total = st.sum - np.where(part, hv, 0.0) + np.where(tail, tv, 0.0)
            values = total if name == "sum_over_time" else total / np.maximum(count, 1)
    return values, present, good | ~present


async def _exact(
    ev: _EvaluatorView,
    node: ast.Call,
    source: RollupSource,
    ids: list[int],
    range_ms: int,
    ends: np.ndarray,
    steps: np.ndarray,
) -> Block | None:
    found = _candidate(source, ids, range_ms, ends, time.time_ns() // 1_000_000)
    if found is None:
        return None
    res, ok = found
    idx = np.flatnonzero(ok)
    e = ends[idx]
    sb = await source.stored(res, ids, int(e.min()) - range_ms, int(e.max()) + res)
    values, present, good = exact_windows(node.name, sb, e, range_ms, res)
    step_good = good.all(axis=0) if len(sb.labels) else np.ones(idx.size, dtype=bool)
    use = np.zeros(len(steps), dtype=bool)
    use[idx[step_good]] = True
    if not use.any():
        return None
    n_steps = len(steps)
    rows: dict[Labels, int] = {lab: i for i, lab in enumerate(sb.labels)}
    labels: list[Labels] = list(sb.labels)
    out_v = np.zeros((len(labels), n_steps))
    out_p = np.zeros((len(labels), n_steps), dtype=bool)
    cols = idx[step_good]
    out_v[:, cols] = values[:, step_good]
    out_p[:, cols] = present[:, step_good]
    if not use.all():
        raw = await ev.range_call(node, steps[~use], keep_names=True)
        raw_cols = np.flatnonzero(~use)
        extra = [lab for lab in raw.labels if lab not in rows]
        if extra:
            for lab in extra:
                rows[lab] = len(labels)
                labels.append(lab)
            out_v = np.vstack([out_v, np.zeros((len(extra), n_steps))])
            out_p = np.vstack([out_p, np.zeros((len(extra), n_steps), dtype=bool)])
        at = np.array([rows[lab] for lab in raw.labels], dtype=np.int64)
        if at.size:
            out_v[np.ix_(at, raw_cols)] = raw.values
            out_p[np.ix_(at, raw_cols)] = raw.present
    return Block(labels, out_v, out_p, _drop(node.name, len(labels))).compact()
