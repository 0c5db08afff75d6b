"""The dispatcher: routing, grouping timers, dedup, resolves, callbacks, retries, restarts.

Time is a :class:`ManualClock`; nothing here sleeps. A recording notifier
stands in for the channels (those have their own tests against real servers).
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.alerting.dispatch import (
    Dispatcher,
    NotifyError,
    build_payload,
    redact_text,
    redact_url,
)
from agent.alerting.model import Alert
from agent.alerting.routing import RouteError, build_route, check_alerting, parse_matchers
from agent.clock import ManualClock
from agent.storage import Store
from tests.conftest import open_store

T0 = 1_700_000_000.0


class Recorder:
    """A notifier that records what it is given; ``fail`` makes the next calls raise."""

    name = "rec"

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        self.fail = 0
        self.fail_only = ""  # fail only notifications with this status
        self.error: Exception = RuntimeError("receiver down")

    async def notify(self, alerts: list[Mapping[str, Any]], receiver: Mapping[str, Any]) -> None:
        status = build_payload(alerts, receiver)["status"]
        if self.fail and self.fail_only in ("", status):
            self.fail -= 1
            raise self.error
        self.calls.append(([dict(a) for a in alerts], dict(receiver)))

    def payloads(self) -> list[dict[str, Any]]:
        return [build_payload(alerts, rcv) for alerts, rcv in self.calls]


class Direct(Recorder):
    """Like the alertmanager notifier: opts out of grouping."""

    name = "direct"
    grouping = False


def section(**route: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "receivers": [
            {"name": "team", "rec_configs": [{}]},
            {"name": "quiet", "rec_configs": [{"send_resolved": False}]},
            {"name": "db", "rec_configs": [{}]},
            {"name": "am", "direct_configs": [{}]},
        ],
        "route": {
            "receiver": "team",
            "group_by": ["alertname"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            **route,
        },
        "delivery": {"max_attempts": 4, "initial_backoff": "1s", "max_backoff": "10s"},
    }
    return base


def alert(name: str = "HighLatency", status: str = "firing", **labels: str) -> Alert:
    return Alert(
        labels={"alertname": name, **labels},
        annotations={"summary": f"{name} is bad"},
        status=status,  # type: ignore[arg-type]
        starts_at=T0,
        generator_url="http://tsagent/graph?g0.expr=up",
    )


def resolved(a: Alert, at: float) -> Alert:
    return Alert(a.labels, a.annotations, "resolved", a.starts_at, at, a.generator_url)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


async def make(
    clock: ManualClock,
    rec: Recorder,
    cfg: dict[str, Any] | None = None,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
) -> Dispatcher:
    d = Dispatcher(
        cfg or section(),
        {"rec": rec, "direct": Direct()},
        store=store,
        clock=clock,
        registry=registry,
    )
    await d.start(background=False)
    return d


async def step(d: Dispatcher, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    await d.tick()


# --- routing ------------------------------------------------------------------------


def test_matchers_parse_like_alertmanager() -> None:
    ms = parse_matchers(['severity=~"crit|page"', "team = db", 'env!="prod"', "{a=\"1\", b!~'x'}"])
    assert [(m.name, m.op.value, m.value) for m in ms] == [
        ("severity", "=~", "crit|page"),
        ("team", "=", "db"),
        ("env", "!=", "prod"),
        ("a", "=", "1"),
        ("b", "!~", "'x'"),
    ]
    assert ms[0].matches("crit") and not ms[0].matches("critical")  # anchored
    with pytest.raises(ValueError, match="cannot parse matcher"):
        parse_matchers(["no operator here"])
    with pytest.raises(ValueError, match="invalid regex"):
        parse_matchers(['a=~"("'])


def test_route_tree_first_match_continue_and_inheritance() -> None:
    root = build_route(
        {
            "receiver": "team",
            "group_by": ["alertname"],
            "group_wait": "10s",
            "routes": [
                {"matchers": ['team="db"'], "receiver": "db", "continue": True},
                {"matchers": ['severity=~"crit|page"'], "receiver": "pager", "group_by": ["..."]},
                {"matchers": ['severity="crit"'], "receiver": "never"},
            ],
        }
    )
    hit = root.match({"alertname": "X", "team": "db", "severity": "crit"})
    assert [r.options.receiver for r in hit] == ["db", "pager"]  # continue, then first match
    assert hit[1].options.group_wait == 10.0  # inherited
    assert hit[1].options.group_labels({"alertname": "X", "severity": "crit"}) == {
        "alertname": "X",
        "severity": "crit",
    }
    assert [r.options.receiver for r in root.match({"alertname": "Y"})] == ["team"]
    assert hit[0].group_key({"alertname": "X"}) == '{}/{team="db"}:{alertname="X"}'
    assert root.group_key({}) == "{}:{}"


def test_route_and_receiver_problems_name_their_keys() -> None:
    errs = check_alerting(
        {
            "receivers": [{"name": "a", "rec_configs": [{}]}, {"name": "a"}, {"name": "b", "x": 1}],
            "route": {"receiver": "a"},
        }
    )
    assert any("receivers[1].name: duplicate" in e for e in errs)
    assert any("receivers[2].x: unknown key" in e for e in errs)
    errs = check_alerting(
        {
            "receivers": [{"name": "a"}],
            "route": {"receiver": "a", "routes": [{"receiver": "zz", "matchers": ["x=1"]}]},
        }
    )
    assert errs == ["alerting.route.routes[0].receiver: unknown receiver 'zz'; configured: a"]
    with pytest.raises(RouteError, match=r"alerting.route.routes\[0\].matchers"):
        build_route({"routes": [{"matchers": ['a=~"["']}]})
    with pytest.raises(RouteError, match="root route matches every alert"):
        build_route({"matchers": ["a=b"]})


# --- grouping timers ------------------------------------------------------------------


async def test_group_wait_batches_then_group_interval_then_repeat(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec)
    a = alert(instance="a")
    await d.submit([a])
    await step(d, clock, 10)
    b = alert(instance="b")
    await d.submit([a, b])
    await step(d, clock, 19)  # t0+29: still inside group_wait
    assert rec.calls == []
    await step(d, clock, 1)  # t0+30
    assert len(rec.calls) == 1
    p = rec.payloads()[0]
    assert p["status"] == "firing" and p["receiver"] == "team"
    assert p["groupKey"] == '{}:{alertname="HighLatency"}'
    assert p["groupLabels"] == {"alertname": "HighLatency"}
    assert [x["labels"]["instance"] for x in p["alerts"]] == ["a", "b"]
    assert p["commonLabels"] == {"alertname": "HighLatency"}
    assert p["commonAnnotations"] == {"summary": "HighLatency is bad"}

    # a new alert in the group waits for group_interval, not group_wait
    c = alert(instance="c")
    await d.submit([a, b, c])
    for _ in range(29):
        await step(d, clock, 10)  # t0+320
        await d.submit([a, b, c])
    assert len(rec.calls) == 1
    await step(d, clock, 10)  # t0+330 = first flush + group_interval
    assert len(rec.calls) == 2
    assert len(rec.calls[1][0]) == 3

    # unchanged: nothing at each group_interval until repeat_interval (4h) has passed
    for _ in range(47):
        await step(d, clock, 300)
        await d.submit([a, b, c])
    assert len(rec.calls) == 2
    await step(d, clock, 300)  # 48 * 5m = 4h after the second notification
    assert len(rec.calls) == 3


async def test_resolve_is_sent_once_and_the_group_is_forgotten(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec)
    a, b = alert(instance="a"), alert(instance="b")
    await d.submit([a, b])
    await step(d, clock, 30)
    assert len(rec.calls) == 1
    await step(d, clock, 60)
    await d.submit([resolved(a, clock.now()), b])  # a resolves, b keeps firing
    await step(d, clock, 240)  # next group_interval tick
    assert len(rec.calls) == 2
    statuses = {x["labels"]["instance"]: x["status"] for x in rec.calls[1][0]}
    assert statuses == {"a": "resolved", "b": "firing"}
    assert rec.payloads()[1]["status"] == "firing"
    await d.submit([b])
    await step(d, clock, 300)
    assert len(rec.calls) == 2  # resolved alert reported once, not again
    await d.submit([resolved(b, clock.now())])
    await step(d, clock, 300)
    assert len(rec.calls) == 3
    final = rec.payloads()[2]
    assert final["status"] == "resolved" and [x["status"] for x in final["alerts"]] == ["resolved"]
    assert d.next_due() is None  # no groups left, nothing pending
    for _ in range(20):
        await step(d, clock, 300)
    assert len(rec.calls) == 3


async def test_send_resolved_false_skips_resolves_but_not_new_firings(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec, section(receiver="quiet"))
    a = alert()
    await d.submit([a])
    await step(d, clock, 30)
    await d.submit([resolved(a, clock.now())])
    await step(d, clock, 300)
    assert len(rec.calls) == 1
    await d.submit([a])  # fires again: a new group, told after group_wait
    await step(d, clock, 30)
    assert len(rec.calls) == 2 and rec.calls[1][0][0]["status"] == "firing"


async def test_firing_alert_whose_ends_at_passed_counts_as_resolved(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec)
    a = alert()
    a.ends_at = T0 + 200  # as Prometheus sets it; the engine then goes quiet
    await d.submit([a])
    await step(d, clock, 30)
    await step(d, clock, 300)
    assert [c[0][0]["status"] for c in rec.calls] == ["firing", "resolved"]


async def test_done_when_one_notification_per_group_and_one_resolve(
    clock: ManualClock, rec: Recorder
) -> None:
    """Two rule groups evaluated every 15s for an hour: each dispatcher group is
    notified once, and resolved once, however many evaluations happen."""
    d = await make(clock, rec, section(repeat_interval="12h"))
    x = [alert("DiskFull", instance=str(i)) for i in range(3)]
    y = [alert("HighLatency", instance="api")]
    for _ in range(240):
        await d.submit(x)
        await d.submit(y)
        await step(d, clock, 15)
    await d.submit([resolved(a, clock.now()) for a in x])
    await d.submit([resolved(a, clock.now()) for a in y])
    for _ in range(240):
        await d.submit([])
        await step(d, clock, 15)
    by_group: dict[str, list[str]] = {}
    for p in rec.payloads():
        by_group.setdefault(p["groupKey"], []).append(p["status"])
    assert by_group == {
        '{}:{alertname="DiskFull"}': ["firing", "resolved"],
        '{}:{alertname="HighLatency"}': ["firing", "resolved"],
    }


async def test_routes_fan_out_with_continue_and_group_by_all(
    clock: ManualClock, rec: Recorder
) -> None:
    cfg = section(
        routes=[
            {"matchers": ['team="db"'], "receiver": "db", "continue": True, "group_by": ["..."]},
            {"matchers": ['severity="page"'], "receiver": "quiet", "group_wait": "0s"},
        ]
    )
    d = await make(clock, rec, cfg)
    await d.submit(
        [
            alert("A", team="db", severity="page", instance="1"),
            alert("A", team="db", severity="page", instance="2"),
            alert("B"),
        ]
    )
    await d.tick()  # group_wait 0 for the pager route
    assert [(c[1]["name"], len(c[0])) for c in rec.calls] == [("quiet", 2)]
    await step(d, clock, 30)
    got = sorted((c[1]["name"], c[1]["group_key"]) for c in rec.calls[1:])
    assert got == [
        ("db", '{}/{team="db"}:{alertname="A", instance="1", severity="page", team="db"}'),
        ("db", '{}/{team="db"}:{alertname="A", instance="2", severity="page", team="db"}'),
        ("team", '{}:{alertname="B"}'),
    ]


# --- callbacks and addressing ------------------------------------------------------------


async def test_callbacks_sync_and_async_by_name_and_label(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec)
    got_sync: list[list[Alert]] = []
    got_async: list[list[Alert]] = []

    async def acb(alerts: list[Alert]) -> None:
        got_async.append(alerts)

    d.register_callback("py-sync", got_sync.append)
    d.register_callback("py-async", acb)
    with pytest.raises(ValueError, match="configured receiver"):
        d.register_callback("team", got_sync.append)
    a = alert("Threshold", series="42")
    await d.submit([a], receiver="py-sync")
    labelled = alert("Other", __receiver__="py-async")
    await d.submit([labelled])
    await d.tick()  # addressed alerts have no group_wait
    assert [x.labels for x in got_sync[0]] == [a.labels]
    assert got_sync[0][0].status == "firing" and got_sync[0][0].starts_at == T0
    assert got_async[0][0].labels == {"alertname": "Other"}  # reserved label removed
    assert rec.calls == []  # not routed through the tree as well
    await d.submit([resolved(a, clock.now() + 1)], receiver="py-sync")
    await step(d, clock, 300)
    assert [[x.status for x in call] for call in got_sync] == [["firing"], ["resolved"]]
    assert got_sync[1][0].ends_at == T0 + 1


async def test_route_reaches_a_registered_callback_through_callback_configs(
    clock: ManualClock, rec: Recorder
) -> None:
    """A receiver's ``callback_configs`` entry: the route tree (not a direct submit)
    delivers the group to a registered callback, grouped and timed like the receiver's
    other notifiers, once when it fires and once when it resolves."""
    cfg = section(routes=[{"matchers": ['team="py"'], "receiver": "py-team"}])
    cfg["receivers"].append(
        {"name": "py-team", "rec_configs": [{}], "callback_configs": [{"name": "py"}]}
    )
    d = await make(clock, rec, cfg)
    got: list[list[Alert]] = []

    async def cb(alerts: list[Alert]) -> None:
        got.append(alerts)

    d.register_callback("py", cb)
    a, b = alert("Hot", team="py", room="lab"), alert("Hot", team="py", room="office")
    other = alert("Elsewhere")
    for _ in range(20):  # 5 minutes of 15s evaluations
        await d.submit([a, b, other])
        await step(d, clock, 15)
    assert [sorted(x.labels["room"] for x in call) for call in got] == [["lab", "office"]]
    assert all(x.status == "firing" and x.starts_at == T0 for x in got[0])
    assert len([c for c in rec.calls if c[1]["name"] == "py-team"]) == 1  # same timing
    for _ in range(20):
        await d.submit([resolved(a, clock.now()), resolved(b, clock.now()), other])
        await step(d, clock, 15)
    assert [[x.status for x in call] for call in got] == [
        ["firing", "firing"],
        ["resolved", "resolved"],
    ]
    assert {x.labels["alertname"] for call in got for x in call} == {"Hot"}
    assert d.pending == []


async def test_callback_configs_unregistered_is_retried_and_checked(
    clock: ManualClock, rec: Recorder
) -> None:
    cfg = section()
    cfg["receivers"][0]["callback_configs"] = [{"name": "later"}]
    d = await make(clock, rec, cfg)
    await d.submit([alert()])
    await step(d, clock, 30)
    assert [(p.notifier, p.attempts) for p in d.pending] == [("callback", 1)]
    assert "no callback registered as 'later'" in d.pending[0].last_error
    got: list[list[Alert]] = []
    d.register_callback("later", got.append)
    await step(d, clock, 1)  # the retry after the first backoff
    assert len(got) == 1 and d.pending == []
    bad = section()
    bad["receivers"][0]["callback_configs"] = [{"nme": "x"}, {"name": "y", "send_resolved": 1}]
    assert check_alerting(bad) == [
        "alerting.receivers[0].callback_configs[0].nme: unknown key; "
        "known keys here: name, send_resolved",
        "alerting.receivers[0].callback_configs[0].name: required: "
        "the name a callback is registered under",
        "alerting.receivers[0].callback_configs[1].send_resolved: expected a boolean",
    ]


async def test_direct_notifiers_get_alerts_without_grouping_and_resend(
    clock: ManualClock, rec: Recorder
) -> None:
    direct = Direct()
    cfg = section(routes=[{"matchers": ['sev="page"'], "receiver": "am"}])
    d = Dispatcher(cfg, {"rec": rec, "direct": direct}, clock=clock)
    await d.start(background=False)
    a = alert(sev="page")
    await d.submit([a])
    await d.tick()
    assert len(direct.calls) == 1  # no group_wait
    sent = direct.calls[0][0][0]
    assert sent["endsAt"] == "2023-11-14T22:17:20Z"  # now + 4 * resend_delay (1m)
    for _ in range(3):
        await step(d, clock, 15)
        await d.submit([a])
    await d.tick()
    assert len(direct.calls) == 1
    await step(d, clock, 15)  # one minute after the first push
    await d.submit([a])
    await d.tick()
    assert len(direct.calls) == 2
    await d.submit([resolved(a, clock.now())])
    await d.submit([resolved(a, clock.now())])  # the engine may repeat a resolve
    await d.tick()
    assert [c[0][0]["status"] for c in direct.calls] == ["firing", "firing", "resolved"]
    assert rec.calls == []


# --- delivery failures --------------------------------------------------------------------


async def test_retries_back_off_exponentially_and_give_up(
    clock: ManualClock, rec: Recorder
) -> None:
    registry = CollectorRegistry()
    d = await make(clock, rec, registry=registry)
    rec.fail = 2
    await d.submit([alert()])
    await step(d, clock, 30)  # attempt 1 fails -> retry in 1s
    assert rec.calls == [] and d.pending[0].attempts == 1
    assert d.pending[0].last_error == "receiver down"
    await step(d, clock, 0.9)
    assert d.pending[0].attempts == 1
    await step(d, clock, 0.1)  # attempt 2 fails -> retry in 2s
    assert d.pending[0].attempts == 2
    await step(d, clock, 1.9)
    assert rec.calls == []
    await step(d, clock, 0.1)
    assert len(rec.calls) == 1 and d.pending == []

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("tsagent_notifications_total", notifier="rec", result="success") == 1
    assert value("tsagent_notifications_total", notifier="rec", result="failure") == 2
    assert value("tsagent_notification_failures_total", notifier="rec") == 2

    rec.fail = 100
    await d.submit([alert("Other")])
    await step(d, clock, 30)
    for _ in range(10):
        await step(d, clock, 10)
    assert d.pending == []  # max_attempts 4: given up
    assert value("tsagent_notifications_total", notifier="rec", result="dropped") == 1
    assert value("tsagent_notification_failures_total", notifier="rec") == 6


async def test_permanent_errors_are_not_retried(clock: ManualClock, rec: Recorder) -> None:
    d = await make(clock, rec)
    rec.fail, rec.error = 1, NotifyError("HTTP 400", permanent=True)
    await d.submit([alert()])
    await step(d, clock, 30)
    assert d.pending == [] and rec.calls == []


async def test_a_resolve_never_overtakes_its_firing_notification(
    clock: ManualClock, rec: Recorder
) -> None:
    d = await make(clock, rec, section(group_interval="1s"))
    a = alert()
    rec.fail, rec.fail_only = 3, "firing"
    await d.submit([a])
    await step(d, clock, 30)  # firing notification fails
    await d.submit([resolved(a, clock.now())])
    await step(d, clock, 1)  # resolve queued behind it; firing retried and fails again
    assert len(d.pending) == 2
    await step(d, clock, 2)  # fails a third time
    await step(d, clock, 4)  # succeeds, then the resolve goes
    assert [c[0][0]["status"] for c in rec.calls] == ["firing", "resolved"]


async def test_log_lines_carry_no_secrets(
    clock: ManualClock, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    d = await make(clock, rec)
    rec.fail = 1
    rec.error = RuntimeError(
        "cannot connect to https://bob:hunter2@hooks.slack.com/services/T01/B02/sEcReT?token=abc"
    )
    await d.submit([alert()])
    with caplog.at_level("WARNING", logger="tsagent.alerting"):
        await step(d, clock, 30)
    text = caplog.text + d.pending[0].last_error
    assert "hooks.slack.com/services/***" in text
    for secret in ("hunter2", "bob", "sEcReT", "T01", "token=abc"):
        assert secret not in text


def test_redact_url() -> None:
    assert redact_url("https://u:p@example.com:8443/hook?key=1#x") == (
        "https://***@example.com:8443/hook?***"
    )
    assert redact_url("https://hooks.slack.com/services/T/B/XYZ") == (
        "https://hooks.slack.com/services/***"
    )
    assert redact_url("http://[::1]:9093/api/v2/alerts") == "http://[::1]:9093/api/v2/alerts"
    assert redact_text("POST http://a:b@h/x?y=z failed") == "POST http://***@h/x?*** failed"


# --- persistence ---------------------------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path / "tsagent.db"


async def test_pending_notification_survives_restart_and_is_delivered_once(
    clock: ManualClock, db: Path
) -> None:
    rec = Recorder()
    store = await open_store(db)
    d = await make(clock, rec, store=store)
    rec.fail = 1
    await d.submit([alert()])
    await step(d, clock, 30)
    assert rec.calls == [] and len(d.pending) == 1
    await d.stop()
    await store.close()

    rec2 = Recorder()
    store = await open_store(db)
    d = await make(clock, rec2, store=store)
    assert [p.attempts for p in d.pending] == [1]
    await d.submit([alert()])  # the engine re-submits its still-firing alert
    await step(d, clock, 1)
    assert len(rec2.calls) == 1 and rec2.calls[0][1]["group_key"] == '{}:{alertname="HighLatency"}'
    for _ in range(5):
        await step(d, clock, 30)  # the new group's flush finds the log: nothing new
        await d.submit([alert()])
    assert len(rec2.calls) == 1
    await d.stop()
    await store.close()

    rec3 = Recorder()
    store = await open_store(db)
    d = await make(clock, rec3, store=store)
    assert d.pending == []
    await d.submit([alert()])
    for _ in range(12):
        await step(d, clock, 30)
    assert rec3.calls == []  # delivered before the restart: not again
    await d.stop()
    await store.close()


async def test_resolve_submitted_before_restart_is_notified_after_it(
    clock: ManualClock, db: Path
) -> None:
    rec = Recorder()
    store = await open_store(db)
    d = await make(clock, rec, store=store)
    a = alert()
    await d.submit([a])
    await step(d, clock, 30)
    await step(d, clock, 10)
    await d.submit([resolved(a, clock.now())])  # the engine sends this once
    await d.stop()
    await store.close()

    store = await open_store(db)
    d = await make(clock, rec, store=store)
    await step(d, clock, 30)  # restored group: group_wait, then the log says "news"
    assert [c[0][0]["status"] for c in rec.calls] == ["firing", "resolved"]
    for _ in range(12):
        await step(d, clock, 300)
    assert len(rec.calls) == 2
    await d.stop()
    await store.close()


async def test_the_outbox_migrates_when_the_dispatcher_attaches(
    clock: ManualClock, db: Path, rec: Recorder
) -> None:
    """Its tables come with the dispatcher, not with whichever modules were imported."""
    store = await open_store(db)

    def migrations(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        return conn.execute(
            "SELECT migration_set, name FROM _migrations WHERE name = 'm030_notifications'"
        ).fetchall()

    assert await store._w.job(migrations) == []
    d = await make(clock, rec, store=store)
    assert await store._w.job(migrations) == [("tsagent.alerting.outbox", "m030_notifications")]
    await d.stop()
    await store.close()


async def test_reloaded_config_takes_effect(clock: ManualClock, rec: Recorder) -> None:
    current = {"alerting": section()}
    d = Dispatcher(lambda: current["alerting"], {"rec": rec}, clock=clock)
    await d.start(background=False)
    new = copy.deepcopy(section(receiver="db"))
    current["alerting"] = new
    await d.submit([alert()])
    await step(d, clock, 30)
    assert rec.calls[0][1]["name"] == "db"
    bad = copy.deepcopy(new)
    bad["route"]["receiver"] = "nobody"
    current["alerting"] = bad  # refused, previous kept
    await d.submit([alert("Two")])
    await step(d, clock, 30)
    assert rec.calls[1][1]["name"] == "db"


async def test_long_downtime_neither_resolves_nor_renotifies_a_firing_group(
    clock: ManualClock, db: Path
) -> None:
    """The engine sets endsAt a few minutes ahead; after an hour offline that time has
    passed, but the restored alert must wait for the engine's next evaluation."""
    rec = Recorder()
    store = await open_store(db)
    d = await make(clock, rec, store=store)
    a = alert()
    a.ends_at = clock.now() + 240
    await d.submit([a])
    await step(d, clock, 30)
    assert len(rec.calls) == 1
    await d.stop()
    await store.close()

    clock.advance(3600)
    store = await open_store(db)
    d = await make(clock, rec, store=store)
    await step(d, clock, 30)  # restored group's flush, before the engine's first evaluation
    a.ends_at = clock.now() + 240
    await d.submit([a])
    for _ in range(12):
        await step(d, clock, 60)
        a.ends_at = clock.now() + 240
        await d.submit([a])
    assert len(rec.calls) == 1
    await d.stop()
    await store.close()


async def test_misspelt_notifier_type_stops_startup(make_config: Callable[..., Any]) -> None:
    from agent.web.app import StartupError, make_app

    config, host = make_config(
        "alerting:\n  route: {receiver: ops}\n  receivers:\n    - name: ops\n"
        "      webhok_configs: [{url: 'http://127.0.0.1:1/'}]\n"
    )
    app = make_app(config, host)
    app.freeze()
    with pytest.raises(StartupError) as info:
        await app.startup()
    await app.cleanup()
    assert (
        "alerting.receivers[0].webhok_configs: no notifier 'webhok' is loaded "
        "(did you mean 'webhook_configs'?)" in str(info.value)
    )
