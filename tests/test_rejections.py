"""Store rejections mapped back to the inputs that sent them (one helper for every importer)."""

from __future__ import annotations

from agent.rejections import rejection_message, rejection_positions
from agent.storage.options import Rejection


def test_each_rejection_goes_to_the_last_unclaimed_sender() -> None:
    ids = [1, 2, 1, 1, 3]
    ts = [10, 10, 10, 20, 10]
    rejected = [
        Rejection(1, 10, "duplicate_timestamp"),
        Rejection(1, 10, "duplicate_timestamp"),
        Rejection(1, 10, "duplicate_timestamp"),  # only two inputs sent (1, 10)
        Rejection(3, 10, "out_of_order"),
        Rejection(9, 10, "out_of_order"),  # nobody sent it
    ]
    assert rejection_positions(rejected, ids, ts) == [2, 0, None, 4, None]
    assert rejection_positions([], ids, ts) == []


def test_messages() -> None:
    dup = rejection_message(Rejection(1, 1, "duplicate_timestamp"), "hint")
    assert dup.startswith("a different value is already stored")
    old = rejection_message(Rejection(1, 1, "out_of_order"), "add backfill=true")
    assert old.endswith("series; add backfill=true")
    limit = rejection_message(Rejection(0, 1, "series_limit", "max_series 10"), "hint")
    assert limit == "refused by the store (series_limit): max_series 10"
