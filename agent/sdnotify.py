"""systemd's notify protocol (sd_notify) with the standard library only.

A datagram to ``$NOTIFY_SOCKET`` tells systemd we are ready, reloading or
stopping, so ``Type=notify`` units start dependants only once we listen.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str, env: dict[str, str] | None = None) -> bool:
    """Send ``READY=1`` and friends; a no-op (False) outside systemd."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=`` value systemd wants beside ``RELOADING=1``."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
