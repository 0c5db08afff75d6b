"""Query results as returned by :class:`agent.query.Engine`, and their API JSON form.

The JSON shapes and number formatting follow Prometheus's HTTP API: sample
values are strings (``"+Inf"``, ``"NaN"``, shortest round-trip decimal without
exponent, like Go's ``strconv.FormatFloat(v, 'f', -1, 64)``) and timestamps are
float seconds.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.model import Labels
from agent.query import result_template
from agent.query.numfmt import format_cells, format_value
from agent.query.result_template import time_text

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; the numpy path covers its absence
    orjson = None  # type: ignore[assignment]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def format_time(ms: int) -> float | int:
    """API timestamps are seconds; whole seconds stay integers, as Go prints them."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def labels_json(labels: Labels) -> dict[str, str]:
    return dict(labels)


_PAIR_JSON: dict[tuple[str, str], str] = {}
_PAIR_JSON_MAX = 500_000


def labels_json_text(labels: Labels) -> str:
    """``_dumps(labels_json(labels))`` from cached per-pair fragments.

    Label pairs repeat across series and queries, so each is escaped once.
    """
    cache = _PAIR_JSON
    parts = []
    for pair in labels:
        frag = cache.get(pair)
        if frag is None:
            if len(cache) >= _PAIR_JSON_MAX:
                cache.clear()
            frag = cache[pair] = _dumps(pair[0]) + ":" + _dumps(pair[1])
        parts.append(frag)
    return "{" + ",".join(parts) + "}"


def metrics_json(label_sets: list[Labels]) -> list[bytes]:
    """``labels_json_text`` of each label set, encoded: by orjson when present.

    orjson escapes strings exactly as ``json.dumps(..., ensure_ascii=False)``
    (``tests/test_promql_json.py`` checks every character class); a label
    set it refuses (a lone surrogate) goes the slow way.
    """
    if orjson is not None:
        dumps = orjson.dumps
        try:
            return [dumps(dict(lab)) for lab in label_sets]
        except TypeError:
            pass
    return [labels_json_text(lab).encode() for lab in label_sets]


def _vector_orjson(samples: list[Sample], body: bytes) -> bytes | None:
    """:meth:`Vector.to_json_bytes` by one ``orjson.dumps``, or None (then the loop way).

    orjson's cost is mostly per call: 52,000 label sets took 86 ms as one call
    each and 6 ms as one list. Each point of ``body`` is ``,[t,"v"]`` and none
    holds ``],[`` (numbers, ``NaN``, ``+Inf``), so one split gives them all, and
    each goes in as an ``orjson.Fragment``; label sets as ``metrics_json``
    writes them (the same escaping; a lone surrogate makes it None).
    """
    points = body[2:-1].split(b"],[")
    if len(points) != len(samples):
        return None
    frag = orjson.Fragment
    try:
        return orjson.dumps(
            {
                "resultType": "vector",
                "result": [
                    {"metric": dict(s.labels), "value": frag(b"[%b]" % p)}
                    for s, p in zip(samples, points, strict=True)
                ],
            }
        )
    except TypeError:
        return None


def _matrix_orjson(
    labels: list[Labels], point_ends: list[int], byte_ends: list[int], body: bytes
) -> bytes | None:
    """:meth:`Matrix.to_json_bytes` assembled by one ``orjson.dumps``, or None.

    Each series' points go in as an ``orjson.Fragment`` (JSON written as it
    is), so the per-series Python is one dict and one slice; None when orjson
    refuses a label set (a lone surrogate), for the caller's slower path.
    """
    fragment, rows = orjson.Fragment, []
    start = 0
    try:
        for lab, point in zip(labels, point_ends, strict=True):
            end = byte_ends[point - 1] if point else 0
            rows.append(
                {"metric": dict(lab), "values": fragment(b"[" + body[start + 1 : end] + b"]")}
            )
            start = end
        return orjson.dumps({"resultType": "matrix", "result": rows})
    except TypeError:
        return None


SMALL_RESULT = 24  # points up to which a result is written point by point (measured crossover)


def _small_json(
    kind: bytes, key: bytes, labels: list[Labels], points: list[list[tuple[int, float]]]
) -> bytes:
    """A small vector (one point per series, no brackets around) or matrix, plainly."""
    rows = []
    for metric, pts in zip(metrics_json(labels), points, strict=True):
        cells = b",".join(b'[%b,"%b"]' % (time_text(t), format_value(v).encode()) for t, v in pts)
        if key == b"values":
            cells = b"[" + cells + b"]"
        rows.append(b'{"metric":%b,"%b":%b}' % (metric, key, cells))
    return b'{"resultType":"%b","result":[%b]}' % (kind, b",".join(rows))


_PARALLEL_POINTS = 400_000  # from this many points, two halves are encoded at once
_pool: ThreadPoolExecutor | None = None


_CHUNK_POINTS = 32_768  # orjson path: points per call (each holds the GIL ~1-2 ms)
_JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY if orjson is not None else 0


def _points_json(times: np.ndarray, values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """All ``,[t,"v"]`` points concatenated, and each point's end offset in the bytes.

    With orjson (a dependency; the numpy path below remains for its absence):
    chunks of points go through :func:`_points_json_orjson`, which leaves a
    chunk holding exponents, NaN or infinities to the numpy path.
    """
    if orjson is None or len(values) == 0:
        return _points_json_numpy(times, values)
    bodies: list[bytes] = []
    ends: list[np.ndarray] = []
    at = 0
    for a in range(0, len(values), _CHUNK_POINTS):
        t, v = times[a : a + _CHUNK_POINTS], values[a : a + _CHUNK_POINTS]
        got = _points_json_orjson(t, v)
        body, e = got if got is not None else _points_json_serial(t, v)
        bodies.append(body)
        ends.append(e + at)
        at += len(body)
    return b"".join(bodies), np.concatenate(ends)


def _points_json_orjson(times: np.ndarray, values: np.ndarray) -> tuple[bytes, np.ndarray] | None:
    """:func:`_points_json_serial`'s bytes from orjson's shortest round-trip floats.

    orjson writes ``[[t,v],...]`` for an (n, 2) float array (``t`` in seconds:
    ``ms / 1000``, the same double :func:`format_time` prints), with the digits
    of ``repr``. A few byte replacements quote the values and drop the ``.0``
    of whole numbers, as Go prints them. orjson writes exponents (``1e-7``,
    ``1e+16``) and ``null`` (NaN, infinities) where Prometheus writes
    positional digits and ``NaN``/``+Inf``: then None, and the caller uses the
    numpy path (timestamps never hold an ``e``).
    """
    pairs = np.empty((len(values), 2), dtype=np.float64)
    np.divide(times, 1000.0, out=pairs[:, 0])
    pairs[:, 1] = values
    raw = orjson.dumps(pairs, option=_JSON_NUMPY)  # b'[[t,v],[t,v]]'
    if b"e" in raw or b"l" in raw:
        return None
    body = raw[1:-2].replace(b",", b',"').replace(b'],"[', b'"],[')  # [t,"v"],[t,"v
    body = b"," + body + b'"]'
    body = body.replace(b'.0"]', b'"]').replace(b'.0,"', b',"')  # whole values, seconds
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 93) + 1  # each "]"
    return body, ends


def _points_json_numpy(times: np.ndarray, values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """:func:`_points_json` without orjson.

    Large inputs are cut in two and encoded on two threads (the work is numpy
    passes, which release the GIL); the halves' bytes simply concatenate.
    """
    global _pool
    n = len(values)
    if n < _PARALLEL_POINTS:
        return _points_json_serial(times, values)
    if _pool is None:
        _pool = ThreadPoolExecutor(1, thread_name_prefix="tsagent-json")
    half = n // 2
    second = _pool.submit(_points_json_serial, times[half:], values[half:])
    body1, ends1 = _points_json_serial(times[:half], values[:half])
    body2, ends2 = second.result()
    return body1 + body2, np.concatenate([ends1, ends2 + len(body1)])


def _points_json_serial(times: np.ndarray, values: np.ndarray) -> tuple[bytes, np.ndarray]:
    if len(values) == 0:
        return b"", np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(times, return_inverse=True)
    heads = [f',[{_dumps(format_time(int(t)))},"'.encode() for t in uniq.tolist()]
    width = max(len(h) for h in heads)
    head_cells = np.array(heads, dtype=f"S{width}").view(np.uint8).reshape(len(heads), width)
    vals = format_cells(values)
    cells = np.empty((len(values), width + vals.shape[1] + 2), dtype=np.uint8)
    cells[:, :width] = head_cells[inverse.ravel()]
    cells[:, width : width + vals.shape[1]] = vals
    cells[:, -2:] = np.frombuffer(b'"]', dtype=np.uint8)
    ends = np.cumsum(np.count_nonzero(cells, axis=1))
    flat = cells.ravel()
    return flat[flat != 0].tobytes(), ends


@dataclass
class Annotations:
    """Warnings and infos collected during evaluation, deduplicated in order."""

    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def info(self, msg: str) -> None:
        if msg not in self.infos:
            self.infos.append(msg)

    def merge(self, other: Annotations) -> None:
        for w in other.warnings:
            self.warn(w)
        for i in other.infos:
            self.info(i)


@dataclass
class Sample:
    labels: Labels
    t: int
    v: float


@dataclass
class Series:
    labels: Labels
    timestamps: np.ndarray  # int64 milliseconds
    values: np.ndarray  # float64


@dataclass
class Scalar:
    t: int
    v: float
    annotations: Annotations = field(default_factory=Annotations)
    result_type = "scalar"

    def to_json(self) -> dict[str, Any]:
        return {"resultType": "scalar", "result": [format_time(self.t), format_value(self.v)]}


@dataclass
class String:
    t: int
    v: str
    annotations: Annotations = field(default_factory=Annotations)
    result_type = "string"

    def to_json(self) -> dict[str, Any]:
        return {"resultType": "string", "result": [format_time(self.t), self.v]}


@dataclass
class Vector:
    samples: list[Sample]
    annotations: Annotations = field(default_factory=Annotations)
    result_type = "vector"

    def to_json_bytes(self) -> bytes:
        """``json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)``, faster."""
        samples = self.samples
        if len(samples) <= SMALL_RESULT:
            return _small_json(
                b"vector", b"value", [s.labels for s in samples], [[(s.t, s.v)] for s in samples]
            )
        t = np.array([s.t for s in samples], dtype=np.int64)
        v = np.array([s.v for s in samples], dtype=np.float64)
        fast = result_template.vector_json([s.labels for s in samples], t, v)
        if fast is not None:
            return fast
        body, ends = _points_json(t, v)
        if orjson is not None and samples:
            fast = _vector_orjson(samples, body)
            if fast is not None:
                return fast
        metrics = metrics_json([s.labels for s in samples])
        view = memoryview(body)
        parts: list[bytes | memoryview] = []
        start = 0
        for metric, end in zip(metrics, ends.tolist(), strict=True):
            parts += [b',{"metric":', metric, b',"value":', view[start + 1 : end], b"}"]
            start = end
        if parts:
            parts[0] = b'{"metric":'
        return b'{"resultType":"vector","result":[' + b"".join(parts) + b"]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "resultType": "vector",
            "result": [
                {"metric": labels_json(s.labels), "value": [format_time(s.t), format_value(s.v)]}
                for s in self.samples
            ],
        }


@dataclass
class MatrixColumns:
    """A matrix as flat arrays: series ``i`` owns points ``ends[i-1]:ends[i]``."""

    labels: list[Labels]
    ends: list[int]
    t: np.ndarray  # int64
    v: np.ndarray  # float64
    # The times of every series, when all have the same (a range query's steps
    # with a value at each): the JSON's points are then written once for all.
    grid: np.ndarray | None = None

    def series(self) -> list[Series]:
        t, v = self.t, self.v
        starts = [0, *self.ends[:-1]] if self.ends else []
        return [
            Series(lab, t[a:b], v[a:b])
            for lab, a, b in zip(self.labels, starts, self.ends, strict=True)
        ]


class Matrix:
    """A range result: ``series`` in label order.

    The engine may build one from :class:`MatrixColumns` instead; then the
    ``Series`` objects are made only when ``series`` is first read, and
    encoding, point counts and the cache work on the flat arrays.
    """

    result_type = "matrix"

    def __init__(
        self,
        series: list[Series] | None = None,
        annotations: Annotations | None = None,
        *,
        columns: MatrixColumns | None = None,
    ) -> None:
        self._series = series if series is not None or columns is not None else []
        self._columns = columns if series is None else None
        self.annotations = annotations if annotations is not None else Annotations()

    @property
    def series(self) -> list[Series]:
        if self._series is None:
            assert self._columns is not None
            self._series = self._columns.series()
            self._columns = None  # from now on the list is the truth (callers may edit it)
        return self._series

    @series.setter
    def series(self, value: list[Series]) -> None:
        self._series, self._columns = value, None

    @property
    def columns(self) -> MatrixColumns | None:
        """The flat form, while ``series`` has not been materialised."""
        return self._columns

    def point_count(self) -> int:
        cols = self._columns
        if cols is not None:
            return int(cols.t.size)
        return sum(len(s.timestamps) for s in self.series)

    def __len__(self) -> int:
        cols = self._columns
        return len(cols.labels) if cols is not None else len(self.series)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Matrix):
            return NotImplemented
        return (self.series, self.annotations) == (other.series, other.annotations)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Matrix(series={self.series!r}, annotations={self.annotations!r})"

    def to_json_bytes(self) -> bytes:
        """``json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)``, faster.

        Range results share their step timestamps, so each distinct timestamp
        is formatted once, and values go through :func:`format_values`.
        """
        cols = self._columns
        if cols is None:
            series = self.series
            if not series:
                return b'{"resultType":"matrix","result":[]}'
            cols = MatrixColumns(
                [s.labels for s in series],
                np.cumsum([len(s.timestamps) for s in series]).tolist(),
                np.concatenate([s.timestamps for s in series]),
                np.concatenate([s.values for s in series]),
            )
        labels, point_ends, t, v = cols.labels, cols.ends, cols.t, cols.v
        if not labels:
            return b'{"resultType":"matrix","result":[]}'
        # Every matrix tries the template first: point by point (below) costs two
        # Python calls per point, which a range result's cold path felt most.
        fast = result_template.matrix_json(labels, point_ends, t, v, cols.grid)
        if fast is not None:
            return fast
        if len(t) <= SMALL_RESULT:
            starts = [0, *point_ends[:-1]]
            pairs = list(zip(t.tolist(), v.tolist(), strict=True))
            points = [pairs[a:b] for a, b in zip(starts, point_ends, strict=True)]
            return _small_json(b"matrix", b"values", labels, points)
        body, ends = _points_json(t, v)
        byte_ends = ends.tolist()
        if orjson is not None:
            whole = _matrix_orjson(labels, point_ends, byte_ends, body)
            if whole is not None:
                return whole
        view = memoryview(body)
        parts: list[bytes | memoryview] = []
        start = 0
        for metric, point in zip(metrics_json(labels), point_ends, strict=True):
            end = byte_ends[point - 1] if point else 0
            parts += [b',{"metric":', metric, b',"values":[', view[start + 1 : end], b"]}"]
            start = end
        parts[0] = b'{"metric":'
        return b'{"resultType":"matrix","result":[' + b"".join(parts) + b"]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "resultType": "matrix",
            "result": [
                {
                    "metric": labels_json(s.labels),
                    "values": [
                        [format_time(int(t)), format_value(float(v))]
                        for t, v in zip(s.timestamps.tolist(), s.values.tolist(), strict=True)
                    ],
                }
                for s in self.series
            ],
        }


Result = Scalar | String | Vector | Matrix
