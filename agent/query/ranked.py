"""Aggregations that rank values: topk, bottomk, limitk, limit_ratio and quantile.

The other aggregations (:mod:`agent.query.aggregation`) walk the members of
every group together; these need each step's values in order, so they work
one group at a time on its ``(rows, steps)`` matrix. Both kinds of work run
with the steps as rows of a contiguous copy (``(steps, rows)``): numpy's
partitions, sorts, counts and prefix sums along the last, contiguous axis
cost a third of the same calls down the rows of a 500 x 16 block, which is
most of what a dashboard's ``topk`` or ``quantile`` panel costs.
"""

from __future__ import annotations

import numpy as np
import xxhash

from agent.model import Labels
from agent.query.blocks import Block
from agent.query.errors import ExecutionError
from agent.query.limits import checkpoint
from agent.query.numfmt import format_value, go_g
from agent.query.values import Annotations

Arr = np.ndarray


def ratio_offset(labels: Labels) -> float:
    """Position in [0, 1) for ``limit_ratio``: Prometheus's label hash over the max uint64.

    Using the same xxhash64 over ``name 0xff value 0xff ...`` keeps the sampled
    subset identical to Prometheus's.
    """
    raw = b"".join(k.encode() + b"\xff" + v.encode() + b"\xff" for k, v in labels)
    return xxhash.xxh64_intdigest(raw) / float(2**64 - 1)


def select_k(
    op: str,
    block: Block,
    groups: tuple[int, Arr],
    param: Arr,
    annos: Annotations,
    param_pos: str,
    instant: bool,
) -> Block:
    """topk/bottomk/limitk/limit_ratio of ``block`` whose rows fall in ``groups``.

    ``groups``: the number of groups and each row's group. The chosen rows keep
    their order (a range result) or, for an instant topk/bottomk, come in rank
    order, as Prometheus returns them.
    """
    steps = block.values.shape[1]
    if op == "limit_ratio":
        if np.isnan(param).any():
            raise ExecutionError("Ratio value is NaN")
        for r in np.unique(param[(param < -1) | (param > 1)]).tolist():
            cap = 1.0 if r > 1 else -1.0
            annos.warn(
                "PromQL warning: ratio value should be between -1 and 1, "
                f"got {go_g(r)}, capping to {go_g(cap)}" + param_pos
            )
        ratio = np.clip(param, -1.0, 1.0)
    elif (first := float(param[0])) == first and abs(first) < 2.0**63 and (param == first).all():
        ks = np.full(len(param), int(first), dtype=np.int64)  # one k for every step (the usual)
    else:
        if np.isnan(param).any():
            raise ExecutionError("Parameter value is NaN")
        if (np.abs(param) >= 2.0**63).any():
            bad = param[np.abs(param) >= 2.0**63][0]
            raise ExecutionError(f"Scalar value {format_value(float(bad))} overflows int64")
        ks = np.trunc(param).astype(np.int64)
    if len(block) == 0:
        return Block.empty(steps)
    count, group_of = groups
    chosen = np.zeros_like(block.present)
    order_rows: list[int] = []
    for g in range(count):
        checkpoint()  # one pass per group: 100,000 groups take a while
        if count == 1:  # the whole block: no copy of it
            rows = np.arange(len(block))
            vals, pres = block.values, block.present
        else:
            rows = np.flatnonzero(group_of == g)
            vals, pres = block.values[rows], block.present[rows]
        if op == "limit_ratio":
            offs = np.array([ratio_offset(block.labels[r]) for r in rows.tolist()])[:, None]
            r = ratio[None, :]
            pick = pres & (((r >= 0) & (offs < r)) | ((r < 0) & (offs >= 1.0 + r)))
            chosen[rows] = pick
            order_rows.extend(rows.tolist())
            continue
        if op in ("topk", "bottomk") and (fast := top_rows(op, vals, pres, ks)) is not None:
            if count == 1:
                chosen = fast  # (a transposed view: any() along its rows is quick)
            else:
                chosen[rows] = fast
            if instant:
                picked = np.flatnonzero(fast[:, 0])
                sub = vals[picked, 0]
                nan_sub = np.isnan(sub)
                key = np.where(nan_sub, 0.0, sub)
                rank_sub = np.lexsort((-key if op == "topk" else key, nan_sub), axis=0)
                order_rows.extend(rows[picked[rank_sub]].tolist())
            elif count == 1:  # row order: the rows chosen at some step, found below
                order_rows = []
            else:
                order_rows.extend(rows.tolist())
            continue
        # Absent rows last, then NaN, then by value; ties in row order (lexsort is
        # stable, so the row index needs no key of its own).
        nan = np.isnan(vals)
        cls = (~pres).view(np.int8) * 2 + nan.view(np.int8)
        if op == "topk":
            rank = np.lexsort((-np.where(nan, 0.0, vals), cls), axis=0)
        elif op == "bottomk":
            rank = np.lexsort((np.where(nan, 0.0, vals), cls), axis=0)
        else:  # limitk keeps input order
            rank = np.argsort(~pres, axis=0, kind="stable")
        pos = np.empty_like(rank)
        np.put_along_axis(pos, rank, np.arange(len(rows))[:, None].repeat(steps, 1), axis=0)
        chosen[rows] = pres & (pos < ks[None, :])
        if instant:
            order_rows.extend(rows[rank[:, 0]].tolist())
        else:
            order_rows.extend(rows.tolist())
    # Only rows chosen at some step survive (what compact() would keep), in that order.
    used = np.asarray(chosen.any(axis=1))
    if count == 1 and not order_rows:
        order = np.flatnonzero(used)
    else:
        order = np.asarray(order_rows, dtype=np.int64)
        order = order[used[order]]
    return Block(block.labels, block.values, chosen, block.drop).take(order)


def top_rows(op: str, vals: Arr, pres: Arr, ks: Arr) -> Arr | None:
    """topk/bottomk's chosen rows per step without sorting every row, or None.

    The order the general path sorts by (present values first, larger first
    for topk, smaller for bottomk; then NaN; ties in row order) only matters
    up to the k-th row: one partition per step finds the k-th value, rows
    beyond it are out, and ties at it are taken in row order. A lexsort of
    500 rows x 16 steps along the rows cost 0.3 ms; this a tenth of it.
    None when k differs between steps or the group is small (then sort).
    """
    n = vals.shape[0]
    k = int(ks[0])
    if not (ks == k).all() or n < 32 or k * 2 > n:
        return None
    if k <= 0:
        return np.zeros(pres.shape, dtype=bool)
    vt = np.ascontiguousarray(vals.T)  # steps as rows: see the module's docstring
    nan = np.isnan(vt)
    valid: Arr | None = None  # None: every row has a number at every step (the usual case)
    if nan.any() or not pres.all():
        pt = np.ascontiguousarray(pres.T)
        valid = pt & ~nan
        key = np.where(valid, vt if op == "topk" else -vt, -np.inf)
    else:
        key = vt if op == "topk" else -vt
    thr = np.partition(key, n - k, axis=1)[:, n - k, None]  # each step's k-th largest key
    if valid is None:
        chosen = key >= thr  # at least k a step; exactly k when every tie fits
        if (chosen.sum(axis=1) == k).all():
            return chosen.T
    above = key > thr
    ties = key == thr
    if valid is not None:
        above &= valid
        ties &= valid
    need = k - above.sum(axis=1)
    if (ties.sum(axis=1) <= need).all():
        chosen = above | ties  # every tie fits: no need to count them in row order
    else:
        chosen = above | (ties & (np.cumsum(ties, axis=1) <= need[:, None]))
    if valid is not None and (short := (nvalid := valid.sum(axis=1)) < k).any():
        # Fewer present values than k: every one, then NaN rows in row order.
        nans = pt & ~valid
        more = valid | (nans & (np.cumsum(nans, axis=1) <= (k - nvalid)[:, None]))
        chosen = np.where(short[:, None], more, chosen)
    return chosen.T


def quantile_steps(qs: Arr, vals: Arr, pres: Arr) -> tuple[Arr, Arr]:
    """Prometheus's ``quantile(q, ...)`` of each step's present values: ``(out, seen)``.

    The arithmetic of :func:`agent.query.rangefuncs.quantile_values` (NaN
    sorts first, then ascending; linear interpolation between the ranks
    around ``q * (n - 1)``) for all steps at once: one sort of the steps' rows,
    where absent and NaN cells sort last as +Inf and NaN's ranks are counted
    in front. The Python loop of one sort per step cost ~10 microseconds a step.
    """
    (n, steps), vt = vals.shape, np.ascontiguousarray(vals.T)
    nan = np.isnan(vt)
    knan: Arr | None = None  # NaN values at each step: they rank first
    if not nan.any() and pres.all():  # the usual case: every row's number at every step
        m = np.full(steps, n)
        ordered = np.sort(vt, axis=1)
    else:
        pt = np.ascontiguousarray(pres.T)
        m = pt.sum(axis=1)
        pnan = pt & nan
        knan = pnan.sum(axis=1)
        ordered = np.sort(np.where(pt ^ pnan, vt, np.inf), axis=1)
    seen = m > 0
    out = np.full(steps, np.nan)
    ok = seen & (qs >= 0) & (qs <= 1)  # NaN q stays NaN
    if ok.any():
        at: slice | Arr = slice(None) if ok.all() else ok
        mk = m[at]
        rank = qs[at] * (mk - 1)
        floor = np.floor(rank)
        lower = np.maximum(0.0, floor)
        upper = np.minimum(mk - 1, lower + 1)
        weight = rank - floor
        rows, kn = ordered[at], None if knan is None else knan[at]
        lo = _ranked(rows, lower.astype(np.int64), kn)
        hi = _ranked(rows, upper.astype(np.int64), kn)
        with np.errstate(invalid="ignore"):  # Inf * 0 is NaN, as in Go
            out[at] = lo * (1 - weight) + hi * weight
    if not ok.all():
        out[seen & (qs < 0)] = -np.inf
        out[seen & (qs > 1)] = np.inf
    return out, seen


def _ranked(rows: Arr, at: Arr, nans: Arr | None) -> Arr:
    """Value at rank ``at`` of each row whose first ``nans`` ranks are NaN (sorted after)."""
    if nans is None:
        return rows[np.arange(len(rows)), at]
    got = rows[np.arange(len(rows)), np.maximum(at - nans, 0)]  # at < rows' values counted
    return np.where(at < nans, np.nan, got)
