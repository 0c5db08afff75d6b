"""Large query results encoded as one JSON template filled by one ``%`` call.

Profiling the range ``rate()`` of 52,000 series (832,000 points, 38 MB of
JSON) showed encoding at over half the query's time: the older path wrote
``[[t,v],...]`` with orjson, then edited it with five whole-buffer passes
(quoting values, dropping ``.0``, finding each point's end) and copied every
series' slice into an ``orjson.Fragment``. This path writes each byte about
once:

1. every value by one 1-D ``orjson.dumps`` (shortest round-trip digits, the
   cheapest float formatting at hand), split into one ``bytes`` per value
   (whole numbers and what orjson would write otherwise than Go patched in);
2. the label sets by one ``orjson.dumps`` of a list of dicts, cut at each
   ``},{`` (one call per set when a label holds ``},{`` itself);
3. a template joining them with each series' points as ``[t,"%b"]`` cells:
   range results share their step timestamps, so one text of cells serves
   every series on the common grid (one ``bytes.join`` with it as the
   separator); a series off the grid gets its own;
4. ``template % tuple(values)`` puts the values in (C speed, one pass).

It declines (``None``, and the caller takes the older path) where a label
set is one orjson refuses (a lone surrogate), or where points are mostly
off a common grid (a raw range selector's samples), where cells of their
own for every series would cost a Python step per point. Work is cut into
chunks of series so that no single call holds the interpreter lock for long
while the event loop waits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.model import Labels
from agent.query.numfmt import format_value

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; callers have a path without it
    orjson = None  # type: ignore[assignment]

CHUNK_POINTS = 65_536  # points per chunk: each C call below stays at a few ms
FEW_VALUES = 96  # up to this many values, a Python step each costs less than numpy's calls
OFF_GRID_SHARE = 0.25  # decline when more of the points than this are off the common grid
_OFF_GRID_FREE = 4_096  # ... unless there are this few of them


def time_text(ms: int) -> bytes:
    """A timestamp as the API writes it: float seconds, whole seconds as integers.

    ``repr`` is what ``json.dumps`` writes for an int or a finite float.
    """
    return repr(ms // 1000 if ms % 1000 == 0 else ms / 1000).encode()


def _point_cells(times: Sequence[int]) -> bytes:
    """``[t,"%b"],[t,"%b"]`` for ``times``: one point each, its value left to fill.

    Times that share their milliseconds (a range query's steps) are written as
    whole seconds and that fraction's digits: ``repr`` of ``ms / 1000`` for
    ``0 <= ms < 1e15`` (at most 15 significant digits, which a float keeps
    exactly, so its shortest text is the decimal one).
    """
    if times and min(times) >= 0 and max(times) < 10**15:
        rest = times[0] % 1000
        if all(t % 1000 == rest for t in times):
            fraction = repr(rest / 1000)[1:].encode() if rest else b""
            cell = b"[%d" + fraction + b',"%%b"]'
            return b",".join([cell % (t // 1000) for t in times])
    return b",".join(b'[%b,"%%b"]' % time_text(t) for t in times)


def value_texts(values: np.ndarray) -> list[bytes] | None:
    """Each value as Prometheus writes it (without quotes); None without orjson.

    orjson's digits are those of ``repr``: without an exponent, Go's
    ``strconv.FormatFloat(v, 'f', -1, 64)`` but for whole numbers, which Go
    writes without ``.0``: they are written by ``orjson.dumps`` of integers
    (a ``replace`` of ``.0,`` over the whole text cost more, as ``.0`` starts
    many fractions), and the minority kind patched into the majority's texts.
    Values orjson would write with an exponent (magnitudes under 1e-4 or from
    1e16) or as ``null`` (NaN, infinities), and ``-0``, are written by
    ``format_value``.
    """
    if orjson is None:
        return None
    if len(values) <= FEW_VALUES:  # the dozen numpy calls below cost ~10 us whatever the size
        return _few_texts(np.asarray(values, dtype=np.float64))
    given = np.ascontiguousarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        a = np.abs(given)
        usual = (a < 1e16) & ((a >= 1e-4) | ((a == 0.0) & ~np.signbit(given)))
        whole = np.flatnonzero(usual & (given == np.trunc(given)))
    odd = np.flatnonzero(~usual)
    if len(given) == 0:
        return []
    v = given
    if odd.size:
        v = given.copy()
        v[odd] = 0.5  # a placeholder; replaced below
    if whole.size * 2 <= len(v):  # mostly fractions: all as floats, whole numbers patched
        texts = _dump(v)
        fill = _dump(v[whole].astype(np.int64)) if whole.size else []
        texts = _patched(texts, whole, fill)
    else:  # mostly whole (counts, sums of integers): all as integers, fractions patched
        frac = np.ones(len(v), dtype=bool)
        frac[whole] = False
        patch = np.flatnonzero(frac)
        texts = _dump(np.where(frac, 0.0, v).astype(np.int64))
        texts = _patched(texts, patch, _dump(v[patch]) if patch.size else [])
    for i, x in zip(odd.tolist(), given[odd].tolist(), strict=True):
        texts[i] = format_value(x).encode()
    return texts


def _few_texts(values: np.ndarray) -> list[bytes]:
    """:func:`value_texts` of a few values: one ``orjson.dumps``, then a step per text.

    orjson writes shortest round-trip digits without an exponent from 1e-5 to
    1e16, as Go's 'f' format does, but for the ``.0`` of whole numbers (cut
    here); exponents and ``null`` (NaN, infinities) go to ``format_value``.
    """
    if not len(values):
        return []
    blob = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    texts = blob[1:-1].split(b",")
    out = [text[:-2] if text[-2:] == b".0" else text for text in texts]
    if b"e" in blob or b"n" in blob:
        for i, text in enumerate(texts):
            if b"e" in text or b"n" in text:
                out[i] = format_value(float(values[i])).encode()
    return out


def _dump(values: np.ndarray) -> list[bytes]:
    """orjson's text of each number of a 1-D array."""
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def _patched(texts: list[bytes], at: np.ndarray, fill: list[bytes]) -> list[bytes]:
    """``texts`` with ``texts[at[j]] = fill[j]``: a loop for a few, a C scatter for many."""
    if at.size * 8 < len(texts):
        for i, text in zip(at.tolist(), fill, strict=True):
            texts[i] = text
        return texts
    cells = np.fromiter(texts, dtype=object, count=len(texts))
    cells[at] = np.fromiter(fill, dtype=object, count=len(fill))
    out: list[bytes] = cells.tolist()
    return out


def _grid(t: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The common grid (the times of a series with the most points) and who is on it."""
    n, k = len(counts), int(counts[0])
    if k and k * n == len(t) and bool((counts == k).all()):  # one length: rows of one array
        rows = t.reshape(n, k)
        return rows[0], (rows == rows[0]).all(axis=1)
    widest = int(np.argmax(counts))
    a = int(starts[widest])
    grid = t[a : a + int(counts[widest])]
    on = counts == len(grid)
    idx = np.flatnonzero(on)
    if idx.size and len(grid):
        rows = t[starts[idx, None] + np.arange(len(grid))]
        on[idx] = (rows == grid).all(axis=1)
    return grid, on


def matrix_json(
    labels: list[Labels],
    ends: Sequence[int],
    t: np.ndarray,
    v: np.ndarray,
    grid: np.ndarray | None = None,
) -> bytes | None:
    """``{"resultType":"matrix","result":[...]}`` for a flat matrix, or None (see the module).

    ``grid``: the times every series has, when the caller knows it (a range
    query's steps, where every series has a value at every step).
    """
    n = len(labels)
    if orjson is None or n == 0:
        return None
    ends_a = np.asarray(ends, dtype=np.int64)
    starts = np.concatenate(([0], ends_a[:-1]))
    if grid is None:
        counts = ends_a - starts
        grid, on = _grid(t, starts, counts)
        off = np.flatnonzero(~on)
        off_points = int(counts[off].sum())
        if off_points > _OFF_GRID_FREE and off_points > OFF_GRID_SHARE * len(t):
            return None
    else:
        off = starts[:0]
    shared = b"[" + _point_cells(grid.tolist()) + b"]"
    cells: list[bytes] | None = None
    if off.size:
        cells = [shared] * n
        for i in off.tolist():
            cells[i] = b"[" + _point_cells(t[starts[i] : ends_a[i]].tolist()) + b"]"
    parts: list[bytes] = [b'{"resultType":"matrix","result":[']
    first = 0
    while first < n:
        base = int(starts[first])
        last = max(int(np.searchsorted(ends_a, base + CHUNK_POINTS, "right")), first + 1)
        top = int(ends_a[last - 1])
        chunk = _filled(
            b"values",
            labels[first:last],
            shared if cells is None else cells[first:last],
            v[base:top],
        )
        if chunk is None:
            return None
        parts += [chunk, b","]
        first = last
    parts[-1] = b"]}"
    return b"".join(parts)


def vector_json(labels: list[Labels], t: np.ndarray, v: np.ndarray) -> bytes | None:
    """``{"resultType":"vector","result":[...]}``, or None (see the module)."""
    n = len(labels)
    if orjson is None or n == 0:
        return None
    uniq = np.unique(t)
    cells: list[bytes] | bytes
    if len(uniq) == 1:
        cells = _point_cells([int(uniq[0])])
    elif len(uniq) <= max(_OFF_GRID_FREE, n // 8):
        by_time = {x: _point_cells([x]) for x in uniq.tolist()}
        cells = [by_time[x] for x in t.tolist()]
    else:
        return None
    parts: list[bytes] = [b'{"resultType":"vector","result":[']
    for a in range(0, n, CHUNK_POINTS):
        b = min(n, a + CHUNK_POINTS)
        chunk = _filled(
            b"value", labels[a:b], cells if isinstance(cells, bytes) else cells[a:b], v[a:b]
        )
        if chunk is None:
            return None
        parts += [chunk, b","]
    parts[-1] = b"]}"
    return b"".join(parts)


def _filled(
    key: bytes, labels: list[Labels], cells: bytes | list[bytes], v: np.ndarray
) -> bytes | None:
    """``{"metric":{...},"<key>":<cells>},...`` for these series, values filled in.

    ``cells`` is one series' points with ``%b`` for each value, shared by all
    (the common grid) or one per series.
    """
    inner = _labels_inner(labels)
    texts = value_texts(v)
    if inner is None or texts is None:
        return None
    head = b'{"metric":{'
    if isinstance(cells, bytes):
        sep = b'},"' + key + b'":' + cells + b'},{"metric":{'
        template = head + sep.join(inner) + b'},"' + key + b'":' + cells + b"}"
    else:
        mid = b'},"' + key + b'":'
        parts: list[bytes] = []
        for lab, cell in zip(inner, cells, strict=True):
            parts += [head, lab, mid, cell, b"},"]
        parts[-1] = b"}"
        template = b"".join(parts)
    return template % tuple(texts)


def _labels_inner(labels: list[Labels]) -> list[bytes] | None:
    """Each label set's JSON without its braces, with ``%`` doubled for the fill.

    One ``orjson.dumps`` for all (its cost is mostly per call), cut at each
    ``},{``; when a label holds ``},{`` itself, one call per set. None where
    orjson refuses a label set (a lone surrogate).
    """
    try:
        blob = orjson.dumps([dict(lab) for lab in labels])
        if b"%" in blob:
            blob = blob.replace(b"%", b"%%")
        if blob.count(b"},{") == len(labels) - 1:
            return blob[2:-2].split(b"},{")
        return [orjson.dumps(dict(lab))[1:-1].replace(b"%", b"%%") for lab in labels]
    except TypeError:
        return None
