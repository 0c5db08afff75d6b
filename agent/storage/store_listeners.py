"""The store's change listeners: who hears about committed writes, and transaction hooks."""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from agent.storage.store_base import StoreBase, WriteListener
from agent.storage.wal import TxnHook
from agent.storage.writer import SampleListener

log = logging.getLogger("agent.storage.store")


class ListenerParts(StoreBase):
    """Part of :class:`agent.storage.store.Store` (see :mod:`agent.storage.store_base`)."""

    def add_write_listener(self, listener: WriteListener) -> None:
        """Call ``listener(series_ids, min_t, max_t)`` on the event loop after each change.

        Every path that changes stored samples calls it once per committed
        batch, after the commit (append, backfill, record_write, rollback,
        retention; ``series_ids`` None means "any series"). It must be cheap:
        it runs inline on the write path. The query cache invalidates with it.
        """
        self._write_listeners.append(listener)

    def remove_write_listener(self, listener: WriteListener) -> None:
        with contextlib.suppress(ValueError):
            self._write_listeners.remove(listener)

    def notify_written(self, series_ids: np.ndarray | None, min_t: int, max_t: int) -> None:
        """Tell the write listeners that samples in [min_t, max_t] of these series changed."""
        for listener in list(self._write_listeners):
            try:
                listener(series_ids, min_t, max_t)
            except Exception:
                log.exception("write listener failed")

    def add_sample_listener(self, listener: SampleListener) -> None:
        """Call ``listener(series_ids, timestamps, values)`` with the samples of each commit.

        Called on the event loop right after each group commit (appends) and
        each backfill or ``record_write`` commit, in commit order, with
        exactly the samples stored: duplicates and rejected samples are left
        out. Arrays are int64/int64/float64 (values as stored, NaN payloads
        intact) and must not be modified. Costs nothing while no listener is
        registered; a listener must be cheap (live streaming filters with one
        numpy gather, see :mod:`agent.dataio.stream`). Rollbacks and retention
        remove data and are reported only to write listeners.
        """
        self._sample_listeners.append(listener)

    def remove_sample_listener(self, listener: SampleListener) -> None:
        with contextlib.suppress(ValueError):
            self._sample_listeners.remove(listener)

    @property
    def sample_listener_count(self) -> int:
        """Registered sample listeners (tests check that disconnects clean up)."""
        return len(self._sample_listeners)

    def add_transaction_hook(self, hook: TxnHook, *, backfills: bool = False) -> None:
        """Run ``hook`` inside every group-commit transaction (e.g. an audit insert).

        With ``backfills`` it also runs inside each backfill's transaction, with
        one record (``op="backfill"``, ``seq`` None) holding the stored samples:
        the export log needs every accepted batch, while the audit hook must
        not see backfills (they write their own audit row).
        """
        self._w.hooks.append(hook)
        if backfills:
            self._backfill_hooks.append(hook)
