"""PromQL functions contributed by plugins (the ``register_query_functions`` hook).

Why a registry of its own: ``promql-parser`` refuses names it does not know,
so a plugin function has to be announced to the parser (process-wide) as
well as to the evaluator. Both happen in :func:`register`; the daemon calls
it for every :class:`RangeFunction` its plugins return, and library code that
uses such a function without the daemon (``Agent.query``, ``define_alert``)
registers it the same way.

The calling convention is the engine's own for range functions, so a
plugin function is evaluated for all steps of a query at once: it receives
the concatenated samples of every series (:class:`~agent.query.blocks.RangeData`),
the ``(series, steps)`` window bounds ``lo``/``hi`` (sample indexes, ``hi``
exclusive), each step's window end in ms, and its scalar arguments as
per-step arrays, and returns ``(values, present)`` of shape ``(series, steps)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import promql_parser as pp

from agent.query.blocks import RangeData

RangeImpl = Callable[
    [RangeData, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]],
    tuple[np.ndarray, np.ndarray],
]


@dataclass(frozen=True)
class RangeFunction:
    """``name(range_vector, scalar, ...)`` returning an instant vector.

    ``scalar_args`` scalars follow the range vector. The metric name is
    dropped from the output, as for every ``*_over_time`` function but
    ``last_over_time``.
    """

    name: str
    impl: RangeImpl
    scalar_args: int = 0
    doc: str = ""

    def __call__(
        self,
        data: RangeData,
        lo: np.ndarray,
        hi: np.ndarray,
        ends: np.ndarray,
        scalars: list[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.impl(data, lo, hi, ends, scalars)


_FUNCTIONS: dict[str, RangeFunction] = {}
_LOCK = threading.Lock()


def register(fn: RangeFunction) -> None:
    """Make ``fn`` parseable and evaluable in every query from now on (idempotent)."""
    with _LOCK:
        known = _FUNCTIONS.get(fn.name)
        if known is not None:
            _FUNCTIONS[fn.name] = fn  # a re-registration may swap the implementation
            return
        args = [pp.ValueType.Matrix] + [pp.ValueType.Scalar] * fn.scalar_args
        try:  # the parser accepts a repeated registration; it refuses to shadow a built-in
            pp.register_extra_functions([pp.Function(fn.name, args, pp.ValueType.Vector)])
        except ValueError as exc:
            raise ValueError(f"query function {fn.name!r}: {exc}") from None
        _FUNCTIONS[fn.name] = fn


def register_all(functions: Mapping[str, Any]) -> list[str]:
    """Register a ``register_query_functions`` result; returns the names.

    Every value must be a :class:`RangeFunction` registered under its own
    name: the engine knows no other calling convention, so anything else is
    refused (``TypeError``) rather than kept where PromQL could never call it.
    Nothing is registered unless all are good.
    """
    for name, fn in functions.items():
        if not isinstance(fn, RangeFunction):
            raise TypeError(
                f"query function {name!r} is a {type(fn).__name__}, not an "
                "agent.plugin_api.RangeFunction"
            )
        if fn.name != name:
            raise ValueError(f"query function registered as {name!r} is named {fn.name!r}")
    for fn in functions.values():
        register(fn)
    return list(functions)


def lookup(name: str) -> RangeFunction | None:
    return _FUNCTIONS.get(name)


def registered() -> list[str]:
    return sorted(_FUNCTIONS)
