"""PromQL query engine: parse with ``promql-parser``, evaluate with numpy.

Entry point is :class:`Engine`; results are :mod:`agent.query.values` types
with ``to_json()`` producing Prometheus's API ``data`` object.
"""

from __future__ import annotations

from agent.query.engine import Engine
from agent.query.errors import BadDataError, ExecutionError, QueryError
from agent.query.queryable import MemoryQueryable, Queryable
from agent.query.values import Annotations, Matrix, Scalar, Series, String, Vector, format_value

__all__ = [
    "Annotations",
    "BadDataError",
    "Engine",
    "ExecutionError",
    "Matrix",
    "MemoryQueryable",
    "QueryError",
    "Queryable",
    "Scalar",
    "Series",
    "String",
    "Vector",
    "format_value",
]
