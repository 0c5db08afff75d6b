"""Running queries for the HTTP API and the Python API alike: limits, cache, time zones.

:class:`QueryService` wraps :class:`agent.query.Engine` with what a server
needs around it and what both front ends must agree on: the timeout, the
sample limit, the result cache, the parsing of times and durations, and the
local-time rules of :mod:`agent.query.timezone`. The HTTP handlers
(:mod:`agent.web.api`) and ``Agent.query``/``Agent.query_range`` are thin layers
over it, so a Python caller gets exactly the ``data`` the API would send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agent.query import ast
from agent.query.answer import QueryAnswer, attach_sent, encode_data, result_points
from agent.query.cache import CacheEntry, CacheKey, QueryCache, dependencies, signature
from agent.query.engine import MAX_POINTS, Engine
from agent.query.errors import BadDataError, ExecutionError
from agent.query.inline import InlineBridge, InlineBudget, InlineRollups, TooBigInline, run_inline
from agent.query.limits import (
    DEFAULT_PARSE_LIMITS,
    TOO_MANY_SAMPLES,
    ParseLimits,
    QueryBudget,
    QueryCanceled,
    QueryTimeout,
    check_query_text,
)
from agent.query.parser import parse, parse_duration_ms
from agent.query.runner import LoopBridge, QueryRunner, QueryUnavailable, RollupBridge
from agent.query.timezone import (
    DstRule,
    calendar_steps,
    convert_timezone,
    parse_time,
    resolve_local,
    resolve_zone,
    to_ms,
)
from agent.query.values import (
    Matrix,
    Result,
)

if TYPE_CHECKING:
    from agent.config import Config
    from agent.query.queryable import Queryable
    from agent.query.rollup_select import RollupSource

CacheMode = Literal["use", "refresh", "off"]
"""``use``: read and store; ``refresh`` (``Cache-Control: no-cache``): skip the
lookup, store the fresh answer; ``off`` (``no-store``): neither."""

TimeLike = datetime | str | int | float
StepLike = timedelta | str | int | float


@dataclass(frozen=True)
class QueryOptions:
    """The ``query`` config section, typed. Defaults are Prometheus's."""

    lookback_ms: int = 300_000
    timeout_s: float = 120.0
    max_samples: int = 50_000_000
    default_timezone: str = ""  # empty: the machine's zone (tzlocal)
    subquery_step_ms: int = 60_000
    cache_enabled: bool = True
    cache_max_bytes: int = 128 * 1024 * 1024
    cache_ttl_s: float = 300.0
    max_concurrency: int = 20
    max_queued: int = 200
    cpu_workers: int = 0  # 0: one fewer than the CPU cores, at least one
    max_memory_bytes: int = 1024 * 1024 * 1024
    parse_limits: ParseLimits = DEFAULT_PARSE_LIMITS

    @classmethod
    def from_config(cls, config: Config) -> QueryOptions:
        """The ``query`` section, read through its typed view (durations in seconds)."""
        q = config.typed("query")
        return cls(
            lookback_ms=int(q.lookback_delta * 1000),
            timeout_s=q.timeout,
            max_samples=q.max_samples,
            default_timezone=q.default_timezone,
            cache_enabled=q.cache.enabled,
            cache_max_bytes=q.cache.max_bytes,
            cache_ttl_s=q.cache.ttl,
            max_concurrency=q.max_concurrency,
            max_queued=q.max_queued,
            cpu_workers=q.cpu_workers,
            max_memory_bytes=q.max_memory_bytes,
            parse_limits=ParseLimits(
                max_length=q.max_query_length,
                max_depth=q.max_query_depth,
                max_binary_ops=q.max_query_operators,
            ),
        )


@lru_cache(maxsize=1024)
def parsed(expr: str) -> tuple[ast.Node, str]:
    """The tree and cache signature of a query text, remembered per text.

    Dashboards repeat the same texts, and the trees are immutable, so a cache
    hit costs neither parsing nor normalising. Parse errors are not remembered.
    """
    node = parse(expr)
    return node, signature(node)


@lru_cache(maxsize=1024)
def _checked(expr: str, limits: ParseLimits) -> tuple[ast.Node, str]:
    """:func:`parsed` after :func:`check_query_text`; a text that passed is not scanned again."""
    check_query_text(expr, limits)
    return parsed(expr)


# --- parameters shared by both front ends --------------------------------------------------


def parse_duration_param(text: str) -> int:
    """A ``step``/``timeout``-style duration in ms: float seconds or a PromQL duration."""
    s = text.strip()
    try:
        seconds = float(s)
    except ValueError:
        return parse_duration_ms(s)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise BadDataError(f"cannot parse {text!r} to a valid duration")
    ms = seconds * 1000
    if abs(ms) > 2**63 / 1e6:
        raise BadDataError(f"cannot parse {text!r} to a valid duration. It overflows int64")
    return round(ms)


def time_ms(value: TimeLike | None, tz: tzinfo | None, rule: DstRule) -> int:
    """A Python API time: aware datetime, naive datetime (local in ``tz``), API string,
    or Unix seconds as a number (the HTTP API's unit, not the store's milliseconds)."""
    if value is None:
        return time.time_ns() // 1_000_000
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return to_ms(value)
        if tz is None:
            raise BadDataError("a naive datetime needs a time zone (tz=...)")
        return resolve_local(value, tz, rule)
    if isinstance(value, str):
        try:
            return parse_time(value, tz, rule)
        except ValueError as exc:
            raise BadDataError(f"cannot parse {value!r} to a valid timestamp: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"unsupported time value {value!r}")
    return round(value * 1000)


def step_ms(value: StepLike) -> int:
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    if isinstance(value, str):
        return parse_duration_param(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"unsupported step value {value!r}")
    return round(value * 1000)


# --- the service ---------------------------------------------------------------------------


class QueryService:
    """Evaluates queries against ``queryable`` with limits, timeout and the result cache."""

    def __init__(
        self,
        queryable: Queryable,
        options: QueryOptions | None = None,
        *,
        name_of: Callable[[int], str] | None = None,
    ) -> None:
        self.queryable = queryable
        self.options = options or QueryOptions()
        self.cache = QueryCache(name_of=name_of)
        self.runner = QueryRunner(
            self.options.max_concurrency, self.options.max_queued, self.options.cpu_workers
        )
        # Set by Store.start_rollups: *_over_time may then read rollups (see rollup_select).
        self.rollups: RollupSource | None = None
        # Try each query on the event loop first (agent.query.inline); off: always a worker.
        self.inline = True
        self.ran_inline = 0  # queries answered on the loop / in a worker, for tests and stats
        self.ran_in_worker = 0
        self.configure(self.options)

    def configure(self, options: QueryOptions) -> None:
        """Apply (re)loaded settings; cached results survive unless caching was turned off."""
        self.options = options
        self.runner.configure(options.max_concurrency, options.max_queued, options.cpu_workers)
        self.cache.configure(
            enabled=options.cache_enabled,
            max_bytes=options.cache_max_bytes,
            ttl_s=options.cache_ttl_s,
        )

    def zone(self, name: str | None = None) -> tzinfo:
        """``name``, else ``query.default_timezone``, else the machine's zone."""
        return resolve_zone(name, self.options.default_timezone)

    def cache_query(self, query: str, ttl: float | str | timedelta | None) -> str:
        """Set the cache TTL of one query (any spelling); returns its normalised signature.

        ``ttl`` in seconds (or a duration string / timedelta); ``0`` never
        caches the query, ``None`` returns it to the default policy. A query
        with a TTL of its own is cached even when ``query.cache.enabled`` is off.
        """
        sig = parsed(query)[1]
        seconds: float | None
        if ttl is None:
            seconds = None
        elif isinstance(ttl, timedelta):
            seconds = ttl.total_seconds()
        elif isinstance(ttl, str):
            seconds = parse_duration_param(ttl) / 1000
        else:
            seconds = float(ttl)
        self.cache.pin(sig, seconds)
        return sig

    # --- evaluation ---------------------------------------------------------------------

    async def instant(
        self,
        expr: str,
        time_ms_: int,
        *,
        timeout_s: float | None = None,
        lookback_ms: int | None = None,
        cache: CacheMode = "use",
        resolution_ms: int = 0,
        encode_json: bool = False,
        defer_store: bool = False,
    ) -> QueryAnswer:
        """An instant query; ``resolution_ms`` answers ``*_over_time`` from that rollup.

        ``encode_json``: encode the API ``data`` in the worker thread too (the HTTP
        API always sends it), so a large result is not encoded on the event loop.
        ``defer_store``: the result goes into the cache when the caller calls
        :meth:`QueryAnswer.settle` (which it must), not before returning: the
        HTTP API sends its answer first.
        """
        node, sig = self.parse(expr)
        lookback = lookback_ms or self.options.lookback_ms
        key = CacheKey(sig, time_ms_, time_ms_, 0, "", lookback)

        async def run(engine: Engine) -> Result:
            return await engine.instant(expr, time_ms_, node=node)

        return await self._run(
            node, key, run, timeout_s, lookback, cache, resolution_ms, encode_json, defer_store
        )

    async def range(
        self,
        expr: str,
        start_ms: int,
        end_ms: int,
        step_ms_: int,
        *,
        align_tz: tzinfo | None = None,
        timeout_s: float | None = None,
        lookback_ms: int | None = None,
        cache: CacheMode = "use",
        resolution_ms: int = 0,
        encode_json: bool = False,
        defer_store: bool = False,
    ) -> QueryAnswer:
        """A range query; with ``align_tz`` its steps follow that zone's calendar.

        ``resolution_ms`` (a configured rollup resolution) answers ``*_over_time``
        from that rollup even where the result is only approximate. See
        :meth:`instant` for ``encode_json`` and ``defer_store``.
        """
        if step_ms_ <= 0:
            raise BadDataError(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if end_ms < start_ms:
            raise BadDataError("end timestamp must not be before start time")
        times: np.ndarray | None = None
        align = ""
        if align_tz is not None:
            times = calendar_steps(start_ms, end_ms, step_ms_, align_tz, MAX_POINTS)
            align = f"calendar:{getattr(align_tz, 'key', align_tz)}"
        elif (end_ms - start_ms) // step_ms_ > MAX_POINTS:
            raise BadDataError(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        node, sig = self.parse(expr)
        lookback = lookback_ms or self.options.lookback_ms
        key = CacheKey(sig, start_ms, end_ms, step_ms_, align, lookback)

        async def run(engine: Engine) -> Result:
            if times is not None and len(times) == 0:
                return Matrix([])
            return await engine.range(expr, start_ms, end_ms, step_ms_, times=times, node=node)

        return await self._run(
            node, key, run, timeout_s, lookback, cache, resolution_ms, encode_json, defer_store
        )

    async def _run(
        self,
        node: ast.Node,
        key: CacheKey,
        run: Callable[[Engine], Any],
        timeout_s: float | None,
        lookback: int,
        mode: CacheMode,
        resolution_ms: int = 0,
        encode_json: bool = False,
        defer_store: bool = False,
    ) -> QueryAnswer:
        if resolution_ms:
            self.check_resolution(resolution_ms)
            # Approximate answers change when a pass rewrites buckets, which no write
            # listener reports: never cache them.
            mode = "off"
        cache = self.cache
        ttl = cache.ttl_for(key.signature) if mode != "off" else None
        if ttl is not None and mode == "use":
            entry = cache.get(key)
            if entry is not None:
                return QueryAnswer(entry.result, "hit", entry, cache)
        limit = self.options.timeout_s
        timeout = limit if timeout_s is None or timeout_s <= 0 else min(timeout_s, limit)
        opts = self.options
        max_samples = opts.max_samples

        async def work(engine: Engine) -> tuple[Result, bytes | None]:
            """Evaluate, check the result's size, encode it if asked."""
            result: Result = await run(engine)
            if result_points(result) > max_samples:
                raise ExecutionError(TOO_MANY_SAMPLES)
            return result, encode_data(result) if encode_json else None

        def engine(
            queryable: Queryable, budget: QueryBudget, rollups: RollupSource | None
        ) -> Engine:
            return Engine(
                queryable,
                lookback_ms=lookback,
                subquery_step_ms=opts.subquery_step_ms,
                rollups=rollups,
                rollup_resolution_ms=resolution_ms,
                budget=budget,
            )

        token = cache.begin()
        finished = False  # cache.finish() called, or left to store()
        try:
            done = None
            if self.inline and not resolution_ms:
                # Small queries answer on the loop; one that proves big starts over in a worker.
                small = InlineBudget(timeout, max_samples, opts.max_memory_bytes)
                shy = None if self.rollups is None else InlineRollups(self.rollups)
                try:
                    with self.runner.watching(small):
                        done = await run_inline(
                            work(engine(InlineBridge(self.queryable, small), small, shy)), small
                        )
                    self.ran_inline += 1
                except TooBigInline:
                    pass
            if done is None:
                budget = QueryBudget(timeout, max_samples, opts.max_memory_bytes)
                loop = asyncio.get_running_loop()
                bridged = None if self.rollups is None else RollupBridge(self.rollups, loop)
                big = engine(LoopBridge(self.queryable, loop, budget), budget, bridged)
                done = await self.runner.run(lambda: work(big), budget)
                self.ran_in_worker += 1
            result, body = done
            state = "off" if ttl is None else ("miss" if mode == "use" else "bypass")

            def store() -> CacheEntry | None:
                try:
                    if ttl is None:
                        return None
                    deps = dependencies(
                        node, key.start, key.end, lookback, self.options.subquery_step_ms
                    )
                    encode = encode_data if body is None else (lambda _r: body)
                    return cache.put(key, result, deps, token, ttl, encode)
                finally:
                    cache.finish()

            finished = True  # store() finishes, now or when the answer is settled
            if defer_store:
                settle = lambda: attach_sent(cache, store(), body)  # noqa: E731
                return QueryAnswer(result, state, None, cache, body, settle)
            return QueryAnswer(result, state, store(), cache, body)
        finally:
            if not finished:
                cache.finish()

    def parse(self, expr: str) -> tuple[ast.Node, str]:
        """Tree and signature of ``expr``, after the text limits (400 naming the limit)."""
        return _checked(expr, self.options.parse_limits)

    def close(self) -> None:
        """Stop the worker threads (running evaluations end at their next budget check)."""
        self.runner.close()

    def check_resolution(self, resolution_ms: int) -> None:
        """Refuse a ``resolution`` that is not a configured rollup (400 ``bad_data``)."""
        if self.rollups is None:
            raise BadDataError("resolution: rollups are not enabled (storage.rollups.enabled)")
        if resolution_ms not in self.rollups.resolutions:
            from agent.query.rollup_select import format_resolution

            known = ", ".join(format_resolution(r) for r in self.rollups.resolutions)
            raise BadDataError(
                f"resolution: {format_resolution(resolution_ms)} is not a rollup resolution"
                f" (configured: {known})"
            )

    # --- the Python API -------------------------------------------------------------------

    async def query(
        self,
        expr: str,
        time: TimeLike | None = None,
        *,
        tz: str | None = None,
        dst: str = "reject",
        timeout: float | None = None,
        typed: bool = False,
        cache: CacheMode = "use",
    ) -> dict[str, Any] | Result:
        """Instant query; see ``Agent.query``."""
        rule = _rule(dst)
        zone = self.zone(tz)
        answer = await self.instant(expr, time_ms(time, zone, rule), timeout_s=timeout, cache=cache)
        return answer.result if typed else answer.data()

    async def query_range(
        self,
        expr: str,
        start: TimeLike,
        end: TimeLike,
        step: StepLike,
        *,
        tz: str | None = None,
        dst: str = "reject",
        align: str | None = None,
        timeout: float | None = None,
        typed: bool = False,
        cache: CacheMode = "use",
    ) -> dict[str, Any] | Result:
        """Range query; see ``Agent.query_range``."""
        rule = _rule(dst)
        zone = self.zone(tz)
        if align not in (None, "", "calendar"):
            raise BadDataError(f"align must be 'calendar' or absent, not {align!r}")
        answer = await self.range(
            expr,
            time_ms(start, zone, rule),
            time_ms(end, zone, rule),
            step_ms(step),
            align_tz=zone if align == "calendar" else None,
            timeout_s=timeout,
            cache=cache,
        )
        return answer.result if typed else answer.data()


def _rule(text: str) -> DstRule:
    try:
        return DstRule(text or "reject")
    except ValueError:
        raise BadDataError(f"dst must be one of reject, earlier, later; not {text!r}") from None


__all__ = [
    "CacheMode",
    "QueryAnswer",
    "QueryCanceled",
    "QueryOptions",
    "QueryService",
    "QueryTimeout",
    "QueryUnavailable",
    "convert_timezone",
    "parse_duration_param",
]
