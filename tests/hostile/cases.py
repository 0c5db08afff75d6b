"""The hostile-input catalogue (issue 13) and the fuzz corpus, shared by
``tests/hostile`` and ``benchmarks/bench_hostile.py``.

A :class:`Case` is one HTTP request and the answers it may get. ``scale``
shrinks the expensive ones for CI (the benchmark uses the issue's sizes).
Query cases are listed separately: the query engineer's branch makes them
pass; until it is merged only the benchmark fires them.
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import cramjam

from agent.prompb import remote_pb2, types_pb2, write_v2_pb2
from agent.wire import uvarint as _varint

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
V1 = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
V2 = {
    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "2.0.0",
}
READ = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Read-Version": "0.1.0",
}
CLIENT_ERROR = frozenset(range(400, 500))


@dataclass
class Case:
    cls: str
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Answers allowed; a 5xx is never allowed unless listed (503 for a busy store is not).
    expect: frozenset[int] = CLIENT_ERROR
    group: str = "write"  # which credentials the harness sends


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rw_v1(series: list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]) -> bytes:
    req = remote_pb2.WriteRequest(
        timeseries=[
            types_pb2.TimeSeries(
                labels=[types_pb2.Label(name=k, value=v) for k, v in labels],
                samples=[types_pb2.Sample(timestamp=t, value=v) for t, v in samples],
            )
            for labels, samples in series
        ]
    )
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def rw_v2(labels: list[tuple[str, str]], samples: list[tuple[int, float]]) -> bytes:
    symbols = [""]
    refs: list[int] = []
    for k, v in labels:
        for s in (k, v):
            if s not in symbols:
                symbols.append(s)
            refs.append(symbols.index(s))
    req = write_v2_pb2.Request(
        symbols=symbols,
        timeseries=[
            write_v2_pb2.TimeSeries(
                labels_refs=refs,
                samples=[write_v2_pb2.Sample(timestamp=t, value=v) for t, v in samples],
            )
        ],
    )
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def read_request(matchers: list[tuple[int, str, str]], start: int, end: int) -> bytes:
    query = remote_pb2.Query(
        start_timestamp_ms=start,
        end_timestamp_ms=end,
        matchers=[types_pb2.LabelMatcher(type=t, name=n, value=v) for t, n, v in matchers],
    )
    req = remote_pb2.ReadRequest(queries=[query])
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def big_remote_write(samples: int, series: int = 10_000, job: str = "big") -> bytes:
    """A valid, large remote-write body (issue: 3.8 MB, 81 MB decompressed, 4.5 M samples).

    Encoded by hand: building millions of protobuf objects would take the
    client longer than the daemon takes to decode them.
    """
    per = max(samples // series, 1)
    t0 = now_ms() - per * 1000
    pack = struct.Struct("<d").pack
    sample_blobs = [
        _field(2, b"\x09" + pack(float(j)) + b"\x10" + _varint(t0 + j * 1000)) for j in range(per)
    ]
    samples_part = b"".join(sample_blobs)
    parts = []
    for i in range(series):
        labels = [("__name__", "hostile_big"), ("instance", f"host-{i}"), ("job", job)]
        lab = b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in labels)
        parts.append(_field(1, lab + samples_part))
    return bytes(cramjam.snappy.compress_raw(b"".join(parts)))


def big_text(lines: int) -> bytes:
    """Prometheus text, 40 bytes a line: ~20 MB for 500,000 lines."""
    now, last = now_ms(), (lines - 1) // 5000
    return "".join(
        f'hostile_text_big{{i="{i % 5000}"}} {i} {now - (last - i // 5000) * 1000}\n'
        for i in range(lines)
    ).encode()


def big_json(items: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms() / 1000 - 3600))
    one = '{"metric_name":"hostile_json_big","labels":{"i":"%d"},"value":%d,"timestamp":"%s"}'
    return ("[" + ",".join(one % (i, i, stamp) for i in range(items)) + "]").encode()


def big_csv(series: int) -> bytes:
    """One sample an hour ago for each of ``series`` series: ~25 bytes a row."""
    ts = now_ms() // 1000 - 3600
    return "".join(f"{ts},{i},{i}\n" for i in range(series)).encode()


def backfill_cases(series: int) -> list[Case]:
    """CSV imports of ``series`` new series, on_error=abort and skip. In abort mode all
    or nothing, yet prepared off the writer, so remote-write acknowledgements do not
    wait behind them (docs/security.md, "All-or-nothing backfills of many series")."""
    return [
        Case(
            f"backfill {mode}",
            f"csv import of {series} new series, on_error={mode}",
            "POST",
            f"/api/v1/import/csv?on_error={mode}&format=1:time:unix_s,2:label:i,"
            f"3:metric:hostile_bf_{mode}",
            big_csv(series),
            {"Content-Type": "text/csv"},
            frozenset({200, 429}),
        )
        for mode in ("abort", "skip")
    ]


def csv_case(name: str, body: bytes, query: str, expect: frozenset[int] = CLIENT_ERROR) -> Case:
    return Case(
        "malformed",
        name,
        "POST",
        "/api/v1/import/csv?" + query,
        body,
        {"Content-Type": "text/csv"},
        expect,
    )


def write_cases(scale: float = 1.0) -> list[Case]:
    """Every non-query case of issue 13; ``scale`` < 1 shrinks the big ones for CI."""
    now = now_ms()
    up = [("__name__", "hostile_up"), ("job", "hostile")]
    nested = int(100_000 * scale) or 1000
    big_field = int(3_000_000 * scale) or 200_000
    mapping_bad_fmt = json.dumps(
        {"timestamp": {"column": 1, "format": "%d" * 40}, "labels": [], "values": [2]}
    )
    cases = [
        # 1. timestamps
        Case(
            "timestamps",
            "rw ancient -2^62 next to now",
            "POST",
            "/api/v1/write",
            rw_v1([(up, [(-(2**62), 1.0), (now, 2.0)])]),
            V1,
        ),
        Case(
            "timestamps",
            "rw INT64_MIN on an empty series",
            "POST",
            "/api/v1/write",
            rw_v1([([("__name__", "hostile_min")], [(INT64_MIN, 1.0)])]),
            V1,
        ),
        Case(
            "timestamps",
            "rw INT64_MAX",
            "POST",
            "/api/v1/write",
            rw_v1([([("__name__", "hostile_max")], [(INT64_MAX, 1.0)])]),
            V1,
        ),
        Case(
            "timestamps",
            "rw v2 ancient",
            "POST",
            "/api/v1/write",
            rw_v2([("__name__", "hostile_v2")], [(-(2**62), 1.0)]),
            V2,
        ),
        Case(
            "timestamps",
            "text import 9223372036854775807",
            "POST",
            "/api/v1/import/prometheus",
            b"hostile_text 1 9223372036854775807\n",
        ),
        Case(
            "timestamps",
            "text import 1e300",
            "POST",
            "/api/v1/import/prometheus",
            b"hostile_text 1 1e300\nhostile_text_ok 1\n",
        ),
        Case(
            "timestamps",
            "text import backfill at 1 ms",
            "POST",
            "/api/v1/import/prometheus?backfill=true",
            b"hostile_text_old 1 -5\n",
        ),
        csv_case(
            "csv unix_ns overflow",
            b"99999999999999999999999,1\n",
            "format=1:time:unix_ns,2:metric:hostile_csv",
        ),
        # Valid (the floor is the epoch); it used to cost the rollup pass 10 minutes of CPU.
        csv_case(
            "csv at 1 ms epoch",
            b"0.001,1\n",
            "format=1:time:unix_s,2:metric:hostile_csv1",
            frozenset({200}),
        ),
        Case(
            "timestamps",
            "json ingest year 1",
            "POST",
            "/metrics/ingest",
            json.dumps(
                {"metric_name": "hostile_json", "value": 1, "timestamp": "0001-01-01T00:00:00Z"}
            ).encode(),
        ),
        Case(
            "timestamps",
            "json backfill 1900",
            "POST",
            "/backfill/import?on_error=abort",
            json.dumps(
                [{"metric_name": "hostile_jsonb", "value": 1, "timestamp": "1900-01-01T00:00:00Z"}]
            ).encode(),
        ),
        # 7. malformed input
        csv_case(
            "csv huge field",
            b"1700000000," + b"9" * big_field + b"\n1700000000,1\n",
            "format=1:time:unix_s,2:metric:hostile_csv2",
        ),
        csv_case("csv %d%d time format", b"01,1\n", "mapping=" + quote(mapping_bad_fmt)),
        csv_case(
            "csv unterminated quote",
            b'1700000000,"1\n',
            "format=1:time:unix_s,2:metric:q",
            CLIENT_ERROR | {200},
        ),
        Case(
            "malformed",
            "json ingest nested deep",
            "POST",
            "/metrics/ingest",
            b"[" * nested + b"]" * nested,
        ),
        Case(
            "malformed",
            "json backfill nested deep",
            "POST",
            "/backfill/import",
            b'{"items": ' + b"[" * nested + b"]" * nested + b"}",
        ),
        Case("malformed", "rw bad snappy", "POST", "/api/v1/write", b"\x10garbage", V1),
        Case(
            "malformed",
            "rw snappy header claims 2^40 bytes",
            "POST",
            "/api/v1/write",
            b"\x80\x80\x80\x80\x80\x20" + b"\x00" * 16,
            V1,
        ),
        Case(
            "malformed",
            "rw bad protobuf",
            "POST",
            "/api/v1/write",
            bytes(cramjam.snappy.compress_raw(b"\x0a\xff\xff\xff\xff\x0f")),
            V1,
        ),
        Case(
            "malformed",
            "remote read garbage",
            "POST",
            "/api/v1/read",
            bytes(cramjam.snappy.compress_raw(b"\x0a\x05\x08")),
            READ,
            group="read",
        ),
        Case(
            "malformed",
            "text import garbage lines",
            "POST",
            "/api/v1/import/prometheus",
            b"{{{\nhostile_ok 1\nbad metric\x00 1\n",
        ),
        Case("malformed", "URL of 20 KB", "GET", "/api/v1/labels?x=" + "a" * 20_000, group="read"),
        Case("malformed", "json ingest not json", "POST", "/metrics/ingest", b"\xff\xfe"),
        # 9. label limits
        Case(
            "labels",
            "rw label value 1 MB",
            "POST",
            "/api/v1/write",
            rw_v1(
                [
                    (
                        [("__name__", "hostile_lv"), ("v", "x" * int(1_000_000 * scale or 10_000))],
                        [(now, 1.0)],
                    )
                ]
            ),
            V1,
        ),
        Case(
            "labels",
            "rw 10,000 labels",
            "POST",
            "/api/v1/write",
            rw_v1(
                [
                    (
                        [
                            ("__name__", "hostile_many"),
                            *sorted((f"l{i:05d}", "v") for i in range(int(10000 * scale) or 100)),
                        ],
                        [(now, 1.0)],
                    )
                ]
            ),
            V1,
        ),
        Case(
            "labels",
            "text metric name 1 MB",
            "POST",
            "/api/v1/import/prometheus",
            b"m" * int(1_000_000 * scale or 10_000) + b" 1\n",
        ),
        Case(
            "timestamps",
            "rw 1 M ancient samples",
            "POST",
            "/api/v1/write",
            rw_v1(
                [
                    (
                        [("__name__", "hostile_many_old"), ("i", str(i))],
                        [(j + 1 - 2**62, 1.0) for j in range(100)],
                    )
                    for i in range(int(10_000 * scale) or 100)
                ]
            ),
            V1,
        ),
        # 8. large valid bodies: decoded off the event loop; over the decompressed limit
        # 413 before decompressing; several near the limit share an in-flight budget (429).
        Case(
            "bodies",
            "remote write 4.5 M samples (81 MB decompressed)",
            "POST",
            "/api/v1/write",
            big_remote_write(int(4_500_000 * scale), series=int(10_000 * scale) or 100),
            V1,
            frozenset({204, 413, 429}) if scale < 0.4 else frozenset({413}),
        ),
        *(
            Case(
                "bodies",
                f"remote write 1.6 M samples (29 MB decompressed) #{n}",
                "POST",
                "/api/v1/write",
                big_remote_write(
                    int(1_600_000 * scale), series=int(4_000 * scale) or 40, job=f"big{n}"
                ),
                V1,
                frozenset({204, 429}),
            )
            for n in range(3)
        ),
        # Big push bodies (server.max_body_bytes is 32 MiB, ingest.json.max_body_bytes
        # 16 MiB): parsed off the event loop, within the ingest memory budget.
        Case(
            "bodies",
            "json backfill 21 MB (over its limit)",
            "POST",
            "/backfill/import",
            b"[" + b" " * int(21_000_000 * scale) + b"]",
            expect=frozenset({200, 413}) if scale < 0.5 else frozenset({413}),
        ),
        Case(
            "bodies",
            "text import 20 MB",
            "POST",
            "/api/v1/import/prometheus",
            big_text(int(500_000 * scale) or 5000),
            expect=frozenset({200, 429}),
        ),
        Case(
            "bodies",
            "json backfill 15 MB",
            "POST",
            "/backfill/import",
            big_json(int(140_000 * scale) or 2000),
            expect=frozenset({200, 429}),
        ),
        *backfill_cases(int(200_000 * scale) or 2000),
        # 9. export: formulas neutralised (checked by the test on the body)
        Case(
            "export",
            "csv export of formula labels",
            "GET",
            "/api/v1/export/csv?match[]=" + quote('{__name__="hostile_formula"}'),
            expect=frozenset({200}),
            group="read",
        ),
    ]
    return cases


FORMULA_VALUES = ["=cmd|' /C calc'!A0", "+SUM(1+1)", "@SUM(1+1)", "-2+3", "\tx", "'quoted"]


def formula_seed() -> Case:
    """Series whose label values are spreadsheet formulas (written before the export case)."""
    now = now_ms()
    body = rw_v1(
        [([("__name__", "hostile_formula"), ("v", v)], [(now - 1000, 1.0)]) for v in FORMULA_VALUES]
    )
    return Case(
        "export", "seed formula labels", "POST", "/api/v1/write", body, V1, frozenset({204})
    )


def query_cases(scale: float = 1.0) -> list[Case]:
    """Issue 13 items 2 to 5 (the query branch's work): answered cheaply or refused with 4xx.

    Sent as POST forms, as Grafana sends long queries: in a URL the longest
    would stop at aiohttp's 8 KB request-line limit before reaching the engine.
    """
    depth = int(10_000 * scale) or 500
    terms = int(5_000 * scale) or 250
    ok = CLIENT_ERROR | {200}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    day = 86_400
    now = int(time.time())

    def q(name: str, path: str, **params: str) -> Case:
        body = "&".join(f"{k}={quote(v)}" for k, v in params.items()).encode()
        return Case("query", name, "POST", path, body, form, ok, "read")

    return [
        q("nested parentheses", "/api/v1/query", query="(" * depth + "1" + ")" * depth),
        q("1+1+... terms", "/api/v1/query", query="+".join(["1"] * terms)),
        q("catastrophic regex", "/api/v1/query", query='{v=~"(a+)+$"}'),
        q("tiny subquery step", "/api/v1/query", query="sum_over_time(vector(1)[30d:1ms])"),
        q("max_over_time tiny step", "/api/v1/query", query="max_over_time(hostile_up[30d:1ms])"),
        q(
            "quantile join",
            "/api/v1/query_range",
            query="quantile_over_time(0.5, hostile_up[2d]) * on(job) group_left hostile_up",
            start=str(now - day),
            end=str(now),
            step="1",
        ),
        Case(
            "query",
            "join step=1ms over a day",
            "GET",
            "/api/v1/join?match[]=hostile_up&match[]=hostile_ack"
            + f"&start={now - day}&end={now}&step=0.001",
            expect=ok,
            group="read",
        ),
        Case(
            "query",
            "join over 100 years at 1 s",
            "GET",
            "/api/v1/join?match[]=hostile_up&match[]=hostile_ack"
            + f"&start={now - 100 * 365 * day}&end={now}&step=1",
            expect=ok,
            group="read",
        ),
    ]


# --- fuzz corpus: real bodies, mutated ------------------------------------------------


def captured_bodies() -> list[Case]:
    """One valid body per decoder, shaped like what real senders send."""
    now = now_ms()
    node = [
        (
            [
                ("__name__", "node_cpu_seconds_total"),
                ("cpu", str(c)),
                ("instance", "h:9100"),
                ("job", "node"),
                ("mode", m),
            ],
            [(now - 15_000, 1234.5 + c), (now, 1235.0 + c)],
        )
        for c in range(4)
        for m in ("idle", "user", "system")
    ]
    text = (
        "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n"
        'http_requests_total{code="200",method="get"} 1027\n'
        'http_requests_total{code="400",method="post"} 3 ' + str(now) + "\n"
        'rpc_duration_seconds{quantile="0.99"} 76656\n'
    ).encode()
    om = (
        "# TYPE acme_http_router_request_seconds summary\n"
        'acme_http_router_request_seconds_sum{path="/api/v1"} 324789.3 '
        + f"{now / 1000:.3f}\n# EOF\n"
    ).encode()
    csv = "\n".join(f"{now // 1000 - i},host{i % 3},{i * 0.5}" for i in range(20)).encode()
    items = [
        {
            "metric_name": "fuzz_json",
            "labels": {"a": "b"},
            "value": i,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 - i)),
        }
        for i in range(5)
    ]
    return [
        Case("fuzz", "remote write 1.0", "POST", "/api/v1/write", rw_v1(node), V1),
        Case(
            "fuzz",
            "remote write 2.0",
            "POST",
            "/api/v1/write",
            rw_v2([("__name__", "fuzz_v2"), ("job", "x")], [(now, 1.0)]),
            V2,
        ),
        Case(
            "fuzz",
            "remote read",
            "POST",
            "/api/v1/read",
            read_request([(0, "__name__", "node_cpu_seconds_total")], now - 3_600_000, now),
            READ,
            group="read",
        ),
        Case("fuzz", "prometheus text", "POST", "/api/v1/import/prometheus", text),
        Case(
            "fuzz",
            "openmetrics",
            "POST",
            "/api/v1/import/prometheus",
            om,
            {"Content-Type": "application/openmetrics-text; version=1.0.0"},
        ),
        Case(
            "fuzz",
            "csv column spec",
            "POST",
            "/api/v1/import/csv?format=1:time:unix_s,2:label:host,3:metric:fuzz_csv",
            csv,
        ),
        Case("fuzz", "json ingest", "POST", "/metrics/ingest", json.dumps(items[0]).encode()),
        Case("fuzz", "json backfill", "POST", "/backfill/import", json.dumps(items).encode()),
    ]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level mutations: flips, truncation, duplication, insertion, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(i, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[i:]
        elif op == 2 and buf:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j : j + rng.randint(1, 64)] * rng.randint(1, 50)
        elif op == 3:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:
            buf[i:i] = rng.choice([b"\xff" * 10, b"\x00", b"[" * 500, b'"', b",", b"\n", b"{"])
        elif op == 5 and buf:
            buf[i : i + 1] = struct.pack("<q", rng.choice([INT64_MIN, INT64_MAX, -1, 0]))
    return bytes(buf)


def mutate_protobuf(body: bytes, rng: random.Random) -> bytes:
    """Mutate the decompressed message and compress it again (so the decoder sees it)."""
    plain = bytes(cramjam.snappy.decompress_raw(body))
    return bytes(cramjam.snappy.compress_raw(mutate(plain, rng)))


def fuzz_corpus(per_body: int, seed: int = 13) -> Iterator[Case]:
    rng = random.Random(seed)
    for base in captured_bodies():
        snappy = base.headers.get("Content-Encoding") == "snappy"
        for n in range(per_body):
            how: Callable[[bytes, random.Random], bytes] = (
                mutate_protobuf if snappy and n % 2 == 0 else mutate
            )
            yield Case(
                "fuzz",
                f"{base.name} #{n}",
                base.method,
                base.path,
                how(base.body, rng),
                base.headers,
                CLIENT_ERROR | {200, 204},
                base.group,
            )
