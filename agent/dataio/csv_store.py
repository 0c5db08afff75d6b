"""Storing parsed rows: bounds, series resolution, the backfill, rejections mapped to rows.

All-or-nothing where the import asks for it (``on_error="abort"``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.dataio.csv_parse import ParsedCsv, _row_order
from agent.dataio.import_report import ImportReport, Problem
from agent.model import Labels
from agent.rejections import rejection_positions
from agent.storage.backfill import ON_ERROR_CHOICES, OnError

if TYPE_CHECKING:
    from agent.storage import BackfillResult, Store

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


# Imports of at least this many samples check bounds and label limits in a thread.
OFF_LOOP_SAMPLES = 10_000


# --- storing -------------------------------------------------------------------------


async def store_parsed(
    store: Store,
    parsed: ParsedCsv,
    *,
    on_error: OnError = "skip",
    source: str = "csv_import",
    client: str | None = None,
    backfill: BackfillFn | None = None,
) -> ImportReport:
    """Create the series and backfill the samples of a parsed CSV in one transaction.

    ``backfill`` replaces ``store.backfill`` (the daemon passes
    ``AgentContext.backfill`` so the samples are counted in ``/metrics``).
    """
    report = parsed.report
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}")
    if on_error == "abort" and report.problems_total:
        report.aborted = True
        return report
    started = time.perf_counter()
    if parsed.series_idx.size >= OFF_LOOP_SAMPLES:  # label checks cost ~4 us a series
        if await asyncio.to_thread(_drop_out_of_bounds, store, parsed, on_error):
            return report
    elif parsed.series_idx.size and _drop_out_of_bounds(store, parsed, on_error):
        return report
    if parsed.series_idx.size:
        used, inverse = np.unique(parsed.series_idx, return_inverse=True)
        labels = [parsed.label_sets[i] for i in used.tolist()]
        new: list[Labels] = []
        if on_error == "abort":
            # All or nothing, series included: the backfill creates the new series
            # in its own transaction, so an import that aborts leaves none behind.
            keys, new = await store.series_keys(labels)
            ids = keys.tolist()
            refused: dict[int, str] = {}
        else:
            ids, refused = await resolve_chunked(store, labels)
        sids = np.asarray(ids, dtype=np.int64)[inverse]
        if refused:
            _report_refused(parsed, sids, inverse, refused)
            if on_error == "abort":
                report.aborted = True
                return report
            keep = sids > 0
            sids = sids[keep]
            parsed.timestamps = parsed.timestamps[keep]
            parsed.values = parsed.values[keep]
            parsed.rows = parsed.rows[keep]
            parsed.columns = parsed.columns[keep]
            parsed.series_idx = parsed.series_idx[keep]
        result = await (backfill or store.backfill)(
            sids,
            parsed.timestamps,
            parsed.values,
            source=source,
            client=client,
            on_error=on_error,
            new_series=new,
        )
        if result.refused_series:
            why = result.refused_series
            refused = {pos: why[k] for pos, k in enumerate(ids) if k in why}
            _report_refused(parsed, np.where(np.isin(sids, list(why)), 0, sids), inverse, refused)
            report.aborted = True
            return report
        report.stored = result.stored
        report.duplicates = result.duplicates
        report.series = result.series
        report.audit_id = result.audit_id
        report.aborted = result.aborted
        if result.rejected:
            _report_rejections(parsed, sids, result.rejected)
    report.seconds += time.perf_counter() - started
    return report


async def resolve_chunked(
    store: Store, labels_list: Sequence[Labels], chunk: int = 5_000
) -> tuple[list[int], dict[int, str]]:
    """``Store.resolve_series`` a chunk at a time, so that a request creating hundreds
    of thousands of series lets the event loop serve others in between."""
    if len(labels_list) <= chunk:
        return await store.resolve_series(list(labels_list))
    ids: list[int] = []
    refused: dict[int, str] = {}
    for lo in range(0, len(labels_list), chunk):
        part, why = await store.resolve_series(list(labels_list[lo : lo + chunk]))
        ids.extend(part)
        refused.update((lo + pos, reason) for pos, reason in why.items())
    return ids, refused


def _drop_out_of_bounds(store: Store, parsed: ParsedCsv, on_error: OnError) -> bool:
    """Report and drop samples whose timestamp or new series the store's bounds refuse.

    Before any series is created: so no series is left without samples, and
    an ``abort`` import creates nothing. True when the import is aborted.
    """
    report = parsed.report
    refused = np.zeros(parsed.timestamps.size, dtype=bool)
    for pos, why in store.timestamp_problems(parsed.timestamps):
        refused[pos] = True
        col = parsed.column_names[int(parsed.columns[pos])]
        report.add(Problem(int(parsed.rows[pos]), col, f"{why} (out_of_bounds)"))
    used = np.unique(parsed.series_idx)
    labels = store.label_problems([parsed.label_sets[i] for i in used.tolist()])
    for k, why in labels.items():
        hit = np.flatnonzero(parsed.series_idx == used[k])
        refused[hit] = True
        i = int(hit[0])
        report.add(Problem(int(parsed.rows[i]), parsed.column_names[int(parsed.columns[i])], why))
    if not refused.any():
        return False
    report.rejected += int(np.unique(parsed.rows[refused]).size)
    report.store_rejected += int(refused.sum())
    report.samples -= int(refused.sum())
    report.problems.sort(key=_row_order)
    if on_error == "abort":
        report.aborted = True
        return True
    keep = ~refused
    parsed.timestamps = parsed.timestamps[keep]
    parsed.values = parsed.values[keep]
    parsed.rows = parsed.rows[keep]
    parsed.columns = parsed.columns[keep]
    parsed.series_idx = parsed.series_idx[keep]
    return False


def _report_refused(
    parsed: ParsedCsv, sids: np.ndarray, inverse: np.ndarray, refused: Mapping[int, str]
) -> None:
    """Rows whose series a cardinality limit refused (existing series keep flowing)."""
    report = parsed.report
    hit = np.flatnonzero(sids == 0)
    for i in hit.tolist():
        reason = refused.get(int(inverse[i]), "refused by a cardinality limit")
        report.add(
            Problem(
                int(parsed.rows[i]),
                parsed.column_names[int(parsed.columns[i])],
                f"new series refused: {reason}",
            )
        )
    report.rejected += int(np.unique(parsed.rows[hit]).size)
    report.store_rejected += int(hit.size)
    report.samples -= int(hit.size)
    report.problems.sort(key=_row_order)


def _report_rejections(parsed: ParsedCsv, sids: np.ndarray, rejected: Sequence[Any]) -> None:
    """Name the row of each sample the store refused (a conflict with stored data)."""
    bad_rows: set[int] = set()
    for r, i in zip(rejected, rejection_positions(rejected, sids, parsed.timestamps), strict=True):
        if i is not None:
            row = int(parsed.rows[i])
            bad_rows.add(row)
            parsed.report.add(
                Problem(
                    row,
                    parsed.column_names[int(parsed.columns[i])],
                    f"a different value is already stored at timestamp {r.timestamp} ({r.reason})",
                )
            )
    parsed.report.rejected += len(bad_rows)
    parsed.report.store_rejected += len(rejected)
    parsed.report.problems.sort(key=_row_order)
