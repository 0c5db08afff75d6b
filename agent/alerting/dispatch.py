"""From firing alerts to notifications: routing, grouping, dedup, retries.

The rule engine calls :meth:`Dispatcher.submit` on every evaluation of a rule
group with all alerts of that group that are firing plus those that just
resolved, as Prometheus sends them to Alertmanager. The dispatcher then does
what Alertmanager does, in-process:

* **routing** through the ``alerting.route`` tree (:mod:`agent.alerting.routing`);
  an alert can also be addressed to one receiver by name, either with
  ``submit(alerts, receiver="name")`` or with the reserved label
  ``__receiver__`` (removed before anything else sees the alert); such alerts
  get one group each, no ``group_wait``, and the root route's intervals;
* **grouping**: a route's alerts are split by its ``group_by`` labels. A new
  group is notified ``group_wait`` after its first alert; after that it is
  looked at every ``group_interval`` and notified only if a new alert fires,
  an alert resolved (for notifiers with ``send_resolved``, the default), or
  ``repeat_interval`` passed since the last notification of a still-firing
  group. When every alert of a group has resolved, the receiver hears about it
  once (the resolve) and the group is forgotten;
* **delivery**: each notification is first written to the outbox
  (:mod:`agent.alerting.outbox`), then handed to the notifier; failures are
  retried with exponential backoff (``alerting.delivery``) until they succeed,
  run out of attempts or age, or the notifier says retrying is pointless
  (an exception with ``permanent = True``, e.g. a 4xx answer). Deliveries of the
  same group to the same notifier go out in order (a resolve never overtakes
  its firing notification); different notifiers never wait for each other.

Notifiers whose ``grouping`` attribute is False (the ``alertmanager`` notifier)
bypass grouping: Alertmanager groups, silences and inhibits itself, so it gets
alerts directly, as Prometheus sends them: when an alert appears or changes
state, and firing ones again every ``alerting.resend_delay`` with ``endsAt`` in
the future, so Alertmanager resolves them by itself if tsagent goes away.

Time comes from an injectable clock, so tests step through group_wait,
group_interval, repeat_interval and retry backoff without sleeping: build the
dispatcher with a :class:`agent.clock.ManualClock`, ``start(background=False)``, then
``clock.advance(...)`` and ``await dispatcher.tick()``.

Python callbacks are receivers too: ``register_callback(name, fn)``; ``fn``
receives a ``list[Alert]`` (the group's alerts, firing and just resolved) and
may be a plain function (run on the event loop, so keep it short) or a
coroutine function. Alerts reach it through ``submit(..., receiver=name)`` or
the ``__receiver__`` label (a configured receiver of the same name wins), or
through the route tree: a configured receiver's ``callback_configs: [{name:
NAME}]`` entry delivers that receiver's groups to the callback registered as
NAME, with the same grouping, timing, dedup and retries as its other notifiers
(a callback not registered (yet) fails the delivery, which is retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry

from agent.alerting.model import Alert
from agent.alerting.notify import (
    ZERO_TIME as ZERO_TIME,
)
from agent.alerting.notify import (
    NotificationMetrics as NotificationMetrics,
)
from agent.alerting.notify import (
    Notifier as Notifier,
)
from agent.alerting.notify import (
    NotifyError as NotifyError,
)
from agent.alerting.notify import (
    Settings as Settings,
)
from agent.alerting.notify import _alert_dict, _sort_key
from agent.alerting.notify import (
    build_payload as build_payload,
)
from agent.alerting.notify import (
    notification_metrics as notification_metrics,
)
from agent.alerting.notify import (
    redact_text as redact_text,
)
from agent.alerting.notify import (
    redact_url as redact_url,
)
from agent.alerting.outbox import Change, LogEntry, LogKey, Outbox, OutboxItem
from agent.alerting.outbox import alert_from_raw as _unraw
from agent.alerting.outbox import needs_update as _needs_update
from agent.alerting.outbox import raw_alert as _raw
from agent.alerting.routing import (
    Route,
    RouteError,
    direct_route,
    labels_text,
    receiver_targets,
)
from agent.clock import Clock, SystemClock

log = logging.getLogger("tsagent.alerting")


RECEIVER_LABEL = "__receiver__"
CALLBACK = "callback"
# How long a direct (Alertmanager) target remembers a resolved alert, so that a
# resolve the engine repeats is not pushed again; Prometheus resends for 15m.
RESOLVED_RETENTION = 15 * 60.0
MAX_IDLE_SLEEP = 5.0

Callback = Callable[[list[Alert]], Any]


# --- the dispatcher ---------------------------------------------------------------


Target = tuple[str, int, dict[str, Any]]  # notifier type, index, config
AlertKey = tuple[str, str]  # fingerprint, receiver it was addressed to ('' = routed)


@dataclass
class _Group:
    route: Route
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    next_flush: float
    alerts: dict[AlertKey, Alert] = field(default_factory=dict)


class Dispatcher:
    """Routes, groups and delivers alerts; see the module docstring for semantics."""

    def __init__(
        self,
        section: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        notifiers: Mapping[str, Notifier],
        *,
        store: Any = None,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``section`` is the ``alerting`` config section, or a callable returning the
        current one (the daemon passes ``lambda: ctx.config.section("alerting")``
        so a SIGHUP reload takes effect at the next submit or tick). Raises
        :class:`RouteError` when the section is invalid."""
        self._source: Callable[[], Mapping[str, Any]] = (
            section if callable(section) else (lambda: section)
        )
        self._seen_section: Mapping[str, Any] | None = self._source()
        self.settings = Settings.parse(self._seen_section)
        self.notifiers = notifiers
        self.clock: Clock = clock or SystemClock()
        self.metrics = notification_metrics(registry or CollectorRegistry())
        self._outbox = Outbox(store)
        self._callbacks: dict[str, Callback] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._log: dict[LogKey, LogEntry] = {}
        self._stored: dict[AlertKey, str] = {}  # alert states persisted, by status
        self._members: dict[AlertKey, set[tuple[str, str]]] = {}
        self._direct_sent: dict[tuple[str, str, int], dict[str, tuple[str, float]]] = {}
        self._pending: dict[int, OutboxItem] = {}
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._warned: set[str] = set()

    # --- lifecycle --------------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        """Load what the outbox kept (pending deliveries, notification log, group
        alerts), then, with ``background``, run the timer loop."""
        loaded = await self._outbox.load()
        self._pending = {i.id: i for i in loaded.items}
        self._log = loaded.log
        now = self.clock.now()
        change = Change()
        for (fp, rcv), stored in loaded.alerts.items():
            alert = stored
            if alert.status == "firing":
                # The engine's "valid until" was set before the downtime; give it time to
                # re-submit before a flush would take the alert for resolved.
                floor = now + 4 * self.settings.resend_delay
                alert = replace(alert, ends_at=max(alert.ends_at or 0.0, floor))
            if self._insert(alert, rcv, now):
                self._stored[(fp, rcv)] = alert.status
            else:
                change.alerts_delete.add((fp, rcv))
        await self._outbox.commit(change)
        if self._pending or loaded.alerts:
            log.info(
                "notification state restored",
                extra={"pending": len(self._pending), "alerts": len(loaded.alerts)},
            )
        self._started = True
        if background:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tsagent-dispatcher"
            )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the loop; give deliveries in flight ``grace`` seconds, then cancel
        them (they stay in the outbox and are retried after the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        tasks = list(self._inflight.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- configuration --------------------------------------------------------------

    def _current(self) -> Settings:
        section = self._source()
        if section is not self._seen_section:
            self._seen_section = section
            try:
                self.settings = Settings.parse(section)
            except (RouteError, ValueError) as exc:
                log.error("alerting config rejected, keeping the previous one: %s", exc)
        return self.settings

    def register_callback(self, name: str, fn: Callback) -> None:
        """Make ``fn`` a receiver called ``name`` (sync or async; gets ``list[Alert]``)."""
        if not callable(fn):
            raise TypeError("callback must be callable")
        if name in self.settings.receivers:
            raise ValueError(f"{name!r} is a configured receiver; pick another callback name")
        self._callbacks[name] = fn

    def unregister_callback(self, name: str) -> None:
        self._callbacks.pop(name, None)

    def _targets(self, receiver: str, s: Settings) -> list[Target] | None:
        if receiver in s.receivers:
            return receiver_targets(s.receivers[receiver])
        if receiver in self._callbacks:
            return [(CALLBACK, 0, {"send_resolved": True})]
        return None

    def _is_direct(self, kind: str) -> bool:
        notifier = self.notifiers.get(kind)
        return notifier is not None and getattr(notifier, "grouping", True) is False

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # --- intake ---------------------------------------------------------------------

    async def submit(self, alerts: list[Alert], receiver: str | None = None) -> None:
        """Take the alerts of one rule group's evaluation (firing and just resolved).

        ``receiver`` sends them all to that receiver or callback, bypassing the
        route tree; so does a ``__receiver__`` label on one alert.
        """
        if not self._started:
            raise RuntimeError("Dispatcher.submit before start()")
        s = self._current()
        now = self.clock.now()
        change = Change()
        direct: dict[str, list[Alert]] = {}
        for raw in alerts:
            alert, addressed = self._normalise(raw, receiver, now)
            akey = (alert.fingerprint, addressed)
            grouped = self._insert(alert, addressed, now, direct)
            if grouped and self._stored.get(akey) != alert.status:
                self._stored[akey] = alert.status
                change.alerts_put[akey] = alert
        for rcv, batch in direct.items():
            self._direct(rcv, batch, now, s, change)
        async with self._lock:
            await self._outbox.commit(change)
            self._pending.update((i.id, i) for i in change.items)
        self._wake.set()

    def _normalise(self, alert: Alert, receiver: str | None, now: float) -> tuple[Alert, str]:
        addressed = receiver or ""
        if RECEIVER_LABEL in alert.labels:
            labels = dict(alert.labels)
            addressed = receiver or labels.pop(RECEIVER_LABEL)
            labels.pop(RECEIVER_LABEL, None)
            alert = replace(alert, labels=labels)
        if alert.status == "resolved" and alert.ends_at is None:
            alert = replace(alert, ends_at=now)
        return alert, addressed

    def _routes(self, alert: Alert, addressed: str, s: Settings) -> list[Route]:
        if addressed:
            return [direct_route(addressed, s.root.options)]
        return s.root.match(alert.labels)

    def _insert(
        self,
        alert: Alert,
        addressed: str,
        now: float,
        direct: dict[str, list[Alert]] | None = None,
    ) -> bool:
        """Put an alert into the groups of every route that takes it; collect it for
        direct notifiers. True when at least one group holds it."""
        s = self.settings
        akey = (alert.fingerprint, addressed)
        grouped = False
        for route in self._routes(alert, addressed, s):
            rcv = route.options.receiver
            targets = self._targets(rcv, s)
            if targets is None:
                self._warn_once(
                    f"rcv:{rcv}", "alert %s routed to unknown receiver %r; dropped", alert.name, rcv
                )
                continue
            if direct is not None and any(self._is_direct(k) for k, _i, _c in targets):
                direct.setdefault(rcv, []).append(alert)
            if not any(not self._is_direct(k) for k, _i, _c in targets):
                continue
            glabels = route.options.group_labels(alert.labels)
            gkey = route.group_key(glabels)
            gid = (route.id, gkey)
            group = self._groups.get(gid)
            if group is None:
                group = self._groups[gid] = _Group(
                    route, rcv, gkey, glabels, now + route.options.group_wait
                )
            group.route = route  # options may have changed with a reload
            group.alerts[akey] = alert
            self._members.setdefault(akey, set()).add(gid)
            grouped = True
        return grouped

    def _direct(
        self, receiver: str, alerts: list[Alert], now: float, s: Settings, change: Change
    ) -> None:
        """Alertmanager-style targets: new or changed alerts now, firing ones again
        every ``resend_delay``, with ``endsAt`` in the future while firing."""
        for kind, index, _cfg in self._targets(receiver, s) or []:
            if not self._is_direct(kind):
                continue
            sent = self._direct_sent.setdefault((receiver, kind, index), {})
            for fp, (status, at) in list(sent.items()):
                if status == "resolved" and now - at > RESOLVED_RETENTION:
                    del sent[fp]
            out: list[dict[str, Any]] = []
            for alert in alerts:
                prev = sent.get(alert.fingerprint)
                if alert.status == "firing":
                    if prev is not None and prev[0] == "firing" and now - prev[1] < s.resend_delay:
                        continue
                    ends = alert.ends_at
                    if ends is None or ends <= now:
                        ends = now + 4 * s.resend_delay
                    out.append(replace(alert, ends_at=ends).to_dict())
                else:
                    if prev is not None and prev[0] == "resolved":
                        continue
                    out.append(alert.to_dict())
                sent[alert.fingerprint] = (alert.status, now)
            if out:
                change.items.append(
                    OutboxItem(
                        receiver=receiver,
                        notifier=kind,
                        index=index,
                        order_key=f"{receiver}\x00{kind}\x00{index}",
                        payload={"group_key": "", "group_labels": {}, "alerts": out},
                        created=now,
                        next_attempt=now,
                    )
                )

    # --- the timer ----------------------------------------------------------------

    async def tick(self, *, wait: bool = True) -> None:
        """Flush the groups that are due and start the deliveries that are due;
        with ``wait``, return only when those deliveries finished (tests)."""
        s = self._current()
        now = self.clock.now()
        async with self._lock:
            change = Change()
            for gid, group in list(self._groups.items()):
                if group.next_flush <= now:
                    self._flush(gid, group, now, s, change)
            await self._outbox.commit(change)
            self._pending.update((i.id, i) for i in change.items)
        self._start_deliveries(now, s)
        while wait and self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            # a finished delivery may unblock the next one of its group
            self._start_deliveries(self.clock.now(), s)

    def _flush(
        self, gid: tuple[str, str], group: _Group, now: float, s: Settings, change: Change
    ) -> None:
        for akey, alert in list(group.alerts.items()):
            if alert.status == "firing" and alert.ends_at is not None and alert.ends_at <= now:
                group.alerts[akey] = replace(alert, status="resolved")  # never re-sent
        alerts = sorted(group.alerts.values(), key=_sort_key)
        firing = frozenset(a.fingerprint for a in alerts if a.status == "firing")
        resolved = frozenset(a.fingerprint for a in alerts if a.status == "resolved")
        targets = self._targets(group.receiver, s) or []
        for kind, index, cfg in targets:
            if self._is_direct(kind):
                continue
            lkey: LogKey = (group.receiver, kind, index, group.group_key)
            send_resolved = bool(cfg.get("send_resolved", True))
            entry = self._log.get(lkey)
            if not _needs_update(
                entry, firing, resolved, send_resolved, group.route.options.repeat_interval, now
            ):
                continue
            out = [a for a in alerts if a.status == "firing" or send_resolved]
            if out:
                payload: dict[str, Any] = {
                    "group_key": group.group_key,
                    "group_labels": group.group_labels,
                    "alerts": [_alert_dict(a) for a in out],
                }
                if kind == CALLBACK:
                    payload["raw"] = [_raw(a) for a in out]
                change.items.append(
                    OutboxItem(
                        receiver=group.receiver,
                        notifier=kind,
                        index=index,
                        order_key="\x00".join((group.receiver, kind, str(index), group.group_key)),
                        payload=payload,
                        created=now,
                        next_attempt=now,
                    )
                )
            if firing:
                self._log[lkey] = change.log_put[lkey] = LogEntry(firing, resolved, now)
            else:  # all resolved and told: forget the group
                self._log.pop(lkey, None)
                change.log_put.pop(lkey, None)
                change.log_delete.add(lkey)
        group.next_flush = now + group.route.options.group_interval
        for akey, alert in list(group.alerts.items()):
            if alert.status != "resolved":
                continue
            del group.alerts[akey]
            members = self._members.get(akey, set())
            members.discard(gid)
            if not members:
                self._members.pop(akey, None)
                if self._stored.pop(akey, None) is not None:
                    change.alerts_put.pop(akey, None)
                    change.alerts_delete.add(akey)
        if not group.alerts:
            del self._groups[gid]

    def next_due(self) -> float | None:
        """When the loop has something to do next (a flush or a retry)."""
        times = [g.next_flush for g in self._groups.values()]
        times.extend(i.next_attempt for i in self._pending.values() if i.id not in self._inflight)
        return min(times) if times else None

    @property
    def pending(self) -> list[OutboxItem]:
        """Notifications not yet delivered (for tests and the status API)."""
        return sorted(self._pending.values(), key=lambda i: i.id)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick(wait=False)
            except Exception:
                log.exception("notification dispatcher tick failed")
            due = self.next_due()
            delay = MAX_IDLE_SLEEP if due is None else due - self.clock.now()
            delay = min(max(delay, 0.01), MAX_IDLE_SLEEP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # --- delivery -------------------------------------------------------------------

    def _start_deliveries(self, now: float, s: Settings) -> None:
        seen: set[str] = set()
        for item in sorted(self._pending.values(), key=lambda i: i.id):
            if item.order_key in seen:
                continue  # an older notification of this group goes first
            seen.add(item.order_key)
            if item.id in self._inflight or item.next_attempt > now:
                continue
            self._inflight[item.id] = asyncio.get_running_loop().create_task(
                self._deliver(item, s), name=f"tsagent-notify-{item.id}"
            )

    async def _deliver(self, item: OutboxItem, s: Settings) -> None:
        kind = item.notifier
        try:
            try:
                await asyncio.wait_for(self._call(item, s), s.timeout)
            except Exception as exc:  # noqa: BLE001 - any notifier failure is a failure
                await self._failed(item, exc, s)
                return
            self.metrics.notifications.labels(kind, "success").inc()
            log.debug(
                "notification delivered",
                extra={"receiver": item.receiver, "notifier": kind, "attempts": item.attempts + 1},
            )
            self._pending.pop(item.id, None)
            await self._outbox.delete([item.id])
        except Exception:
            log.exception("could not record a notification's delivery")
        finally:
            self._inflight.pop(item.id, None)
            self._wake.set()

    async def _call(self, item: OutboxItem, s: Settings) -> None:
        if item.notifier == CALLBACK:
            name = self._callback_name(item, s)
            fn = self._callbacks.get(name)
            if fn is None:
                raise NotifyError(f"no callback registered as {name!r}")
            outcome = fn([_unraw(a) for a in item.payload.get("raw", [])])
            if inspect.isawaitable(outcome):
                await outcome
            return
        notifier = self.notifiers.get(item.notifier)
        if notifier is None:
            raise NotifyError(f"no notifier plugin provides type {item.notifier!r}")
        rcv = s.receivers.get(item.receiver)
        entries = (rcv or {}).get(f"{item.notifier}_configs") or []
        if item.index >= len(entries):
            raise NotifyError(
                f"receiver {item.receiver!r} has no {item.notifier}_configs[{item.index}] "
                "any more (config changed)",
                permanent=True,
            )
        context = {
            "name": item.receiver,
            "config": dict(entries[item.index]),
            "group_key": item.payload.get("group_key", ""),
            "group_labels": item.payload.get("group_labels", {}),
            "external_url": s.external_url,
        }
        result: Awaitable[None] = notifier.notify(item.payload["alerts"], context)
        await result

    def _callback_name(self, item: OutboxItem, s: Settings) -> str:
        """The registered callback an item goes to: the receiver's own name when it
        is a callback addressed directly, else its ``callback_configs[i].name``."""
        rcv = s.receivers.get(item.receiver)
        if rcv is None:
            return item.receiver
        entries = rcv.get(f"{CALLBACK}_configs") or []
        if item.index >= len(entries):
            raise NotifyError(
                f"receiver {item.receiver!r} has no {CALLBACK}_configs[{item.index}] "
                "any more (config changed)",
                permanent=True,
            )
        return str(entries[item.index].get("name", ""))

    async def _failed(self, item: OutboxItem, exc: BaseException, s: Settings) -> None:
        kind = item.notifier
        item.attempts += 1
        now = self.clock.now()
        reason = redact_text(str(exc) or type(exc).__name__)
        item.last_error = reason[:500]
        self.metrics.failures.labels(kind).inc()
        self.metrics.notifications.labels(kind, "failure").inc()
        permanent = bool(getattr(exc, "permanent", False))
        where = {"receiver": item.receiver, "notifier": kind, "attempts": item.attempts}
        if permanent or item.attempts >= s.max_attempts or now - item.created >= s.max_age:
            why = "permanent error" if permanent else "out of attempts or too old"
            log.error("giving up on a notification (%s): %s", why, reason, extra=where)
            self.metrics.notifications.labels(kind, "dropped").inc()
            self._pending.pop(item.id, None)
            await self._outbox.delete([item.id])
            return
        delay = min(s.max_backoff, s.initial_backoff * 2 ** (item.attempts - 1))
        item.next_attempt = now + delay
        log.warning("notification failed, retrying in %.1fs: %s", delay, reason, extra=where)
        await self._outbox.reschedule(item)


__all__ = [
    "RECEIVER_LABEL",
    "Dispatcher",
    "NotifyError",
    "Settings",
    "build_payload",
    "labels_text",
    "redact_text",
    "redact_url",
]
