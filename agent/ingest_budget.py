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

SMALL_BYTES = 64 * 1024


class IngestBudget:
    """Bytes of large ingest requests in flight, against a limit (event-loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def claim(self, size: int) -> bool:
        """Take ``size`` bytes of the budget; False (nothing taken) when over it.

        A request alone is always admitted, whatever its size: the per-request
        body limits bound it, and refusing it forever would be wrong.
        """
        if size < SMALL_BYTES:
            return True
        if self.in_flight and self.in_flight + size > self.limit:
            return False
        self.in_flight += size
        return True

    def release(self, size: int) -> None:
        if size >= SMALL_BYTES:
            self.in_flight -= size

    def busy_message(self, size: int) -> str:
        return (
            f"{self.in_flight} bytes of large ingest requests in progress; this one"
            f" ({size} bytes) would exceed server.max_inflight_ingest_bytes ({self.limit});"
            " retry"
        )
