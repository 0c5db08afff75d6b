"""Function calls in PromQL evaluation: instant and range functions, histograms, plugins'.

A part of the evaluator (:class:`agent.query.engine._Evaluator` inherits it),
kept apart because function dispatch is most of the engine's length.
:class:`EvaluatorParts` declares what these methods use of the rest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.model import METRIC_NAME, MatchOp, metric_name
from agent.query import (
    ast,
    extensions,
    functions,
    rangefuncs,
    rollup_select,
)
from agent.query.blocks import (
    Block,
    RangeData,
    is_stale,
    search_windows,
)
from agent.query.errors import ExecutionError
from agent.query.numfmt import go_g, openmetrics_float
from agent.query.queryable import SelectedArraysLike
from agent.query.values import (
    Annotations,
)

if TYPE_CHECKING:
    from agent.query.queryable import RollupSource


MAX_POINTS = 11_000
Value = np.ndarray | str | Block

RANGE_FUNCS = frozenset(
    {
        "rate",
        "increase",
        "delta",
        "irate",
        "idelta",
        "deriv",
        "predict_linear",
        "changes",
        "resets",
        "avg_over_time",
        "sum_over_time",
        "count_over_time",
        "min_over_time",
        "max_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "first_over_time",
        "present_over_time",
        "absent_over_time",
        "quantile_over_time",
        "mad_over_time",
        "double_exponential_smoothing",
        "holt_winters",
        "ts_of_max_over_time",
        "ts_of_min_over_time",
        "ts_of_last_over_time",
        "ts_of_first_over_time",
    }
)
KEEP_NAME = frozenset({"last_over_time", "first_over_time"})
# Aggregations whose output labels come from the grouping alone, never from a row's
# own labels (topk, limitk and count_values keep or read the rows' labels).
NAME_BLIND_AGGREGATIONS = frozenset(
    {"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "quantile"}
)
COUNTER_SUFFIXES = ("_total", "_sum", "_count", "_bucket")
SORT_FUNCS = frozenset({"sort", "sort_desc", "sort_by_label", "sort_by_label_desc"})
EMPTY_FOR_FLOATS = frozenset(
    {
        "histogram_count",
        "histogram_sum",
        "histogram_avg",
        "histogram_stddev",
        "histogram_stdvar",
    }
)


DATE_FUNCS_SET = functions.DATE_FUNCS


def _range_data(sel: SelectedArraysLike, keep_stale: bool) -> RangeData:
    """RangeData from a bulk select, staleness markers dropped with one mask for all series."""
    offsets = np.asarray(sel.offsets, dtype=np.int64)
    t = np.asarray(sel.t, dtype=np.int64)
    v = np.asarray(sel.v, dtype=np.float64)
    labels = list(sel.labels)
    if not keep_stale and len(v):
        ok = ~is_stale(v)
        if not ok.all():
            n = len(labels)
            rows = np.repeat(np.arange(n), np.diff(offsets))
            counts = np.bincount(rows[ok], minlength=n)
            t, v = t[ok], v[ok]
            has = counts > 0
            if not has.all():
                labels = [lab for lab, h in zip(labels, has.tolist(), strict=True) if h]
                counts = counts[has]
            offsets = np.zeros(len(labels) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
    return RangeData(labels, np.zeros(len(labels), dtype=bool), offsets, t, v)


def _distinct_after_drop(arg: ast.Node, drop: np.ndarray) -> bool:
    """Whether a range function's rows over ``arg`` stay distinct once names are dropped.

    The series of a plain matrix selector have distinct label sets; dropping
    their names can make two equal only when they differ in name alone, which
    a selector fixing ``__name__`` rules out (as does dropping no names).
    """
    arg = ast.unwrap(arg)
    if not isinstance(arg, ast.MatrixSelector):
        return False
    if not drop.any():
        return True
    return any(m.name == METRIC_NAME and m.op is MatchOp.EQ for m in arg.selector.matchers)


def _block(v: Value) -> Block:
    if not isinstance(v, Block):
        raise ExecutionError("expected an instant vector argument")
    return v


def _scalar(v: Value | None) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise ExecutionError("expected a scalar argument")
    return v


def _str(v: Value) -> str:
    if not isinstance(v, str):
        raise ExecutionError("expected a string argument")
    return v


class EvaluatorParts:
    """What the function-call methods use of the evaluator (declared for type checking)."""

    text: str | ast.Node
    start: int
    end: int
    step: int
    annos: Annotations
    delayed: bool
    range_query: bool

    if TYPE_CHECKING:

        @property
        def engine(self) -> EngineOptions: ...

        def points(self, n: int, what: str) -> None: ...

        def pos(self, node: ast.Node | int) -> str: ...

        def _eval_times(self, at: ast.At | None, offset: int, steps: np.ndarray) -> np.ndarray: ...

        def _names_dropped(self, block: Block) -> Block: ...

        async def eval(self, node: ast.Node, steps: np.ndarray) -> Value: ...

        async def range_arg(
            self, node: ast.Node, steps: np.ndarray
        ) -> tuple[RangeData, np.ndarray, int]: ...


class EngineOptions(Protocol):
    """What function calls read of the :class:`agent.query.engine.Engine`."""

    @property
    def rollups(self) -> RollupSource | None: ...

    @property
    def rollup_resolution_ms(self) -> int: ...


class FunctionCalls(EvaluatorParts):
    """Function calls of the evaluator (see the module docstring)."""

    async def call(self, node: ast.Call, steps: np.ndarray) -> Value:
        name = node.name
        if name in RANGE_FUNCS:
            return await self.range_call(node, steps)
        plugin_fn = extensions.lookup(name)
        if plugin_fn is not None:
            return await self.plugin_range_call(node, steps, plugin_fn)
        n = len(steps)
        if name == "time":
            return steps / 1000.0
        if name == "pi":
            return np.full(n, math.pi)
        if name == "step":
            return np.full(n, self.step / 1000.0)
        if name == "range":
            return np.full(n, (self.end - self.start) / 1000.0)
        if name == "start":
            return np.full(n, self.start / 1000.0)
        if name == "end":
            return np.full(n, self.end / 1000.0)
        if name == "timestamp":
            arg = ast.unwrap(node.args[0])
            block = await self.eval(arg, steps)
            assert isinstance(block, Block)
            if isinstance(arg, ast.VectorSelector) and block.sample_ts is not None:
                ts = block.sample_ts / 1000.0
            else:
                ts = np.broadcast_to(steps / 1000.0, block.values.shape)
            return self._names_dropped(
                Block(
                    block.labels,
                    np.array(ts, dtype=np.float64),
                    block.present,
                    np.ones(len(block), dtype=bool),
                )
            )
        args = [await self.eval(a, steps) for a in node.args]
        if name in DATE_FUNCS_SET:
            if not args:
                vals = functions.date_parts(name, steps // 1000 * 1.0)
                return Block([()], vals[None, :], np.ones((1, n), bool), np.zeros(1, bool))
            block = _block(args[0])
            return self._names_dropped(
                Block(
                    block.labels,
                    functions.date_parts(name, block.values),
                    block.present,
                    np.ones(len(block), dtype=bool),
                )
            )
        if name in functions.MATH:
            return self._names_dropped(functions.math_func(name, _block(args[0])))
        if name in ("min_of", "max_of"):
            pick = np.minimum if name == "min_of" else np.maximum
            acc = _scalar(args[0])
            for a in args[1:]:
                acc = pick(acc, _scalar(a))
            return acc
        if name == "histogram_quantiles":
            return self._names_dropped(self.histogram_quantiles(node, args))
        if name == "vector":
            return Block([()], _scalar(args[0])[None, :], np.ones((1, n), bool), np.zeros(1, bool))
        if name == "scalar":
            return functions.scalar_of(_block(args[0]), n)
        if name == "clamp":
            return self._names_dropped(
                functions.clamp(_block(args[0]), _scalar(args[1]), _scalar(args[2]))
            )
        if name == "clamp_min":
            return self._names_dropped(
                functions.clamp(_block(args[0]), _scalar(args[1]), np.full(n, np.inf))
            )
        if name == "clamp_max":
            return self._names_dropped(
                functions.clamp(_block(args[0]), np.full(n, -np.inf), _scalar(args[1]))
            )
        if name == "round":
            nearest = _scalar(args[1]) if len(args) > 1 else np.ones(n)
            return self._names_dropped(functions.round_to(_block(args[0]), nearest))
        if name == "absent":
            return functions.absent(_block(args[0]), node.args[0], n)
        if name in SORT_FUNCS:
            if self.range_query:
                self.annos.warn(
                    "PromQL warning: sort is ineffective for range queries since results are "
                    "always ordered by labels" + self.pos(node)
                )
                return _block(args[0])
            return functions.sort_rows(name, _block(args[0]), [_str(a) for a in args[1:]])
        if name == "label_replace":
            return functions.label_replace(
                _block(args[0]), _str(args[1]), _str(args[2]), _str(args[3]), _str(args[4])
            )
        if name == "label_join":
            return functions.label_join(
                _block(args[0]), _str(args[1]), _str(args[2]), [_str(a) for a in args[3:]]
            )
        if name == "histogram_quantile":
            out = functions.histogram_quantile(
                _scalar(args[0]),
                _block(args[1]),
                self.annos,
                self.pos(node.args[0]),
                self.pos(node.args[1]),
                self.delayed,
            )
            return self._names_dropped(out)
        if name == "histogram_fraction":
            out = functions.histogram_fraction(
                _scalar(args[0]),
                _scalar(args[1]),
                _block(args[2]),
                self.annos,
                self.pos(node.args[2]),
                self.delayed,
            )
            return self._names_dropped(out)
        if name in EMPTY_FOR_FLOATS:
            # These read native histogram samples only; float samples yield nothing.
            return Block.empty(n)
        raise ExecutionError(f"function {name}() is not supported by this engine")

    def histogram_quantiles(self, node: ast.Call, args: list[Value]) -> Block:
        """``histogram_quantiles(v, "label", q1, q2, ...)``: one series per quantile."""
        block, label = _block(args[0]), _str(args[1])
        parts = []
        for a, arg_node in zip(args[2:], node.args[2:], strict=True):
            q = _scalar(a)
            out = functions.histogram_quantile(
                q, block, self.annos, self.pos(arg_node), self.pos(node.args[0]), self.delayed
            )
            qtext = openmetrics_float(float(q[0]))
            labels = [tuple(sorted({**dict(lab), label: qtext}.items())) for lab in out.labels]
            parts.append(Block(labels, out.values, out.present, out.drop))
        if not parts:
            return Block.empty(len(block.values[0]) if len(block) else 0)
        return Block(
            [lab for p in parts for lab in p.labels],
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.present for p in parts]),
            np.concatenate([p.drop for p in parts]),
        )

    async def range_call(
        self,
        node: ast.Call,
        steps: np.ndarray,
        *,
        keep_names: bool = False,
        names_later: bool = False,
    ) -> Block:
        """A range function's block; ``keep_names`` skips name dropping and rollups.

        ``names_later``: the caller ignores ``__name__`` (an aggregation grouping
        without it), so when dropping it cannot make two rows equal the rows keep
        their names, flagged to drop, instead of being rebuilt.
        """
        name = node.name
        if not keep_names and self.engine.rollups is not None:
            rolled = await rollup_select.range_call(self, node, steps)
            if rolled is not None:
                return self._names_dropped(rolled)
        midx = next(i for i, a in enumerate(node.args) if a.type == ast.ValueType.MATRIX)
        others = [
            _scalar(await self.eval(a, steps)) if i != midx else None
            for i, a in enumerate(node.args)
        ]
        data, ends, rng = await self.range_arg(node.args[midx], steps)
        self.points(len(data) * len(steps), f"series x steps of {name}()")
        lo, hi = search_windows(data, ends - rng, ends)
        nonempty = hi > lo
        present = nonempty
        v: np.ndarray
        if name in ("rate", "increase", "delta"):
            v, present = rangefuncs.extrapolated_rate(
                data, lo, hi, ends, rng, name != "delta", name == "rate"
            )
            if name != "delta":
                self._non_counter_info(data, present, node.args[0])
        elif name in ("irate", "idelta"):
            v, present = rangefuncs.instant_value(data, lo, hi, name == "irate")
        elif name == "count_over_time":
            v = (hi - lo).astype(np.float64)
        elif name == "present_over_time":
            v = np.ones(lo.shape)
        elif name == "absent_over_time":
            missing = np.asarray(~nonempty.any(axis=0)) if len(data) else np.ones(len(steps), bool)
            if not missing.any():
                return Block.empty(len(steps))
            return Block(
                [functions.absent_labels(node.args[0])],
                np.ones((1, len(steps))),
                missing[None, :],
                np.ones(1, dtype=bool),
            )
        elif name in ("last_over_time", "first_over_time"):
            idx = np.where(nonempty, hi - 1 if name == "last_over_time" else lo, 0)
            v = data.v[idx] if len(data.v) else np.zeros(lo.shape)
        elif name in ("ts_of_last_over_time", "ts_of_first_over_time"):
            idx = np.where(nonempty, hi - 1 if name == "ts_of_last_over_time" else lo, 0)
            v = data.t[idx] / 1000.0 if len(data.t) else np.zeros(lo.shape)
        elif name == "sum_over_time":
            v = rangefuncs.sum_over_time(data, lo, hi)
        elif name == "avg_over_time":
            v = rangefuncs.avg_over_time(data, lo, hi)
        elif name in ("min_over_time", "max_over_time"):
            v = rangefuncs.extreme_over_time(data, lo, hi, name == "max_over_time")
        elif name in ("ts_of_min_over_time", "ts_of_max_over_time"):
            v = rangefuncs.ts_of_extreme(data, lo, hi, name == "ts_of_max_over_time")
        elif name in ("stddev_over_time", "stdvar_over_time"):
            v = rangefuncs.variance_over_time(data, lo, hi)
            if name == "stddev_over_time":
                with np.errstate(invalid="ignore"):
                    v = np.sqrt(v)
        elif name in ("changes", "resets"):
            v = rangefuncs.changes_or_resets(data, lo, hi, name == "resets")
        elif name == "deriv":
            first_t = data.t[np.where(nonempty, lo, 0)] if len(data.t) else np.zeros(lo.shape)
            v, _ = rangefuncs.linear_regression(data, lo, hi, first_t)
            present = (hi - lo) >= 2
        elif name == "predict_linear":
            dur = others[1]
            assert dur is not None
            slope, icpt = rangefuncs.linear_regression(data, lo, hi, steps[None, :])
            with np.errstate(all="ignore"):
                v = slope * dur[None, :] + icpt
            present = (hi - lo) >= 2
        elif name == "quantile_over_time":
            q = others[0]
            assert q is not None
            bad = (np.isnan(q) | (q < 0) | (q > 1)) & nonempty.any(axis=0)
            for val in np.unique(q[bad]).tolist() if bad.any() else []:
                self.annos.warn(
                    "PromQL warning: quantile value should be between 0 and 1, got "
                    + go_g(val)
                    + self.pos(node.args[0])
                )
            v = rangefuncs.quantile_over_time(data, lo, hi, q)
        elif name == "mad_over_time":
            v = rangefuncs.mad_over_time(data, lo, hi)
        elif name in ("double_exponential_smoothing", "holt_winters"):
            sf, tf = others[1], others[2]
            assert sf is not None and tf is not None
            v, present = rangefuncs.double_exponential_smoothing(data, lo, hi, sf, tf)
        else:  # pragma: no cover - RANGE_FUNCS and this chain list the same names
            raise ExecutionError(f"function {name}() is not supported")
        drop = data.drop.copy() if name in KEEP_NAME else np.ones(len(data), dtype=bool)
        block = Block(
            data.labels,
            np.asarray(v, dtype=np.float64),
            present,
            drop,
            distinct=_distinct_after_drop(node.args[midx], drop),
        ).compact()
        if keep_names or (names_later and block.distinct):
            return block
        return self._names_dropped(block)

    async def plugin_range_call(
        self, node: ast.Call, steps: np.ndarray, fn: extensions.RangeFunction
    ) -> Block:
        """A plugin's range function (see :mod:`agent.query.extensions`)."""
        scalars = [_scalar(await self.eval(a, steps)) for a in node.args[1:]]
        data, ends, rng = await self.range_arg(node.args[0], steps)
        self.points(len(data) * len(steps), f"series x steps of {node.name}()")
        lo, hi = search_windows(data, ends - rng, ends)
        v, present = fn(data, lo, hi, ends, scalars)
        drop = np.ones(len(data), dtype=bool)
        block = Block(data.labels, np.asarray(v, dtype=np.float64), present, drop).compact()
        return self._names_dropped(block)

    def _non_counter_info(self, data: RangeData, present: np.ndarray, arg: ast.Node) -> None:
        names: dict[str, None] = {}  # first-seen order, each name once
        labels = data.labels
        sel = ast.unwrap(arg)
        known = [
            m.value
            for m in (sel.selector.matchers if isinstance(sel, ast.MatrixSelector) else ())
            if m.name == METRIC_NAME and m.op is MatchOp.EQ
        ]
        rows = np.flatnonzero(present.any(axis=1)).tolist()
        if known and rows:
            rows = rows[:1]  # every row has the one name the selector asks for
        for i in rows:
            lab = labels[i]
            names[lab[0][1] if lab and lab[0][0] == METRIC_NAME else metric_name(lab)] = None
        for name in names:
            if name and not name.endswith(COUNTER_SUFFIXES):
                self.annos.info(
                    "PromQL info: metric might not be a counter, name does not end in "
                    f'_total/_sum/_count/_bucket: "{name}"' + self.pos(arg)
                )
