"""Every decoder and parser against hypothesis and mutated real bodies (issue 13, fuzzing).

Property for all: only the parser's own "bad input" error may come out (the
HTTP layer turns it into a 4xx), never another exception (a 500), and results
stay in range. The hand-written remote-write 1.0 decoder must moreover give
the protobuf library's verdict and samples on every mutation it accepts.
``max_examples`` is kept small so the hostile suite stays well under a minute
in CI; ``benchmarks/bench_hostile.py`` runs the long campaign.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
from typing import Any

import cramjam
from google.protobuf.message import DecodeError as ProtoDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.alerting.rules import parse_rule_file
from agent.alerting.template import TemplateData, TemplateError, parse_template
from agent.dataio.importer import CsvMapping, ImportReport, MappingError, parse_csv
from agent.prompb import remote_pb2
from plugins.json_ingest import validate_item
from plugins.remote_read import BadRequest, parse_request
from plugins.remote_write import v2 as v2_codec
from plugins.remote_write.labels import validate_label_strings
from plugins.remote_write.wire import (
    DecodeError,
    SeriesIssue,
    decode_write_request,
)
from plugins.statsd.parser import Malformed, parse_line
from plugins.text_import import _om_line, _text_line, parse_lines
from tests.hostile.cases import captured_bodies, mutate

# Small in CI; benchmarks/bench_hostile.py --fuzz-examples N runs the long campaign.
FAST = settings(
    max_examples=int(os.environ.get("TSAGENT_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
BODIES = {c.name: c.body for c in captured_bodies()}
INT64 = (-(2**63), 2**63 - 1)


def plain(name: str) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(BODIES[name]))


def bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


def reference(buf: bytes) -> list[tuple[Any, int, int]]:
    """Samples of valid series as the protobuf library reads them."""
    out = []
    for ts in remote_pb2.WriteRequest.FromString(buf).timeseries:
        verdict = validate_label_strings([(lab.name, lab.value) for lab in ts.labels])
        if not isinstance(verdict, str):
            out.extend((verdict, s.timestamp, bits(s.value)) for s in ts.samples)
    return out


def ours(buf: bytes) -> list[tuple[Any, int, int]]:
    decoded = decode_write_request(buf, {})
    labels: dict[int, Any] = {}
    for key, positions in decoded.misses.items():
        for p in positions:
            labels[p] = decoded.miss_labels[key]
    return [
        (labels[i], int(decoded.ts[i]), bits(float(decoded.vals[i])))
        for i in range(len(decoded.ids))
        if not isinstance(labels[i], SeriesIssue)
    ]


@FAST
@given(st.randoms(use_true_random=False))
def test_remote_write_v1_matches_protobuf_on_mutated_real_bodies(rng: random.Random) -> None:
    mutated = mutate(plain("remote write 1.0"), rng)
    try:
        expected = reference(mutated)
    except ProtoDecodeError:
        expected = None
    try:
        got = ours(mutated)
    except DecodeError:
        assert expected is None  # same verdict: the library refuses it too
        return
    if expected is not None:
        assert got == expected


@FAST
@given(st.randoms(use_true_random=False))
def test_remote_write_v2_mutations_fail_cleanly(rng: random.Random) -> None:
    try:
        decoded = v2_codec.decode_request(mutate(plain("remote write 2.0"), rng), {})
    except DecodeError:
        return
    assert all(INT64[0] <= int(t) <= INT64[1] for t in decoded.ts)


@FAST
@given(st.one_of(st.binary(max_size=64), st.randoms(use_true_random=False)))
def test_remote_read_and_snappy_headers_fail_cleanly(raw: Any) -> None:
    body = raw if isinstance(raw, bytes) else mutate(BODIES["remote read"], raw)
    with contextlib.suppress(BadRequest):
        parse_request(body)


@FAST
@given(st.one_of(st.binary(max_size=80), st.randoms(use_true_random=False)))
def test_statsd_lines_fail_cleanly(raw: Any) -> None:
    line = raw if isinstance(raw, bytes) else mutate(b"latency:320|ms|@0.1|#env:prod", raw)
    with contextlib.suppress(Malformed):
        parse_line(line)


@FAST
@given(st.one_of(st.text(max_size=200), st.randoms(use_true_random=False)), st.booleans())
def test_prometheus_text_and_openmetrics_lines(raw: Any, om: bool) -> None:
    if not isinstance(raw, str):
        base = BODIES["openmetrics" if om else "prometheus text"]
        raw = mutate(base, raw).decode("utf-8", "replace")
    report = ImportReport()
    for _no, (_name, _labels, _value, ms) in parse_lines(
        raw.splitlines(), _om_line if om else _text_line, report
    ):
        assert ms is None or INT64[0] <= ms <= INT64[1]


SPEC = CsvMapping.from_vm_format("1:time:unix_s,2:label:host,3:metric:fuzz_csv")


@FAST
@given(st.one_of(st.text(max_size=300), st.randoms(use_true_random=False)))
def test_csv_with_column_spec(raw: Any) -> None:
    if not isinstance(raw, str):
        raw = mutate(BODIES["csv column spec"], raw).decode("utf-8", "replace")
    try:
        parsed = parse_csv(io.StringIO(raw, newline=""), SPEC, now_ms=1_700_000_000_000)
    except MappingError:
        return
    assert parsed.timestamps.dtype.kind == "i"


@FAST
@given(st.text(max_size=40))
def test_csv_time_format_patterns(pattern: str) -> None:
    try:
        mapping = CsvMapping.from_dict(
            {
                "timestamp": {"column": 1, "format": "%" + pattern},
                "values": [2],
                "header": False,
                "metric": "fuzz",
            }
        )
    except MappingError:
        return
    parse_csv(io.StringIO("2024-01-01,1\n01,2\n", newline=""), mapping)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)


@FAST
@given(st.one_of(json_values, st.randoms(use_true_random=False)))
def test_json_items(item: Any) -> None:
    if isinstance(item, random.Random):
        try:
            items = json.loads(mutate(BODIES["json backfill"], item))
        except (ValueError, RecursionError):
            return
        item = items[0] if isinstance(items, list) and items else items
    validate_item(item, 0)


@FAST
@given(st.one_of(st.text(max_size=300), st.randoms(use_true_random=False)))
def test_rule_files(raw: Any) -> None:
    base = (
        "groups:\n- name: g\n  rules:\n  - alert: High\n    expr: up == 0\n    for: 5m\n"
        "    labels: {severity: page}\n    annotations: {summary: '{{ $labels.job }} down'}\n"
    )
    text = raw if isinstance(raw, str) else mutate(base.encode(), raw).decode("utf-8", "replace")
    _groups, errors = parse_rule_file(text, "fuzz.yml")
    assert isinstance(errors, list)


@FAST
@given(st.text(max_size=120))
def test_templates(source: str) -> None:
    try:
        template = parse_template(source)
        template.render(TemplateData({"job": "x"}, 1.5))
    except TemplateError:
        pass
