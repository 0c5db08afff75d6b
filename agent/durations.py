"""Prometheus-style durations (``1h30m``, ``15s``, ``7d``) as used in configuration.

Its own module because both the config schema and the alert routing tree
(which the schema validates) need it: a leaf that imports nothing of
tsagent, so neither has to import the other for it.
"""

from __future__ import annotations

import re

_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_MS = (365 * 86400_000, 7 * 86400_000, 86400_000, 3600_000, 60_000, 1000, 1)


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
    m = _DURATION_RE.match(s)
    if not s or not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 15s, 5m, 1h30m, 7d)")
    ms = sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_MS, strict=True) if g)
    return ms / 1000.0
