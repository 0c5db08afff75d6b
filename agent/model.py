"""The data model shared by the core and every plugin.

Kept free of I/O so that ingestors, the store and the query engine can all
import it without pulling each other in.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import re2

# A series is identified by its sorted label pairs, ``__name__`` included.
# Tuples of 2-tuples hash fast, are immutable and intern well.
Labels = tuple[tuple[str, str], ...]

METRIC_NAME = "__name__"

# Prometheus marks a series stale with one particular NaN bit pattern; it must
# never be confused with an ordinary NaN, so compare bits, not floats.
STALE_NAN_BITS = 0x7FF0000000000002
NORMAL_NAN_BITS = 0x7FF8000000000001
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]

_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def is_stale_nan(value: float) -> bool:
    """True only for Prometheus's staleness marker, not for any other NaN."""
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == STALE_NAN_BITS


def valid_label_name(name: str) -> bool:
    return bool(_LABEL_NAME_RE.match(name))


def valid_metric_name(name: str) -> bool:
    return bool(_METRIC_NAME_RE.match(name))


def make_labels(mapping: dict[str, str] | Labels | list[tuple[str, str]]) -> Labels:
    """Canonical label set: sorted by name, empty values dropped (as Prometheus does)."""
    items = mapping.items() if isinstance(mapping, dict) else mapping
    return tuple(sorted((str(k), str(v)) for k, v in items if v != ""))


def metric_name(labels: Labels) -> str:
    for k, v in labels:
        if k == METRIC_NAME:
            return v
    return ""


def format_labels(labels: Labels) -> str:
    """Render ``name{a="b"}`` the way Prometheus prints a series."""
    name = metric_name(labels)
    rest = ",".join(f'{k}="{v.translate(_ESCAPES)}"' for k, v in labels if k != METRIC_NAME)
    return f"{name}{{{rest}}}" if rest or not name else name


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad regex is the client's fault: answered as 400, not logged


def compile_anchored(pattern: str) -> Any:
    """``pattern`` fully anchored as Prometheus anchors it (``^(?s:...)$``), compiled by RE2.

    RE2 matches in time linear in the input whatever the pattern, so a regex
    such as ``(a+)+$`` cannot freeze the index scan; its syntax is Go's (no
    backreferences or lookaround), the same as Prometheus accepts. Raises
    ``ValueError`` with RE2's reason for a pattern it refuses.
    """
    try:
        return re2.compile(f"^(?s:{pattern})$", _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None


class MatchOp(StrEnum):
    EQ = "="
    NEQ = "!="
    RE = "=~"
    NRE = "!~"


@dataclass(frozen=True)
class Matcher:
    """A label matcher; regexes are fully anchored, as in Prometheus."""

    name: str
    op: MatchOp
    value: str
    _regex: Any = field(default=None, compare=False, repr=False)  # an RE2 pattern

    @classmethod
    def of(cls, name: str, op: str | MatchOp, value: str) -> Matcher:
        op = MatchOp(op)
        regex = None
        if op in (MatchOp.RE, MatchOp.NRE):
            try:
                regex = compile_anchored(value)
            except ValueError as exc:
                raise ValueError(f"invalid regex {value!r} for label {name!r}: {exc}") from exc
        return cls(name, op, value, regex)

    def matches(self, value: str) -> bool:
        """Match one label value; a missing label is the empty string."""
        if self.op is MatchOp.EQ:
            return value == self.value
        if self.op is MatchOp.NEQ:
            return value != self.value
        assert self._regex is not None
        hit = self._regex.match(value) is not None
        return hit if self.op is MatchOp.RE else not hit

    def matches_empty(self) -> bool:
        return self.matches("")


# Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection"),
# and the quote that neutralises them; a cell already starting with the quote is
# quoted too, so that restoring is exact for every value.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_QUOTE = "'"


def neutralize_cell(text: str) -> str:
    """``'=cmd|...`` for ``=cmd|...``: shown as text by spreadsheets, never evaluated."""
    if text.startswith((*FORMULA_STARTS, FORMULA_QUOTE)):
        return FORMULA_QUOTE + text
    return text


def restore_cell(text: str) -> str:
    """The inverse of :func:`neutralize_cell` (the CSV importer reads exports back)."""
    if text.startswith(FORMULA_QUOTE) and text[1:].startswith((*FORMULA_STARTS, FORMULA_QUOTE)):
        return text[1:]
    return text
