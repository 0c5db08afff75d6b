"""Authentication per route group, body limits and TLS, applied by the core.

Plugins declare a route's group (``write``, ``read``, ``admin``, ``public``)
and never see credentials. Passwords are configured only as bcrypt hashes.

bcrypt is slow on purpose (~200 ms at cost 12), which makes it a weapon
against the server itself (issue 13): a wrong password used to block the
event loop for that long, and an unknown user answered 200 times faster (a
username oracle). So, as Prometheus' exporter-toolkit does:

* a verified (user, password) pair is remembered by its SHA-256 for
  ``CACHE_TTL_S``, so a busy remote-write sender does not pay bcrypt per
  request, and a changed or revoked password stops working soon after;
* the HTTP path (:meth:`Authenticator.authorize`) runs bcrypt in a small
  thread pool (the ``bcrypt`` package releases the GIL), behind a bounded
  number of waiting checks: beyond ``MAX_PENDING`` the answer is 429 at once;
* an unknown user is checked against a dummy hash of the same cost, so both
  failures cost the same;
* failures are counted per client address: after ``MAX_FAILURES`` within
  ``FAILURE_WINDOW_S`` that address gets 429 without any bcrypt work, until
  the window has passed. Cached credentials and tokens still pass, so a
  legitimate sender behind the same address keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from aiohttp import web

GROUPS = ("write", "read", "admin")
CACHE_TTL_S = 60.0
CACHE_MAX = 10_000
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_PENDING = 32
BCRYPT_THREADS = 2
RATE_LIMITED = 429

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_dummy: dict[bytes, bytes] = {}


def _bcrypt_pool() -> ThreadPoolExecutor:
    """One pool for the process: the Authenticator is rebuilt on every config reload."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="tsagent-bcrypt")
        return _pool


def _dummy_hash(like: bytes) -> bytes:
    """A hash with the cost of ``like``, to check unknown users against (same time)."""
    cost = like[:7] if like.startswith(b"$2") else b"$2b$12$"
    with _pool_lock:
        found = _dummy.get(cost)
    if found is None:
        rounds = int(cost[4:6]) if cost[4:6].isdigit() else 12
        found = bcrypt.hashpw(b"tsagent-dummy", bcrypt.gensalt(rounds))
        with _pool_lock:
            _dummy[cost] = found
    return found


@dataclass(frozen=True, slots=True)
class _Pending:
    """A basic-auth check that needs bcrypt: what to verify and what to cache if right."""

    password: bytes
    stored: bytes
    digest: bytes | None  # None for an unknown user (checked against a dummy, never right)


@dataclass
class GroupAuth:
    tokens: tuple[bytes, ...] = ()
    users: dict[str, bytes] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _verified: OrderedDict[bytes, float] = field(default_factory=OrderedDict)

    @property
    def open(self) -> bool:
        return not self.tokens and not self.users

    def check(self, header: str | None) -> bool:
        """Synchronous check (bcrypt inline): for tests and tools, not the HTTP path."""
        quick = self.quick(header)
        if isinstance(quick, _Pending):
            return self.verify(quick)
        return quick

    def verify(self, pending: _Pending) -> bool:
        """The bcrypt part of a check; thread-safe enough to run in the pool."""
        if pending.digest is None:
            bcrypt.checkpw(pending.password, _dummy_hash(pending.stored))
            return False
        if not bcrypt.checkpw(pending.password, pending.stored):
            return False
        self._verified[pending.digest] = self.clock() + CACHE_TTL_S
        while len(self._verified) > CACHE_MAX:
            self._verified.popitem(last=False)
        return True

    def quick(self, header: str | None) -> bool | _Pending:
        """True/False when decidable without bcrypt (tokens, cache), else what to verify."""
        if not header:
            return False
        scheme, _, cred = header.partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "bearer" and self.tokens:
            given = cred.encode()
            # Compare against every token so timing does not tell which one is close.
            ok = False
            for token in self.tokens:
                ok |= hmac.compare_digest(given, token)
            return ok
        if scheme == "basic" and self.users:
            try:
                user, sep, password = base64.b64decode(cred, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            if not sep:
                return False
            stored = self.users.get(user)
            if stored is None:
                return _Pending(password.encode(), next(iter(self.users.values())), None)
            digest = hashlib.sha256(user.encode() + b"\0" + password.encode() + stored).digest()
            until = self._verified.get(digest)
            if until is not None:
                if until > self.clock():
                    return True
                self._verified.pop(digest, None)
            return _Pending(password.encode(), stored, digest)
        return False


class Authenticator:
    """Holds the credentials of every group; swapped whole on config reload."""

    def __init__(
        self, auth_config: Mapping[str, Any], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.groups: dict[str, GroupAuth] = {}
        for group in GROUPS:
            section = auth_config.get(group) or {}
            self.groups[group] = GroupAuth(
                tokens=tuple(t.encode() for t in section.get("bearer_tokens", []) if t),
                users={u: h.encode() for u, h in (section.get("basic_auth") or {}).items()},
                clock=clock,
            )
        # client address -> failure times within the window (oldest first)
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._pending = 0

    def limited(self, client: str | None) -> bool:
        """Has this address failed too often lately? (No bcrypt work is done for it.)"""
        if client is None:
            return False
        times = self._failures.get(client)
        if not times:
            return False
        cutoff = self.clock() - FAILURE_WINDOW_S
        while times and times[0] <= cutoff:
            times.pop(0)
        if not times:
            del self._failures[client]
        return len(times) >= MAX_FAILURES

    def _failed(self, client: str | None) -> None:
        if client is None:
            return
        times = self._failures.setdefault(client, [])
        self._failures.move_to_end(client)
        times.append(self.clock())
        del times[:-MAX_FAILURES]
        while len(self._failures) > CACHE_MAX:
            self._failures.popitem(last=False)

    def is_open(self, group: str) -> bool:
        """Does ``group`` let every request in? (Then no header or address is looked at.)"""
        if group == "public":
            return True
        auth = self.groups.get(group)
        return auth is None or auth.open

    async def authorize(self, group: str, header: str | None, client: str | None) -> int:
        """:meth:`decide` for the HTTP path: bcrypt off the event loop, failures rate-limited.

        200, 401, 403 as :meth:`decide`, or 429 when ``client`` failed too
        often lately or too many checks are already waiting for bcrypt.
        """
        if group == "public":
            return 200
        auth = self.groups.get(group)
        if auth is None or auth.open:
            return 200
        verdict = await self._check(auth, header, client)
        if verdict:
            return 200
        others = [g for name, g in self.groups.items() if name != group and not g.open]
        for other in others if header and verdict is not None else []:
            found = await self._check(other, header, client)
            if found:
                return 403
            verdict = verdict if found is False else None
        if verdict is None or self.limited(client):
            return RATE_LIMITED  # not counted as a failure: nothing was checked
        if header:
            self._failed(client)
        return 401

    async def _check(self, auth: GroupAuth, header: str | None, client: str | None) -> bool | None:
        """True/False, or None when bcrypt was not tried (address limited, pool full)."""
        quick = auth.quick(header)
        if not isinstance(quick, _Pending):
            return quick
        if self.limited(client) or self._pending >= MAX_PENDING:
            return None
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_bcrypt_pool(), auth.verify, quick)
        finally:
            self._pending -= 1

    def decide(self, group: str, header: str | None) -> int:
        """200 to allow, 401 for no or unknown credentials, 403 for another group's."""
        if group == "public":
            return 200
        auth = self.groups.get(group)
        if auth is None or auth.open:
            return 200
        if auth.check(header):
            return 200
        if header and any(
            g.check(header) for name, g in self.groups.items() if name != group and not g.open
        ):
            return 403
        return 401


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def make_ssl_context(tls: Mapping[str, Any]) -> ssl.SSLContext | None:
    """A server context with TLS 1.2 at least, and client certificates when asked."""
    if not tls.get("cert_file"):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.get("min_version") == "TLS1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.load_cert_chain(tls["cert_file"], tls.get("key_file") or None)
    if tls.get("client_ca_file"):
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=tls["client_ca_file"])
    return ctx


def too_many_failures() -> web.Response:
    return web.Response(
        status=RATE_LIMITED,
        text="too many failed authentications from this address; retry later\n",
        headers={"Retry-After": str(int(FAILURE_WINDOW_S))},
    )


def unauthorized() -> web.Response:
    # Say nothing about which part was wrong or which groups exist.
    return web.Response(
        status=401,
        text="unauthorized\n",
        headers={"WWW-Authenticate": 'Bearer realm="tsagent", Basic realm="tsagent"'},
    )


def forbidden() -> web.Response:
    return web.Response(status=403, text="forbidden\n")
