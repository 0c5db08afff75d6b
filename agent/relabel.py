"""Prometheus relabeling as pure functions.

Relabeling decides which targets are scraped, what they are called, and which
scraped series are kept. Users paste rules from their Prometheus configs, so
the semantics follow Prometheus' ``model/relabel`` exactly where Python allows:
regexes are fully anchored, ``source_labels`` are joined with ``separator``
(missing labels count as empty), ``replacement`` uses Go's ``$1`` / ``${1}`` /
``${name}`` template syntax, setting a label to the empty string deletes it,
and ``hashmod`` takes the last eight bytes of the MD5 digest as a big-endian
integer. Nothing here does I/O, so every rule can be tested in isolation.

Known difference: regexes are Python ``re``, not RE2. The common syntax is the
same; RE2-only constructs (``\\Q...\\E``, POSIX classes such as ``[[:alpha:]]``)
are refused or behave differently, and a regex is compiled when the config is
loaded so such problems surface there, named by key path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.config import Field, Schema, check_non_negative
from agent.model import valid_label_name

ACTIONS = (
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
)

DEFAULT_REGEX = "(.*)"
DEFAULT_SEPARATOR = ";"
DEFAULT_REPLACEMENT = "$1"

# A target label that may contain template references: Prometheus' relabelTarget.
_TEMPLATED_LABEL_RE = re.compile(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$")


class RelabelError(ValueError):
    """A rule that Prometheus would refuse; ``key`` names the offending field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def compile_regex(text: str) -> re.Pattern[str]:
    """Compile a relabel regex; matching always uses ``fullmatch`` (anchored both ends).

    ``fullmatch`` rather than ``^...$`` because Python's ``$`` also matches
    before a trailing newline, which Go's does not.
    """
    return re.compile(f"(?:{text})")


@dataclass(frozen=True)
class RelabelRule:
    """One compiled ``relabel_config``."""

    action: str = "replace"
    source_labels: tuple[str, ...] = ()
    separator: str = DEFAULT_SEPARATOR
    regex_text: str = DEFAULT_REGEX
    modulus: int = 0
    target_label: str = ""
    replacement: str = DEFAULT_REPLACEMENT
    regex: re.Pattern[str] = field(default=re.compile(f"(?:{DEFAULT_REGEX})"), compare=False)


def compile_rule(cfg: Mapping[str, Any]) -> RelabelRule:
    """Build a rule from a config mapping, checking it as Prometheus' ``Validate`` does.

    Raises :class:`RelabelError` naming the key that is wrong, so the config
    loader can report ``...relabel_configs[1].target_label: ...``.
    """
    action = str(cfg.get("action") or "replace").lower()
    if action not in ACTIONS:
        raise RelabelError("action", f"expected one of {', '.join(ACTIONS)}, found {action!r}")
    raw_regex = cfg.get("regex", DEFAULT_REGEX)
    regex_text = "" if raw_regex is None else str(raw_regex)
    try:
        regex = compile_regex(regex_text)
    except re.error as exc:
        raise RelabelError("regex", f"invalid regular expression {regex_text!r} ({exc})") from exc
    separator = cfg.get("separator", DEFAULT_SEPARATOR)
    separator = DEFAULT_SEPARATOR if separator is None else str(separator)
    replacement = cfg.get("replacement", DEFAULT_REPLACEMENT)
    replacement = DEFAULT_REPLACEMENT if replacement is None else str(replacement)
    target = str(cfg.get("target_label") or "")
    modulus = int(cfg.get("modulus") or 0)
    sources = tuple(str(s) for s in (cfg.get("source_labels") or ()))
    for i, name in enumerate(sources):
        if not valid_label_name(name):
            raise RelabelError(f"source_labels[{i}]", f"invalid label name {name!r}")

    needs_target = ("replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal")
    if action in needs_target and not target:
        raise RelabelError("target_label", f"the {action} action requires 'target_label'")
    if action == "replace" and target:
        ok = _TEMPLATED_LABEL_RE.match(target) if "$" in target else valid_label_name(target)
        if not ok:
            raise RelabelError("target_label", f"{target!r} is invalid for the replace action")
    if action in ("hashmod", "lowercase", "uppercase", "keepequal", "dropequal") and (
        not valid_label_name(target)
    ):
        raise RelabelError("target_label", f"{target!r} is invalid for the {action} action")
    if action == "hashmod" and modulus <= 0:
        raise RelabelError("modulus", "the hashmod action requires a modulus > 0")
    if action in ("lowercase", "uppercase", "keepequal", "dropequal") and (
        replacement != DEFAULT_REPLACEMENT
    ):
        raise RelabelError("replacement", f"'replacement' cannot be set for the {action} action")
    if action == "labelmap" and not _TEMPLATED_LABEL_RE.match(replacement):
        raise RelabelError("replacement", f"{replacement!r} is invalid for the labelmap action")
    if action in ("keepequal", "dropequal") and (
        regex_text != DEFAULT_REGEX or modulus or separator != DEFAULT_SEPARATOR
    ):
        raise RelabelError(
            "action", f"the {action} action takes only 'source_labels' and 'target_label'"
        )
    if action in ("labeldrop", "labelkeep") and (
        sources
        or target
        or modulus
        or separator != DEFAULT_SEPARATOR
        or replacement != DEFAULT_REPLACEMENT
    ):
        raise RelabelError("action", f"the {action} action takes only 'regex'")
    return RelabelRule(
        action=action,
        source_labels=sources,
        separator=separator,
        regex_text=regex_text,
        modulus=modulus,
        target_label=target,
        replacement=replacement,
        regex=regex,
    )


def compile_rules(cfgs: Iterable[Mapping[str, Any]]) -> tuple[RelabelRule, ...]:
    return tuple(compile_rule(c) for c in cfgs)


# --- Go template expansion ------------------------------------------------------


def _extract(template: str) -> tuple[str, str] | None:
    """Go's ``regexp.extract``: the name after ``$`` and the rest, or None if malformed."""
    brace = template.startswith("{")
    body = template[1:] if brace else template
    i = 0
    while i < len(body) and (body[i].isalnum() or body[i] == "_"):
        i += 1
    if i == 0:
        return None
    name = body[:i]
    if brace:
        if i >= len(body) or body[i] != "}":
            return None
        i += 1
    return name, body[i:]


def expand(template: str, match: re.Match[str]) -> str:
    """Expand ``$1``, ``${1}``, ``$name``, ``${name}`` and ``$$`` as Go's ``Regexp.Expand``.

    Go's rules differ from Python's ``Match.expand``: ``$1x`` names the group
    ``1x`` (so expands to nothing), unknown groups expand to nothing rather
    than raising, and a ``$`` not followed by a name stays literal.
    """
    if "$" not in template:
        return template
    out: list[str] = []
    rest = template
    groups = match.re.groupindex
    ngroups = match.re.groups
    while True:
        before, sep, after = rest.partition("$")
        out.append(before)
        if not sep:
            break
        if after.startswith("$"):
            out.append("$")
            rest = after[1:]
            continue
        parsed = _extract(after)
        if parsed is None:
            out.append("$")
            rest = after
            continue
        name, rest = parsed
        num = -1
        if name.isdigit() and name.isascii() and not (len(name) > 1 and name[0] == "0"):
            num = int(name) if len(name) <= 8 else -1
        if num >= 0:
            if num <= ngroups:
                out.append(match.group(num) or "")
        elif name in groups:
            out.append(match.group(name) or "")
    return "".join(out)


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' hashmod: MD5, last 8 bytes big-endian, modulo ``modulus``.

    Must agree with Prometheus bit for bit, or sharding the same targets
    between Prometheus and tsagent would overlap or leave gaps.
    """
    digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


# --- processing -------------------------------------------------------------------


def _set(lb: dict[str, str], name: str, value: str) -> None:
    """Setting a label to the empty string removes it, as Prometheus' Builder does."""
    if value:
        lb[name] = value
    else:
        lb.pop(name, None)


def apply_rule(rule: RelabelRule, lb: dict[str, str]) -> bool:
    """Apply one rule to ``lb`` in place; False means the label set is dropped."""
    val = rule.separator.join(lb.get(n, "") for n in rule.source_labels)
    action = rule.action
    if action == "replace":
        m = rule.regex.fullmatch(val)
        if m is None:
            return True
        target = expand(rule.target_label, m)
        if not valid_label_name(target):
            return True
        _set(lb, target, expand(rule.replacement, m))
    elif action == "keep":
        return rule.regex.fullmatch(val) is not None
    elif action == "drop":
        return rule.regex.fullmatch(val) is None
    elif action == "keepequal":
        return lb.get(rule.target_label, "") == val
    elif action == "dropequal":
        return lb.get(rule.target_label, "") != val
    elif action == "hashmod":
        _set(lb, rule.target_label, str(hashmod(val, rule.modulus)))
    elif action == "lowercase":
        _set(lb, rule.target_label, val.lower())
    elif action == "uppercase":
        _set(lb, rule.target_label, val.upper())
    elif action == "labelmap":
        for name, value in list(lb.items()):
            m = rule.regex.fullmatch(name)
            if m is not None:
                _set(lb, expand(rule.replacement, m), value)
    elif action == "labeldrop":
        for name in [n for n in lb if rule.regex.fullmatch(n)]:
            del lb[name]
    elif action == "labelkeep":
        for name in [n for n in lb if not rule.regex.fullmatch(n)]:
            del lb[name]
    else:  # pragma: no cover - compile_rule refuses unknown actions
        raise ValueError(f"unknown relabel action {action!r}")
    return True


def process(labels: Mapping[str, str], rules: Sequence[RelabelRule]) -> dict[str, str] | None:
    """Apply ``rules`` in order to a copy of ``labels``; None when a rule drops the set."""
    lb = {k: v for k, v in labels.items() if v}
    for rule in rules:
        if not apply_rule(rule, lb):
            return None
    return lb


# --- configuration: scrape jobs' relabel_configs, the forwarder's write_relabel_configs ---


def check_relabel_action(value: Any) -> str | None:
    if str(value).lower() in ACTIONS:
        return None
    return "expected one of " + ", ".join(repr(a) for a in ACTIONS)


def check_relabel_regex(value: Any) -> str | None:
    try:
        compile_regex(str(value))
    except re.error as exc:
        return f"invalid regular expression ({exc})"
    return None


def check_relabel_label(value: Any) -> str | None:
    return None if valid_label_name(value) else "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*)"


RELABEL_SCHEMA = Schema(
    {
        "source_labels": Field(
            list,
            [],
            "Labels whose values are joined.",
            item=Field(str, "", check=check_relabel_label),
        ),
        "separator": Field(str, DEFAULT_SEPARATOR, "Put between the joined values."),
        "regex": Field(
            str,
            DEFAULT_REGEX,
            "Anchored at both ends (Python re syntax, RE2-compatible in practice).",
            check=check_relabel_regex,
            nullable=True,
        ),
        "modulus": Field(int, 0, "For hashmod.", check=check_non_negative),
        "target_label": Field(str, "", "Label written by replace, hashmod, lowercase, uppercase."),
        "replacement": Field(str, DEFAULT_REPLACEMENT, "With $1, ${1}, ${name} references."),
        "action": Field(
            str,
            "replace",
            "One of " + ", ".join(ACTIONS) + ".",
            check=check_relabel_action,
        ),
    }
)
