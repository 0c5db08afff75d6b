"""Authentication per route group, body limits and TLS, applied by the core.

Plugins declare a route's group (``write``, ``read``, ``admin``, ``public``)
and never see credentials. Passwords are configured only as bcrypt hashes;
a verified (user, password) pair is remembered by its SHA-256 so that a busy
remote-write sender does not pay bcrypt's deliberate slowness per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from aiohttp import web

GROUPS = ("write", "read", "admin")


@dataclass
class GroupAuth:
    tokens: tuple[bytes, ...] = ()
    users: dict[str, bytes] = field(default_factory=dict)
    _verified: set[bytes] = field(default_factory=set)

    @property
    def open(self) -> bool:
        return not self.tokens and not self.users

    def check(self, header: str | None) -> bool:
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
                return False
            digest = hashlib.sha256(user.encode() + b"\0" + password.encode() + stored).digest()
            if digest in self._verified:
                return True
            if bcrypt.checkpw(password.encode(), stored):
                if len(self._verified) < 10_000:
                    self._verified.add(digest)
                return True
        return False


class Authenticator:
    """Holds the credentials of every group; swapped whole on config reload."""

    def __init__(self, auth_config: Mapping[str, Any]) -> None:
        self.groups: dict[str, GroupAuth] = {}
        for group in GROUPS:
            section = auth_config.get(group) or {}
            self.groups[group] = GroupAuth(
                tokens=tuple(t.encode() for t in section.get("bearer_tokens", []) if t),
                users={u: h.encode() for u, h in (section.get("basic_auth") or {}).items()},
            )

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


def unauthorized() -> web.Response:
    # Say nothing about which part was wrong or which groups exist.
    return web.Response(
        status=401,
        text="unauthorized\n",
        headers={"WWW-Authenticate": 'Bearer realm="tsagent", Basic realm="tsagent"'},
    )


def forbidden() -> web.Response:
    return web.Response(status=403, text="forbidden\n")
