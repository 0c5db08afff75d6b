"""``tsagent`` with tracemalloc on, for the memory breakdown of ``bench_churn.py --memory``.

Run as the daemon's entry point instead of ``python -m agent.cli``; the
arguments are the CLI's (``run -c FILE``). The first SIGUSR1 starts
tracemalloc (starting up under tracing takes a minute on a busy machine, and
what startup allocates is not what a new series costs); every SIGUSR1 then
writes a snapshot to ``$TSAGENT_TRACEMALLOC_OUT`` (atomically: written to a
temporary name, then renamed). Signal, load, signal: the second snapshot
holds what the load allocated and kept, by allocating line, with no change
to the daemon. Tracing slows the daemon several times over; only its memory
figures mean anything.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Deep enough to reach the agent/plugins frame above json, dict resizes, sqlite3;
# 30 frames made a 200,000-series load take over 15 minutes.
FRAMES = 10


def main() -> int:
    out = os.environ["TSAGENT_TRACEMALLOC_OUT"]

    def dump(signum: int, frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        snap = tracemalloc.take_snapshot()
        snap.dump(out + ".tmp")
        os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, dump)
    from agent.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
