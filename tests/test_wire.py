"""agent.wire: the one varint reader and writer every decoder and encoder uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.wire import WireError, read_uvarint, uvarint


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=4))
def test_round_trip(n: int, tail: bytes) -> None:
    data = uvarint(n) + tail
    assert read_uvarint(data, 0) == (n, len(data) - len(tail))


@given(st.integers(min_value=-(2**63), max_value=-1))
def test_negative_int64_reads_back_as_twos_complement(n: int) -> None:
    data = uvarint(n)
    assert len(data) == 10
    assert read_uvarint(data, 0) == (n + 2**64, 10)


class Mine(ValueError):
    pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated varint"),
        (b"\x80\x80", "truncated varint"),
        (b"\x80" * 10 + b"\x01", "varint longer than 10 bytes"),
    ],
)
def test_malformed_raises_the_callers_error(data: bytes, message: str) -> None:
    with pytest.raises(Mine, match=message):
        read_uvarint(data, 0, Mine)
    with pytest.raises(WireError, match=message):
        read_uvarint(data, 0)


def test_bits_beyond_64_are_dropped_as_protobuf_does() -> None:
    # upb accepts a ten-byte varint whose last byte carries more than the 64th bit,
    # keeping the low 64 bits; the remote-write decoder must give the same verdict.
    assert read_uvarint(b"\xff" * 9 + b"\x02", 0) == (2**63 - 1, 10)
    assert read_uvarint(b"\xff" * 9 + b"\x01", 0) == (2**64 - 1, 10)
