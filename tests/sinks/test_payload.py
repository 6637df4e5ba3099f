"""The published payloads: exact contract, exact numbers, on real books too."""

from __future__ import annotations

from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data.events import BookUpdate, Market, Trade
from sinks.payload import book_dict, encode_book, encode_trade
from sources.parse import to_units
from tests.flows.helpers import FUTURES, SPOT, recorded_events, run_books
from tests.implementations import implementation  # noqa: F401 (autouse)

DECIMALS = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999999999"), places=8)


def test_book_payload_is_exactly_the_contract():
    update = BookUpdate(
        "BTCUSDT",
        ((to_units("50000.0"), to_units("1.5")),),
        ((to_units("50001.0"), to_units("2.0")),),
        12345,
        1234567890,
        0.0,
    )
    assert encode_book(update) == (
        b'{"symbol":"BTCUSDT","bids":[[50000.0,1.5]],"asks":[[50001.0,2.0]],'
        b'"last_update_id":12345,"timestamp":1234567890}'
    )


def test_trade_payload_is_exactly_the_contract():
    trade = Trade("BTCUSDT", 123456, to_units("50000.0"), to_units("1.5"), 1234567890, True, 1, 0.0)
    assert encode_trade(trade) == (
        b'{"symbol":"BTCUSDT","trade_id":123456,"price":50000.0,"quantity":1.5,'
        b'"timestamp":1234567890,"is_buyer_maker":true}'
    )


@given(st.lists(st.tuples(DECIMALS, DECIMALS), max_size=25))
@settings(max_examples=300)
def test_numbers_are_the_nearest_double_to_the_exchange_string(levels):
    # Each published float equals float(<the decimal string Binance sent>), also past 2**53 units.
    texts = [(format(p, "f"), format(q, "f")) for p, q in levels]
    units = tuple((to_units(p), to_units(q)) for p, q in texts)
    update = BookUpdate("X", units, units, 1, 2, 0.0)
    decoded = orjson.loads(encode_book(update))
    assert decoded["bids"] == [[float(p), float(q)] for p, q in texts]
    assert encode_book(update) == orjson.dumps(book_dict(update))


def test_encoder_matches_the_dict_payload_on_real_books():
    for path, market in ((FUTURES, Market.FUTURES), (SPOT, Market.SPOT)):
        for ev in run_books(recorded_events(path), market, depth=20):
            if isinstance(ev, BookUpdate):
                assert encode_book(ev) == orjson.dumps(book_dict(ev))
