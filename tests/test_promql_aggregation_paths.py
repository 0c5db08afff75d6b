"""The two aggregation paths agree bit for bit.

Groups larger than ``BIG_GROUP`` are summed with array operations along the
member axis (``kahan_sum_members``) instead of the k-th-member walk that
mirrors Prometheus's loop; the conformance files hardly have such groups, so
these tests feed both paths the same random blocks, special values included
(NaN, +-Inf, -0.0, huge magnitudes that overflow, absent members), and demand
identical bits.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.query import aggregation
from agent.query.aggregation import BIG_GROUP, Grouping, _simple_mixed, _simple_walk
from agent.query.blocks import Block

OPS = ["sum", "avg", "count", "group", "max", "min"]
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, -1e308, 1e-300, 3.0])


def random_block(rng: np.random.Generator, rows: int, steps: int, special: float) -> Block:
    values = rng.normal(0, 1e6, (rows, steps)) * rng.choice([1e-9, 1.0, 1e9], (rows, steps))
    pick = rng.random((rows, steps)) < special
    values[pick] = rng.choice(SPECIAL, int(pick.sum()))
    present = rng.random((rows, steps)) < 0.8
    labels = [(("i", str(i)),) for i in range(rows)]
    return Block(labels, values, present, np.zeros(rows, dtype=bool))


def bits(a: np.ndarray) -> list[int]:
    """Bit patterns, with every NaN as one (their sign and payload never reach a result)."""
    a = np.where(np.isnan(a), np.nan, np.ascontiguousarray(a, dtype=np.float64))
    return a.view(np.uint64).tolist()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("special", [0.0, 0.05, 0.5])
def test_big_groups_match_the_walk(op: str, special: float) -> None:
    rng = np.random.default_rng(hash((op, special)) % 2**32)
    for _ in range(5):
        rows, steps = int(rng.integers(2 * BIG_GROUP, 400)), int(rng.integers(1, 12))
        block = random_block(rng, rows, steps, special)
        # One big group, a few small ones, interleaved rows.
        group_of = np.where(rng.random(rows) < 0.7, 0, rng.integers(1, 4, rows))
        grp = Grouping([(("g", str(g)),) for g in range(4)], group_of.astype(np.int64))
        sizes = np.bincount(grp.group_of, minlength=4)
        assert sizes.max() > BIG_GROUP
        want_v, want_seen = _simple_walk(op, block, grp)
        got_v, got_seen = _simple_mixed(op, block, grp, sizes)
        assert (got_seen == want_seen).all()
        assert bits(np.where(want_seen, got_v, 0)) == bits(np.where(want_seen, want_v, 0))


def test_negative_zero_sum_and_first_zero_wins() -> None:
    n = BIG_GROUP + 5
    values = np.full((n, 2), -0.0)
    values[3, 1] = 0.0
    block = Block(
        [(("i", str(i)),) for i in range(n)], values, np.ones((n, 2), bool), np.zeros(n, bool)
    )
    grp = Grouping([()], np.zeros(n, dtype=np.int64))
    sizes = np.array([n])
    for op in ("sum", "max", "min"):
        want, _ = _simple_walk(op, block, grp)
        got, _ = _simple_mixed(op, block, grp, sizes)
        assert bits(got) == bits(want), op
    assert aggregation.kahan_sum_members(values, np.ones((n, 2), bool)).tolist() == [0.0, 0.0]
