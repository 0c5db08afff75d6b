"""The engine's own PromQL syntax tree.

The Rust-backed ``promql-parser`` does the parsing; :mod:`agent.query.parser`
converts its objects into these small frozen dataclasses so that the evaluator
works on plain Python values (milliseconds, tuples) and so that the tree can be
rewritten (the conformance runner injects ``@`` modifiers, for example) without
going back through the text form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agent.model import Matcher


class ValueType(StrEnum):
    SCALAR = "scalar"
    VECTOR = "vector"
    MATRIX = "matrix"
    STRING = "string"


class AtKind(StrEnum):
    AT = "at"
    START = "start"
    END = "end"


@dataclass(frozen=True)
class At:
    """An ``@`` modifier; ``ms`` is only meaningful for ``AtKind.AT``."""

    kind: AtKind
    ms: int = 0


@dataclass(frozen=True)
class Node:
    """Base node; ``pos`` is the 0-based character offset in the query, or -1."""

    @property
    def type(self) -> ValueType:  # pragma: no cover - overridden everywhere
        raise NotImplementedError


@dataclass(frozen=True)
class NumberLiteral(Node):
    value: float
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.SCALAR


@dataclass(frozen=True)
class StringLiteral(Node):
    value: str
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.STRING


@dataclass(frozen=True)
class VectorSelector(Node):
    name: str | None
    matchers: tuple[Matcher, ...]
    offset_ms: int = 0
    at: At | None = None
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.VECTOR


@dataclass(frozen=True)
class MatrixSelector(Node):
    selector: VectorSelector
    range_ms: int
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.MATRIX


@dataclass(frozen=True)
class Subquery(Node):
    expr: Node
    range_ms: int
    step_ms: int  # 0: use the engine's default subquery step
    offset_ms: int = 0
    at: At | None = None
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.MATRIX


@dataclass(frozen=True)
class Call(Node):
    name: str
    args: tuple[Node, ...]
    return_type: ValueType
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return self.return_type


@dataclass(frozen=True)
class Aggregate(Node):
    op: str
    expr: Node
    param: Node | None
    grouping: tuple[str, ...]
    without: bool
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return ValueType.VECTOR


class Card(StrEnum):
    ONE_TO_ONE = "one-to-one"
    MANY_TO_ONE = "many-to-one"
    ONE_TO_MANY = "one-to-many"
    MANY_TO_MANY = "many-to-many"


@dataclass(frozen=True)
class Binary(Node):
    op: str
    lhs: Node
    rhs: Node
    return_bool: bool = False
    card: Card = Card.ONE_TO_ONE
    on: bool = False
    matching: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    pos: int = -1

    @property
    def type(self) -> ValueType:
        if self.lhs.type == ValueType.SCALAR and self.rhs.type == ValueType.SCALAR:
            return ValueType.SCALAR
        return ValueType.VECTOR


@dataclass(frozen=True)
class Unary(Node):
    expr: Node
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return self.expr.type


@dataclass(frozen=True)
class Paren(Node):
    expr: Node
    pos: int = -1

    @property
    def type(self) -> ValueType:
        return self.expr.type


SET_OPS = frozenset({"and", "or", "unless"})
COMPARISON_OPS = frozenset({"==", "!=", ">", "<", ">=", "<="})
ARITHMETIC_OPS = frozenset({"+", "-", "*", "/", "%", "^", "atan2"})


def unwrap(node: Node) -> Node:
    """Strip parentheses, which never change a value."""
    while isinstance(node, Paren):
        node = node.expr
    return node


@dataclass
class Positions:
    """Maps a node's ``pos`` to Prometheus's ``line:col`` annotation suffix."""

    query: str
    cache: dict[int, str] = field(default_factory=dict)

    def format(self, pos: int) -> str:
        if pos < 0:
            return ""
        before = self.query[:pos]
        line = before.count("\n") + 1
        col = pos - (before.rfind("\n") + 1) + 1
        return f" ({line}:{col})"
