"""A reader for Prometheus's PromQL test-script format (``promqltest``).

The scripts themselves live outside this repository (``../shared/promqltest``);
this module only understands their format: ``load``/``load_with_nhcb``,
``clear`` and ``eval`` commands with ``expect`` lines, and series written in
promtool's expanding notation (``1+2x10``, ``_x3``, ``stale``, ...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.model import STALE_NAN, Labels, make_labels
from agent.query.parser import parse_duration_ms

PAT_LOAD = re.compile(r"^load(?:_(with_nhcb))?\s+(.+?)$")
PAT_INSTANT = re.compile(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
PAT_RANGE = re.compile(
    r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$"
)
PAT_EXPECT = re.compile(
    r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$"
)
PAT_EXPECT_RANGE = re.compile(r"^expect range vector\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$")
_NUM = r"[+-]?(?:Inf|NaN|inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
PAT_ITEM = re.compile(rf"^(?P<a>{_NUM}|stale)(?:(?P<op>[+-])(?P<b>{_NUM}))?(?:x(?P<n>\d+))?$")
PAT_BLANK = re.compile(r"^_(?:x(?P<n>\d+))?$")


def parse_duration(text: str) -> int:
    text = text.strip()
    if text in ("0", "0s"):
        return 0
    if text.startswith("-"):
        return -parse_duration_ms(text[1:])
    return parse_duration_ms(text)


def parse_number(text: str) -> float:
    t = text.strip()
    low = t.lower().lstrip("+-")
    if low.startswith("0x") and re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
        return float(int(t, 16))
    if low in ("inf", "infinity"):
        return -math.inf if t.startswith("-") else math.inf
    if low == "nan":
        return math.nan
    if not re.fullmatch(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", t):
        raise ValueError(text)
    return float(t)


@dataclass
class Value:
    """One position of a series description: a float, a gap, or a native histogram."""

    v: float = 0.0
    omitted: bool = False
    histogram: bool = False


def _unquote(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            simple = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r"}
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            if n == "x":
                out.append(chr(int(s[i + 2 : i + 4], 16)))
                i += 4
                continue
            if n == "u":
                out.append(chr(int(s[i + 2 : i + 6], 16)))
                i += 6
                continue
        out.append(c)
        i += 1
    return "".join(out)


_LABEL = re.compile(
    r'\s*([a-zA-Z_][a-zA-Z0-9_]*|"(?:[^"\\]|\\.)*")\s*(?:=\s*"((?:[^"\\]|\\.)*)")?\s*,?'
)


def parse_metric(text: str) -> Labels:
    """``name{a="b", ...}`` (either part optional) into canonical labels."""
    text = text.strip()
    name, _, rest = text.partition("{")
    labels: dict[str, str] = {}
    if name.strip():
        labels["__name__"] = name.strip()
    body = rest.rsplit("}", 1)[0] if rest else ""
    pos = 0
    while pos < len(body.strip()) and pos < len(body):
        m = _LABEL.match(body, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad label set {text!r}")
        key, val = m.group(1), m.group(2)
        if val is None:  # a quoted metric name: {"metric.name", ...}
            labels["__name__"] = _unquote(key[1:-1])
        else:
            labels[_unquote(key[1:-1]) if key.startswith('"') else key] = _unquote(val)
        pos = m.end()
    return make_labels(labels)


def split_series(line: str) -> tuple[str, str]:
    """Split ``metric{...} values`` at the end of the label set (quotes respected)."""
    depth = 0
    in_str = False
    i = 0
    while i < len(line):
        c = line[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return line[: i + 1], line[i + 1 :]
        elif c.isspace() and depth == 0:
            return line[:i], line[i:]
        i += 1
    return line, ""


def _tokens(text: str) -> list[str]:
    """Whitespace-separated items, keeping ``{{...}}`` histogram literals whole."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for c in text:
        if c.isspace() and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        depth += (c == "{") - (c == "}")
        cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


def parse_values(text: str) -> list[Value]:
    out: list[Value] = []
    text = text.strip()
    # Native histograms ({{...}} with optional x/+ suffixes) become opaque markers.
    for tok in _tokens(text):
        if "{{" in tok:
            m = re.search(r"x(\d+)$", tok)
            count = int(m.group(1)) + 1 if m else 1
            out.extend(Value(histogram=True) for _ in range(count))
            continue
        b = PAT_BLANK.match(tok)
        if b:
            out.extend(Value(omitted=True) for _ in range(int(b.group("n") or 1)))
            continue
        m = PAT_ITEM.match(tok)
        if not m:
            raise ValueError(f"bad series value {tok!r}")
        a = STALE_NAN if m.group("a") == "stale" else parse_number(m.group("a"))
        if m.group("n") is None:
            out.append(Value(a))
            continue
        n = int(m.group("n"))
        delta = 0.0
        if m.group("op"):
            delta = parse_number(m.group("b"))
            if m.group("op") == "-":
                delta = -delta
        cur = a
        for _ in range(n + 1):
            out.append(Value(cur))
            cur += delta
    return out


@dataclass
class Load:
    interval_ms: int
    series: list[tuple[Labels, list[Value]]]
    nhcb: bool = False


@dataclass
class Expect:
    kind: str  # fail, warn, no_warn, info, no_info, ordered
    message: str | None = None
    regex: re.Pattern[str] | None = None

    def matches(self, text: str) -> bool:
        if self.message is not None:
            return text == self.message
        assert self.regex is not None
        return self.regex.search(text) is not None


@dataclass
class Eval:
    file: str
    line: int
    expr: str
    instant: bool
    start_ms: int
    end_ms: int = 0
    step_ms: int = 0
    expects: list[Expect] = field(default_factory=list)
    scalar: float | None = None
    series: list[tuple[Labels, list[Value], int]] = field(default_factory=list)
    expected_string: str | None = None
    range_vector: tuple[int, int, int] | None = None
    loads: list[Load] = field(default_factory=list)  # data visible to this eval

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    def of(self, kind: str) -> list[Expect]:
        return [e for e in self.expects if e.kind == kind]


def _go_unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == "`":
        return s[1:-1]
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return _unquote(s[1:-1])
    raise ValueError(f"bad string literal {s!r}")


def _parse_expect(line: str) -> Expect:
    m = PAT_EXPECT.match(line)
    if not m:
        raise ValueError(f"bad expect line {line!r}")
    kind, mode, text = m.group(1), m.group(2), m.group(3)
    if mode == "msg":
        return Expect(kind, message=text.strip())
    if mode == "regex":
        return Expect(kind, regex=re.compile(text.strip()))
    return Expect(kind, regex=re.compile(".*"))


def parse_script(path: Path) -> list[Eval]:
    """All ``eval`` commands of one script, each with the loads in effect for it."""
    name = path.name
    lines = []
    for raw in path.read_text().split("\n"):
        s = raw.strip()
        lines.append("" if s.startswith("#") else s)
    evals: list[Eval] = []
    loads: list[Load] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        word = line.split()[0].lower()
        if word == "clear":
            loads = []
            i += 1
            continue
        if word.startswith("load"):
            m = PAT_LOAD.match(line)
            if not m:
                raise ValueError(f"{name}:{i + 1}: bad load {line!r}")
            load = Load(parse_duration(m.group(2)), [], nhcb=m.group(1) == "with_nhcb")
            i += 1
            while i < len(lines) and lines[i]:
                metric, values = split_series(lines[i])
                load.series.append((parse_metric(metric), parse_values(values)))
                i += 1
            loads = [*loads, load]
            continue
        if word.startswith("eval"):
            ev = _parse_eval(name, lines, i)
            ev.loads = loads
            evals.append(ev)
            i += 1
            while i < len(lines) and lines[i]:
                i += 1
            continue
        raise ValueError(f"{name}:{i + 1}: unknown command {line!r}")
    return evals


def _parse_eval(name: str, lines: list[str], i: int) -> Eval:
    line = lines[i]
    mi, mr = PAT_INSTANT.match(line), PAT_RANGE.match(line)
    if mi:
        mod = mi.group(1)
        ev = Eval(name, i + 1, mi.group(3), True, parse_duration(mi.group(2) or "0"))
    elif mr:
        mod = mr.group(1)
        ev = Eval(
            name,
            i + 1,
            mr.group(5),
            False,
            parse_duration(mr.group(2)),
            parse_duration(mr.group(3)),
            parse_duration(mr.group(4)),
        )
    else:
        raise ValueError(f"{name}:{i + 1}: bad eval {line!r}")
    if mod:
        ev.expects.append(Expect(mod, regex=re.compile(".*")))
    pos = 0
    j = i + 1
    while j < len(lines) and lines[j]:
        d = lines[j]
        j += 1
        if d.startswith("expected_fail_message"):
            ev.expects.append(Expect("fail", message=d[len("expected_fail_message") :].strip()))
            continue
        if d.startswith("expected_fail_regexp"):
            pat = d[len("expected_fail_regexp") :].strip()
            ev.expects.append(Expect("fail", regex=re.compile(pat)))
            continue
        if d.startswith("expect range vector"):
            m = PAT_EXPECT_RANGE.match(d)
            assert m, d
            ev.range_vector = (
                parse_duration(m.group(1)),
                parse_duration(m.group(2)),
                parse_duration(m.group(3)),
            )
            continue
        if d.startswith("expect string"):
            ev.expected_string = _go_unquote(d[len("expect string") :])
            continue
        if d.split(" ")[0] == "expect":
            ev.expects.append(_parse_expect(d))
            continue
        try:
            ev.scalar = parse_number(d)
            continue
        except ValueError:
            pass
        metric, values = split_series(d)
        pos += 1
        ev.series.append((parse_metric(metric), parse_values(values), pos))
    return ev
