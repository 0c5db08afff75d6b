"""Aggregation operators over a :class:`~agent.query.blocks.Block`.

Rows are grouped once per query (labels do not change between steps); the
per-step work is vectorised across groups and steps by walking the *k-th
member* of every group together, so order-dependent algorithms (Kahan sums,
Welford variance, Prometheus's overflow-safe mean) keep Prometheus's exact
arithmetic without a per-sample Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from agent.model import METRIC_NAME, Labels, make_labels, valid_label_name
from agent.query.blocks import Block
from agent.query.errors import ExecutionError
from agent.query.limits import checkpoint
from agent.query.numfmt import format_value, go_g
from agent.query.rangefuncs import kahan_inc
from agent.query.ranked import quantile_steps, select_k
from agent.query.values import Annotations

Arr = np.ndarray


@dataclass
class Grouping:
    keys: list[Labels]  # output labels per group
    group_of: Arr  # int64 (rows,)


def group_labels(labels: Labels, grouping: tuple[str, ...], without: bool) -> Labels:
    if without:
        drop = set(grouping) | {METRIC_NAME}
        return tuple(p for p in labels if p[0] not in drop)
    keep = set(grouping)
    return tuple(p for p in labels if p[0] in keep)


def make_grouping(labels: list[Labels], grouping: tuple[str, ...], without: bool) -> Grouping:
    """Each row's group: rows whose labels agree on the grouping share one.

    ``by`` groupings (``grouping`` sorted, as the engine passes it) read each
    row through a dict instead of testing every pair against the grouping: half
    the time on 52,000 series; an empty ``by`` is one group without a look.
    """
    if not without:
        if not grouping:
            return Grouping([()] if labels else [], np.zeros(len(labels), dtype=np.int64))
        return _by_grouping(labels, grouping)
    index: dict[Labels, int] = {}
    keys: list[Labels] = []
    group_of = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        key = group_labels(lab, grouping, without)
        g = index.get(key)
        if g is None:
            g = index[key] = len(keys)
            keys.append(key)
        group_of[i] = g
    return Grouping(keys, group_of)


def _by_grouping(labels: list[Labels], grouping: tuple[str, ...]) -> Grouping:
    """:func:`make_grouping` for ``by``: the key keeps the grouping's pairs in label order
    (labels are sorted by name, and so is ``grouping``)."""
    index: dict[Labels, int] = {}
    grouping = tuple(sorted(set(grouping)))  # by (a, a) is by (a)
    if len(grouping) == 1:
        name = grouping[0]
        same = _same_position(labels, name)
        if same is not None:
            return same
        by_value: dict[str | None, int] = {}
        codes = [by_value.setdefault(dict(lab).get(name), len(by_value)) for lab in labels]
        keys: list[Labels] = [((name, v),) if v is not None else () for v in by_value]
        return Grouping(keys, np.array(codes, dtype=np.int64))
    keys = []
    group_of = np.empty(len(labels), dtype=np.int64)
    for i, lab in enumerate(labels):
        d = dict(lab)
        key = tuple((n, d[n]) for n in grouping if n in d)
        g = index.get(key)
        if g is None:
            g = index[key] = len(keys)
            keys.append(key)
        group_of[i] = g
    return Grouping(keys, group_of)


def _same_position(labels: list[Labels], name: str) -> Grouping | None:
    """``by (name)`` when every row holds ``name`` at the position the first row has it.

    Series of one metric share their label names, so the pair is one index
    away (a quarter of the time of a dict per row); the few distinct pairs
    found are then checked, and None sends any other shape to the general path.
    """
    first = labels[0] if labels else ()
    at = next((i for i, pair in enumerate(first) if pair[0] == name), -1)
    if at < 0:
        return None
    by_pair: dict[tuple[str, str], int] = {}
    put = by_pair.setdefault
    try:
        codes = [put(pair, len(by_pair)) for pair in map(itemgetter(at), labels)]
    except IndexError:
        return None
    if any(pair[0] != name for pair in by_pair):
        return None
    return Grouping([(pair,) for pair in by_pair], np.array(codes, dtype=np.int64))


def _members(grp: Grouping) -> Iterator[tuple[Arr, Arr]]:
    """Yield ``(group_ids, rows)`` for the k-th member of every group, k = 0, 1, ..."""
    order = np.argsort(grp.group_of, kind="stable")
    sorted_g = grp.group_of[order]
    starts = np.searchsorted(sorted_g, np.arange(len(grp.keys)), "left")
    sizes = np.bincount(grp.group_of, minlength=len(grp.keys))
    for k in range(int(sizes.max()) if len(sizes) else 0):
        gids = np.flatnonzero(sizes > k)
        yield gids, order[starts[gids] + k]


# Groups with more members than this are aggregated one group at a time with
# operations along the member axis (see _big_group) instead of by the k-th-member
# walk, whose Python loop runs once per member of the largest group.
BIG_GROUP = 32
_CHUNK_ELEMENTS = 1 << 21  # bound the (members, steps) temporaries of one big group


def kahan_sum_members(x: Arr, present: Arr) -> Arr:
    """Prometheus's sequential Kahan-Neumaier sum down the member axis, per column.

    The running sum of Prometheus's loop is the plain left-to-right prefix sum
    (``np.add.accumulate`` is sequential), and each compensation term depends
    only on consecutive prefix sums and the added value, so all terms come out
    of a few array operations and the compensation is their sequential sum:
    bit for bit the same arithmetic as the loop.  Absent members add ``-0.0``,
    the exact additive identity (it keeps a ``-0.0`` sum negative), whose term
    is ``+0.0``.  Prometheus resets the compensation whenever the sum is
    infinite; a sum that reached Inf or NaN stays there, so the result is then
    the plain sum.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        vals = np.where(present, x, -0.0)
        sums = np.add.accumulate(vals, axis=0)
        prev, cur, inc = sums[:-1], sums[1:], vals[1:]
        terms = np.where(np.abs(prev) >= np.abs(inc), (prev - cur) + inc, (inc - cur) + prev)
        # Sequential from +0.0, like the loop's ``c += term``.
        comp = np.add.accumulate(np.concatenate([np.zeros((1, x.shape[1])), terms]), axis=0)[-1]
        total = sums[-1]
        return np.where(np.isfinite(total), total + comp, total)


def _extreme_members(x: Arr, present: Arr, want_max: bool) -> Arr:
    """max/min down the member axis with Prometheus's rules: NaN only if all are NaN,
    and of equal values the first wins (which only shows for ``0.0`` and ``-0.0``)."""
    vals = np.where(present, x, np.nan)
    with np.errstate(invalid="ignore"):
        out = (np.fmax if want_max else np.fmin).reduce(vals, axis=0)
        zero = out == 0
        if zero.any():
            first = np.argmax(vals == 0, axis=0)
            out = np.where(zero, vals[first, np.arange(vals.shape[1])], out)
    return np.asarray(out)


def _big_group(op: str, x: Arr, present: Arr) -> tuple[Arr, Arr] | None:
    """One large group's ``(value, seen)`` per step, or None to use the general walk.

    Exact for sum, count, group, min and max; avg is exact while its Kahan sum
    stays finite (Prometheus then divides, as here) and otherwise goes back to
    the walk, which implements the incremental mean it switches to.
    """
    seen = np.asarray(present.any(axis=0))
    if op in ("count", "group"):
        return (present.sum(axis=0).astype(np.float64) if op == "count" else seen * 1.0), seen
    if op in ("max", "min"):
        return _extreme_members(x, present, op == "max"), seen
    total = np.empty(x.shape[1])
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[0]))
    for a in range(0, x.shape[1], step):
        total[a : a + step] = kahan_sum_members(x[:, a : a + step], present[:, a : a + step])
    if op == "sum":
        return total, seen
    if not np.isfinite(total).all():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / present.sum(axis=0), seen


def _simple(op: str, block: Block, grp: Grouping) -> tuple[Arr, Arr]:
    """sum, avg, count, group, min, max, stddev, stdvar: ``(values, seen)`` per group."""
    g = len(grp.keys)
    if op in ("count", "group") and g:
        return _counts(op, block, grp)
    if op in ("sum", "avg", "max", "min") and g:
        sizes = np.bincount(grp.group_of, minlength=g)
        if sizes.max() > BIG_GROUP:
            return _simple_mixed(op, block, grp, sizes)
    return _simple_walk(op, block, grp)


def _counts(op: str, block: Block, grp: Grouping) -> tuple[Arr, Arr]:
    """count and group for every group at once: members counted per step (exact integers)."""
    present = block.present
    if len(grp.keys) == 1:
        counts = present.sum(axis=0, dtype=np.int64)[None, :]
    else:
        order = np.argsort(grp.group_of, kind="stable")
        sizes = np.bincount(grp.group_of, minlength=len(grp.keys))
        starts = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        counts = np.add.reduceat(present[order].astype(np.int64), starts, axis=0)
    seen = counts > 0
    return (counts.astype(np.float64) if op == "count" else np.ones(counts.shape)), seen


def _simple_mixed(op: str, block: Block, grp: Grouping, sizes: Arr) -> tuple[Arr, Arr]:
    """Large groups one by one (:func:`_big_group`), the rest by the k-th-member walk."""
    g, steps = len(grp.keys), block.values.shape[1]
    out = np.zeros((g, steps))
    seen = np.zeros((g, steps), dtype=bool)
    order = np.argsort(grp.group_of, kind="stable")
    starts = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    walk = np.ones(g, dtype=bool)
    for gid in np.flatnonzero(sizes > BIG_GROUP).tolist():
        rows = order[starts[gid] : starts[gid + 1]]
        res = _big_group(op, block.values[rows], block.present[rows])
        if res is not None:
            out[gid], seen[gid] = res
            walk[gid] = False
    if walk.any():
        rows = np.flatnonzero(walk[grp.group_of])
        remap = np.cumsum(walk) - 1
        sub_keys = [k for k, w in zip(grp.keys, walk.tolist(), strict=True) if w]
        sub = Grouping(sub_keys, remap[grp.group_of[rows]])
        vals, pres = _simple_walk(op, block.take(rows), sub)
        out[walk], seen[walk] = vals, pres
    return out, seen


def _simple_walk(op: str, block: Block, grp: Grouping) -> tuple[Arr, Arr]:
    """The k-th-member walk: exact for every op, one Python iteration per member."""
    g, steps = len(grp.keys), block.values.shape[1]
    seen = np.zeros((g, steps), dtype=bool)
    val = np.zeros((g, steps))
    comp = np.zeros((g, steps))
    mean = np.zeros((g, steps))
    count = np.zeros((g, steps))
    incr = np.zeros((g, steps), dtype=bool)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for gids, rows in _members(grp):
            f = block.values[rows]
            p = block.present[rows]
            first = p & ~seen[gids]
            later = p & seen[gids]
            v, c, m, n, inc = val[gids], comp[gids], mean[gids], count[gids], incr[gids]
            n = np.where(p, n + 1, n)
            if op == "sum":
                ns, nc = kahan_inc(f, v, c)
                v = np.where(first, f, np.where(later, ns, v))
                c = np.where(first, 0.0, np.where(later, nc, c))
            elif op == "avg":
                v = np.where(first, f, v)
                m = np.where(first, f, m)
                c = np.where(first, 0.0, c)
                ns, nc = kahan_inc(f, v, c)
                stay = later & ~inc & ~np.isinf(ns)
                switch = later & ~inc & np.isinf(ns)
                v = np.where(stay, ns, v)
                c = np.where(stay, nc, c)
                m = np.where(switch, v / (n - 1), m)
                c = np.where(switch, c / (n - 1), c)
                inc = inc | switch
                upd = later & inc
                skip = np.isinf(m) & (
                    (np.isinf(f) & ((m > 0) == (f > 0))) | (~np.isinf(f) & ~np.isnan(f))
                )
                upd = upd & ~skip
                cur = m + c
                nm, nc2 = kahan_inc(f / n - cur / n, m, c)
                m = np.where(upd, nm, m)
                c = np.where(upd, nc2, c)
            elif op in ("max", "min"):
                better = (v < f) if op == "max" else (v > f)
                v = np.where(first | (later & (better | np.isnan(v))), f, v)
            elif op in ("stddev", "stdvar"):
                v = np.where(first, np.where(np.isnan(f) | np.isinf(f), np.nan, 0.0), v)
                m = np.where(first, f, m)
                delta = f - m
                nm = m + delta / n
                v = np.where(later, v + delta * (f - nm), v)
                m = np.where(later, nm, m)
            val[gids], comp[gids], mean[gids], count[gids], incr[gids] = v, c, m, n, inc
            seen[gids] |= p
        if op == "sum":
            out = val + comp
        elif op == "avg":
            out = np.where(incr, mean + comp, (val + comp) / count)
        elif op == "count":
            out = count
        elif op == "group":
            out = np.ones((g, steps))
        elif op == "stdvar":
            out = val / count
        elif op == "stddev":
            out = np.sqrt(val / count)
        else:
            out = val
    return out, seen


def _group_drop(block: Block, grp: Grouping) -> Arr:
    """Whether each group's name is to be dropped: whether any of its rows' is."""
    if len(grp.keys) == 1:
        return np.array([block.drop.any()])
    return np.bincount(grp.group_of[block.drop], minlength=len(grp.keys)) > 0


def aggregate(
    op: str,
    block: Block,
    grouping: tuple[str, ...],
    without: bool,
    param: Arr | str | None,
    annos: Annotations,
    param_pos: str,
    instant: bool,
) -> Block:
    steps = block.values.shape[1]
    if op == "count_values":
        assert isinstance(param, str)
        return _count_values(block, param, grouping, without)
    if op in ("topk", "bottomk", "limitk", "limit_ratio"):
        assert isinstance(param, np.ndarray)
        grp = make_grouping(block.labels, grouping, without)
        groups = (len(grp.keys), grp.group_of)
        return select_k(op, block, groups, param, annos, param_pos, instant)
    if op == "quantile":
        assert isinstance(param, np.ndarray)
        bad = np.isnan(param) | (param < 0) | (param > 1)
        for q in np.unique(param[bad]).tolist() if bad.any() else []:
            annos.warn(
                f"PromQL warning: quantile value should be between 0 and 1, got {go_g(q)}"
                + param_pos
            )
    if len(block) == 0:
        return Block.empty(steps)
    grp = make_grouping(block.labels, grouping, without)
    if op == "quantile":
        assert isinstance(param, np.ndarray)
        out = np.full((len(grp.keys), steps), np.nan)
        seen = np.zeros((len(grp.keys), steps), dtype=bool)
        if len(grp.keys) == 1:  # the whole block: no copy of it
            out[0], seen[0] = quantile_steps(param, block.values, block.present)
        else:
            for g in range(len(grp.keys)):
                checkpoint()
                rows = np.flatnonzero(grp.group_of == g)
                vals, pres = block.values[rows], block.present[rows]
                out[g], seen[g] = quantile_steps(param, vals, pres)
    else:
        out, seen = _simple(op, block, grp)
    return Block(list(grp.keys), out, seen, _group_drop(block, grp)).compact()


def _count_values(block: Block, label: str, grouping: tuple[str, ...], without: bool) -> Block:
    if not valid_label_name(label):
        raise ExecutionError(f'invalid label name "{label}"')
    steps = block.values.shape[1]
    index: dict[Labels, int] = {}
    counts: list[Arr] = []
    keys: list[Labels] = []
    rows, cols = np.nonzero(block.present)
    for r, s in zip(rows.tolist(), cols.tolist(), strict=True):
        lab = dict(block.labels[r])
        lab[label] = format_value(float(block.values[r, s]))
        key = group_labels(make_labels(lab), grouping if without else (*grouping, label), without)
        g = index.get(key)
        if g is None:
            g = index[key] = len(keys)
            keys.append(key)
            counts.append(np.zeros(steps))
        counts[g][s] += 1
    if not keys:
        return Block.empty(steps)
    vals = np.array(counts)
    return Block(keys, vals, vals > 0, np.zeros(len(keys), dtype=bool))
