"""What a batch exporter receives: committed batches, its options, and the stop signal.

The data types of the export log's contract (see :class:`BatchExporter` in
:mod:`agent.forward.export_log`), apart so an exporter's own code can use
them without the hub that delivers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from agent.model import Labels


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How the core feeds one exporter; an exporter sets ``export_options`` to change them.

    ``max_samples`` is a target per ``export`` call (a call holds at least
    one whole batch, so a large batch may exceed it); ``max_wait_s`` lets
    samples accumulate that long before a call that would be smaller than
    ``max_samples`` (0: call as soon as anything is there). Backlog bounds of
    0 mean unbounded.
    """

    max_samples: int = 10_000
    max_wait_s: float = 0.0
    max_backlog_samples: int = 0
    max_backlog_age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ExportBatch:
    """One committed batch: the samples an append (or backfill) stored, in stored order.

    ``seq`` is the batch's export-log position (increasing, never reused).
    ``values`` keep their exact bits (staleness markers included). Series ids
    are the store's; ``labels(series_id)`` names them.
    """

    seq: int
    created_ms: int
    op: str  # "append" or "backfill"
    source: str
    series_ids: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray
    labels: Callable[[int], Labels]
    cum_before: int = 0  # samples in the log before this batch (for backlog checks)

    def __len__(self) -> int:
        return int(self.series_ids.size)

    def samples(self) -> Iterator[tuple[Labels, int, float]]:
        """(labels, ms, value) triples: the convenient, slower way to read a batch."""
        labels = self.labels
        for sid, t, v in zip(
            self.series_ids.tolist(), self.timestamps.tolist(), self.values.tolist(), strict=True
        ):
            yield labels(sid), t, v


class ExportStopped(Exception):
    """Raised by an exporter that noticed ``progress.stopping``: not delivered, no retry."""
