"""What an import reports: each problem by row, column and reason, and the totals.

Shared by every push endpoint (CSV, JSON, Prometheus text): one format for clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.storage import BackfillResult

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


MAX_PROBLEMS = 1000  # problems kept in a report; the total is always counted


class MappingError(ValueError):
    """The mapping itself is wrong (not a row); the message names the key."""


# --- reports ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One rejected row, item or line, and why.

    ``kind`` is ``row`` (CSV, ``at`` is the line number), ``item`` (JSON list,
    ``at`` is the 0-based index) or ``line`` (text exposition, line number).
    """

    at: int | None
    field: str | None
    message: str
    kind: str = "row"

    def __str__(self) -> str:
        if self.kind == "item":
            if self.at is None:  # a single-sample body
                return f"{self.field or 'body'}: {self.message}"
            where = f"items[{self.at}]" + (f".{self.field}" if self.field else "")
            return f"{where}: {self.message}"
        where = self.kind if self.at is None else f"{self.kind} {self.at}"
        if self.field:
            where += f", column {self.field!r}" if self.kind == "row" else f", {self.field}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        key = {"row": "row", "item": "index", "line": "line"}.get(self.kind, "at")
        return {key: self.at, "field": self.field, "error": str(self)}


@dataclass(slots=True)
class ImportReport:
    """What an import did; also the JSON body of the HTTP endpoints (``to_dict``).

    ``received`` counts rows, items or lines read; ``rejected`` those refused
    (with ``problems``, at most :data:`MAX_PROBLEMS` of them kept, and
    ``problems_total``); ``samples`` the samples taken from valid input;
    ``stored`` the new ones written, ``duplicates`` the exact re-sends.
    """

    received: int = 0
    rejected: int = 0
    samples: int = 0
    stored: int = 0
    duplicates: int = 0
    series: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0
    store_rejected: int = 0  # samples the store refused (conflicts with stored data)
    aborted: bool = False
    audit_id: int | None = None
    seconds: float = 0.0

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return self.problems_total == 0 and not self.aborted

    def to_dict(self, max_problems: int = MAX_PROBLEMS) -> dict[str, Any]:
        if self.aborted:
            status = "aborted"
        elif self.problems_total:
            status = "partial" if self.samples else "error"
        else:
            status = "success"
        return {
            "status": status,
            "received": self.received,
            "rejected": self.rejected,
            "samples": self.samples,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "series": self.series,
            "aborted": self.aborted,
            "audit_id": self.audit_id,
            "errors_total": self.problems_total,
            "errors": [p.to_dict() for p in self.problems[:max_problems]],
        }
