"""Forecasts with prediction intervals: least-squares trend and additive Holt-Winters.

Both work on evenly spaced points (a range query's steps), which is what
makes a season a whole number of steps and the horizon a count of them.

* ``linear``: ordinary least squares over the lookback window. The interval
  is the textbook prediction interval of a regression, which widens with the
  distance from the centre of the data: ``t * s * sqrt(1 + 1/n + (x-x̄)²/Sxx)``.
* ``holt_winters``: additive level, trend and season, smoothing factors
  chosen by a small grid search on the one-step-ahead squared error (all
  grid points run at once, vectorised over the grid). The interval uses the
  variance of the one-step residuals grown with the horizon as for the
  equivalent ETS(A,A,A) model (Hyndman & Athanasopoulos, *Forecasting:
  Principles and Practice*, table 6.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from statistics import NormalDist
from typing import Any

import numpy as np

from agent.query.errors import BadDataError
from agent.query.numfmt import format_values
from agent.query.values import format_time

METHODS = ("linear", "holt_winters")
ALPHAS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
BETAS = (0.01, 0.05, 0.15, 0.3)
GAMMAS = (0.05, 0.1, 0.25, 0.5)


@dataclass
class Forecast:
    """Forecast points after the data, their interval, and the fitted model's parameters."""

    timestamps: np.ndarray  # int64 ms
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    model: dict[str, Any] = field(default_factory=dict)


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile via the Cornish-Fisher expansion around the normal one.

    Accurate to about 1e-3 for dof >= 5, which is plenty for an interval; it
    spares a SciPy dependency for one function.
    """
    z = NormalDist().inv_cdf(p)
    if dof <= 0:
        return math.inf
    n = float(dof)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / n + g2 / n**2 + g3 / n**3


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise BadDataError("level must be between 0 and 1 (e.g. 0.95)")


def linear_forecast(
    t_ms: np.ndarray, y: np.ndarray, future_ms: np.ndarray, *, level: float = 0.95
) -> Forecast:
    """Least-squares line through (t, y), extrapolated to ``future_ms``."""
    _check_level(level)
    x = (np.asarray(t_ms, dtype=np.int64) - int(t_ms[-1])) / 1000.0  # seconds, 0 at the end
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 3:
        raise BadDataError("a linear forecast needs at least 3 points")
    xbar, ybar = float(x.mean()), float(y.mean())
    sxx = float(((x - xbar) ** 2).sum())
    if sxx == 0:
        raise BadDataError("a linear forecast needs points at different times")
    slope = float(((x - xbar) * (y - ybar)).sum() / sxx)
    intercept = ybar - slope * xbar
    resid = y - (intercept + slope * x)
    s = math.sqrt(float((resid**2).sum()) / (n - 2))
    xf = (np.asarray(future_ms, dtype=np.int64) - int(t_ms[-1])) / 1000.0
    mean = intercept + slope * xf
    half = t_quantile((1 + level) / 2, n - 2) * s * np.sqrt(1 + 1 / n + (xf - xbar) ** 2 / sxx)
    return Forecast(
        np.asarray(future_ms, dtype=np.int64),
        mean,
        mean - half,
        mean + half,
        level,
        {"slope_per_second": slope, "intercept": intercept, "residual_std": s, "points": n},
    )


def _hw_run(
    y: np.ndarray, m: int, alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run additive Holt-Winters for every parameter triple at once.

    Returns the final level, trend, the last ``m`` seasonal terms (oldest
    first) per triple, and the one-step-ahead errors (``(k, n - m)``).
    """
    k = alpha.size
    first = y[:m].mean()
    slope = (y[m : 2 * m].mean() - first) / m
    # The first season's mean is the level at its centre; detrend it, so
    # neither the level nor the seasonal terms start off by half a season's trend.
    centre = (m - 1) / 2
    level = np.full(k, first + slope * centre)  # the level at step m - 1
    trend = np.full(k, slope)
    season = np.tile(y[:m] - (first + slope * (np.arange(m) - centre)), (k, 1))  # ring: i % m
    errors = np.empty((k, y.size - m))
    for i in range(m, y.size):
        s_old = season[:, i % m]
        pred = level + trend + s_old
        err = y[i] - pred
        errors[:, i - m] = err
        new_level = alpha * (y[i] - s_old) + (1 - alpha) * (level + trend)
        trend = beta * (new_level - level) + (1 - beta) * trend
        season[:, i % m] = gamma * (y[i] - new_level) + (1 - gamma) * s_old
        level = new_level
    order = [(y.size + j) % m for j in range(m)]  # oldest first: the next step uses order[0]
    return level, trend, season[:, order], errors


def holt_winters_forecast(
    t_ms: np.ndarray,
    y: np.ndarray,
    future_ms: np.ndarray,
    season_steps: int,
    *,
    level: float = 0.95,
    params: tuple[float, float, float] | None = None,
) -> Forecast:
    """Additive Holt-Winters with season ``season_steps`` points, extrapolated ``future_ms``.

    ``future_ms`` must continue the data's spacing (step h is the h-th point
    after the last one). ``params`` fixes (alpha, beta, gamma); otherwise the
    grid with the smallest one-step squared error wins.
    """
    _check_level(level)
    y = np.asarray(y, dtype=np.float64)
    m = int(season_steps)
    if m < 2:
        raise BadDataError("the season must span at least 2 steps")
    if y.size < 2 * m + 2:
        raise BadDataError(
            f"Holt-Winters needs at least two seasons of data ({2 * m + 2} points), has {y.size}"
        )
    grid = [params] if params is not None else list(product(ALPHAS, BETAS, GAMMAS))
    a, b, g = (np.array(col, dtype=np.float64) for col in zip(*grid, strict=True))
    lvl, trd, season, errors = _hw_run(y, m, a, b, g)
    # Score on the errors after the first season of updates, when the start-up settled.
    settle = min(m, errors.shape[1] // 2)
    sse = (errors[:, settle:] ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    resid = errors[best, settle:]
    sigma2 = float((resid**2).sum() / max(resid.size - 3, 1))
    alpha, beta, gamma = float(a[best]), float(b[best]), float(g[best])
    h = np.arange(1, np.asarray(future_ms).size + 1)
    mean = lvl[best] + h * trd[best] + season[best][(h - 1) % m]
    # ETS(A,A,A) variance: sigma^2 (1 + sum_{j<h} (a + a*b*j + (1-a)*g*[j mod m == 0])^2)
    j = np.arange(1, max(int(h[-1]) if h.size else 1, 1))
    c = alpha + alpha * beta * j + (1 - alpha) * gamma * (j % m == 0)
    cum = np.concatenate(([0.0], np.cumsum(c**2)))
    var = sigma2 * (1 + cum[h - 1])
    half = NormalDist().inv_cdf((1 + level) / 2) * np.sqrt(var)
    return Forecast(
        np.asarray(future_ms, dtype=np.int64),
        mean,
        mean - half,
        mean + half,
        level,
        {
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "season_steps": m,
            "level": float(lvl[best]),
            "trend_per_step": float(trd[best]),
            "residual_std": math.sqrt(sigma2),
            "points": int(y.size),
        },
    )


def future_steps(last_ms: int, step_ms: int, horizon_ms: int) -> np.ndarray:
    count = horizon_ms // step_ms
    if count < 1:
        raise BadDataError("horizon must be at least one step")
    return last_ms + step_ms * np.arange(1, count + 1, dtype=np.int64)


def regularise(t_ms: np.ndarray, y: np.ndarray, step_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill missing steps of a range-query result by linear interpolation.

    Range results skip steps where a series had no sample; Holt-Winters
    counts seasons in steps, so a gap would shift every season after it.
    """
    t = np.asarray(t_ms, dtype=np.int64)
    full = np.arange(int(t[0]), int(t[-1]) + 1, step_ms, dtype=np.int64)
    if full.size == t.size:
        return t, np.asarray(y, dtype=np.float64)
    return full, np.interp(full, t, y)


def forecast_series(
    t_ms: np.ndarray,
    y: np.ndarray,
    *,
    step_ms: int,
    horizon_ms: int,
    method: str = "linear",
    season_ms: int | None = None,
    level: float = 0.95,
) -> Forecast:
    """Forecast one evenly stepped series ``horizon_ms`` past its last point."""
    if method not in METHODS:
        raise BadDataError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    keep = np.isfinite(np.asarray(y, dtype=np.float64))
    t, v = np.asarray(t_ms, dtype=np.int64)[keep], np.asarray(y, dtype=np.float64)[keep]
    if t.size == 0:
        raise BadDataError("no finite points to forecast from")
    t, v = regularise(t, v, step_ms)
    future = future_steps(int(t[-1]), step_ms, horizon_ms)
    if method == "linear":
        return linear_forecast(t, v, future, level=level)
    if not season_ms:
        raise BadDataError("holt_winters needs a season (e.g. season=1d)")
    if season_ms % step_ms:
        raise BadDataError("the season must be a whole number of steps")
    return holt_winters_forecast(t, v, future, season_ms // step_ms, level=level)


# --- over a query -------------------------------------------------------------------------------


@dataclass
class SeriesForecast:
    labels: dict[str, str]
    forecast: Forecast


@dataclass
class ForecastResult:
    series: list[SeriesForecast]
    warnings: list[str]
    step_ms: int
    lookback_ms: int
    horizon_ms: int
    method: str

    def to_json(self) -> dict[str, Any]:
        """A Prometheus-style matrix of forecast points, with ``lower``/``upper`` beside them."""

        def pairs(ts: np.ndarray, vs: np.ndarray) -> list[list[Any]]:
            return [
                [format_time(t), v] for t, v in zip(ts.tolist(), format_values(vs), strict=True)
            ]

        return {
            "resultType": "matrix",
            "method": self.method,
            "level": self.series[0].forecast.level if self.series else None,
            "step": self.step_ms / 1000,
            "lookback": self.lookback_ms / 1000,
            "horizon": self.horizon_ms / 1000,
            "result": [
                {
                    "metric": s.labels,
                    "values": pairs(s.forecast.timestamps, s.forecast.mean),
                    "lower": pairs(s.forecast.timestamps, s.forecast.lower),
                    "upper": pairs(s.forecast.timestamps, s.forecast.upper),
                    "model": s.forecast.model,
                }
                for s in self.series
            ],
        }


def default_steps(
    method: str, horizon_ms: int, season_ms: int | None, lookback_ms: int | None
) -> tuple[int, int]:
    """(step, lookback) when the caller gave none: ~48 steps a season, 3 seasons back
    for Holt-Winters; four horizons back (at least an hour) and ~240 steps for a line."""
    if method == "holt_winters" and season_ms:
        step = season_ms // 48 if season_ms % 48 == 0 else season_ms // 2
        return max(step, 1), lookback_ms or 3 * season_ms
    lookback = lookback_ms or max(4 * horizon_ms, 3_600_000)
    return max(1000, lookback // 240 // 1000 * 1000), lookback


async def forecast_query(
    queries: Any,
    query: str,
    *,
    horizon_ms: int,
    method: str = "linear",
    season_ms: int | None = None,
    step_ms: int | None = None,
    lookback_ms: int | None = None,
    level: float = 0.95,
    end_ms: int,
) -> ForecastResult:
    """Forecast every series of ``query``'s range result over [end - lookback, end].

    ``queries`` is the store's :class:`~agent.query.service.QueryService`, so
    the query runs with the same limits, timeout and cache as ``query_range``.
    A series that cannot be forecast (too few points) becomes a warning.
    """
    from agent.query.values import Matrix

    if method not in METHODS:
        raise BadDataError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    _check_level(level)
    if horizon_ms <= 0:
        raise BadDataError("horizon must be a positive duration")
    if method == "holt_winters" and not season_ms:
        raise BadDataError("holt_winters needs a season (e.g. season=1d)")
    default_step, lookback = default_steps(method, horizon_ms, season_ms, lookback_ms)
    step = step_ms or default_step
    if season_ms and method == "holt_winters" and season_ms % step:
        raise BadDataError("the season must be a whole number of steps")
    answer = await queries.range(query, end_ms - lookback, end_ms, step)
    result = answer.result
    if not isinstance(result, Matrix):
        raise BadDataError("the query must return an instant vector or a scalar")
    out, warnings = [], list(result.annotations.warnings)
    for s in result.series:
        labels = dict(s.labels)
        try:
            fc = forecast_series(
                np.asarray(s.timestamps),
                np.asarray(s.values),
                step_ms=step,
                horizon_ms=horizon_ms,
                method=method,
                season_ms=season_ms,
                level=level,
            )
        except BadDataError as exc:
            warnings.append(f"series {labels}: {exc}")
            continue
        out.append(SeriesForecast(labels, fc))
    return ForecastResult(out, warnings, step, lookback, horizon_ms, method)
