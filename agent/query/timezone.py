"""Local time for queries: IANA zones, DST-safe parsing, calendar steps, local rendering.

Storage and evaluation stay in UTC milliseconds; a zone only changes how
times are *read* from a request and how they are *shown* in a response.
Daylight-saving changes make local wall-clock time a poor key: in the
autumn one local hour happens twice (ambiguous), in the spring one never
happens (non-existent).  Nothing here guesses silently:

* an ambiguous or non-existent local time is rejected with a message naming
  the candidate instants (or the gap), unless the caller chose a rule with
  :class:`DstRule` (``earlier`` / ``later``);
* calendar-aligned range steps (:func:`calendar_steps`) evaluate at each
  local midnight (day steps) or each local whole hour (hour steps), so a
  day step across a DST change spans 23 or 25 hours, as a calendar does;
* :func:`convert_timezone` and :func:`add_local_times` put local ISO 8601
  timestamps (with their UTC offset) beside the Unix ones, never instead.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from agent.query.errors import BadDataError

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Prometheus accepts these two spellings of the smallest and largest time.
MIN_TIME_MS = -9223372036854775808 // 1_000_000
MAX_TIME_MS = 9223372036854775807 // 1_000_000
_MIN_TIME_TEXT = "-292273086-05-16T16:47:06Z"
_MAX_TIME_TEXT = "292277025-08-18T07:12:54.999999999Z"
_FRACTION = re.compile(r"(\.\d+)")


class DstRule(StrEnum):
    """What to do with a local time that a DST change made ambiguous or non-existent.

    ``reject`` (the default) refuses it with a 400 naming the candidates.
    ``earlier`` takes the earlier of two ambiguous instants, and for a local
    time inside a spring-forward gap the last instant before the gap (one
    millisecond before the clocks jump); ``later`` takes the later ambiguous
    instant, and for a gap the instant the clocks jump (the first existing
    local time after it).  Both choices are the nearest real instants on
    their side, so nothing moves further than the DST change itself.
    """

    REJECT = "reject"
    EARLIER = "earlier"
    LATER = "later"


def machine_zone_name() -> str:
    """The host's IANA zone (``tzlocal``), falling back to UTC when it has none."""
    try:
        import tzlocal

        name = tzlocal.get_localzone_name()
    except Exception:  # noqa: BLE001 - any failure to detect means "no local zone"
        name = None
    return name or "UTC"


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The zone called ``name``; :class:`BadDataError` for an unknown or malformed one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadDataError(
            f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin or UTC)"
        ) from None


def resolve_zone(name: str | None, default: str | None = None) -> ZoneInfo:
    """``name``, else ``default`` (config ``query.default_timezone``), else the machine's zone."""
    return zone(name or default or machine_zone_name())


# --- instants <-> local wall-clock time ------------------------------------------------


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (exact, no float rounding)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int, tz: tzinfo) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def iso_local(ms: int, tz: tzinfo) -> str:
    """ISO 8601 with the zone's UTC offset at that instant; milliseconds only when non-zero."""
    dt = from_ms(ms, tz)
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


def local_candidates(naive: datetime, tz: tzinfo) -> list[datetime]:
    """Every instant (aware, in ``tz``) whose local wall-clock time is ``naive``.

    One for an ordinary time, two for an ambiguous one (the hour repeated when
    clocks go back), none for a time skipped when clocks go forward.
    """
    out: list[datetime] = []
    for fold in (0, 1):
        aware = naive.replace(tzinfo=tz, fold=fold)
        back = aware.astimezone(UTC).astimezone(tz)
        if back.replace(tzinfo=None) == naive and all(to_ms(back) != to_ms(o) for o in out):
            out.append(back)
    out.sort(key=to_ms)
    return out


def gap_around(naive: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """For a non-existent local time: (last instant before the jump, the jump instant).

    The jump is found between the two readings of ``naive`` under the offsets
    before and after the change (fold 0 and 1), which bracket it.
    """
    a = to_ms(naive.replace(tzinfo=tz, fold=1))
    b = to_ms(naive.replace(tzinfo=tz, fold=0))
    lo, hi = min(a, b), max(a, b)
    before = from_ms(lo, tz).utcoffset()
    # Binary search for the first millisecond whose offset differs from ``before``.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if from_ms(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return from_ms(lo, tz), from_ms(hi, tz)


def _unix(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}"


def _zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def resolve_local(naive: datetime, tz: tzinfo, rule: DstRule = DstRule.REJECT) -> int:
    """Milliseconds of the local wall-clock time ``naive`` in ``tz``, by ``rule`` at DST changes.

    Raises :class:`BadDataError` (a 400) for an ambiguous or non-existent time
    under ``DstRule.REJECT``, naming both candidate instants or the gap.
    """
    found = local_candidates(naive, tz)
    shown = naive.isoformat(timespec="milliseconds" if naive.microsecond else "seconds")
    name = _zone_name(tz)
    if len(found) == 1:
        return to_ms(found[0])
    if len(found) == 2:
        if rule is DstRule.EARLIER:
            return to_ms(found[0])
        if rule is DstRule.LATER:
            return to_ms(found[1])
        a, b = found
        raise BadDataError(
            f"local time {shown} is ambiguous in {name} (clocks go back): it is either "
            f"{a.isoformat()} ({_unix(to_ms(a))}) or {b.isoformat()} ({_unix(to_ms(b))}); "
            "give a UTC offset, or dst=earlier or dst=later"
        )
    last, jump = gap_around(naive, tz)
    if rule is DstRule.EARLIER:
        return to_ms(last)
    if rule is DstRule.LATER:
        return to_ms(jump)
    old_offset = timezone_fixed(last)
    skipped_from = jump.astimezone(old_offset)
    raise BadDataError(
        f"local time {shown} does not exist in {name} (clocks go forward): the local times "
        f"from {skipped_from.replace(tzinfo=None).isoformat(timespec='seconds')} to "
        f"{jump.replace(tzinfo=None).isoformat(timespec='seconds')} are skipped at "
        f"{skipped_from.isoformat()} = {jump.isoformat()} ({_unix(to_ms(jump))}); "
        "give a UTC offset, or dst=earlier or dst=later"
    )


def timezone_fixed(dt: datetime) -> tzinfo:
    """The fixed offset ``dt`` has (to show an instant in the offset before a change)."""
    off = dt.utcoffset()
    return timezone(off if off is not None else timedelta(0))


# --- parsing request times ---------------------------------------------------------------


def parse_time(text: str, tz: tzinfo | None = None, rule: DstRule = DstRule.REJECT) -> int:
    """A Prometheus API time in ms: Unix seconds (fractions allowed) or RFC 3339.

    With ``tz`` also a local date-time without an offset (``2024-03-31T02:30``
    or a date alone, meaning local midnight), resolved by ``rule`` at DST
    changes. Raises ``ValueError`` with a reason, or :class:`BadDataError` for
    DST problems (whose message must reach the client whole).
    """
    s = text.strip()
    if s == _MIN_TIME_TEXT:
        return MIN_TIME_MS
    if s == _MAX_TIME_TEXT:
        return MAX_TIME_MS
    try:
        seconds = Decimal(s)
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite():
            raise ValueError("not a finite number")
        return int((seconds * 1000).to_integral_value(rounding="ROUND_HALF_UP"))
    # Python keeps microseconds; RFC 3339 may carry nanoseconds: cut to 6 digits.
    s = _FRACTION.sub(lambda m: m.group(1)[:7], s, count=1)
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError("neither Unix seconds nor an RFC 3339 time") from None
    if dt.tzinfo is not None:
        return to_ms(dt)
    if tz is None:
        raise ValueError("a time without a UTC offset needs a time zone (tz=...)")
    return resolve_local(dt, tz, rule)


# --- calendar-aligned steps ------------------------------------------------------------------


def calendar_steps(start_ms: int, end_ms: int, step_ms: int, tz: tzinfo, limit: int) -> np.ndarray:
    """Evaluation times of a range query whose steps follow the local calendar.

    Day steps (``step`` a whole number of days): each local midnight from the
    first one at or after ``start``, every n-th calendar day, so across a DST
    change a "1d" step is 23 or 25 hours long. Where a zone skips midnight
    itself, that day starts at the jump (the first instant of the local day).

    Hour steps (``step`` whole hours dividing a day): each instant at or after
    ``start`` whose local time is a whole hour divisible by n. With n = 1 that
    is every real hour (23 on a spring-forward day, 25 in the autumn, the
    repeated hour twice); with n = 6 it is local 00:00, 06:00, 12:00, 18:00.

    Raises :class:`BadDataError` for other steps, or when more than ``limit``
    points would result.
    """
    if step_ms <= 0:
        raise BadDataError(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
        )
    if end_ms < start_ms:
        raise BadDataError("end timestamp must not be before start time")
    if step_ms % DAY_MS == 0:
        times = _day_steps(start_ms, end_ms, step_ms // DAY_MS, tz, limit)
    elif step_ms % HOUR_MS == 0 and 24 % (step_ms // HOUR_MS) == 0:
        times = _hour_steps(start_ms, end_ms, step_ms // HOUR_MS, tz, limit)
    else:
        raise BadDataError(
            "align=calendar needs a step of whole days, or of whole hours dividing a day "
            "(1h, 2h, 3h, 4h, 6h, 8h, 12h)"
        )
    return np.array(times, dtype=np.int64)


def _too_many() -> BadDataError:
    return BadDataError(
        "exceeded maximum resolution of 11,000 points per timeseries. "
        "Try decreasing the query resolution (?step=XX)"
    )


def _day_start(day: date, tz: tzinfo) -> int:
    midnight = datetime(day.year, day.month, day.day)
    # Midnight ambiguous: the first one; midnight skipped: the jump starts the day.
    return resolve_local(
        midnight, tz, DstRule.EARLIER if local_candidates(midnight, tz) else DstRule.LATER
    )


def _day_steps(start_ms: int, end_ms: int, n: int, tz: tzinfo, limit: int) -> list[int]:
    day = from_ms(start_ms, tz).date()
    first = _day_start(day, tz)
    if first < start_ms:
        day += timedelta(days=1)
    out: list[int] = []
    while True:
        t = _day_start(day, tz)
        if t > end_ms:
            return out
        out.append(t)
        if len(out) > limit:
            raise _too_many()
        day += timedelta(days=n)


def _hour_steps(start_ms: int, end_ms: int, n: int, tz: tzinfo, limit: int) -> list[int]:
    # Local whole hours are whole UTC quarter-hours in every zone in use (offsets
    # are multiples of 15 minutes), so walk quarter-hours and keep the local hours.
    quarter = 900_000
    t = -(-start_ms // quarter) * quarter
    out: list[int] = []
    while t <= end_ms:
        local = from_ms(t, tz)
        if local.minute == 0 and local.second == 0 and local.hour % n == 0:
            out.append(t)
            if len(out) > limit:
                raise _too_many()
        t += quarter
    return out


# --- rendering results in local time ------------------------------------------------------


def add_local_times(data: Mapping[str, Any], tz: tzinfo) -> dict[str, Any]:
    """A copy of an API ``data`` object with local ISO 8601 times beside the Unix ones.

    ``vector`` samples get ``"localtime"``; ``matrix`` series get
    ``"localtimes"``, parallel to ``"values"``; ``scalar`` and ``string`` data
    get ``"localtime"``. ``data["timezone"]`` names the zone. Everything
    Prometheus clients read is left exactly as it was.
    """
    out = copy.deepcopy(dict(data))
    kind = out.get("resultType")
    result = out.get("result")

    def local(t: float | int) -> str:
        return iso_local(round(float(t) * 1000), tz)

    if kind == "vector" and isinstance(result, list):
        for item in result:
            item["localtime"] = local(item["value"][0])
    elif kind == "matrix" and isinstance(result, list):
        for item in result:
            item["localtimes"] = [local(p[0]) for p in item["values"]]
    elif kind in ("scalar", "string") and isinstance(result, list) and result:
        out["localtime"] = local(result[0])
    else:
        raise ValueError(f"not a query result's data object (resultType {kind!r})")
    out["timezone"] = _zone_name(tz)
    return out


def convert_timezone(query_result: Any, target_tz: str | tzinfo) -> dict[str, Any]:
    """A query result with local timestamps for ``target_tz`` beside the Unix ones.

    ``query_result`` is what ``Agent.query``/``Agent.query_range`` return: the
    API ``data`` dict, or a typed result (anything with ``to_json()``). The
    answer is the ``data`` dict shape described in :func:`add_local_times`;
    the instants themselves never change, only how they are labelled.
    """
    tz = zone(target_tz) if isinstance(target_tz, str) else target_tz
    data = query_result.to_json() if hasattr(query_result, "to_json") else query_result
    if not isinstance(data, Mapping):
        raise TypeError("expected a query result or its data dict")
    return add_local_times(data, tz)
