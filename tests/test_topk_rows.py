"""topk/bottomk's partition path (``top_rows``) chooses and orders as the sort does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.query import ranked
from agent.query.aggregation import make_grouping
from agent.query.blocks import Block
from agent.query.values import Annotations

VALUES = st.sampled_from([0.0, -0.0, 1.0, 2.0, -3.5, np.inf, -np.inf, np.nan, 7.0, 1e300])


def _run(op: str, block: Block, k: float, instant: bool, grouping: tuple[str, ...]) -> Block:
    steps = block.values.shape[1]
    grp = make_grouping(block.labels, grouping, False)
    groups = (len(grp.keys), grp.group_of)
    return ranked.select_k(op, block, groups, np.full(steps, k), Annotations(), "", instant)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(32, 90),
    steps=st.integers(1, 4),
    k=st.integers(0, 45),
    op=st.sampled_from(["topk", "bottomk"]),
    grouped=st.booleans(),
    dense=st.booleans(),
)
def test_partition_path_equals_the_sort(
    data: st.DataObject, n: int, steps: int, k: int, op: str, grouped: bool, dense: bool
) -> None:
    """``dense``: every row has a number at every step (the path without masks)."""
    values = VALUES.filter(lambda x: not np.isnan(x)) if dense else VALUES
    vals = np.array(
        data.draw(st.lists(values, min_size=n * steps, max_size=n * steps)), dtype=np.float64
    ).reshape(n, steps)
    pres = np.array(
        data.draw(st.lists(st.booleans(), min_size=n * steps, max_size=n * steps))
    ).reshape(n, steps)
    if dense:
        pres[:] = True
    labels = [(("g", str(i % 2 if grouped else 0)), ("i", f"{i:03d}")) for i in range(n)]
    block = Block(labels, vals, pres, np.zeros(n, dtype=bool))
    grouping = ("g",) if grouped else ()
    for instant in (True, False) if steps == 1 else (False,):
        fast = _run(op, block, k, instant, grouping)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(ranked, "top_rows", lambda *a: None)
            slow = _run(op, block, k, instant, grouping)
        assert fast.labels == slow.labels
        assert np.array_equal(fast.present, slow.present)
        assert np.array_equal(fast.values[fast.present], slow.values[slow.present], equal_nan=True)


@pytest.mark.parametrize("op", ["topk", "bottomk"])
def test_partition_path_is_taken(op: str) -> None:
    rng = np.random.default_rng(3)
    vals = rng.random((500, 16))
    pres = np.ones((500, 16), dtype=bool)
    chosen = ranked.top_rows(op, vals, pres, np.full(16, 5))
    assert chosen is not None and (chosen.sum(axis=0) == 5).all()
    pick = np.argsort(-vals if op == "topk" else vals, axis=0, kind="stable")[:5]
    want = np.zeros_like(pres)
    np.put_along_axis(want, pick, True, axis=0)
    assert np.array_equal(chosen, want)
