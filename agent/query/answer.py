"""A query's answer as the service hands it over: result, cache state, encoded ``data``.

Apart from :mod:`agent.query.service` so the HTTP routes and tests can take
the answer's shape (and the JSON encoding every front end shares) without the
service's machinery.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.query.cache import CacheEntry, QueryCache
from agent.query.values import (
    Annotations,
    Matrix,
    Result,
    Sample,
    Scalar,
    Series,
    String,
    Vector,
)


def result_points(result: Result) -> int:
    if isinstance(result, Matrix):
        return result.point_count()
    if isinstance(result, Vector):
        return len(result.samples)
    return 1


def encode_data(result: Result) -> bytes:
    """The API ``data`` object of ``result``, JSON-encoded."""
    if isinstance(result, Matrix | Vector):
        return result.to_json_bytes()  # the same bytes, without the dict detour
    return json.dumps(result.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


class QueryAnswer:
    """One query's result and how the cache took part (``hit``, ``miss``, ``bypass``, ``off``).

    A hit on an entry kept as encoded JSON only has no result objects; they are
    decoded from the JSON if someone asks for :attr:`result`.
    """

    def __init__(
        self,
        result: Result | None,
        cache: str,
        entry: CacheEntry | None,
        _cache: QueryCache | None = None,
        body: bytes | None = None,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self._result = result
        self.cache = cache
        self.entry = entry
        self._cache = _cache
        self._body = body  # the data JSON, when the worker encoded it already
        self._settle = settle  # stores the result in the cache: see settle()

    def settle(self) -> None:
        """Store the result in the cache, when the query asked to do that later
        (``defer_store``: the HTTP API answers first); a no-op after the first call."""
        settle, self._settle = self._settle, None
        if settle is not None:
            settle()

    @property
    def result(self) -> Result:
        if self._result is None:
            assert self.entry is not None and self.entry.data_json is not None
            self._result = result_from_data(json.loads(self.entry.data_json), self.annotations)
        return self._result

    @property
    def annotations(self) -> Annotations:
        if self._result is None and self.entry is not None and self.entry.annotations:
            return self.entry.annotations
        return self.result.annotations

    def data(self) -> dict[str, Any]:
        """The API ``data`` object as Python values."""
        if self._result is None and self.entry is not None and self.entry.data_json is not None:
            data: dict[str, Any] = json.loads(self.entry.data_json)
            return data
        return self.result.to_json()

    def data_json(self) -> bytes:
        """The API ``data`` object encoded; kept with a cache entry so hits skip encoding."""
        if self.entry is not None and self.entry.data_json is not None:
            return self.entry.data_json
        body = self._body if self._body is not None else encode_data(self.result)
        if self.entry is not None and self._cache is not None:
            self._cache.attach_json(self.entry, body)
        return body


def attach_sent(cache: QueryCache, entry: CacheEntry | None, body: bytes | None) -> None:
    """Keep the JSON already sent with a deferred entry (as ``data_json()`` would)."""
    if entry is not None and body is not None:
        cache.attach_json(entry, body)


def result_from_data(data: dict[str, Any], annotations: Annotations) -> Result:
    """The result objects behind an API ``data`` object (the inverse of ``to_json``)."""
    kind, rows = data["resultType"], data["result"]
    if kind == "matrix":
        series = [
            Series(
                tuple(row["metric"].items()),
                np.array([round(t * 1000) for t, _ in row["values"]], dtype=np.int64),
                np.array([float(v) for _, v in row["values"]], dtype=np.float64),
            )
            for row in rows
        ]
        return Matrix(series, annotations)
    if kind == "vector":
        samples = [
            Sample(
                tuple(row["metric"].items()), round(row["value"][0] * 1000), float(row["value"][1])
            )
            for row in rows
        ]
        return Vector(samples, annotations)
    if kind == "scalar":
        return Scalar(round(rows[0] * 1000), float(rows[1]), annotations)
    return String(round(rows[0] * 1000), rows[1], annotations)
