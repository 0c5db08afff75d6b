"""The PromQL evaluator: :class:`Engine` with ``instant`` and ``range`` queries.

Every node is evaluated once for all steps of a query (see :mod:`.blocks`),
which is what makes range queries cheap: ``rate(x[5m])`` over 500 steps is a
handful of numpy calls per query, not per step.  Semantics follow Prometheus 3:
left-open range and lookback windows, staleness markers, ``@``/``offset``,
subqueries aligned to absolute multiples of their step, and (optionally)
delayed ``__name__`` removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.model import METRIC_NAME, MatchOp, metric_name
from agent.query import (
    aggregation,
    ast,
    binops,
    extensions,
    functions,
    rangefuncs,
    rollup_select,
)
from agent.query.blocks import (
    DUPLICATE_LABELSET,
    Block,
    RangeData,
    drop_name,
    is_stale,
    merge_same_labels,
    search_windows,
)
from agent.query.errors import BadDataError, ExecutionError
from agent.query.limits import QueryBudget
from agent.query.numfmt import go_g, openmetrics_float
from agent.query.parser import parse
from agent.query.queryable import Queryable, SelectedArraysLike, select_arrays
from agent.query.values import (
    Annotations,
    Matrix,
    MatrixColumns,
    Result,
    Sample,
    Scalar,
    Series,
    String,
    Vector,
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


@dataclass
class Engine:
    """Evaluates PromQL against a :class:`~agent.query.queryable.Queryable`.

    ``delayed_name_removal`` mirrors Prometheus's ``promql-delayed-name-removal``
    feature (``__name__`` is dropped at the end of evaluation, not by each
    function); it is off by default, as in Prometheus 3.
    """

    queryable: Queryable
    lookback_ms: int = 300_000
    subquery_step_ms: int = 60_000
    delayed_name_removal: bool = False
    # Rollups to answer *_over_time from when provably exact (agent.query.rollup_select);
    # with rollup_resolution_ms set, from that resolution regardless (approximate).
    rollups: RollupSource | None = None
    rollup_resolution_ms: int = 0
    # Deadline, point and memory limits checked during evaluation (agent.query.limits);
    # None: unbounded, for tests and the conformance runner.
    budget: QueryBudget | None = None

    def parse(self, expr: str) -> ast.Node:
        return parse(expr)

    async def instant(
        self, expr: str | ast.Node, time_ms: int, *, node: ast.Node | None = None
    ) -> Result:
        """Evaluate at ``time_ms``; ``node``: ``expr`` already parsed (``expr`` still
        gives annotation positions)."""
        if node is None:
            node = parse(expr) if isinstance(expr, str) else expr
        return await _Evaluator(self, expr, time_ms, time_ms, 0).run(node)

    async def range(
        self,
        expr: str | ast.Node,
        start_ms: int,
        end_ms: int,
        step_ms: int,
        times: np.ndarray | None = None,
        *,
        node: ast.Node | None = None,
    ) -> Result:
        """Evaluate at start, start + step, ... <= end, or at ``times`` when given.

        ``times`` (sorted int64 ms within [start, end]) serves calendar-aligned
        steps, which are not evenly spaced across DST changes; ``step()`` then
        still answers the nominal ``step_ms``.
        """
        if node is None:
            node = parse(expr) if isinstance(expr, str) else expr
        if step_ms <= 0:
            raise BadDataError(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if end_ms < start_ms:
            raise BadDataError("end timestamp must not be before start time")
        if (end_ms - start_ms) // step_ms > MAX_POINTS:  # as Prometheus: 11,001 points pass
            raise BadDataError(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        if node.type not in (ast.ValueType.SCALAR, ast.ValueType.VECTOR):
            kind = {"matrix": "range vector", "string": "string"}[node.type.value]
            raise BadDataError(
                f'invalid expression type "{kind}" for range query, '
                "must be Scalar or instant Vector"
            )
        return await _Evaluator(self, expr, start_ms, end_ms, step_ms, times=times).run(node)


@dataclass
class _Evaluator:
    engine: Engine
    text: str | ast.Node
    start: int
    end: int
    step: int
    annos: Annotations = field(default_factory=Annotations)
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = ast.Positions(self.text if isinstance(self.text, str) else "")
        self.delayed = self.engine.delayed_name_removal
        self.range_query = self.start != self.end
        self.budget = self.engine.budget

    def points(self, n: int, what: str) -> None:
        """Refuse, before allocating it, an array of ``n`` points past the query's budget."""
        if self.budget is not None:
            self.budget.points(n, what)

    def pos(self, node: ast.Node | int) -> str:
        p = node if isinstance(node, int) else getattr(node, "pos", -1)
        return self.positions.format(p)

    # --- driver ------------------------------------------------------------------------

    async def run(self, node: ast.Node) -> Result:
        if self.times is not None:
            steps = np.asarray(self.times, dtype=np.int64)
        else:
            steps = np.arange(self.start, self.end + 1, max(self.step, 1), dtype=np.int64)
        if node.type == ast.ValueType.MATRIX:
            return await self._matrix_result(node, steps)
        value = await self.eval(node, steps)
        if isinstance(value, str):
            return String(self.start, value, self.annos)
        if isinstance(value, np.ndarray):
            if not self.range_query:
                return Scalar(self.start, float(value[0]), self.annos)
            return Matrix([Series((), steps, value.astype(np.float64))], self.annos)
        block = self._cleanup(value)
        if not self.range_query:
            samples = [
                Sample(block.labels[i], self.start, float(block.values[i, 0]))
                for i in np.flatnonzero(block.present[:, 0]).tolist()
            ]
            if not block.distinct and len({s.labels for s in samples}) != len(samples):
                raise ExecutionError(DUPLICATE_LABELSET)
            return Vector(samples, self.annos)
        block = merge_same_labels(block.compact())
        labels = block.labels
        order = sorted(range(len(labels)), key=labels.__getitem__)
        if order != list(range(len(labels))):
            block = block.take(order)
        # All rows' present points as two flat arrays: no Python object per series
        # until someone asks the Matrix for its Series.
        pres = block.present
        ends = np.cumsum(pres.sum(axis=1)).tolist()
        columns = MatrixColumns(
            block.labels, ends, np.broadcast_to(steps, pres.shape)[pres], block.values[pres]
        )
        return Matrix(annotations=self.annos, columns=columns)

    def _cleanup(self, block: Block) -> Block:
        if not block.drop.any():
            return block
        labels = [
            drop_name(lab) if d else lab for lab, d in zip(block.labels, block.drop, strict=True)
        ]
        return Block(
            labels,
            block.values,
            block.present,
            np.zeros(len(labels), dtype=bool),
            distinct=block.distinct,
        )

    async def _matrix_result(self, node: ast.Node, steps: np.ndarray) -> Matrix:
        data, ends, rng = await self.range_arg(node, steps)
        lo, hi = search_windows(data, ends - rng, ends)
        series = []
        for i in range(len(data)):
            a, b = int(lo[i, 0]), int(hi[i, 0])
            if b > a:
                lab = drop_name(data.labels[i]) if data.drop[i] else data.labels[i]
                series.append(Series(lab, data.t[a:b], data.v[a:b]))
        series.sort(key=lambda s: s.labels)
        return Matrix(series, self.annos)

    # --- helpers -----------------------------------------------------------------------

    def _at(self, at: ast.At | None) -> int | None:
        if at is None:
            return None
        if at.kind == ast.AtKind.START:
            return self.start
        if at.kind == ast.AtKind.END:
            return self.end
        return at.ms

    def _eval_times(self, at: ast.At | None, offset: int, steps: np.ndarray) -> np.ndarray:
        fixed = self._at(at)
        base = steps if fixed is None else np.full(len(steps), fixed, dtype=np.int64)
        return base - offset

    def _names_dropped(self, block: Block) -> Block:
        """Apply name dropping now unless delayed name removal is on."""
        if self.delayed or not block.drop.any():
            return block
        return merge_same_labels(self._cleanup(block))

    async def fetch(self, sel: ast.VectorSelector, lo: int, hi: int, keep_stale: bool) -> RangeData:
        found = await select_arrays(self.engine.queryable, list(sel.matchers), lo, hi)
        return _range_data(found, keep_stale)

    async def range_arg(
        self, node: ast.Node, steps: np.ndarray
    ) -> tuple[RangeData, np.ndarray, int]:
        """Samples behind a range vector and each step's window end."""
        node = ast.unwrap(node)
        if isinstance(node, ast.MatrixSelector):
            sel = node.selector
            ends = self._eval_times(sel.at, sel.offset_ms, steps)
            data = await self.fetch(
                sel, int(ends.min()) - node.range_ms + 1, int(ends.max()), False
            )
            return data, ends, node.range_ms
        if isinstance(node, ast.Subquery):
            ends = self._eval_times(node.at, node.offset_ms, steps)
            step = node.step_ms or self.engine.subquery_step_ms
            first = int(ends.min()) - node.range_ms
            inner_start = (first // step + 1) * step
            # Steps of the inner query, counted before np.arange allocates them: a
            # [30d:1ms] subquery is 2.6e9 steps, refused here rather than allocated.
            self.points(max(0, (int(ends.max()) - inner_start) // step + 1), "subquery steps")
            inner = np.arange(inner_start, int(ends.max()) + 1, step, dtype=np.int64)
            if len(inner) == 0:
                empty = RangeData(
                    [], np.zeros(0, bool), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0)
                )
                return empty, ends, node.range_ms
            value = await self.eval(node.expr, inner)
            if isinstance(value, np.ndarray):
                value = Block(
                    [()], value[None, :], np.ones((1, len(inner)), bool), np.zeros(1, bool)
                )
            if not isinstance(value, Block):
                raise ExecutionError("subquery is only allowed on instant vector")
            block = value.compact()
            rows, cols = np.nonzero(block.present)
            offsets = np.zeros(len(block) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(block.present.sum(axis=1))
            data = RangeData(
                block.labels, block.drop.copy(), offsets, inner[cols], block.values[rows, cols]
            )
            return data, ends, node.range_ms
        raise ExecutionError(f"expected a range vector, got {type(node).__name__}")

    # --- evaluation --------------------------------------------------------------------

    async def eval(self, node: ast.Node, steps: np.ndarray) -> Value:
        if self.budget is not None:
            self.budget.check()
        if isinstance(node, ast.Paren):
            return await self.eval(node.expr, steps)
        if isinstance(node, ast.NumberLiteral):
            return np.full(len(steps), node.value)
        if isinstance(node, ast.StringLiteral):
            return node.value
        if isinstance(node, ast.VectorSelector):
            return await self.vector_selector(node, steps)
        if isinstance(node, ast.Unary):
            val = await self.eval(node.expr, steps)
            if isinstance(val, np.ndarray):
                return -val
            assert isinstance(val, Block)
            return self._names_dropped(
                Block(val.labels, -val.values, val.present, np.ones(len(val), dtype=bool))
            )
        if isinstance(node, ast.Binary):
            return await self.binary(node, steps)
        if isinstance(node, ast.Aggregate):
            return await self.aggregate(node, steps)
        if isinstance(node, ast.Call):
            return await self.call(node, steps)
        if isinstance(node, ast.MatrixSelector | ast.Subquery):
            raise ExecutionError("range vector is not allowed here")
        raise ExecutionError(f"unhandled expression {type(node).__name__}")

    async def vector_selector(self, sel: ast.VectorSelector, steps: np.ndarray) -> Block:
        lookback = self.engine.lookback_ms
        when = self._eval_times(sel.at, sel.offset_ms, steps)
        data = await self.fetch(sel, int(when.min()) - lookback + 1, int(when.max()), True)
        if len(data) == 0:
            return Block.empty(len(steps))
        self.points(len(data) * len(steps), "series x steps of a selector")
        lo, hi = search_windows(data, when - lookback, when)
        has = hi > lo
        idx = np.where(has, hi - 1, 0)
        values = data.v[idx]
        present = has & ~is_stale(values)
        # A selector's series have distinct label sets and keep their names.
        block = Block(
            data.labels, values, present, np.zeros(len(data), dtype=bool), data.t[idx], True
        )
        return block.compact()

    async def binary(self, node: ast.Binary, steps: np.ndarray) -> Value:
        lhs = await self.eval(node.lhs, steps)
        rhs = await self.eval(node.rhs, steps)
        if isinstance(lhs, np.ndarray) and isinstance(rhs, np.ndarray):
            return binops.scalar_scalar(node, lhs, rhs)
        if isinstance(lhs, Block) and isinstance(rhs, np.ndarray):
            return binops.vector_scalar(node, lhs, rhs, False, self.delayed)
        if isinstance(lhs, np.ndarray) and isinstance(rhs, Block):
            return binops.vector_scalar(node, rhs, lhs, True, self.delayed)
        assert isinstance(lhs, Block) and isinstance(rhs, Block)
        if node.op in ast.SET_OPS:
            return binops.set_op(node, lhs, rhs)
        return binops.vector_vector(node, lhs, rhs, self.delayed)

    async def aggregate(self, node: ast.Aggregate, steps: np.ndarray) -> Block:
        param: np.ndarray | str | None = None
        if node.param is not None:
            p = await self.eval(node.param, steps)
            if isinstance(p, Block):
                raise ExecutionError("aggregation parameter must be a scalar")
            param = p
        inner = ast.unwrap(node.expr)
        if (
            isinstance(inner, ast.Call)
            and inner.name in RANGE_FUNCS
            and inner.name not in KEEP_NAME
            and node.op in NAME_BLIND_AGGREGATIONS
            and (node.without or METRIC_NAME not in node.grouping)
        ):
            # The grouping drops __name__ anyway: skip rebuilding every input label
            # set without it (52,000 tuples for sum by (mode) (rate(cpu[1m]))).
            if self.budget is not None:
                self.budget.check()
            block: Value = await self.range_call(inner, steps, names_later=True)
        else:
            block = await self.eval(node.expr, steps)
        if not isinstance(block, Block):
            raise ExecutionError("aggregation expects an instant vector")
        out = aggregation.aggregate(
            node.op,
            block,
            tuple(sorted(node.grouping)),
            node.without,
            param,
            self.annos,
            self.pos(node.param) if node.param is not None else "",
            not self.range_query,
        )
        return self._names_dropped(out)

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
