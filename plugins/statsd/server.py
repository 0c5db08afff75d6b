"""The StatsD ingestor: UDP and TCP listeners, the flush loop, its own metrics.

Lines are applied to the :class:`Aggregator` synchronously inside the
protocol callbacks (no queue, no task per packet: parsing is cheaper than
scheduling). Every ``flush_interval`` the aggregated values are written with
one timestamp through ``ctx.append``; series ids are resolved once per
metric (a dict keyed on the label tuple, ``get_or_create_series`` for
misses) and kept on the metric object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.plugin_api import (
    STALE_NAN,
    AgentContext,
    BackPressure,
    Config,
    Labels,
    StorageError,
    UnknownSeries,
    parse_duration,
    parse_listen,
)
from plugins.statsd.aggregator import Aggregator, Settings, Snapshot
from plugins.statsd.aggregator import Metric as StatsdMetric
from plugins.statsd.mapper import build_mapper
from plugins.statsd.parser import LINE_TOO_LONG

log = logging.getLogger("tsagent.statsd")

SECTION = "ingest.statsd"
SOURCE = "statsd"


def settings_from(cfg: Mapping[str, Any]) -> Settings:
    return Settings(
        timer_type=cfg["timer_type"],
        quantiles=tuple(float(q) for q in cfg["quantiles"]),
        buckets=tuple(float(b) for b in cfg["buckets"]),
        ttl=parse_duration(cfg["ttl"]),
        ms_divisor=1000.0 if cfg["timer_ms_to_seconds"] else 1.0,
        max_metrics=cfg["max_metrics"],
        summary_max_samples=cfg["summary_max_samples"],
        key_cache_size=cfg["key_cache_size"],
        max_line_bytes=cfg["max_line_bytes"],
    )


class RateLimitedLog:
    """At most one log line per (category, reason) per ``interval`` seconds.

    A sender stuck on a bad format would otherwise fill the disk with one
    warning per packet; the suppressed count is reported with the next line.
    """

    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self.logger = logger
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def __call__(self, category: str, reason: str, line: bytes, peer: str) -> bool:
        key = (category, reason)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        self.logger.warning(
            "statsd: %s line (%s) from %s: %r%s",
            category,
            reason,
            peer,
            line[:200],
            f" (and {more} more since the last report)" if more else "",
        )
        return True


class _Udp:
    """A non-blocking UDP socket drained by a loop reader.

    asyncio's datagram transport makes one ``recvfrom`` per readiness event;
    draining up to ``BATCH`` datagrams per event instead roughly halves the
    cost of one-line datagrams (what most StatsD clients send), measured by
    ``benchmarks/bench_statsd.py``.
    """

    BATCH = 256

    def __init__(self, ingestor: StatsdIngestor, host: str, port: int, rcvbuf: int) -> None:
        self.ing = ingestor
        self.feed = ingestor.agg.feed
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )[0]
        self.sock = socket.socket(family, kind, proto)
        try:
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind(addr)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.on_readable)

    def on_readable(self) -> None:
        ing = self.ing
        recv = self.sock.recvfrom
        feed = self.feed
        packets = lines = 0
        try:
            for _ in range(self.BATCH):
                data, ing.peer = recv(65_536)
                packets += 1
                lines += feed(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # e.g. ICMP errors reported on some platforms
            log.debug("statsd udp error: %s", exc)
        finally:
            ing.udp_packets += packets
            ing.udp_lines += lines

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Tcp(asyncio.Protocol):
    """A newline-delimited stream; a line may arrive split over several reads.

    Hostile senders are bounded (issue 13): an unfinished line is kept only up
    to ``max_line_bytes`` (checked before it is copied; beyond, the rest of the
    line is discarded as it arrives), at most ``tcp_max_connections`` are open,
    and a connection that sends nothing for ``tcp_idle_timeout`` is closed.
    """

    def __init__(self, ingestor: StatsdIngestor) -> None:
        self.ing = ingestor
        self.feed = ingestor.agg.feed
        self.max_line = ingestor.settings.max_line_bytes
        self.buf = bytearray()
        self.discarding = False  # inside a line that was already too long
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.last_read = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not an isinstance check: uvloop's (server.event_loop)
        # do not derive from asyncio's classes.
        self.transport = cast("asyncio.Transport", transport)
        self.peer = transport.get_extra_info("peername")
        ing = self.ing
        ing.tcp_connections_total += 1
        if len(ing.tcp_conns) >= ing.tcp_max_connections:
            ing.tcp_refused += 1
            ing.peer = self.peer
            ing._report("refused", "tcp_max_connections", b"")
            self.transport.abort()
            return
        ing.tcp_conns.add(self)
        self.last_read = time.monotonic()
        if ing.tcp_idle_timeout > 0:
            self.idle_timer = asyncio.get_running_loop().call_later(
                ing.tcp_idle_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        """Close after ``tcp_idle_timeout`` without a read (re-armed for the remainder)."""
        self.idle_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        left = self.last_read + self.ing.tcp_idle_timeout - time.monotonic()
        if left > 0:
            self.idle_timer = asyncio.get_running_loop().call_later(left, self._check_idle)
            return
        self.ing.tcp_idle_closed += 1
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        ing = self.ing
        ing.tcp_reads += 1
        ing.peer = self.peer
        self.last_read = time.monotonic()
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return
        if self.discarding:  # the rest of an over-long line ends here
            first = data.find(b"\n")
            data, self.discarding = data[first + 1 :], False
            cut -= first + 1
        elif self.buf:  # at most max_line_bytes held, plus this read
            cut += len(self.buf)
            data = bytes(self.buf) + data
            self.buf.clear()
        if cut >= 0:
            ing.tcp_lines += self.feed(data[:cut])
        self._hold(data[cut + 1 :])

    def _hold(self, rest: bytes) -> None:
        """Keep an incomplete line, unless it would go over the limit (checked first)."""
        if self.discarding or not rest:
            return
        if len(self.buf) + len(rest) > self.max_line:
            sample = bytes(self.buf[:200]) if self.buf else rest[:200]
            self.ing.agg.count_malformed(LINE_TOO_LONG, sample)
            self.buf.clear()
            self.discarding = True
            return
        self.buf += rest

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.ing.tcp_conns.discard(self)

    def _finish(self) -> None:
        """A last line without its newline still counts when the sender closes."""
        if self.buf and not self.discarding:
            self.ing.peer = self.peer
            self.ing.tcp_lines += self.feed(bytes(self.buf))
        self.buf.clear()


class StatsdIngestor:
    """Listens for StatsD over UDP and TCP and flushes aggregates to the store."""

    name = "statsd"

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)
        self.settings = settings_from(cfg)
        self.flush_interval = parse_duration(cfg["flush_interval"])
        self._log = RateLimitedLog(parse_duration(cfg["log_interval"]))
        self.agg = Aggregator(
            build_mapper(cfg["mappings"], parse_duration), self.settings, self._report
        )
        self.peer: Any = None
        self.udp_packets = 0
        self.udp_lines = 0
        self.tcp_reads = 0
        self.tcp_lines = 0
        self.tcp_connections_total = 0
        self.tcp_refused = 0
        self.tcp_idle_closed = 0
        self.tcp_max_connections: int = cfg["tcp_max_connections"]
        self.tcp_idle_timeout = parse_duration(cfg["tcp_idle_timeout"])
        self.flushes = 0
        self.flush_errors = 0
        self.refused_series: dict[str, int] = {}
        self.tcp_conns: set[_Tcp] = set()
        self.udp_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._udp: _Udp | None = None
        self._tcp: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sid_cache: dict[Labels, int] = {}
        self._last_ts = 0
        self._ctx: AgentContext | None = None
        self._config: Config | None = None
        self._collector: Collector | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, ctx: AgentContext) -> None:
        """Bind both listeners or fail: a taken port must stop a required plugin."""
        self._ctx = ctx
        self._config = ctx.config
        loop = asyncio.get_running_loop()
        try:
            if self.cfg["udp_listen"]:
                host, port = parse_listen(self.cfg["udp_listen"])
                try:
                    self._udp = _Udp(self, host, port, self.cfg["udp_receive_buffer_bytes"])
                except OSError as exc:
                    raise RuntimeError(
                        f"{SECTION}.udp_listen: cannot listen on UDP {host}:{port}: "
                        f"{exc.strerror or exc}"
                    ) from exc
                self.udp_address = self._udp.address
            if self.cfg["tcp_listen"]:
                host, port = parse_listen(self.cfg["tcp_listen"])
                try:
                    self._tcp = await loop.create_server(lambda: _Tcp(self), host, port)
                except OSError as exc:
                    raise RuntimeError(
                        f"{SECTION}.tcp_listen: cannot listen on TCP {host}:{port}: "
                        f"{exc.strerror or exc}"
                    ) from exc
                self.tcp_address = self._tcp.sockets[0].getsockname()[:2]
        except BaseException:
            await self._close_listeners()
            raise
        self._collector = _StatsdCollector(self)
        ctx.metrics.add_collector(self._collector)
        self._task = asyncio.create_task(self._flush_loop())
        log.info(
            "statsd listening",
            extra={"udp": self.cfg["udp_listen"], "tcp": self.cfg["tcp_listen"]},
        )

    async def stop(self) -> None:
        """Stop listening, then write what was aggregated since the last flush."""
        await self._close_listeners()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - shutting down; say so and go on
            log.error("statsd: final flush failed: %s", exc)
        if self._collector is not None and self._ctx is not None:
            with contextlib.suppress(KeyError):
                self._ctx.metrics.registry.unregister(self._collector)
            self._collector = None

    async def _close_listeners(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self.tcp_conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self._tcp.wait_closed()
            self._tcp = None

    # --- flushing -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - keep flushing; counted and logged
                self.flush_errors += 1
                if self._ctx is not None:
                    self._ctx.metrics.plugin_errors.labels("statsd", "flush").inc()
                if isinstance(exc, BackPressure):  # overload (a flood of writes), not a fault
                    log.warning("statsd: flush refused by the store: %s", exc)
                else:
                    log.error("statsd: flush failed: %s", exc)

    def _maybe_reload(self) -> None:
        """Follow a SIGHUP reload: new mappings and defaults; listeners need a restart."""
        ctx = self._ctx
        if ctx is None or ctx.config is self._config:
            return
        self._config = ctx.config
        cfg = ctx.plugin_config(SECTION)
        for key in ("udp_listen", "tcp_listen", "enabled"):
            if cfg.get(key) != self.cfg.get(key):
                log.warning("statsd: %s changed; it takes effect after a restart", key)
        self.settings = settings_from(cfg)
        self.flush_interval = parse_duration(cfg["flush_interval"])
        self.tcp_max_connections = cfg["tcp_max_connections"]
        self.tcp_idle_timeout = parse_duration(cfg["tcp_idle_timeout"])
        self._log.interval = parse_duration(cfg["log_interval"])
        self.agg.set_mapper(build_mapper(cfg["mappings"], parse_duration), self.settings)
        kept = {k: self.cfg[k] for k in ("udp_listen", "tcp_listen", "udp_receive_buffer_bytes")}
        self.cfg = {**dict(cfg), **kept}

    async def flush(self) -> int:
        """Write every aggregated series now, with one timestamp; return samples accepted.

        Also what the flush loop calls; tests and tools call it to avoid waiting.
        """
        if self._ctx is None:
            return 0
        async with self._lock:
            self._maybe_reload()
            live, expired = self.agg.collect()
            ts = max(int(time.time() * 1000), self._last_ts + 1)  # never a duplicate timestamp
            self._last_ts = ts
            self.flushes += 1
            for m in expired:
                for labels in m.series:
                    self._sid_cache.pop(labels, None)
            try:
                return await self._write(live, expired, ts)
            except UnknownSeries:
                # Retention deleted series we had cached: resolve everything again.
                self._forget_series()
                return await self._write(live, expired, ts)

    def _forget_series(self) -> None:
        self._sid_cache.clear()
        for m in self.agg.metrics.values():
            m.sids = None

    async def _write(
        self,
        live: list[Snapshot],
        expired: list[StatsdMetric],
        ts: int,
    ) -> int:
        assert self._ctx is not None
        unresolved = [m for m, _ in live if m.sids is None]
        if unresolved:
            await self._resolve(unresolved)
        sids: list[int] = []
        values: list[float] = []
        for m, vals in live:
            assert m.sids is not None
            for sid, v in zip(m.sids, vals, strict=True):
                if v is not None and sid:
                    sids.append(sid)
                    values.append(v)
            if 0 in m.sids:
                m.sids = None  # refused by a limit: ask again next time
        for m in expired:  # a staleness marker ends each series of an expired metric
            for sid in m.sids or ():
                if sid:
                    sids.append(sid)
                    values.append(STALE_NAN)
        if not sids:
            return 0
        result = await self._ctx.append(sids, [ts] * len(sids), values, source=SOURCE)
        return result.accepted

    async def _resolve(self, metrics: list[StatsdMetric]) -> None:
        """Series ids for metrics new since the last flush (a store call only for misses).

        A store that enforces cardinality limits may refuse some new series:
        its error carries every id (0 where refused). Those series are left
        out of this flush and counted; their metric asks again next flush, so
        it starts flowing once the limit allows it.
        """
        assert self._ctx is not None
        cache = self._sid_cache
        missing = list({labels for m in metrics for labels in m.series if labels not in cache})
        refused: set[Labels] = set()
        if missing:
            try:
                ids = await self._ctx.require_store().get_or_create_series(missing)
            except StorageError as exc:
                partial, why = getattr(exc, "ids", None), getattr(exc, "refused", None)
                if not isinstance(partial, list) or not isinstance(why, dict) or not why:
                    raise
                ids = partial
                for pos, reason in why.items():
                    refused.add(missing[pos])
                    self.refused_series[str(reason)] = self.refused_series.get(str(reason), 0) + 1
                self._report("refused", "series_limit", repr(missing[next(iter(why))]).encode())
            cache.update((lab, sid) for lab, sid in zip(missing, ids, strict=True) if sid)
        for m in metrics:
            m.sids = [cache.get(labels, 0) for labels in m.series]

    # --- reporting ------------------------------------------------------------------

    def _report(self, category: str, reason: str, line: bytes) -> None:
        peer = self.peer
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        self._log(category, reason, line, where)


class _StatsdCollector(Collector):
    """The ingestor's counters, read at scrape time (the hot path only bumps ints)."""

    def __init__(self, ing: StatsdIngestor) -> None:
        self.ing = ing

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        ing, agg = self.ing, self.ing.agg
        lines = CounterMetricFamily(
            "tsagent_statsd_lines",
            "Well-formed StatsD lines received, by transport (dropped ones included).",
            labels=["transport"],
        )
        lines.add_metric(["udp"], ing.udp_lines)
        lines.add_metric(["tcp"], ing.tcp_lines)
        yield lines
        packets = CounterMetricFamily(
            "tsagent_statsd_packets",
            "UDP datagrams and TCP reads received.",
            labels=["transport"],
        )
        packets.add_metric(["udp"], ing.udp_packets)
        packets.add_metric(["tcp"], ing.tcp_reads)
        yield packets
        bad = CounterMetricFamily(
            "tsagent_statsd_malformed_lines",
            "StatsD lines that could not be used, by reason (the rest of a packet is kept).",
            labels=["reason"],
        )
        for reason, n in sorted(agg.malformed.items()):
            bad.add_metric([reason], n)
        yield bad
        dropped = CounterMetricFamily(
            "tsagent_statsd_dropped_lines",
            "Well-formed lines discarded: by a drop rule, a metric type conflict, or max_metrics.",
            labels=["reason"],
        )
        for reason, n in sorted(agg.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily(
            "tsagent_statsd_dropped_tags",
            "DogStatsD tags dropped (no value, or a reserved __ name); their lines are kept.",
            value=agg.dropped_tags,
        )
        refused = CounterMetricFamily(
            "tsagent_statsd_refused_series",
            "New series the store refused (a cardinality limit), by reason; retried each flush.",
            labels=["reason"],
        )
        for reason, n in sorted(ing.refused_series.items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily(
            "tsagent_statsd_metrics", "Aggregated StatsD metrics held.", value=len(agg.metrics)
        )
        yield CounterMetricFamily(
            "tsagent_statsd_expired_metrics",
            "Metrics removed after ttl without updates (a staleness marker was written).",
            value=agg.expired,
        )
        yield GaugeMetricFamily(
            "tsagent_statsd_tcp_connections", "Open TCP connections.", value=len(ing.tcp_conns)
        )
        closed = CounterMetricFamily(
            "tsagent_statsd_tcp_closed_connections",
            "TCP connections closed by the listener: over tcp_max_connections, or idle.",
            labels=["reason"],
        )
        closed.add_metric(["max_connections"], ing.tcp_refused)
        closed.add_metric(["idle"], ing.tcp_idle_closed)
        yield closed
        yield CounterMetricFamily("tsagent_statsd_flushes", "Flushes done.", value=ing.flushes)
