"""The REST aggTrades body parser: exact trades in id order, and errors as values with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data.events import FrameError, Trade
from sources.parse import EXCERPT_CHARS, parse_agg_trades

E8 = 10**8

# The shape of Binance's documented answers (USD-M Futures; spot adds "M").
FUTURES_BODY = (
    '[{"a":16599292,"p":"1.01100","q":"10","f":23961322,"l":23961322,"T":1626992741421,'
    '"m":false},{"a":16599293,"p":"1.01000","q":"2.5","f":23961323,"l":23961325,'
    '"T":1626992741499,"m":true}]'
)
SPOT_BODY = (
    '[{"a":15683430,"p":"0.35280000","q":"58.00000000","f":19862790,"l":19862790,'
    '"T":1633998523963,"m":true,"M":true}]'
)


def test_futures_page_becomes_trades_with_trade_time_as_event_time() -> None:
    trades = parse_agg_trades("CTKUSDT", FUTURES_BODY, 1626992742.5, 9)
    assert trades == (
        Trade("CTKUSDT", 16599292, 101_100_000, 10 * E8, 1626992741421, False, 1626992741421,
              1626992742.5, 9),
        Trade("CTKUSDT", 16599293, 101_000_000, 250_000_000, 1626992741499, True, 1626992741499,
              1626992742.5, 9),
    )  # fmt: skip


def test_spot_page_and_empty_page() -> None:
    (trade,) = parse_agg_trades("NKNUSDT", SPOT_BODY.encode(), 2.0)  # type: ignore[misc]
    assert (trade.trade_id, trade.price, trade.quantity) == (15683430, 35_280_000, 58 * E8)
    assert trade.is_buyer_maker is True and trade.symbol == "NKNUSDT"
    assert parse_agg_trades("NKNUSDT", "[]", 2.0) == ()


ENTRY = '{"a":5,"p":"1.0","q":"2","f":1,"l":1,"T":7,"m":false}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            '{"code":-1121,"msg":"Invalid symbol."}',
            "aggTrades: server error -1121: Invalid symbol.",
        ),
        ("<html>502 Bad Gateway</html>", "aggTrades: invalid JSON"),
        ('{"a":5}', "expected a JSON array; got dict"),
        ("[5]", "trade 0: expected an object; got int"),
        (f"[{ENTRY},{ENTRY}]", "trade 1: ids must rise; got a=5 after a=5"),
        (f"[{ENTRY},{ENTRY.replace(':5', ':4')}]", "trade 1: ids must rise; got a=4 after a=5"),
        ('[{"p":"1","q":"1","T":1,"m":true}]', "trade 0: field 'a' must be an integer"),
        ('[{"a":1,"p":"1","q":"1","m":true}]', "trade 0: field 'T' must be an integer"),
        ('[{"a":1,"p":1.5,"q":"1","T":1,"m":true}]', "trade 0: expected a decimal string"),
        ('[{"a":1,"p":"-1","q":"1","T":1,"m":true}]', "trade 0: expected a non-negative decimal"),
        ('[{"a":1,"p":"1","q":"1","T":1,"m":"true"}]', "trade 0: field 'm' must be a boolean"),
    ],
)
def test_bad_bodies_are_frame_errors_saying_what_and_where(body: str, reason: str) -> None:
    ev = parse_agg_trades("BTCUSDT", body, 4.0)
    assert isinstance(ev, FrameError)
    assert reason in ev.reason, ev.reason
    assert ev.symbol == "BTCUSDT" and ev.recv_time == 4.0
    assert len(ev.excerpt) <= EXCERPT_CHARS + 3


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "a": st.one_of(st.integers(-5, 2**63), st.text(max_size=3), st.none()),
                "p": st.one_of(st.text(max_size=12), st.floats(allow_nan=False)),
                "q": st.text(alphabet="0123456789.", max_size=12),
                "T": st.integers(),
                "m": st.one_of(st.booleans(), st.integers(0, 1)),
            },
        ),
        max_size=5,
    )
)
def test_never_raises_and_keeps_ids_rising(items: list[dict[str, object]]) -> None:
    ev = parse_agg_trades("BTCUSDT", json.dumps(items), 1.0)
    assert isinstance(ev, tuple | FrameError)
    if isinstance(ev, tuple):
        ids = [t.trade_id for t in ev]
        assert ids == sorted(set(ids)) and len(ids) == len(items)
