"""Rules and groups as they run (spec, health, timings, alerts, schedules); engine options."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from agent.alerting import state as st
from agent.alerting.model import Alert
from agent.alerting.rules import RuleSpec
from agent.model import Labels

if TYPE_CHECKING:
    from agent.config import Config

# A define_alert callback: a function or coroutine function called with the Alert
# when the rule fires and when it resolves.
Callback = Callable[[Alert], Any]


class AlertSink(Protocol):
    """What the rule engine hands alerts to (:class:`agent.alerting.dispatch.Dispatcher`)."""

    async def submit(self, alerts: list[Alert], receiver: str | None = None) -> None: ...


SampleWriter = Callable[[list[tuple[Labels, int, float]]], Awaitable[Any]]


@dataclass(frozen=True)
class AlertingOptions:
    """The ``alerting`` config section, typed."""

    evaluation_interval_s: float = 60.0
    external_url: str = ""
    external_labels: Mapping[str, str] = field(default_factory=dict)
    lookback_ms: int = 300_000
    resend_delay_s: float = 60.0
    resolved_retention_s: float = st.RESOLVED_RETENTION_S

    @classmethod
    def from_config(cls, config: Config) -> AlertingOptions:
        """The rule half of ``alerting``, through the typed views (durations in seconds)."""
        alerting = config.typed("alerting")
        return cls(
            evaluation_interval_s=alerting.evaluation_interval,
            external_url=alerting.external_url.rstrip("/"),
            external_labels=dict(alerting.external_labels),
            lookback_ms=int(config.typed("query").lookback_delta * 1000),
            resend_delay_s=alerting.resend_delay,
        )


@dataclass
class Rule:
    """A rule as it runs: its spec plus health and timings for ``/api/v1/rules``."""

    spec: RuleSpec
    key: str  # persistence key: group key + identity (+ #n for duplicates)
    health: str = "unknown"
    last_error: str = ""
    last_evaluation: float | None = None
    evaluation_time: float = 0.0
    series: set[Labels] = field(default_factory=set)  # written at the last evaluation
    # alerting rules only
    active: dict[str, st.ActiveAlert] = field(default_factory=dict)
    callback: Callback | str | None = None
    cooldown_s: float = 0.0

    @property
    def is_alert(self) -> bool:
        return self.spec.kind == "alert"

    def state(self) -> st.AlertState:
        states = {a.state for a in self.active.values()}
        for s in (st.AlertState.FIRING, st.AlertState.PENDING):
            if s in states:
                return s
        return st.AlertState.INACTIVE


@dataclass
class Group:
    name: str
    file: str
    interval_s: float
    limit: int
    query_offset_s: float
    rules: list[Rule]
    next_eval_ms: int = 0
    last_evaluation: float | None = None
    evaluation_time: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.file};{self.name}"

    @property
    def interval_ms(self) -> int:
        return max(1, round(self.interval_s * 1000))

    def offset_ms(self) -> int:
        """Prometheus spreads groups over their interval by a hash of name and file."""
        h = xxhash.xxh64_intdigest(f"{self.name}\xff{self.file}".encode())
        return h % self.interval_ms

    def eval_timestamp(self, now_ms: int) -> int:
        """The latest aligned evaluation time at or before ``now_ms``."""
        off = self.offset_ms()
        adj = now_ms - off
        return adj - adj % self.interval_ms + off


def _rule_keys(group_key: str, specs: Iterable[RuleSpec]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        base = f"{group_key}\x00{spec.identity}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}#{n}")
    return out
