"""Runs Prometheus's PromQL test scripts (``../shared/promqltest/*.test``) against our engine.

The scripts are not part of this repository; when the folder is absent the
whole module is skipped.  Each ``eval`` becomes one test, named ``file:line``.
The few evals outside this engine's scope are listed in :data:`OUT_OF_SCOPE`,
one rule per reason; everything else is expected to pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.query import Engine
from agent.query.parser import parse
from tests.promql.runner import Dataset, run_eval
from tests.promql.script import Eval, parse_script

SCRIPTS = Path(__file__).resolve().parents[1].parent / "shared" / "promqltest"


@dataclass(frozen=True)
class OutOfScope:
    reason: str
    applies: Callable[[Eval, Dataset], bool]


def _uses_native_histograms(ev: Eval, data: Dataset) -> bool:
    if any(v.histogram for _, values, _ in ev.series for v in values):
        return True
    try:
        return data.selects_histograms(parse(ev.expr))
    except Exception:  # noqa: BLE001 - unparsable expressions are judged by the eval itself
        return False


# The one list of evals this engine does not claim to handle, each with its reason.
OUT_OF_SCOPE: list[OutOfScope] = [
    OutOfScope(
        "native histograms: the eval reads series holding native-histogram samples "
        "(written {{...}} or created by load_with_nhcb) or expects histogram results; "
        "tsagent stores float samples only",
        _uses_native_histograms,
    ),
]


def _collect() -> Iterator[Eval]:
    if not SCRIPTS.is_dir():
        return
    for path in sorted(SCRIPTS.glob("*.test")):
        yield from parse_script(path)


EVALS = list(_collect())
_DATASETS: dict[int, Dataset] = {}
RESULTS: dict[str, Counter[str]] = {}


def _dataset(ev: Eval) -> Dataset:
    key = id(ev.loads)
    if key not in _DATASETS:
        _DATASETS[key] = Dataset(ev.loads)
    return _DATASETS[key]


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not RESULTS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("PromQL conformance per file (passed / failed / out of scope):")
        for name in sorted(RESULTS):
            c = RESULTS[name]
            reporter.write_line(f"  {name:28} {c['passed']:4} / {c['failed']:3} / {c['skipped']:3}")


@pytest.mark.skipif(not SCRIPTS.is_dir(), reason=f"PromQL test scripts not found at {SCRIPTS}")
@pytest.mark.parametrize("ev", EVALS or [None], ids=[e.id for e in EVALS] or ["no-scripts"])
async def test_promql_script(ev: Eval | None) -> None:
    assert ev is not None
    counts = RESULTS.setdefault(ev.file, Counter())
    data = _dataset(ev)
    for rule in OUT_OF_SCOPE:
        if rule.applies(ev, data):
            counts["skipped"] += 1
            pytest.skip(f"out of scope: {rule.reason}")
    engine = Engine(
        data.store, lookback_ms=300_000, subquery_step_ms=60_000, delayed_name_removal=True
    )
    try:
        await run_eval(ev, engine)
    except BaseException:
        counts["failed"] += 1
        raise
    counts["passed"] += 1
