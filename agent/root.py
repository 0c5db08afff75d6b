"""The composition root: one object that owns the running parts and is the Python API.

``Agent`` plays the part datasette's ``Datasette`` plays. It builds, once and
in dependency order, the store, the query service over it, the stream hub,
the rule engine, the alert dispatcher and the export hub, and it is what a
user's script calls: ``agent.query``, ``agent.export_csv``,
``agent.join_series``, ``agent.stream_updates``, ``agent.define_alert`` and
the rest. The store keeps only what is storage (appends, reads, versions,
compression, retention, cardinality); nothing below this module imports it,
so data flows one way: ingestors -> store -> query -> exporters/notifiers.

The daemon builds one ``Agent`` per application (``agent.web.app``) and plugins
see it through ``AgentContext``, a read-only view.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.alerting.engine import RuleEngine
from agent.dataio import export as export_mod
from agent.dataio import importer, join, stream
from agent.model import Matcher, metric_name
from agent.query.service import CacheMode, QueryOptions, QueryService, StepLike, TimeLike
from agent.query.timezone import convert_timezone as _convert_timezone
from agent.storage import StorageOptions, Store
from agent.storage.codec import Codec

if TYPE_CHECKING:
    from agent.alerting.dispatch import Dispatcher
    from agent.alerting.engine import Callback, Clock, Rule
    from agent.analytics.anomaly import AnomalySeries
    from agent.forward.export_log import ExportHub
    from agent.query.values import Result
    from agent.storage.backfill import OnError

log = logging.getLogger("tsagent.agent")


class Agent:
    """The store and everything built on it, and the Python API over them.

    Build one with :meth:`open` (a database path) or around an open
    :class:`~agent.storage.Store`; ``async with`` closes what it owns. The
    daemon's application owns one (see :mod:`agent.web.app`); a script may use
    one directly without any HTTP server::

        async with await open_agent("metrics.db") as agent:  # agent.library
            data = await agent.query("sum(rate(http_requests_total[5m]))")
    """

    def __init__(
        self,
        store: Store,
        *,
        query_options: QueryOptions | None = None,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        index_labels = store.labels
        self.queries = QueryService(
            store, query_options, name_of=lambda sid: metric_name(index_labels(sid))
        )
        store.add_write_listener(self.queries.cache.on_write)
        self.queries.rollups = store.rollups
        self.streams = stream.StreamHub(store)
        # Set by the daemon's lifecycle (agent.web.app) or, for library use, on first use.
        self.rules: RuleEngine | None = None
        self.dispatcher: Dispatcher | None = None
        self.export_hub: ExportHub | None = None
        self._owns_store = owns_store
        self._owns_rules = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        options: StorageOptions | None = None,
        codecs: Mapping[str, Codec] | Sequence[Codec] | None = None,
        *,
        query_options: QueryOptions | None = None,
    ) -> Agent:
        """Open (or create) the database at ``path`` and build the agent around it.

        ``codecs``: the block codecs the store may use (``raw`` is always
        there). :func:`agent.library.open_agent` passes every codec the
        installed plugins register, which is what a script usually wants.
        """
        if codecs is None:
            codecs = {}
        elif not isinstance(codecs, Mapping):
            codecs = {c.name: c for c in codecs}
        options = options or StorageOptions(
            default_codec="zstd-xor" if "zstd-xor" in codecs else "raw"
        )
        store = await Store.open(path, options, codecs)
        return cls(store, query_options=query_options, owns_store=True)

    async def close(self) -> None:
        """Stop what this agent started itself; close the store if it opened it."""
        if self._owns_rules and self.rules is not None:
            await self.rules.stop()
            self.rules = None
        self.queries.close()  # worker threads; running evaluations stop at their next check
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- rollups ---------------------------------------------------------------------------

    async def start_rollups(self, options: Any, *, background: bool = True) -> Any:
        """Start the store's rollups and let PromQL answer ``*_over_time`` from them."""
        manager = await self.store.start_rollups(options, background=background)
        self.queries.rollups = manager
        return manager

    # --- PromQL ------------------------------------------------------------------------------

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
        """Evaluate PromQL ``expr`` at ``time`` (default now), as ``/api/v1/query`` would.

        ``time``: an aware ``datetime``; a naive one (local in ``tz``); an API
        string (RFC 3339, Unix seconds, or a local date-time with ``tz``); or
        a number of Unix **seconds**, the HTTP API's unit. ``tz`` defaults to
        ``query.default_timezone``, else the machine's zone; ``dst``
        (``reject``/``earlier``/``later``) settles DST-ambiguous local times.
        Returns the API's ``data`` dict (plain Python values), or with
        ``typed=True`` the engine's result objects (``Vector``, ``Matrix`` with
        numpy arrays, ``Scalar``, ``String``; warnings in ``.annotations``).
        Raises :class:`agent.query.QueryError` subclasses (``error_type`` is
        the API's). Results are cached; ``cache="refresh"``/``"off"`` as
        ``Cache-Control: no-cache``/``no-store``.
        """
        return await self.queries.query(
            expr, time, tz=tz, dst=dst, timeout=timeout, typed=typed, cache=cache
        )

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
        """Evaluate ``expr`` from ``start`` to ``end`` every ``step``, as ``/api/v1/query_range``.

        Times as in :meth:`query`; ``step`` a ``timedelta``, a duration string
        (``"5m"``) or seconds. ``align="calendar"`` evaluates at local
        calendar boundaries of ``tz`` (see :func:`agent.query.timezone.calendar_steps`).
        """
        return await self.queries.query_range(
            expr,
            start,
            end,
            step,
            tz=tz,
            dst=dst,
            align=align,
            timeout=timeout,
            typed=typed,
            cache=cache,
        )

    def cache_query(self, query_signature: str, ttl: float | str | timedelta | None) -> str:
        """Give one query (any spelling of it) its own cache TTL; returns the signature.

        ``ttl`` seconds, a duration string or a timedelta: ``0`` never caches
        it, ``None`` restores the default policy. Such a query is cached even
        with ``query.cache.enabled: false``.
        """
        return self.queries.cache_query(query_signature, ttl)

    @staticmethod
    def convert_timezone(query_result: Any, target_tz: str | tzinfo) -> dict[str, Any]:
        """A query result as a ``data`` dict with local ISO 8601 times beside the Unix ones."""
        return _convert_timezone(query_result, target_tz)

    # --- export, import, joins and streams ----------------------------------------------------

    def export_csv(
        self,
        series_ids: Sequence[int] | None = None,
        start: int | datetime | str | None = None,
        end: int | datetime | str | None = None,
        tags_filter: Any = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """CSV export as an async iterator of text pieces (``agent.dataio.export.export_csv``).

        ``start``/``end`` in ms (or aware datetimes / RFC 3339); ``tags_filter``
        matchers, ``{label: value}`` or selector strings. The output imports back
        through :meth:`import_csv` unchanged (staleness markers are left out).
        """
        return export_mod.export_csv(self.store, series_ids, start, end, tags_filter, **options)

    def export_jsonl(
        self,
        series_ids: Sequence[int] | None = None,
        start: int | datetime | str | None = None,
        end: int | datetime | str | None = None,
        tags_filter: Any = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """JSON-lines export (VictoriaMetrics' ``/api/v1/export`` format), as text pieces."""
        return export_mod.export_jsonl(self.store, series_ids, start, end, tags_filter, **options)

    async def import_csv(
        self,
        file_path: str | Path,
        mapping_config: Any,
        *,
        on_error: OnError = "skip",
        **options: Any,
    ) -> importer.ImportReport:
        """Backfill a CSV file; see :func:`agent.dataio.importer.import_csv`."""
        return await importer.import_csv(
            self.store, file_path, mapping_config, on_error=on_error, **options
        )

    def stream_updates(
        self,
        series: int | Sequence[int] | None = None,
        matchers: Any = None,
        *,
        max_buffer: int = stream.DEFAULT_BUFFER,
    ) -> stream.Subscription:
        """Samples as they are committed, for ids and/or matchers; see :mod:`agent.dataio.stream`.

        ``async with agent.stream_updates(matchers='cpu') as s: async for x in s: ...``
        yields ``StreamedSample``s and, when the consumer fell more than
        ``max_buffer`` samples behind, ``Lagged(dropped)`` notices.
        """
        return stream.stream_updates(self.streams, series, matchers, max_buffer=max_buffer)

    async def join_series(
        self,
        primary_id: int,
        other_ids: Sequence[int],
        join_type: str | Callable[..., Any] = "inner",
        **options: Any,
    ) -> join.JoinResult:
        """Align series by timestamp into rows; see :func:`agent.dataio.join.join_series`.

        ``join_type`` ``inner``/``left``/``outer``/``asof`` or a callable;
        options ``start``, ``end``, ``tolerance``, ``step`` (all ms) and ``fill``.
        """
        return await join.join_series(self.store, primary_id, other_ids, join_type, **options)

    # --- alerting and analytics -----------------------------------------------------------------

    async def rule_engine(self, *, clock: Clock | None = None) -> RuleEngine:
        """The rule engine: the daemon's, or for library use one started on first call.

        A library agent's engine restores its saved alert state, runs on its
        schedule, and is stopped by :meth:`close`.
        """
        if self.rules is None:
            engine = RuleEngine(self.store, clock=clock, dispatcher=lambda: self.dispatcher)
            await engine.start()
            self.rules = engine
            self._owns_rules = True
        return self.rules

    async def define_alert(
        self,
        rule_id: str,
        series_id: int | str,
        threshold: float | str | None = None,
        condition: str = ">",
        callback: Callback | str | None = None,
        **options: Any,
    ) -> Rule:
        """Define (or replace) a Python-side alert rule; see :meth:`RuleEngine.define_alert`."""
        engine = await self.rule_engine()
        return engine.define_alert(rule_id, series_id, threshold, condition, callback, **options)

    async def detect_anomalies(
        self,
        selector_or_series: str | int | Sequence[Matcher],
        start: TimeLike,
        end: TimeLike,
        **options: Any,
    ) -> list[AnomalySeries]:
        """Score samples against their baseline (``agent.analytics.anomaly``)."""
        from agent.analytics.anomaly import detect_anomalies

        return await detect_anomalies(
            self.store, selector_or_series, start, end, queries=self.queries, **options
        )

    # --- storage, as one entry point -----------------------------------------------------------

    async def record_write(self, *args: Any, **kwargs: Any) -> Any:
        """A versioned single write; see :meth:`agent.storage.Store.record_write`."""
        return await self.store.record_write(*args, **kwargs)

    async def apply_compression(self, *args: Any, **kwargs: Any) -> Any:
        """Re-encode a series' segments; see :meth:`agent.storage.Store.apply_compression`."""
        return await self.store.apply_compression(*args, **kwargs)

    async def limit_cardinality(self, *args: Any, **kwargs: Any) -> Any:
        """Cap new values of a label; see :meth:`agent.storage.Store.limit_cardinality`."""
        return await self.store.limit_cardinality(*args, **kwargs)
