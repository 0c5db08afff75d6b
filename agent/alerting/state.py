"""The alert state machine and its persistence in the store's SQLite file.

States and transitions are Prometheus's (``rules/alerting.go``), so an alert
behaves the same whether a rule runs here or in Prometheus:

* a series returned by the rule's expression makes an alert **pending**,
  with ``active_at`` = that evaluation's time;
* it turns **firing** once it has been returned continuously for ``for``
  (``ts - active_at >= for``; with ``for: 0`` in the same evaluation);
* when it is no longer returned, a firing alert stays firing for
  ``keep_firing_for`` (counted from the first evaluation it was missing), then
  becomes **inactive** with ``resolved_at`` set; a pending one is dropped;
* resolved alerts are kept (and re-sent as resolved) for
  :data:`RESOLVED_RETENTION_S`, then forgotten; an alert that comes back
  after resolving is a new alert (new ``active_at``).

Every active alert (pending, firing and resolved-but-retained) is saved in
table ``alert_state`` after each evaluation, keyed by rule and fingerprint.
A restart restores them: a firing alert keeps its ``fired_at`` (hence the
same ``starts_at`` and identity for the dispatcher, which therefore does not
notify again) and a pending alert keeps its ``active_at`` (its ``for`` timer
continues rather than restarting).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from agent.alerting.model import Alert, fingerprint
from agent.storage.db import LEGACY_SET, Migrations

RESOLVED_RETENTION_S = 15 * 60.0
"""Prometheus's ``resolvedRetention``: how long a resolved alert is kept and re-sent."""


class AlertState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


@dataclass
class ActiveAlert:
    """One alert of one rule. Times are Unix seconds."""

    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    state: AlertState
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    valid_until: float | None = None
    # Python callbacks of define_alert: what was last delivered for this alert
    # ("", "firing", "resolved" or "suppressed" by the cooldown) and when the
    # last firing notice went out (kept across re-fires for the cooldown).
    notified: str = ""
    last_notice_at: float | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    def to_alert(
        self, *, external_labels: Mapping[str, str] | None = None, generator_url: str = ""
    ) -> Alert:
        """The shared :class:`Alert` as sent to the dispatcher (Prometheus's notifier form).

        ``starts_at`` is ``fired_at`` as in Prometheus (``active_at`` for a
        pending alert, which is never sent); external labels are added where
        the alert has no label of that name.
        """
        labels = {**(external_labels or {}), **self.labels}
        resolved = self.state == AlertState.INACTIVE
        return Alert(
            labels=labels,
            annotations=dict(self.annotations),
            status="resolved" if resolved else "firing",
            starts_at=self.fired_at if self.fired_at is not None else self.active_at,
            ends_at=self.resolved_at if resolved else self.valid_until,
            generator_url=generator_url,
            value=self.value,
        )


def update_alerts(
    active: dict[str, ActiveAlert],
    found: Iterable[ActiveAlert],
    ts: float,
    *,
    for_s: float,
    keep_firing_for_s: float,
    retention_s: float = RESOLVED_RETENTION_S,
) -> int:
    """Apply one evaluation's results to ``active`` in place; returns pending+firing count.

    ``found`` are the alerts the expression produced at ``ts`` (state
    pending, ``active_at`` = ``ts``). This is Prometheus's ``AlertingRule.Eval``
    after the query, step for step.
    """
    seen: set[str] = set()
    for new in found:
        fp = new.fingerprint
        seen.add(fp)
        old = active.get(fp)
        if old is not None and old.state != AlertState.INACTIVE:
            old.value = new.value
            old.annotations = new.annotations
            old.labels = new.labels
            continue
        if old is not None:  # resolved earlier, back now: a new alert, same cooldown memory
            new = replace(new, last_notice_at=old.last_notice_at)
        active[fp] = new
    count = 0
    for fp, alert in list(active.items()):
        keep_firing = False
        if fp not in seen:
            if alert.state == AlertState.FIRING and keep_firing_for_s > 0:
                if alert.keep_firing_since is None:
                    alert.keep_firing_since = ts
                if ts - alert.keep_firing_since < keep_firing_for_s:
                    keep_firing = True
            if alert.state == AlertState.PENDING or (
                alert.resolved_at is not None and ts - alert.resolved_at > retention_s
            ):
                del active[fp]
            if alert.state != AlertState.INACTIVE and not keep_firing:
                alert.state = AlertState.INACTIVE
                alert.resolved_at = ts
            if not keep_firing:
                continue
        else:
            alert.keep_firing_since = None
        count += 1
        if alert.state == AlertState.PENDING and ts - alert.active_at >= for_s:
            alert.state = AlertState.FIRING
            alert.fired_at = ts
    return count


# --- persistence ---------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alert_state ("
    " rule_key TEXT NOT NULL,"
    " fingerprint TEXT NOT NULL,"
    " labels TEXT NOT NULL,"
    " annotations TEXT NOT NULL,"
    " state TEXT NOT NULL,"
    " value REAL,"
    " active_at REAL NOT NULL,"
    " fired_at REAL,"
    " resolved_at REAL,"
    " keep_firing_since REAL,"
    " valid_until REAL,"
    " notified TEXT NOT NULL DEFAULT '',"
    " last_notice_at REAL,"
    " updated_at REAL NOT NULL,"
    " PRIMARY KEY (rule_key, fingerprint))"
)


MIGRATIONS = Migrations("tsagent.alerting.state", formerly=LEGACY_SET)


@MIGRATIONS(name="m020_alert_state")
def m020_alert_state(conn: sqlite3.Connection) -> None:
    # IF NOT EXISTS: databases of releases that created the table outside migrations.
    conn.execute(_SCHEMA)


def _row(rule_key: str, a: ActiveAlert, now: float) -> tuple[object, ...]:
    value = a.value if a.value == a.value else None  # SQLite stores NaN as NULL anyway
    return (
        rule_key,
        a.fingerprint,
        json.dumps(a.labels, sort_keys=True),
        json.dumps(a.annotations, sort_keys=True),
        a.state.value,
        value,
        a.active_at,
        a.fired_at,
        a.resolved_at,
        a.keep_firing_since,
        a.valid_until,
        a.notified,
        a.last_notice_at,
        now,
    )


def save_rules(
    conn: sqlite3.Connection, states: Mapping[str, Mapping[str, ActiveAlert]], now: float
) -> None:
    """Replace the saved alerts of each rule in ``states`` (runs inside a writer job)."""
    for rule_key, alerts in states.items():
        conn.execute("DELETE FROM alert_state WHERE rule_key = ?", (rule_key,))
        conn.executemany(
            "INSERT INTO alert_state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [_row(rule_key, a, now) for a in alerts.values()],
        )


def delete_rules(conn: sqlite3.Connection, rule_keys: Iterable[str]) -> None:
    conn.executemany("DELETE FROM alert_state WHERE rule_key = ?", [(k,) for k in rule_keys])


def load_all(conn: sqlite3.Connection) -> dict[str, dict[str, ActiveAlert]]:
    """Every saved alert by rule key and fingerprint."""
    out: dict[str, dict[str, ActiveAlert]] = {}
    rows = conn.execute(
        "SELECT rule_key, labels, annotations, state, value, active_at, fired_at, resolved_at,"
        " keep_firing_since, valid_until, notified, last_notice_at FROM alert_state"
    )
    for (
        key,
        labels,
        annots,
        state,
        value,
        active,
        fired,
        resolved,
        kfs,
        valid,
        notified,
        last,
    ) in rows:
        alert = ActiveAlert(
            labels=json.loads(labels),
            annotations=json.loads(annots),
            value=float("nan") if value is None else float(value),
            state=AlertState(state),
            active_at=active,
            fired_at=fired,
            resolved_at=resolved,
            keep_firing_since=kfs,
            valid_until=valid,
            notified=notified,
            last_notice_at=last,
        )
        out.setdefault(key, {})[alert.fingerprint] = alert
    return out


@dataclass
class StateSnapshot:
    """What was last saved per rule, so unchanged rules are not rewritten every evaluation."""

    saved: dict[str, tuple[tuple[object, ...], ...]] = field(default_factory=dict)

    @staticmethod
    def signature(alerts: Mapping[str, ActiveAlert]) -> tuple[tuple[object, ...], ...]:
        # value and annotations change every evaluation and are refreshed by the
        # first evaluation after a restart; only the state machine must survive.
        return tuple(
            sorted(
                (
                    fp,
                    a.state.value,
                    a.active_at,
                    a.fired_at,
                    a.resolved_at,
                    a.keep_firing_since,
                    a.notified,
                    a.last_notice_at,
                )
                for fp, a in alerts.items()
            )
        )

    def changed(
        self, states: Mapping[str, Mapping[str, ActiveAlert]]
    ) -> dict[str, dict[str, ActiveAlert]]:
        out: dict[str, dict[str, ActiveAlert]] = {}
        for key, alerts in states.items():
            sig = self.signature(alerts)
            if self.saved.get(key) != sig:
                out[key] = dict(alerts)
        return out

    def mark(self, states: Mapping[str, Mapping[str, ActiveAlert]]) -> None:
        for key, alerts in states.items():
            self.saved[key] = self.signature(alerts)
