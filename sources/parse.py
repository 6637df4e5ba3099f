"""Parse raw Binance frames and REST bodies into frozen events.

Pure: no I/O, no bytewax. Every malformed input becomes a :class:`FrameError` with a reason; nothing
here raises on bad data except :func:`to_units`, whose :class:`ParseError` the callers convert.

A USD-M Futures depth frame as received on ``/public/stream`` (combined-stream envelope)::

    {"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,
     "T":1626992741024,"s":"SUSHIUSDT","U":600859599090,"u":600859600917,"pu":600859598061,
     "b":[["7.5040","813"],["7.6090","0"],["7.6110","2"]],"a":[["7.6150","1563"]]}}

A partial depth frame (``<symbol>@depth20@100ms``) looks like a depth update on USD-M Futures,
but its levels are the top of the book at ``u``, not changes; only the stream name tells them
apart. On spot it is ``{"lastUpdateId":..,"bids":[..],"asks":[..]}``. Both become a
:class:`DepthSnapshot` (``from_stream``, ``limit`` the stream's levels)::

    {"stream":"btcusdt@depth20@100ms","data":{"e":"depthUpdate","E":1571889248277,
     "T":1571889248276,"s":"BTCUSDT","U":390497796,"u":390497878,"pu":390497794,
     "b":[["7403.89","0.002"],...],"a":[["7405.96","3.340"],...]}}

An aggTrade frame::

    {"stream":"sushiusdt@aggTrade","data":{"e":"aggTrade","E":1626992741173,"a":93287425,
     "s":"SUSHIUSDT","p":"7.6120","q":"15","f":164427413,"l":164427413,"T":1626992741010,
     "m":false}}
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, NoReturn

import orjson

from market_data import ParseError
from market_data.events import (
    DECIMALS,
    DepthDelta,
    DepthSnapshot,
    FrameError,
    Ignored,
    Level,
    SourceEvent,
    Trade,
)
from market_data.speedups import SPEEDUPS

_POW10 = tuple(10**i for i in range(DECIMALS + 1))
EXCERPT_CHARS = 200

# Event types Binance sends that this service does not use: counted, not errors.
KNOWN_UNUSED = frozenset(
    {
        "bookTicker",
        "kline",
        "markPriceUpdate",
        "24hrTicker",
        "24hrMiniTicker",
        "forceOrder",
        "trade",
        "continuous_kline",
        "compositeIndex",
        "contractInfo",
        "assetIndexUpdate",
    }
)


def to_units(text: str) -> int:
    """Convert a decimal string such as ``"7.6110"`` to integer units of ``1e-8``, exactly.

    Raises :class:`ParseError` for anything that is not a plain non-negative decimal number or that
    has a non-zero digit past the eighth decimal.
    """
    if type(text) is not str:
        raise ParseError(f"expected a decimal string; got {text!r}")
    whole, _, frac = text.partition(".")
    if len(frac) > DECIMALS:
        extra = frac[DECIMALS:]
        if extra.strip("0"):
            raise ParseError(f"more than {DECIMALS} decimals in {text!r}")
        frac = frac[:DECIMALS]
    digits = whole + frac
    # isdigit() alone accepts non-ASCII digits; isascii() rules them out (and signs, spaces, "_").
    if not digits.isdigit() or not digits.isascii():
        raise ParseError(f"expected a non-negative decimal string; got {text!r}")
    try:
        whole_units = int(digits)
    except ValueError:  # longer than int() converts (sys.get_int_max_str_digits)
        raise ParseError(f"number too long: {len(digits)} digits") from None
    return whole_units * _POW10[DECIMALS - len(frac)]


# The Python path (the C parser, when built, takes every plain side first: see _levels).
# Binance repeats the same price and quantity strings constantly (levels near the touch, round
# lots); remembering their exact value makes most conversions one C-level lookup in an exact dict
# (which the interpreter specialises; a dict subclass with __missing__ measured ~20% slower over
# a whole frame). A value not seen yet fails the fast path with KeyError and is converted by the
# checked path. Bounded: when full, the cache starts again empty and the full one is freed a few
# entries at each later miss (freeing 200,000 entries at once took 5 ms, longer on a busy
# machine: a pause of the flow). Safe across worker threads (single dict and list operations
# under the GIL; a race only frees an entry more or less).
UNITS_CACHE_MAX = 200_000
FREED_PER_MISS = 4
_UNITS_CACHE: dict[str, int] = {}
_RETIRED: list[dict[str, int]] = []  # full caches, being freed


def _units(value: Any) -> int:
    """The units of one price or quantity string, through the cache; ParseError if not one."""
    global _UNITS_CACHE
    units = _UNITS_CACHE
    found = units.get(value) if type(value) is str else None
    if found is None:
        found = to_units(_text(value))
        if len(units) >= UNITS_CACHE_MAX:
            _RETIRED.append(units)
            units = _UNITS_CACHE = {}
        units[value] = found
        if _RETIRED:
            _free_some()
    return found


def _free_some() -> None:
    try:
        old = _RETIRED[0]
        for _ in range(FREED_PER_MISS):
            old.popitem()
    except KeyError:  # that one is empty now
        with suppress(ValueError):  # unless another thread removed it first
            _RETIRED.remove(old)
    except IndexError:  # another thread took the last one
        pass


_fast_levels = SPEEDUPS.levels if SPEEDUPS is not None else None
"""The C parser of a whole side (``market_data/_speedups.c``): the same result, or ``None``."""


def _levels(raw: Any, side: str) -> tuple[Level, ...]:
    if _fast_levels is not None:
        found: tuple[Level, ...] | None = _fast_levels(raw)
        if found is not None:
            return found
    if type(raw) is not list:
        raise ParseError(f"{side} must be a list of [price, quantity]; got {type(raw).__name__}")
    units = _UNITS_CACHE
    try:
        return tuple([(units[p], units[q]) for p, q in raw])
    except (KeyError, TypeError, ValueError):
        pass  # a value not cached yet, or not all [price, quantity] pairs of strings
    for entry in raw:
        if type(entry) is not list or len(entry) < 2:
            raise ParseError(f"{side} level must be [price, quantity]; got {entry!r}")
    # Longer entries (Binance sends none) keep their first two values.
    return tuple([(_units(e[0]), _units(e[1])) for e in raw])


def _text(value: Any) -> str:
    if type(value) is not str:
        raise ParseError(f"expected a decimal string; got {value!r}")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if type(value) is not int:
        raise ParseError(f"field {key!r} must be an integer; got {value!r}")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if type(value) is not str or not value:
        raise ParseError(f"field {key!r} must be a non-empty string; got {value!r}")
    return value


def _symbol(data: dict[str, Any]) -> str | None:
    symbol = data.get("s")
    return symbol if isinstance(symbol, str) else None


def _excerpt(frame: str | bytes) -> str:
    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def parse_depth(data: dict[str, Any], recv_time: float, recv_ns: int = 0) -> DepthDelta:
    """Build a :class:`DepthDelta` from the ``data`` object of a ``depthUpdate`` event."""
    get = data.get
    first, final, pu, symbol, event_time = get("U"), get("u"), get("pu"), get("s"), get("E")
    if not (
        type(first) is int
        and type(final) is int
        and type(event_time) is int
        and type(symbol) is str
        and symbol
        and (pu is None or type(pu) is int)
    ):
        _check_depth_fields(data)  # raises the ParseError that says which field is wrong
    if first > final:
        raise ParseError(f"first update id U={first} is after final update id u={final}")
    return DepthDelta(
        symbol,
        first,
        final,
        pu,
        event_time,
        _levels(get("b"), "bids"),
        _levels(get("a"), "asks"),
        recv_time,
        recv_ns,
    )


def _check_depth_fields(data: dict[str, Any]) -> NoReturn:
    pu = data.get("pu")
    if pu is not None and type(pu) is not int:
        raise ParseError(f"field 'pu' must be an integer; got {pu!r}")
    _int(data, "U")
    _int(data, "u")
    _str(data, "s")
    _int(data, "E")
    raise AssertionError("called for a depth event with valid fields")  # pragma: no cover


def partial_levels(stream: str) -> int:
    """The levels of a partial depth stream name (``btcusdt@depth20@100ms`` -> 20); 0 if not one.

    Diff. depth streams (``@depth``, ``@depth@100ms``) have no number after ``@depth``.
    """
    at = stream.find("@depth")
    if at < 0:
        return 0
    digits = stream[at + 6 : at + 8]
    if not digits[:1].isdigit():
        return 0
    return int(digits) if digits.isdigit() else int(digits[:1])


def parse_partial(
    data: dict[str, Any], levels: int, symbol: str, recv_time: float, recv_ns: int = 0
) -> DepthSnapshot:
    """Build a :class:`DepthSnapshot` from a partial depth frame of ``levels`` levels a side.

    USD-M Futures frames carry ``u`` (the update the book is at) and ``s``; spot frames carry
    ``lastUpdateId`` and no symbol, which the stream name gives (``symbol``).
    """
    if "lastUpdateId" in data:
        return DepthSnapshot(
            symbol,
            _int(data, "lastUpdateId"),
            _levels(data.get("bids"), "bids"),
            _levels(data.get("asks"), "asks"),
            recv_time,
            None,
            recv_ns,
            levels,
            True,
        )
    return DepthSnapshot(
        _str(data, "s"),
        _int(data, "u"),
        _levels(data.get("b"), "bids"),
        _levels(data.get("a"), "asks"),
        recv_time,
        _int(data, "E"),
        recv_ns,
        levels,
        True,
    )


def parse_agg_trade(data: dict[str, Any], recv_time: float, recv_ns: int = 0) -> Trade:
    """Build a :class:`Trade` from the ``data`` object of an ``aggTrade`` event."""
    maker = data.get("m")
    if type(maker) is not bool:
        raise ParseError(f"field 'm' must be a boolean; got {maker!r}")
    return Trade(
        symbol=_str(data, "s"),
        trade_id=_int(data, "a"),
        price=to_units(data.get("p")),  # type: ignore[arg-type]
        quantity=to_units(data.get("q")),  # type: ignore[arg-type]
        trade_time_ms=_int(data, "T"),
        is_buyer_maker=maker,
        event_time_ms=_int(data, "E"),
        recv_time=recv_time,
        recv_ns=recv_ns,
    )


def parse_frame(frame: str | bytes, recv_time: float, recv_ns: int = 0) -> SourceEvent:
    """Parse one WebSocket text frame, enveloped (``{"stream","data"}``) or bare.

    Returns a :class:`DepthDelta` or :class:`Trade`; an :class:`Ignored` for subscription answers
    and event types the service does not use; a :class:`FrameError` for anything malformed.
    """
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return FrameError(f"invalid JSON: {exc}", _excerpt(frame), recv_time=recv_time)
    if not isinstance(msg, dict):
        return FrameError(
            f"expected a JSON object; got {type(msg).__name__}",
            _excerpt(frame),
            recv_time=recv_time,
        )
    data = msg.get("data") if "stream" in msg else msg
    if not isinstance(data, dict):
        return FrameError("envelope 'data' is not an object", _excerpt(frame), recv_time=recv_time)
    kind = data.get("e")
    try:
        if kind == "depthUpdate":
            stream = msg.get("stream")  # None for a bare frame: a diff. depth stream
            if type(stream) is not str or "@depth@" in stream or stream.endswith("@depth"):
                return parse_depth(data, recv_time, recv_ns)  # the common case, tested first
            levels = partial_levels(stream)
            if levels:
                return parse_partial(data, levels, "", recv_time, recv_ns)
            return parse_depth(data, recv_time, recv_ns)
        if kind == "aggTrade":
            return parse_agg_trade(data, recv_time, recv_ns)
    except ParseError as exc:
        symbol = _symbol(data)
        return FrameError(f"{kind}: {exc}", _excerpt(frame), symbol=symbol, recv_time=recv_time)
    symbol = _symbol(data)
    if kind is None:
        if "result" in data and "id" in data:  # answer to SUBSCRIBE / LIST_SUBSCRIPTIONS
            return Ignored("subscription_response")
        # An error answer: {"code":..,"msg":..} as documented, or nested under "error" as sent.
        error = data["error"] if isinstance(data.get("error"), dict) else data
        if "code" in error and "msg" in error:
            return FrameError(
                f"server error {error.get('code')}: {error.get('msg')}",
                _excerpt(frame),
                recv_time=recv_time,
            )
        stream = msg.get("stream")
        if isinstance(stream, str) and "@" in stream:
            # Some streams (spot bookTicker, partial depth) carry no 'e'; the stream name says.
            levels = partial_levels(stream)
            if levels and "lastUpdateId" in data:
                symbol = stream.split("@", 1)[0].upper()
                try:
                    return parse_partial(data, levels, symbol, recv_time, recv_ns)
                except ParseError as exc:
                    return FrameError(
                        f"partialDepth: {exc}", _excerpt(frame), symbol, recv_time=recv_time
                    )
            name = stream.split("@", 1)[1]
            base = name.split("@", 1)[0].rstrip("0123456789")
            kind_of = "bookTicker" if base == "bookTicker" else f"unknown:{base}"
            if base == "depth":
                kind_of = "partialDepth"
            return Ignored(kind_of, symbol)
        return FrameError("no event type 'e' in frame", _excerpt(frame), recv_time=recv_time)
    if not isinstance(kind, str):
        return FrameError(
            f"event type must be a string; got {kind!r}", _excerpt(frame), symbol, recv_time
        )
    # Counted and skipped; unknown ones too, under their own name, so a new Binance event type
    # shows up in metrics instead of as an error storm.
    return Ignored(kind if kind in KNOWN_UNUSED else f"unknown:{kind}", symbol)


def parse_snapshot(
    symbol: str, body: str | bytes, recv_time: float, recv_ns: int = 0, limit: int | None = None
) -> DepthSnapshot | FrameError:
    """Parse a REST depth snapshot body for ``symbol``, asked for with ``limit`` levels.

    Futures body: ``{"lastUpdateId":600859605926,"E":1626992741264,"T":1626992741261,
    "bids":[["7.6110","6"],...],"asks":[["7.6120","297"],...]}``; spot bodies lack ``E`` and ``T``.
    ``limit`` (the request's ``limit=``) tells whether a side is whole (see
    :meth:`DepthSnapshot.window`); without it each side is known down to its deepest level only.
    """
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ParseError(f"expected a JSON object; got {type(data).__name__}")
        if "code" in data and "msg" in data:
            raise ParseError(f"server error {data.get('code')}: {data.get('msg')}")
        event_time = data.get("E")
        if event_time is not None and type(event_time) is not int:
            raise ParseError(f"field 'E' must be an integer; got {event_time!r}")
        return DepthSnapshot(
            symbol=symbol,
            last_update_id=_int(data, "lastUpdateId"),
            bids=_levels(data.get("bids"), "bids"),
            asks=_levels(data.get("asks"), "asks"),
            recv_time=recv_time,
            event_time_ms=event_time,
            recv_ns=recv_ns,
            limit=limit,
        )
    except orjson.JSONDecodeError as exc:
        return FrameError(f"snapshot: invalid JSON: {exc}", _excerpt(body), symbol, recv_time)
    except ParseError as exc:
        return FrameError(f"snapshot: {exc}", _excerpt(body), symbol, recv_time)


def parse_agg_trades(
    symbol: str, body: str | bytes, recv_time: float, recv_ns: int = 0
) -> tuple[Trade, ...] | FrameError:
    """Parse a REST aggTrades body (``GET /fapi/v1/aggTrades`` or ``/api/v3/aggTrades``).

    The body is a JSON array, oldest first; spot entries add ``"M"``::

        [{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,
          "m":true}]

    REST carries no event time, so each trade's event time is its trade time ``T``. Ids must rise
    strictly; anything else is a :class:`FrameError` saying what was wrong and where.
    """
    try:
        data = orjson.loads(body)
        if isinstance(data, dict) and "code" in data and "msg" in data:
            raise ParseError(f"server error {data.get('code')}: {data.get('msg')}")
        if not isinstance(data, list):
            raise ParseError(f"expected a JSON array; got {type(data).__name__}")
        trades = []
        last = -1
        for i, item in enumerate(data):
            trade = _rest_agg_trade(symbol, i, item, recv_time, recv_ns)
            if trade.trade_id <= last:
                raise ParseError(f"trade {i}: ids must rise; got a={trade.trade_id} after a={last}")
            last = trade.trade_id
            trades.append(trade)
        return tuple(trades)
    except orjson.JSONDecodeError as exc:
        return FrameError(f"aggTrades: invalid JSON: {exc}", _excerpt(body), symbol, recv_time)
    except ParseError as exc:
        return FrameError(f"aggTrades: {exc}", _excerpt(body), symbol, recv_time)


def _rest_agg_trade(symbol: str, i: int, item: Any, recv_time: float, recv_ns: int) -> Trade:
    if not isinstance(item, dict):
        raise ParseError(f"trade {i}: expected an object; got {type(item).__name__}")
    try:
        maker = item.get("m")
        if type(maker) is not bool:
            raise ParseError(f"field 'm' must be a boolean; got {maker!r}")
        trade_time = _int(item, "T")
        return Trade(
            symbol=symbol,
            trade_id=_int(item, "a"),
            price=to_units(item.get("p")),  # type: ignore[arg-type]
            quantity=to_units(item.get("q")),  # type: ignore[arg-type]
            trade_time_ms=trade_time,
            is_buyer_maker=maker,
            event_time_ms=trade_time,
            recv_time=recv_time,
            recv_ns=recv_ns,
        )
    except ParseError as exc:
        raise ParseError(f"trade {i}: {exc}") from None
