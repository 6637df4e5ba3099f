"""SymbolState: what a symbol emits for each source event."""

from __future__ import annotations

import pytest

from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    DepthDelta,
    DepthSnapshot,
    FrameError,
    Ignored,
    Market,
    ResyncRequest,
    SourceEvent,
    StatusCause,
    Trade,
)
from operators.symbol import SymbolState

SYM = "BTCUSDT"


def delta(
    first: int, final: int, pu: int | None, bids=(), asks=(), *, t: float = 0.0
) -> DepthDelta:
    return DepthDelta(SYM, first, final, pu, final * 10, tuple(bids), tuple(asks), t, final * 100)


def snapshot(lid: int, bids=(), asks=(), *, t: float = 0.5, limit: int = 1000) -> DepthSnapshot:
    """A snapshot that holds the whole book unless ``limit`` says it was cut there.

    Its event time follows the deltas' (``u * 10``), as the exchange's does.
    """
    return DepthSnapshot(SYM, lid, tuple(bids), tuple(asks), t, lid * 10, limit=limit)


def trade(trade_id: int) -> Trade:
    return Trade(SYM, trade_id, 100, 5, 7, False, 8, 9.0)


BIDS = [(100, 1), (99, 2), (98, 3)]
ASKS = [(101, 4), (102, 5), (103, 6)]


def synced_state(depth: int = 2, market: Market = Market.FUTURES) -> SymbolState:
    state = SymbolState(SYM, depth, market)
    state.on_events([snapshot(20, BIDS, ASKS)])
    first = delta(18, 21, 17) if market is Market.FUTURES else delta(21, 21, None)
    state.on_events([first])
    assert state.sync.synced
    return state


def test_nothing_is_emitted_while_unsynced() -> None:
    state = SymbolState(SYM, 2)
    assert state.on_events([delta(10, 12, 9, [(100, 1)])]) == []
    assert state.on_events([snapshot(30, BIDS, ASKS)]) == []  # the buffered delta is stale
    assert state.on_events([delta(25, 29, 24, [(97, 1)])]) == []  # stale again
    assert not state.sync.synced
    assert state.counts["buffered"] == 1 and state.counts["stale"] == 2
    with pytest.raises(RuntimeError, match="no synced book"):
        state.view()


def test_sync_emits_status_then_top_n_view() -> None:
    state = SymbolState(SYM, 2)
    first = delta(18, 21, 17, [(100, 7), (99, 0)], [(101, 0)], t=3.0)
    assert state.on_events([snapshot(20, BIDS, ASKS, t=2.5)]) == []
    out = state.on_events([first])
    assert out == [
        BookStatus(SYM, BookState.SYNCED, "synced", 21, 3.0),
        BookUpdate(SYM, ((100, 7), (98, 3)), ((102, 5), (103, 6)), 21, 210, 3.0, 2100),
    ]


def test_each_applied_delta_emits_one_view_tagged_with_that_delta() -> None:
    state = synced_state(depth=1)
    out = state.on_events(
        [delta(22, 23, 21, [(100, 9)], t=4.0), delta(24, 25, 23, asks=[(100, 0)])]
    )
    assert out == [
        BookUpdate(SYM, ((100, 9),), ((101, 4),), 23, 230, 4.0, 2300),
        BookUpdate(SYM, ((100, 9),), ((101, 4),), 25, 250, 0.0, 2500),
    ]


def test_views_are_not_changed_by_later_events() -> None:
    state = synced_state(depth=3)
    (first,) = state.on_events([delta(22, 22, 21, [(100, 9)])])
    state.on_events([delta(23, 23, 22, [(100, 0), (99, 0)], [(101, 1)])])
    assert isinstance(first, BookUpdate)
    assert first.bids == ((100, 9), (99, 2), (98, 3)) and first.asks == tuple(ASKS)
    with pytest.raises(AttributeError):
        first.last_update_id = 0  # type: ignore[misc]


def test_snapshot_joined_with_buffered_deltas_emits_one_status_and_one_view() -> None:
    state = SymbolState(SYM, 5)
    events = [
        delta(10, 12, 9, [(90, 1)]),
        delta(13, 15, 12, [(91, 1)]),
        delta(16, 18, 15, [(92, 1)], t=6.0),
    ]
    assert state.on_events(events) == []
    out = state.on_events([snapshot(14, BIDS, ASKS, t=7.0)])
    assert out == [
        BookStatus(SYM, BookState.SYNCED, "synced", 18, 7.0),
        BookUpdate(SYM, (*BIDS, (92, 1), (91, 1)), tuple(ASKS), 18, 180, 6.0, 1800),
    ]


def test_gap_emits_resyncing_status_and_no_view() -> None:
    state = synced_state()
    out = state.on_events([delta(30, 31, 28, [(100, 5)], t=5.0)])
    assert len(out) == 1
    status = out[0]
    assert isinstance(status, BookStatus)
    assert status.state is BookState.RESYNCING and status.last_update_id == 31
    assert "pu=28" in status.reason and status.recv_time == 5.0
    assert state.on_events([delta(32, 33, 31)]) == []  # buffered until a new snapshot
    out = state.on_events([snapshot(32, BIDS, ASKS)])
    assert [type(o) for o in out] == [BookStatus, BookUpdate]
    assert out[0].state is BookState.SYNCED  # type: ignore[union-attr]
    assert out[1].last_update_id == 33  # type: ignore[union-attr]


def test_sync_then_gap_inside_one_snapshot_emits_the_gap_and_no_view() -> None:
    # Nothing was published between the join and the gap: consumers hear of the gap only.
    state = SymbolState(SYM, 2)
    state.on_events([delta(10, 12, 9), delta(20, 22, 18)])
    out = state.on_events([snapshot(11, BIDS, ASKS)])
    assert [(o.state, o.last_update_id) for o in out if isinstance(o, BookStatus)] == [
        (BookState.RESYNCING, 22),
    ]
    assert not any(isinstance(o, BookUpdate) for o in out)


def test_crossed_book_is_a_gap() -> None:
    state = synced_state()
    out = state.on_events([delta(22, 22, 21, [(101, 1)])])
    assert len(out) == 1 and isinstance(out[0], BookStatus)
    assert out[0].state is BookState.RESYNCING and "crossed" in out[0].reason


def test_duplicates_and_merged_snapshots_emit_nothing() -> None:
    state = synced_state()
    at_21 = snapshot(21, BIDS, ASKS)  # the live book's own state: merged, nothing changes
    assert state.on_events([delta(18, 21, 17), at_21, snapshot(19, BIDS, ASKS)]) == []
    assert state.counts["duplicate"] == 1 and state.counts["snapshot_merged"] == 1
    assert state.counts["snapshot_ignored"] == 1  # older than the book itself


def test_a_newer_snapshot_waits_for_the_live_book_and_is_merged_without_a_pause() -> None:
    state = synced_state()
    # The exchange at 40, after the update 22..40 that has not arrived yet.
    out = state.on_events([snapshot(40, [(100, 1), (99, 7), (98, 3)], ASKS)])
    assert out == [] and state.counts["snapshot_held"] == 1
    out = state.on_events([delta(22, 40, 21, [(99, 7)])])
    assert [type(o) for o in out] == [BookUpdate]  # no status: the book never stopped
    assert state.counts["snapshot_merged"] == 1 and state.sync.synced


def test_a_merge_that_disagrees_resyncs_to_the_exchanges_levels_and_says_so() -> None:
    state = synced_state()
    out = state.on_events([snapshot(21, [(100, 1), (99, 5), (98, 3)], ASKS)])
    assert [(type(o), getattr(o, "cause", None)) for o in out] == [
        (BookStatus, StatusCause.AUDIT),
        (BookStatus, StatusCause.SEQUENCE),
        (BookUpdate, None),
    ]
    assert "1 levels differed" in out[0].reason  # type: ignore[union-attr]
    assert out[-1].bids == ((100, 1), (99, 5))  # type: ignore[union-attr]


def test_resync_request_resets_the_book() -> None:
    state = synced_state()
    out = state.on_events([ResyncRequest(SYM, "reconnected", 8.0)])
    assert out == [BookStatus(SYM, BookState.RESYNCING, "reconnected", 21, 8.0)]
    assert not state.sync.synced and state.sync.book.depth() == (0, 0)


def test_spot_rules_are_used_for_spot_symbols() -> None:
    state = synced_state(market=Market.SPOT)
    out = state.on_events([delta(22, 22, None, [(100, 4)])])
    assert isinstance(out[-1], BookUpdate) and out[-1].bids[0] == (100, 4)
    out = state.on_events([delta(24, 24, None)])
    assert isinstance(out[0], BookStatus) and out[0].state is BookState.RESYNCING


def test_trades_pass_through_in_order_and_duplicates_are_dropped() -> None:
    state = SymbolState(SYM, 2)  # the book needs no sync for trades
    out = state.on_events([trade(5), trade(6), trade(6), trade(4), trade(7)])
    assert [t.trade_id for t in out if isinstance(t, Trade)] == [5, 6, 7]
    assert state.last_trade_id == 7
    assert state.counts["trade"] == 3 and state.counts["trade_duplicate"] == 2


def test_trade_dedup_resumes_from_a_known_id() -> None:
    state = SymbolState(SYM, 2, last_trade_id=10)
    assert state.on_events([trade(9), trade(10)]) == []
    assert state.on_events([trade(11)]) == [trade(11)]


def test_trades_and_book_updates_keep_their_relative_order() -> None:
    state = synced_state()
    out = state.on_events([trade(1), delta(22, 22, 21, [(100, 3)]), trade(2)])
    assert [type(o) for o in out] == [Trade, BookUpdate, Trade]


def test_frame_errors_and_ignored_frames_are_counted_not_emitted() -> None:
    state = SymbolState(SYM, 2)
    out = state.on_events([FrameError("bad", "{"), Ignored("kline", SYM), Ignored("bookTicker")])
    assert out == []
    assert state.counts["FrameError"] == 1 and state.counts["Ignored"] == 2


def test_unexpected_events_and_bad_depth_are_refused() -> None:
    state = SymbolState(SYM, 2)
    with pytest.raises(TypeError, match="unexpected event"):
        state.on_events(["not an event"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="depth must be positive"):
        SymbolState(SYM, 0)


def test_trade_ids_that_go_back_while_time_goes_on_restart_the_dedup() -> None:
    state = SymbolState(SYM, 2)
    assert len(state.on_events([trade(100), trade(101)])) == 2
    assert state.on_events([trade(100)]) == []  # replayed: same id, same time
    restarted = Trade(SYM, 7, 100, 5, 10_000, False, 10_000, 9.0)  # later than any trade so far
    assert state.on_events([restarted, trade(6)]) == [restarted]  # 6 is older than 7: a repeat
    assert state.counts["trade_ids_reset"] == 1 and state.last_trade_id == 7


def test_after_a_restart_of_the_service_replayed_trades_are_duplicates() -> None:
    state = SymbolState(SYM, 2, last_trade_id=500)  # resumed: the time of 500 is not known
    assert state.on_events([Trade(SYM, 499, 100, 5, 10_000, False, 10_000, 9.0)]) == []


def test_conflated_batches_publish_the_last_book_of_each_run_and_every_status() -> None:
    state = synced_state(depth=1)
    batch: list[SourceEvent] = [
        delta(22, 23, 21, [(100, 2)]),
        delta(24, 25, 23, [(100, 3)]),
        trade(7),
        delta(26, 27, 25, [(100, 4)]),
        delta(40, 41, 30),  # a gap: the book is dropped
    ]
    out = state.on_events(batch, conflate=True)
    assert [type(o).__name__ for o in out] == ["Trade", "BookUpdate", "BookStatus"]
    assert out[1].last_update_id == 27 and out[1].bids == ((100, 4),)  # type: ignore[union-attr]
    assert state.counts["shed"] == 2 and state.counts["applied"] == 3  # every update applied
    assert [type(o).__name__ for o in state.on_events([snapshot(41, BIDS, ASKS)])] == [
        "BookStatus",  # synced again: the buffered gap event joins the snapshot
        "BookUpdate",
    ]
    out = state.on_events([delta(42, 43, 41), delta(44, 45, 43)])  # not behind: every view
    assert [type(o).__name__ for o in out] == ["BookUpdate", "BookUpdate"]
