"""Target discovery for scrape jobs: ``file_sd_configs`` and ``http_sd_configs``.

Both read Prometheus' target-group format, a list of
``{"targets": ["host:port", ...], "labels": {"name": "value"}}``, and add the
meta label Prometheus sets, for ``relabel_configs`` to use (dropped with the
other ``__`` labels afterwards):

* file: ``__meta_filepath``, the file's path. Files are YAML or JSON by
  extension, given as globs; they are checked every second (a change in the
  set of matching files, or in a file's mtime or size, re-reads it) and all
  are re-read every ``refresh_interval``;
* http: ``__meta_url``, the SD URL, fetched every ``refresh_interval``; the
  answer must be 200 with ``application/json``.

A file or URL that cannot be read or parsed keeps its last good groups (as
Prometheus does), and the failure is logged and counted in
``tsagent_sd_refreshes_total{mechanism,result="failure"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml
from prometheus_client import Counter

from agent.plugin_api import Labels, make_labels, valid_label_name

if TYPE_CHECKING:
    from plugins.scrape.config import JobSpec

log = logging.getLogger("tsagent.scrape.sd")

WATCH_SECONDS = 1.0
HTTP_TIMEOUT_SECONDS = 30.0
MAX_HTTP_SD_BYTES = 32 * 1024 * 1024  # a hostile or broken SD server cannot fill memory
Group = tuple[str, Labels]  # (address, labels incl. meta)
SdKey = tuple[str, int, str, tuple[str, ...], float]  # job, index, kind, sources, refresh


def parse_groups(data: Any, meta: dict[str, str], where: str) -> list[Group]:
    """Target groups → (address, labels); ValueError naming ``where[i].key`` and why."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of target groups")
    out: list[Group] = []
    for i, group in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(group, dict):
            raise ValueError(f"{at}: expected {{targets: [...], labels: {{...}}}}")
        unknown = set(group) - {"targets", "labels"}
        if unknown:
            raise ValueError(f"{at}.{sorted(unknown)[0]}: unknown key; expected targets, labels")
        targets = group.get("targets") or []
        labels = group.get("labels") or {}
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{at}.targets: expected a list of host:port strings")
        if not isinstance(labels, dict):
            raise ValueError(f"{at}.labels: expected a mapping of label: value")
        for k, v in labels.items():
            if not isinstance(k, str) or not valid_label_name(k):
                raise ValueError(f"{at}.labels.{k}: invalid label name")
            if not isinstance(v, str):
                raise ValueError(f"{at}.labels.{k}: expected a string, found {v!r}")
        merged = make_labels({**labels, **meta})
        out.extend((t, merged) for t in targets if t)
    return out


class FileProvider:
    """``file_sd_configs`` entry: globs, watched by stat, re-read on change and on refresh."""

    def __init__(self, patterns: tuple[str, ...], refresh: float, count: Any) -> None:
        self.patterns = patterns
        self.refresh = refresh
        self.count = count
        self.stats: dict[str, tuple[int, int]] = {}
        self.groups: dict[str, list[Group]] = {}
        self.last_full = 0.0

    def _files(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.patterns:
            found.update(glob.glob(pattern))
        return sorted(found)

    def poll(self, now: float) -> bool:
        """Re-read what changed (everything when refresh is due); True when targets changed."""
        before = self.targets()
        full = now - self.last_full >= self.refresh
        if full:
            self.last_full = now
        files = self._files()
        for gone in set(self.groups) - set(files):
            del self.groups[gone]
            self.stats.pop(gone, None)
        for path in files:
            try:
                st = os.stat(path)
            except OSError:
                continue
            stat = (st.st_mtime_ns, st.st_size)
            if not full and self.stats.get(path) == stat:
                continue
            self.stats[path] = stat
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
                self.groups[path] = parse_groups(data, {"__meta_filepath": path}, path)
                self.count.labels("file", "success").inc()
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("file_sd: %s: %s (keeping its last good targets)", path, exc)
                self.count.labels("file", "failure").inc()
        return self.targets() != before

    def targets(self) -> list[Group]:
        return [g for path in sorted(self.groups) for g in self.groups[path]]

    async def run(self, notify: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(min(WATCH_SECONDS, self.refresh))
            if self.poll(time.monotonic()):
                await notify()


class HttpProvider:
    """``http_sd_configs`` entry: a JSON list of target groups from a URL."""

    def __init__(self, url: str, refresh: float, count: Any) -> None:
        self.url = url
        self.refresh = refresh
        self.count = count
        self.groups: list[Group] = []

    async def fetch(self, session: aiohttp.ClientSession) -> bool:
        """One refresh; True when the targets changed. Failures keep the last good list."""
        try:
            async with (
                asyncio.timeout(HTTP_TIMEOUT_SECONDS),
                session.get(self.url, headers={"Accept": "application/json"}) as resp,
            ):
                if resp.status != 200:
                    raise ValueError(f"server returned HTTP status {resp.status}")
                if resp.content_type != "application/json":
                    raise ValueError(f"unsupported content type {resp.content_type!r}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_HTTP_SD_BYTES:
                        raise ValueError(f"answer larger than {MAX_HTTP_SD_BYTES} bytes")
                    chunks.append(chunk)
                data = json.loads(b"".join(chunks))
            groups = parse_groups(data, {"__meta_url": self.url}, self.url)
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            log.warning("http_sd: %s: %s (keeping the last good targets)", self.url, exc)
            self.count.labels("http", "failure").inc()
            return False
        self.count.labels("http", "success").inc()
        changed = groups != self.groups
        self.groups = groups
        return changed

    def targets(self) -> list[Group]:
        return list(self.groups)

    async def run(
        self, session: aiohttp.ClientSession, notify: Callable[[], Awaitable[None]]
    ) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            if await self.fetch(session):
                await notify()


class Discovery:
    """The discovery providers of all jobs; tells the manager when targets change."""

    def __init__(self, registry: Any, notify: Callable[[], Awaitable[None]]) -> None:
        self.notify = notify
        self.count = Counter(
            "tsagent_sd_refreshes",
            "Service-discovery reads, by mechanism (file, http) and result.",
            ["mechanism", "result"],
            registry=registry,
        )
        self.providers: dict[SdKey, FileProvider | HttpProvider] = {}
        self.tasks: dict[SdKey, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def update(self, jobs: list[JobSpec]) -> None:
        """Start the providers of new configs (reading them once first), stop removed ones."""
        wanted: dict[SdKey, None] = {}
        for job in jobs:
            for i, (kind, sources, refresh) in enumerate(job.discovery):
                wanted[(job.name, i, kind, sources, refresh)] = None
        for key in list(self.providers):
            if key not in wanted:
                await self._stop(key)
        for key in wanted:
            if key in self.providers:
                continue
            _job, _i, kind, sources, refresh = key
            if kind == "file":
                fp = FileProvider(sources, refresh, self.count)
                fp.poll(time.monotonic())
                self.providers[key] = fp
                self.tasks[key] = asyncio.create_task(fp.run(self.notify), name="file_sd")
            else:
                hp = HttpProvider(sources[0], refresh, self.count)
                await hp.fetch(self._http())
                self.providers[key] = hp
                self.tasks[key] = asyncio.create_task(
                    hp.run(self._http(), self.notify), name="http_sd"
                )

    def targets(self, job: str) -> tuple[Group, ...]:
        out: list[Group] = []
        for key in sorted(self.providers, key=lambda k: (k[0], k[1])):
            if key[0] == job:
                out.extend(self.providers[key].targets())
        return tuple(out)

    async def _stop(self, key: SdKey) -> None:
        task = self.tasks.pop(key, None)
        self.providers.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for key in list(self.providers):
            await self._stop(key)
        if self._session is not None:
            await self._session.close()
            self._session = None
