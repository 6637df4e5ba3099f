"""Real Binance captures through the order-book operator under one and two workers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import pytest

from market_data.events import (
    SCALE,
    BookState,
    BookStatus,
    BookUpdate,
    Market,
    OutputEvent,
    Trade,
)
from sources.parse import to_units
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
