"""Rule files: validation messages, templates, check-config, recording rules and the HTTP API."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.alerting.engine import RuleEngine
from agent.alerting.rules import RulesError, load_rule_files, parse_rule_file
from agent.alerting.template import (
    TemplateData,
    TemplateError,
    expand,
    go_float,
    go_float_e,
    humanize,
    parse_template,
)
from agent.cli import main
from agent.clock import ManualClock
from agent.context import context_of
from agent.model import Labels, Matcher, is_stale_nan
from agent.storage import Store
from agent.web.api.alerting import rfc3339nano, rules_data
from agent.web.app import make_app
from tests.conftest import FIXTURES

RULES_DIR = FIXTURES / "rules"
T0 = 1_700_000_040.0


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


# --- templates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ $labels.instance }} down", "db:9100 down"),
        ("{{ .Labels.instance }}", "db:9100"),
        ("value {{ $value }}", "value 1.2345678e+06"),
        ("{{ humanize $value }}", "1.235M"),
        ("{{ $value | humanize }}", "1.235M"),
        ('{{ printf "%.2f" $value }}', "1234567.80"),
        ('{{ printf "%s=%d" "n" 3 }}', "n=3"),
        ("{{ $labels }}", "map[__name__:up instance:db:9100 job:node]"),
        ("{{ $labels.missing }}", "<no value>"),
        ("{{ $labels.instance | stripPort | toUpper }}", "DB"),
        ("a {{- ` b ` -}} c", "a b c"),
        ("{{/* a comment */}}x", "x"),
        ("{{ $externalLabels.site }} {{ $externalURL }}", "eu http://agent:9201"),
        ("{{ humanizePercentage 0.25 }}", "25%"),
        ("{{ humanizeDuration 93784 }}", "1d 2h 3m 4s"),
        ("{{ humanize1024 1048576 }}", "1Mi"),
    ],
)
def test_template_expansion(source: str, expected: str) -> None:
    data = TemplateData(
        {"__name__": "up", "instance": "db:9100", "job": "node"},
        1234567.8,
        {"site": "eu"},
        "http://agent:9201",
    )
    assert expand(source, data) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ if $value }}x{{ end }}", "not supported"),
        ("{{ exec }}", 'function "exec" not defined'),
        ("{{ $secret }}", "undefined variable '$secret'"),
        ("{{ $labels.x", "unclosed action"),
        ("{{ $value.x }}", "has no fields"),
        ("{{ . }}", "not supported"),
        ("{{ humanize (1) }}", "parenthesised"),
        ("{{ __import__ }}", "not defined"),
    ],
)
def test_template_rejects_what_it_does_not_know(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse_template(source)


def test_go_number_formats() -> None:
    assert [go_float(v) for v in (1e6, 123456.0, 0.5, 1e-5, -2.0, math.inf, math.nan)] == [
        "1e+06",
        "123456",
        "0.5",
        "1e-05",
        "-2",
        "+Inf",
        "NaN",
    ]
    assert [go_float_e(v) for v in (1.0, 0.25, 1234.5, 0.0)] == [
        "1e+00",
        "2.5e-01",
        "1.2345e+03",
        "0e+00",
    ]
    assert [humanize(v) for v in (0, 999, 1000, 0.001234, -2500)] == [
        "0",
        "999",
        "1k",
        "1.234m",
        "-2.5k",
    ]


# --- rule files -----------------------------------------------------------------------------


def test_valid_rule_file_parses() -> None:
    groups = load_rule_files(["api.yml"], RULES_DIR)
    assert [(g.name, g.interval_s, g.limit) for g in groups] == [
        ("api", 30.0, 0),
        ("hosts", None, 100),
    ]
    rec, alert = groups[0].rules
    assert (rec.kind, rec.name) == ("record", "job:http_requests:rate5m")
    assert (alert.kind, alert.for_s, alert.keep_firing_for_s) == ("alert", 600.0, 300.0)
    assert groups[0].file == "api.yml" and groups[0].key == "api.yml;api"


def test_broken_rule_file_names_file_group_and_rule() -> None:
    with pytest.raises(RulesError) as info:
        load_rule_files(["broken.yml"], RULES_DIR)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        'broken.yml: group "api", rule 2 (alert HighLatency): expr: parse error: '
        "unclosed left parenthesis"
    )
    assert lines[1].startswith(
        'broken.yml: group "api", rule 3 (alert BadTemplate): annotations.summary: '
        'template: function "shout" not defined'
    )
    assert lines[2:] == [
        'broken.yml: group "api", rule 4 (record not a metric name): record: '
        "invalid recording rule name 'not a metric name'",
        'broken.yml: group "api", rule 4 (record not a metric name): for: '
        "invalid field 'for' in a recording rule",
        "broken.yml: group \"api\", rule 5 (alert Typo): unknown key 'fro' (did you mean "
        "'for'?); known keys: alert, record, expr, for, keep_firing_for, labels, annotations",
        'broken.yml: group "api": name: group name is repeated in the same file',
        "broken.yml: group \"api\": interval: not a duration: 'soon' (expected e.g. 30s, 5m, 1h)",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("groups: [{name: g, rules: [{expr: up}]}]", "one of 'record' or 'alert' must be set"),
        ("groups: [{name: g, rules: [{alert: A, record: b, expr: up}]}]", "only one of"),
        ("groups: [{name: g, rules: [{alert: A}]}]", "field 'expr' must be set"),
        ("groups: [{name: g, rules: [{alert: A, expr: 'up[5m]'}]}]", "range vector"),
        ("groups: [{name: g, rules: [{alert: A, expr: up, labels: {alertname: x}}]}]", "reserved"),
        ("groups: [{name: g, rules: [{alert: A, expr: up, labels: {'a-b': x}}]}]", "invalid name"),
        ("groups: [{rules: []}]", "a group needs a non-empty name"),
        ("groups:\n  - name: [", "invalid YAML"),
        ("rules: []", "unknown key 'rules'"),
    ],
)
def test_rule_validation(text: str, error: str) -> None:
    _groups, errors = parse_rule_file(text, "r.yml")
    assert errors and error in errors[0] and errors[0].startswith("r.yml: ")


def test_globs_relative_to_base_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    shutil.copy(RULES_DIR / "api.yml", tmp_path / "rules.d" / "a.yml")
    shutil.copy(RULES_DIR / "api.yml", tmp_path / "rules.d" / "b.yml")
    groups = load_rule_files(["rules.d/*.yml", "empty.d/*.yml"], tmp_path)
    assert [g.file for g in groups] == ["rules.d/a.yml"] * 2 + ["rules.d/b.yml"] * 2
    with pytest.raises(RulesError, match=r"^missing\.yml: cannot read rule file"):
        load_rule_files(["missing.yml"], tmp_path)


# --- check-config -------------------------------------------------------------------------


def write_config(tmp_path: Path, *rule_files: str) -> Path:
    for name in rule_files:
        shutil.copy(RULES_DIR / name, tmp_path / name)
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text(json.dumps({"alerting": {"rule_files": list(rule_files)}}))
    return cfg


def test_check_config_validates_rule_files(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path, "api.yml")
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out and "1 rule file(s): 2 group(s), 3 rule(s)" in out

    cfg = write_config(tmp_path, "api.yml", "broken.yml")
    assert main(["check-config", str(cfg)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        'broken.yml: group "api", rule 2 (alert HighLatency): expr: parse error: '
        "unclosed left parenthesis"
    )
    assert len(err) == 7


# --- recording rules ----------------------------------------------------------------------


RECORDING = """
groups:
  - name: rec
    rules:
      - record: job:load:sum
        expr: sum by (job) (load)
        labels: {source: rule}
      - record: job:load:double
        expr: job:load:sum * 2
      - record: answer
        expr: 42
      - alert: HalfRecorded
        expr: job:load:double > 5
"""


async def test_recording_rules_write_series_visible_to_later_rules(store: Store) -> None:
    ids = await store.get_or_create_series(
        [lab("load", job="a", host="1"), lab("load", job="a", host="2"), lab("load", job="b")]
    )
    ms = int(T0 * 1000)
    await store.append(ids, [ms] * 3, [1.0, 2.0, 5.0], source="test")
    engine = RuleEngine(store, clock=ManualClock(T0))
    engine.set_groups(parse_rule_file(RECORDING, "rec.yml")[0])
    await engine.start(run=False)
    await engine.evaluate(T0)
    found = await store.select([Matcher.of("__name__", "=~", "job:load:.*|answer")], 0, 2**62)
    got = {s.labels: np.asarray(s.values).tolist() for s in found}
    assert got == {
        lab("job:load:sum", job="a", source="rule"): [3.0],
        lab("job:load:sum", job="b", source="rule"): [5.0],
        lab("job:load:double", job="a", source="rule"): [6.0],
        lab("job:load:double", job="b", source="rule"): [10.0],
        lab("answer"): [42.0],
    }
    [alert_rule] = [r for r in engine.groups[0].rules if r.is_alert]
    assert sorted(a.labels["job"] for a in alert_rule.active.values()) == ["a", "b"]
    sources = await store._w.job(
        lambda c: [r[0] for r in c.execute("SELECT DISTINCT source FROM audit ORDER BY source")]
    )
    assert "rule" in sources

    # job b disappears: its recorded series get a staleness marker, as in Prometheus
    await store.append([ids[0], ids[1]], [ms + 60_000] * 2, [1.0, 1.0], source="test")
    await store.append([ids[2]], [ms + 60_000], [math.nan], source="test")
    await engine.evaluate(T0 + 60)
    [b] = await store.select(
        [Matcher.of("__name__", "=", "job:load:sum"), Matcher.of("job", "=", "b")], 0, 2**62
    )
    values = np.asarray(b.values).tolist()
    assert values[0] == 5.0
    assert len(values) == 2 and (is_stale_nan(values[1]) or math.isnan(values[1]))


async def test_recording_rule_errors_are_reported_per_rule(store: Store) -> None:
    text = """
groups:
  - name: bad
    limit: 1
    rules:
      - record: too_many
        expr: load
      - record: fine
        expr: vector(1)
"""
    ids = await store.get_or_create_series([lab("load", job="a"), lab("load", job="b")])
    await store.append(ids, [int(T0 * 1000)] * 2, [1.0, 2.0], source="test")
    engine = RuleEngine(store, clock=ManualClock(T0))
    engine.set_groups(parse_rule_file(text, "bad.yml")[0])
    await engine.start(run=False)
    await engine.evaluate(T0)
    too_many, fine = engine.groups[0].rules
    assert (too_many.health, too_many.last_error) == ("err", "exceeded limit of 1 with 2 series")
    assert (fine.health, fine.last_error) == ("ok", "")


# --- HTTP API -------------------------------------------------------------------------------


async def test_rules_and_alerts_api_shapes(
    make_config: Callable[..., Any], tmp_path: Path, aiohttp_client: Any
) -> None:
    (tmp_path / "rules.yml").write_text(
        """
groups:
  - name: g
    interval: 1h
    rules:
      - alert: Always
        expr: vector(3) > 1
        for: 5m
        labels: {severity: low}
        annotations: {summary: "value {{ $value }}"}
      - record: one
        expr: vector(1)
"""
    )
    config, host = make_config("alerting:\n  rule_files: [rules.yml]\n")
    app = make_app(config, host)
    client = await aiohttp_client(app)
    engine = context_of(app).rules
    assert engine is not None
    await engine.evaluate(T0)

    resp = await client.get("/api/v1/rules")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "success"
    [group] = body["data"]["groups"]
    assert group["name"] == "g" and group["file"] == "rules.yml"
    assert group["interval"] == 3600 and group["limit"] == 0
    assert group["lastEvaluation"] == "2023-11-14T22:14:00Z"
    assert isinstance(group["evaluationTime"], float)
    alert_rule, record_rule = group["rules"]
    active_at = "2023-11-14T22:14:00Z"
    assert {k: v for k, v in alert_rule.items() if k != "evaluationTime"} == {
        "state": "pending",
        "name": "Always",
        "query": "vector(3) > 1",
        "duration": 300,
        "keepFiringFor": 0,
        "labels": {"severity": "low"},
        "annotations": {"summary": "value {{ $value }}"},
        "alerts": [
            {
                "labels": {"alertname": "Always", "severity": "low"},
                "annotations": {"summary": "value 3"},
                "state": "pending",
                "activeAt": active_at,
                "value": "3e+00",
            }
        ],
        "health": "ok",
        "lastEvaluation": active_at,
        "type": "alerting",
    }
    assert {k: v for k, v in record_rule.items() if k != "evaluationTime"} == {
        "name": "one",
        "query": "vector(1)",
        "health": "ok",
        "lastEvaluation": active_at,
        "type": "recording",
    }

    body = await (await client.get("/api/v1/rules?type=record")).json()
    assert [r["name"] for r in body["data"]["groups"][0]["rules"]] == ["one"]
    body = await (await client.get("/api/v1/rules?rule_name[]=nope")).json()
    assert body["data"]["groups"] == []
    body = await (await client.get("/api/v1/rules?rule_group[]=g&exclude_alerts=true")).json()
    assert "alerts" not in body["data"]["groups"][0]["rules"][0]
    resp = await client.get("/api/v1/rules?type=both")
    assert resp.status == 400 and (await resp.json())["errorType"] == "bad_data"

    body = await (await client.get("/api/v1/alerts")).json()
    assert body == {
        "status": "success",
        "data": {
            "alerts": [
                {
                    "labels": {"alertname": "Always", "severity": "low"},
                    "annotations": {"summary": "value 3"},
                    "state": "pending",
                    "activeAt": active_at,
                    "value": "3e+00",
                }
            ]
        },
    }
    metrics = await (await client.get("/metrics")).text()
    assert 'tsagent_alerts{state="pending"} 1.0' in metrics
    assert 'tsagent_rule_evaluations_total{rule_group="rules.yml;g"} 2.0' in metrics


def test_rfc3339nano_and_unfiltered_rules_data() -> None:
    assert rfc3339nano(None) == "0001-01-01T00:00:00Z"
    assert rfc3339nano(1.5) == "1970-01-01T00:00:01.5Z"
    assert rules_data([]) == {"groups": []}


def test_evaluation_interval_must_be_positive(tmp_path: Path, capsys: Any) -> None:
    cfg = tmp_path / "tsagent.yaml"
    cfg.write_text("alerting:\n  evaluation_interval: 0s\n")
    assert main(["check-config", str(cfg)]) == 1
    assert "alerting.evaluation_interval: expected a duration greater than 0" in (
        capsys.readouterr().err
    )
