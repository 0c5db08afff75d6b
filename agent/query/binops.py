"""Binary operators: arithmetic, comparison (with ``bool``) and set operators.

Vector matching is decided per series pair once (labels do not change between
steps); values and presence are then combined for all steps with numpy.  The
per-step rules of Prometheus — a duplicate on the "one" side is an error only
at a step where both duplicates and some left-hand sample exist — are checked
on the presence masks.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from agent.model import METRIC_NAME, Labels, format_labels
from agent.query import ast
from agent.query.blocks import Block, merge_same_labels
from agent.query.errors import ExecutionError

Arr = np.ndarray


def arith(op: str, a: Arr, b: Arr) -> Arr:
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return np.true_divide(a, b)
        if op == "%":
            return np.fmod(a, b)
        if op == "^":
            return np.power(a, b)
        if op == "atan2":
            return np.arctan2(a, b)
    raise ExecutionError(f"operator {op!r} not allowed")


def compare(op: str, a: Arr, b: Arr) -> Arr:
    with np.errstate(invalid="ignore"):
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == ">":
            return a > b
        if op == "<":
            return a < b
        if op == ">=":
            return a >= b
        if op == "<=":
            return a <= b
    raise ExecutionError(f"operator {op!r} not allowed")


def scalar_scalar(node: ast.Binary, a: Arr, b: Arr) -> Arr:
    if node.op in ast.COMPARISON_OPS:
        return compare(node.op, a, b).astype(np.float64)
    return arith(node.op, a, b)


def vector_scalar(node: ast.Binary, vec: Block, sc: Arr, scalar_left: bool, delayed: bool) -> Block:
    s = sc[None, :]
    a, b = (s, vec.values) if scalar_left else (vec.values, s)
    drop = vec.drop.copy()
    labels = vec.labels
    if node.op in ast.COMPARISON_OPS:
        keep = compare(node.op, a, b)
        if node.return_bool:
            values = keep.astype(np.float64)
            present = vec.present
            drop[:] = True
        else:
            values = vec.values
            present = vec.present & keep
    else:
        values = arith(node.op, a, b)
        present = vec.present
        drop[:] = True
    out = Block(labels, values, present, drop)
    if not delayed:
        out = Block(
            [_strip_name(lab) if d else lab for lab, d in zip(labels, drop, strict=True)],
            values,
            present,
            np.zeros_like(drop),
        )
        out = merge_same_labels(out.compact())
    return out


def _strip_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != METRIC_NAME)


def _signature(labels: Labels, on: bool, names: tuple[str, ...]) -> Labels:
    if on:
        keep = set(names)
        return tuple(p for p in labels if p[0] in keep)
    skip = set(names) | {METRIC_NAME}
    return tuple(p for p in labels if p[0] not in skip)


def _by_signature(block: Block, on: bool, names: tuple[str, ...]) -> dict[Labels, list[int]]:
    out: dict[Labels, list[int]] = defaultdict(list)
    for i, lab in enumerate(block.labels):
        out[_signature(lab, on, names)].append(i)
    return out


def set_op(node: ast.Binary, lhs: Block, rhs: Block) -> Block:
    steps = lhs.values.shape[1] if len(lhs) else rhs.values.shape[1]
    if node.op == "or":
        if len(lhs) == 0:
            return rhs
        if len(rhs) == 0:
            return lhs
        left_any = _any_by_sig(lhs, node, steps)
        present = rhs.present.copy()
        for i, lab in enumerate(rhs.labels):
            hit = left_any.get(_signature(lab, node.on, node.matching))
            if hit is not None:
                present[i] &= ~hit
        right = Block(rhs.labels, rhs.values, present, rhs.drop).compact()
        return Block(
            lhs.labels + right.labels,
            np.concatenate([lhs.values, right.values]),
            np.concatenate([lhs.present, right.present]),
            np.concatenate([lhs.drop, right.drop]),
        )
    right_any = _any_by_sig(rhs, node, steps)
    present = lhs.present.copy()
    for i, lab in enumerate(lhs.labels):
        hit = right_any.get(_signature(lab, node.on, node.matching))
        if node.op == "and":
            if hit is None:
                present[i] = False
            else:
                present[i] &= hit
        elif hit is not None:  # unless
            present[i] &= ~hit
    return Block(lhs.labels, lhs.values, present, lhs.drop).compact()


def _any_by_sig(block: Block, node: ast.Binary, steps: int) -> dict[Labels, Arr]:
    out: dict[Labels, Arr] = {}
    for sig, rows in _by_signature(block, node.on, node.matching).items():
        out[sig] = np.asarray(block.present[rows].any(axis=0))
    return out


def _result_labels(many: Labels, one: Labels, node: ast.Binary) -> Labels:
    lab = dict(many)
    if node.op in ast.ARITHMETIC_OPS:
        lab.pop(METRIC_NAME, None)
    if node.card == ast.Card.ONE_TO_ONE:
        if node.on:
            keep = set(node.matching)
            lab = {k: v for k, v in lab.items() if k in keep}
        else:
            for name in node.matching:
                lab.pop(name, None)
    one_d = dict(one)
    for name in node.include:
        if one_d.get(name, ""):
            lab[name] = one_d[name]
        else:
            lab.pop(name, None)
    return tuple(sorted(lab.items()))


def vector_vector(node: ast.Binary, lhs: Block, rhs: Block, delayed: bool) -> Block:
    steps = lhs.values.shape[1] if len(lhs) else rhs.values.shape[1]
    if len(lhs) == 0 or len(rhs) == 0:
        return Block.empty(steps)
    swapped = node.card == ast.Card.ONE_TO_MANY
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    many_any = many.present.any(axis=0)
    one_side = "left" if swapped else "right"
    one_sigs = _by_signature(one, node.on, node.matching)
    for sig, rows in one_sigs.items():
        if len(rows) < 2:
            continue
        pres = one.present[rows]
        clash = (pres.sum(axis=0) >= 2) & many_any
        if clash.any():
            s = int(np.flatnonzero(clash)[0])
            dup = sorted(one.labels[rows[k]] for k in np.flatnonzero(pres[:, s])[:2].tolist())
            raise ExecutionError(
                f"found duplicate series for the match group {format_labels(sig) or '{}'} "
                f"on the {one_side} hand-side of the operation: "
                f"[{_fmt(dup[0])}, {_fmt(dup[1])}]"
                ";many-to-many matching not allowed: matching labels must be unique on one side"
            )
    pairs_m: list[int] = []
    pairs_o: list[int] = []
    sigs: list[Labels] = []
    for i, lab in enumerate(many.labels):
        sig = _signature(lab, node.on, node.matching)
        for j in one_sigs.get(sig, ()):
            pairs_m.append(i)
            pairs_o.append(j)
            sigs.append(sig)
    if not pairs_m:
        return Block.empty(steps)
    pm, po = np.array(pairs_m), np.array(pairs_o)
    present = many.present[pm] & one.present[po]
    lv, rv = many.values[pm], one.values[po]
    if swapped:
        lv, rv = rv, lv
    matched = present
    if node.op in ast.COMPARISON_OPS:
        keep = compare(node.op, lv, rv)
        if node.return_bool:
            values = keep.astype(np.float64)
        else:
            values = lv
            present = present & keep
    else:
        values = arith(node.op, lv, rv)
    labels = [
        _result_labels(many.labels[i], one.labels[j], node)
        for i, j in zip(pairs_m, pairs_o, strict=True)
    ]
    # Matching must be unambiguous at every step.
    by_sig: dict[Labels, list[int]] = defaultdict(list)
    for k, sig in enumerate(sigs):
        by_sig[sig].append(k)
    for ks in by_sig.values():
        if len(ks) < 2:
            continue
        if node.card == ast.Card.ONE_TO_ONE:
            if (matched[ks].sum(axis=0) > 1).any():
                raise ExecutionError(
                    "multiple matches for labels: many-to-one matching must be explicit "
                    "(group_left/group_right)"
                )
        else:
            seen: dict[Labels, list[int]] = defaultdict(list)
            for k in ks:
                seen[labels[k]].append(k)
            for same in seen.values():
                if len(same) > 1 and (present[same].sum(axis=0) > 1).any():
                    raise ExecutionError(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                    )
    drop = np.full(len(labels), bool(node.return_bool))
    if node.return_bool and not delayed:
        labels = [_strip_name(lab) for lab in labels]
        drop[:] = False
    out = Block(labels, values, present, drop).compact()
    return merge_same_labels(out)


def _fmt(labels: Labels) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"
