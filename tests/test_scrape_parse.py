"""The exposition parsers: our text parser against prometheus-client, and malformed input."""

from __future__ import annotations

import math
import random
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.exposition import ParseError, parse, parse_series, parse_text

Flat = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, int | None]]


def ours(text: str) -> Flat:
    out: Flat = {}
    for series, value, ts in parse_text(text):
        labels = parse_series(series)
        name = labels.pop("__name__")
        out[(name, tuple(sorted(labels.items())))] = (value, ts)
    return out


def reference(text: str) -> Flat:
    out: Flat = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            ts = None if s.timestamp is None else round(float(s.timestamp) * 1000)
            out[(s.name, tuple(sorted(s.labels.items())))] = (float(s.value), ts)
    return out


def node_like_page(n: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    lines = [
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.",
        "# TYPE node_cpu_seconds_total counter",
    ]
    for cpu in range(8):
        for mode in ("idle", "iowait", "system", "user"):
            lines.append(
                f'node_cpu_seconds_total{{cpu="{cpu}",mode="{mode}"}} {rnd.random() * 1e6}'
            )
    lines += [
        "# HELP node_filesystem_avail_bytes Free bytes.",
        "# TYPE node_filesystem_avail_bytes gauge",
    ]
    for i in range(n):
        lines.append(
            f'node_filesystem_avail_bytes{{device="/dev/sd{i}",fstype="ext4",'
            f'mountpoint="/mnt/{i}"}} {rnd.randint(0, 10**12)}'
        )
    lines += ["# TYPE go_gc_duration_seconds summary"]
    for q in ("0", "0.5", "1"):
        lines.append(f'go_gc_duration_seconds{{quantile="{q}"}} 1.5e-05')
    lines += ["go_gc_duration_seconds_sum 0.5", "go_gc_duration_seconds_count 100"]
    lines += ["# TYPE http_request_duration_seconds histogram"]
    for le in ("0.1", "1", "+Inf"):
        lines.append(f'http_request_duration_seconds_bucket{{le="{le}",path="/"}} 3')
    lines += [
        'http_request_duration_seconds_sum{path="/"} 1.25',
        'http_request_duration_seconds_count{path="/"} 3',
    ]
    return "\n".join(lines) + "\n"


TRICKY = r"""# a comment
#another comment
# HELP esc Help with \\ and \n escapes.
# TYPE esc gauge
esc{quote="a\"b",backslash="c\\d",newline="e\nf",brace="} {",comma="x,y"} 1
spaced { a = "1" , b="2", } 2 1700000000000
	tabbed	3
neg -1.5e-3 -1000
nan NaN
pinf +Inf
ninf -Inf
empty{} 4
colon:name:x 5
"""


def test_agrees_with_prometheus_client_on_valid_pages() -> None:
    for text in (node_like_page(200), TRICKY):
        got, want = ours(text), reference(text)
        assert got.keys() == want.keys()
        for key, (value, ts) in want.items():
            g_value, g_ts = got[key]
            assert g_ts == ts, key
            assert (math.isnan(g_value) and math.isnan(value)) or g_value == value, key


def test_escapes_and_whitespace() -> None:
    got = ours(TRICKY)
    labels = dict(next(k for k in got if k[0] == "esc")[1])
    assert labels == {
        "quote": 'a"b',
        "backslash": "c\\d",
        "newline": "e\nf",
        "brace": "} {",
        "comma": "x,y",
    }
    assert got[("spaced", (("a", "1"), ("b", "2")))] == (2.0, 1_700_000_000_000)
    assert got[("neg", ())] == (-0.0015, -1000)
    # an unknown escape is kept as written, as Prometheus does
    assert parse_series(r'x{a="\t"}') == {"__name__": "x", "a": "\\t"}


def test_counter_without_total_keeps_its_name() -> None:
    # prometheus-client would call this sample foo_total; Prometheus stores foo.
    [(series, value, _)] = parse_text("# TYPE foo counter\nfoo 3\n")
    assert parse_series(series)["__name__"] == "foo" and value == 3.0


def test_series_text_is_the_cache_key() -> None:
    rows = parse_text('a{x="1"} 1\na{x="1"} 2 5\n')
    assert [r[0] for r in rows] == ['a{x="1"}', 'a{x="1"}']
    assert rows[1][1:] == (2.0, 5)


@pytest.mark.parametrize(
    "line",
    [
        "foo",  # no value
        "foo 1 2 3",  # too many fields
        "foo bar",  # value not a number
        "foo 1_000",  # Go refuses underscores
        "foo 1 1.5",  # timestamps are integers
        "foo 1 1_0",
        "foo \uff11",  # non-ASCII digits
        "1foo 1",  # invalid metric name
        'foo{a="1" 1',  # unterminated labels
        "foo{a=1} 1",  # unquoted value
        'foo{a="1",a="2"} 1',  # duplicate label
        'foo{-a="1"} 1',  # invalid label name
        'foo{a="1"}x 1',  # junk after the labels
        'foo{a="1"}} 1',
        'foo{__name__="bar"} 1',  # the name twice
        "# TYPE foo nonsense",
        "# TYPE foo",
        "# HELP",
        "# TYPE 1foo gauge",
    ],
)
def test_malformed_lines_fail(line: str) -> None:
    text = "ok 1\n" + line + "\n"
    with pytest.raises(ParseError):
        for series, _, _ in parse_text(text):
            parse_series(series)


def test_parse_dispatches_on_content_type() -> None:
    om = '# TYPE c counter\nc_total{a="b"} 1 1.25\nc_created{a="b"} 1000 1.25\n# EOF\n'
    parsed = parse(om.encode(), "application/openmetrics-text; version=1.0.0")
    rows = {parsed.labels_of(k)["__name__"]: (v, t) for k, v, t in parsed.rows}
    assert rows == {"c_total": (1.0, 1250), "c_created": (1000.0, 1250)}
    with pytest.raises(ParseError, match="EOF"):
        parse(b"c_total 1\n", "application/openmetrics-text")
    with pytest.raises(ParseError, match="UTF-8"):
        parse(b'foo{a="\xff"} 1\n', "text/plain")
    # unknown or missing content type: the Prometheus text format (Prometheus 2.x fallback)
    assert len(parse(b"foo 1\n", "").rows) == 1


def test_text_parse_is_fast_enough_for_node_exporter_pages() -> None:
    """A 2,600-series page must not stall the event loop (prometheus-client takes ~40 ms here)."""
    text = node_like_page(2500)
    parse_text(text)
    start = time.perf_counter()
    for _ in range(5):
        rows = parse_text(text)
    per_page = (time.perf_counter() - start) / 5
    assert len(rows) == 2500 + 32 + 5 + 5
    assert per_page < 0.02, per_page
