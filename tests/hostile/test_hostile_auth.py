"""bcrypt as a weapon (issue 13, item 6): off the loop, cached briefly, same cost, rate-limited.

Clocks are injected; "off the loop" is checked by the thread bcrypt runs on,
never by timing.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import bcrypt
import pytest

from agent.web import security
from agent.web.security import CACHE_TTL_S, FAILURE_WINDOW_S, MAX_FAILURES, Authenticator

HASH = security.hash_password("correct horse", rounds=4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> Authenticator:
    return Authenticator(
        {"read": {"basic_auth": {"alice": HASH}}, "write": {"bearer_tokens": ["w"]}}, clock=clock
    )


@pytest.fixture
def bcrypt_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads bcrypt.checkpw ran on (the real function still runs)."""
    seen: list[str] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> Any:
        seen.append(threading.current_thread().name)
        return real(password, hashed)

    monkeypatch.setattr(security.bcrypt, "checkpw", spy)
    return seen


async def test_bcrypt_runs_off_the_event_loop(
    auth: Authenticator, bcrypt_threads: list[str]
) -> None:
    assert await auth.authorize("read", basic("alice", "correct horse"), "10.0.0.1") == 200
    assert await auth.authorize("read", basic("alice", "wrong"), "10.0.0.1") == 401
    assert bcrypt_threads and all(n.startswith("tsagent-bcrypt") for n in bcrypt_threads)


async def test_success_is_cached_for_a_short_time_only(
    auth: Authenticator, clock: Clock, bcrypt_threads: list[str]
) -> None:
    good = basic("alice", "correct horse")
    assert await auth.authorize("read", good, "c") == 200
    assert await auth.authorize("read", good, "c") == 200
    assert len(bcrypt_threads) == 1  # the second one came from the cache
    clock.now += CACHE_TTL_S + 1
    assert await auth.authorize("read", good, "c") == 200
    assert len(bcrypt_threads) == 2  # expired: verified again


async def test_unknown_user_pays_the_same_bcrypt(
    auth: Authenticator, bcrypt_threads: list[str]
) -> None:
    assert await auth.authorize("read", basic("mallory", "x"), "c") == 401
    assert len(bcrypt_threads) == 1  # against a dummy hash, not a fast "no such user"
    assert auth.decide("read", basic("mallory", "x")) == 401


async def test_failures_are_rate_limited_per_address(
    auth: Authenticator, clock: Clock, bcrypt_threads: list[str]
) -> None:
    good = basic("alice", "correct horse")
    assert await auth.authorize("read", good, "10.0.0.9") == 200  # cached from now on
    for _ in range(MAX_FAILURES):
        assert await auth.authorize("read", basic("alice", "guess"), "10.0.0.9") == 401
    calls = len(bcrypt_threads)
    assert await auth.authorize("read", basic("alice", "guess"), "10.0.0.9") == 429
    assert len(bcrypt_threads) == calls  # refused without any bcrypt work
    # Another address is unaffected; cached credentials and tokens still pass.
    assert await auth.authorize("read", basic("alice", "guess"), "10.0.0.10") == 401
    assert await auth.authorize("read", good, "10.0.0.9") == 200
    assert await auth.authorize("write", "Bearer w", "10.0.0.9") == 200
    clock.now += FAILURE_WINDOW_S + 1
    assert await auth.authorize("read", basic("alice", "guess"), "10.0.0.9") == 401


async def test_http_answers_429_with_retry_after(aiohttp_client: Any, make_config: Any) -> None:
    from agent.web.app import make_app

    config, host = make_config(
        f"auth:\n  read:\n    basic_auth:\n      alice: '{HASH}'\nplugins:\n  disabled: [scrape]\n"
    )
    client = await aiohttp_client(make_app(config, host))
    bad = {"Authorization": basic("alice", "nope")}
    statuses = [
        (await client.get("/api/v1/labels", headers=bad)).status for _ in range(MAX_FAILURES + 1)
    ]
    assert statuses[:MAX_FAILURES] == [401] * MAX_FAILURES and statuses[-1] == 429
    resp = await client.get("/api/v1/labels", headers=bad)
    assert resp.status == 429 and resp.headers["Retry-After"] == str(int(FAILURE_WINDOW_S))
    assert (await client.get("/-/healthy")).status == 200


async def test_full_bcrypt_queue_answers_429_without_counting_a_failure(
    auth: Authenticator, bcrypt_threads: list[str]
) -> None:
    from agent.web.security import MAX_PENDING

    auth._pending = MAX_PENDING  # as if that many checks were waiting for a thread
    assert await auth.authorize("read", basic("alice", "correct horse"), "10.0.0.7") == 429
    assert bcrypt_threads == [] and not auth.limited("10.0.0.7")
    auth._pending = 0
    assert await auth.authorize("read", basic("alice", "correct horse"), "10.0.0.7") == 200
