"""Typed query errors, each carrying the Prometheus API ``errorType`` it maps to.

The HTTP layer turns these into Prometheus's envelopes (``bad_data`` → 400,
``execution`` → 422), so the engine never has to know about status codes.
"""

from __future__ import annotations


class QueryError(Exception):
    """Base class; ``error_type`` is the string Prometheus puts in ``errorType``."""

    error_type = "execution"


class BadDataError(QueryError):
    """The query text or its parameters are invalid (parse errors, bad ranges)."""

    error_type = "bad_data"


class ExecutionError(QueryError):
    """The query parsed but failed while evaluating (e.g. many-to-many matching)."""

    error_type = "execution"
