"""Re-encoding stored segments (``Store.apply_compression``) and ``compression_stats``."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agent.model import NORMAL_NAN_BITS, STALE_NAN_BITS, Labels
from agent.storage import StorageError, StorageOptions, Store, UnknownSeries
from agent.storage.recompress import CompressionResult
from plugins.codecs import all_codecs
from tests.conftest import open_store

T0 = 1_700_000_000_000
CODECS = [c.name for c in all_codecs()]
ALL = (-(2**63), 2**63 - 1)


def lab(name: str, **kv: str) -> Labels:
    return tuple(sorted({"__name__": name, **kv}.items()))


def sample_data(n: int = 1000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Irregular timestamps and values that trip codecs: NaN payloads, -0.0, inf, steps."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.integers(1, 30_000, n)).astype(np.int64)
    vals = np.round(rng.normal(100, 5, n), 2)
    vals[::50] = np.cumsum(np.ones(n))[::50]
    bits = vals.view(np.uint64).copy()
    bits[3] = STALE_NAN_BITS
    bits[4] = NORMAL_NAN_BITS
    bits[5] = np.float64(-0.0).view(np.uint64)
    bits[6] = np.float64(np.inf).view(np.uint64)
    bits[n - 1] = STALE_NAN_BITS
    return ts, bits.view(np.float64)


def db_figures(path: Path, sid: int) -> tuple[set[str], int, int, int]:
    """(codecs, segments, samples, blob bytes) of one series, straight from SQLite."""
    conn = sqlite3.connect(path / "tsagent.db")
    try:
        rows = conn.execute(
            "SELECT codec, count, length(data) FROM segments WHERE series_id = ?", (sid,)
        ).fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows}, len(rows), sum(r[1] for r in rows), sum(r[2] for r in rows)


def assert_bit_exact(got: tuple[np.ndarray, np.ndarray], ts: np.ndarray, vals: np.ndarray) -> None:
    assert got[0].tolist() == ts.tolist()
    assert got[1].view(np.uint64).tolist() == vals.view(np.uint64).tolist()


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(CODECS, CODECS)))
async def test_reencode_every_codec_pair_is_bit_exact(tmp_path: Path, src: str, dst: str) -> None:
    store = await open_store(tmp_path, src, block_size=120)
    try:
        [sid] = await store.get_or_create_series([lab("m", pair=f"{src}-{dst}")])
        ts, vals = sample_data()
        await store.append([sid] * ts.size, ts, vals)
        await store.flush(all=True)
        codecs0, segs0, n0, bytes0 = db_figures(tmp_path, sid)
        assert codecs0 == {src} and n0 == ts.size

        res = await store.apply_compression(sid, dst, block_size=300)

        assert isinstance(res, CompressionResult)
        codecs1, segs1, n1, bytes1 = db_figures(tmp_path, sid)
        assert codecs1 == {dst}
        assert res.codec_before == frozenset({src}) and res.codec_after == dst
        assert (res.segments_before, res.segments_after) == (segs0, segs1) == (9, 4)
        assert (res.bytes_before, res.bytes_after) == (bytes0, bytes1)
        assert res.samples == n1 == ts.size
        assert store.stats().segments == 4
        assert_bit_exact(await store.read_series(sid, *ALL), ts, vals)
    finally:
        await store.close()
    store = await open_store(tmp_path, src)
    try:
        assert_bit_exact(await store.read_series(sid, *ALL), ts, vals)
    finally:
        await store.close()


async def test_reads_during_reencode_see_identical_data(tmp_path: Path) -> None:
    store = await open_store(tmp_path, "raw", block_size=64)
    try:
        ids = await store.get_or_create_series([lab("m", i=str(i)) for i in range(4)])
        ts, vals = sample_data(2000)
        for sid in ids:
            await store.append([sid] * ts.size, ts, vals)
        await store.flush(all=True)
        # Some head data on top, which must be left alone and still be read.
        extra_t = np.array([ts[-1] + 1000, ts[-1] + 2000], dtype=np.int64)
        extra_v = np.array([1.5, 2.5])
        await store.append([ids[0]] * 2, extra_t, extra_v)
        want_t = np.concatenate([ts, extra_t])
        want_v = np.concatenate([vals, extra_v])

        async def reader() -> int:
            reads = 0
            for _ in range(30):
                assert_bit_exact(await store.read_series(ids[0], *ALL), want_t, want_v)
                reads += 1
                await asyncio.sleep(0)
            return reads

        codecs = ["gorilla", "zstd-xor", "delta-rle", "raw"]
        results = await asyncio.gather(
            reader(),
            *(store.apply_compression(ids[0], c, block_size=97 + i) for i, c in enumerate(codecs)),
            reader(),
        )
        assert results[0] == results[-1] == 30
        assert [r.codec_after for r in results[1:-1]] == codecs
        assert store.stats().head_samples == 2
        assert_bit_exact(await store.read_series(ids[0], *ALL), want_t, want_v)
    finally:
        await store.close()


async def test_overlapping_blocks_are_merged_like_a_read(tmp_path: Path) -> None:
    store = await open_store(tmp_path, "raw", out_of_order_window_ms=3_600_000)
    try:
        [sid] = await store.get_or_create_series([lab("ooo")])
        await store.append([sid] * 3, [T0 + 10, T0 + 20, T0 + 30], [1.0, 2.0, 3.0])
        await store.flush(all=True)
        await store.append([sid] * 2, [T0 + 15, T0 + 25], [1.5, 2.5])
        await store.flush(all=True)
        before = await store.read_series(sid, *ALL)
        res = await store.apply_compression(sid, "gorilla")
        assert (res.segments_before, res.segments_after, res.samples) == (2, 1, 5)
        after = await store.read_series(sid, *ALL)
        assert_bit_exact(after, before[0], before[1])
        assert after[0].tolist() == [T0 + 10, T0 + 15, T0 + 20, T0 + 25, T0 + 30]
    finally:
        await store.close()


async def test_unknown_codec_series_and_block_size_are_rejected(tmp_path: Path) -> None:
    store = await open_store(tmp_path, "raw")
    try:
        [sid] = await store.get_or_create_series([lab("m")])
        await store.append([sid], [T0], [1.0])
        await store.flush(all=True)
        with pytest.raises(
            ValueError,
            match=r"unknown codec 'lz4'; known codecs: delta-rle, gorilla, raw, zstd-xor",
        ):
            await store.apply_compression(sid, "lz4")
        with pytest.raises(ValueError, match="block_size"):
            await store.apply_compression(sid, "raw", block_size=0)
        with pytest.raises(UnknownSeries):
            await store.apply_compression(sid + 1, "raw")
        assert db_figures(tmp_path, sid)[0] == {"raw"}
    finally:
        await store.close()


class LossyCodec:
    """Drops the NaN payload: exactly the kind of bug the verification must catch."""

    name = "lossy"

    def encode(self, timestamps: np.ndarray, values: np.ndarray) -> bytes:
        v = np.where(np.isnan(values), np.nan, values)
        return np.asarray(timestamps, "<i8").tobytes() + np.asarray(v, "<f8").tobytes()

    def decode(self, blob: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.frombuffer(blob, "<i8", count=count),
            np.frombuffer(blob, "<f8", count=count, offset=8 * count),
        )


async def test_codec_that_does_not_round_trip_changes_nothing(tmp_path: Path) -> None:
    codecs = {c.name: c for c in all_codecs()}
    codecs["lossy"] = LossyCodec()  # type: ignore[assignment]
    store = await Store.open(tmp_path / "tsagent.db", StorageOptions(flush_interval_s=3600), codecs)
    try:
        [sid] = await store.get_or_create_series([lab("m")])
        ts, vals = sample_data(100)
        await store.append([sid] * ts.size, ts, vals)
        await store.flush(all=True)
        before = db_figures(tmp_path, sid)
        with pytest.raises(StorageError, match="did not round-trip"):
            await store.apply_compression(sid, "lossy")
        assert db_figures(tmp_path, sid) == before
        assert_bit_exact(await store.read_series(sid, *ALL), ts, vals)
        # The writer survived the failed job.
        assert (await store.append([sid], [int(ts[-1]) + 1], [0.0])).accepted == 1
    finally:
        await store.close()


async def test_compression_stats_add_up(tmp_path: Path) -> None:
    store = await open_store(tmp_path, "raw", block_size=100)
    try:
        ids = await store.get_or_create_series(
            [lab("cpu", i="1"), lab("cpu", i="2"), lab("mem"), (("job", "nameless"),)]
        )
        ts, vals = sample_data(450)
        for sid in ids:
            await store.append([sid] * ts.size, ts, vals)
        await store.flush(all=True)
        await store.apply_compression(ids[1], "gorilla")
        await store.apply_compression(ids[2], "zstd-xor", block_size=1000)
        await store.append([ids[0]] * 3, ts[-1] + np.arange(1, 4), [1.0, 2.0, 3.0])  # head only

        stats = await store.compression_stats()

        assert stats.head_samples == 3
        assert stats.total.samples == 4 * 450  # the head samples are not counted
        conn = sqlite3.connect(tmp_path / "tsagent.db")
        try:
            segs, samples, nbytes = conn.execute(
                "SELECT count(*), sum(count), sum(length(data)) FROM segments"
            ).fetchone()
        finally:
            conn.close()
        assert (stats.total.segments, stats.total.samples, stats.total.bytes) == (
            segs,
            samples,
            nbytes,
        )
        assert set(stats.by_codec) == {"raw", "gorilla", "zstd-xor"}
        assert set(stats.by_metric) == {"cpu", "mem", ""}
        for group in (stats.by_codec, stats.by_metric):
            assert sum(u.bytes for u in group.values()) == nbytes
            assert sum(u.samples for u in group.values()) == samples
            assert sum(u.segments for u in group.values()) == segs
        assert stats.by_codec["raw"].bytes_per_sample == 16.0  # 8 + 8 bytes, no header
        assert stats.by_codec["raw"].samples == 2 * 450
        assert stats.by_codec["zstd-xor"].segments == 1
        assert stats.by_metric["mem"].bytes == stats.by_codec["zstd-xor"].bytes
        cpu = stats.by_metric["cpu"]
        assert cpu.bytes == stats.by_codec["gorilla"].bytes + 450 * 16
        assert cpu.bytes_per_sample == pytest.approx(cpu.bytes / 900)
        assert stats.by_codec["zstd-xor"].bytes_per_sample < 16.0
    finally:
        await store.close()
