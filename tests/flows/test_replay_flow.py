"""Real Binance captures through the order-book operator under one and two workers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from market_data.events import (
    SCALE,
    BookState,
    BookStatus,
    BookUpdate,
    FrameError,
    Ignored,
    Market,
    OutputEvent,
    SourceEvent,
    Trade,
)
from sources.parse import to_units
from sources.recording import Record, read_records
from tests import reference
from tests.flows.helpers import FUTURES, SPOT, recorded_events, run_books

FUTURES_SYMBOLS = {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
SPOT_SYMBOLS = {"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"}


def by_symbol(out: Sequence[OutputEvent]) -> dict[str, list[OutputEvent]]:
    grouped: dict[str, list[OutputEvent]] = defaultdict(list)
    for ev in out:
        grouped[ev.symbol].append(ev)
    return grouped


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("path", "market", "symbols"),
    [(FUTURES, Market.FUTURES, FUTURES_SYMBOLS), (SPOT, Market.SPOT, SPOT_SYMBOLS)],
    ids=["futures", "spot"],
)
def test_every_symbol_syncs_once_without_gaps(path, market, symbols, workers):
    out = run_books(recorded_events(path), market, workers)
    grouped = by_symbol(out)
    assert set(grouped) == symbols
    for symbol, events in grouped.items():
        statuses = [e for e in events if isinstance(e, BookStatus)]
        assert [s.state for s in statuses] == [BookState.SYNCED], symbol
        ids = [e.last_update_id for e in events if isinstance(e, BookUpdate)]
        assert ids, symbol
        assert ids == sorted(set(ids)), f"{symbol}: update ids not strictly increasing"
        for e in events:
            if isinstance(e, BookUpdate):
                assert e.bids and e.asks
                assert e.bids[0][0] < e.asks[0][0], f"{symbol}: crossed book emitted"


def test_sushiusdt_final_book_matches_the_captures_readme():
    # ../shared/fixtures/binance-captures/README.md: "SUSHIUSDT ends at update id 600860425198
    # after 252 applied and 3 dropped events, best bid 7.6120 x 303, best ask 7.6160 x 267".
    out = run_books(recorded_events(FUTURES), Market.FUTURES)
    books = [e for e in out if isinstance(e, BookUpdate) and e.symbol == "SUSHIUSDT"]
    last = books[-1]
    assert last.last_update_id == 600860425198
    assert last.bids[0] == (to_units("7.6120"), to_units("303"))
    assert last.asks[0] == (to_units("7.6160"), to_units("267"))
    assert len(books) == 252  # one emitted update per applied event


def test_two_workers_emit_exactly_what_one_worker_emits():
    events = recorded_events(FUTURES)
    one = by_symbol(run_books(events, Market.FUTURES, workers=1))
    two = by_symbol(run_books(events, Market.FUTURES, workers=2))
    assert one.keys() == two.keys()
    for symbol in one:
        assert one[symbol] == two[symbol], f"{symbol}: 2-worker output differs"


def test_trades_pass_through_once_in_order():
    events = recorded_events(FUTURES)
    doubled = events + [e for e in events if type(e).__name__ == "Trade"]  # a replayed tail
    out = run_books(doubled, Market.FUTURES)
    trades = [e for e in out if isinstance(e, Trade)]
    sent = [e for e in events if isinstance(e, Trade)]
    assert len(sent) == 91
    # Order is kept per symbol (books are keyed by symbol; symbols interleave freely).
    assert by_symbol(trades) == by_symbol(sent)
    first = sent[0]
    assert first.price / SCALE > 0 and first.quantity > 0


@pytest.mark.parametrize(
    ("path", "market", "ref_market"),
    [(FUTURES, Market.FUTURES, reference.FUTURES), (SPOT, Market.SPOT, reference.SPOT)],
    ids=["futures", "spot"],
)
def test_final_books_equal_the_naive_reference(path, market, ref_market):
    records = [
        (r.kind, r.url, r.frame if r.kind == "ws" else r.body)
        for r in read_records(path)
        if isinstance(r, Record)
    ]
    expected = reference.replay_recording(records, ref_market)
    # Deep books: snapshots hold up to 1,000 levels a side, and a book is published only as
    # deep as it knows the exchange's exactly (its window), so 500 levels.
    depth = 500
    out = run_books(recorded_events(path), market, depth=depth)
    last: dict[str, BookUpdate] = {}
    for ev in out:
        if isinstance(ev, BookUpdate):
            last[ev.symbol] = ev
    assert set(last) == set(expected)
    for symbol, ref in expected.items():
        assert ref.synced and ref.breaks == 0, symbol
        ref_bids, ref_asks = ref.units()
        got = last[symbol]
        assert got.last_update_id == ref.last_id, symbol
        top_bids = tuple(sorted(ref_bids.items(), reverse=True)[:depth])
        top_asks = tuple(sorted(ref_asks.items())[:depth])
        assert got.bids == top_bids, f"{symbol}: bids differ from the reference"
        assert got.asks == top_asks, f"{symbol}: asks differ from the reference"


@pytest.mark.parametrize("workers", [1, 2])
def test_events_without_a_symbol_are_counted_and_never_reach_a_book(workers: int) -> None:
    def errors() -> float:
        return REGISTRY.get_sample_value("messages_error_total", {"symbol": ""}) or 0.0

    def answers() -> float:
        labels = {"symbol": "", "type": "subscription_response"}
        return REGISTRY.get_sample_value("messages_processed_total", labels) or 0.0

    events = recorded_events(FUTURES)[:400]
    broken: list[SourceEvent] = [FrameError("invalid JSON: x", "{oops")] * 3
    broken += [Ignored("subscription_response")] * 3
    mixed = events[:100] + broken + events[100:]
    before = errors(), answers()
    out = run_books(mixed, Market.FUTURES, workers)
    assert (errors() - before[0], answers() - before[1]) == (3, 3)
    assert sorted(map(repr, out)) == sorted(map(repr, run_books(events, Market.FUTURES, workers)))
