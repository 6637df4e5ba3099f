"""Memory stays bounded when the exchange keeps adding levels far from the touch, and while a
symbol waits for a snapshot that does not come.
"""

from __future__ import annotations

import tracemalloc

from market_data.events import DepthDelta, DepthSnapshot, Market, Trade
from operators.symbol import SymbolState
from operators.sync import Outcome

MAX_LEVELS = 500
MID = 10_000_000


def far_delta(u: int, width: int = 8) -> DepthDelta:
    """Moves the touch a little and adds ``width`` new levels ever farther away on each side."""
    bids = [(MID - 1 - (u % 7), u), *((MID - 1000 - u * width - k, 1) for k in range(width))]
    asks = [(MID + 1 + (u % 5), u), *((MID + 1000 + u * width + k, 1) for k in range(width))]
    return DepthDelta("FARUSDT", u, u, u - 1, u, tuple(bids), tuple(asks), 0.0)


def feed(state: SymbolState, first: int, last: int) -> None:
    for start in range(first, last, 100):
        batch: list[DepthDelta | Trade] = []
        for u in range(start, min(start + 100, last)):
            batch += [far_delta(u), Trade("FARUSDT", u, MID, 1, u, False, u, 0.0)]
        state.on_events(batch)


def test_far_levels_are_pruned_and_memory_stays_flat() -> None:
    state = SymbolState("FARUSDT", depth=20, max_levels=MAX_LEVELS)
    snapshot = DepthSnapshot("FARUSDT", 0, ((MID - 1, 1),), ((MID + 1, 1),), 0.0, limit=1000)
    state.on_events([snapshot])
    tracemalloc.start()
    try:
        feed(state, 1, 1_000)  # the book fills up to max_levels per side
        warm, _ = tracemalloc.get_traced_memory()
        feed(state, 1_000, 5_000)  # 32,000 more far levels per side
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sync = state.sync
    assert sync.synced and sync.last_update_id == 4_999
    assert sync.book.depth() == (MAX_LEVELS, MAX_LEVELS)
    assert sync.book.pruned >= 2 * (4_999 * 8 - MAX_LEVELS)
    # The levels kept are the ones nearest the touch: those are never pruned.
    assert {MID - 1 - k for k in range(7)} <= set(sync.book.bids())
    assert {MID + 1 + k for k in range(5)} <= set(sync.book.asks())
    assert state.view().bids[0] == (MID - 1, 4_998)  # the last u with u % 7 == 0
    assert end - warm < 256 * 1024, f"grew by {(end - warm) / 1024:.0f} KiB after warm-up"


def test_deltas_buffered_without_a_snapshot_are_bounded() -> None:
    state = SymbolState("FARUSDT", depth=20, max_buffer=1_000)
    tracemalloc.start()
    try:
        feed(state, 1, 2_000)
        warm, _ = tracemalloc.get_traced_memory()
        feed(state, 2_000, 12_000)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(state.sync.buffer) == 1_000
    assert state.counts[Outcome.BUFFER_OVERFLOW.value] == 12_000 - 1 - 1_000
    assert end - warm < 256 * 1024, f"grew by {(end - warm) / 1024:.0f} KiB after warm-up"
    # The newest deltas are kept: a snapshot now still syncs the book.
    snapshot = DepthSnapshot("FARUSDT", 11_500, ((MID - 1, 1),), ((MID + 1, 1),), 0.0, limit=100)
    out = state.on_events([snapshot])
    assert state.sync.synced and state.sync.last_update_id == 11_999, out[-1:]


def test_market_is_futures_by_default() -> None:
    assert SymbolState("FARUSDT", depth=1).sync.market is Market.FUTURES
