"""The source's sequence tracker: when it asks for a snapshot (it mirrors the book's rules)."""

from __future__ import annotations

from market_data.events import Market
from sources.tracker import Phase, SequenceTracker


def live(market: Market = Market.FUTURES) -> SequenceTracker:
    tracker = SequenceTracker(market)
    assert not tracker.on_snapshot(20)
    assert not tracker.on_delta(18, 25, 17, 250)
    assert tracker.phase is Phase.LIVE
    return tracker


def test_a_replayed_frame_is_a_duplicate_and_asks_nothing() -> None:
    tracker = live()
    assert not tracker.on_delta(18, 25, 17, 250)
    assert tracker.phase is Phase.LIVE


def test_ids_that_go_back_while_time_goes_on_ask_for_a_snapshot() -> None:
    tracker = live()
    assert tracker.on_delta(3, 4, 2, 260)
    assert tracker.phase is Phase.WANT_SNAPSHOT and "ids went back" in tracker.reason
    assert not tracker.on_snapshot(3)  # the restarted exchange's snapshot joins its stream
    assert tracker.phase is Phase.LIVE and tracker.last == 4


def test_a_live_book_ignores_snapshots_it_merges_and_short_ones_never_start_a_book() -> None:
    tracker = live()
    assert not tracker.on_snapshot(30) and tracker.phase is Phase.LIVE and tracker.last == 25
    fresh = SequenceTracker(Market.FUTURES)
    assert not fresh.on_snapshot(20, seeds=False)
    assert fresh.phase is Phase.WANT_SNAPSHOT
