"""Series ids and stored rows for new label sets, handed out by the writer in write order.

Apart from :mod:`agent.storage.writer` because two kinds of commit use it:
the group commit (creates and appends; a failure there fails the store) and
a job that creates series in its own transaction (an all-or-nothing backfill;
a failure there must hand the ids and label pairs out again).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.model import Labels
from agent.storage.index import SeriesIndex
from agent.storage.wal import PairRow, SeriesRow

if TYPE_CHECKING:
    from agent.storage.head import Head


@dataclass(slots=True)
class Allocation:
    """Series ids handed out for one commit, and what to undo if it rolls back."""

    first_id: int  # the writer's next series id before
    first_pair: int  # the index's pair count before
    next_id: int = 0  # the writer's next series id after
    ids: list[list[int]] = field(default_factory=list)  # per request, per label set
    existed: list[list[int]] = field(default_factory=list)  # positions found in the index
    new_ids: list[int] = field(default_factory=list)
    interned: list[Labels] = field(default_factory=list)
    pair_rows: list[PairRow] = field(default_factory=list)
    series_rows: list[SeriesRow] = field(default_factory=list)


# Series registered at once from which quiet_gc holds collections back.
QUIET_GC_OBJECTS = 10_000


class Rest:
    """Pauses for long loop-side work: every ``busy_s`` of it, ``pause_s`` of idle loop.

    ``asyncio.sleep(0)`` alone is not enough: an acknowledgement needs several
    loop turns and the SQL thread, which waits for the GIL while pure-Python
    work holds it, so appends queued behind 25 ms slices waited up to 0.9 s.
    """

    def __init__(self, busy_s: float = 0.010, pause_s: float = 0.003) -> None:
        self.busy_s, self.pause_s = busy_s, pause_s
        self.since = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self.since >= self.busy_s:
            await asyncio.sleep(self.pause_s)
            self.since = time.perf_counter()
        else:
            await asyncio.sleep(0)


def allocate(
    index: SeriesIndex, first_id: int, wanted: list[list[Labels]], at_ms: int
) -> Allocation:
    """Ids for label sets (existing ones looked up, missing ones handed out from
    ``first_id``) and the rows that store the new ones.

    Runs on the loop inside the writer task, so ids increase in commit order
    and the index's postings stay sorted when the series are added.
    """
    made = Allocation(first_id, index.pair_count, first_id)
    pending: dict[Labels, int] = {}
    for labels in wanted:
        made.ids.append([])
        made.existed.append([])
        _hand_out(index, made, pending, labels, 0)
    _encode(index, made, pending, at_ms)
    return made


async def allocate_yielding(
    index: SeriesIndex, first_id: int, labels: list[Labels], at_ms: int, chunk: int = 1_000
) -> Allocation:
    """:func:`allocate` for one request, ``chunk`` label sets at a time with the event
    loop served between (an import may create 200,000 series in one commit).

    Only the writer task hands out ids and label pairs, and nothing reaches the
    index before the commit, so readers between chunks see nothing of it.
    """
    made = Allocation(first_id, index.pair_count, first_id)
    made.ids.append([])
    made.existed.append([])
    pending: dict[Labels, int] = {}
    rest = Rest()
    for lo in range(0, len(labels), chunk):
        if lo:
            await rest()
        fresh: dict[Labels, int] = {}
        _hand_out(index, made, pending, labels[lo : lo + chunk], lo, fresh)
        _encode(index, made, fresh, at_ms)
    return made


def _hand_out(
    index: SeriesIndex,
    made: Allocation,
    pending: dict[Labels, int],
    labels: list[Labels],
    at: int,
    fresh: dict[Labels, int] | None = None,
) -> None:
    """Ids for ``labels`` (positions from ``at``) into the last request of ``made``;
    the label sets handed new ids go in ``pending`` (and ``fresh``, when given)."""
    ids, existed = made.ids[-1], made.existed[-1]
    lookup = index.lookup
    nxt = made.next_id
    for pos, lab in enumerate(labels, at):
        sid = lookup(lab)
        if sid is None:
            sid = pending.get(lab)
            if sid is None:
                sid = pending[lab] = nxt
                if fresh is not None:
                    fresh[lab] = nxt
                nxt += 1
        else:
            existed.append(pos)
        ids.append(sid)
    made.next_id = nxt


def _encode(index: SeriesIndex, made: Allocation, new: dict[Labels, int], at_ms: int) -> None:
    """Intern and encode the label sets handed ids (``new``, ids increasing)."""
    new_ids = list(new.values())
    interned, blobs, pair_rows = index.encode_new(list(new))
    made.new_ids.extend(new_ids)
    made.interned.extend(interned)
    made.pair_rows.extend(pair_rows)
    made.series_rows.extend((sid, blob, at_ms) for sid, blob in zip(new_ids, blobs, strict=True))


def register(index: SeriesIndex, head: Head, made: Allocation) -> None:
    """The series in ``made`` are committed: make them visible to readers."""
    if made.new_ids:
        index.add_many(made.new_ids, made.interned)
        head.ensure(index.max_id)


async def register_yielding(
    index: SeriesIndex, head: Head, made: Allocation, chunk: int = 1_000
) -> None:
    """:func:`register`, ``chunk`` series at a time with the loop served between.

    The head grows first, so a reader that finds a new series in the index
    can always index the head's arrays with its id.
    """
    ids, interned = made.new_ids, made.interned
    if not ids:
        return
    head.ensure(ids[-1])
    rest = Rest()
    with quiet_gc(len(ids)):
        for lo in range(0, len(ids), chunk):
            if lo:
                await rest()
            index.add_many(ids[lo : lo + chunk], interned[lo : lo + chunk])


@contextmanager
def quiet_gc(objects: int) -> Iterator[None]:
    """No cyclic garbage collection while many long-lived objects are made; then freeze them.

    Registering 200,000 series made a full collection (0.12 s on the loop,
    scanning every series' labels) run every quarter of a second. Label sets,
    postings and the arrays holding them never form cycles, so nothing is
    lost by waiting; frozen (``gc.freeze``), later full collections skip them.
    Below ``QUIET_GC_OBJECTS`` this does nothing.
    """
    if objects < QUIET_GC_OBJECTS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()
