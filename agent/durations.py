"""Prometheus-style durations (``1h30m``, ``15s``, ``7d``) as used in configuration.

Its own module because the config schema, the alert routing tree (which
the schema validates) and the PromQL parser all need it: a leaf that imports
nothing of tsagent, so none has to import another for it.
"""

from __future__ import annotations

import re

_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_MS = (365 * 86400_000, 7 * 86400_000, 86400_000, 3600_000, 60_000, 1000, 1)


def duration_string_ms(text: str) -> int | None:
    """Milliseconds of a Prometheus duration string (``1h30m``, ``10s53ms``), or None.

    The one parser of the unit syntax: configuration durations
    (:func:`parse_duration`) and PromQL's (``agent.query.parser``) both use it.
    """
    s = text.strip()
    m = _DURATION_RE.match(s)
    if not s or not m or not any(m.groups()):
        return None
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_MS, strict=True) if g)


def parse_duration(text: str | int | float) -> float:
    """Prometheus-style duration (``1h30m``, ``15s``, ``0``) or seconds, in seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("negative duration")
        return float(text)
    s = str(text).strip()
    if s == "0":
        return 0.0
    try:
        f = float(s)
    except ValueError:
        pass
    else:
        if f < 0:
            raise ValueError("negative duration")
        return f
    ms = duration_string_ms(s)
    if ms is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 15s, 5m, 1h30m, 7d)")
    return ms / 1000.0
