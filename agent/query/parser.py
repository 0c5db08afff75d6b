"""Adapter from the ``promql-parser`` package (a Rust PromQL parser) to :mod:`.ast`.

``promql-parser`` gives no source positions, but Prometheus's annotations end in
``(line:col)``; :class:`_Locator` recovers the positions the engine needs by
scanning the query text in the same pre-order the tree is walked in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import promql_parser as pp

from agent.durations import duration_string_ms
from agent.model import Matcher, MatchOp
from agent.query import ast
from agent.query.errors import BadDataError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_MATCH_OPS = {
    "MatchOp.Equal": MatchOp.EQ,
    "MatchOp.NotEqual": MatchOp.NEQ,
    "MatchOp.Re": MatchOp.RE,
    "MatchOp.NotRe": MatchOp.NRE,
}
_VALUE_TYPES = {
    "ValueType.Scalar": ast.ValueType.SCALAR,
    "ValueType.Vector": ast.ValueType.VECTOR,
    "ValueType.Matrix": ast.ValueType.MATRIX,
    "ValueType.String": ast.ValueType.STRING,
}
_CARDS = {
    "VectorMatchCardinality.OneToOne": ast.Card.ONE_TO_ONE,
    "VectorMatchCardinality.ManyToOne": ast.Card.MANY_TO_ONE,
    "VectorMatchCardinality.OneToMany": ast.Card.ONE_TO_MANY,
    "VectorMatchCardinality.ManyToMany": ast.Card.MANY_TO_MANY,
}


def parse_duration_ms(text: str) -> int:
    """Milliseconds of a Prometheus duration such as ``1h30m`` or ``10s53ms``."""
    ms = duration_string_ms(text)
    if ms is None:
        raise BadDataError(f'not a valid duration string: "{text}"')
    return ms


_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]+)\)")


def go_regex(pattern: str) -> str:
    """Rewrite RE2 syntax Python's ``re`` rejects: mid-pattern flag groups like ``a(?i)b``.

    RE2 applies ``(?i)`` to the rest of the enclosing group; Python only allows
    that at the very start, so it becomes the scoped form ``a(?i:b)``.
    """
    out = pattern
    while True:
        matches = list(_FLAG_GROUP.finditer(out))
        if not matches:
            return out
        m = matches[-1]
        flags = "".join(f for f in m.group(1) if f in "imsx")
        depth, i, end = 0, m.end(), len(out)
        while i < len(out):
            c = out[i]
            if c == "\\":
                i += 2
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    end = i
                    break
                depth -= 1
            i += 1
        body = out[m.end() : end]
        scoped = f"(?{flags}:{body})" if flags else f"(?:{body})"
        out = out[: m.start()] + scoped + out[end:]


def _td_ms(td: timedelta | None) -> int:
    return 0 if td is None else td // _MS


class _Locator:
    """Finds node positions by scanning forward through the query text."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.cursor = 0

    def find(self, pattern: str) -> int:
        m = re.compile(pattern, re.IGNORECASE).search(self.query, self.cursor)
        if m is None:
            return -1
        self.cursor = m.end()
        return m.start()

    def arg_start(self, pos: int) -> int:
        """Offset of the first argument after the ``(`` following ``pos``."""
        if pos < 0:
            return -1
        i = self.query.find("(", pos)
        if i < 0:
            return -1
        i += 1
        while i < len(self.query) and self.query[i].isspace():
            i += 1
        return i

    def arg_starts(self, pos: int) -> list[int]:
        """Start offsets of each top-level argument of the call whose name is at ``pos``."""
        q = self.query
        i = q.find("(", pos) if pos >= 0 else -1
        if i < 0:
            return []
        starts, depth, quote = [i + 1], 0, ""
        i += 1
        while i < len(q):
            c = q[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'`":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0:
                starts.append(i + 1)
            i += 1
        out = []
        for st in starts:
            while st < len(q) and q[st].isspace():
                st += 1
            out.append(st)
        return out

    def agg_param_start(self, pos: int) -> int:
        """Skip an aggregation's name and optional ``by (...)`` to its first argument."""
        if pos < 0:
            return -1
        m = re.compile(r"\w+\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(", re.IGNORECASE).match(
            self.query, pos
        )
        if m is None:
            return -1
        i = m.end()
        while i < len(self.query) and self.query[i].isspace():
            i += 1
        return i


# A string literal (skipped) or a call of holt_winters, Prometheus 2.x's name for
# double_exponential_smoothing, which promql-parser no longer knows.
_HOLT_WINTERS = re.compile(
    r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`[^`]*`)|\bholt_winters(?=\s*\()"
)


def _rename_holt_winters(query: str) -> str:
    """Accept ``holt_winters(...)`` as Prometheus 2.x dashboards still write it.

    Annotation positions then refer to the renamed text, which only matters
    for queries using the old name.
    """
    if "holt_winters" not in query:
        return query
    return _HOLT_WINTERS.sub(
        lambda m: m.group(1) if m.group(1) is not None else "double_exponential_smoothing", query
    )


def parse(query: str) -> ast.Node:
    """Parse ``query``; raises :class:`BadDataError` with the parser's message."""
    query = _rename_holt_winters(query)
    try:
        tree = pp.parse(query)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise BadDataError(f"parse error: {exc}") from None
    return _Converter(query).convert(tree)


class _Converter:
    def __init__(self, query: str) -> None:
        self.loc = _Locator(query)

    def convert(self, e: Any) -> ast.Node:
        try:
            return self._node(e)
        except BadDataError:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise BadDataError(f"parse error: unsupported expression: {exc}") from None

    def _at(self, at: Any) -> ast.At | None:
        if at is None:
            return None
        kind = str(at.type)
        if kind.endswith("Start"):
            return ast.At(ast.AtKind.START)
        if kind.endswith("End"):
            return ast.At(ast.AtKind.END)
        when: datetime = at.at
        return ast.At(ast.AtKind.AT, (when - _EPOCH) // _MS)

    def _selector(self, vs: Any) -> ast.VectorSelector:
        matchers: list[Matcher] = []
        if vs.matchers.or_matchers:
            raise BadDataError("parse error: 'or' inside label matchers is not supported")
        name = vs.name
        if name:
            matchers.append(Matcher.of("__name__", MatchOp.EQ, name))
        for m in vs.matchers.matchers:
            try:
                op = _MATCH_OPS[str(m.op)]
                value = go_regex(m.value) if op in (MatchOp.RE, MatchOp.NRE) else m.value
                matchers.append(Matcher.of(m.name, op, value))
            except ValueError as exc:
                raise BadDataError(f"parse error: {exc}") from None
        pos = self.loc.find(re.escape(name)) if name else self.loc.find(r"\{")
        if not any(not m.matches_empty() for m in matchers):
            raise BadDataError(
                "parse error: vector selector must contain at least one non-empty matcher"
            )
        return ast.VectorSelector(
            name=name or None,
            matchers=tuple(matchers),
            offset_ms=_td_ms(vs.offset),
            at=self._at(vs.at),
            pos=pos,
        )

    def _node(self, e: Any) -> ast.Node:
        if isinstance(e, pp.NumberLiteral):
            return ast.NumberLiteral(float(e.val))
        if isinstance(e, pp.StringLiteral):
            return ast.StringLiteral(str(e.val))
        if isinstance(e, pp.ParenExpr):
            return ast.Paren(self._node(e.expr))
        if isinstance(e, pp.UnaryExpr):
            return ast.Unary(self._node(e.expr))
        if isinstance(e, pp.VectorSelector):
            return self._selector(e)
        if isinstance(e, pp.MatrixSelector):
            sel = self._selector(e.vector_selector)
            return ast.MatrixSelector(sel, _td_ms(e.range), pos=sel.pos)
        if isinstance(e, pp.SubqueryExpr):
            start = self.loc.cursor
            inner = self._node(e.expr)
            return ast.Subquery(
                inner,
                range_ms=_td_ms(e.range),
                step_ms=_td_ms(e.step),
                offset_ms=_td_ms(e.offset),
                at=self._at(e.at),
                pos=start,
            )
        if isinstance(e, pp.Call):
            name = e.func.name
            pos = self.loc.find(rf"\b{re.escape(name)}\s*\(")
            starts = self.loc.arg_starts(pos)
            args = tuple(self._node(a) for a in e.args)
            args = tuple(
                _with_pos(a, starts[i]) if getattr(a, "pos", 0) < 0 and i < len(starts) else a
                for i, a in enumerate(args)
            )
            return ast.Call(name, args, _VALUE_TYPES[str(e.func.return_type)], pos=pos)
        if isinstance(e, pp.AggregateExpr):
            op = str(e.op).lower()
            pos = self.loc.find(rf"\b{re.escape(op)}\b")
            param_pos = self.loc.agg_param_start(pos)
            param = self._node(e.param) if e.param is not None else None
            if param is not None and getattr(param, "pos", 0) < 0:
                param = _with_pos(param, param_pos)
            expr = self._node(e.expr)
            grouping: tuple[str, ...] = ()
            without = False
            if e.modifier is not None:
                grouping = tuple(e.modifier.labels)
                without = str(e.modifier.type).endswith("Without")
            return ast.Aggregate(op, expr, param, grouping, without, pos=pos)
        if isinstance(e, pp.BinaryExpr):
            lhs = self._node(e.lhs)
            op = str(e.op).lower()
            rhs = self._node(e.rhs)
            mod = e.modifier
            card = ast.Card.MANY_TO_MANY if op in ast.SET_OPS else ast.Card.ONE_TO_ONE
            on, rbool = False, False
            matching: tuple[str, ...] = ()
            include: tuple[str, ...] = ()
            if mod is not None:
                card = _CARDS[str(mod.card)]
                rbool = bool(mod.return_bool)
                include = tuple(mod.group_labels or ())
                if mod.matching is not None:
                    on = str(mod.matching.type).endswith("Include")
                    matching = tuple(mod.matching.labels)
            if op in ast.SET_OPS:
                card = ast.Card.MANY_TO_MANY
            return ast.Binary(op, lhs, rhs, rbool, card, on, matching, include)
        raise BadDataError(f"parse error: unsupported expression type {type(e).__name__}")


def _with_pos(node: ast.Node, pos: int) -> ast.Node:
    from dataclasses import replace

    return replace(node, pos=pos)  # type: ignore[call-arg]
