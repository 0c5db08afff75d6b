"""Relabeling and target label population, as pure functions.

Expected values come from Prometheus' own tests (``model/relabel/relabel_test.go``)
where they exist, e.g. the hashmod vectors, so sharding agrees with Prometheus.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.model import make_labels
from agent.relabel import (
    RelabelError,
    compile_rule,
    compile_rules,
    expand,
    hashmod,
    process,
)
from plugins.scrape.config import JobSpec, format_duration
from plugins.scrape.targets import TargetError, populate


def run(labels: dict[str, str], *cfgs: dict[str, Any]) -> dict[str, str] | None:
    return process(labels, compile_rules(cfgs))


# --- replace and its defaults -------------------------------------------------------


def test_defaults_copy_joined_sources_with_semicolon() -> None:
    rule = compile_rule({"source_labels": ["a", "missing", "b"], "target_label": "t"})
    assert (rule.action, rule.regex_text, rule.separator, rule.replacement) == (
        "replace",
        "(.*)",
        ";",
        "$1",
    )
    assert (
        run({"a": "x", "b": "y"}, {"source_labels": ["a", "missing", "b"], "target_label": "t"})[
            "t"
        ]
        == "x;;y"
    )


def test_replace_no_match_changes_nothing_and_regex_is_anchored() -> None:
    cfg = {"source_labels": ["a"], "regex": "f", "target_label": "b", "replacement": "bar"}
    assert run({"a": "boo"}, cfg) == {"a": "boo"}
    assert run({"a": "foo"}, cfg) == {"a": "foo"}  # "f" must match the whole value
    assert run({"a": "f"}, cfg) == {"a": "f", "b": "bar"}
    # Python's $ would match before a trailing newline; Prometheus' does not
    assert run({"a": "f\n"}, {**cfg, "regex": "f$"}) == {"a": "f\n"}


def test_replace_with_groups_and_templated_target() -> None:
    cfg = {
        "source_labels": ["a", "b"],
        "regex": "f(.*);(.*)r",
        "target_label": "a",
        "replacement": "ch${1}-ch${2}",
    }
    assert run({"a": "foo", "b": "bar"}, cfg) == {"a": "choo-chba", "b": "bar"}
    cfg = {"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)", "target_label": "${1}"}
    cfg["replacement"] = "${2}"
    assert run({"a": "some-name-value"}, cfg) == {"a": "some-name-value", "name": "value"}


def test_replace_to_empty_deletes_and_invalid_target_is_skipped() -> None:
    # From Prometheus: "Blank replacement should delete the label."
    cfg = {"source_labels": ["a"], "regex": "(f).*", "target_label": "$1", "replacement": "$2"}
    assert run({"a": "foo", "f": "baz"}, cfg) == {"a": "foo"}
    # the expanded target is not a valid label name: no change
    cfg = {"source_labels": ["a"], "regex": "(.*)", "target_label": "${1}", "replacement": "x"}
    assert run({"a": "not-valid"}, cfg) == {"a": "not-valid"}


def test_static_replace_sets_a_label() -> None:
    assert run({}, {"target_label": "cluster", "replacement": "dev-1"}) == {"cluster": "dev-1"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$1", "abc"),
        ("${1}", "abc"),
        ("$1x", ""),  # Go reads the name "1x": no such group
        ("${1}x", "abcx"),
        ("$name", "abc"),
        ("${name}-$2", "abc-def"),
        ("$$1", "$1"),
        ("$", "$"),
        ("a$-b", "a$-b"),
        ("${1", "${1"),
        ("$9", ""),
        ("$01", ""),  # leading zero: a name, not a number
        ("$0", "abc;def"),
    ],
)
def test_go_template_expansion(template: str, expected: str) -> None:
    m = re.fullmatch(r"(?P<name>[a-z]+);([a-z]+)", "abc;def")
    assert m is not None
    assert expand(template, m) == expected


# --- keep / drop / equal --------------------------------------------------------------


def test_keep_and_drop() -> None:
    keep = {"source_labels": ["a"], "regex": "f.*", "action": "keep"}
    drop = {**keep, "action": "drop"}
    assert run({"a": "foo"}, keep) == {"a": "foo"}
    assert run({"a": "boo"}, keep) is None
    assert run({"a": "foo"}, drop) is None
    assert run({"a": "boo"}, drop) == {"a": "boo"}
    # a missing source label is the empty string
    assert run({}, {"source_labels": ["a"], "regex": "", "action": "drop"}) is None


def test_keepequal_dropequal() -> None:
    labels = {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"}
    ke = {"source_labels": ["__tmp_port"], "action": "keepequal"}
    assert run(labels, {**ke, "target_label": "__port1"}) == labels
    assert run(labels, {**ke, "target_label": "__port2"}) is None
    de = {"source_labels": ["__tmp_port"], "action": "dropequal"}
    assert run(labels, {**de, "target_label": "__port1"}) is None
    assert run(labels, {**de, "target_label": "__port2"}) == labels


# --- hashmod ------------------------------------------------------------------------


def test_hashmod_matches_prometheus_vectors() -> None:
    # Values from Prometheus' relabel_test.go.
    assert hashmod("baz", 1000) == 976
    assert hashmod("foo\nbar", 1000) == 734
    out = run(
        {"a": "foo", "b": "bar", "c": "baz"},
        {"source_labels": ["c"], "target_label": "d", "action": "hashmod", "modulus": 1000},
    )
    assert out == {"a": "foo", "b": "bar", "c": "baz", "d": "976"}


def test_hashmod_spreads_over_the_modulus() -> None:
    shards = {hashmod(f"10.0.{i // 256}.{i % 256}:9100", 4) for i in range(200)}
    assert shards == {0, 1, 2, 3}


# --- label actions ---------------------------------------------------------------------


def test_labelmap() -> None:
    out = run(
        {"a": "foo", "b1": "bar", "b2": "baz"},
        {"regex": "(b.*)", "replacement": "bar_${1}", "action": "labelmap"},
    )
    assert out == {"a": "foo", "b1": "bar", "b2": "baz", "bar_b1": "bar", "bar_b2": "baz"}
    meta = {"a": "foo", "__meta_my_bar": "aaa", "__meta_my_baz": "bbb", "__meta_other": "ccc"}
    out = run(meta, {"regex": "__meta_(my.*)", "replacement": "${1}", "action": "labelmap"})
    assert out == {**meta, "my_bar": "aaa", "my_baz": "bbb"}


def test_labeldrop_labelkeep_are_anchored() -> None:
    labels = {"a": "foo", "b1": "bar", "b2": "baz", "ab": "x"}
    assert run(labels, {"regex": "b.*", "action": "labeldrop"}) == {"a": "foo", "ab": "x"}
    assert run(labels, {"regex": "b.*", "action": "labelkeep"}) == {"b1": "bar", "b2": "baz"}


def test_lowercase_uppercase() -> None:
    out = run(
        {"foo": "bAr123Foo"},
        {"source_labels": ["foo"], "action": "uppercase", "target_label": "up"},
        {"source_labels": ["foo"], "action": "lowercase", "target_label": "low"},
    )
    assert out == {"foo": "bAr123Foo", "up": "BAR123FOO", "low": "bar123foo"}


def test_rules_run_in_order_and_input_is_not_mutated() -> None:
    labels = {"a": "1"}
    out = run(
        labels,
        {"source_labels": ["a"], "target_label": "b"},
        {"source_labels": ["b"], "regex": "1", "action": "keep"},
        {"regex": "a", "action": "labeldrop"},
    )
    assert out == {"b": "1"} and labels == {"a": "1"}


def test_action_is_case_insensitive_like_prometheus() -> None:
    assert compile_rule({"action": "LabelDrop", "regex": "x"}).action == "labeldrop"


@pytest.mark.parametrize(
    ("cfg", "key", "text"),
    [
        ({"action": "nope"}, "action", "expected one of"),
        ({"source_labels": ["a"]}, "target_label", "requires 'target_label'"),
        ({"target_label": "-x"}, "target_label", "invalid for the replace action"),
        ({"target_label": "0${3}"}, "target_label", "invalid"),
        ({"action": "hashmod", "target_label": "t"}, "modulus", "modulus > 0"),
        ({"action": "lowercase", "target_label": "t", "replacement": "x"}, "replacement", "cannot"),
        ({"action": "labelmap", "replacement": "-$1"}, "replacement", "invalid"),
        ({"action": "labeldrop", "source_labels": ["a"]}, "action", "only 'regex'"),
        ({"action": "keepequal", "target_label": "t", "regex": "x"}, "action", "only"),
        ({"regex": "(x", "target_label": "t"}, "regex", "invalid regular expression '(x'"),
        ({"source_labels": ["bad-name"], "target_label": "t"}, "source_labels[0]", "invalid"),
    ],
)
def test_invalid_rules_name_their_key(cfg: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(RelabelError, match=re.escape(text)) as info:
        compile_rule(cfg)
    assert info.value.key == key


def test_templated_target_labels_accepted_like_prometheus() -> None:
    for target in ("label", "label${1}", "${1}label", "$1", "asd$2asd", "_${1}_", "foo${bar}foo"):
        compile_rule({"target_label": target})
    for target in ("-label", "${", "$", "${}", "foo${", "-foo${1}bar-"):
        with pytest.raises(RelabelError):
            compile_rule({"target_label": target})


# --- target label population --------------------------------------------------------


def job(**kw: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "node",
        "interval": 15.0,
        "timeout": 10.0,
        "metrics_path": "/metrics",
        "scheme": "http",
        "params": (),
        "honor_labels": False,
        "honor_timestamps": True,
        "track_timestamps_staleness": False,
        "accept": "*/*",
        "sample_limit": 0,
        "label_limit": 0,
        "label_name_length_limit": 0,
        "label_value_length_limit": 0,
        "body_size_limit": 0,
        "http": None,
        "relabel": (),
        "metric_relabel": (),
        "targets": (),
        "interval_text": "15s",
        "timeout_text": "10s",
    }
    base.update(kw)
    return JobSpec(**base)


def test_populate_defaults_and_reserved_labels_dropped() -> None:
    spec = populate("host:9100", make_labels({"env": "prod"}), job())
    assert spec is not None
    assert spec.url == "http://host:9100/metrics"
    assert dict(spec.labels) == {"env": "prod", "instance": "host:9100", "job": "node"}
    assert (spec.interval, spec.timeout) == (15.0, 10.0)


def test_populate_relabel_rewrites_how_the_target_is_scraped() -> None:
    rules = compile_rules(
        [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__address__"], "regex": "(.*):.*", "target_label": "__tmp_h"},
            {"target_label": "__address__", "replacement": "exporter:9115"},
            {"target_label": "__metrics_path__", "replacement": "probe"},
            {"target_label": "__scheme__", "replacement": "https"},
            {"target_label": "__scrape_interval__", "replacement": "30s"},
            {"source_labels": ["__tmp_h"], "target_label": "host"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
        ]
    )
    spec = populate("site:443", (), job(relabel=rules, params=(("module", ("http_2xx", "x")),)))
    assert spec is not None
    assert spec.url == "https://exporter:9115/probe?module=http_2xx&module=x&target=site%3A443"
    # __tmp_h and every other __ label are gone; instance was set by a rule
    assert dict(spec.labels) == {"host": "site", "instance": "site:443", "job": "node"}
    assert spec.interval == 30.0


def test_populate_param_label_overrides_first_param_value() -> None:
    rules = compile_rules([{"target_label": "__param_module", "replacement": "icmp"}])
    spec = populate("h:1", (), job(relabel=rules, params=(("module", ("http", "tcp")),)))
    assert spec is not None and spec.url.endswith("?module=icmp&module=tcp")


def test_populate_drop_and_errors() -> None:
    drop = compile_rules([{"source_labels": ["__address__"], "regex": "h:.*", "action": "drop"}])
    assert populate("h:1", (), job(relabel=drop)) is None
    no_addr = compile_rules([{"regex": "__address__", "action": "labeldrop"}])
    with pytest.raises(TargetError, match="no __address__"):
        populate("h:1", (), job(relabel=no_addr))
    bad_scheme = compile_rules([{"target_label": "__scheme__", "replacement": "ftp"}])
    with pytest.raises(TargetError, match="invalid __scheme__"):
        populate("h:1", (), job(relabel=bad_scheme))
    slow = compile_rules([{"target_label": "__scrape_timeout__", "replacement": "1m"}])
    with pytest.raises(TargetError, match="greater than scrape interval"):
        populate("h:1", (), job(relabel=slow))


def test_group_labels_may_preset_job_and_instance() -> None:
    spec = populate("h:1", make_labels({"job": "custom", "instance": "web-1"}), job())
    assert spec is not None and dict(spec.labels) == {"instance": "web-1", "job": "custom"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(15, "15s"), (60, "1m"), (90, "1m30s"), (0.2, "200ms"), (3600, "1h"), (86400 + 1, "1d1s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
