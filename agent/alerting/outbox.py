"""What the dispatcher must not forget across a restart, in the store's SQLite file.

Three tables, all written through the store's writer (``store._w.job``), so
they share its single write connection and never contend with ingestion for
the write lock:

* ``notification_outbox``: one row per notification to deliver to one
  notifier. A row is inserted before the first attempt and deleted in the
  same moment the delivery is known to have succeeded (or is given up), so a
  restart neither loses a pending notification nor re-sends a delivered one.
  The one window left is a crash between a receiver accepting the request and
  the delete committing; that notification is sent again (at-least-once, as
  with Alertmanager's own retries).
* ``notification_log``: per (receiver, notifier, group), which alerts were
  firing and resolved when it was last notified, and when: Alertmanager's
  notification log. It is what makes ``repeat_interval`` and "only notify on
  change" survive a restart. It is written in the same transaction as the
  outbox rows it justifies.
* ``notification_alerts``: the latest state of every alert the dispatcher's
  groups hold, so that a resolve submitted just before a restart is still
  notified after it (the rule engine sends a resolve once).

Without a store (unit tests, tools) the same API keeps everything in memory.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from agent.alerting.model import Alert
from agent.storage.db import LEGACY_SET, Migrations

if TYPE_CHECKING:
    from agent.storage import Store

MIGRATIONS = Migrations("tsagent.alerting.outbox", formerly=LEGACY_SET)


@MIGRATIONS(name="m030_notifications")
def m030_notifications(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS notification_outbox ("
        " id INTEGER PRIMARY KEY,"
        " receiver TEXT NOT NULL,"
        " notifier TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " order_key TEXT NOT NULL,"
        " payload TEXT NOT NULL,"
        " created REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt REAL NOT NULL,"
        " last_error TEXT NOT NULL DEFAULT '')"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS notification_log ("
        " receiver TEXT NOT NULL,"
        " notifier TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " group_key TEXT NOT NULL,"
        " firing TEXT NOT NULL,"
        " resolved TEXT NOT NULL,"
        " sent_at REAL NOT NULL,"
        " PRIMARY KEY (receiver, notifier, idx, group_key))"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS notification_alerts ("
        " fingerprint TEXT NOT NULL,"
        " receiver TEXT NOT NULL,"
        " alert TEXT NOT NULL,"
        " PRIMARY KEY (fingerprint, receiver))"
    )


def alert_to_json(alert: Alert) -> str:
    return json.dumps(asdict(alert), sort_keys=True, allow_nan=True)


def alert_from_json(text: str) -> Alert:
    return Alert(**json.loads(text))


@dataclass
class OutboxItem:
    """One notification for one notifier of one receiver.

    ``order_key`` serialises deliveries that must arrive in order (a group's
    firing notification before its resolve): only the oldest pending item of a
    key is attempted.
    """

    receiver: str
    notifier: str
    index: int
    order_key: str
    payload: dict[str, Any]
    created: float
    next_attempt: float
    attempts: int = 0
    last_error: str = ""
    id: int = 0


LogKey = tuple[str, str, int, str]  # receiver, notifier, index, group key


@dataclass
class LogEntry:
    """What a receiver was last told about a group (Alertmanager's nflog entry)."""

    firing: frozenset[str]
    resolved: frozenset[str]
    sent_at: float


@dataclass
class Change:
    """Everything one flush decided, committed in one transaction."""

    items: list[OutboxItem] = field(default_factory=list)
    log_put: dict[LogKey, LogEntry] = field(default_factory=dict)
    log_delete: set[LogKey] = field(default_factory=set)
    alerts_put: dict[tuple[str, str], Alert] = field(default_factory=dict)
    alerts_delete: set[tuple[str, str]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.items or self.log_put or self.log_delete or self.alerts_put or self.alerts_delete
        )


@dataclass
class Loaded:
    items: list[OutboxItem]
    log: dict[LogKey, LogEntry]
    alerts: dict[tuple[str, str], Alert]


class Outbox:
    """Durable (with a store) or in-memory persistence for the dispatcher."""

    def __init__(self, store: Store | None) -> None:
        self._store = store
        self._ids = itertools.count(1)

    @property
    def durable(self) -> bool:
        return self._store is not None

    async def load(self) -> Loaded:
        if self._store is None:
            return Loaded([], {}, {})

        await self._store.attach(MIGRATIONS)

        def sql(conn: sqlite3.Connection) -> Loaded:
            items = [
                OutboxItem(
                    receiver=r[1],
                    notifier=r[2],
                    index=r[3],
                    order_key=r[4],
                    payload=json.loads(r[5]),
                    created=r[6],
                    attempts=r[7],
                    next_attempt=r[8],
                    last_error=r[9],
                    id=r[0],
                )
                for r in conn.execute(
                    "SELECT id, receiver, notifier, idx, order_key, payload, created, attempts,"
                    " next_attempt, last_error FROM notification_outbox ORDER BY id"
                )
            ]
            log = {
                (r[0], r[1], r[2], r[3]): LogEntry(
                    frozenset(json.loads(r[4])), frozenset(json.loads(r[5])), r[6]
                )
                for r in conn.execute(
                    "SELECT receiver, notifier, idx, group_key, firing, resolved, sent_at"
                    " FROM notification_log"
                )
            }
            alerts = {
                (r[0], r[1]): alert_from_json(r[2])
                for r in conn.execute(
                    "SELECT fingerprint, receiver, alert FROM notification_alerts"
                )
            }
            return Loaded(items, log, alerts)

        loaded: Loaded = await self._store._w.job(sql)
        return loaded

    async def commit(self, change: Change) -> None:
        """Persist a flush's decisions atomically; assigns ids to new items."""
        if not change:
            return
        if self._store is None:
            for item in change.items:
                item.id = next(self._ids)
            return
        items = change.items

        def sql(conn: sqlite3.Connection) -> list[int]:
            ids = []
            for it in items:
                cur = conn.execute(
                    "INSERT INTO notification_outbox(receiver, notifier, idx, order_key, payload,"
                    " created, attempts, next_attempt, last_error) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        it.receiver,
                        it.notifier,
                        it.index,
                        it.order_key,
                        json.dumps(it.payload, allow_nan=True),
                        it.created,
                        it.attempts,
                        it.next_attempt,
                        it.last_error,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
            conn.executemany(
                "INSERT OR REPLACE INTO notification_log(receiver, notifier, idx, group_key,"
                " firing, resolved, sent_at) VALUES (?,?,?,?,?,?,?)",
                [
                    (*k, json.dumps(sorted(e.firing)), json.dumps(sorted(e.resolved)), e.sent_at)
                    for k, e in change.log_put.items()
                ],
            )
            conn.executemany(
                "DELETE FROM notification_log WHERE receiver = ? AND notifier = ? AND idx = ?"
                " AND group_key = ?",
                list(change.log_delete),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO notification_alerts(fingerprint, receiver, alert)"
                " VALUES (?,?,?)",
                [(fp, rcv, alert_to_json(a)) for (fp, rcv), a in change.alerts_put.items()],
            )
            conn.executemany(
                "DELETE FROM notification_alerts WHERE fingerprint = ? AND receiver = ?",
                list(change.alerts_delete),
            )
            return ids

        ids: list[int] = await self._store._w.job(sql)
        for item, new_id in zip(items, ids, strict=True):
            item.id = new_id

    async def delete(self, item_ids: Iterable[int]) -> None:
        """Delivered or given up: the row goes, so a restart never sends it again."""
        ids = [(i,) for i in item_ids]
        if self._store is None or not ids:
            return
        await self._store._w.job(
            lambda conn: conn.executemany("DELETE FROM notification_outbox WHERE id = ?", ids)
        )

    async def reschedule(self, item: OutboxItem) -> None:
        """Record a failed attempt and when to try again."""
        if self._store is None:
            return
        args = (item.attempts, item.next_attempt, item.last_error, item.id)
        await self._store._w.job(
            lambda conn: conn.execute(
                "UPDATE notification_outbox SET attempts = ?, next_attempt = ?, last_error = ?"
                " WHERE id = ?",
                args,
            )
        )


def raw_alert(alert: Alert) -> dict[str, Any]:
    """An alert as the outbox stores it (JSON-able); :func:`alert_from_raw` reverses it."""
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "status": alert.status,
        "starts_at": alert.starts_at,
        "ends_at": alert.ends_at,
        "generator_url": alert.generator_url,
        "value": alert.value,
    }


def alert_from_raw(data: Mapping[str, Any]) -> Alert:
    return Alert(**data)


def needs_update(
    entry: LogEntry | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    send_resolved: bool,
    repeat: float,
    now: float,
) -> bool:
    """Alertmanager's dedup decision for one group and one notifier."""
    if entry is None:
        return bool(firing)  # nothing told yet: only firing alerts are news
    if not firing <= entry.firing:
        return True  # something new fires
    if not firing:
        return bool(entry.firing)  # everything resolved: always close the group
    if send_resolved and not resolved <= entry.resolved:
        return True
    return entry.sent_at <= now - repeat
