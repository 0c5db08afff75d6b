"""Credential checks without HTTP: tokens, bcrypt basic auth, group separation."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import pytest

from agent.web.security import Authenticator, hash_password, make_ssl_context

HASH = hash_password("correct horse", rounds=4)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(
        {
            "write": {"bearer_tokens": ["w-token"], "basic_auth": {}},
            "read": {"bearer_tokens": [], "basic_auth": {"alice": HASH}},
            "admin": {"bearer_tokens": ["a-token"], "basic_auth": {}},
        }
    )


def test_bearer(auth: Authenticator) -> None:
    assert auth.decide("write", "Bearer w-token") == 200
    assert auth.decide("write", "Bearer w-tokenX") == 401
    assert auth.decide("write", None) == 401
    assert auth.decide("write", "Basic xx") == 401


def test_basic_with_bcrypt(auth: Authenticator) -> None:
    assert auth.decide("read", basic("alice", "correct horse")) == 200
    assert auth.decide("read", basic("alice", "correct horse")) == 200  # cached path
    assert auth.decide("read", basic("alice", "wrong")) == 401
    assert auth.decide("read", basic("bob", "correct horse")) == 401
    assert auth.decide("read", "Basic !!notbase64") == 401


def test_other_groups_credentials_are_forbidden(auth: Authenticator) -> None:
    assert auth.decide("admin", "Bearer w-token") == 403
    assert auth.decide("write", "Bearer a-token") == 403


def test_open_and_public_groups() -> None:
    auth = Authenticator({})
    assert auth.decide("read", None) == 200
    assert auth.decide("public", "Bearer whatever") == 200


def test_hash_is_bcrypt_not_plain() -> None:
    assert HASH.startswith("$2b$04$") and "correct horse" not in HASH


def make_cert(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_ssl_context_minimum_tls12_and_client_certs(tmp_path: Path) -> None:
    assert make_ssl_context({"cert_file": ""}) is None
    cert, key = make_cert(tmp_path)
    ctx = make_ssl_context({"cert_file": str(cert), "key_file": str(key), "min_version": "TLS1.2"})
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    ctx = make_ssl_context(
        {
            "cert_file": str(cert),
            "key_file": str(key),
            "client_ca_file": str(cert),
            "min_version": "TLS1.3",
        }
    )
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
