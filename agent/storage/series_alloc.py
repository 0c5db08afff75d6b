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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agent.model import Labels
from agent.storage.errors import StoreFailed
from agent.storage.index import SeriesIndex
from agent.storage.wal import (
    STAGE_SERIES_ROWS,
    PairRow,
    SeriesRow,
    stage_series,
    unstage_series,
)

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


class Deferred(Protocol):
    """A request the writer defers (its ``_Create``): it has a future to fail."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


D = TypeVar("D", bound=Deferred)


@dataclass(slots=True)
class SeriesCreation:
    """New series handed out by ``Writer.creating`` and stored by one job's transaction.

    ``ids`` has one id per label set of ``labels`` (canonical): a new one, or
    the existing series' where someone created it first (its position is then
    in ``existed``). The job given ``creates=`` inserts the new series' rows
    in its own transaction (``committed`` once it has); they reach the index
    when ``Writer.creating`` exits, and if the job failed they never existed.
    """

    labels: list[Labels]
    made: Allocation
    ids: list[int] = field(default_factory=list)
    existed: list[int] = field(default_factory=list)
    committed: bool = False


class CreationGate:
    """Lets one all-or-nothing import hand out series ids outside the writer's commits.

    While it is held the writer keeps committing appends (acknowledgements
    keep flowing) but defers other callers' new series: those would take ids
    or label pairs the import handed out, or reach the index out of order.
    The holder also knows that no create is half-committed.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self.held = False
        self.deferred: list[Deferred] = []

    def defer(self, creates: list[D]) -> list[D]:
        """The creates the writer may commit now (none while the gate is held)."""
        if self.held and creates:
            self.deferred.extend(creates)
            return []
        return creates

    def creating(self, busy: bool) -> None:
        """The writer starts (True) or ends (False) a group commit that creates series."""
        if busy:
            self._idle.clear()
        else:
            self._idle.set()

    async def acquire(self) -> None:
        await self._lock.acquire()
        self.held = True
        await self._idle.wait()

    def release(self, requeue: Callable[[Any], None] | None) -> None:
        """Open the gate and hand the creates deferred meanwhile back to the writer's
        queue (``requeue``), or fail them when the writer has stopped (None)."""
        self.held = False
        out, self.deferred = self.deferred, []
        self._lock.release()
        for cr in out:
            if requeue is not None:
                requeue(cr)
            elif not cr.future.done():
                cr.future.set_exception(StoreFailed("storage writer stopped"))


class CreatingWriter(Protocol):
    """What :func:`creating` needs of the writer."""

    gate: CreationGate
    index: SeriesIndex
    head: Head
    next_series_id: int

    def job(
        self, sql: Callable[[Any], Any], after: Any = None, *, creates: Any = None
    ) -> asyncio.Future[Any]: ...

    def check_open(self) -> None: ...

    @property
    def accepting(self) -> bool: ...

    def release_gate(self) -> None: ...


@asynccontextmanager
async def creating(
    writer: CreatingWriter,
    labels: list[Labels],
    frontiers: Sequence[tuple[int | None, int | None]] = (),
) -> AsyncIterator[SeriesCreation]:
    """Hand out ids for new series that one writer job (``job(..., creates=)``) will store.

    For an all-or-nothing import: its series exist only if its job commits.
    The ids and label pairs are handed out here, a slice at a time, and the
    rows staged in TEMP tables by short jobs, while the writer keeps
    committing appends; other new series wait (see :class:`CreationGate`)
    until the import's are in the index, which is when this exits. If the job
    did not commit, what was handed out is handed out again. ``frontiers``
    (newest timestamp, signed value bits) per label set are stored with the
    new series' rows.
    """
    writer.check_open()
    await writer.gate.acquire()
    made: Allocation | None = None
    creation: SeriesCreation | None = None
    try:
        made = await allocate_yielding(writer.index, writer.next_series_id, labels, _now_ms())
        writer.next_series_id = made.next_id
        pairs, rows, step = made.pair_rows, made.series_rows, STAGE_SERIES_ROWS
        front = frontiers if frontiers and len(made.new_ids) == len(labels) else ()
        await writer.job(unstage_series)  # nothing left from an earlier import
        for lo in range(0, max(len(pairs), len(rows)), step):
            part = partial(stage_series, pair_rows=pairs[lo : lo + step])
            part = partial(part, series_rows=rows[lo : lo + step])
            await writer.job(partial(part, frontiers=front[lo : lo + step]))
        creation = SeriesCreation(labels, made, made.ids[0], made.existed[0])
        yield creation
    finally:
        try:
            if creation is not None and creation.committed:
                await register_yielding(writer.index, writer.head, creation.made)
            elif made is not None:
                writer.next_series_id = made.first_id  # nothing else handed any out
                writer.index.forget_pairs(made.first_pair)
            if made is not None and writer.accepting:
                await writer.job(unstage_series)  # TEMP rows: a failure here loses nothing
        finally:
            writer.release_gate()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
