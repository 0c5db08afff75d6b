"""Anomaly detection without hand-set thresholds: rolling z-score, rolling MAD, seasonal.

Every method answers the same question for each sample: what value was
expected from the samples *before* it, and how far off is this one, in units
of the usual spread? The answer is a score ``(value - expected) / scale``; a
sample is anomalous when ``|score| > threshold``, and the band
``expected ± threshold * scale`` is what a dashboard draws around the line.

* ``zscore``: mean and standard deviation of the previous ``window`` samples.
  Cheap (cumulative sums, O(n)) and well understood, but one spike inflates
  the deviation for a whole window, hiding the anomalies right after it.
* ``mad``: median and median absolute deviation (scaled by 1.4826 so that it
  estimates the standard deviation of normal noise) of the previous
  ``window`` samples. Robust: outliers in the window barely move either.
* ``seasonal``: the median of the values at the same local time in the
  previous ``seasons`` periods (yesterday, the day before, ... for a daily
  period) is the expectation, and the spread is the rolling MAD of the
  residuals against it. "Same local time yesterday" follows the calendar of
  ``tz``: across a DST change it is 23 or 25 hours back, so a daily pattern
  driven by people's working hours stays aligned.

Windows count samples (a duration is turned into a count at the series'
median sampling interval), and the sample being scored is never part of its
own baseline, so a lone spike scores as high as it looks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.model import Labels, Matcher
from agent.query import ast
from agent.query.errors import BadDataError
from agent.query.parser import parse, parse_duration_ms
from agent.query.timezone import DAY_MS

if TYPE_CHECKING:
    from agent.query.service import QueryService, TimeLike
    from agent.storage import Store

Method = Literal["zscore", "mad", "seasonal"]
METHODS: tuple[str, ...] = ("zscore", "mad", "seasonal")
MAD_SCALE = 1.4826  # 1 / Phi^-1(3/4): MAD of normal noise times this estimates its sigma
MEAN_AD_SCALE = math.sqrt(math.pi / 2)  # mean absolute deviation -> sigma, when the MAD is 0
DEFAULT_WINDOW_SAMPLES = 60
DEFAULT_PERIOD_MS = DAY_MS
DEFAULT_SEASONS = 3
_BUCKET_MS = 15 * 60_000  # zone offsets change only on quarter hours in every IANA zone
_CHUNK_CELLS = 2_000_000  # rows x window of one sliding-median chunk (bounded memory)

WindowLike = int | float | str | timedelta | None


@dataclass
class Scored:
    """Per-sample results of one series; NaN where no baseline exists yet."""

    timestamps: np.ndarray  # int64 ms
    values: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray
    is_anomaly: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.timestamps.size)

    def take(self, mask: np.ndarray) -> Scored:
        return Scored(
            self.timestamps[mask],
            self.values[mask],
            self.expected[mask],
            self.lower[mask],
            self.upper[mask],
            self.score[mask],
            self.is_anomaly[mask],
        )


@dataclass
class AnomalySeries:
    """One series' scored samples, as :func:`detect_anomalies` returns them."""

    labels: Labels
    method: str
    threshold: float
    scored: Scored
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def anomalies(self) -> Scored:
        return self.scored.take(self.scored.is_anomaly)

    def to_json(self, *, only_anomalies: bool = False) -> dict[str, Any]:
        """The HTTP API's object: times in Unix seconds, NaN as ``null``."""
        s = self.anomalies if only_anomalies else self.scored
        cols = [
            (s.timestamps / 1000.0).tolist(),
            _nullable(s.values),
            _nullable(s.expected),
            _nullable(s.lower),
            _nullable(s.upper),
            _nullable(s.score),
            s.is_anomaly.tolist(),
        ]
        keys = ("timestamp", "value", "expected", "lower", "upper", "score", "is_anomaly")
        return {
            "metric": dict(self.labels),
            "method": self.method,
            "threshold": self.threshold,
            "params": self.params,
            "anomalies": int(self.scored.is_anomaly.sum()),
            "points": [dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True)],
        }


def _nullable(a: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(x) else x for x in a.tolist()]


# --- rolling baselines ----------------------------------------------------------------------


def _trailing_counts(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index and size of each sample's baseline: the ``window`` samples before it."""
    idx = np.arange(n)
    lo = np.maximum(idx - window, 0)
    return lo, idx - lo


def rolling_mean_std(
    values: np.ndarray, window: int, min_periods: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of the ``window`` values before each one.

    Cumulative sums of the values (centred on their median first, which keeps
    the subtraction of two large sums from eating the digits of a small
    variance) give every window in O(n).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    centre = float(np.median(v))
    x = v - centre
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))
    lo, cnt = _trailing_counts(n, window)
    hi = np.arange(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (s1[hi] - s1[lo]) / cnt
        var = ((s2[hi] - s2[lo]) - cnt * mean * mean) / (cnt - 1)
    var = np.maximum(var, 0.0)
    ok = cnt >= max(min_periods, 2)
    mean = np.where(ok, mean + centre, np.nan)
    std = np.where(ok, np.sqrt(var), np.nan)
    return mean, std


def rolling_median_mad(
    values: np.ndarray, window: int, min_periods: int
) -> tuple[np.ndarray, np.ndarray]:
    """Median and scaled MAD (a sigma estimate) of the ``window`` values before each one.

    Full windows come from :func:`sliding_window_view` in chunks of rows (so
    memory stays bounded); only the first ``window`` samples, whose baseline
    is shorter, are computed one by one. A window whose MAD is 0 (values
    quantised to a few levels) falls back to the scaled mean absolute
    deviation, so a flat-but-not-constant series still gets a finite scale.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    if n == 0:
        return med, mad
    window = max(int(window), 1)
    first = min(window, n)
    for i in range(max(min_periods, 1), first):
        w = v[:i]
        m = float(np.median(w))
        dev = np.abs(w - m)
        med[i] = m
        mad[i] = _scale_of(float(np.median(dev)), float(dev.mean()))
    if n > window:
        views = sliding_window_view(v[:-1], window)  # row j = v[j : j + window], for j + window
        step = max(1, _CHUNK_CELLS // window)
        for a in range(0, views.shape[0], step):
            rows = views[a : a + step]
            mid = np.median(rows, axis=1)
            dev = np.abs(rows - mid[:, None])
            raw = np.median(dev, axis=1)
            fallback = dev.mean(axis=1) * MEAN_AD_SCALE
            out = slice(a + window, a + window + rows.shape[0])
            med[out] = mid
            mad[out] = np.where(raw > 0, raw * MAD_SCALE, fallback)
    return med, mad


def _scale_of(raw_mad: float, mean_ad: float) -> float:
    return raw_mad * MAD_SCALE if raw_mad > 0 else mean_ad * MEAN_AD_SCALE


# --- seasonal references ----------------------------------------------------------------------


def utc_offsets_ms(t: np.ndarray, tz: tzinfo) -> np.ndarray:
    """The zone's UTC offset (ms) at each instant, one zoneinfo call per quarter hour.

    Offsets change only at transitions, which fall on quarter hours in every
    IANA zone, so evaluating one instant per 15-minute bucket is exact.
    """
    t = np.asarray(t, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    from agent.query.timezone import from_ms

    buckets = np.floor_divide(t, _BUCKET_MS)
    uniq, inverse = np.unique(buckets, return_inverse=True)
    offs = np.array(
        [
            int(
                (from_ms(int(b) * _BUCKET_MS, tz).utcoffset() or timedelta())
                // timedelta(milliseconds=1)
            )
            for b in uniq.tolist()
        ],
        dtype=np.int64,
    )
    return offs[inverse.reshape(-1)]


def shift_back(t: np.ndarray, period_ms: int, k: int, tz: tzinfo | None) -> np.ndarray:
    """The instants ``k`` periods before ``t``, by the local calendar for whole-day periods.

    With a zone and a period of whole days, "one day before 10:00" is 10:00
    local time the day before, whatever DST did in between (23 or 25 hours);
    a local time skipped by a spring-forward change maps to the instant after
    the gap. Other periods are plain arithmetic.
    """
    t = np.asarray(t, dtype=np.int64)
    back = k * period_ms
    if tz is None or period_ms % DAY_MS:
        return t - back
    local = t + utc_offsets_ms(t, tz)
    wanted = local - back
    u0 = wanted - utc_offsets_ms(t, tz)
    off0 = utc_offsets_ms(u0, tz)
    u1 = wanted - off0
    off1 = utc_offsets_ms(u1, tz)
    # u1 is exact when its own offset confirms it; otherwise the local time
    # does not exist (spring forward) and u1, read with the earlier offset, is taken.
    return np.where(off1 == off0, u1, np.maximum(u0, u1))


def seasonal_reference(
    t: np.ndarray,
    v: np.ndarray,
    period_ms: int,
    seasons: int,
    tz: tzinfo | None,
    tolerance_ms: int,
) -> np.ndarray:
    """Median of the values at the same (local) time in each of the previous ``seasons``.

    A previous season counts only when a sample lies within ``tolerance_ms``
    of the reference instant (the nearest one is taken); NaN where none does.
    """
    n = t.size
    refs = np.full((seasons, n), np.nan)
    if n == 0:
        return np.zeros(0)
    for k in range(1, seasons + 1):
        want = shift_back(t, period_ms, k, tz)
        right = np.clip(np.searchsorted(t, want), 0, n - 1)
        left = np.clip(right - 1, 0, n - 1)
        pick = np.where(np.abs(t[left] - want) <= np.abs(t[right] - want), left, right)
        close = np.abs(t[pick] - want) <= tolerance_ms
        refs[k - 1] = np.where(close, v[pick], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no history yet
        return np.nanmedian(refs, axis=0)


# --- scoring ------------------------------------------------------------------------------------


def _finish(
    t: np.ndarray, v: np.ndarray, expected: np.ndarray, scale: np.ndarray, threshold: float
) -> Scored:
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = v - expected
        score = np.where(scale > 0, diff / scale, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    score = np.where(np.isfinite(expected), score, np.nan)
    band = threshold * scale
    is_anomaly = np.abs(np.nan_to_num(score, nan=0.0)) > threshold
    return Scored(t, v, expected, expected - band, expected + band, score, is_anomaly)


def median_interval_ms(t: np.ndarray) -> int:
    if t.size < 2:
        return 0
    return max(int(np.median(np.diff(t))), 1)


def window_samples(window: WindowLike, interval_ms: int) -> int:
    """A window as a sample count: ints are counts, durations divide by the interval."""
    if window is None:
        return DEFAULT_WINDOW_SAMPLES
    if isinstance(window, int) and not isinstance(window, bool):
        if window < 2:
            raise BadDataError("window must be at least 2 samples")
        return window
    ms = duration_ms(window, "window")
    return max(2, round(ms / interval_ms)) if interval_ms > 0 else DEFAULT_WINDOW_SAMPLES


def duration_ms(value: float | str | timedelta, what: str) -> int:
    """Durations as PromQL text (``5m``), float seconds or a timedelta, in ms."""
    if isinstance(value, timedelta):
        ms = round(value.total_seconds() * 1000)
    elif isinstance(value, str):
        try:
            ms = round(float(value) * 1000)
        except ValueError:
            ms = parse_duration_ms(value)
    else:
        ms = round(float(value) * 1000)
    if ms <= 0:
        raise BadDataError(f"{what} must be a positive duration")
    return ms


def score_series(
    timestamps: np.ndarray,
    values: np.ndarray,
    *,
    method: str = "zscore",
    threshold: float = 3.0,
    window: WindowLike = None,
    period: float | str | timedelta = DEFAULT_PERIOD_MS / 1000,
    seasons: int = DEFAULT_SEASONS,
    tz: tzinfo | None = None,
    min_periods: int | None = None,
) -> Scored:
    """Score every finite sample of one series (the pure, storage-free core).

    ``period`` (seconds, a duration string or a timedelta) and ``seasons`` are
    for ``seasonal``, whose ``window`` is the span of residuals its spread is
    taken from. Non-finite samples (staleness markers) are left out.
    """
    if method not in METHODS:
        raise BadDataError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not threshold > 0 or not math.isfinite(threshold):
        raise BadDataError("threshold must be a positive number")
    t = np.asarray(timestamps, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    interval = median_interval_ms(t)
    w = window_samples(window, interval)
    mp = min_periods if min_periods is not None else min(w, max(5, w // 4))
    if method == "zscore":
        expected, scale = rolling_mean_std(v, w, mp)
        return _finish(t, v, expected, scale, threshold)
    if method == "mad":
        expected, scale = rolling_median_mad(v, w, mp)
        return _finish(t, v, expected, scale, threshold)
    if seasons < 1:
        raise BadDataError("seasons must be at least 1")
    period_ms = duration_ms(period, "period")
    tolerance = max(interval // 2, 1) if interval else 1
    base = seasonal_reference(t, v, period_ms, seasons, tz, tolerance)
    resid = v - base
    have = np.flatnonzero(np.isfinite(resid))
    expected = np.full(v.size, np.nan)
    scale = np.full(v.size, np.nan)
    if have.size:
        r_med, r_scale = rolling_median_mad(resid[have], w, mp)
        expected[have] = base[have] + r_med
        scale[have] = r_scale
    return _finish(t, v, expected, scale, threshold)


def history_ms(
    method: str, window: WindowLike, interval_ms: int, period_ms: int, seasons: int
) -> int:
    """How far before ``start`` to read so the first scored sample has a full baseline."""
    w = window_samples(window, interval_ms) if interval_ms else DEFAULT_WINDOW_SAMPLES
    span = (w + 1) * max(interval_ms, 1)
    if method == "seasonal":
        # + one day: a calendar day can be 25 hours long
        span += seasons * period_ms + (DAY_MS if period_ms % DAY_MS == 0 else 0)
    return span


# --- the store-facing API -----------------------------------------------------------------------


def selector_matchers(selector: str | Sequence[Matcher]) -> list[Matcher]:
    if isinstance(selector, str):
        node = ast.unwrap(parse(selector))
        if not isinstance(node, ast.VectorSelector):
            raise BadDataError(f"not a series selector: {selector!r}")
        return list(node.matchers)
    return list(selector)


async def detect_anomalies(
    store: Store,
    selector_or_series: str | int | Sequence[Matcher],
    start: TimeLike,
    end: TimeLike,
    *,
    method: str = "zscore",
    threshold: float = 3.0,
    window: WindowLike = None,
    period: float | str | timedelta = "1d",
    seasons: int = DEFAULT_SEASONS,
    tz: str | tzinfo | None = None,
    limit: int = 0,
    queries: QueryService | None = None,
) -> list[AnomalySeries]:
    """Score every sample in [start, end] of the selected series; one result per series.

    ``selector_or_series``: a PromQL selector (``'cpu{host="a"}'``), a series
    id, or matchers. ``start``/``end`` as in ``Agent.query`` (aware datetimes,
    RFC 3339, Unix seconds). History before ``start`` is read as the baseline
    needs (a window, or ``seasons`` periods) but not scored. ``tz`` (default
    ``query.default_timezone``, else the machine's zone) sets the calendar of
    ``seasonal`` with whole-day periods. ``limit`` > 0 caps the series.
    ``queries`` (the agent's query service) supplies ``query.default_timezone``;
    without it the default is the machine's zone.
    """
    from agent.query.service import _rule, time_ms
    from agent.query.timezone import resolve_zone

    if isinstance(tz, tzinfo):
        zone = tz
    elif queries is not None:
        zone = queries.zone(tz)
    else:
        zone = resolve_zone(tz, None)
    rule = _rule("reject")
    start_ms, end_ms = time_ms(start, zone, rule), time_ms(end, zone, rule)
    if end_ms < start_ms:
        raise BadDataError("end timestamp must not be before start time")
    period_ms = duration_ms(period, "period")
    if method not in METHODS:
        raise BadDataError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    found = await _read(store, selector_or_series, start_ms, end_ms)
    if limit > 0:
        found = found[:limit]
    need = 0
    for _labels, t, _v in found:
        need = max(need, history_ms(method, window, median_interval_ms(t), period_ms, seasons))
    older: dict[Labels, tuple[np.ndarray, np.ndarray]] = {}
    if need and found:
        for labels, t, v in await _read(store, selector_or_series, start_ms - need, start_ms - 1):
            older[labels] = (t, v)
    out = []
    for labels, t, v in found:
        if labels in older:
            ot, ov = older[labels]
            t, v = np.concatenate([ot, t]), np.concatenate([ov, v])
        scored = score_series(
            t,
            v,
            method=method,
            threshold=threshold,
            window=window,
            period=period_ms / 1000,
            seasons=seasons,
            tz=zone if method == "seasonal" else None,
        )
        scored = scored.take(scored.timestamps >= start_ms)
        params: dict[str, Any] = {
            "window_samples": window_samples(window, median_interval_ms(t)),
        }
        if method == "seasonal":
            params |= {
                "period_seconds": period_ms / 1000,
                "seasons": seasons,
                "tz": getattr(zone, "key", str(zone)),
            }
        out.append(AnomalySeries(labels, method, float(threshold), scored, params))
    return out


async def _read(
    store: Store, target: str | int | Sequence[Matcher], start_ms: int, end_ms: int
) -> list[tuple[Labels, np.ndarray, np.ndarray]]:
    if isinstance(target, bool):
        raise TypeError("expected a selector, a series id or matchers")
    if isinstance(target, int):
        t, v = await store.read_series(target, start_ms, end_ms)
        return [(store.labels(target), t, v)] if t.size else []
    found = await store.select(selector_matchers(target), start_ms, end_ms)
    return [(s.labels, np.asarray(s.timestamps), np.asarray(s.values)) for s in found]
