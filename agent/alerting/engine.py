"""The rule engine: evaluates rule groups on their intervals, keeps alert state.

One :class:`RuleEngine` per store. Each group is evaluated at timestamps
aligned like Prometheus's (multiples of the interval, offset by a hash of the
group so that groups do not all run at once), its rules one after another so
a recording rule's output is visible to the rules after it. After every
evaluation of a group:

* recording rules' results are appended through the store (source ``rule``);
* alerting rules update their alerts (:func:`agent.alerting.state.update_alerts`)
  and write ``ALERTS{alertstate=...}`` and ``ALERTS_FOR_STATE`` as Prometheus does,
  with staleness markers for series that disappeared;
* the dispatcher gets every firing alert of the group and every resolved one
  still retained (it groups, deduplicates and notifies);
* Python callbacks of :meth:`RuleEngine.define_alert` get each firing and
  each resolve once;
* alert state is saved to SQLite, so a restart continues where it stopped.

Time comes from a :class:`Clock`, so tests drive it explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from prometheus_client import CollectorRegistry

from agent.alerting import state as st
from agent.alerting.groups import AlertingOptions as AlertingOptions
from agent.alerting.groups import AlertSink as AlertSink
from agent.alerting.groups import Callback as Callback
from agent.alerting.groups import Group, Rule, _rule_keys
from agent.alerting.groups import SampleWriter as SampleWriter
from agent.alerting.model import Alert
from agent.alerting.python_rules import (
    ANOMALY_FUNCTIONS as ANOMALY_FUNCTIONS,
)
from agent.alerting.python_rules import (
    CONDITIONS as CONDITIONS,
)
from agent.alerting.python_rules import python_rule_spec
from agent.alerting.python_rules import threshold_expr as threshold_expr
from agent.alerting.rule_metrics import RuleMetrics, _AlertsCollector
from agent.alerting.rules import GroupSpec
from agent.alerting.template import TemplateData, render_or_error
from agent.clock import Clock, SystemClock
from agent.model import STALE_NAN, Labels, format_labels, make_labels
from agent.query.engine import Engine
from agent.query.queryable import Queryable
from agent.query.values import Scalar, Vector

if TYPE_CHECKING:
    from agent.storage import Store

log = logging.getLogger("tsagent.rules")

PYTHON_GROUP = "define_alert"
PYTHON_FILE = "<python>"
CALLBACK_TIMEOUT_S = 30.0


# --- collaborators ---------------------------------------------------------------------


# --- the engine --------------------------------------------------------------------------


class RuleEngine:
    """Evaluates rule groups against a store and keeps their alerts.

    ``store`` is read through the PromQL engine and receives the rules'
    output; ``dispatcher`` (or a callable returning it, resolved at each
    send, so it may appear after the engine starts) receives alerts.
    """

    def __init__(
        self,
        store: Store,
        *,
        options: AlertingOptions | None = None,
        dispatcher: AlertSink | Callable[[], AlertSink | None] | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        writer: SampleWriter | None = None,
        queryable: Queryable | None = None,
    ) -> None:
        self.store = store
        self.options = options or AlertingOptions()
        self.clock: Clock = clock or SystemClock()
        self._dispatcher = dispatcher
        self._writer = writer
        self.query_engine = Engine(
            queryable if queryable is not None else store, lookback_ms=self.options.lookback_ms
        )
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = RuleMetrics(self.registry)
        self.file_groups: list[Group] = []
        self.python_group: Group | None = None
        self._restored: dict[str, dict[str, st.ActiveAlert]] = {}
        self._snapshot = st.StateSnapshot()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._started = False
        self._eval_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.registry.register(_AlertsCollector(self))

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, *, run: bool = True) -> None:
        """Restore saved alert state; with ``run``, start evaluating on schedule."""
        if self._started:
            return
        await self.store.attach(st.MIGRATIONS)
        loaded: dict[str, dict[str, st.ActiveAlert]] = await self.store._w.job(st.load_all)
        self._restored = loaded
        for group in self.groups:
            for rule in group.rules:
                self._claim(rule)
        self._started = True
        if run:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tsagent-rule-engine"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._eval_lock:  # let an evaluation in progress finish
            pass
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def groups(self) -> list[Group]:
        return [*self.file_groups, *([self.python_group] if self.python_group else [])]

    def _claim(self, rule: Rule) -> None:
        """Give a rule the alerts saved for it before the restart."""
        saved = self._restored.pop(rule.key, None)
        if saved and rule.is_alert:
            rule.active = saved
            self._snapshot.mark({rule.key: saved})

    # --- loading rules ----------------------------------------------------------------

    def _make_group(self, spec: GroupSpec) -> Group:
        keys = _rule_keys(spec.key, spec.rules)
        rules = [Rule(r, k) for r, k in zip(spec.rules, keys, strict=True)]
        return Group(
            name=spec.name,
            file=spec.file,
            interval_s=spec.interval_s or self.options.evaluation_interval_s,
            limit=spec.limit,
            query_offset_s=spec.query_offset_s,
            rules=rules,
        )

    def set_groups(
        self, specs: Sequence[GroupSpec], options: AlertingOptions | None = None
    ) -> None:
        """Replace the file rule groups (startup and SIGHUP), carrying state over.

        Like Prometheus's reload: a rule of the same group with the same name
        and labels keeps its alerts (so ``for`` timers and firing alerts
        survive an edited expression); removed rules get staleness markers for
        the series they wrote and their saved state deleted. ``options``
        (the reloaded ``alerting`` section) apply from the next evaluation.
        """
        if options is not None:
            self.options = options
            self.query_engine.lookback_ms = options.lookback_ms
        old_rules = {r.key: r for g in self.file_groups for r in g.rules}
        old_groups = {g.key: g for g in self.file_groups}
        new_groups = [self._make_group(s) for s in specs]
        now_ms = self._now_ms()
        for group in new_groups:
            prev = old_groups.get(group.key)
            if prev is not None and prev.interval_ms == group.interval_ms:
                group.next_eval_ms = prev.next_eval_ms
                group.last_evaluation = prev.last_evaluation
                group.evaluation_time = prev.evaluation_time
            else:
                group.next_eval_ms = group.eval_timestamp(now_ms) + group.interval_ms
            for rule in group.rules:
                old = old_rules.pop(rule.key, None)
                if old is not None and old.spec.kind == rule.spec.kind:
                    rule.active = old.active
                    rule.series = old.series
                    rule.health, rule.last_error = old.health, old.last_error
                    rule.last_evaluation = old.last_evaluation
                    rule.evaluation_time = old.evaluation_time
                elif self._started:
                    self._claim(rule)
        self.file_groups = new_groups
        if old_rules:
            gone = list(old_rules.values())
            if self._started:
                self._spawn(self._retire(gone, now_ms))
        self._wake.set()

    async def _retire(self, rules: list[Rule], now_ms: int) -> None:
        stale = [(labels, now_ms, STALE_NAN) for r in rules for labels in r.series]
        try:
            if stale:
                await self._write(stale)
            keys = [r.key for r in rules]
            await self.store._w.job(lambda conn: st.delete_rules(conn, keys))
        except Exception:
            log.exception("could not clean up removed rules")

    # --- define_alert -------------------------------------------------------------------

    def define_alert(
        self,
        rule_id: str,
        series_id: int | str,
        threshold: float | str | None = None,
        condition: str = ">",
        callback: Callback | str | None = None,
        *,
        for_: float | str = 0,
        cooldown: float | str = 0,
        window: float | str = "5m",
        keep_firing_for: float | str = 0,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Rule:
        """Alert when one series (or every series of a selector) meets a condition.

        ``series_id`` is a series id or a PromQL selector; ``condition`` one of
        ``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=`` (against ``threshold``),
        ``absent``, ``rate_of_change``, ``anomaly`` or ``anomaly_robust`` (the
        expression each becomes: :func:`agent.alerting.python_rules.threshold_expr`).
        ``callback``: a function or coroutine function called with the
        :class:`Alert` when it fires and resolves (``cooldown`` suppresses
        re-fires sooner than that), or a receiver name the alerts go to
        through the dispatcher; without one, the route tree decides. Evaluated
        every ``alerting.evaluation_interval`` in the group ``define_alert``;
        a ``rule_id`` defined again replaces its rule, keeping its alerts, and
        its state survives a restart once the program defines it again.
        docs/alerting.md has the full description.
        """
        spec, cooldown_s = python_rule_spec(
            self.store,
            rule_id,
            series_id,
            threshold,
            condition,
            callback,
            for_=for_,
            cooldown=cooldown,
            window=window,
            keep_firing_for=keep_firing_for,
            labels=labels,
            annotations=annotations,
        )
        group = self.python_group
        if group is None:
            group = Group(PYTHON_GROUP, PYTHON_FILE, self.options.evaluation_interval_s, 0, 0.0, [])
            group.next_eval_ms = group.eval_timestamp(self._now_ms()) + group.interval_ms
            self.python_group = group
        key = f"{group.key}\x00{rule_id}"
        rule = Rule(spec, key, callback=callback, cooldown_s=cooldown_s)
        for i, old in enumerate(group.rules):
            if old.key == key:
                rule.active, rule.series = old.active, old.series
                group.rules[i] = rule
                break
        else:
            group.rules.append(rule)
            if self._started:
                self._claim(rule)
        self._wake.set()
        return rule

    def remove_alert(self, rule_id: str) -> bool:
        """Forget a ``define_alert`` rule and its saved state; True when it existed."""
        group = self.python_group
        if group is None:
            return False
        key = f"{group.key}\x00{rule_id}"
        gone = [r for r in group.rules if r.key == key]
        group.rules = [r for r in group.rules if r.key != key]
        if gone and self._started:
            self._spawn(self._retire(gone, self._now_ms()))
        return bool(gone)

    # --- scheduling ---------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    async def _run(self) -> None:
        while True:
            groups = self.groups
            now_ms = self._now_ms()
            due = min((g.next_eval_ms for g in groups), default=now_ms + 60_000)
            self._wake.clear()
            if due > now_ms:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), (due - now_ms) / 1000)
                continue
            try:
                await self.tick()
            except Exception:
                log.exception("rule evaluation failed")

    async def tick(self, now: float | None = None) -> list[Group]:
        """Evaluate every group that is due at ``now`` (default: the clock); returns them.

        A group late by more than one interval is evaluated once, at its
        latest aligned time, and the skipped iterations are counted as missed
        (as Prometheus does).
        """
        now_ms = int((self.clock.now() if now is None else now) * 1000)
        due = [g for g in self.groups if g.next_eval_ms <= now_ms]
        for group in due:
            ts = group.eval_timestamp(now_ms)
            missed = (ts - group.next_eval_ms) // group.interval_ms
            if missed > 0:
                self.metrics.missed.labels(group.key).inc(missed)
            group.next_eval_ms = ts + group.interval_ms
        await asyncio.gather(*(self.evaluate_group(g, g.next_eval_ms - g.interval_ms) for g in due))
        return due

    async def evaluate(self, at: float | None = None) -> None:
        """Evaluate every group now (or at Unix time ``at``), whatever the schedule."""
        ts_ms = int((self.clock.now() if at is None else at) * 1000)
        for group in self.groups:
            await self.evaluate_group(group, ts_ms)

    # --- evaluation ---------------------------------------------------------------------

    async def evaluate_group(self, group: Group, ts_ms: int) -> None:
        async with self._eval_lock:
            started = time.perf_counter()
            to_send: list[tuple[str | None, Alert]] = []
            for rule in list(group.rules):
                self.metrics.evaluations.labels(group.key).inc()
                rule_started = time.perf_counter()
                try:
                    if rule.is_alert:
                        await self._eval_alerting(group, rule, ts_ms, to_send)
                    else:
                        await self._eval_recording(group, rule, ts_ms)
                except Exception as exc:  # noqa: BLE001 - reported per rule, like Prometheus
                    rule.health = "err"
                    rule.last_error = str(exc) or type(exc).__name__
                    self.metrics.failures.labels(group.key).inc()
                    log.warning(
                        "rule evaluation failed",
                        extra={"group": group.key, "rule": rule.spec.name, "error": str(exc)},
                    )
                else:
                    rule.health, rule.last_error = "ok", ""
                rule.last_evaluation = ts_ms / 1000
                rule.evaluation_time = time.perf_counter() - rule_started
            if to_send:
                await self._submit(to_send)
            await self._persist(group, ts_ms / 1000)
            group.last_evaluation = ts_ms / 1000
            group.evaluation_time = time.perf_counter() - started
            self.metrics.duration.labels(group.key).observe(group.evaluation_time)
            self.metrics.last_duration.labels(group.key).set(group.evaluation_time)
            self.metrics.last_evaluation.labels(group.key).set(ts_ms / 1000)

    async def _query(self, group: Group, rule: Rule, ts_ms: int) -> list[tuple[Labels, float]]:
        at = ts_ms - round(group.query_offset_s * 1000)
        result = await self.query_engine.instant(rule.spec.node, at)
        if isinstance(result, Scalar):
            return [((), result.v)]
        if isinstance(result, Vector):
            return [(s.labels, s.v) for s in result.samples]
        raise ValueError(f"rule result is a {result.result_type}, not a vector or scalar")

    async def _eval_recording(self, group: Group, rule: Rule, ts_ms: int) -> None:
        samples = await self._query(group, rule, ts_ms)
        out: dict[Labels, float] = {}
        for labels, value in samples:
            lab = {**dict(labels), **rule.spec.labels, "__name__": rule.spec.name}
            key = make_labels(lab)
            if key in out:
                raise ValueError(
                    "vector contains metrics with the same labelset after applying rule labels"
                )
            out[key] = value
        if group.limit and len(out) > group.limit:
            raise ValueError(f"exceeded limit of {group.limit} with {len(out)} series")
        await self._write_rule_output(rule, out, ts_ms)

    async def _eval_alerting(
        self, group: Group, rule: Rule, ts_ms: int, to_send: list[tuple[str | None, Alert]]
    ) -> None:
        samples = await self._query(group, rule, ts_ms)
        ts = ts_ms / 1000
        spec = rule.spec
        found: list[st.ActiveAlert] = []
        fps: set[str] = set()
        for labels, value in samples:
            data = TemplateData(
                dict(labels),
                value,
                self.options.external_labels,
                self.options.external_url,
            )
            lab = {k: v for k, v in labels if k != "__name__"}
            for name, tmpl in spec.label_templates.items():
                expanded = render_or_error(tmpl, data)
                if expanded:
                    lab[name] = expanded
                else:
                    lab.pop(name, None)
            lab["alertname"] = spec.name
            annotations = {
                k: render_or_error(t, data) for k, t in spec.annotation_templates.items()
            }
            alert = st.ActiveAlert(lab, annotations, value, st.AlertState.PENDING, ts)
            if alert.fingerprint in fps:
                raise ValueError(
                    "vector contains metrics with the same labelset after applying alert labels"
                )
            fps.add(alert.fingerprint)
            found.append(alert)
        retention = self.options.resolved_retention_s
        if isinstance(rule.callback, Callable) and rule.cooldown_s > retention:  # type: ignore[arg-type]
            retention = rule.cooldown_s  # remember the last notice for the whole cooldown
        count = st.update_alerts(
            rule.active,
            found,
            ts,
            for_s=spec.for_s,
            keep_firing_for_s=spec.keep_firing_for_s,
            retention_s=retention,
        )
        if group.limit and count > group.limit:
            rule.active.clear()
            raise ValueError(f"exceeded limit of {group.limit} with {count} alerts")
        # Prometheus's ValidUntil: a receiver that stops hearing about a firing
        # alert considers it resolved after this.
        valid_until = ts + 4 * max(group.interval_s, self.options.resend_delay_s)
        out: dict[Labels, float] = {}
        for alert in rule.active.values():
            if alert.state == st.AlertState.INACTIVE:
                continue
            alert.valid_until = valid_until
            base = dict(alert.labels)
            out[make_labels({**base, "__name__": "ALERTS", "alertstate": alert.state.value})] = 1.0
            out[make_labels({**base, "__name__": "ALERTS_FOR_STATE"})] = float(
                math.floor(alert.active_at)
            )
        await self._write_rule_output(rule, out, ts_ms)
        if rule.callback is not None and not isinstance(rule.callback, str):
            await self._run_callbacks(rule, ts)
        else:
            url = self._generator_url(spec.expr)
            for alert in rule.active.values():
                if alert.state == st.AlertState.PENDING:
                    continue
                if alert.state == st.AlertState.INACTIVE and (
                    alert.resolved_at is None
                    or ts - alert.resolved_at > self.options.resolved_retention_s
                ):
                    continue
                receiver = rule.callback if isinstance(rule.callback, str) else None
                payload = alert.to_alert(
                    external_labels=self.options.external_labels, generator_url=url
                )
                to_send.append((receiver, payload))

    def _generator_url(self, expr: str) -> str:
        if not self.options.external_url:
            return ""
        return f"{self.options.external_url}/graph?g0.expr={quote(expr, safe='')}&g0.tab=1"

    async def _write_rule_output(self, rule: Rule, out: dict[Labels, float], ts_ms: int) -> None:
        rows = [(labels, ts_ms, v) for labels, v in out.items()]
        rows.extend((labels, ts_ms, STALE_NAN) for labels in rule.series - out.keys())
        rule.series = set(out)
        if rows:
            await self._write(rows)

    async def _write(self, rows: list[tuple[Labels, int, float]]) -> None:
        if self._writer is not None:
            await self._writer(rows)
            return
        ids, refused = await self.store.resolve_series([r[0] for r in rows])
        keep = [i for i in range(len(rows)) if i not in refused]
        for i, reason in refused.items():
            log.warning("rule output refused: %s: %s", format_labels(rows[i][0]), reason)
        if keep:
            result = await self.store.append(
                [ids[i] for i in keep],
                [rows[i][1] for i in keep],
                [rows[i][2] for i in keep],
                source="rule",
            )
            for r in result.rejected:
                log.debug("rule output rejected: %s", r)

    def dispatcher(self) -> AlertSink | None:
        sink = self._dispatcher
        if sink is not None and not hasattr(sink, "submit"):
            return sink()
        return sink

    async def _submit(self, batch: list[tuple[str | None, Alert]]) -> None:
        """One ``submit`` per receiver: rule-file alerts (routed) and each addressed one."""
        sink = self.dispatcher()
        if sink is None:
            return
        by_receiver: dict[str | None, list[Alert]] = {}
        for receiver, alert in batch:
            by_receiver.setdefault(receiver, []).append(alert)
        for receiver, alerts in by_receiver.items():
            try:
                if receiver is None:
                    await sink.submit(alerts)
                else:
                    await sink.submit(alerts, receiver=receiver)
            except Exception:
                log.exception("the alert dispatcher failed")

    async def _run_callbacks(self, rule: Rule, ts: float) -> None:
        url = self._generator_url(rule.spec.expr)
        for alert in rule.active.values():
            notice: str | None = None
            if alert.state == st.AlertState.FIRING and alert.notified not in (
                "firing",
                "suppressed",
            ):
                last = alert.last_notice_at
                if rule.cooldown_s > 0 and last is not None and ts - last < rule.cooldown_s:
                    alert.notified = "suppressed"
                    continue
                notice = "firing"
            elif alert.state == st.AlertState.INACTIVE and alert.notified == "firing":
                notice = "resolved"
            if notice is None:
                continue
            payload = alert.to_alert(
                external_labels=self.options.external_labels, generator_url=url
            )
            alert.notified = notice
            if notice == "firing":
                alert.last_notice_at = ts
            await self._call(rule, payload)

    async def _call(self, rule: Rule, alert: Alert) -> None:
        callback = rule.callback
        assert callback is not None and not isinstance(callback, str)
        try:
            async with asyncio.timeout(CALLBACK_TIMEOUT_S):
                result = callback(alert)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:  # noqa: BLE001 - user code; counted and logged
            self.metrics.callback_failures.labels(rule.spec.name).inc()
            log.error("define_alert callback of %s failed: %r", rule.spec.name, exc)

    async def _persist(self, group: Group, now: float) -> None:
        states = {r.key: r.active for r in group.rules if r.is_alert}
        changed = self._snapshot.changed(states)
        if not changed:
            return
        copy = {k: dict(v) for k, v in changed.items()}
        await self.store._w.job(lambda conn: st.save_rules(conn, copy, now))
        self._snapshot.mark(changed)

    # --- views for the API ------------------------------------------------------------------

    def active_alerts(self) -> list[tuple[Rule, st.ActiveAlert]]:
        return [
            (rule, a)
            for g in self.groups
            for rule in g.rules
            for a in rule.active.values()
            if a.state != st.AlertState.INACTIVE
        ]
