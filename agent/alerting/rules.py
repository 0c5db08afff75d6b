"""Prometheus rule files: parsing and validation into typed, immutable specs.

The format is Prometheus's own (``groups`` of alerting and recording rules),
so existing rule files work unchanged. Validation is strict and every
problem names the file, the group and the rule (1-based, as ``promtool``
counts) so that ``tsagent check-config`` and a refused SIGHUP reload say
exactly what to fix::

    rules/api.yml: group "api", rule 2 (alert HighLatency): expr: parse error: ...

Nothing here evaluates anything; :mod:`agent.alerting.engine` runs the specs.
"""

from __future__ import annotations

import difflib
import glob
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.alerting.template import Template, TemplateError, parse_template
from agent.config import ConfigError, parse_duration
from agent.model import valid_label_name, valid_metric_name
from agent.query import ast
from agent.query.errors import QueryError
from agent.query.parser import parse

RuleKind = Literal["alert", "record"]

_GROUP_KEYS = ("name", "interval", "limit", "query_offset", "labels", "rules")
_RULE_KEYS = ("alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations")


class RulesError(ConfigError):
    """Rule files that do not load; each line already names its file, group and rule."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors, "<rules>")

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class RuleSpec:
    """One alerting or recording rule as written, with its templates parsed."""

    kind: RuleKind
    name: str
    expr: str
    node: ast.Node
    index: int  # 1-based position in its group
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    label_templates: Mapping[str, Template] = field(default_factory=dict)
    annotation_templates: Mapping[str, Template] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Stable within a group across reloads: the name and the configured labels.

        Prometheus carries alert state across reloads by the same key (rule
        name and labels), so editing an expression does not reset ``for``.
        """
        return self.name + "\x00" + json.dumps(dict(sorted(self.labels.items())))


@dataclass(frozen=True)
class GroupSpec:
    """A rule group: evaluated together, in order, on one interval."""

    name: str
    file: str
    rules: tuple[RuleSpec, ...]
    interval_s: float | None = None  # None: alerting.evaluation_interval
    limit: int = 0
    query_offset_s: float = 0.0

    @property
    def key(self) -> str:
        """Prometheus's group key, ``file;name`` (also the ``rule_group`` metric label)."""
        return f"{self.file};{self.name}"


def _where(file: str, group: str | None, rule: int | None = None, desc: str = "") -> str:
    out = file
    if group is not None:
        out += f": group {json.dumps(group)}"
    if rule is not None:
        out += f", rule {rule}" + (f" ({desc})" if desc else "")
    return out


def _unknown(keys: Sequence[str], got: Mapping[str, Any]) -> list[str]:
    out = []
    for key in got:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"unknown key {str(key)!r}{hint}; known keys: {', '.join(keys)}")
    return out


def _duration(value: Any, what: str, errors: list[str]) -> float:
    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except ValueError:
        errors.append(f"{what}: not a duration: {value!r} (expected e.g. 30s, 5m, 1h)")
        return 0.0


def _string_map(value: Any, what: str, errors: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{what}: expected a mapping, found {type(value).__name__}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not valid_label_name(k):
            errors.append(f"{what}: invalid name {k!r}")
            continue
        if isinstance(v, (dict, list)) or v is None:
            errors.append(f"{what}.{k}: expected a string, found {type(v).__name__}")
            continue
        out[k] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _templates(values: Mapping[str, str], what: str, errors: list[str]) -> dict[str, Template]:
    out: dict[str, Template] = {}
    for k, v in values.items():
        try:
            out[k] = parse_template(v)
        except TemplateError as exc:
            errors.append(f"{what}.{k}: template: {exc}")
    return out


def parse_rule(raw: Any, index: int, errors: list[str]) -> RuleSpec | None:
    """One rule mapping; problems go to ``errors`` prefixed by the field they concern."""
    if not isinstance(raw, dict):
        errors.append(f"expected a mapping, found {type(raw).__name__}")
        return None
    errors.extend(_unknown(_RULE_KEYS, raw))
    alert, record = raw.get("alert"), raw.get("record")
    if alert is not None and record is not None:
        errors.append("only one of 'record' and 'alert' must be set")
        return None
    if alert is None and record is None:
        errors.append("one of 'record' or 'alert' must be set")
        return None
    kind: RuleKind = "alert" if alert is not None else "record"
    name = str(alert if alert is not None else record)
    if kind == "record" and not valid_metric_name(name):
        errors.append(f"record: invalid recording rule name {name!r}")
    if kind == "alert" and not name.strip():
        errors.append("alert: the alert name must not be empty")
    expr = raw.get("expr")
    node: ast.Node | None = None
    if expr is None or (isinstance(expr, str) and not expr.strip()):
        errors.append("expr: field 'expr' must be set in rule")
    elif isinstance(expr, (dict, list, bool)):
        errors.append(f"expr: expected a string, found {type(expr).__name__}")
    else:
        expr = str(expr).strip()
        try:
            node = parse(expr)
        except QueryError as exc:
            errors.append(f"expr: {exc}")
        else:
            if node.type not in (ast.ValueType.VECTOR, ast.ValueType.SCALAR):
                kind_name = {"matrix": "range vector", "string": "string"}[node.type.value]
                errors.append(
                    f"expr: invalid expression type {kind_name!r}: "
                    "a rule must return an instant vector or a scalar"
                )
    if kind == "record":
        for key in ("for", "keep_firing_for", "annotations"):
            if key in raw:
                errors.append(f"{key}: invalid field {key!r} in a recording rule")
    for_s = _duration(raw.get("for"), "for", errors)
    keep_s = _duration(raw.get("keep_firing_for"), "keep_firing_for", errors)
    labels = _string_map(raw.get("labels"), "labels", errors)
    for bad in ("__name__", "alertname") if kind == "alert" else ("__name__",):
        if bad in labels:
            errors.append(f"labels: label name {bad!r} is reserved")
    annotations = _string_map(raw.get("annotations"), "annotations", errors)
    label_t = _templates(labels, "labels", errors) if kind == "alert" else {}
    annot_t = _templates(annotations, "annotations", errors)
    if node is None:
        return None
    return RuleSpec(
        kind=kind,
        name=name,
        expr=str(expr),
        node=node,
        index=index,
        for_s=for_s,
        keep_firing_for_s=keep_s,
        labels=labels,
        annotations=annotations,
        label_templates=label_t,
        annotation_templates=annot_t,
    )


def parse_rule_file(text: str, file: str) -> tuple[list[GroupSpec], list[str]]:
    """Groups of one file and every problem found, each naming file, group and rule."""
    errors: list[str] = []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [f"{file}: {where}invalid YAML: {problem}"]
    if data is None:
        return [], []
    if not isinstance(data, dict):
        return [], [f"{file}: expected a mapping with a 'groups' list"]
    errors.extend(f"{file}: {e}" for e in _unknown(("groups",), data))
    raw_groups = data.get("groups") or []
    if not isinstance(raw_groups, list):
        return [], [*errors, f"{file}: groups: expected a list"]
    groups: list[GroupSpec] = []
    seen: set[str] = set()
    for gi, raw in enumerate(raw_groups, 1):
        if not isinstance(raw, dict):
            errors.append(f"{file}: groups[{gi - 1}]: expected a mapping")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"{file}: groups[{gi - 1}]: name: a group needs a non-empty name")
            continue
        where = _where(file, name)
        if name in seen:
            errors.append(f"{where}: name: group name is repeated in the same file")
        seen.add(name)
        gerr: list[str] = list(_unknown(_GROUP_KEYS, raw))
        interval = None
        if raw.get("interval") is not None:
            interval = _duration(raw["interval"], "interval", gerr)
            if interval <= 0 and not gerr:
                gerr.append("interval: must be greater than 0")
        limit = raw.get("limit", 0) or 0
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            gerr.append(f"limit: expected an integer >= 0, found {limit!r}")
            limit = 0
        offset = _duration(raw.get("query_offset"), "query_offset", gerr)
        group_labels = _string_map(raw.get("labels"), "labels", gerr)
        errors.extend(f"{where}: {e}" for e in gerr)
        rules: list[RuleSpec] = []
        raw_rules = raw.get("rules") or []
        if not isinstance(raw_rules, list):
            errors.append(f"{where}: rules: expected a list")
            raw_rules = []
        for ri, raw_rule in enumerate(raw_rules, 1):
            rerr: list[str] = []
            if isinstance(raw_rule, dict) and group_labels:
                raw_rule = {
                    **raw_rule,
                    "labels": {**group_labels, **(raw_rule.get("labels") or {})},
                }
            spec = parse_rule(raw_rule, ri, rerr)
            desc = ""
            if isinstance(raw_rule, dict):
                for k in ("alert", "record"):
                    if raw_rule.get(k) is not None:
                        desc = f"{k} {raw_rule[k]}"
                        break
            errors.extend(f"{_where(file, name, ri, desc)}: {e}" for e in rerr)
            if spec is not None and not rerr:
                rules.append(spec)
        groups.append(GroupSpec(name, file, tuple(rules), interval, limit, offset))
    return groups, errors


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def load_rule_files(patterns: Sequence[str], base_dir: Path) -> list[GroupSpec]:
    """Every group of every file the patterns name; raises :class:`RulesError` listing problems.

    Relative patterns are relative to ``base_dir`` (the config file's
    directory, as in Prometheus) and files are named in errors as the pattern
    spelt them. A glob matching nothing is fine (a ``rules.d/*.yml`` that is
    still empty); a plain path that does not exist is an error.
    """
    errors: list[str] = []
    groups: list[GroupSpec] = []
    seen: set[str] = set()
    for pattern in patterns:
        absolute = Path(pattern).expanduser().is_absolute()
        pat = str(Path(pattern).expanduser())
        if _has_magic(pat):
            if absolute:
                names = sorted(glob.glob(pat))
            else:
                names = sorted(glob.glob(pat, root_dir=base_dir))
        else:
            names = [pat]
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            path = Path(name) if absolute else base_dir / name
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                errors.append(f"{name}: cannot read rule file: {exc.strerror or exc}")
                continue
            found, problems = parse_rule_file(text, name)
            groups.extend(found)
            errors.extend(problems)
    if errors:
        raise RulesError(errors)
    return groups


def rule_files_base(config_source: str) -> Path:
    """Directory relative rule file paths start from: the config file's, else the cwd."""
    if config_source and not config_source.startswith("<"):
        return Path(config_source).resolve().parent
    return Path.cwd()


def load_configured_rules(config: Any) -> list[GroupSpec]:
    """The rule groups ``config`` names in ``alerting.rule_files`` (see :func:`load_rule_files`)."""
    section = config.section("alerting")
    return load_rule_files(section.get("rule_files", []), rule_files_base(config.source))
