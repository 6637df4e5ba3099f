"""Stream names, connection paths and routes, as Binance defines them.

USD-M Futures (since 2026-04-23) serves each stream on one route: depth (diff. and partial) and
bookTicker on ``/public``, aggTrade, markPrice and kline on ``/market``. Each route has both modes:
``/public/ws/<a>/<b>`` (bare payloads) and ``/public/stream?streams=<a>/<b>`` (``{"stream","data"}``
envelopes). A stream subscribed on another route, or on the legacy unrouted ``/ws`` and ``/stream``
paths, is accepted and acknowledged but never delivered. Spot has only the unrouted paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from urllib.parse import parse_qs, urlsplit

from market_data.events import Market


class Route(StrEnum):
    """Where a connection was opened."""

    PUBLIC = "public"
    MARKET = "market"
    LEGACY = "legacy"  # /ws and /stream without a route prefix (the only kind spot has)


class Kind(StrEnum):
    """The stream families the simulator knows."""

    DEPTH = "depth"  # diff. book depth: generated
    BOOK_TICKER = "bookTicker"  # generated
    AGG_TRADE = "aggTrade"  # generated
    MARK_PRICE = "markPrice"  # generated (futures only)
    PARTIAL_DEPTH = "partialDepth"  # <s>@depth5, @depth10@100ms etc.: generated
    KLINE = "kline"  # accepted, never generated


HOME_ROUTE = {
    Kind.DEPTH: Route.PUBLIC,
    Kind.BOOK_TICKER: Route.PUBLIC,
    Kind.PARTIAL_DEPTH: Route.PUBLIC,
    Kind.AGG_TRADE: Route.MARKET,
    Kind.MARK_PRICE: Route.MARKET,
    Kind.KLINE: Route.MARKET,
}
GENERATED = frozenset(
    {Kind.DEPTH, Kind.PARTIAL_DEPTH, Kind.BOOK_TICKER, Kind.AGG_TRADE, Kind.MARK_PRICE}
)

FUTURES_DEPTH_SPEEDS = {"": 250, "@100ms": 100, "@500ms": 500}
SPOT_DEPTH_SPEEDS = {"": 1000, "@100ms": 100}
"""Suffix -> push interval (ms); these two tables serve the diff. and the partial depth streams."""
PARTIAL_DEPTH_LEVELS = (5, 10, 20)
"""The ``N`` of the partial book depth streams ``<symbol>@depthN``: levels a side."""
MARK_PRICE_SPEEDS = {"": 3000, "@1s": 1000}
KLINE_INTERVALS = frozenset("1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M".split())


@dataclass(frozen=True, slots=True)
class StreamName:
    """A parsed stream name such as ``btcusdt@depth@100ms``."""

    name: str  # as subscribed (lowercase symbol)
    symbol: str  # upper case, as in payloads
    kind: Kind
    speed_ms: int = 0  # push interval of depth (diff. and partial) and markPrice streams
    levels: int = 0  # levels a side of a partial depth stream


def depth_speeds(market: Market) -> dict[str, int]:
    """Suffix -> push interval (ms) of the diff. depth streams of ``market``."""
    return FUTURES_DEPTH_SPEEDS if market is Market.FUTURES else SPOT_DEPTH_SPEEDS


@cache  # on the load-test path: a name per update
def depth_stream(symbol: str, speed_ms: int, market: Market) -> str:
    """The stream name of ``symbol``'s diff. depth at ``speed_ms``."""
    suffix = next(k for k, v in depth_speeds(market).items() if v == speed_ms)
    return f"{symbol.lower()}@depth{suffix}"


@cache
def partial_depth_stream(symbol: str, levels: int, speed_ms: int, market: Market) -> str:
    """The stream name of ``symbol``'s top ``levels`` levels at ``speed_ms``, ``btcusdt@depth5``."""
    suffix = next(k for k, v in depth_speeds(market).items() if v == speed_ms)
    return f"{symbol.lower()}@depth{levels}{suffix}"


def mark_price_stream(symbol: str, speed_ms: int) -> str:
    """The stream name of ``symbol``'s mark price at ``speed_ms``."""
    suffix = next(k for k, v in MARK_PRICE_SPEEDS.items() if v == speed_ms)
    return f"{symbol.lower()}@markPrice{suffix}"


def parse_stream(name: str, market: Market) -> StreamName | None:
    """Parse a stream name; None for anything Binance would not serve (delivered nothing)."""
    sym, at, rest = name.partition("@")
    if not at or not sym or sym != sym.lower() or not sym.isalnum():
        return None
    symbol = sym.upper()
    if rest.startswith("depth"):
        tail = rest[len("depth") :]
        speeds = depth_speeds(market)
        if tail in speeds:
            return StreamName(name, symbol, Kind.DEPTH, speeds[tail])
        levels, at, speed = tail.partition("@")
        suffix = f"@{speed}" if at else ""
        if levels in {str(n) for n in PARTIAL_DEPTH_LEVELS} and suffix in speeds:
            return StreamName(name, symbol, Kind.PARTIAL_DEPTH, speeds[suffix], int(levels))
        return None
    if rest == "bookTicker":
        return StreamName(name, symbol, Kind.BOOK_TICKER)
    if rest == "aggTrade":
        return StreamName(name, symbol, Kind.AGG_TRADE)
    if rest.startswith("markPrice") and market is Market.FUTURES:
        tail = rest[len("markPrice") :]
        if tail in MARK_PRICE_SPEEDS:
            return StreamName(name, symbol, Kind.MARK_PRICE, MARK_PRICE_SPEEDS[tail])
        return None
    if rest.startswith("kline_") and rest[len("kline_") :] in KLINE_INTERVALS:
        return StreamName(name, symbol, Kind.KLINE)
    return None


def delivered(stream: StreamName, route: Route, market: Market, legacy_delivers: bool) -> bool:
    """Whether frames of ``stream`` reach a connection opened on ``route``."""
    if stream.kind not in GENERATED:
        return False
    if market is Market.SPOT:
        return route is Route.LEGACY
    if route is Route.LEGACY:
        return legacy_delivers
    return HOME_ROUTE[stream.kind] is route


@dataclass(frozen=True, slots=True)
class ConnectPath:
    """What a WebSocket request path asks for."""

    route: Route
    combined: bool  # /stream (enveloped payloads) rather than /ws (bare payloads)
    streams: tuple[str, ...]


def parse_path(path: str, market: Market) -> ConnectPath | None:
    """Parse a request path such as ``/public/stream?streams=a/b``; None for a path not served."""
    parts = urlsplit(path)
    segments = parts.path.split("/")[1:]  # leading "/" gives an empty first segment
    route = Route.LEGACY
    if market is Market.FUTURES and segments and segments[0] in (Route.PUBLIC, Route.MARKET):
        route = Route(segments[0])
        segments = segments[1:]
    if not segments:
        return None
    mode, names = segments[0], segments[1:]
    if mode == "ws":
        return ConnectPath(route, False, tuple(n for n in names if n))
    if mode == "stream" and not [n for n in names if n]:
        query = parse_qs(parts.query).get("streams", [])
        streams = tuple(n for q in query for n in q.split("/") if n)
        return ConnectPath(route, True, streams)
    return None
