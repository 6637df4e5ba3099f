"""The published JSON payloads: a public contract shared by every sink.

``orderbook:{SYMBOL}``::

    {"symbol":"BTCUSDT","bids":[[50000.0,1.5],...],"asks":[[50001.0,2.0],...],
     "last_update_id":12345,"timestamp":1234567890}

``trades:{SYMBOL}``::

    {"symbol":"BTCUSDT","trade_id":123456,"price":50000.0,"quantity":1.5,
     "timestamp":1234567890,"is_buyer_maker":true}

``timestamp`` is the exchange's event time (books) or trade time (trades) in milliseconds. Numbers
are JSON numbers: integer units divided by :data:`SCALE` with Python's correctly rounded integer
division, so each float is the nearest double to the exchange's decimal string.
"""

from __future__ import annotations

from typing import Any

import orjson

from market_data.events import SCALE, BookUpdate, Level, Trade

BOOK_PREFIX = "orderbook"
TRADE_PREFIX = "trades"


def _levels(levels: tuple[Level, ...]) -> list[list[float]]:
    return [[p / SCALE, q / SCALE] for p, q in levels]


def book_dict(update: BookUpdate) -> dict[str, Any]:
    """The ``orderbook:{SYMBOL}`` payload as a dict."""
    return {
        "symbol": update.symbol,
        "bids": _levels(update.bids),
        "asks": _levels(update.asks),
        "last_update_id": update.last_update_id,
        "timestamp": update.event_time_ms,
    }


def trade_dict(trade: Trade) -> dict[str, Any]:
    """The ``trades:{SYMBOL}`` payload as a dict."""
    return {
        "symbol": trade.symbol,
        "trade_id": trade.trade_id,
        "price": trade.price / SCALE,
        "quantity": trade.quantity / SCALE,
        "timestamp": trade.trade_time_ms,
        "is_buyer_maker": trade.is_buyer_maker,
    }


# Consecutive top-N views share most of their levels, so each level's JSON text is made once
# (by orjson itself, so the bytes are exactly what orjson.dumps(book_dict(...)) gives) and
# joined. Bounded: cleared when full; single dict operations are safe across worker threads.
LEVEL_CACHE_MAX = 100_000


class _LevelJson(dict[Level, bytes]):
    def __missing__(self, level: Level) -> bytes:
        # orjson returns small outputs in a 4 KiB allocation: keep an exact-size copy, or a full
        # cache would hold ~400 MiB instead of ~6 MiB.
        text = bytes(memoryview(orjson.dumps([level[0] / SCALE, level[1] / SCALE])))
        if len(self) >= LEVEL_CACHE_MAX:
            self.clear()
        self[level] = text
        return text


_LEVEL_JSON = _LevelJson()


def _side_json(levels: tuple[Level, ...]) -> bytes:
    cache = _LEVEL_JSON
    return b",".join([cache[lv] for lv in levels])


def encode_book(update: BookUpdate) -> bytes:
    """The ``orderbook:{SYMBOL}`` payload as JSON bytes (equal to ``orjson.dumps(book_dict())``)."""
    return b"".join(
        (
            b'{"symbol":',
            orjson.dumps(update.symbol),
            b',"bids":[',
            _side_json(update.bids),
            b'],"asks":[',
            _side_json(update.asks),
            b'],"last_update_id":',
            str(update.last_update_id).encode(),
            b',"timestamp":',
            str(update.event_time_ms).encode(),
            b"}",
        )
    )


def encode_trade(trade: Trade) -> bytes:
    """The ``trades:{SYMBOL}`` payload as JSON bytes."""
    return orjson.dumps(trade_dict(trade))


def channel(prefix: str, kind: str, symbol: str) -> str:
    """The channel or key for ``kind`` (``orderbook``/``trades``) under an optional prefix."""
    return f"{prefix}{kind}:{symbol}"
