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
import ssl
from pathlib import Path


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
