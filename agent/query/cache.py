"""A bounded, write-invalidated cache of query results.

Dashboards ask the same questions over and over (every panel refresh, every
viewer), and an answer over past data does not change until data inside it
does. So results are kept, keyed by the *normalised* query text (what
``promql-parser`` prints back, so spacing and redundant syntax do not
matter), the evaluation range and step, the calendar alignment and the
lookback delta. An entry dies by the first of:

* its TTL (``query.cache.ttl``, or a per-signature TTL set with
  :meth:`QueryCache.pin`, the Python API's ``cache_query``);
* a write that may change it: the store calls :meth:`QueryCache.on_write`
  after every commit with the written series and their time span; an entry
  remembers which metric names its selectors can read (or "any", for a
  selector without a fixed name) and the time span they read, and is dropped
  when both overlap. The check per batch is one numpy lookup of the series'
  metric-name codes, so ingestion does not slow down with a full cache;
* memory: past ``max_bytes`` (estimated) the least recently used entries go.

A query running while a write lands must not store a stale answer: each
query takes a token (the write sequence number) when it starts, and its
result is only stored if no overlapping write happened since.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from agent.model import METRIC_NAME, MatchOp
from agent.query import ast
from agent.query.values import Annotations, Matrix, Result, Scalar, String, Vector

T_MIN = -(2**63)
T_MAX = 2**63 - 1
_RECENT_WRITES = 4096
LARGE_FRACTION = 8  # results above max_bytes / 8 are kept as encoded JSON only


def signature(node: ast.Node) -> str:
    """The normalised text of a parsed query: its tree without source positions.

    Two spellings of one query (spacing, ``foo`` vs ``foo{}``, redundant
    parentheses kept) share a signature because the parser already reduced
    them to the same tree; positions, which only label annotations, are dropped.
    """
    return repr(_strip_positions(node))


def _strip_positions(node: ast.Node) -> ast.Node:
    changes: dict[str, object] = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if f.name == "pos":
            changes["pos"] = -1
        elif isinstance(value, ast.Node):
            changes[f.name] = _strip_positions(value)
        elif isinstance(value, tuple) and any(isinstance(v, ast.Node) for v in value):
            changes[f.name] = tuple(
                _strip_positions(v) if isinstance(v, ast.Node) else v for v in value
            )
    return dataclasses.replace(node, **changes)


@dataclass(frozen=True, slots=True)
class CacheKey:
    signature: str
    start: int
    end: int
    step: int  # 0 for instant queries
    align: str = ""  # "" or "calendar:<zone>" (the steps then depend on the zone)
    lookback: int = 300_000


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a result was computed from: metric names (None: any) and the time span read."""

    names: frozenset[str] | None
    lo: int
    hi: int

    def touched_by(self, names: set[str] | None, min_t: int, max_t: int) -> bool:
        if max_t < self.lo or min_t > self.hi:
            return False
        if names is None or self.names is None:
            return True
        return not self.names.isdisjoint(names)


def dependencies(
    node: ast.Node, start: int, end: int, lookback_ms: int, subquery_step_ms: int
) -> Dependencies:
    """The metric names and time span that evaluating ``node`` over [start, end] can read.

    Evaluation times are tracked as an interval relative to the query's steps:
    a subquery widens it by its range and shifts it by its offset, a selector
    then reads its lookback (or range) before that. An ``@`` modifier pins
    times absolutely; such a query is conservatively taken to read all time.

    The walk of the tree is remembered per tree (parsed trees are shared, one
    per query text): it cost as much as evaluating ``count(up)``.
    """
    key = (id(node), lookback_ms, subquery_step_ms)
    known = _SPANS.get(key)
    if known is None or known[0] is not node:
        if len(_SPANS) >= _SPANS_MAX:
            _SPANS.clear()
        known = _SPANS[key] = (node, *_relative_span(node, lookback_ms, subquery_step_ms))
    _node, names, lo, hi, pinned = known
    span_lo, span_hi = (T_MIN, T_MAX) if pinned else (start + lo - 1, end + hi + 1)
    return Dependencies(names, span_lo, span_hi)


_SPANS: dict[tuple[int, int, int], tuple[ast.Node, frozenset[str] | None, int, int, bool]] = {}
_SPANS_MAX = 1024  # trees remembered (the parser keeps as many)


def _relative_span(
    node: ast.Node, lookback_ms: int, subquery_step_ms: int
) -> tuple[frozenset[str] | None, int, int, bool]:
    """:func:`dependencies` relative to the steps: (names or None, lo, hi, pinned)."""
    names: set[str] = set()
    wildcard = False
    lo, hi = 0, 0
    pinned = False

    def visit(n: ast.Node, a: int, b: int) -> None:
        nonlocal wildcard, lo, hi, pinned
        if isinstance(n, ast.MatrixSelector):
            select(n.selector, a, b, n.range_ms)
            return
        if isinstance(n, ast.VectorSelector):
            select(n, a, b, lookback_ms)
            return
        if isinstance(n, ast.Subquery):
            if n.at is not None:
                pinned = True
            visit(n.expr, a - n.offset_ms - n.range_ms - (n.step_ms or subquery_step_ms), b)
            return
        for f in dataclasses.fields(n):
            value = getattr(n, f.name)
            if isinstance(value, ast.Node):
                visit(value, a, b)
            elif isinstance(value, tuple):
                for item in value:
                    if isinstance(item, ast.Node):
                        visit(item, a, b)

    def select(sel: ast.VectorSelector, a: int, b: int, window: int) -> None:
        nonlocal wildcard, lo, hi, pinned
        if sel.at is not None:
            pinned = True
        lo = min(lo, a - sel.offset_ms - window)
        hi = max(hi, b - sel.offset_ms)
        name = sel.name
        for m in sel.matchers:
            if m.name == METRIC_NAME and m.op is MatchOp.EQ:
                name = m.value
        if name:
            names.add(name)
        else:
            wildcard = True

    visit(node, 0, 0)
    # Negative offsets make hi > 0: reading after the step is covered the same way.
    return (None if wildcard else frozenset(names)), lo, hi, pinned


_LABELS = attrgetter("labels")


def result_size(result: Result) -> int:
    """Bytes a result keeps alive: arrays exactly, Python objects estimated.

    Label pairs are shared with the store's index (a result only adds its own
    tuple of them); each series adds its object and two array headers.
    """
    if isinstance(result, Matrix):
        cols = result.columns
        if cols is not None:  # the Series the flat form stands for, as if made
            size = 200 + cols.t.nbytes + cols.v.nbytes
            return size + sum(400 + 8 * len(lab) for lab in cols.labels)
        return 200 + sum(
            400 + 8 * len(s.labels) + s.timestamps.nbytes + s.values.nbytes for s in result.series
        )
    if isinstance(result, Vector):
        samples = result.samples  # map in C: a 52,000-sample vector is put on the event loop
        return 200 + 150 * len(samples) + 8 * sum(map(len, map(_LABELS, samples)))
    if isinstance(result, String):
        return 200 + len(result.v)
    assert isinstance(result, Scalar)
    return 200


def _freeze(result: Result) -> None:
    """Cached arrays are shared between callers: make accidental mutation an error."""
    if isinstance(result, Matrix):
        cols = result.columns
        if cols is not None:  # Series made later are views of these: read-only too
            cols.t.flags.writeable = False
            cols.v.flags.writeable = False
            return
        for s in result.series:
            s.timestamps.flags.writeable = False
            s.values.flags.writeable = False


@dataclass
class CacheEntry:
    """A cached answer: the result objects, its encoded API ``data``, or both.

    A large result is kept as its encoded JSON only (``result`` None): that is
    what a repeated HTTP request sends, and it is smaller than the objects.
    """

    key: CacheKey
    result: Result | None
    deps: Dependencies
    stored_at: float
    expires_at: float
    size: int
    data_json: bytes | None = None
    annotations: Annotations | None = None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    bytes: int = 0


@dataclass
class QueryCache:
    """LRU-by-bytes result cache; see the module docstring for the rules.

    ``name_of(series_id)`` gives a series' metric name (the store's index);
    names are remembered per series id in a numpy array, so invalidating for
    a written batch costs one vectorised lookup.
    """

    max_bytes: int = 128 * 1024 * 1024
    ttl_s: float = 300.0
    enabled: bool = True
    name_of: Callable[[int], str] | None = None
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._by_name: dict[str, set[CacheKey]] = {}
        self._wildcard: set[CacheKey] = set()
        self._pins: dict[str, float] = {}
        self._codes = np.full(0, -1, dtype=np.int32)
        self._names: list[str] = []
        self._code_of: dict[str, int] = {}
        self._write_seq = 0
        self._inflight = 0
        self._recent: deque[tuple[int, set[str] | None, int, int]] = deque(maxlen=_RECENT_WRITES)

    # --- policy -----------------------------------------------------------------------

    def pin(self, signature: str, ttl_s: float | None) -> None:
        """Set the TTL of one normalised query; ``0`` never caches it, ``None`` forgets the pin.

        A pinned signature is cached even while transparent caching is off,
        and its entries already cached take the new TTL at once.
        """
        if ttl_s is None:
            self._pins.pop(signature, None)
        else:
            if ttl_s < 0:
                raise ValueError("ttl must be >= 0")
            self._pins[signature] = float(ttl_s)
        ttl = self.ttl_for(signature)
        for key in [k for k in self._entries if k.signature == signature]:
            entry = self._entries[key]
            if ttl is None or ttl <= 0:
                self._remove(key)
            else:
                entry.expires_at = entry.stored_at + ttl

    def ttl_for(self, signature: str) -> float | None:
        """Seconds to keep results of ``signature``, or None when they are not cached."""
        pinned = self._pins.get(signature)
        if pinned is not None:
            return pinned if pinned > 0 else None
        return self.ttl_s if self.enabled and self.ttl_s > 0 and self.max_bytes > 0 else None

    def configure(self, *, enabled: bool, max_bytes: int, ttl_s: float) -> None:
        self.enabled, self.max_bytes, self.ttl_s = enabled, max_bytes, ttl_s
        if not enabled:
            for key in [k for k in self._entries if k.signature not in self._pins]:
                self._remove(key)
        self._shrink(0)

    # --- lookups ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheEntry]:
        return iter(list(self._entries.values()))

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self.clock():
            self._remove(key)
            entry = None
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry

    def begin(self) -> int:
        """Call before evaluating a query that may be stored; pass the token to ``put``."""
        self._inflight += 1
        return self._write_seq

    def finish(self) -> None:
        """Call once per ``begin`` when that query is done (stored or not)."""
        self._inflight -= 1
        if self._inflight <= 0:
            self._inflight = 0
            self._recent.clear()

    def put(
        self,
        key: CacheKey,
        result: Result,
        deps: Dependencies,
        token: int,
        ttl_s: float,
        encode: Callable[[Result], bytes] | None = None,
    ) -> CacheEntry | None:
        """Store ``result`` unless a write since ``token`` may have changed it.

        With ``encode`` (result -> API ``data`` JSON), a result larger than
        ``max_bytes / LARGE_FRACTION`` is stored as its encoding alone.
        """
        if self._write_seq != token:
            if not self._recent or self._recent[0][0] > token + 1:
                return None  # lost track of what was written meanwhile: be safe
            for seq, names, lo, hi in self._recent:
                if seq > token and deps.touched_by(names, lo, hi):
                    return None
        size = result_size(result)
        kept: Result | None = result
        body: bytes | None = None
        if encode is not None and size > self.max_bytes // LARGE_FRACTION:
            body = encode(result)
            kept, size = None, 300 + len(body)
        if size > self.max_bytes:
            return None
        if kept is not None:
            _freeze(kept)
        now = self.clock()
        self._remove(key)
        entry = CacheEntry(key, kept, deps, now, now + ttl_s, size, body, result.annotations)
        self._entries[key] = entry
        self.stats.bytes += size
        if deps.names is None:
            self._wildcard.add(key)
        else:
            for name in deps.names:
                self._by_name.setdefault(name, set()).add(key)
        self._shrink(0)
        return entry if key in self._entries else None

    def attach_json(self, entry: CacheEntry, data_json: bytes) -> None:
        """Keep an entry's encoded API ``data`` too, so a hit skips JSON encoding."""
        if self._entries.get(entry.key) is not entry or entry.data_json is not None:
            return
        entry.data_json = data_json
        entry.size += len(data_json)
        self.stats.bytes += len(data_json)
        self._shrink(0)

    # --- invalidation -----------------------------------------------------------------

    def on_write(self, series_ids: np.ndarray | None, min_t: int, max_t: int) -> None:
        """A write committed samples of ``series_ids`` (None: any series) in [min_t, max_t]."""
        if not self._entries and not self._inflight:
            return
        names = None if series_ids is None else self._names_of(series_ids)
        self._write_seq += 1
        if self._inflight:
            self._recent.append((self._write_seq, names, min_t, max_t))
        if not self._entries:
            return
        if names is None:
            candidates: set[CacheKey] = set(self._entries)
        else:
            candidates = set(self._wildcard)
            for name in names:
                keys = self._by_name.get(name)
                if keys:
                    candidates |= keys
        for key in candidates:
            entry = self._entries.get(key)
            if entry is not None and entry.deps.touched_by(names, min_t, max_t):
                self._remove(key)
                self.stats.invalidations += 1

    def clear(self) -> None:
        for key in list(self._entries):
            self._remove(key)

    def _names_of(self, sids: np.ndarray) -> set[str]:
        sids = np.asarray(sids, dtype=np.int64)
        if sids.size == 0:
            return set()
        if self.name_of is None:
            return set()
        top = int(sids.max())
        if top >= self._codes.size:
            grown = np.full(max(top + 1, 2 * self._codes.size), -1, dtype=np.int32)
            grown[: self._codes.size] = self._codes
            self._codes = grown
        codes = self._codes[sids]
        unknown = sids[codes < 0]
        if unknown.size:
            for sid in np.unique(unknown).tolist():
                try:
                    name = self.name_of(sid)
                except KeyError:
                    name = ""
                code = self._code_of.get(name)
                if code is None:
                    code = self._code_of[name] = len(self._names)
                    self._names.append(name)
                self._codes[sid] = code
            codes = self._codes[sids]
        return {self._names[c] for c in np.unique(codes).tolist()}

    # --- bookkeeping --------------------------------------------------------------------

    def _remove(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.stats.bytes -= entry.size
        if entry.deps.names is None:
            self._wildcard.discard(key)
        else:
            for name in entry.deps.names:
                keys = self._by_name.get(name)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_name[name]

    def _shrink(self, extra: int) -> None:
        if self.stats.bytes + extra <= self.max_bytes:
            return
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            self._remove(key)
        while self._entries and self.stats.bytes + extra > self.max_bytes:
            key = next(iter(self._entries))
            self._remove(key)
            self.stats.evictions += 1
