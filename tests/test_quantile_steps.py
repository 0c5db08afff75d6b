"""``quantile`` over all steps at once (``quantile_steps``) equals the per-step function."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.query.rangefuncs import quantile_values
from agent.query.ranked import quantile_steps

VALUES = st.sampled_from([0.0, 1.0, 2.0, -3.5, 2.0, np.inf, -np.inf, np.nan, 7.0, 1e300, -1e300])
QS = st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 1.0, -0.5, 1.5, np.nan, 1 / 3])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), steps=st.integers(1, 6))
def test_quantile_steps_equals_quantile_values(data: st.DataObject, n: int, steps: int) -> None:
    vals = np.array(
        data.draw(st.lists(VALUES, min_size=n * steps, max_size=n * steps)), dtype=np.float64
    ).reshape(n, steps)
    pres = np.array(
        data.draw(st.lists(st.booleans(), min_size=n * steps, max_size=n * steps))
    ).reshape(n, steps)
    qs = np.array(data.draw(st.lists(QS, min_size=steps, max_size=steps)), dtype=np.float64)
    out, seen = quantile_steps(qs, vals, pres)
    for s in range(steps):
        assert seen[s] == pres[:, s].any()
        if seen[s]:
            with np.errstate(invalid="ignore"):
                want = quantile_values(float(qs[s]), vals[pres[:, s], s])
            np.testing.assert_array_equal(out[s], want)  # NaN equals NaN here
        else:
            assert np.isnan(out[s])


def test_quantile_steps_interpolates_between_ranks() -> None:
    vals = np.array([[1.0, 10.0], [3.0, np.nan], [2.0, 30.0], [4.0, 20.0]])
    pres = np.array([[True, True], [True, True], [True, False], [False, True]])
    out, seen = quantile_steps(np.array([0.75, 0.5]), vals, pres)
    assert seen.tolist() == [True, True]
    # step 0: 1, 2, 3 -> rank 1.5 -> 2.5; step 1: NaN, 10, 20 -> rank 1 -> 10
    assert out.tolist() == [2.5, 10.0]


def test_quantile_steps_dense_equals_quantile_values() -> None:
    """Every row present and no NaN: the path without masks (ties and infinities included)."""
    rng = np.random.default_rng(7)
    for n, steps in ((1, 1), (2, 3), (500, 1), (500, 16), (33, 5)):
        vals = rng.choice([0.0, 1.5, -2.0, np.inf, -np.inf, 1e300], size=(n, steps))
        vals[:, ::2] = rng.random((n, len(range(0, steps, 2))))
        qs = rng.choice([0.0, 0.25, 0.5, 0.9, 1.0, 1 / 3], size=steps)
        out, seen = quantile_steps(qs, vals, np.ones((n, steps), dtype=bool))
        assert seen.all()
        with np.errstate(invalid="ignore"):
            want = [quantile_values(float(qs[s]), vals[:, s]) for s in range(steps)]
        np.testing.assert_array_equal(out, want)
