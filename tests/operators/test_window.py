"""A book never publishes a price range it does not know exactly (the tracked exact window).

A book built from a ``limit=N`` snapshot is exact between the snapshot's deepest bid and deepest
ask (and at any price a later delta set). When the exchange's book is deeper than the snapshot
and the touch later moves past the snapshot's deepest level, the levels that sat there unchanged
since the snapshot were never known: publishing then would show a wrong book. These tests build
such an exchange (deep sides, sweeps through the top) and compare every published view with it.
"""

from __future__ import annotations

import random

from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    DepthDelta,
    DepthSnapshot,
    Level,
    Market,
    StatusCause,
)
from operators.symbol import SymbolState

SYM = "BTCUSDT"
DEPTH = 10


class DeepExchange:
    """An exchange book of ``levels`` levels a side on a grid of 1, and its futures update ids."""

    def __init__(self, levels: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.bids = {10_000 - i: 1 + self.rng.randrange(9) for i in range(levels)}
        self.asks = {10_001 + i: 1 + self.rng.randrange(9) for i in range(levels)}
        self.u = 1_000
        self.truth: dict[int, tuple[tuple[Level, ...], tuple[Level, ...]]] = {}  # u -> top after u

    def snapshot(self, limit: int) -> DepthSnapshot:
        bids = tuple(sorted(self.bids.items(), reverse=True)[:limit])
        asks = tuple(sorted(self.asks.items())[:limit])
        return DepthSnapshot(SYM, self.u, bids, asks, 0.0, limit=limit)

    def top(self, depth: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        return (
            tuple(sorted(self.bids.items(), reverse=True)[:depth]),
            tuple(sorted(self.asks.items())[:depth]),
        )

    def event(self, bids: dict[int, int], asks: dict[int, int]) -> DepthDelta:
        for side, changes in ((self.bids, bids), (self.asks, asks)):
            for price, qty in changes.items():
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        prev, self.u = self.u, self.u + 1 + self.rng.randrange(3)
        self.truth[self.u] = self.top(DEPTH)
        return DepthDelta(
            SYM, prev + 1, self.u, prev, self.u, tuple(bids.items()), tuple(asks.items()), 0.0
        )

    def sweep_bids(self, levels: int) -> DepthDelta:
        """A seller takes the best ``levels`` bids."""
        gone = sorted(self.bids, reverse=True)[:levels]
        return self.event(dict.fromkeys(gone, 0), {})

    def quote_near_touch(self) -> DepthDelta:
        """Makers change a few levels near the touch, as the exchange does all the time."""
        best_bid, best_ask = max(self.bids), min(self.asks)
        bids = {best_bid - self.rng.randrange(5): 1 + self.rng.randrange(9) for _ in range(2)}
        asks = {best_ask + self.rng.randrange(5): 1 + self.rng.randrange(9) for _ in range(2)}
        return self.event(bids, asks)


def run(state: SymbolState, ex: DeepExchange, events: list[DepthDelta]) -> list[BookUpdate]:
    """Feed ``events``; check every view published against the exchange as it stood then."""
    published = []
    for ev in events:
        for out in state.on_events([ev]):
            if isinstance(out, BookUpdate):
                assert (out.bids, out.asks) == ex.truth[out.last_update_id], (
                    f"a wrong book was published at u={out.last_update_id}"
                )
                published.append(out)
    return published


def synced(ex: DeepExchange, limit: int) -> SymbolState:
    state = SymbolState(SYM, DEPTH, Market.FUTURES)
    state.on_events([ex.snapshot(limit)])
    out = state.on_events([ex.quote_near_touch()])
    assert any(isinstance(o, BookStatus) and o.state is BookState.SYNCED for o in out)
    return state


def test_a_sweep_past_the_snapshots_deepest_level_is_not_published() -> None:
    ex = DeepExchange(levels=300)
    state = synced(ex, limit=100)
    # Sellers take 40 bids at a time: after the third sweep the top 10 bids lie beyond the
    # snapshot's 100 levels, at prices the book never saw (they never changed).
    events = []
    for _ in range(4):
        events.append(ex.sweep_bids(40))
        events.extend(ex.quote_near_touch() for _ in range(3))
    run(state, ex, events)


def test_the_book_says_why_it_stopped_publishing() -> None:
    ex = DeepExchange(levels=300)
    state = synced(ex, limit=100)
    out = state.on_events([ex.sweep_bids(95)])
    statuses = [o for o in out if isinstance(o, BookStatus)]
    assert [s.state for s in statuses] == [BookState.RESYNCING]
    assert "bids" in statuses[0].reason and "known" in statuses[0].reason
    assert not any(isinstance(o, BookUpdate) for o in out)


def test_a_book_whose_snapshot_held_the_whole_side_publishes_through_sweeps() -> None:
    # 80 levels a side, a snapshot of up to 100: the snapshot holds everything, so the book is
    # exact however far the touch moves.
    ex = DeepExchange(levels=80)
    state = synced(ex, limit=100)
    events = [ex.sweep_bids(30), ex.quote_near_touch(), ex.sweep_bids(30), ex.quote_near_touch()]
    assert len(run(state, ex, events)) == len(events)


def partial(ex: DeepExchange) -> DepthSnapshot:
    """What a partial depth frame carries: the top 20 at the exchange's last update id."""
    snap = ex.snapshot(20)
    return DepthSnapshot(SYM, snap.last_update_id, snap.bids, snap.asks, 0.0, limit=20,
                         from_stream=True)  # fmt: skip


def test_a_miss_mended_by_a_partial_frame_in_the_same_batch_leaves_no_status() -> None:
    ex = DeepExchange(levels=300)
    state = synced(ex, limit=20)  # a book started from a partial frame: 20 levels known a side
    # A seller takes 15 bids: 5 of the 20 known are left, fewer than the 10 published.
    sweep = ex.sweep_bids(15)
    out = state.on_events([sweep, partial(ex)])  # the frame for the same update, right after
    assert [type(o) for o in out] == [BookUpdate]  # the view at that update, no status pair
    view = out[0]
    assert isinstance(view, BookUpdate) and view.bids == ex.truth[sweep.final_update_id][0]
    assert state.counts["window_miss"] == 1  # still counted (book_window_misses_total)


def test_a_miss_that_outlasts_its_batch_is_reported_and_so_is_its_end() -> None:
    ex = DeepExchange(levels=300)
    state = synced(ex, limit=20)
    out = state.on_events([ex.sweep_bids(15)])
    assert [(type(o), getattr(o, "cause", None)) for o in out] == [(BookStatus, StatusCause.WINDOW)]
    out = state.on_events([partial(ex)])
    assert [(type(o), getattr(o, "state", None)) for o in out] == [
        (BookStatus, BookState.SYNCED),
        (BookUpdate, None),
    ]


def test_a_gap_after_a_miss_in_one_batch_keeps_both_statuses() -> None:
    ex = DeepExchange(levels=300)
    state = synced(ex, limit=20)
    sweep = ex.sweep_bids(15)
    ex.quote_near_touch()  # lost
    after = ex.quote_near_touch()
    out = state.on_events([sweep, after])
    assert [(o.state, o.cause) for o in out if isinstance(o, BookStatus)] == [
        (BookState.RESYNCING, StatusCause.WINDOW),
        (BookState.RESYNCING, StatusCause.SEQUENCE),
    ]
    # A new book starts from the frame (at the breaking update's id, which joins it again).
    out = state.on_events([partial(ex), ex.quote_near_touch()])
    assert [type(o) for o in out] == [BookStatus, BookUpdate, BookUpdate]
