"""Alert state machine, persistence across restarts and define_alert, with a manual clock.

Time never passes by itself here: every evaluation is at a timestamp the test
names, so ``for``, ``keep_firing_for``, resolve retention and cooldowns are
checked to the second without sleeping.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.alerting.engine import AlertingOptions, RuleEngine, threshold_expr
from agent.alerting.model import Alert
from agent.alerting.rules import parse_rule_file
from agent.alerting.state import (
    RESOLVED_RETENTION_S,
    ActiveAlert,
    AlertState,
    update_alerts,
)
from agent.clock import ManualClock
from agent.model import Labels, Matcher, is_stale_nan
from agent.storage import Store
from tests.conftest import open_store

T0 = 1_700_000_040.0  # a whole minute


class FakeDispatcher:
    """Records what the engine submits, as the real Dispatcher would receive it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, list[Alert]]] = []

    async def submit(self, alerts: list[Alert], receiver: str | None = None) -> None:
        self.calls.append((receiver, list(alerts)))

    def take(self) -> list[tuple[str | None, list[Alert]]]:
        out, self.calls = self.calls, []
        return out


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


async def put(store: Store, t: float, value: float, name: str = "load", **labels: str) -> None:
    [sid] = await store.get_or_create_series([lab(name, **labels)])
    res = await store.append([sid], [int(t * 1000)], [value], source="test")
    assert res.accepted == 1


async def series_values(store: Store, name: str, **labels: str) -> dict[Labels, list[float]]:
    matchers = [Matcher.of("__name__", "=", name)]
    matchers += [Matcher.of(k, "=", v) for k, v in labels.items()]
    found = await store.select(matchers, 0, 2**62)
    return {s.labels: np.asarray(s.values).tolist() for s in found}


RULES = """
groups:
  - name: load
    interval: 1m
    rules:
      - alert: HighLoad
        expr: load > 1
        for: 2m
        labels: {severity: page}
        annotations:
          summary: "{{ $labels.host }} load is {{ $value }}"
"""


def make_engine(
    store: Store, clock: ManualClock, rules: str = RULES, **kw: Any
) -> tuple[RuleEngine, FakeDispatcher]:
    disp = FakeDispatcher()
    engine = RuleEngine(store, dispatcher=disp, clock=clock, **kw)
    groups, errors = parse_rule_file(rules, "rules/test.yml")
    assert errors == []
    engine.set_groups(groups)
    return engine, disp


def only_alert(engine: RuleEngine) -> ActiveAlert:
    [rule] = [r for g in engine.groups for r in g.rules]
    [alert] = rule.active.values()
    return alert


# --- the pure state machine --------------------------------------------------------------


def found(value: float = 1.0, ts: float = T0) -> list[ActiveAlert]:
    return [ActiveAlert({"alertname": "A"}, {}, value, AlertState.PENDING, ts)]


def test_for_zero_fires_in_the_first_evaluation() -> None:
    active: dict[str, ActiveAlert] = {}
    update_alerts(active, found(), T0, for_s=0, keep_firing_for_s=0)
    [a] = active.values()
    assert a.state == AlertState.FIRING and a.fired_at == T0 and a.active_at == T0


def test_pending_dropped_when_condition_goes_then_restarts_its_timer() -> None:
    active: dict[str, ActiveAlert] = {}
    update_alerts(active, found(ts=T0), T0, for_s=120, keep_firing_for_s=0)
    update_alerts(active, [], T0 + 60, for_s=120, keep_firing_for_s=0)
    assert active == {}  # pending alerts are forgotten, never "resolved"
    update_alerts(active, found(ts=T0 + 120), T0 + 120, for_s=120, keep_firing_for_s=0)
    update_alerts(active, found(ts=T0 + 180), T0 + 180, for_s=120, keep_firing_for_s=0)
    [a] = active.values()
    assert a.state == AlertState.PENDING and a.active_at == T0 + 120


def test_resolved_alert_is_retained_then_forgotten_and_a_return_is_a_new_alert() -> None:
    active: dict[str, ActiveAlert] = {}
    update_alerts(active, found(), T0, for_s=0, keep_firing_for_s=0)
    update_alerts(active, [], T0 + 60, for_s=0, keep_firing_for_s=0)
    [a] = active.values()
    assert a.state == AlertState.INACTIVE and a.resolved_at == T0 + 60
    update_alerts(active, [], T0 + 60 + RESOLVED_RETENTION_S, for_s=0, keep_firing_for_s=0)
    assert a.fingerprint in active  # exactly 15m: still kept (Prometheus uses ">")
    update_alerts(active, found(ts=T0 + 1200), T0 + 1200, for_s=0, keep_firing_for_s=0)
    [b] = active.values()
    assert b is not a and b.active_at == T0 + 1200 and b.state == AlertState.FIRING
    update_alerts(active, [], T0 + 1260, for_s=0, keep_firing_for_s=0)
    update_alerts(active, [], T0 + 1261 + RESOLVED_RETENTION_S, for_s=0, keep_firing_for_s=0)
    assert active == {}


def test_keep_firing_for_counts_from_the_first_missing_evaluation() -> None:
    active: dict[str, ActiveAlert] = {}
    kw = {"for_s": 0.0, "keep_firing_for_s": 120.0}
    update_alerts(active, found(), T0, **kw)
    update_alerts(active, [], T0 + 60, **kw)
    [a] = active.values()
    assert a.state == AlertState.FIRING and a.keep_firing_since == T0 + 60
    update_alerts(active, found(), T0 + 120, **kw)  # back: the keep-firing clock resets
    assert a.keep_firing_since is None and a.fired_at == T0
    update_alerts(active, [], T0 + 180, **kw)
    update_alerts(active, [], T0 + 240, **kw)
    assert a.state == AlertState.FIRING
    update_alerts(active, [], T0 + 300, **kw)
    assert a.state == AlertState.INACTIVE and a.resolved_at == T0 + 300


# --- the engine over a real store ----------------------------------------------------------


async def test_pending_firing_resolved_with_alerts_series(store: Store) -> None:
    clock = ManualClock(T0)
    engine, disp = make_engine(store, clock)
    await engine.start(run=False)
    for i, v in enumerate([2, 3, 4, 0]):
        await put(store, T0 + 60 * i, v, host="a")

    await engine.evaluate(T0)
    a = only_alert(engine)
    assert (a.state, a.active_at, a.value) == (AlertState.PENDING, T0, 2.0)
    assert a.labels == {"alertname": "HighLoad", "host": "a", "severity": "page"}
    assert a.annotations == {"summary": "a load is 2"}
    assert disp.take() == []  # pending alerts are never sent

    await engine.evaluate(T0 + 60)
    assert only_alert(engine).state == AlertState.PENDING
    await engine.evaluate(T0 + 120)
    a = only_alert(engine)
    assert a.state == AlertState.FIRING and a.fired_at == T0 + 120
    [(receiver, [sent])] = disp.take()
    assert receiver is None
    assert sent.status == "firing" and sent.starts_at == T0 + 120 and sent.value == 4.0
    assert sent.ends_at == T0 + 120 + 4 * 60  # Prometheus's ValidUntil
    assert sent.annotations == {"summary": "a load is 4"}

    await engine.evaluate(T0 + 180)
    [(_, [resolved])] = disp.take()
    assert resolved.status == "resolved" and resolved.ends_at == T0 + 180
    assert resolved.starts_at == T0 + 120 and resolved.fingerprint == sent.fingerprint

    alerts = await series_values(store, "ALERTS")
    pending = lab("ALERTS", alertname="HighLoad", alertstate="pending", host="a", severity="page")
    firing = lab("ALERTS", alertname="HighLoad", alertstate="firing", host="a", severity="page")
    assert alerts[pending][:2] == [1.0, 1.0] and is_stale_nan(alerts[pending][2])
    assert alerts[firing][0] == 1.0 and is_stale_nan(alerts[firing][1])
    for_state = await series_values(store, "ALERTS_FOR_STATE")
    [values] = for_state.values()
    assert values[:3] == [T0, T0, T0] and is_stale_nan(values[3])

    # resolved alerts are re-sent for 15 minutes, then forgotten
    await engine.evaluate(T0 + 180 + RESOLVED_RETENTION_S)
    [(_, [again])] = disp.take()
    assert again.status == "resolved"
    await engine.evaluate(T0 + 240 + RESOLVED_RETENTION_S)
    assert disp.take() == [] and engine.groups[0].rules[0].active == {}


async def test_flapping_pending_alert_never_fires(store: Store) -> None:
    clock = ManualClock(T0)
    engine, disp = make_engine(store, clock)
    await engine.start(run=False)
    for i, v in enumerate([2, 0, 2, 0, 2, 2]):
        await put(store, T0 + 60 * i, v, host="a")
        await engine.evaluate(T0 + 60 * i)
    assert disp.take() == []  # each dip restarted the for timer
    a = only_alert(engine)
    assert a.active_at == T0 + 240 and a.state == AlertState.PENDING
    await put(store, T0 + 360, 2, host="a")
    await engine.evaluate(T0 + 360)
    assert only_alert(engine).state == AlertState.FIRING
    assert len(disp.take()) == 1


async def test_keep_firing_for_in_rules(store: Store) -> None:
    rules = RULES.replace("for: 2m", "for: 0s\n        keep_firing_for: 2m")
    clock = ManualClock(T0)
    engine, disp = make_engine(store, clock, rules)
    await engine.start(run=False)
    await put(store, T0, 5, host="a")
    await engine.evaluate(T0)
    await put(store, T0 + 60, 0, host="a")
    for dt in (60, 120):
        await engine.evaluate(T0 + dt)
        assert only_alert(engine).state == AlertState.FIRING
    await engine.evaluate(T0 + 180)
    assert only_alert(engine).state == AlertState.INACTIVE
    statuses = [alerts[0].status for _, alerts in disp.take()]
    assert statuses == ["firing", "firing", "firing", "resolved"]


async def test_group_limit_and_duplicate_labelsets_are_rule_errors(store: Store) -> None:
    rules = """
groups:
  - name: g
    limit: 1
    rules:
      - alert: Many
        expr: load > 0
      - alert: Same
        expr: load > 0
        labels: {host: fixed}
"""
    engine, _ = make_engine(store, ManualClock(T0), rules)
    await engine.start(run=False)
    await put(store, T0, 1, host="a")
    await put(store, T0, 1, host="b")
    await engine.evaluate(T0)
    many, same = engine.groups[0].rules
    assert many.health == "err" and many.last_error == "exceeded limit of 1 with 2 alerts"
    assert many.active == {}
    assert same.health == "err" and "same labelset after applying alert labels" in same.last_error
    text = engine.registry.get_sample_value(
        "tsagent_rule_evaluation_failures_total", {"rule_group": "rules/test.yml;g"}
    )
    assert text == 2.0


# --- restarts --------------------------------------------------------------------------------


async def restart(
    tmp_path: Path, store: Store, engine: RuleEngine, clock: ManualClock
) -> tuple[Store, RuleEngine, FakeDispatcher]:
    await engine.stop()
    await store.close()
    store2 = await open_store(tmp_path)
    engine2, disp2 = make_engine(store2, clock)
    await engine2.start(run=False)
    return store2, engine2, disp2


async def test_restart_while_pending_keeps_the_for_timer(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = await open_store(tmp_path)
    engine, _ = make_engine(store, clock)
    await engine.start(run=False)
    for i in range(4):
        await put(store, T0 + 60 * i, 2, host="a")
    await engine.evaluate(T0)
    await engine.evaluate(T0 + 60)
    store, engine, disp = await restart(tmp_path, store, engine, clock)
    try:
        assert only_alert(engine).active_at == T0  # restored before any evaluation
        await engine.evaluate(T0 + 120)  # 2m after the original active_at: fires now
        a = only_alert(engine)
        assert a.state == AlertState.FIRING and a.active_at == T0
        assert [c[1][0].starts_at for c in disp.take()] == [T0 + 120]
    finally:
        await engine.stop()
        await store.close()


async def test_restart_while_firing_keeps_identity(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = await open_store(tmp_path)
    engine, disp = make_engine(store, clock)
    await engine.start(run=False)
    for i in range(5):
        await put(store, T0 + 60 * i, 2, host="a")
    for i in range(3):
        await engine.evaluate(T0 + 60 * i)
    [(_, [before])] = disp.take()
    store, engine, disp = await restart(tmp_path, store, engine, clock)
    try:
        a = only_alert(engine)
        assert a.state == AlertState.FIRING and a.fired_at == T0 + 120
        await engine.evaluate(T0 + 180)
        [(_, [after])] = disp.take()
        # Same alert for the dispatcher: same fingerprint and starts_at, so it knows it was sent.
        assert (after.fingerprint, after.starts_at, after.status) == (
            before.fingerprint,
            before.starts_at,
            "firing",
        )
        # ALERTS continues without a pending phase
        alerts = await series_values(store, "ALERTS", alertstate="firing")
        [values] = alerts.values()
        assert values == [1.0, 1.0]
    finally:
        await engine.stop()
        await store.close()


async def test_restart_after_resolve_still_sends_the_resolve(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = await open_store(tmp_path)
    engine, disp = make_engine(store, clock)
    await engine.start(run=False)
    for i, v in enumerate([2, 2, 2, 0]):
        await put(store, T0 + 60 * i, v, host="a")
    for i in range(4):
        await engine.evaluate(T0 + 60 * i)
    assert [c[1][0].status for c in disp.take()] == ["firing", "resolved"]
    store, engine, disp = await restart(tmp_path, store, engine, clock)
    try:
        a = only_alert(engine)
        assert a.state == AlertState.INACTIVE and a.resolved_at == T0 + 180
        await engine.evaluate(T0 + 240)
        [(_, [resolved])] = disp.take()
        assert resolved.status == "resolved" and resolved.starts_at == T0 + 120
        assert resolved.ends_at == T0 + 180
        await engine.evaluate(T0 + 181 + RESOLVED_RETENTION_S)
        assert disp.take() == []
    finally:
        await engine.stop()
        await store.close()


async def test_reload_keeps_state_of_same_rules_and_retires_removed_ones(store: Store) -> None:
    clock = ManualClock(T0)
    engine, _ = make_engine(store, clock)
    await engine.start(run=False)
    await put(store, T0, 2, host="a")
    await engine.evaluate(T0)
    edited = RULES.replace("expr: load > 1", "expr: load > 1.5")
    engine.set_groups(parse_rule_file(edited, "rules/test.yml")[0])
    assert only_alert(engine).active_at == T0  # same name and labels: state carried over
    clock.set(T0 + 30)
    engine.set_groups([])
    await engine.stop()  # waits for the clean-up of the removed rule
    saved = await store._w.job(lambda c: c.execute("SELECT * FROM alert_state").fetchall())
    assert saved == []
    alerts = await series_values(store, "ALERTS")
    [values] = alerts.values()
    assert values[0] == 1.0 and is_stale_nan(values[-1])


# --- scheduling ------------------------------------------------------------------------------


async def test_tick_evaluates_on_aligned_timestamps_and_counts_missed(store: Store) -> None:
    clock = ManualClock(T0)
    engine, _ = make_engine(store, clock)
    await engine.start(run=False)
    group = engine.groups[0]
    offset = group.offset_ms()
    first = group.next_eval_ms
    assert first % 60_000 == offset and T0 * 1000 < first <= T0 * 1000 + 60_000
    assert await engine.tick(first / 1000 - 0.001) == []
    assert await engine.tick(first / 1000 + 1) == [group]
    assert group.last_evaluation == first / 1000
    await engine.tick(first / 1000 + 60 * 3 + 5)  # two evaluations were skipped
    assert group.last_evaluation == first / 1000 + 180
    missed = engine.registry.get_sample_value(
        "tsagent_rule_group_iterations_missed_total", {"rule_group": group.key}
    )
    assert missed == 2.0


# --- define_alert ----------------------------------------------------------------------------


async def test_define_alert_callback_fires_once_and_resolves_once(store: Store) -> None:
    clock = ManualClock(T0)
    engine = RuleEngine(store, clock=clock, options=AlertingOptions(evaluation_interval_s=60))
    await engine.start(run=False)
    [sid] = await store.get_or_create_series([lab("temp", room="a")])
    got: list[Alert] = []

    async def notify(alert: Alert) -> None:
        got.append(alert)

    engine.define_alert("hot", sid, 30, ">", notify, for_="1m")
    for i, v in enumerate([35, 36, 37, 38, 20, 20]):
        await store.append([sid], [int((T0 + 60 * i) * 1000)], [v])
        await engine.evaluate(T0 + 60 * i)
    assert [(a.status, a.starts_at, a.value) for a in got] == [
        ("firing", T0 + 60, 36.0),
        ("resolved", T0 + 60, 38.0),
    ]
    assert got[0].labels == {"alertname": "hot", "room": "a"}  # __name__ dropped


async def test_define_alert_cooldown_suppresses_flapping(store: Store) -> None:
    clock = ManualClock(T0)
    engine = RuleEngine(store, clock=clock)
    await engine.start(run=False)
    got: list[tuple[str, float]] = []
    engine.define_alert(
        "low",
        'disk_free{mount="/"}',
        10,
        "<",
        lambda a: got.append((a.status, a.starts_at)),
        cooldown="10m",
    )
    values = [5, 50, 5, 50, 50, 50, 50, 50, 50, 50, 50, 5]
    for i, v in enumerate(values):
        await put(store, T0 + 60 * i, v, "disk_free", mount="/")
        await engine.evaluate(T0 + 60 * i)
    # fired at 0, resolved at 60; the re-fire at 120 is inside the cooldown (no notice,
    # and no resolve for it); the one at 660 is 11 minutes after the last notice.
    assert got == [("firing", T0), ("resolved", T0), ("firing", T0 + 660)]


async def test_define_alert_callback_state_survives_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = await open_store(tmp_path)
    engine = RuleEngine(store, clock=clock)
    await engine.start(run=False)
    got: list[str] = []
    engine.define_alert("up", "up", 1, "<", lambda a: got.append(a.status))
    await put(store, T0, 0, "up")
    await engine.evaluate(T0)
    await engine.stop()
    await store.close()
    store = await open_store(tmp_path)
    try:
        engine = RuleEngine(store, clock=clock)
        await engine.start(run=False)
        engine.define_alert("up", "up", 1, "<", lambda a: got.append(a.status))
        await put(store, T0 + 60, 0, "up")
        await engine.evaluate(T0 + 60)
        assert got == ["firing"]  # not notified again after the restart
        await put(store, T0 + 120, 1, "up")
        await engine.evaluate(T0 + 120)
        assert got == ["firing", "resolved"]
        await engine.stop()
    finally:
        await store.close()


async def test_define_alert_receiver_name_goes_to_dispatcher(store: Store) -> None:
    disp = FakeDispatcher()
    engine = RuleEngine(store, clock=ManualClock(T0), dispatcher=disp)
    await engine.start(run=False)
    engine.define_alert(
        "errors", 'errors_total{job="api"}', 0, "rate_of_change", "oncall", window="2m"
    )
    for i in range(4):
        await put(store, T0 + 30 * i, 10.0 * i, "errors_total", job="api")
    await engine.evaluate(T0 + 90)
    [(receiver, [alert])] = disp.take()
    assert receiver == "oncall" and alert.status == "firing"
    assert math.isclose(alert.value, 1 / 3)
    assert "receiver" not in alert.labels


async def test_define_alert_absent(store: Store) -> None:
    engine = RuleEngine(store, clock=ManualClock(T0))
    await engine.start(run=False)
    got: list[Alert] = []
    engine.define_alert("silent", 'heartbeat{job="x"}', "5m", "absent", got.append)
    await put(store, T0, 1, "heartbeat", job="x")
    await engine.evaluate(T0 + 60)
    assert got == []
    await engine.evaluate(T0 + 301)
    [alert] = got
    assert alert.labels == {"alertname": "silent", "job": "x"} and alert.value == 1.0


def test_threshold_expressions_and_validation() -> None:
    assert threshold_expr(None, 'x{a="b"}', 2, ">=") == 'x{a="b"} >= 2.0'
    assert threshold_expr(None, "x", -0.5, "rate_of_change", "1m") == "deriv(x[60000ms]) < -0.5"
    assert threshold_expr(None, "x", None, "absent", 90) == "absent_over_time(x[90000ms])"
    with pytest.raises(ValueError, match="condition must be one of"):
        threshold_expr(None, "x", 1, "~")
    with pytest.raises(ValueError, match="not a series selector"):
        threshold_expr(None, "sum(x)", 1, ">")
    with pytest.raises(ValueError, match="needs a numeric threshold"):
        threshold_expr(None, "x", None, ">")
    with pytest.raises(ValueError, match="needs a store"):
        threshold_expr(None, 3, 1, ">")


async def test_define_alert_unknown_series_id(store: Store) -> None:
    engine = RuleEngine(store, clock=ManualClock(T0))
    with pytest.raises(ValueError, match="unknown series id 99"):
        engine.define_alert("x", 99, 1, ">", print)


# --- with the real dispatcher ------------------------------------------------------------------


async def test_real_dispatcher_notifies_once_across_a_restart(tmp_path: Path) -> None:
    """Rule engine + Dispatcher sharing one store: a restart while firing sends nothing new.

    The alert is addressed to a dispatcher callback by name (define_alert's
    receiver form), so this also covers that path end to end.
    """
    from agent.alerting.dispatch import Dispatcher

    clock = ManualClock(T0)
    section: dict[str, Any] = {}
    got: list[list[tuple[str, float]]] = []

    def cb(alerts: list[Alert]) -> None:
        got.append([(a.status, a.starts_at) for a in alerts])

    async def boot(store: Store) -> tuple[RuleEngine, Dispatcher]:
        disp = Dispatcher(section, {}, store=store, clock=clock)
        disp.register_callback("cb", cb)
        await disp.start(background=False)
        engine = RuleEngine(store, dispatcher=disp, clock=clock)
        await engine.start(run=False)
        # a receiver name as the callback: alerts are addressed to it in the dispatcher
        engine.define_alert("HighLoad", "load", 1, ">", "cb", for_="2m")
        return engine, disp

    async def step(engine: RuleEngine, disp: Dispatcher, store: Store, i: int, v: float) -> None:
        clock.set(T0 + 60 * i)
        await put(store, clock.now(), v, host="a")
        await engine.evaluate()
        await disp.tick()

    store = await open_store(tmp_path)
    engine, disp = await boot(store)
    for i in range(4):
        await step(engine, disp, store, i, 5)
    assert got == [[("firing", T0 + 120)]]
    await engine.stop()
    await disp.stop()
    await store.close()

    store = await open_store(tmp_path)
    try:
        engine, disp = await boot(store)
        await step(engine, disp, store, 4, 5)
        await step(engine, disp, store, 5, 5)
        assert got == [[("firing", T0 + 120)]]  # nothing re-sent after the restart
        for i in range(6, 16):  # resolves at 6; the dispatcher's group_interval (5m) paces it
            await step(engine, disp, store, i, 0)
        assert got == [[("firing", T0 + 120)], [("resolved", T0 + 120)]]
        await engine.stop()
        await disp.stop()
    finally:
        await store.close()


async def test_agent_define_alert_on_a_library_agent(store: Store) -> None:
    """``Agent.define_alert`` starts one rule engine for a library agent, stopped by close()."""
    from agent.root import Agent

    got: list[str] = []
    agent = Agent(store)
    engine = await agent.rule_engine(clock=ManualClock(T0))
    try:
        rule = await agent.define_alert("big", "size", 10, ">=", lambda a: got.append(a.status))
        assert await agent.rule_engine() is engine and engine.python_group is not None
        assert engine.python_group.rules == [rule]
        await put(store, T0, 10, "size")
        await engine.evaluate(T0)
        assert got == ["firing"]
    finally:
        await agent.close()
    assert agent.rules is None and engine._task is None


async def test_failing_callback_and_template_errors_do_not_stop_evaluation(store: Store) -> None:
    engine = RuleEngine(store, clock=ManualClock(T0))
    await engine.start(run=False)

    def broken(alert: Alert) -> None:
        raise RuntimeError("receiver down")

    engine.define_alert(
        "x", "load", 1, ">", broken, annotations={"h": "{{ humanize $labels.host }}"}
    )
    await put(store, T0, 2, host="a")
    await engine.evaluate(T0)
    assert engine.python_group is not None
    [rule] = engine.python_group.rules
    [alert] = rule.active.values()
    assert rule.health == "ok" and alert.state == AlertState.FIRING
    assert alert.annotations == {"h": "<error expanding template: cannot convert 'a' to a number>"}
    failures = engine.registry.get_sample_value(
        "tsagent_alert_callback_failures_total", {"rule": "x"}
    )
    assert failures == 1.0
    assert alert.notified == "firing"  # not retried every evaluation
