"""Label checks of remote-write series: Prometheus' rules on names and values, and the errors."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from agent.plugin_api import METRIC_NAME, Labels, valid_label_name, valid_metric_name

_unpack_double = struct.Struct("<d").unpack_from


# Reasons a series is refused before it reaches the store (counted in
# tsagent_samples_rejected_total{source="remote_write",reason=...}).


def format_raw_labels(pairs: Sequence[tuple[bytes | str, bytes | str]]) -> str:
    """``name{a="b"}`` for messages, whatever state the labels are in."""
    name = ""
    rest = []
    for k, v in pairs:
        ks = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        vs = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        if ks == METRIC_NAME and not name:
            name = vs
        else:
            rest.append(f'{ks}="{vs}"'.replace("\n", "\\n"))
    return f"{name}{{{','.join(rest)}}}" if rest or not name else name


_NAMES: dict[bytes, str] = {}  # label names (raw bytes) already found valid


def validate_labels(pairs: list[tuple[bytes, bytes]]) -> Labels | str:
    """:func:`validate_label_strings` for raw protobuf bytes.

    The fast path covers the usual case (sorted, valid, already-seen names);
    anything it does not like is judged by :func:`validate_label_strings`,
    which gives the reason.
    """
    names = _NAMES
    out: list[tuple[str, str]] = []
    prev = ""
    has_name = False
    try:
        for raw_k, raw_v in pairs:
            k = names.get(raw_k)
            if k is None or k <= prev:
                break
            prev = k
            if not raw_v:
                if k == METRIC_NAME:
                    break
                continue
            v = raw_v.decode("utf-8")
            if k == METRIC_NAME:
                if not valid_metric_name(v):
                    break
                has_name = True
            out.append((k, v))
        else:
            if has_name:
                return tuple(out)
        strs = [(k.decode("utf-8"), v.decode("utf-8")) for k, v in pairs]
    except UnicodeDecodeError:
        return "label name or value is not valid UTF-8"
    verdict = validate_label_strings(strs)
    if not isinstance(verdict, str) and len(names) < 10_000:
        for raw_k, _ in pairs:
            names[raw_k] = raw_k.decode("utf-8")
    return verdict


def validate_label_strings(pairs: list[tuple[str, str]]) -> Labels | str:
    """The canonical label set, or why it is refused.

    Refused: names out of order or repeated, a name that is not
    ``[a-zA-Z_][a-zA-Z0-9_]*``, no ``__name__`` or an empty or invalid one.
    Labels with empty values are dropped, as Prometheus treats an empty value
    as an absent label.
    """
    out: list[tuple[str, str]] = []
    prev = None
    has_name = False
    for k, v in pairs:
        if prev is not None:
            if k == prev:
                return f"duplicate label name {k!r}"
            if k < prev:
                return f"labels not sorted by name ({k!r} after {prev!r})"
        prev = k
        if not valid_label_name(k):
            return f"invalid label name {k!r}"
        if k == METRIC_NAME:
            if not v:
                return "empty metric name (__name__)"
            if not valid_metric_name(v):
                return f"invalid metric name {v!r}"
            has_name = True
        if v:
            out.append((k, v))
    if not has_name:
        return "missing metric name (__name__ label)"
    return tuple(out)
