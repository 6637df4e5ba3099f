"""The debugging sinks' JSON lines: ``{"channel": ..., "data": <the contract payload>}``."""

from __future__ import annotations

import orjson
import pytest

from market_data.events import BookState, BookStatus, BookUpdate, Trade
from sinks.debug import line_of
from sinks.payload import book_dict, trade_dict
from tests.implementations import implementation  # noqa: F401 (autouse)


@pytest.mark.parametrize("symbol", ["BTCUSDT", 'ODD"SYM\\é'])
def test_book_line_is_the_channel_and_the_payload(symbol: str) -> None:
    ev = BookUpdate(symbol, ((5_000_010_000_000, 150_000_000),), ((5_000_020_000_000, 1),), 7, 8, 0)
    expected = {"channel": f"orderbook:{symbol}", "data": book_dict(ev)}
    assert line_of(ev) == orjson.dumps(expected) + b"\n"
    assert orjson.loads(line_of(ev))["data"]["bids"] == [[50000.1, 1.5]]


def test_trade_and_status_lines() -> None:
    trade = Trade("BTCUSDT", 1, 5_000_010_000_000, 150_000_000, 2, True, 3, 0.0)
    assert orjson.loads(line_of(trade)) == {"channel": "trades:BTCUSDT", "data": trade_dict(trade)}
    status = BookStatus("BTCUSDT", BookState.RESYNCING, "gap", 9, 0.0)
    assert orjson.loads(line_of(status))["data"] == {
        "symbol": "BTCUSDT",
        "state": "resyncing",
        "reason": "gap",
        "last_update_id": 9,
    }


def test_anything_else_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a BookUpdate, Trade or BookStatus"):
        line_of("x")  # type: ignore[arg-type]
