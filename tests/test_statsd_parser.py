"""The StatsD line parser, mapper and aggregator without sockets (and with hypothesis)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.statsd.aggregator import Aggregator, Settings
from plugins.statsd.mapper import Mapper, build_mapper, expand, glob_to_regex
from plugins.statsd.parser import (
    COUNTER,
    GAUGE,
    REASONS,
    SET,
    TIMER,
    Malformed,
    escape_name,
    parse_line,
)

NAME = st.text(
    alphabet=st.characters(blacklist_characters=":|\n\r#,@", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "")
TAG_KEY = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
TAG_VALUE = st.text(
    alphabet=st.characters(blacklist_characters="|,\n\r", blacklist_categories=("Cs",)),
    max_size=15,
)
NUMBER = st.floats(allow_nan=False, allow_infinity=False, width=64)
TYPES = {"c": COUNTER, "g": GAUGE, "ms": TIMER, "h": TIMER, "d": TIMER, "s": SET}


def test_escape_name_like_statsd_exporter() -> None:
    assert escape_name("api.users-v2.requests") == "api_users_v2_requests"
    assert escape_name("5xx.count") == "_5xx_count"
    assert escape_name("héllo wörld") == "h_llo_w_rld"
    assert escape_name("ok_name") == "ok_name"


def test_parse_line_fields() -> None:
    p = parse_line(b"a.b:1.5|ms|@0.25|#env:prod,bare,url:http://x|c:ci-1|T123")
    assert p.key.name == "a.b" and p.key.kind == TIMER and p.key.milliseconds
    assert p.key.rate == 0.25
    assert p.key.tags == (("env", "prod"), ("url", "http://x"))
    assert p.key.bad_tags == 1
    assert p.values == (1.5,)
    assert parse_line(b"g:-3|g").values == (-3.0,)
    assert parse_line(b"s:user-1|s").values == (b"user-1",)
    assert parse_line(b"m:1:2:3|d").values == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"nocolon", "missing_colon"),
        (b"a:1", "missing_type"),
        (b"a:1|", "missing_type"),
        (b":1|c", "empty_name"),
        (b"a:1|x", "invalid_type"),
        (b"a:x|c", "invalid_value"),
        (b"a:inf|g", "invalid_value"),
        (b"a:|s", "invalid_value"),
        (b"a:-1|c", "negative_counter"),
        (b"a:1|c|@0", "invalid_sample_rate"),
        (b"a:1|c|@1.5", "invalid_sample_rate"),
        (b"a:1|c|@nan", "invalid_sample_rate"),
        (b"a:1|c|junk", "invalid_field"),
        (b"\xc3:1|c", "invalid_utf8"),
        (b"a:1|c|#\xff:1", "invalid_utf8"),
    ],
)
def test_malformed_reasons(line: bytes, reason: str) -> None:
    assert reason in REASONS
    with pytest.raises(Malformed) as err:
        parse_line(line)
    assert err.value.reason == reason
    agg = Aggregator(Mapper())
    assert agg.feed(line + b"\nok:1|c") == 1  # the valid neighbour is kept
    assert agg.malformed == {reason: 1}


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_feed_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    agg = Aggregator(Mapper(), Settings(max_line_bytes=64))
    ok = agg.feed(data)
    lines = [line for line in data.split(b"\n") if line.strip()]
    assert ok + sum(agg.malformed.values()) == len(lines)  # every line is accounted for
    agg.collect()


@given(
    name=NAME,
    type_code=st.sampled_from(sorted(TYPES)),
    values=st.lists(NUMBER, min_size=1, max_size=4),
    rate=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1.0)),
    tags=st.lists(st.tuples(TAG_KEY, TAG_VALUE), max_size=4),
)
def test_valid_lines_round_trip(
    name: str,
    type_code: str,
    values: list[float],
    rate: float | None,
    tags: list[tuple[str, str]],
) -> None:
    kind = TYPES[type_code]
    if kind == COUNTER:
        values = [abs(v) for v in values]
    raws = [repr(v).encode() if kind != SET else repr(v).encode().lstrip(b"-") for v in values]
    line = name.encode() + b":" + b":".join(raws) + b"|" + type_code.encode()
    if rate is not None:
        line += b"|@" + repr(rate).encode()
    if tags:
        line += b"|#" + ",".join(f"{k}:{v}" for k, v in tags).encode()
    parsed = parse_line(line)
    assert parsed.key.name == name
    assert parsed.key.kind == kind
    assert parsed.key.milliseconds == (type_code == "ms")
    assert parsed.key.rate == (1.0 if rate is None else rate)
    assert parsed.key.tags == tuple(tags)
    assert parsed.raw_values == tuple(raws)
    if kind == SET:
        assert parsed.values == tuple(raws)
    else:
        assert parsed.values == tuple(values)
    # And the aggregator takes it as well formed, exactly as the parser did.
    agg = Aggregator(Mapper())
    assert agg.feed(line) == 1 and not agg.malformed


@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([1.0, 0.5, 0.25])), max_size=30))
def test_counter_total_is_the_sum_of_value_over_rate(incs: list[tuple[int, float]]) -> None:
    agg = Aggregator(Mapper())
    agg.feed(b"\n".join(b"n:%d|c|@%r" % (v, r) for v, r in incs) + b"\nn:0|c")
    [(_metric, values)] = agg.collect()[0]
    assert values == [float(sum(v / r for v, r in incs))]


def test_gauge_sets_and_deltas_and_multi_values_are_atomic() -> None:
    agg = Aggregator(Mapper())
    assert agg.feed(b"g:10|g\ng:-4|g\ng:+1.5|g\ng:+1:x|g\ng:2:+3|g") == 4
    assert agg.malformed == {"invalid_value": 1}
    [(_, values)] = agg.collect()[0]
    assert values == [5.0]  # 10 - 4 + 1.5, the bad multi-value line left it alone, then 2 + 3


def test_summary_reservoir_keeps_quantiles_bounded() -> None:
    agg = Aggregator(Mapper(), Settings(summary_max_samples=1000, quantiles=(0.5,)))
    agg.feed(b"\n".join(b"t:%d|h" % i for i in range(100_000)))
    [(metric, values)] = agg.collect()[0]
    assert len(metric.series) == 3
    median, total, count = values
    assert count == 100_000 and total == sum(range(100_000))
    assert median is not None and 40_000 < median < 60_000


def test_glob_and_expand() -> None:
    assert re.fullmatch(glob_to_regex("a.*.b"), "a.x-y.b")
    assert not re.fullmatch(glob_to_regex("a.*.b"), "a.x.y.b")
    assert re.fullmatch(glob_to_regex("a.*_total"), "a.foo_total")
    m = re.search(r"(?P<svc>\w+)\.(\w+)", "api.get")
    assert m is not None
    assert expand("${1}_x", m) == "api_x"
    assert expand("$1_x", m) == ""  # Go's Expand: the group named "1_x" does not exist
    assert expand("$svc-$2-$$-${9}", m) == "api-get-$-"


def test_mapper_first_rule_wins_and_drop() -> None:
    mapper = build_mapper(
        [
            {"match": "a.*", "match_type": "glob", "action": "drop"},
            {"match": "a.*", "match_type": "glob", "action": "map", "name": "never"},
            {"match": r"^b\.(.*)", "match_type": "regex", "action": "map", "name": "b_$1"},
            {"match": "c.*", "match_type": "glob", "action": "map", "name": "c", "ttl": "5m"},
        ],
        lambda v: 300.0 if v == "5m" else float(v),
    )
    assert mapper.map("a.x", COUNTER) is None
    b = mapper.map("b.some.thing", GAUGE)
    assert b is not None and b.name == "b_some_thing"
    c = mapper.map("c.x", TIMER)
    assert c is not None and c.ttl == 300.0
    unmapped = mapper.map("x.y-z", COUNTER)
    assert unmapped is not None and unmapped.name == "x_y_z" and unmapped.labels == ()


def test_histogram_bounds_are_inclusive() -> None:
    agg = Aggregator(Mapper(), Settings(timer_type="histogram", buckets=(1.0, 2.0)))
    agg.feed(b"h:1|h\nh:2|h\nh:2.0001|h\nh:0|h")
    [(metric, values)] = agg.collect()[0]
    les = [dict(s).get("le") for s in metric.series]
    assert les == ["1.0", "2.0", "+Inf", None, None]
    assert values[:3] == [2.0, 3.0, 4.0]
    assert math.isclose(values[3] or 0.0, 5.0001)
