"""MQTT mapping rules: topic patterns with captures, payload decoding, config errors."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lineproto import Parser
from plugins.mqtt.rules import Pattern, PayloadError, Rule, parse_rules, timestamp_ms

ARRIVAL = 1_700_000_000_000


def rule(**raw: object) -> Rule:
    return Rule.from_config(raw, "rules[0]")


def test_patterns_and_captures() -> None:
    p = Pattern.parse("home/+room/+sensor")
    assert p.filter == "home/+/+"
    assert p.match("home/kitchen/temp") == {"room": "kitchen", "sensor": "temp"}
    assert p.match("home/kitchen") is None and p.match("home/a/b/c") is None
    assert p.match("office/a/b") is None
    rest = Pattern.parse("dev/+/#path")
    assert rest.filter == "dev/+/#"
    assert rest.match("dev/x/a/b/c") == {"path": "a/b/c"}
    assert rest.match("dev/x") == {"path": ""}
    anon = Pattern.parse("#")
    assert anon.match("a/b") == {} and anon.match("$SYS/broker/uptime") is None
    for bad in ("a/#x/b", "a/b+/c", "+9bad/x", ""):
        with pytest.raises(ValueError):
            Pattern.parse(bad)


_level = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(_level, min_size=1, max_size=5), st.data())
def test_capture_roundtrip(levels: list[str], data: st.DataObject) -> None:
    """A pattern with a capture at any levels matches its topic and returns those levels."""
    wild = data.draw(st.lists(st.booleans(), min_size=len(levels), max_size=len(levels)))
    pattern = "/".join(
        f"+c{i}" if w else lv for i, (lv, w) in enumerate(zip(levels, wild, strict=True))
    )
    got = Pattern.parse(pattern).match("/".join(levels))
    assert got == {f"c{i}": lv for i, (lv, w) in enumerate(zip(levels, wild, strict=True)) if w}


def test_number_payloads() -> None:
    r = rule(topic="home/+room/+sensor", metric="home_{sensor}", labels={"site": "a"})
    caps = r.pattern.match("home/kitchen/temp")
    assert caps is not None
    samples, _skipped = r.samples(caps, b" 21.5\n", ARRIVAL, Parser())
    assert samples == [
        (
            (("__name__", "home_temp"), ("room", "kitchen"), ("sensor", "temp"), ("site", "a")),
            ARRIVAL,
            21.5,
        )
    ]
    assert r.samples(caps, b"true", ARRIVAL, Parser())[0][0][2] == 1.0
    with pytest.raises(PayloadError) as info:
        r.samples(caps, b"warm", ARRIVAL, Parser())
    assert info.value.reason == "bad_payload"
    bad_name = rule(topic="x/+s", metric="m-{s}")
    with pytest.raises(PayloadError, match="metric name"):
        bad_name.samples({"s": "1"}, b"1", ARRIVAL, Parser())


def test_json_payloads_paths_and_timestamps() -> None:
    r = rule(
        topic="sensors/+id",
        payload="json",
        fields={"temp": "sensor_temperature_celsius", "bat.level": "sensor_battery", "name": "x"},
        timestamp="ts",
        timestamp_unit="s",
    )
    doc = {"temp": 20.5, "bat": {"level": 90}, "name": "hall", "ts": 1_700_000_000}
    samples, skipped = r.samples({"id": "s1"}, json.dumps(doc).encode(), 0, Parser())
    assert skipped == 1  # the string
    assert [(dict(lab)["__name__"], t, v) for lab, t, v in samples] == [
        ("sensor_temperature_celsius", ARRIVAL, 20.5),
        ("sensor_battery", ARRIVAL, 90.0),
    ]
    arr = rule(topic="t", payload="json", fields={"vals.1": "second"})
    assert arr.samples({}, b'{"vals": [1, 2]}', 5, Parser())[0] == [
        ((("__name__", "second"),), 5, 2.0)
    ]
    with pytest.raises(PayloadError) as info:
        r.samples({"id": "s"}, b'{"temp": 1}', 0, Parser())
    assert info.value.reason == "bad_timestamp"
    with pytest.raises(PayloadError):
        r.samples({"id": "s"}, b"{oops", 0, Parser())


def test_timestamp_units() -> None:
    assert timestamp_ms(1_700_000_000, "auto") == ARRIVAL
    assert timestamp_ms(ARRIVAL, "auto") == ARRIVAL
    assert timestamp_ms(ARRIVAL * 1000, "auto") == ARRIVAL
    assert timestamp_ms(ARRIVAL * 1_000_000, "auto") == ARRIVAL
    assert timestamp_ms(ARRIVAL * 1000, "us") == ARRIVAL
    assert timestamp_ms("2023-11-14T22:13:20Z", "auto") == ARRIVAL
    for bad in ("yesterday", "2023-11-14T22:13:20", True, None, 1e300):
        with pytest.raises(PayloadError):
            timestamp_ms(bad, "auto")


def test_line_protocol_payloads() -> None:
    r = rule(topic="telegraf/+host", payload="line", precision="s", labels={"via": "mqtt"})
    body = b"cpu,core=0 usage=12.5,idle=80i 1700000000\ncpu,core=1 usage=3 1700000000"
    samples, _ = r.samples({"host": "h1"}, body, 0, Parser())
    got = {(dict(lab)["__name__"], dict(lab)["core"]): v for lab, _t, v in samples}
    assert got == {("cpu_usage", "0"): 12.5, ("cpu_idle", "0"): 80.0, ("cpu_usage", "1"): 3.0}
    assert all(dict(lab)["host"] == "h1" and dict(lab)["via"] == "mqtt" for lab, _, _ in samples)
    with pytest.raises(PayloadError, match="line 1"):
        r.samples({"host": "h"}, b"cpu usage=", 0, Parser())


def test_config_errors_name_the_key() -> None:
    cases = [
        ({"topic": "a/+x", "metric": "m_{y}"}, "{y}"),
        ({"topic": "a", "payload": "xml", "metric": "m"}, "payload"),
        ({"topic": "a", "metric": "m", "qos": 2}, "qos"),
        ({"topic": "a"}, "metric"),
        ({"topic": "a", "payload": "json"}, "fields"),
        ({"topic": "a", "metric": "m", "lables": {}}, "lables"),
        ({"topic": "a/#x/b", "metric": "m"}, "topic"),
    ]
    for raw, word in cases:
        with pytest.raises(ValueError, match="rules\\[2\\]") as info:
            parse_rules(
                [{"topic": "ok", "metric": "ok"}, {"topic": "ok", "metric": "ok"}, raw], "rules"
            )
        assert word in str(info.value)


def test_hostile_json_is_a_payload_error() -> None:
    r = rule(topic="t", payload="json", fields={"a": "m"})
    with pytest.raises(PayloadError):
        r.samples({}, b"[" * 100_000 + b"]" * 100_000, 0, Parser())
