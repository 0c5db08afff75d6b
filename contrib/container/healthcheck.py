"""The container's HEALTHCHECK: exit 0 when tsagent answers ``/-/healthy``, else 1.

Python rather than curl because the slim image has no curl. The address is
``$TSAGENT_HEALTH_URL`` if set, else derived from ``$TSAGENT_LISTEN`` (a
wildcard host is reached on loopback), else tsagent's default 127.0.0.1:9201.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def health_url(env: dict[str, str]) -> str:
    if env.get("TSAGENT_HEALTH_URL"):
        return env["TSAGENT_HEALTH_URL"]
    listen = env.get("TSAGENT_LISTEN") or "127.0.0.1:9201"
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/-/healthy"


def main() -> int:
    url = health_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
