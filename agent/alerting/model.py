"""The alert as it travels from the rule engine to the notifiers.

Shaped after what Prometheus sends to Alertmanager (labels, annotations,
startsAt, endsAt, generatorURL), so the webhook and Alertmanager notifiers
can pass it on unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["firing", "resolved"]


def fingerprint(labels: dict[str, str]) -> str:
    """Stable identity of an alert: a hash of its sorted label set."""
    h = hashlib.sha256()
    for k in sorted(labels):
        h.update(k.encode())
        h.update(b"\xff")
        h.update(labels[k].encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


def rfc3339(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"  # Alertmanager's zero time
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Alert:
    """One alert instance (a rule's output series), firing or resolved.

    ``starts_at``/``ends_at`` are Unix seconds. A firing alert's ``ends_at``
    is when it would be considered resolved if not re-sent (as Prometheus
    sets it); a resolved alert's is when it resolved.
    """

    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    status: Status = "firing"
    starts_at: float = 0.0
    ends_at: float | None = None
    generator_url: str = ""
    value: float = 0.0

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Alertmanager webhook (version 4) alert object."""
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }
