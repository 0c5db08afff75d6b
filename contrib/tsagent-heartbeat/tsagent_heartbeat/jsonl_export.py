"""A JSON-lines file exporter: every accepted sample, one line each, exactly once.

It shows the batch-exporter surface a real sink (a message queue, a data
lake) needs: ``export(batches, progress)`` receives the same durable, ordered
batches the built-in remote-write forwarder gets, after they were committed.

Delivery is at-least-once by contract (a crash after the write and before
tsagent records the position offers the batch again), so this sink makes it
exactly-once itself: each line carries the batch's ``seq`` and the sample's
index in it, and at start the file's tail tells where it stopped: a torn last
line is cut off, and already-written samples are skipped when offered again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SECTION = "export.jsonl"


def format_value(v: float) -> str:
    """Prometheus' text spelling: JSON has no NaN or infinities."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class JsonLinesExporter:
    """Appends ``{"seq", "i", "op", "source", "labels", "t", "v"}`` lines to ``path``."""

    name = "jsonl"

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.written = 0
        self._fd: int | None = None
        self._done: tuple[int, int] = (0, -1)  # (seq, last index) already in the file

    async def start(self, ctx: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done = self._recover()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _recover(self) -> tuple[int, int]:
        """Cut a torn last line; return (seq, index) of the last complete one."""
        if not self.path.exists():
            return (0, -1)
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                f.truncate(end)
        last = data[:end].rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not last:
            return (0, -1)
        row = json.loads(last)
        return (int(row["seq"]), int(row["i"]))

    async def stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def export(self, batches: Sequence[Any], progress: Any) -> None:
        if self._fd is None:
            raise RuntimeError("jsonl exporter is not started")
        done_seq, done_i = self._done
        lines: list[str] = []
        for batch in batches:
            if batch.seq < done_seq:
                continue
            first = done_i + 1 if batch.seq == done_seq else 0
            labels_of = batch.labels
            sids = batch.series_ids.tolist()
            ts = batch.timestamps.tolist()
            vals = batch.values.tolist()
            for i in range(first, len(sids)):
                row = {
                    "seq": batch.seq,
                    "i": i,
                    "op": batch.op,
                    "source": batch.source,
                    "labels": dict(labels_of(sids[i])),
                    "t": ts[i],
                    "v": format_value(vals[i]),
                }
                lines.append(json.dumps(row, separators=(",", ":")))
        if lines:
            os.write(self._fd, ("\n".join(lines) + "\n").encode())
            if self.fsync:
                os.fsync(self._fd)
            self.written += len(lines)
            last = json.loads(lines[-1])
            self._done = (last["seq"], last["i"])
