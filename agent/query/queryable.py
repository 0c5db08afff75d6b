"""The storage interface the engine reads from, and an in-memory implementation.

:class:`agent.storage.store.Store` satisfies :class:`Queryable` as it is; the
in-memory :class:`MemoryQueryable` serves the engine's tests and the PromQL
conformance runner, which load small hand-written data sets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.model import Labels, Matcher, make_labels

if TYPE_CHECKING:
    from agent.storage.rollup import SeriesBuckets


class SeriesLike(Protocol):
    """What the engine needs from one selected series."""

    @property
    def labels(self) -> Labels: ...

    @property
    def timestamps(self) -> np.ndarray: ...

    @property
    def values(self) -> np.ndarray: ...


class SelectedArraysLike(Protocol):
    """Many series concatenated: series ``i`` owns ``t[offsets[i]:offsets[i+1]]``."""

    @property
    def labels(self) -> Sequence[Labels]: ...

    @property
    def offsets(self) -> np.ndarray: ...

    @property
    def t(self) -> np.ndarray: ...

    @property
    def v(self) -> np.ndarray: ...


# Optional ``select_arrays(matchers, start_ms, end_ms)`` of a Queryable: the same
# series as ``select`` (label order, each with samples), concatenated, so the engine
# builds its range data without a Python step per series.  Used when present.
BulkSelect = Callable[[list[Matcher], int, int], Awaitable[SelectedArraysLike]]


class Queryable(Protocol):
    async def select(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> Sequence[SeriesLike]:
        """Samples with ``start_ms <= t <= end_ms`` of every matching series that has any."""
        ...


@dataclass
class MemorySeries:
    labels: Labels
    timestamps: np.ndarray
    values: np.ndarray


@dataclass
class MemoryArrays:
    labels: list[Labels]
    offsets: np.ndarray
    t: np.ndarray
    v: np.ndarray


def concatenate(found: Sequence[SeriesLike]) -> MemoryArrays:
    offsets = np.zeros(len(found) + 1, dtype=np.int64)
    np.cumsum([len(s.timestamps) for s in found], out=offsets[1:])
    return MemoryArrays(
        [s.labels for s in found],
        offsets,
        np.concatenate([s.timestamps for s in found]) if found else np.zeros(0, np.int64),
        np.concatenate([s.values for s in found]) if found else np.zeros(0),
    )


async def select_arrays(
    queryable: Queryable, matchers: list[Matcher], start_ms: int, end_ms: int
) -> SelectedArraysLike:
    """``queryable.select_arrays`` when it has one (see :data:`BulkSelect`), else its
    ``select`` concatenated: what the engine reads through, and what a wrapping
    queryable forwards to keep the bulk path."""
    bulk: BulkSelect | None = getattr(queryable, "select_arrays", None)
    if bulk is not None:
        return await bulk(matchers, start_ms, end_ms)
    return concatenate(await queryable.select(matchers, start_ms, end_ms))


def matches(labels: Labels, matchers: Sequence[Matcher]) -> bool:
    got = dict(labels)
    return all(m.matches(got.get(m.name, "")) for m in matchers)


class MemoryQueryable:
    """Series kept as sorted numpy arrays; appends keep the last value per timestamp."""

    def __init__(self) -> None:
        self._series: dict[Labels, tuple[np.ndarray, np.ndarray]] = {}

    def clear(self) -> None:
        self._series.clear()

    def add(
        self,
        labels: Labels | dict[str, str],
        timestamps: Sequence[int] | np.ndarray,
        values: Sequence[float] | np.ndarray,
    ) -> None:
        key = make_labels(labels) if isinstance(labels, dict) else make_labels(list(labels))
        t = np.asarray(timestamps, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if key in self._series:
            old_t, old_v = self._series[key]
            t = np.concatenate([old_t, t])
            v = np.concatenate([old_v, v])
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        if len(t) > 1:
            # Keep the last written value for a duplicated timestamp.
            keep = np.ones(len(t), dtype=bool)
            keep[:-1] = t[1:] != t[:-1]
            t, v = t[keep], v[keep]
        self._series[key] = (t, v)

    def series_labels(self) -> list[Labels]:
        return sorted(self._series)

    async def select(
        self, matchers: list[Matcher], start_ms: int, end_ms: int
    ) -> list[MemorySeries]:
        out: list[MemorySeries] = []
        for labels in sorted(self._series):
            if not matches(labels, matchers):
                continue
            t, v = self._series[labels]
            lo = int(np.searchsorted(t, start_ms, "left"))
            hi = int(np.searchsorted(t, end_ms, "right"))
            if hi > lo:
                out.append(MemorySeries(labels, t[lo:hi], v[lo:hi]))
        return out


class RollupSource(Protocol):
    """What the engine needs from :class:`agent.storage.rollup.RollupManager`."""

    resolutions: tuple[int, ...]
    done_to: dict[int, int | None]

    def match(self, matchers: list[Matcher]) -> list[int]: ...

    def dirty_spans(self, series_ids: Sequence[int]) -> list[tuple[int, int]]: ...

    def retained_from(self, res: int, now_ms: int) -> int: ...

    async def stored(
        self, res: int, series_ids: Sequence[int], lo: int, hi: int
    ) -> SeriesBuckets: ...

    async def effective(
        self, res: int, series_ids: Sequence[int], lo: int, hi: int, now_ms: int | None = None
    ) -> SeriesBuckets: ...
