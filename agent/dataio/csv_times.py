"""Timestamps of imported rows: RFC 3339, Unix units, strftime and Go layouts, DST."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

import numpy as np

from agent.dataio.import_report import MappingError
from agent.query.errors import BadDataError
from agent.query.timezone import local_candidates
from agent.query.timezone import zone as zone_named

if TYPE_CHECKING:
    from agent.storage import BackfillResult

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


UNIX_FORMATS = ("unix_s", "unix_ms", "unix_ns")
TIME_FORMATS = (*UNIX_FORMATS, "rfc3339")
AMBIGUOUS_CHOICES = ("reject", "earlier", "later")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Beyond this a millisecond timestamp is nonsense (and int64 arithmetic would wrap).
_MAX_ABS_MS = 2**62


# --- timestamps ----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> int:
    """Milliseconds since the epoch; ValueError naming what RFC 3339 wants.

    Stricter than ``datetime.fromisoformat`` on purpose: an offset is required
    (a naive time would silently mean the server's zone) and ISO basic format
    is refused.  Fractions beyond milliseconds are truncated.
    """
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError(
            f"expected RFC 3339 like 2024-01-31T12:00:00Z or 2024-01-31T13:00:00+01:00,"
            f" found {text!r}"
        )
    date, clock, frac, off = m.groups()
    off = "+00:00" if off in ("Z", "z") else off
    dt = datetime.fromisoformat(f"{date}T{clock}{off}")
    ms = (dt - _EPOCH) // _MS
    if frac:
        ms += int(frac[:3].ljust(3, "0"))
    return int(ms)


def localize(naive: datetime, zone: tzinfo, ambiguous: str = "reject") -> datetime:
    """Attach ``zone`` to a wall-clock time, refusing times DST makes doubtful.

    The candidates come from :func:`agent.query.timezone.local_candidates` (the one
    DST resolver). Non-existent (skipped by a spring-forward) → ValueError always. Ambiguous
    (repeated by a fall-back) → ValueError unless ``ambiguous`` picks the
    ``earlier`` (fold=0) or ``later`` (fold=1) occurrence.
    """
    found = local_candidates(naive, zone)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            f"local time {naive.isoformat(' ')} does not exist in {zone}"
            " (skipped when clocks moved forward)"
        )
    if ambiguous == "earlier":
        return found[0]
    if ambiguous == "later":
        return found[1]
    raise ValueError(
        f"local time {naive.isoformat(' ')} is ambiguous in {zone} (it occurs twice when"
        " clocks move back); set timestamp.ambiguous to earlier or later to choose"
    )


_GO_TOKENS = [
    ("January", "%B"),
    ("Monday", "%A"),
    ("Z07:00", "%z"),
    ("-07:00", "%z"),
    ("Z0700", "%z"),
    ("-0700", "%z"),
    ("2006", "%Y"),
    ("Jan", "%b"),
    ("Mon", "%a"),
    ("MST", "%Z"),
    ("01", "%m"),
    ("02", "%d"),
    ("15", "%H"),
    ("03", "%I"),
    ("04", "%M"),
    ("05", "%S"),
    ("06", "%y"),
    ("PM", "%p"),
]
_GO_FRACTION = re.compile(r"[.,](0+|9+)(?![0-9])")


def go_layout_to_strptime(layout: str) -> str:
    """Translate a Go reference-time layout (VictoriaMetrics ``custom:``) to strptime.

    Covers the usual tokens (2006 01 02 15 04 05, Jan/January, Mon/Monday, PM,
    MST, -0700/-07:00/Z07:00 and fractional seconds .000/.999); unpadded
    variants (1, 2, 3, _2) are not supported and raise.
    """
    out: list[str] = []
    i = 0
    while i < len(layout):
        m = _GO_FRACTION.match(layout, i)
        if m and i > 0:
            out.append(layout[i] + "%f")
            i = m.end()
            continue
        for token, repl in _GO_TOKENS:
            if layout.startswith(token, i):
                out.append(repl)
                i += len(token)
                break
        else:
            ch = layout[i]
            if ch in "123456789" or layout.startswith("_2", i):
                raise MappingError(
                    f"custom time layout {layout!r}: unsupported Go token at {layout[i:]!r}"
                    " (use zero-padded 01 02 15 03 04 05)"
                )
            out.append("%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class TimeFormat:
    """How one timestamp column is read; ``parse`` returns epoch ms or raises ValueError."""

    kind: str  # unix_s | unix_ms | unix_ns | rfc3339 | strptime
    pattern: str = ""
    zone: tzinfo = UTC
    ambiguous: str = "reject"

    @classmethod
    def of(cls, spec: str, timezone: str | None = None, ambiguous: str = "reject") -> TimeFormat:
        if ambiguous not in AMBIGUOUS_CHOICES:
            raise MappingError(f"timestamp.ambiguous: expected one of {AMBIGUOUS_CHOICES}")
        zone: tzinfo = UTC
        if timezone:
            try:
                zone = zone_named(timezone)
            except BadDataError as exc:
                raise MappingError(f"timestamp.timezone: unknown time zone {timezone!r}") from exc
        if spec in TIME_FORMATS:
            return cls(spec, zone=zone, ambiguous=ambiguous)
        if spec.startswith("custom:"):
            return cls("strptime", go_layout_to_strptime(spec[7:]), zone, ambiguous)
        if "%" in spec:
            try:
                datetime.now().strftime(spec)
                _compile_strptime(spec)
            except (ValueError, re.error) as exc:
                raise MappingError(f"timestamp.format: invalid strftime pattern: {exc}") from exc
            return cls("strptime", spec, zone, ambiguous)
        raise MappingError(
            f"timestamp.format: unknown format {spec!r}; expected one of {', '.join(TIME_FORMATS)},"
            " a strftime pattern such as '%Y-%m-%d %H:%M:%S', or custom:<Go layout>"
        )

    def parse_one(self, text: str) -> int:
        if self.kind == "rfc3339":
            return parse_rfc3339(text)
        if self.kind == "strptime":
            try:
                dt = datetime.strptime(text.strip(), self.pattern)
            except (ValueError, re.error):
                raise ValueError(f"does not match the pattern {self.pattern!r}: {text!r}") from None
            if dt.tzinfo is None:
                dt = localize(dt, self.zone, self.ambiguous)
            return int((dt - _EPOCH) // _MS)
        return int(self.parse_unix([text])[0][0])

    def parse_unix(self, col: Sequence[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Vectorised unix timestamps: (ms array, {position: problem})."""
        bad: dict[int, str] = {}
        if self.kind == "unix_ns":
            try:
                raw = np.array(col, dtype=np.int64)
            except (ValueError, OverflowError):
                vals = []
                for i, s in enumerate(col):
                    try:
                        v = int(s)
                    except ValueError:
                        bad[i] = f"expected an integer unix time in nanoseconds, found {s!r}"
                        v = 0
                    if not -(2**63) <= v < 2**63:
                        bad[i] = f"timestamp out of range: {s[:40]!r}"
                        v = 0
                    vals.append(v)
                raw = np.array(vals, dtype=np.int64)
            return raw // 1_000_000, bad
        scale = 1000.0 if self.kind == "unix_s" else 1.0
        try:
            f = np.array(col, dtype=np.float64)
        except ValueError:
            unit = "seconds" if self.kind == "unix_s" else "milliseconds"
            f = np.zeros(len(col), dtype=np.float64)
            for i, s in enumerate(col):
                try:
                    f[i] = float(s)
                except ValueError:
                    bad[i] = f"expected a unix time in {unit}, found {s!r}"
        ms = f * scale
        wrong = ~np.isfinite(ms) | (np.abs(ms) > _MAX_ABS_MS)
        if wrong.any():
            for i in np.flatnonzero(wrong).tolist():
                bad.setdefault(i, f"timestamp out of range: {col[i]!r}")
            ms[wrong] = 0
        return np.rint(ms).astype(np.int64), bad

    def parse_column(
        self, col: Sequence[str], cache: dict[str, int | str]
    ) -> tuple[np.ndarray, dict[int, str]]:
        """(ms array, {position: problem}); textual formats go through ``cache``."""
        if self.kind in UNIX_FORMATS:
            return self.parse_unix(col)
        get = cache.get
        found: list[int | str | None] = [get(s) for s in col]
        bad: dict[int, str] = {}
        if None in found:
            for i, s in enumerate(col):
                if found[i] is None:
                    v: int | str
                    try:
                        ms = self.parse_one(s)
                        v = ms if abs(ms) <= _MAX_ABS_MS else f"timestamp out of range: {s!r}"
                    except ValueError as exc:
                        v = str(exc)
                    cache[s] = v
                    found[i] = v
            if len(cache) > 1_000_000:
                cache.clear()
        out = np.zeros(len(col), dtype=np.int64)
        if any(isinstance(v, str) for v in found):
            for i, x in enumerate(found):
                if isinstance(x, str):
                    bad[i] = x
                elif x is not None:
                    out[i] = x
        else:
            out = np.array(found, dtype=np.int64)
        return out, bad


def _compile_strptime(spec: str) -> None:
    """Raise ``re.error`` for a pattern strptime cannot compile (``%d%d``: a repeated group).

    strftime accepts such patterns, strptime fails at the first row with
    ``re.error``, which used to escape as a 500 (issue 13).
    """
    with contextlib.suppress(ValueError):  # compiled; "" just does not match
        datetime.strptime("", spec)
