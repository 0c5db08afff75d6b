"""Bounds on one query: its text before parsing, its points and memory while evaluating.

Two different dangers, two different checks:

* **Parsing.** ``promql-parser`` needs memory quadratic in the nesting of the
  tree: measured with 0.12 on this machine, 1,000 nested parentheses take
  70 MB and ``1+1+…`` with 1,000 terms 140 MB (2,000 terms: 555 MB). Nesting
  comes from brackets and from chains of binary operators alike (256 brackets
  around a 512-term chain: 87 MB). :func:`check_query_text` pre-scans the text
  in linear time, before the parser sees it, and refuses a query whose length,
  bracket depth or number of binary operators passes :class:`ParseLimits`.
  The defaults (64 KiB, depth 256, 512 operators) keep the parser under
  ~100 MB on the worst mix while leaving real dashboards (tens of operators,
  depth under 20) far from the limits.
* **Evaluation.** :class:`QueryBudget` is handed to the evaluator, which asks it
  before it allocates an array of series x steps (:meth:`QueryBudget.points`)
  and between nodes, windows and fetches (:meth:`QueryBudget.check`): past the
  deadline or after the waiting side gave up, evaluation stops at the next
  check, so a timed-out query stops using CPU as well as answering 503.
  :func:`checkpoint` reaches the budget of the thread's current query from
  inner loops (per-window-position loops in range functions) without passing
  it down every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.query.errors import BadDataError, ExecutionError, QueryError

TOO_MANY_SAMPLES = "query processing would load too many samples into memory in query execution"


class QueryTimeout(QueryError):
    """The query ran past its timeout (HTTP 503, ``timeout``)."""

    error_type = "timeout"


class QueryCanceled(QueryError):
    """The query was abandoned, e.g. because the store closed under it (503, ``canceled``)."""

    error_type = "canceled"


class TooManySamples(ExecutionError):
    """The query would materialise more points or bytes than allowed (422, ``execution``)."""


@dataclass(frozen=True)
class ParseLimits:
    """What :func:`check_query_text` allows; see the module docstring for the measurements."""

    max_length: int = 65_536
    max_depth: int = 256
    max_binary_ops: int = 512


DEFAULT_PARSE_LIMITS = ParseLimits()

# Binary operators that are words; matched as whole identifiers outside strings/braces.
_WORD_OPS = frozenset({"and", "or", "unless", "atan2"})
_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")


def check_query_text(query: str, limits: ParseLimits = DEFAULT_PARSE_LIMITS) -> None:
    """Refuse (400 ``bad_data``, naming the limit) a query too long or too deeply nested.

    A single linear pass: string literals and label-matcher braces are skipped,
    brackets ``( [`` count towards the depth, and each binary operator symbol
    (``+ - * / % ^ == != <= >= < > and or unless atan2``) towards the operator
    count. Unary minus and the ``-`` of an exponent or duration are counted too,
    which only ever over-estimates: the limits are far above real queries.
    """
    n = len(query)
    if n > limits.max_length:
        raise BadDataError(
            f"query is {n} characters long, more than query.max_query_length ({limits.max_length})"
        )
    depth = top = ops = 0
    i = 0
    quote = ""
    while i < n:
        c = query[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c in "([":
            depth += 1
            if depth > top:
                top = depth
                if top > limits.max_depth:
                    raise BadDataError(
                        f"query nests brackets more than query.max_query_depth"
                        f" ({limits.max_depth}) deep"
                    )
        elif c in ")]":
            depth -= 1
        elif c in "+-*/%^<>":
            ops += 1
            if i + 1 < n and query[i + 1] == "=":
                i += 1
        elif c in "=!" and i + 1 < n and query[i + 1] == "=":
            ops += 1
            i += 1
        elif c in _IDENT and (i == 0 or query[i - 1] not in _IDENT):
            j = i + 1
            while j < n and query[j] in _IDENT:
                j += 1
            if query[i:j].lower() in _WORD_OPS:
                ops += 1
            i = j
            continue
        if ops > limits.max_binary_ops:
            raise BadDataError(
                f"query has more than query.max_query_operators ({limits.max_binary_ops}) operators"
            )
        i += 1


class QueryBudget:
    """One query's deadline, point limit and memory budget, shared with its worker thread.

    ``max_points`` is ``query.max_samples``: no single array of series x steps
    (or of subquery steps) may hold more, and neither may the samples loaded
    from storage in total. ``max_bytes`` bounds the sum of the sizes of every
    intermediate result the evaluator materialises: an upper bound of its peak
    memory, since intermediates are freed as evaluation proceeds.
    """

    __slots__ = (
        "_cancelled",
        "bytes_used",
        "deadline",
        "loaded",
        "max_bytes",
        "max_points",
        "started",
        "yielded_s",
    )

    def __init__(self, timeout_s: float, max_points: int, max_bytes: int) -> None:
        self.started = time.monotonic()
        self.yielded_s = 0.0  # slept in checks, letting writes go first
        self.deadline = self.started + timeout_s if timeout_s > 0 else float("inf")
        self.max_points = max_points
        self.max_bytes = max_bytes
        self.loaded = 0
        self.bytes_used = 0
        self._cancelled = False

    def cancel(self) -> None:
        """Called by the waiting side when it gives up: the worker stops at its next check."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        """Raise if the query is past its deadline or was cancelled.

        In a query worker thread, first let writes in flight go first
        (:data:`WRITES`), for at most as long in total as the query has worked:
        a write that stays in flight (a slow client's body) can slow queries
        down twofold at most, never stop them.
        """
        if WRITES.active and getattr(_current, "worker", False):
            now = time.monotonic()
            allowed = (now - self.started) - 2 * self.yielded_s
            if allowed > 0:
                self.yielded_s += WRITES.wait_turn(min(allowed, YIELD_MAX_S))
        if self._cancelled:
            raise QueryCanceled("query was cancelled")
        if time.monotonic() > self.deadline:
            raise QueryTimeout("query timed out in expression evaluation")

    def points(self, n: int, what: str = "") -> None:
        """Refuse, before allocating, an array of ``n`` points past ``query.max_samples``."""
        self.check()
        if n > self.max_points:
            raise TooManySamples(TOO_MANY_SAMPLES)
        if what:
            # Estimated bytes of the block: float64 values, bool presence, int64 times.
            self.charge(n * 17, what)

    def charge(self, nbytes: int, what: str) -> None:
        """Add ``nbytes`` of intermediate results; refuse past ``query.max_memory_bytes``."""
        self.bytes_used += nbytes
        if self.bytes_used > self.max_bytes:
            raise TooManySamples(
                f"query would use more than query.max_memory_bytes ({self.max_bytes} bytes)"
                f" for its intermediate results ({what})"
            )

    def loaded_samples(self, n: int) -> None:
        """Count samples read from storage; refuse past ``query.max_samples`` in total."""
        self.loaded += n
        if self.loaded > self.max_points:
            raise TooManySamples(TOO_MANY_SAMPLES)
        self.check()


_current = threading.local()

YIELD_S = 0.0005  # a worker's sleep while writes are in flight
YIELD_MAX_S = 0.02  # ... at most this long per check, so queries always progress


class WritePriority:
    """Writes before queries: the event loop's writes in flight, which workers wait out.

    Python threads share one interpreter lock, and a worker computing a query
    takes it from the event loop at every switch interval, so a remote-write
    request answered while a heavy query runs takes about twice as long
    (and the loop's longer passes too). Write requests count themselves here
    (:meth:`writing`, on the event loop: the HTTP API's ``write`` group), and a
    worker at each budget check sleeps, up to :data:`YIELD_MAX_S`, while any
    is in flight (and, over the query, at most half its time so far). Queries
    pay the time the writes take; writes see an idle interpreter most of the time.
    """

    __slots__ = ("active", "waited_s")

    def __init__(self) -> None:
        self.active = 0  # changed on the event loop only; workers only read it
        self.waited_s = 0.0

    @contextmanager
    def writing(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def wait_turn(self, longest: float) -> float:
        """In a worker: sleep (releasing the interpreter) while writes are in flight.

        At most ``longest`` seconds; returns how long it slept.
        """
        start = time.monotonic()
        end = start + longest
        now = start
        while self.active and now < end:
            time.sleep(YIELD_S)
            now = time.monotonic()
        self.waited_s += now - start
        return now - start


WRITES = WritePriority()


@contextmanager
def worker_thread() -> Iterator[None]:
    """Mark the current thread as a query worker (it yields to :data:`WRITES`)."""
    prev = getattr(_current, "worker", False)
    _current.worker = True
    try:
        yield
    finally:
        _current.worker = prev


@contextmanager
def budget_scope(budget: QueryBudget | None) -> Iterator[None]:
    """Make ``budget`` what :func:`checkpoint` checks in this thread while the block runs."""
    prev = getattr(_current, "budget", None)
    _current.budget = budget
    try:
        yield
    finally:
        _current.budget = prev


def checkpoint() -> None:
    """Check the current thread's query budget (deadline, cancellation), if any."""
    budget: QueryBudget | None = getattr(_current, "budget", None)
    if budget is not None:
        budget.check()


def current_budget() -> QueryBudget | None:
    budget: QueryBudget | None = getattr(_current, "budget", None)
    return budget
