"""One memory budget for the large ingest requests being processed at once.

Why: each push format turns its body into Python objects and arrays worth
many times its size (a 29 MB remote-write body ~8x, a 20 MB JSON or text
push more), and the body limits are per request. Without a shared budget,
a few large requests at once took the daemon past 1 GiB (issue 13). Every
ingest endpoint claims its request's size before the expensive work and
releases it after; over budget it answers 429 with ``Retry-After`` and the
sender retries. Small requests (under ``SMALL_BYTES``) never wait: they are
the steady traffic, and cheap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

SMALL_BYTES = 64 * 1024
# Cost per byte of each push format, relative to remote write (see IngestBudget.claim).
WEIGHT_TEXT = 2
WEIGHT_JSON = 3
WEIGHT_CSV = 2


class IngestBudget:
    """Bytes of large ingest requests in flight, against a limit (event-loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def claim(self, size: int, weight: int = 1) -> int | None:
        """Take ``size * weight`` of the budget: the cost taken (0 for a small
        request), or None (nothing taken) when over budget.

        ``weight`` is what the format costs per byte relative to remote write's
        decompressed bytes (measured with ``benchmarks/bench_hostile.py``:
        remote write ~8x its decompressed size in memory, Prometheus text ~16x,
        JSON ~22x its body). A request alone is always admitted, whatever its
        cost: the per-request body limits bound it, and refusing it forever
        would be wrong.
        """
        if size < SMALL_BYTES:
            return 0
        cost = size * weight
        if self.in_flight and self.in_flight + cost > self.limit:
            return None
        self.in_flight += cost
        return cost

    def release(self, cost: int) -> None:
        self.in_flight -= cost
        if cost and not self.in_flight:
            trim_heap()

    def busy_message(self, size: int) -> str:
        return (
            f"large ingest requests worth {self.in_flight} bytes in progress; this one"
            f" ({size} bytes) would exceed server.max_inflight_ingest_bytes ({self.limit});"
            " retry"
        )


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_trim()


def trim_heap() -> None:
    """Give freed heap memory back to the kernel after a large request (glibc only).

    Large requests are parsed in worker threads, each with its own malloc
    arena; without this, their freed memory stays resident and the peak RSS
    adds up across arenas (a text push then a JSON push: 1 GiB instead of
    the 0.5 GiB either needs). Runs in a short-lived thread: it takes tens of
    milliseconds on a big heap.
    """
    if _malloc_trim is not None:
        threading.Thread(target=_malloc_trim, args=(0,), daemon=True).start()
