"""Scrape loops: one asyncio task per target, and the manager that follows the config.

Each scrape is one durable append (through ``ctx.append``) holding the
target's samples, the staleness markers of series that vanished since the
previous scrape and the ``up`` / ``scrape_*`` series, all at the scrape's
start time, so a reader never sees half a scrape. Prometheus' rules:

- a failed scrape (HTTP error, timeout, malformed page, ``sample_limit`` or a
  label limit exceeded) stores nothing from the page, marks every series of
  the previous successful scrape stale, and reports ``up`` 0;
- series present last time and missing now get a staleness marker;
- series exposed with their own timestamp (``honor_timestamps``) are left out
  of staleness tracking unless ``track_timestamps_staleness`` is on;
- a target that leaves the config gets staleness markers for all its series
  and its ``up``/``scrape_*`` series; so does every target when tsagent stops
  (``stale_markers_on_stop``), which Prometheus does not do.

Series ids are cached per target keyed on the series text exactly as exposed
(``name{labels}``), so a known series costs a dict lookup and a float parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent.plugin_api import (
    METRIC_NAME,
    STALE_NAN,
    Labels,
    exposition,
    make_labels,
    process,
    valid_label_name,
    valid_metric_name,
)
from plugins.scrape.config import SECTION, JobSpec, compile_jobs
from plugins.scrape.discovery import Discovery
from plugins.scrape.http import HttpClient, ScrapeError
from plugins.scrape.targets import TargetSpec, targets_of

if TYPE_CHECKING:
    from agent.plugin_api import AgentContext

log = logging.getLogger("tsagent.scrape")

SOURCE = "scrape"
EXPORTED_PREFIX = "exported_"
REPORT_METRICS = (
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
)
RELOAD_POLL_SECONDS = 1.0
# Prometheus aligns a scrape's timestamp to its schedule when it fires within
# this much (or 1 % of the interval) of it: regular timestamps compress better.
TIMESTAMP_TOLERANCE = 0.002
# Samples stamped further ahead than this are dropped (Prometheus' maxAheadTime).
MAX_AHEAD_MS = 10 * 60 * 1000


@dataclass(slots=True)
class _Entry:
    """What one exposed series text turned into."""

    labels: Labels | None  # None: dropped by metric_relabel_configs
    sid: int = 0
    last_iter: int = 0
    stored: bool = False  # part of a successful scrape before (for scrape_series_added)


@dataclass
class LoopState:
    """What outlives a loop restarted by a config change: staleness bookkeeping."""

    prev: set[int] = field(default_factory=set)
    report_ids: list[int] = field(default_factory=list)
    last_ts: int = 0


@dataclass
class ScrapeResult:
    """The outcome of one scrape, as reported in ``up`` and ``scrape_*``."""

    timestamp: int
    up: bool
    duration: float
    scraped: int = 0
    post_relabel: int = 0
    series_added: int = 0
    stale_markers: int = 0
    error: str = ""


class TargetLoop:
    """Scrapes one target every interval, at a stable hash-derived phase."""

    def __init__(
        self,
        ctx: AgentContext,
        job: JobSpec,
        target: TargetSpec,
        client: HttpClient,
        seed: int,
        state: LoopState | None = None,
    ) -> None:
        self.ctx = ctx
        self.job = job
        self.target = target
        self.client = client
        self.seed = seed
        self.state = state or LoopState()
        self.cache: dict[str, _Entry] = {}
        self.iter = 0
        self.last: ScrapeResult | None = None
        self.completed = 0  # scrapes finished (stored or not): for status and tests
        self._ok_cache_size = 0
        self._task: asyncio.Task[None] | None = None
        self._commit: asyncio.Future[None] | None = None

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"scrape {self.target.url}")

    async def stop(self, *, stale: bool) -> LoopState:
        """Stop scraping; with ``stale``, mark every series of the target stale."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._commit is not None and not self._commit.done():
            with contextlib.suppress(Exception):
                await self._commit  # let an append in flight finish, so prev is exact
        if stale:
            await self._write_end_of_run_markers()
        return self.state

    def first_delay(self, now: float) -> float:
        """Seconds until the first scrape: Prometheus' offset pinned to absolute time."""
        interval = self.target.interval
        base = interval - now % interval
        nxt = base + self.target.offset(self.seed)
        return nxt - interval if nxt > interval else nxt

    async def _run(self) -> None:
        interval = self.target.interval
        scheduled = time.time() + self.first_delay(time.time())
        tolerance = min(interval / 100, TIMESTAMP_TOLERANCE)
        while True:
            await asyncio.sleep(max(0.0, scheduled - time.time()))
            now = time.time()
            ts = scheduled if now - scheduled <= tolerance else now
            try:
                await self.scrape_once(ts)
            except Exception:  # keep scraping; the error is counted
                log.exception("scrape of %s failed unexpectedly", self.target.url)
                self.ctx.metrics.plugin_errors.labels("scrape", "scrape").inc()
            scheduled += interval
            now = time.time()
            if scheduled <= now:  # overran: skip the missed ticks, as Prometheus' ticker does
                scheduled += ((now - scheduled) // interval + 1) * interval

    # --- one scrape ---------------------------------------------------------------

    def _mutate(self, exposed: exposition.ExposedLabels) -> exposition.ExposedLabels | None:
        """Target labels (honor_labels / exported_ on clashes), then metric relabeling."""
        lb = {k: v for k, v in exposed.items() if v}
        if self.job.honor_labels:
            for name, value in self.target.labels:
                if name not in lb:
                    lb[name] = value
        else:
            clashes: list[tuple[str, str]] = []
            for name, value in self.target.labels:
                existing = lb.get(name)
                if existing:
                    clashes.append((name, existing))
                lb[name] = value
            clashes.sort(key=lambda c: len(c[0]))
            for name, value in clashes:
                new = name
                while True:
                    new = EXPORTED_PREFIX + new
                    if not lb.get(new):
                        lb[new] = value
                        break
        return process(lb, self.job.metric_relabel) if self.job.metric_relabel else lb

    def _finish_labels(self, final: exposition.ExposedLabels) -> Labels:
        """Check what Prometheus checks on a new series; a failure fails the scrape."""
        name = final.get(METRIC_NAME, "")
        if not name:
            raise ScrapeError("a series has no metric name after metric relabeling")
        if not valid_metric_name(name):
            raise ScrapeError(f"invalid metric name {name!r}")
        job = self.job
        if job.label_limit and len(final) > job.label_limit:
            raise ScrapeError(
                f"label_limit exceeded (metric: {name[:50]}, number of labels: {len(final)}, "
                f"limit: {job.label_limit})"
            )
        for k, v in final.items():
            if not valid_label_name(k):
                raise ScrapeError(f"invalid label name {k[:50]!r} (metric: {name[:50]})")
            if job.label_name_length_limit and len(k) > job.label_name_length_limit:
                raise ScrapeError(f"label_name_length_limit exceeded (metric: {name[:50]})")
            if job.label_value_length_limit and len(v) > job.label_value_length_limit:
                raise ScrapeError(f"label_value_length_limit exceeded (metric: {name[:50]})")
        for k, v in job.external_labels:
            final.setdefault(k, v)
        return make_labels(final)

    async def _fetch_and_parse(self) -> exposition.Parsed:
        body, content_type = await self.client.fetch(self.target, self.job)
        if content_type.lower().startswith("application/openmetrics-text"):
            # prometheus-client's parser is pure Python: keep the event loop responsive.
            return await asyncio.to_thread(exposition.parse, body, content_type)
        return exposition.parse(body, content_type)

    async def scrape_once(self, scrape_time: float) -> ScrapeResult:
        """Scrape, then store samples, staleness markers and the report in one append."""
        started = time.perf_counter()
        ts = int(scrape_time * 1000)
        self.iter += 1
        iteration = self.iter
        store = self.ctx.require_store()
        scraped = added = series_added = 0
        error = ""
        ids: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        cur: set[int] = set()
        fresh: list[_Entry] = []
        try:
            parsed = await self._fetch_and_parse()
            rows = parsed.rows
            scraped = len(rows)
            cache = self.cache
            honor_ts = self.job.honor_timestamps
            track = self.job.track_timestamps_staleness
            picked: list[tuple[_Entry, int, float, bool]] = []
            too_new = 0
            for key, value, explicit_ts in rows:
                entry = cache.get(key)
                if entry is None:
                    final = self._mutate(parsed.labels_of(key))
                    entry = _Entry(None if final is None else self._finish_labels(final))
                    cache[key] = entry
                entry.last_iter = iteration
                if entry.labels is None:
                    continue
                if honor_ts and explicit_ts is not None:
                    if explicit_ts > ts + MAX_AHEAD_MS:
                        too_new += 1  # Prometheus' out-of-bounds: dropped, scrape still fine
                        continue
                    picked.append((entry, explicit_ts, value, track))
                else:
                    picked.append((entry, ts, value, True))
            added = len(picked) + too_new  # Prometheus counts them, as the limit does
            if self.job.sample_limit and added > self.job.sample_limit:
                raise ScrapeError(
                    f"sample_limit exceeded ({added} samples after relabeling, "
                    f"limit {self.job.sample_limit})"
                )
            missing = list({id(e): e for e, _, _, _ in picked if e.sid == 0}.values())
            if missing:
                created, refused = await store.resolve_series([e.labels or () for e in missing])
                for e, sid in zip(missing, created, strict=True):
                    e.sid = sid
                if refused:
                    # A limit (cardinality, label sizes) refused some new series: the
                    # rest of the page is kept, as for samples the store refuses.
                    picked = [p for p in picked if p[0].sid != 0]
                    log.debug(
                        "scrape %s: %d new series refused, e.g. %s",
                        self.target.url,
                        len(refused),
                        next(iter(refused.values())),
                    )
            seen: set[tuple[int, int]] = set()
            duplicates = 0
            for entry, t, value, tracked in picked:
                sid = entry.sid
                if (sid, t) in seen:
                    duplicates += 1  # same series twice in one page: Prometheus keeps the first
                    continue
                seen.add((sid, t))
                ids.append(sid)
                stamps.append(t)
                values.append(value)
                if tracked:
                    cur.add(sid)
                if not entry.stored:
                    entry.stored = True  # undone below if the append fails
                    fresh.append(entry)
            series_added = len(fresh)
            if duplicates or too_new:
                log.debug(
                    "%s: %d duplicate samples and %d more than 10m ahead ignored",
                    self.target.url,
                    duplicates,
                    too_new,
                )
        except (ScrapeError, exposition.ParseError) as exc:
            error = str(exc)
        if error:
            ids, stamps, values, cur = [], [], [], set()
            for e in fresh:
                e.stored = False
            fresh = []
            series_added = 0
            log.info("scrape of %s failed: %s", self.target.url, error)
        stale = sorted(self.state.prev - cur)
        duration = time.perf_counter() - started
        result = ScrapeResult(
            timestamp=ts,
            up=not error,
            duration=duration,
            scraped=scraped,
            post_relabel=added,
            series_added=series_added,
            stale_markers=len(stale),
            error=error,
        )
        if stale:
            ids.extend(stale)
            stamps.extend([ts] * len(stale))
            values.extend([STALE_NAN] * len(stale))
        report_ids = await self._report_ids()
        ids.extend(report_ids)
        stamps.extend([ts] * len(report_ids))
        values.extend(
            [1.0 if not error else 0.0, duration, float(scraped), float(added), float(series_added)]
        )
        self._commit = asyncio.ensure_future(self._append(ids, stamps, values, cur, fresh, ts))
        await asyncio.shield(self._commit)
        self._prune(iteration, ok=not error)
        self.last = result
        self.completed += 1
        return result

    async def _append(
        self,
        ids: list[int],
        stamps: list[int],
        values: list[float],
        cur: set[int],
        fresh: list[_Entry],
        ts: int,
    ) -> None:
        try:
            result = await self.ctx.append(
                ids, stamps, values, source=SOURCE, client=self.target.url
            )
        except Exception as exc:  # noqa: BLE001 - back-pressure or a closing store
            for e in fresh:
                e.stored = False
            log.warning("storing the scrape of %s failed: %s", self.target.url, exc)
            self.ctx.metrics.plugin_errors.labels("scrape", "append").inc()
            return
        if result.rejected:
            reasons = result.rejected_by_reason
            log.debug("%s: %s", self.target.url, {k: v for k, v in reasons.items() if v})
        self.state.prev = cur
        self.state.last_ts = max(self.state.last_ts, ts)

    def _prune(self, iteration: int, *, ok: bool) -> None:
        """Forget series text unseen in this scrape (after a success, or if the cache balloons)."""
        size = len(self.cache)
        if ok or size > 2 * self._ok_cache_size + 1000:
            self.cache = {k: e for k, e in self.cache.items() if e.last_iter == iteration}
            if ok:
                self._ok_cache_size = len(self.cache)

    async def _report_ids(self) -> list[int]:
        if not self.state.report_ids:
            base = dict(self.target.labels)
            for k, v in self.job.external_labels:
                base.setdefault(k, v)
            labels = [make_labels({**base, METRIC_NAME: name}) for name in REPORT_METRICS]
            self.state.report_ids = await self.ctx.require_store().get_or_create_series(labels)
        return self.state.report_ids

    async def _write_end_of_run_markers(self) -> None:
        """Staleness markers for every series of the target, the report series included."""
        ids = sorted(self.state.prev) + list(self.state.report_ids)
        if not ids or self.ctx.store is None:
            return
        ts = max(int(time.time() * 1000), self.state.last_ts + 1)
        try:
            await self.ctx.append(
                ids, [ts] * len(ids), [STALE_NAN] * len(ids), source=SOURCE, client=self.target.url
            )
        except Exception as exc:  # noqa: BLE001 - shutting down; nothing else to do
            log.warning("staleness markers for %s not written: %s", self.target.url, exc)
            return
        self.state.prev = set()
        self.state.last_ts = ts


def jitter_seed(external_labels: Labels) -> int:
    """Per-host seed so two agents scraping the same targets don't fire in lockstep."""
    raw = (socket.gethostname() + repr(external_labels)).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


class ScrapeManager:
    """The ingestor: runs a loop per target and follows config reloads.

    The core swaps ``ctx.config`` on SIGHUP without telling plugins, so the
    manager notices a new config object within a second and reconciles:
    new targets start, removed ones stop with staleness markers, changed ones
    restart keeping their staleness state (so no marker is lost or spurious).
    """

    name = "scrape"

    def __init__(self) -> None:
        self.loops: dict[tuple[str, str, Labels], TargetLoop] = {}
        self.clients: dict[str, HttpClient] = {}
        self._watch: asyncio.Task[None] | None = None
        self._config: Any = None
        self._stale_on_stop = True
        self.target_errors: list[str] = []
        self.jobs: list[JobSpec] = []
        self._lock = asyncio.Lock()

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._config = ctx.config
        self.discovery = Discovery(ctx.metrics.registry, self._reconcile)
        await self.apply(ctx.plugin_config(SECTION))
        self._watch = asyncio.create_task(self._follow_reloads(), name="scrape reload watch")

    async def _follow_reloads(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if self.ctx.config is not self._config:
                self._config = self.ctx.config
                try:
                    await self.apply(self.ctx.plugin_config(SECTION))
                except Exception:  # keep the running targets
                    log.exception("applying the new scrape config failed")
                    self.ctx.metrics.plugin_errors.labels("scrape", "reload").inc()

    async def apply(self, section: dict[str, Any]) -> None:
        """Make the running loops match ``section`` (and what its discovery finds)."""
        self._stale_on_stop = bool(section.get("stale_markers_on_stop", True))
        self.jobs = compile_jobs(section)
        await self.discovery.update(self.jobs)
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Start, stop and restart loops; also called when discovery finds new targets.

        A loop keeps the job without its discovered targets, so a discovery
        change restarts no loop whose target stayed.
        """
        async with self._lock:
            await self._reconcile_locked(self.jobs)

    async def _reconcile_locked(self, jobs: list[JobSpec]) -> None:
        desired: dict[tuple[str, str, Labels], tuple[JobSpec, TargetSpec]] = {}
        errors: list[str] = []
        seed = jitter_seed(jobs[0].external_labels if jobs else ())
        for job in jobs:
            found_in = self.discovery.targets(job.name)
            merged = replace(job, targets=job.targets + found_in) if found_in else job
            found, problems = targets_of(merged)
            errors.extend(problems)
            for target in found:
                desired.setdefault(target.key, (job, target))
        for problem in errors:
            log.warning("scrape target skipped: %s", problem)
        self.target_errors = errors
        carried: dict[tuple[str, str, Labels], LoopState] = {}
        for key, loop in list(self.loops.items()):
            want = desired.get(key)
            if want is None:
                await loop.stop(stale=True)
                del self.loops[key]
            elif want[0] != loop.job or want[1] != loop.target:
                state = await loop.stop(stale=False)
                if want[0].external_labels != loop.job.external_labels:
                    state.report_ids = []  # the report series get other labels now
                carried[key] = state
                del self.loops[key]
        old_clients, self.clients = self.clients, {}
        for job in jobs:
            reuse = old_clients.get(job.name)
            if reuse is not None and reuse.http == job.http:
                self.clients[job.name] = old_clients.pop(job.name)
            elif job.name not in self.clients:
                self.clients[job.name] = HttpClient(job.http)
        for key, (job, target) in desired.items():
            if key in self.loops:
                continue
            loop = TargetLoop(self.ctx, job, target, self.clients[job.name], seed, carried.get(key))
            self.loops[key] = loop
            loop.start()
        # loops still running on an old client were restarted above; close the rest
        for client in old_clients.values():
            await client.close()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.discovery.close()
        loops = list(self.loops.values())
        await asyncio.gather(*(lp.stop(stale=self._stale_on_stop) for lp in loops))
        self.loops.clear()
        for client in self.clients.values():
            await client.close()
        self.clients.clear()
