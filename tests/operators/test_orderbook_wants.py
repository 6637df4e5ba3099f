"""The operator tells the source which books wait for a snapshot it would not ask for itself."""

from __future__ import annotations

from market_data.events import DepthDelta, DepthSnapshot, Market
from market_data.options import OrderBookOptions
from market_data.runtime import BookWants
from operators.orderbook import BookLogic

SYM = "BTCUSDT"


def delta(u: int, bids=(), asks=()) -> DepthDelta:
    return DepthDelta(SYM, u, u, u - 1, u * 10, tuple(bids), tuple(asks), 0.0)


def test_a_book_held_back_before_its_first_publication_is_posted_and_cleared_after() -> None:
    wants = BookWants()
    logic = BookLogic(OrderBookOptions(depth=3), Market.FUTURES, None, "p_order_book", wants)
    snapshot = DepthSnapshot(
        SYM, 10, ((100, 1), (99, 1), (98, 1)), ((101, 1), (102, 1), (103, 1)), 0.0, limit=3
    )
    # The first update takes the best bid: 2 of the 3 bids published are known, the third not.
    logic.on_batch([snapshot, delta(11, bids=[(100, 0)])])
    want = wants.get(SYM)
    assert want is not None and want.window and "bids" in want.reason
    # A deeper snapshot at the book's id widens the window: published, and the want goes.
    deeper = DepthSnapshot(
        SYM, 11, ((99, 1), (98, 1), (97, 1), (96, 1)), ((101, 1), (102, 1), (103, 1)), 0.0,
        limit=1000,
    )  # fmt: skip
    out, _ = logic.on_batch([deeper])
    assert any(type(o).__name__ == "BookUpdate" for o in out)
    assert wants.get(SYM) is None


def test_a_book_that_only_awaits_its_first_snapshot_is_left_to_the_source() -> None:
    wants = BookWants()
    logic = BookLogic(OrderBookOptions(depth=3), Market.FUTURES, None, "p_order_book", wants)
    logic.on_batch([delta(11)])
    assert wants.get(SYM) is None  # the source's tracker asks for it already
