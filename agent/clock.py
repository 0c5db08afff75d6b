"""The clock: the one source of "now" for components that tests drive by hand.

:class:`SystemClock` reads the wall clock; :class:`ManualClock` is moved by the
caller, so every interval and deadline is exercised without sleeping. The
alert dispatcher, the rule engine and the plugins that take a ``clock``
(through :mod:`agent.plugin_api`) all use these.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Unix seconds."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock tests move by hand: nothing happens until they say so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def set(self, t: float) -> None:
        self.t = float(t)

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t
