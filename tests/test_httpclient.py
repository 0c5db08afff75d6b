"""The one TLS/authorization factory used by the forwarder, scraping and the e-mail notifier."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from agent.httpclient import authorization, client_ssl_context


def test_authorization_basic_bearer_and_files(tmp_path: Path) -> None:
    assert authorization() is None
    basic = authorization(username="ü", password="p:w")
    assert basic == "Basic " + base64.b64encode("ü:p:w".encode()).decode()
    secret = tmp_path / "pw"
    secret.write_text("rotated\n")
    assert authorization(username="u", password="old", password_file=str(secret)) == (
        "Basic " + base64.b64encode(b"u:rotated").decode()
    )
    assert authorization(credentials="tok") == "Bearer tok"
    assert authorization(credentials_file=str(secret), auth_type="Token") == "Token rotated"
    with pytest.raises(OSError):
        authorization(credentials_file=str(tmp_path / "missing"))


def test_client_ssl_context() -> None:
    strict = client_ssl_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    loose = client_ssl_context(insecure_skip_verify=True)
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
