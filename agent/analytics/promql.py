"""Anomaly scores as PromQL functions, for recording and alerting rules.

* ``zscore_over_time(v[w])``: how many standard deviations the newest sample
  in each window lies from the mean of the window's *other* samples.
* ``robust_zscore_over_time(v[w])``: the same against their median, in units
  of their scaled median absolute deviation (1.4826 x MAD), so earlier
  outliers in the window do not mask the next one.

The newest sample is left out of its own baseline for the reason
:mod:`agent.analytics.anomaly` gives: with it, a window of n samples could
never score above ``(n-1)/sqrt(n)``. Both need three samples in the window
(two for the baseline); a constant baseline gives 0 for an equal sample and
±Inf for any other, which ``abs(...) > 3`` treats as anomalous, as it should.

``abs(zscore_over_time(errors[30m])) > 3`` is what ``define_alert(...,
condition="anomaly")`` evaluates.
"""

from __future__ import annotations

import numpy as np

from agent.analytics.anomaly import MAD_SCALE, MEAN_AD_SCALE
from agent.query import extensions, rangefuncs
from agent.query.blocks import RangeData

MIN_SAMPLES = 3


def _last_and_baseline(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = (hi - lo) >= MIN_SAMPLES
    return ok, np.where(ok, hi - 1, lo)


def _ratio(diff: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, diff / scale, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))


def zscore_over_time(
    data: RangeData, lo: np.ndarray, hi: np.ndarray, ends: np.ndarray, scalars: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    ok, base_hi = _last_and_baseline(lo, hi)
    if len(data.v) == 0:
        return np.zeros(lo.shape), ok
    mean = rangefuncs.avg_over_time(data, lo, base_hi)
    n = (base_hi - lo).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = rangefuncs.variance_over_time(data, lo, base_hi) * n / (n - 1)
        std = np.sqrt(np.maximum(var, 0.0))
    last = data.v[np.where(ok, hi - 1, 0)]
    return _ratio(last - mean, std), ok


def robust_zscore_over_time(
    data: RangeData, lo: np.ndarray, hi: np.ndarray, ends: np.ndarray, scalars: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    ok, base_hi = _last_and_baseline(lo, hi)
    out = np.zeros(lo.shape)
    if len(data.v) == 0:
        return out, ok
    v = data.v
    for s, step in zip(*np.nonzero(ok), strict=True):
        a, b = int(lo[s, step]), int(base_hi[s, step])
        base = v[a:b]
        med = float(np.median(base))
        dev = np.abs(base - med)
        raw = float(np.median(dev))
        scale = raw * MAD_SCALE if raw > 0 else float(dev.mean()) * MEAN_AD_SCALE
        out[s, step] = float(_ratio(np.array(v[b] - med), np.array(scale)))
    return out, ok


FUNCTIONS: dict[str, extensions.RangeFunction] = {
    "zscore_over_time": extensions.RangeFunction(
        "zscore_over_time",
        zscore_over_time,
        doc="z-score of the newest sample against the rest of the window",
    ),
    "robust_zscore_over_time": extensions.RangeFunction(
        "robust_zscore_over_time",
        robust_zscore_over_time,
        doc="robust z-score (median, 1.4826 x MAD) of the newest sample against the window",
    ),
}


def ensure_registered() -> None:
    """Make the functions usable without the daemon (``Agent.query``, ``define_alert``)."""
    for fn in FUNCTIONS.values():
        if extensions.lookup(fn.name) is None:
            extensions.register(fn)
