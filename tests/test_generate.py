"""``tsagent generate``: each pattern's shape, determinism, the local store (and its lock)
and remote write into a running app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.analytics.generate import (
    GenerateError,
    PatternOptions,
    generate,
    pattern_values,
    send_remote_write,
)
from agent.cli import main
from agent.model import Matcher
from agent.storage import StorageOptions, Store
from agent.web.app import CONTEXT_KEY, make_app
from plugins.codecs import all_codecs

START = 1_700_000_000_000


def gen(pattern: str, **kw: Any) -> Any:
    return generate("cpu_usage", pattern, start_ms=START, duration_s=300, interval_s=5, **kw)


def test_pattern_shapes() -> None:
    opts = PatternOptions()
    [sine] = gen("sine")
    assert sine.timestamps.size == 60 and (np.diff(sine.timestamps) == 5000).all()
    x = (sine.timestamps - START) / 1000
    np.testing.assert_allclose(sine.values, 50 + 20 * np.sin(2 * np.pi * x / 300))
    [line] = gen("linear")
    np.testing.assert_allclose(np.diff(line.values), opts.slope * 5)
    [noise] = generate("n", "noise", start_ms=START, duration_s=50_000, interval_s=5)
    assert noise.values.mean() == pytest.approx(50, abs=0.2)
    assert noise.values.std() == pytest.approx(2, rel=0.05)
    [spiky] = generate("s", "spike", start_ms=START, duration_s=50_000, interval_s=5)
    spikes = spiky.values > 50 + opts.spike_height / 2
    assert spikes.mean() == pytest.approx(opts.spike_probability, abs=0.005)
    assert np.median(spiky.values[~spikes]) == pytest.approx(50, abs=0.2)
    [comb] = generate("c", "combined", start_ms=START, duration_s=3000, interval_s=5, seed=1)
    # combined = sine + slope + noise + spikes: without the spikes the residual is the noise
    xc = (comb.timestamps - START) / 1000
    resid = comb.values - (50 + 20 * np.sin(2 * np.pi * xc / 300) + opts.slope * xc)
    calm = resid < opts.spike_height / 2
    assert resid[calm].std() == pytest.approx(2, rel=0.2) and (~calm).any()
    with pytest.raises(ValueError, match="unknown pattern"):
        pattern_values("square", x, np.random.default_rng(0), opts)


def test_seeds_and_series() -> None:
    a = gen("combined", seed=7, series=3, labels={"env": "demo"})
    b = gen("combined", seed=7, series=3, labels={"env": "demo"})
    c = gen("combined", seed=8, series=3, labels={"env": "demo"})
    assert [dict(s.labels) for s in a] == [
        {"__name__": "cpu_usage", "env": "demo", "instance": f"gen-{i}"} for i in range(3)
    ]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.values, y.values)
    assert not np.array_equal(a[0].values, c[0].values)
    assert not np.array_equal(a[0].values, a[1].values)
    # adding series never changes the first ones
    np.testing.assert_array_equal(gen("combined", seed=7, series=5)[0].values, a[0].values)


def test_cli_writes_the_local_store_and_respects_its_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    argv = [
        "generate", "--data-dir", str(data), "--metric", "cpu_usage", "--pattern", "sine",
        "--duration", "300", "--interval", "5", "--series", "2", "--labels", "env=demo",
        "--start", "2023-11-14T22:13:20Z", "--seed", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "120 samples of 2 series" in capsys.readouterr().out
    assert main(argv) == 0  # the same samples again: idempotent duplicates
    assert "120 duplicates" in capsys.readouterr().out

    async def check() -> None:
        store = await Store.open(
            data / "tsagent.db", StorageOptions(), {c.name: c for c in all_codecs()}
        )
        try:
            found = await store.select([Matcher.of("__name__", "=", "cpu_usage")], 0, 2**62)
            assert [dict(s.labels)["instance"] for s in found] == ["gen-0", "gen-1"]
            assert found[0].timestamps[0] == START and len(found[0].timestamps) == 60
            expected = generate(
                "cpu_usage", "sine", start_ms=START, duration_s=300, interval_s=5, series=2,
                labels={"env": "demo"}, seed=3,
            )  # fmt: skip
            np.testing.assert_array_equal(found[1].values, expected[1].values)
            # while something holds the store, the command refuses and says what to do
            assert await asyncio.to_thread(main, argv) == 2
            err = capsys.readouterr().err
            assert "--remote-write http://127.0.0.1:9201/api/v1/write" in err
        finally:
            await store.close()

    asyncio.run(check())


async def test_remote_write_into_a_running_app(
    aiohttp_client: Any, make_config: Callable[..., Any]
) -> None:
    config, host = make_config()
    client = await aiohttp_client(make_app(config, host))
    batches = gen("combined", series=3, seed=2)
    url = str(client.make_url("/api/v1/write"))
    report = await send_remote_write(url, batches, max_samples_per_request=50)
    assert report.samples == 180 and report.requests == 4  # 16 time steps of 3 series per request
    store = client.app[CONTEXT_KEY].require_store()
    found = await store.select([Matcher.of("__name__", "=", "cpu_usage")], 0, 2**62)
    assert len(found) == 3
    for s, b in zip(found, batches, strict=True):
        np.testing.assert_array_equal(s.timestamps, b.timestamps)
        np.testing.assert_array_equal(s.values, b.values)
    # re-sending older samples is refused by the receiver, and the reason comes back
    older = generate(
        "cpu_usage", "sine", start_ms=START - 600_000, duration_s=60, interval_s=5, series=3
    )
    with pytest.raises(GenerateError, match="400"):
        await send_remote_write(url, older)
    with pytest.raises(GenerateError, match="cannot reach"):
        await send_remote_write("http://127.0.0.1:9/api/v1/write", batches)
