"""Map the store's rejections back to the input positions that sent them.

The store answers an append with ``(series, timestamp, reason)`` for each
refused sample; an importer reports a refusal by the item, line or row it
read it from. Of several inputs that send the same (series, timestamp), the
first one stored wins, so refusals belong to the later ones: the last input
with that pair takes the first refusal, the one before it the next, and so on.
Used by the CSV importer and the JSON and text push endpoints (plugins reach
it through :mod:`agent.plugin_api`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from agent.storage.options import AppendResult, Rejection


def rejection_positions(
    rejected: Sequence[Rejection],
    ids: Sequence[int] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray,
) -> list[int | None]:
    """For each rejection, the index into ``ids``/``timestamps`` that sent it (None if none did)."""
    if not rejected:
        return []
    sid = np.asarray(ids, dtype=np.int64)
    ts = np.asarray(timestamps, dtype=np.int64)
    order = np.lexsort((ts, sid))  # stable: equal pairs stay in input order
    ss, st = sid[order], ts[order]
    used: dict[tuple[int, int], int] = {}
    out: list[int | None] = []
    for r in rejected:
        lo = int(np.searchsorted(ss, r.series_id, "left"))
        hi = int(np.searchsorted(ss, r.series_id, "right"))
        a = lo + int(np.searchsorted(st[lo:hi], r.timestamp, "left"))
        b = lo + int(np.searchsorted(st[lo:hi], r.timestamp, "right"))
        key = (r.series_id, r.timestamp)
        taken = used.get(key, 0)
        if b - a > taken:
            out.append(int(order[b - 1 - taken]))
            used[key] = taken + 1
        else:
            out.append(None)
    return out


def rejection_message(r: Rejection, history_hint: str) -> str:
    """The sender's message for one refused sample; ``history_hint``: where history goes."""
    if r.reason == "duplicate_timestamp":
        return "a different value is already stored at this timestamp (duplicate_timestamp)"
    if r.detail:
        return f"refused by the store ({r.reason}): {r.detail}"
    return (
        f"refused by the store ({r.reason}): older than the newest sample of this series;"
        f" {history_hint}"
    )


class Tally(Protocol):
    """The counters of an import report (``agent.dataio.importer.ImportReport``) it fills in."""

    duplicates: int
    stored: int
    rejected: int
    store_rejected: int

    def add(self, problem: Any) -> None: ...


def fold_append_result(
    report: Tally,
    result: AppendResult,
    ids: Sequence[int] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray,
    problem: Callable[[int | None, Rejection], Any],
) -> None:
    """Fold the store's answer into ``report``: counts, and ``problem(position, rejection)``
    for each refused sample (position as from :func:`rejection_positions`)."""
    report.duplicates = result.duplicates
    stored = getattr(result, "stored", None)
    report.stored = stored if isinstance(stored, int) else result.accepted - result.duplicates
    positions = rejection_positions(result.rejected, ids, timestamps)
    for r, pos in zip(result.rejected, positions, strict=True):
        report.add(problem(pos, r))
        report.rejected += 1
        report.store_rejected += 1
