"""The PromQL evaluator: :class:`Engine` with ``instant`` and ``range`` queries.

Every node is evaluated once for all steps of a query (see :mod:`.blocks`),
which is what makes range queries cheap: ``rate(x[5m])`` over 500 steps is a
handful of numpy calls per query, not per step.  Semantics follow Prometheus 3:
left-open range and lookback windows, staleness markers, ``@``/``offset``,
subqueries aligned to absolute multiples of their step, and (optionally)
delayed ``__name__`` removal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.model import METRIC_NAME
from agent.query import (
    aggregation,
    ast,
    binops,
)
from agent.query.blocks import (
    DUPLICATE_LABELSET,
    Block,
    RangeData,
    drop_name,
    merge_same_labels,
    search_windows,
    selector_block,
)
from agent.query.calls import (
    KEEP_NAME,
    MAX_POINTS,
    NAME_BLIND_AGGREGATIONS,
    RANGE_FUNCS,
    FunctionCalls,
    Value,
    _range_data,
)
from agent.query.errors import BadDataError, ExecutionError
from agent.query.limits import QueryBudget
from agent.query.parser import parse
from agent.query.queryable import Queryable, select_arrays
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
class _Evaluator(FunctionCalls):
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
            values = value.astype(np.float64)
            return Matrix(
                annotations=self.annos,
                columns=MatrixColumns([()], [len(steps)], steps, values, steps),
            )
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
        if pres.all():  # every series at every step: the steps are everyone's times
            flat = np.empty(pres.size, dtype=np.int64)
            flat.reshape(pres.shape)[:] = steps  # (np.broadcast_to's checks cost more)
            columns = MatrixColumns(block.labels, ends, flat, block.values.reshape(-1), steps)
        else:
            at = steps[pres.nonzero()[1]]
            columns = MatrixColumns(block.labels, ends, at, block.values[pres])
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
        latest = getattr(self.engine.queryable, "select_latest", None)
        if latest is not None and len(when) == 1:  # inline: maybe from the newest samples
            data = _range_data(await latest(list(sel.matchers), int(when[0]), lookback), True)
        else:
            data = await self.fetch(sel, int(when.min()) - lookback + 1, int(when.max()), True)
        if len(data) == 0:
            return Block.empty(len(steps))
        self.points(len(data) * len(steps), "series x steps of a selector")
        if len(data.t) == 0:
            return Block.empty(len(steps))
        return selector_block(data, when, lookback)

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
