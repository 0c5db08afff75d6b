"""TLS and authorization for outgoing HTTP: one place that turns config into both.

The forwarder (remote write), scraping and the e-mail notifier build their
client TLS context with :func:`client_ssl_context` and their
``Authorization`` header with :func:`authorization`, so a ``ca_file``,
client certificate, ``insecure_skip_verify``, basic auth or bearer token
means the same everywhere. Secret files are read at every call, so a
rotated password or token is picked up without a restart. Plugins reach
both through :mod:`agent.plugin_api`.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config import Field, Schema


def client_ssl_context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure_skip_verify: bool = False,
) -> ssl.SSLContext:
    """A client context: system CAs (or ``ca_file``), an optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_config_schema() -> Schema:
    """The ``tls_config`` section of an outgoing connection (Prometheus' names)."""
    return Schema(
        {
            "ca_file": Field(str, ""),
            "cert_file": Field(str, "", "Client certificate (with key_file)."),
            "key_file": Field(str, ""),
            "server_name": Field(str, "", "Expected server name (SNI and verification)."),
            "insecure_skip_verify": Field(bool, False),
        }
    )


def tls_config_errors(tls: Mapping[str, Any], path: str) -> list[str]:
    """Problems of a ``tls_config`` at config path ``path`` (files that are not there)."""
    errors = []
    if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
        errors.append(f"{path}: cert_file and key_file go together")
    for key in ("ca_file", "cert_file", "key_file"):
        if tls.get(key) and not os.path.isfile(tls[key]):
            errors.append(f"{path}.{key}: no such file {tls[key]!r}")
    return errors


def read_secret(path: str) -> str:
    """A password or token file's content without surrounding white space."""
    return Path(path).read_text(encoding="utf-8").strip()


def authorization(
    *,
    username: str = "",
    password: str = "",
    password_file: str = "",
    credentials: str = "",
    credentials_file: str = "",
    auth_type: str = "Bearer",
) -> str | None:
    """The ``Authorization`` header value, or None when no credentials are configured.

    Basic auth when ``username`` is set (``password`` or ``password_file``,
    UTF-8 as Prometheus sends it); otherwise ``auth_type`` with
    ``credentials`` or ``credentials_file`` (a bearer token by default).
    Raises ``OSError`` when a secret file cannot be read.
    """
    if username:
        if password_file:
            password = read_secret(password_file)
        raw = f"{username}:{password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")
    if credentials_file:
        credentials = read_secret(credentials_file)
    return f"{auth_type} {credentials}" if credentials else None
