"""One writing process per database, enforced with an advisory file lock.

SQLite would let two daemons share the file, but each keeps its own head and
log position; the second would replay and trim the first one's log. A
``flock`` on a sibling file is released by the kernel when the process dies,
SIGKILL included, so a crash never leaves a stale lock behind.

A clean close also removes the file, so a stopped agent leaves only its
database behind. It is unlinked while still locked; a process that opened
the old file meanwhile notices, once it gets the lock, that its file is no
longer the one at the path, and starts again on the new one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.storage.errors import StoreLocked


class DatabaseLock:
    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StoreLocked(
                    f"{self.path.parent}: the database is in use by another process (pid {holder})"
                ) from None
            if self._still_linked(fd):
                break
            os.close(fd)  # the previous owner removed this file as it released it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            # Before unlocking: see the module docstring.
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
