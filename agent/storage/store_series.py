"""The store's series: ids for label sets, the label index, bounds and cardinality checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np

from agent.model import Labels, Matcher
from agent.storage import (
    bounds,
)
from agent.storage.cardinality import (
    CardinalityStats,
    Limiter,
    top_stats,
)
from agent.storage.errors import (
    CardinalityLimitExceeded,
)
from agent.storage.head import INT64_MIN
from agent.storage.index import canonical_labels
from agent.storage.options import SelectedArrays
from agent.storage.store_base import StoreBase
from agent.storage.writer import now_ms

log = logging.getLogger("agent.storage.store")

# Label sets handled per slice by the all-or-nothing import helpers before they yield.
YIELD_EVERY = 2_000


class SeriesParts(StoreBase):
    """Part of :class:`agent.storage.store.Store` (see :mod:`agent.storage.store_base`)."""

    def series_id(self, labels: Labels) -> int | None:
        sid = self._index.lookup(labels)
        if sid is None:
            sid = self._index.lookup(canonical_labels(labels))
        return sid

    async def get_or_create_series(self, labels_list: list[Labels]) -> list[int]:
        """Ids for label sets, creating missing series durably before returning.

        Raises :class:`CardinalityLimitExceeded` when a limit refuses some new
        series; ingestors that keep the rest call :meth:`resolve_series`.
        """
        ids, refused = await self.resolve_series(labels_list)
        if refused:
            raise CardinalityLimitExceeded(ids, refused)
        return ids

    async def resolve_series(self, labels_list: list[Labels]) -> tuple[list[int], dict[int, str]]:
        """Ids for label sets (0 where refused) and {position: reason} for the refused.

        Existing series always resolve; only new series are checked against
        the cardinality limits, so traffic on known series keeps flowing.
        """
        out: list[int] = []
        missing: list[int] = []
        wanted: list[Labels] = []
        lookup = self._index.lookup
        too_big: dict[int, str] = {}
        for lab in labels_list:
            sid = lookup(lab)
            if sid is None:
                canon = canonical_labels(lab)
                if not canon:
                    raise ValueError("a series needs at least one non-empty label")
                if canon is not lab:
                    sid = lookup(canon)
                problem = None if sid is not None else bounds.label_problem(self._bounds, canon)
                if problem is not None:
                    too_big[len(out)] = f"label limit: {problem}"
                elif sid is None:
                    missing.append(len(out))
                    wanted.append(canon)
            out.append(sid if sid is not None else 0)
        refused: dict[int, str] = {}
        if wanted:
            dropped = self._limiter.admit(wanted)
            if dropped:
                refused = {missing[i]: reason for i, reason in dropped.items()}
                keep = [i for i in range(len(wanted)) if i not in dropped]
                missing = [missing[i] for i in keep]
                wanted = [wanted[i] for i in keep]
        if wanted:
            try:
                created = await self._w.create(wanted)
            except BaseException:
                self._limiter.forget_reservations(len(wanted))
                raise
            self._limiter.created(created)
            for pos, sid in zip(missing, created, strict=True):
                out[pos] = sid
        return out, refused | too_big

    async def series_keys(self, labels_list: Sequence[Labels]) -> tuple[np.ndarray, list[Labels]]:
        """Keys for label sets, as :meth:`backfill` takes them with ``new_series``.

        A key is the series' id where it exists, else ``-(j + 1)`` for
        ``new[j]``: each new series once, however its labels are spelt.
        Creates nothing: an all-or-nothing backfill creates its new series in
        its own transaction, so an import that aborts leaves none behind.
        """
        lookup = self.series_id
        keys = np.zeros(len(labels_list), dtype=np.int64)
        where: dict[Labels, int] = {}
        for pos, lab in enumerate(labels_list):
            if pos and not pos % YIELD_EVERY:
                await asyncio.sleep(0)  # let the loop serve others between slices
            sid = lookup(lab)
            if sid is None:
                canon = canonical_labels(lab)
                if not canon:
                    raise ValueError("a series needs at least one non-empty label")
                sid = -(where.setdefault(canon, len(where)) + 1)
            keys[pos] = sid
        return keys, list(where)

    def timestamp_problems(self, timestamps: Sequence[int] | np.ndarray) -> list[tuple[int, str]]:
        """(position, reason) of timestamps outside ``limits`` (see :mod:`agent.storage.bounds`).

        ``append`` and ``backfill`` refuse those samples anyway; ingestors ask
        first so that no series is created for samples that will be refused,
        and so an all-or-nothing batch creates nothing.
        """
        ts = np.asarray(timestamps, dtype=np.int64)
        return bounds.split_timestamps(self._bounds, ts, now_ms())[1] if ts.size else []

    def out_of_bounds(self, timestamps: np.ndarray) -> np.ndarray | None:
        """Boolean mask of timestamps outside ``limits``, or None when all are inside.

        Vectorised, for callers with millions of samples; the reasons come
        from :meth:`timestamp_problems`.
        """
        lo, hi = bounds.time_window(self._bounds, now_ms())
        bad = (timestamps < lo) | (timestamps > hi)
        return bad if bad.any() else None

    def label_problems(self, labels_list: Sequence[Labels]) -> dict[int, str]:
        """{position: reason} of label sets that would be refused as new series (label limits)."""
        out: dict[int, str] = {}
        lookup = self._index.lookup
        for i, lab in enumerate(labels_list):
            if lookup(lab) is not None:
                continue
            canon = canonical_labels(lab)
            if canon is not lab and lookup(canon) is not None:
                continue
            problem = bounds.label_problem(self._bounds, canon)
            if problem is not None:
                out[i] = f"label limit: {problem}"
        return out

    def cardinality_stats(self, limit: int = 10) -> CardinalityStats:
        """Top label names, values and metrics by series count (``/api/v1/status/tsdb``)."""
        index = self._index
        return top_stats(index.label_names(), index.value_counts, len(index), limit)

    async def limit_cardinality(
        self, series_id_or_metric: int | str, tag_key: str | None, max_values: int
    ) -> None:
        """Cap a metric's distinct values of ``tag_key`` (or, with no key, its series).

        Persisted, so the cap survives a restart; it applies to series created
        from now on (existing series are never cut off).
        """
        if isinstance(series_id_or_metric, int):
            metric = dict(self.labels(series_id_or_metric)).get("__name__", "")
        else:
            metric = series_id_or_metric
        if max_values < 0:
            raise ValueError("max_values must be >= 0")
        label = tag_key or ""
        await self._w.job(lambda conn: Limiter.save_api_rule(conn, metric, label, max_values))
        self._limiter.set_api_rule(metric, label, max_values)

    def labels(self, series_id: int) -> Labels:
        return self._index.labels(series_id)

    def label_names(self) -> list[str]:
        return self._index.label_names()

    def label_values(self, name: str) -> list[str]:
        return self._index.label_values(name)

    def match_series(self, matchers: list[Matcher]) -> list[int]:
        return self._index.match(matchers).tolist()

    def newest_timestamps(self, series_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Newest sample time ever stored per series (INT64_MIN for none), from memory.

        The series and label endpoints use it to leave out series that ended
        before the requested start without reading any samples.
        """
        ids = np.asarray(series_ids, dtype=np.int64)
        max_t = self._head.max_t
        out = np.full(ids.size, INT64_MIN, dtype=np.int64)
        ok = ids < max_t.size
        out[ok] = max_t[ids[ok]]
        return out

    def latest_selected(
        self, ids: list[int], labs: list[Labels], at_ms: int, lookback_ms: int
    ) -> SelectedArrays | None:
        """Each series' newest sample if it is in (at - lookback, at], from memory; or None.

        What an instant selector at ``at_ms`` needs when no series holds a sample
        after ``at_ms`` (a dashboard asking about "now"): two gathers from the
        head's per-series arrays instead of reading every series' buffer. None
        (read the samples instead) unless every series' newest sample is known
        (:meth:`Head.forget_newest`) and at or before ``at_ms``. Series whose
        newest sample is older than the window are left out, as a read leaves
        out series without samples in it.
        """
        head = self._head
        if not ids:
            return None
        sids = np.array(ids, dtype=np.int64)
        if int(sids.max()) >= head.newest_known.size or not head.newest_known[sids].all():
            return None
        t = head.max_t[sids]
        if int(t.max()) > at_ms:
            return None
        v = head.last_bits[sids].view(np.float64)
        keep = t > at_ms - lookback_ms
        if not keep.all():
            labs = [lab for lab, k in zip(labs, keep.tolist(), strict=True) if k]
            t, v = t[keep], v[keep]
        return SelectedArrays(labs, np.arange(len(labs) + 1, dtype=np.int64), t, v)

    async def time_bounds(self) -> tuple[int, int] | None:
        """(oldest, newest) sample timestamp in segments and head, or None when empty."""

        def run() -> tuple[int | None, int | None]:
            row = self._reader_conn().execute("SELECT min(min_t), max(max_t) FROM segments")
            lo, hi = row.fetchone()
            return lo, hi

        lo, hi = await asyncio.get_running_loop().run_in_executor(self._readers, run)
        head = self._head
        ids = head.series_with_data()
        first = head.earliest(ids.tolist())
        if first is not None:
            lo = first if lo is None else min(lo, first)
            # A series' newest sample is in the head whenever the head holds any of it
            # (out-of-order ones are older), or else in segments: max_t bounds both.
            last = int(head.max_t[ids].max())
            hi = last if hi is None else max(hi, last)
        return None if lo is None or hi is None else (int(lo), int(hi))

    async def earliest_from(self, start_ms: int) -> int | None:
        """The oldest sample timestamp at or after ``start_ms`` (segments and head), or None.

        Lets background passes that walk time (rollups) jump over empty
        spans: a lone sample decades before the rest must not cost one step
        per block in between. Exact, and cheap: an index read for segments
        starting later, a read of only the segments that straddle
        ``start_ms``, and the head from ``start_ms`` on.
        """

        def run() -> tuple[int | None, list[int]]:
            conn = self._reader_conn()
            later = conn.execute(
                "SELECT min(min_t) FROM segments WHERE min_t >= ?", (start_ms,)
            ).fetchone()[0]
            straddle = conn.execute(
                "SELECT DISTINCT series_id FROM segments WHERE min_t < ? AND max_t >= ?",
                (start_ms, start_ms),
            ).fetchall()
            return later, [int(r[0]) for r in straddle]

        later, straddle = await asyncio.get_running_loop().run_in_executor(self._readers, run)
        best = later
        end = 2**63 - 1 if later is None else int(later)
        for _sid, t, _v in await self.read_many(straddle, start_ms, end):
            if t.size:
                best = int(t[0]) if best is None else min(best, int(t[0]))
        head = self._head
        ids = head.series_with_data()
        ids = ids[self.newest_timestamps(ids) >= start_ms]  # only series with data that late
        first = head.earliest(ids.tolist(), start_ms)
        if first is not None and first <= end:
            best = first if best is None else min(best, first)
        return None if best is None else int(best)
