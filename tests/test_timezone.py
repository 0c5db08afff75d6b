"""Local time and DST: parsing, the ambiguity rules, calendar steps, local rendering.

Europe/Berlin 2024: clocks forward 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z),
back 2024-10-27 03:00 CEST -> 02:00 CET (01:00Z). America/New_York 2024:
forward 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z), back 2024-11-03 02:00 EDT
-> 01:00 EST (06:00Z).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from agent.query.errors import BadDataError
from agent.query.timezone import (
    DstRule,
    add_local_times,
    calendar_steps,
    convert_timezone,
    iso_local,
    local_candidates,
    parse_time,
    resolve_local,
    resolve_zone,
    zone,
)
from agent.web.app import CONTEXT_KEY
from tests.test_api_query import api_client, get_json

BERLIN = zone("Europe/Berlin")
NEW_YORK = zone("America/New_York")
H = 3_600_000


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# --- parsing -------------------------------------------------------------------------------


def test_unix_and_rfc3339_forms() -> None:
    assert parse_time("1700000000") == 1_700_000_000_000
    assert parse_time("1700000000.1234") == 1_700_000_000_123
    assert parse_time("-1.5") == -1500
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20.123456789Z") == 1_700_000_000_123
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="needs a time zone"):
        parse_time("2023-11-14T22:13:20")
    with pytest.raises(ValueError):
        parse_time("yesterday")
    with pytest.raises(ValueError):
        parse_time("NaN")
    # An explicit offset wins over the zone: it is not a local time.
    assert parse_time("2024-03-31T02:30:00+01:00", BERLIN) == utc_ms("2024-03-31T01:30:00")


def test_local_times_and_dates_in_a_zone() -> None:
    assert parse_time("2024-01-15T12:00:00", BERLIN) == utc_ms("2024-01-15T11:00:00")
    assert parse_time("2024-07-15T12:00", BERLIN) == utc_ms("2024-07-15T10:00:00")
    assert parse_time("2024-07-15", NEW_YORK) == utc_ms("2024-07-15T04:00:00")


@pytest.mark.parametrize(
    ("tz", "local", "earlier", "later"),
    [
        (BERLIN, "2024-10-27T02:30:00", "2024-10-27T00:30:00", "2024-10-27T01:30:00"),
        (NEW_YORK, "2024-11-03T01:30:00", "2024-11-03T05:30:00", "2024-11-03T06:30:00"),
    ],
)
def test_fall_back_ambiguous_time(tz: Any, local: str, earlier: str, later: str) -> None:
    naive = datetime.fromisoformat(local)
    assert [
        c.astimezone(UTC).replace(tzinfo=None).isoformat() for c in local_candidates(naive, tz)
    ] == [earlier, later]
    with pytest.raises(BadDataError) as err:
        resolve_local(naive, tz)
    message = str(err.value)
    assert "ambiguous" in message and tz.key in message
    # Both candidate instants are named, with their offsets and Unix seconds.
    assert str(utc_ms(earlier) // 1000) in message and str(utc_ms(later) // 1000) in message
    assert resolve_local(naive, tz, DstRule.EARLIER) == utc_ms(earlier)
    assert resolve_local(naive, tz, DstRule.LATER) == utc_ms(later)


@pytest.mark.parametrize(
    ("tz", "local", "jump_utc", "shown"),
    [
        (BERLIN, "2024-03-31T02:30:00", "2024-03-31T01:00:00", "02:00:00+01:00"),
        (NEW_YORK, "2024-03-10T02:30:00", "2024-03-10T07:00:00", "02:00:00-05:00"),
    ],
)
def test_spring_forward_non_existent_time(tz: Any, local: str, jump_utc: str, shown: str) -> None:
    naive = datetime.fromisoformat(local)
    assert local_candidates(naive, tz) == []
    with pytest.raises(BadDataError) as err:
        resolve_local(naive, tz)
    message = str(err.value)
    assert "does not exist" in message and "skipped" in message and shown in message
    assert str(utc_ms(jump_utc) // 1000) in message
    assert resolve_local(naive, tz, DstRule.LATER) == utc_ms(jump_utc)
    assert resolve_local(naive, tz, DstRule.EARLIER) == utc_ms(jump_utc) - 1


def test_ordinary_times_ignore_the_rule() -> None:
    naive = datetime(2024, 3, 31, 1, 59)
    assert {resolve_local(naive, BERLIN, r) for r in DstRule} == {utc_ms("2024-03-31T00:59:00")}


def test_unknown_zone_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadDataError, match="unknown time zone"):
        zone("Mars/Olympus")
    assert resolve_zone(None, "America/New_York").key == "America/New_York"
    monkeypatch.setattr("tzlocal.get_localzone_name", lambda: "Asia/Tokyo")
    assert resolve_zone(None, "").key == "Asia/Tokyo"
    assert resolve_zone("UTC", "Asia/Tokyo").key == "UTC"


# --- calendar steps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "first_day", "lengths"),
    [
        (BERLIN, "2024-03-30", [24, 23, 24]),
        (BERLIN, "2024-10-26", [24, 25, 24]),
        (NEW_YORK, "2024-03-09", [24, 23, 24]),
        (NEW_YORK, "2024-11-02", [24, 25, 24]),
    ],
)
def test_day_steps_are_calendar_days(tz: Any, first_day: str, lengths: list[int]) -> None:
    start = parse_time(first_day, tz)
    end = start + 3 * 24 * H + 2 * H
    steps = calendar_steps(start, end, 24 * H, tz, 11_000)
    assert (np.diff(steps) // H).tolist() == lengths
    assert all(iso_local(int(t), tz)[11:19] == "00:00:00" for t in steps)


def test_day_steps_start_at_the_next_midnight_and_skip_days() -> None:
    start = parse_time("2024-03-29T10:00", BERLIN)
    steps = calendar_steps(start, parse_time("2024-04-04", BERLIN), 2 * 24 * H, BERLIN, 100)
    assert [iso_local(int(t), BERLIN) for t in steps] == [
        "2024-03-30T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
        "2024-04-03T00:00:00+02:00",
    ]


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (BERLIN, "2024-03-31", 23),
        (BERLIN, "2024-10-27", 25),
        (NEW_YORK, "2024-03-10", 23),
        (NEW_YORK, "2024-11-03", 25),
    ],
)
def test_hour_steps_follow_real_hours(tz: Any, day: str, hours: int) -> None:
    start = parse_time(day, tz)
    end = start + hours * H - 1  # the whole local day, not the next midnight
    steps = calendar_steps(start, end, H, tz, 11_000)
    assert len(steps) == hours
    assert set(np.diff(steps).tolist()) == {H}


def test_multi_hour_steps_keep_local_hours() -> None:
    start = parse_time("2024-10-27", BERLIN)
    steps = calendar_steps(start, start + 25 * H, 6 * H, BERLIN, 100)
    assert [iso_local(int(t), BERLIN)[11:] for t in steps] == [
        "00:00:00+02:00",
        "06:00:00+01:00",
        "12:00:00+01:00",
        "18:00:00+01:00",
        "00:00:00+01:00",
    ]


def test_calendar_step_errors() -> None:
    with pytest.raises(BadDataError, match="whole days"):
        calendar_steps(0, H, 90 * 60_000, BERLIN, 100)
    with pytest.raises(BadDataError, match="whole days"):
        calendar_steps(0, H, 5 * H, BERLIN, 100)
    with pytest.raises(BadDataError, match="11,000 points"):
        calendar_steps(0, 200 * 24 * H, H, BERLIN, 1000)


# --- local rendering ----------------------------------------------------------------------------


def test_add_local_times_beside_unix_times() -> None:
    t = utc_ms("2024-10-27T00:30:00") / 1000
    t2 = utc_ms("2024-10-27T01:30:00") / 1000
    matrix = {"resultType": "matrix", "result": [{"metric": {}, "values": [[t, "1"], [t2, "2"]]}]}
    out = add_local_times(matrix, BERLIN)
    assert out["result"][0]["values"] == matrix["result"][0]["values"]
    assert out["result"][0]["localtimes"] == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:30:00+01:00",
    ]
    assert out["timezone"] == "Europe/Berlin"
    assert "localtimes" not in matrix["result"][0]  # the input is not modified
    vector = {"resultType": "vector", "result": [{"metric": {}, "value": [1.5, "1"]}]}
    assert add_local_times(vector, NEW_YORK)["result"][0]["localtime"] == (
        "1969-12-31T19:00:01.500-05:00"
    )
    scalar = convert_timezone({"resultType": "scalar", "result": [0, "1"]}, "Asia/Kolkata")
    assert scalar["localtime"] == "1970-01-01T05:30:00+05:30"


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def dst_client(aiohttp_client: Any, make_config: Callable[..., Any]) -> Any:
    """``energy_total`` rises by 1 every 15 minutes around both 2024 DST changes in Berlin."""
    client = await api_client(aiohttp_client, make_config, data=False)
    ctx = client.app[CONTEXT_KEY]
    rows = []
    for first in ("2024-03-28T00:00:00", "2024-10-24T00:00:00"):
        t0 = utc_ms(first)
        rows += [
            ((("__name__", "energy_total"),), t0 + k * 900_000, float(k)) for k in range(7 * 96)
        ]
    await ctx.append_samples(rows, source="test")
    return client


@pytest.mark.parametrize(
    ("start", "hours"),
    [("2024-03-30", [24, 23, 24]), ("2024-10-26", [24, 25, 24])],
)
async def test_calendar_aligned_daily_range(dst_client: Any, start: str, hours: list[int]) -> None:
    end = {"2024-03-30": "2024-04-02", "2024-10-26": "2024-10-29"}[start]
    status, body = await get_json(
        dst_client,
        "/api/v1/query_range",
        query="energy_total",
        start=start,
        end=end,
        step="1d",
        tz="Europe/Berlin",
        align="calendar",
        localtime="true",
    )
    assert status == 200, body
    [series] = body["data"]["result"]
    assert [lt[11:19] for lt in series["localtimes"]] == ["00:00:00"] * 4
    values = [float(v) for _, v in series["values"]]
    # Four 15-minute increments per real hour between local midnights.
    assert np.diff(values).tolist() == [4 * h for h in hours]
    # Without align the same request steps in fixed 24 h.
    _, fixed = await get_json(
        dst_client,
        "/api/v1/query_range",
        query="energy_total",
        start=start,
        end=end,
        step="1d",
        tz="Europe/Berlin",
    )
    fixed_values = [float(v) for _, v in fixed["data"]["result"][0]["values"]]
    assert np.diff(fixed_values).tolist() == [96.0] * (len(fixed_values) - 1)
    assert "localtimes" not in fixed["data"]["result"][0]


async def test_ambiguous_local_time_over_http(dst_client: Any) -> None:
    params = {"query": "energy_total", "time": "2024-10-27T02:30:00", "tz": "Europe/Berlin"}
    status, body = await get_json(dst_client, "/api/v1/query", **params)
    assert status == 400 and body["errorType"] == "bad_data"
    assert 'invalid parameter "time"' in body["error"] and "ambiguous" in body["error"]
    assert "2024-10-27T02:30:00+02:00" in body["error"] and "+01:00" in body["error"]
    for rule, utc in (("earlier", "2024-10-27T00:30:00"), ("later", "2024-10-27T01:30:00")):
        status, body = await get_json(dst_client, "/api/v1/query", dst=rule, **params)
        assert status == 200
        assert body["data"]["result"][0]["value"][0] == utc_ms(utc) // 1000


async def test_non_existent_local_time_over_http(dst_client: Any) -> None:
    params = {"query": "time()", "time": "2024-03-31T02:30", "tz": "Europe/Berlin"}
    status, body = await get_json(dst_client, "/api/v1/query", **params)
    assert status == 400 and "does not exist" in body["error"]
    status, body = await get_json(dst_client, "/api/v1/query", dst="later", **params)
    assert body["data"]["result"][0] == utc_ms("2024-03-31T01:00:00") // 1000
    status, body = await get_json(
        dst_client,
        "/api/v1/query_range",
        query="time()",
        start="2024-03-10T02:15",
        end="2024-03-10T04:00",
        step="1h",
        tz="America/New_York",
    )
    assert status == 400 and 'invalid parameter "start"' in body["error"]


async def test_default_zone_from_config(aiohttp_client: Any, make_config: Any) -> None:
    client = await api_client(
        aiohttp_client, make_config, "query:\n  default_timezone: America/New_York\n", data=False
    )
    _, body = await get_json(client, "/api/v1/query", query="time()", time="2024-07-04T12:00")
    assert body["data"]["result"][0] == utc_ms("2024-07-04T16:00:00") // 1000
    _, local = await get_json(
        client, "/api/v1/query", query="time()", time="2024-07-04T12:00", localtime="1"
    )
    assert local["data"]["localtime"] == "2024-07-04T12:00:00-04:00"
    assert local["data"]["timezone"] == "America/New_York"


async def test_bad_config_zone_is_refused(make_config: Any) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match=r"query\.default_timezone"):
        make_config("query:\n  default_timezone: Mars/Olympus\n")


async def test_localtime_flag_validation(dst_client: Any) -> None:
    status, body = await get_json(dst_client, "/api/v1/query", query="1", localtime="maybe")
    assert status == 400 and 'invalid parameter "localtime"' in body["error"]
    status, body = await get_json(
        dst_client,
        "/api/v1/query_range",
        query="1",
        start="0",
        end="7200",
        step="90m",
        align="calendar",
    )
    assert status == 400 and "whole days" in body["error"]
