"""Exceptions raised by the store.

Callers (ingestors, the HTTP layer) map these onto protocol answers: a
``BackPressure`` becomes "retry later" (HTTP 429/503), anything else a 500.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class, so callers can catch every storage failure in one place."""


class BackPressure(StorageError):
    """The head is over its memory limit; the caller should retry later.

    Raised before anything is queued, so nothing of the rejected batch was
    written and retrying the same batch is safe.
    """


class UnknownSeries(StorageError):
    """An append named a series id that was never created (a caller bug)."""


class StoreClosed(StorageError):
    """The store was closed; no further writes are accepted."""


class StoreFailed(StorageError):
    """A commit failed after the head had already been updated.

    The in-memory head may then hold samples that never became durable, so the
    store refuses further writes instead of acknowledging on top of a lie;
    reopening rebuilds the head from what really reached the disk.
    """


class StoreLocked(StorageError):
    """Another process has the database open for writing.

    Two writers would each replay and trim the same log, breaking the
    exactly-once guarantee, so the second one refuses to start.
    """


class CardinalityLimitExceeded(StorageError):
    """Some new series were refused by a cardinality limit.

    Raised by ``get_or_create_series`` for callers that do not ask for partial
    results; ``ids`` holds every id (0 where refused) and ``refused`` maps a
    position in the request to the reason, so a caller can still use the rest.
    """

    def __init__(self, ids: list[int], refused: dict[int, str]) -> None:
        self.ids = ids
        self.refused = refused
        first = next(iter(refused.values()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        super().__init__(first + more)
