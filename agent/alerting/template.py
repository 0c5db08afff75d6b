"""A small, safe subset of Go's text/template, as Prometheus uses it in rules.

Rule labels and annotations are templates (``{{ $labels.instance }} is at
{{ $value | humanize }}``). Users copy them from existing Prometheus rule
files, so the syntax and the printed forms follow Go (``{{ $value }}`` of
1e6 prints ``1e+06``, ``{{ $labels }}`` prints ``map[a:b]``). Nothing is ever
evaluated as Python: a template is parsed once into a list of literal texts
and pipelines of known functions over known variables, and anything else is
a parse error reported when the rule file is loaded.

Supported: ``$labels``, ``$labels.NAME``, ``$value``, ``$externalLabels``,
``$externalLabels.NAME``, ``$externalURL`` (and ``.Labels``, ``.Value``,
``.ExternalLabels``, ``.ExternalURL``), string and number literals, pipes
(``x | f``), ``{{-``/``-}}`` whitespace trimming, ``{{/* comments */}}``, and
the functions in :data:`FUNCTIONS`. Not supported: ``if``/``range``/``with``,
variables assignment, ``query`` and the other Prometheus functions that run
PromQL from a template.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.query.numfmt import special_text


class TemplateError(ValueError):
    """The template cannot be parsed, or a function got arguments it cannot use."""


# --- Go-compatible formatting --------------------------------------------------


def _shortest_digits(v: float) -> tuple[str, int]:
    """Shortest round-trip digits of ``abs(v)`` and the decimal exponent of the first one."""
    d = Decimal(repr(abs(v)))
    _sign, digits, exp = d.normalize().as_tuple()
    text = "".join(str(x) for x in digits).rstrip("0") or "0"
    assert isinstance(exp, int)
    return text, exp + len(digits) - 1


def go_float(v: float) -> str:
    """Go's ``%v`` of a float64 (``strconv.FormatFloat(v, 'g', -1, 64)``): 1e6 is ``1e+06``."""
    special = special_text(v)
    if special is not None:
        return special
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    digits, exp = _shortest_digits(v)
    sign = "-" if v < 0 else ""
    if exp < -4 or exp >= 6:  # shortest precision: Go decides with precision 6
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    text = format(Decimal(repr(abs(v))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return sign + text


def go_float_e(v: float) -> str:
    """``strconv.FormatFloat(v, 'e', -1, 64)``: how Prometheus's API prints alert values."""
    special = special_text(v)
    if special is not None:
        return special
    if v == 0:
        return ("-" if math.copysign(1.0, v) < 0 else "") + "0e+00"
    digits, exp = _shortest_digits(v)
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if v < 0 else ''}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _go_g(v: float, prec: int) -> str:
    """Go's ``%.Ng`` (Python's ``%g`` agrees except for the spelling of NaN and infinities)."""
    special = special_text(v)
    if special is not None:
        return special
    return f"%.{prec}g" % v


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TemplateError(f"cannot convert {value!r} to a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise TemplateError(f"cannot convert {value!r} to a number") from None
    raise TemplateError(f"cannot convert {value!r} to a number")


def to_text(value: Any) -> str:
    """What ``{{ value }}`` prints (Go's ``fmt.Sprint``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{to_text(value[k])}" for k in sorted(value)) + "]"
    if value is None:
        return "<no value>"
    return str(value)


# --- functions (Prometheus's template function names) --------------------------------


def humanize(value: Any) -> str:
    """SI prefixes: 1234567 -> ``1.235M``, 0.0012 -> ``1.2m``."""
    v = _to_float(value)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _go_g(v, 4)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix = p
            v /= 1000
        return _go_g(v, 4) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return _go_g(v, 4) + prefix


def humanize1024(value: Any) -> str:
    """Binary prefixes: 1048576 -> ``1Mi``."""
    v = _to_float(value)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _go_g(v, 4)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix = p
        v /= 1024
    return _go_g(v, 4) + prefix


def humanize_percentage(value: Any) -> str:
    """0.1234 -> ``12.34%``."""
    return _go_g(_to_float(value) * 100, 4) + "%"


def humanize_duration(value: Any) -> str:
    """Seconds as ``1d 2h 3m 4s`` (sub-second values in ms/us/ns), as Prometheus prints them."""
    v = _to_float(value)
    if math.isnan(v) or math.isinf(v):
        return _go_g(v, 4)
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        seconds = int(v) % 60
        minutes = int(v) // 60 % 60
        hours = int(v) // 3600 % 24
        days = int(v) // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{v:.4g}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return f"{v:.4g}{prefix}s"


_PRINTF_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def printf(fmt: Any, *args: Any) -> str:
    """Go's ``printf`` for the verbs templates use: ``%s %v %d %f %e %g %q %x %%``."""
    if not isinstance(fmt, str):
        raise TemplateError("printf: the format must be a string")
    out: list[str] = []
    pos = 0
    arg_i = 0
    for m in _PRINTF_VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2) or "", m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if width == "*":
            raise TemplateError("printf: '*' widths are not supported")
        if arg_i >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[arg_i]
        arg_i += 1
        spec = "%" + flags + width + (f".{prec}" if prec is not None else "")
        if verb in "sv":
            out.append((spec + "s") % to_text(arg))
        elif verb == "q":
            out.append((spec + "s") % _go_quote(to_text(arg)))
        elif verb in "dxXob":
            try:
                number = int(_to_float(arg)) if not isinstance(arg, int) else arg
            except (TemplateError, ValueError, OverflowError):
                out.append(f"%!{verb}({to_text(arg)})")
                continue
            if verb == "b":
                out.append(format(number, flags + width + "b"))
            else:
                out.append((spec + verb) % number)
        elif verb in "feEgG":
            try:
                f = _to_float(arg)
            except TemplateError:
                out.append(f"%!{verb}({to_text(arg)})")
                continue
            special = special_text(f)
            out.append((spec + "s") % special if special else (spec + verb) % f)
        else:
            raise TemplateError(f"printf: unsupported verb %{verb}")
    out.append(fmt[pos:])
    if arg_i < len(args):
        out.append("%!(EXTRA " + ", ".join(to_text(a) for a in args[arg_i:]) + ")")
    return "".join(out)


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _title(value: Any) -> str:
    return re.sub(r"\b([a-z])", lambda m: m.group(1).upper(), str(value))


FUNCTIONS: dict[str, Callable[..., str]] = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
    "printf": printf,
    "toUpper": lambda v: str(v).upper(),
    "toLower": lambda v: str(v).lower(),
    "title": _title,
    "stripPort": lambda v: re.sub(r":\d+$", "", str(v)).strip("[]"),
    "reReplaceAll": lambda pattern, repl, text: re.sub(
        pattern, re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", str(repl)), str(text)
    ),
}
"""Functions available in templates, by their Prometheus names."""


# --- parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Var:
    path: tuple[str, ...]  # ("labels", "instance")


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[_Var | _Lit, ...]


@dataclass
class Template:
    """A parsed template; :meth:`render` never raises on data, only on bad function use."""

    source: str
    parts: list[str | list[_Call | _Var | _Lit]] = field(default_factory=list)

    @property
    def is_static(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render(self, data: TemplateData) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value: Any = None
            for i, cmd in enumerate(part):
                value = _run_cmd(cmd, data, value, piped=i > 0)
            out.append(to_text(value))
        return "".join(out)


@dataclass(frozen=True)
class TemplateData:
    """What a rule template sees: the sample's labels and value, and the agent's identity."""

    labels: Mapping[str, str]
    value: float
    external_labels: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""


_VARS = {
    "$labels": "labels",
    ".Labels": "labels",
    "$value": "value",
    ".Value": "value",
    "$externalLabels": "external_labels",
    ".ExternalLabels": "external_labels",
    "$externalURL": "external_url",
    ".ExternalURL": "external_url",
}


def _lookup(var: _Var, data: TemplateData) -> Any:
    head, *rest = var.path
    value: Any = getattr(data, head)
    for key in rest:
        if not isinstance(value, Mapping):
            raise TemplateError(f"can't evaluate field {key} of a {type(value).__name__}")
        value = value.get(key)  # a missing label prints "<no value>", as in Go
    return value


def _run_cmd(cmd: _Call | _Var | _Lit, data: TemplateData, prev: Any, piped: bool) -> Any:
    if isinstance(cmd, _Lit):
        return cmd.value
    if isinstance(cmd, _Var):
        return _lookup(cmd, data)
    args = [_lookup(a, data) if isinstance(a, _Var) else a.value for a in cmd.args]
    if piped:
        args.append(prev)
    try:
        return FUNCTIONS[cmd.name](*args)
    except TypeError as exc:
        raise TemplateError(f"wrong number of args for {cmd.name}: {exc}") from None
    except re.error as exc:
        raise TemplateError(f"{cmd.name}: {exc}") from None


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<num>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))(?=\s|\||$)
      | (?P<var>(?:\$[A-Za-z_]\w*|\.[A-Za-z_]\w*|\$|\.)(?:\.[A-Za-z_]\w*)*)
      | (?P<ident>[A-Za-z_]\w*)
      | (?P<pipe>\|)
      | (?P<paren>[()])
    )""",
    re.VERBOSE,
)
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_GO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'"}


def _unquote(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        c = m.group(1)
        if c not in _GO_ESCAPES:
            raise TemplateError(f"invalid escape \\{c} in {text}")
        return _GO_ESCAPES[c]

    return re.sub(r"\\(.)", sub, text[1:-1])


def _parse_var(text: str) -> _Var:
    parts = text.split(".") if text.startswith("$") else ["." + p for p in text[1:].split(".")]
    if text.startswith("$"):
        head, rest = parts[0], parts[1:]
    else:
        head, rest = parts[0], [p[1:] for p in parts[1:]]
    if head == "$" or head == ".":
        raise TemplateError(f"the template data {text!r} is not supported; use $labels or $value")
    if head not in _VARS:
        known = ", ".join(k for k in _VARS if k.startswith("$"))
        raise TemplateError(f"undefined variable {head!r} (known: {known})")
    name = _VARS[head]
    if name in ("value", "external_url") and rest:
        raise TemplateError(f"{head} has no fields")
    return _Var((name, *rest))


def _parse_action(body: str) -> list[_Call | _Var | _Lit]:
    pos = 0
    commands: list[list[_Var | _Lit | str]] = [[]]
    while pos < len(body):
        if not body[pos:].strip():
            break
        m = _TOKEN.match(body, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"unexpected {body[pos:].strip()[:20]!r} in action {{{{{body}}}}}")
        pos = m.end()
        kind = m.lastgroup
        tok = m.group(kind or 0)
        if kind == "pipe":
            if not commands[-1]:
                raise TemplateError(f"missing command before '|' in {{{{{body}}}}}")
            commands.append([])
        elif kind == "paren":
            raise TemplateError("parenthesised pipelines are not supported")
        elif kind == "str":
            commands[-1].append(_Lit(_unquote(tok)))
        elif kind == "raw":
            commands[-1].append(_Lit(tok[1:-1]))
        elif kind == "num":
            commands[-1].append(_Lit(float(tok) if any(c in tok for c in ".eE") else int(tok)))
        elif kind == "var":
            commands[-1].append(_parse_var(tok))
        elif kind == "ident":
            if tok in ("if", "else", "end", "range", "with", "define", "template", "block"):
                raise TemplateError(f"{{{{{tok}}}}} is not supported by tsagent's templates")
            if tok in ("true", "false"):
                commands[-1].append(_Lit(tok == "true"))
            elif tok not in FUNCTIONS:
                raise TemplateError(
                    f'function "{tok}" not defined (known: {", ".join(sorted(FUNCTIONS))})'
                )
            else:
                commands[-1].append(tok)
    if not commands[-1]:
        raise TemplateError(f"missing value for command in {{{{{body}}}}}")
    out: list[_Call | _Var | _Lit] = []
    for i, cmd in enumerate(commands):
        head = cmd[0]
        if isinstance(head, str):
            args = cmd[1:]
            if any(isinstance(a, str) for a in args):
                raise TemplateError(f"nested function calls need parentheses in {{{{{body}}}}}")
            out.append(_Call(head, tuple(a for a in args if not isinstance(a, str))))
        else:
            if len(cmd) > 1:
                raise TemplateError(f"can't give arguments to a non-function in {{{{{body}}}}}")
            if i > 0:
                raise TemplateError(f"non-function in a pipeline position in {{{{{body}}}}}")
            out.append(head)
    return out


def parse_template(source: str) -> Template:
    """Parse ``source``; raises :class:`TemplateError` naming what is not understood."""
    tmpl = Template(source)
    pos = 0
    text_parts: list[str] = []
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        text_parts.append(text)
        body = m.group(2)
        pos = m.end()
        trim_after = bool(m.group(3))
        if trim_after:
            rest = source[pos:]
            pos += len(rest) - len(rest.lstrip())
        stripped = body.strip()
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise TemplateError("unclosed comment")
            continue
        if not stripped:
            raise TemplateError("missing value for command")
        if text_parts:
            tmpl.parts.append("".join(text_parts))
            text_parts = []
        tmpl.parts.append(_parse_action(body))
    tail = source[pos:]
    if "{{" in tail:
        raise TemplateError("unclosed action")
    text_parts.append(tail)
    joined = "".join(text_parts)
    if joined:
        tmpl.parts.append(joined)
    return tmpl


def expand(source: str, data: TemplateData) -> str:
    """Parse and render once; rule evaluation keeps parsed :class:`Template` objects instead."""
    return parse_template(source).render(data)


def render_or_error(tmpl: Template, data: TemplateData) -> str:
    """``tmpl`` rendered, or Prometheus' ``<error expanding template: ...>`` text on failure.

    Prometheus puts a template error in the annotation's text, not in the rule's health.
    """
    try:
        return tmpl.render(data)
    except TemplateError as exc:
        return f"<error expanding template: {exc}>"
