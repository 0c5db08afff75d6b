"""The series index: labels <-> id, and inverted postings for matchers.

Postings are ``array('q')`` of ids in creation order.  Ids come from a
monotonic counter, so appending keeps every postings list sorted for free and
numpy set operations can run on zero-copy views.  A label value that belongs to
exactly one series (``instance``, ``pod``) keeps a bare ``int`` instead of an
array: at 100k series those singletons are most of the postings, and an array
object costs ~80 bytes more than the id it holds.
"""

from __future__ import annotations

import json
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain

import numpy as np
from sortedcontainers import SortedDict

from agent.model import Labels, Matcher, MatchOp, compile_anchored

_EMPTY = np.zeros(0, dtype=np.int64)
_BIG_ENDIAN = sys.byteorder == "big"
_META = set(".^$*+?{}[]\\|()")
_CLASS_ESCAPES = set("dDwWsSbBAZzfnrtv0123456789xuUN")


def encode_labels(labels: Labels) -> str:
    """The canonical text stored in ``series.labels`` (unique per label set)."""
    return json.dumps(labels, ensure_ascii=False, separators=(",", ":"))


def canonical_labels(labels: Iterable[tuple[str, str]]) -> Labels:
    """Sorted by name, empty values dropped, as ``agent.model.make_labels``.

    Decoders hand over label sets that are canonical already; recognising
    that with C-level calls only (a sort and a scan) keeps series creation
    from rebuilding every pair in Python.
    """
    if type(labels) is tuple and (not labels or set(map(type, labels)) == {tuple}):
        try:
            "".join(chain.from_iterable(labels))  # every element is a str ...
            names = dict(labels)  # ... in pairs
        except (TypeError, ValueError):
            pass
        else:
            if (
                len(names) == len(labels)
                and "" not in names.values()
                and list(labels) == sorted(labels)
            ):
                return labels
    return tuple(sorted((str(k), str(v)) for k, v in labels if v != ""))


def regex_literals(pattern: str) -> tuple[str, list[str] | None]:
    """Return (literal prefix, exact alternatives) of an anchored regex.

    Alternatives is a list when the pattern is nothing but ``a|b|c`` of plain
    literals (then each is a direct postings lookup); otherwise the prefix is a
    string every matching value must start with ("" when none is known), used
    for a sorted range scan instead of testing every value of the label.
    """
    parts: list[list[str]] = [[]]
    literal_only = True
    prefix_done = False
    prefix: list[str] = []
    depth = 0
    i = 0
    n = len(pattern)
    top_alt = False
    while i < n:
        c = pattern[i]
        lit: str | None = None
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt not in _CLASS_ESCAPES and not nxt.isalnum():
                lit = nxt
            i += 2
        elif c == "[":
            # Skip a character class as one opaque token.
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
        elif c in _META:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c == "|" and depth == 0:
                top_alt = True
                parts.append([])
                prefix_done = True
                i += 1
                continue
            i += 1
        else:
            lit = c
            i += 1
        if lit is None:
            literal_only = False
            if not prefix_done:
                prefix_done = True
                if c in "*?{" and prefix:
                    prefix.pop()  # the last literal may occur zero times
        else:
            parts[-1].append(lit)
            if not prefix_done:
                prefix.append(lit)
    if literal_only:
        return "", ["".join(p) for p in parts]
    if top_alt:
        return "", None
    return "".join(prefix), None


def _as_array(p: array[int] | int) -> np.ndarray:
    if isinstance(p, int):
        return np.array([p], dtype=np.int64)
    return np.frombuffer(p, dtype=np.int64)


def _union(postings: list[array[int] | int]) -> np.ndarray:
    if not postings:
        return _EMPTY
    if len(postings) == 1:
        return _as_array(postings[0])
    ints = [p for p in postings if isinstance(p, int)]
    arrays = [np.frombuffer(p, dtype=np.int64) for p in postings if not isinstance(p, int)]
    if ints:
        arrays.append(np.array(ints, dtype=np.int64))
    return np.unique(np.concatenate(arrays))


def _contains(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """For each id of ``small``, whether sorted ``big`` holds it: |small| log |big| work."""
    at = np.searchsorted(big, small)
    at[at == big.size] = 0
    return big[at] == small if big.size else np.zeros(small.size, dtype=bool)


def intersect_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ids in both sorted, unique arrays, by searching the smaller in the larger.

    ``np.intersect1d`` sorts both together, so ``{__name__="cpu", mode="idle"}``
    cost in proportion to the 52,000 cpu series; this costs in proportion to the
    6,500 idle ones (times a log), that is, to what the selector returns.
    """
    small, big = (a, b) if a.size <= b.size else (b, a)
    if small.size == 0:
        return _EMPTY
    return small[_contains(big, small)]


def difference_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ids of sorted ``a`` not in sorted ``b`` (both unique), without sorting both."""
    if a.size == 0 or b.size == 0:
        return a
    if b.size <= a.size:
        keep = np.ones(a.size, dtype=bool)
        at = np.searchsorted(a, b)
        hit = at < a.size
        at, bb = at[hit], b[hit]
        keep[at[a[at] == bb]] = False
        return a[keep]
    return a[~_contains(b, a)]


def _size(p: array[int] | int | None) -> int:
    if p is None:
        return 0
    return 1 if isinstance(p, int) else len(p)


Pair = tuple[str, str]


PLAN_CACHE_SERIES = 2_000
PLAN_CACHE_SIZE = 256


class SeriesIndex:
    __slots__ = (
        "_all",
        "_by_labels",
        "_labels",
        "_pair_ids",
        "_pairs",
        "_plans",
        "_plans_at",
        "_postings",
        "_rank",
    )

    def __init__(self) -> None:
        self._by_labels: dict[Labels, int] = {}
        self._labels: list[Labels | None] = [None]  # index 0 unused: ids start at 1
        self._postings: SortedDict = SortedDict()  # name -> SortedDict(value -> postings)
        self._all: array[int] = array("q")
        # Every distinct label pair once, with its id in the ``label_pairs`` table.
        # Label sets are tuples of these shared pair objects: a node-exporter-like
        # series then costs one tuple of pointers (~130 bytes) instead of a tuple
        # of its own pairs and strings (~500 bytes), and the same ids make the
        # series row a short list of integers on disk.
        self._pair_ids: dict[Pair, int] = {}
        self._pairs: list[Pair | None] = [None]  # index 0 unused: pair ids start at 1
        # rank[sid]: position of series sid in label order among ids < len(rank);
        # label sets never change, so later additions leave it valid for older ids.
        self._rank: np.ndarray = _EMPTY
        # select() answers of small selects, valid while no series is added (see select).
        self._plans: dict[tuple[Matcher, ...], tuple[list[int], list[Labels]]] = {}
        self._plans_at = 0

    def __len__(self) -> int:
        return len(self._by_labels)

    @property
    def max_id(self) -> int:
        return len(self._labels) - 1

    @property
    def pair_count(self) -> int:
        return len(self._pairs) - 1

    def lookup(self, labels: Labels) -> int | None:
        return self._by_labels.get(labels)

    def labels(self, series_id: int) -> Labels:
        if 0 < series_id < len(self._labels):
            lab = self._labels[series_id]
            if lab is not None:
                return lab
        raise KeyError(series_id)

    def labels_many(self, ids: list[int]) -> list[Labels]:
        """Label sets of existing series (ids from :meth:`match`), in the order given.

        One C-level pass for a select over tens of thousands of series, which
        otherwise spends a quarter of its event-loop time in :meth:`labels`.
        """
        return list(map(self._labels.__getitem__, ids))  # type: ignore[arg-type]

    def exists(self, series_id: int) -> bool:
        return 0 < series_id < len(self._labels) and self._labels[series_id] is not None

    # --- label pairs and their stored form ----------------------------------------

    def load_pairs(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """Pairs as stored (id, name, value), before any series is loaded."""
        pairs, ids = self._pairs, self._pair_ids
        for pid, name, value in rows:
            while len(pairs) <= pid:
                pairs.append(None)
            pair = (sys.intern(name), value)
            pairs[pid] = pair
            ids[pair] = pid

    def decode_stored(self, blob: bytes) -> Labels:
        """A ``series.labels`` blob (little-endian uint32 pair ids) as a label set."""
        ids = array("I")
        ids.frombytes(blob)
        if _BIG_ENDIAN:
            ids.byteswap()
        pairs = self._pairs
        try:
            lab = tuple([pairs[i] for i in ids])
        except IndexError:
            lab = (None,)
        if None in lab:
            raise ValueError("series row names a label pair missing from label_pairs")
        return lab  # type: ignore[return-value]

    def encode_new(
        self, labels_list: Sequence[Labels]
    ) -> tuple[list[Labels], list[bytes], list[tuple[int, str, str]]]:
        """Interned label sets, their stored blobs and the pair rows they add, for new series.

        Pair ids are handed out here, before the commit that stores them; a
        failed commit fails the store (see the writer), so an id can never be
        reused for another pair within one process, and a reopen reloads from
        the table.
        """
        ids, pairs = self._pair_ids, self._pairs
        get = ids.get
        new_rows: list[tuple[int, str, str]] = []
        interned: list[Labels] = []
        blobs: list[bytes] = []
        for lab in labels_list:
            pids = array("I")
            out = []
            for pair in lab:
                pid = get(pair)
                if pid is None:
                    pair = (sys.intern(pair[0]), pair[1])
                    pid = ids[pair] = len(pairs)
                    pairs.append(pair)
                    new_rows.append((pid, pair[0], pair[1]))
                else:
                    pair = pairs[pid]  # type: ignore[assignment]
                pids.append(pid)
                out.append(pair)
            if _BIG_ENDIAN:
                pids.byteswap()
            interned.append(tuple(out))
            blobs.append(pids.tobytes())
        return interned, blobs, new_rows

    def forget_pairs(self, first: int) -> None:
        """Forget pairs handed out by :meth:`encode_new` from count ``first`` on.

        For a commit that rolled back before any of its series was added: the
        pairs were never stored, so their ids must be handed out again.
        """
        while len(self._pairs) - 1 > first:
            pair = self._pairs.pop()
            if pair is not None:
                del self._pair_ids[pair]

    # --- adding series ------------------------------------------------------------

    def add(self, series_id: int, labels: Labels) -> Labels:
        """Register one series (ids in increasing order); see :meth:`add_many`."""
        if series_id <= self.max_id and self._labels[series_id] is not None:
            raise ValueError(f"series id {series_id} already registered")
        if series_id < self.max_id:
            raise ValueError("series ids must be added in increasing order")
        interned = self.encode_new([labels])[0][0]
        self.add_many([series_id], [interned])
        return interned

    def add_many(self, series_ids: Sequence[int], labels_list: Sequence[Labels]) -> None:
        """Register series whose labels are already interned (from :meth:`encode_new` or
        :meth:`decode_stored`), ids increasing and above every registered id, so every
        postings list stays sorted by appending.
        """
        if not series_ids:
            return
        if series_ids[0] <= self.max_id:
            raise ValueError("series ids must be added in increasing order")
        all_labels, by_labels, post = self._labels, self._by_labels, self._postings
        top = series_ids[-1]
        all_labels.extend([None] * (top + 1 - len(all_labels)))
        self._all.extend(series_ids)
        # Gather each pair's new ids first: the postings of one pair then grow once
        # per batch, and a pair shared by every new series costs one update.
        grouped: dict[Pair, list[int]] = {}
        setdefault = grouped.setdefault
        for sid, lab in zip(series_ids, labels_list, strict=True):
            all_labels[sid] = lab
            by_labels[lab] = sid
            for pair in lab:
                setdefault(pair, []).append(sid)
        for (k, v), new in grouped.items():
            values = post.get(k)
            if values is None:
                values = post[k] = SortedDict()
            cur = values.get(v)
            if cur is None:
                values[v] = new[0] if len(new) == 1 else array("q", new)
            elif isinstance(cur, int):
                values[v] = array("q", [cur, *new])
            else:
                cur.extend(new)

    # --- label order ------------------------------------------------------------

    def in_label_order(self, ids: np.ndarray) -> list[int]:
        """``ids`` (existing series) sorted by their label sets.

        Answered from a cached rank of every series in label order, so a select
        over tens of thousands of series does not compare that many label tuples
        per query.  Series added since the rank was built are merged in by
        bisection; the rank is rebuilt once they are more than a few percent.
        """
        labels = self._labels
        if ids.size < 256:
            return sorted(ids.tolist(), key=labels.__getitem__)
        self._refresh_rank()
        rank = self._rank
        known = ids < rank.size
        old = ids[known] if not known.all() else ids
        out: list[int] = old[np.argsort(rank[old], kind="stable")].tolist()
        if old.size == ids.size:
            return out
        new = sorted(ids[~known].tolist(), key=labels.__getitem__)
        keys = [labels[s] for s in out]
        merged: list[int] = []
        prev = 0
        for sid in new:
            at = bisect_left(keys, labels[sid], prev)
            merged += out[prev:at]
            merged.append(sid)
            prev = at
        merged += out[prev:]
        return merged

    def select(
        self, matchers: list[Matcher], most: int | None = None
    ) -> tuple[list[int], list[Labels]] | None:
        """Ids matching ``matchers`` in label order, and their label sets.

        Dashboards ask the same small selects again and again (``up``, one
        gauge), and for them matching, ordering and fetching the label sets is
        a good part of a query's time on the event loop. Series are only ever
        added, so the answer stays right until the next one is: remembered
        then for selects of up to :data:`PLAN_CACHE_SERIES` series, at most
        :data:`PLAN_CACHE_SIZE` of them. Callers get lists of their own.
        Past ``most`` matches: None, before ordering them or fetching labels.
        """
        if self._plans_at != len(self._all):
            self._plans.clear()
            self._plans_at = len(self._all)
        key = tuple(matchers)
        known = self._plans.get(key)
        if known is not None:
            if most is not None and len(known[0]) > most:
                return None
            return list(known[0]), list(known[1])
        matched = self.match(matchers)
        if most is not None and matched.size > most:
            return None
        ids = self.in_label_order(matched)
        labs = self.labels_many(ids)
        if len(ids) <= PLAN_CACHE_SERIES:
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = (list(ids), list(labs))
        return ids, labs

    def _refresh_rank(self) -> None:
        top = len(self._labels)
        pending = top - self._rank.size
        if pending <= 0 or (self._rank.size and pending <= max(1024, len(self._all) // 32)):
            return
        labels = self._labels
        ids = self.all_ids()
        order = np.array(sorted(ids.tolist(), key=labels.__getitem__), dtype=np.int64)
        rank = np.zeros(top, dtype=np.int64)
        rank[order] = np.arange(order.size, dtype=np.int64)
        self._rank = rank

    # --- label listings -------------------------------------------------------

    def postings(self, name: str, value: str) -> np.ndarray:
        """Ids of the series with ``name="value"`` (cardinality limits count these)."""
        values = self._postings.get(name)
        found = values.get(value) if values is not None else None
        return _EMPTY if found is None else _as_array(found)

    def value_counts(self, name: str) -> list[tuple[str, int]]:
        """(value, series count) for one label name, for cardinality statistics."""
        values = self._postings.get(name)
        if values is None:
            return []
        return [(v, _size(p)) for v, p in values.items()]

    def label_names(self) -> list[str]:
        return list(self._postings.keys())

    def label_values(self, name: str) -> list[str]:
        values = self._postings.get(name)
        return list(values.keys()) if values is not None else []

    # --- matching ---------------------------------------------------------------

    def all_ids(self) -> np.ndarray:
        return np.frombuffer(self._all, dtype=np.int64).copy()

    def match(self, matchers: list[Matcher]) -> np.ndarray:
        """Sorted ids of the series selected by every matcher (Prometheus semantics).

        Matchers that cannot match "" select through postings and are
        intersected; those that do match "" also select series lacking the
        label, so they are applied by subtracting the series whose value fails
        them.  Once the candidate set is small, the remaining matchers test
        each candidate's labels instead of materialising large postings.
        """
        positive = [m for m in matchers if not m.matches_empty()]
        negative = [m for m in matchers if m.matches_empty()]
        result: np.ndarray | None = None
        for m in sorted(positive, key=self._cost):
            if result is not None and result.size * 8 < self._cost(m):
                result = self._filter(result, m)
            else:
                found = self._values_postings(m.name, m, want_match=True)
                result = found if result is None else intersect_sorted(result, found)
            if result.size == 0:
                return _EMPTY
        if result is None:
            result = self.all_ids()
        for m in negative:
            if result.size * 8 < self._cost(m):
                result = self._filter(result, m)
            else:
                drop = self._values_postings(m.name, m, want_match=False)
                if drop.size:
                    result = difference_sorted(result, drop)
            if result.size == 0:
                return _EMPTY
        return result

    def _cost(self, m: Matcher) -> int:
        """Rough work to resolve ``m`` through postings, to order and to choose filtering."""
        values = self._postings.get(m.name)
        if values is None:
            return 0
        if m.op in (MatchOp.EQ, MatchOp.NEQ):
            return _size(values.get(m.value)) if m.op is MatchOp.EQ else len(values)
        prefix, alts = regex_literals(m.value)
        if alts is not None:
            return sum(_size(values.get(a)) for a in alts)
        if prefix:
            return 4 * sum(1 for _ in _prefix_keys(values, prefix))
        return 4 * len(values) + len(self._by_labels)

    def _filter(self, ids: np.ndarray, m: Matcher) -> np.ndarray:
        labels = self._labels
        name = m.name
        keep = []
        for sid in ids.tolist():
            lab = labels[sid]
            value = ""
            if lab is not None:
                for k, v in lab:
                    if k == name:
                        value = v
                        break
            if m.matches(value):
                keep.append(sid)
        return np.array(keep, dtype=np.int64)

    def _values_postings(self, name: str, m: Matcher, *, want_match: bool) -> np.ndarray:
        """Union of postings of the values of ``name`` for which ``m.matches`` == want_match."""
        values = self._postings.get(name)
        if values is None:
            return _EMPTY
        if m.op in (MatchOp.EQ, MatchOp.NEQ):
            hit_on_value = m.op is MatchOp.EQ  # does the value m.value satisfy m?
            if hit_on_value == want_match:
                p = values.get(m.value)
                return _as_array(p) if p is not None else _EMPTY
            # Every value except m.value.
            return _union([p for v, p in values.items() if v != m.value])
        # Regex: the set of values the *regex* matches, then flip for !~ / want_match.
        regex_hits = (m.op is MatchOp.RE) == want_match
        prefix, alts = regex_literals(m.value)
        test = _regex_of(m)
        if regex_hits and alts is not None:
            return _union([p for a in alts if (p := values.get(a)) is not None])
        if regex_hits and prefix:
            return _union([values[v] for v in _prefix_keys(values, prefix) if test(v)])
        if regex_hits:
            return _union([p for v, p in values.items() if test(v)])
        return _union([p for v, p in values.items() if not test(v)])


def _prefix_keys(values: SortedDict, prefix: str) -> Iterator[str]:
    """Keys starting with ``prefix``: a range scan over the sorted keys, not a full scan."""
    for key in values.irange(minimum=prefix):
        if not key.startswith(prefix):
            return
        yield key


def _regex_of(m: Matcher) -> Callable[[str], bool]:
    rx = m._regex if m._regex is not None else compile_anchored(m.value)
    return lambda v: rx.match(v) is not None
