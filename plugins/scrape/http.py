"""The scraper's HTTP client: one session per job, TLS and authorization from the job's config."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aiohttp

from agent.plugin_api import (
    __version__,
    authorization,
    client_ssl_context,
)
from plugins.scrape.config import HttpSpec, JobSpec
from plugins.scrape.targets import TargetSpec

log = logging.getLogger("tsagent.scrape")


class ScrapeError(Exception):
    """The scrape failed; the message says why (it is logged with the target)."""


def authorization_header(http: HttpSpec) -> str | None:
    """The Authorization header for a job; secret files are read at every scrape (rotation)."""
    try:
        return authorization(
            username=http.basic_username,
            password=http.basic_password,
            password_file=http.basic_password_file,
            credentials=http.auth_credentials,
            credentials_file=http.auth_credentials_file,
            auth_type=http.auth_type,
        )
    except OSError as exc:
        raise ScrapeError(f"cannot read credentials: {exc}") from None


def ssl_context(http: HttpSpec) -> ssl.SSLContext:
    return client_ssl_context(
        ca_file=http.ca_file,
        cert_file=http.cert_file,
        key_file=http.key_file,
        insecure_skip_verify=http.insecure_skip_verify,
    )


class HttpClient:
    """One connection pool per job (its TLS and auth settings are per job)."""

    def __init__(self, http: HttpSpec) -> None:
        self.http = http
        self._ssl = ssl_context(http)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": f"tsagent/{__version__}"},
        )

    async def fetch(self, target: TargetSpec, job: JobSpec) -> tuple[bytes, str]:
        headers = {
            "Accept": job.accept,
            "X-Prometheus-Scrape-Timeout-Seconds": f"{target.timeout:g}",
        }
        auth = authorization_header(self.http)
        if auth:
            headers["Authorization"] = auth
        extra: dict[str, Any] = {}
        if self.http.server_name:
            extra["server_hostname"] = self.http.server_name
        try:
            async with (
                asyncio.timeout(target.timeout),
                self.session.get(
                    target.url,
                    headers=headers,
                    allow_redirects=self.http.follow_redirects,
                    **extra,
                ) as resp,
            ):
                if resp.status != 200:
                    raise ScrapeError(f"server returned HTTP status {resp.status} {resp.reason}")
                limit = job.body_size_limit
                if not limit:
                    body = await resp.read()
                else:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > limit:
                            raise ScrapeError(f"body size limit of {limit} bytes exceeded")
                        chunks.append(chunk)
                    body = b"".join(chunks)
                return body, resp.headers.get("Content-Type", "")
        except TimeoutError:
            raise ScrapeError(f"scrape timed out after {target.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self.session.close()
