"""Pure policies of the live Binance source: stream plans, URLs, pacing and backoff.

Nothing here sleeps, fetches or connects; the source asks and acts.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from market_data.backoff import ExponentialBackoff
from market_data.events import Market

MAX_STREAMS_PER_CONNECTION = 1024
"""Binance: a connection carries at most 1024 streams."""


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One WebSocket connection: its URL and the streams it carries."""

    url: str
    streams: tuple[str, ...]
    symbols: tuple[str, ...]


def depth_stream(symbol: str, market: Market, speed_ms: int) -> str:
    """``btcusdt@depth@100ms``; the exchange's default speed gets the bare ``@depth`` name."""
    default = 250 if market is Market.FUTURES else 1000
    suffix = "@depth" if speed_ms == default else f"@depth@{speed_ms}ms"
    return f"{symbol.lower()}{suffix}"


PARTIAL_LEVELS = 20
"""Levels a side of the partial depth stream the source listens to (Binance's most: 5, 10, 20)."""


def partial_stream(symbol: str, market: Market, speed_ms: int) -> str:
    """``btcusdt@depth20@100ms``: the top 20 levels, pushed as often as the diff. stream."""
    default = 250 if market is Market.FUTURES else 1000
    suffix = "" if speed_ms == default else f"@{speed_ms}ms"
    return f"{symbol.lower()}@depth{PARTIAL_LEVELS}{suffix}"


def trade_stream(symbol: str) -> str:
    """``btcusdt@aggTrade``."""
    return f"{symbol.lower()}@aggTrade"


def plan_connections(
    ws_url: str,
    market: Market,
    symbols: Sequence[str],
    speed_ms: int,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    partial: bool = False,
) -> list[ConnectionPlan]:
    """The combined-stream connections needed for depth and aggTrade of ``symbols``.

    USD-M Futures routes streams by path since 2026-04-23: depth on ``/public``, aggTrade on
    ``/market`` (the legacy ``/stream`` sends no trades), so it needs at least two connections.
    Spot carries both on ``/stream``. Each connection carries at most ``max_streams`` streams.
    With ``partial``, each symbol's partial depth stream rides next to its diff. depth stream (on
    the same connection, so a connection's symbols lose and regain both together).
    """
    base = ws_url.rstrip("/")

    def depth(s: str) -> list[str]:
        names = [depth_stream(s, market, speed_ms)]
        return [*names, partial_stream(s, market, speed_ms)] if partial else names

    if market is Market.FUTURES:
        routes = [
            (f"{base}/public/stream", [(s, n) for s in symbols for n in depth(s)]),
            (f"{base}/market/stream", [(s, trade_stream(s)) for s in symbols]),
        ]
    else:
        both = [(s, n) for s in symbols for n in (*depth(s), trade_stream(s))]
        routes = [(f"{base}/stream", both)]
    plans = []
    for url, named in routes:
        for chunk in _chunks(named, max_streams):
            streams = tuple(n for _, n in chunk)
            plans.append(
                ConnectionPlan(
                    f"{url}?{urlencode({'streams': '/'.join(streams)}, safe='/@')}",
                    streams,
                    tuple(dict.fromkeys(s for s, _ in chunk)),
                )
            )
    return plans


def _chunks(named: list[tuple[str, str]], most: int) -> list[list[tuple[str, str]]]:
    """``(symbol, stream)`` pairs in runs of at most ``most``, each symbol's kept together.

    A symbol with more streams than ``most`` is split, as it must be.
    """
    chunks: list[list[tuple[str, str]]] = [[]]
    for i, (symbol, stream) in enumerate(named):
        chunk = chunks[-1]
        starts = i == 0 or named[i - 1][0] != symbol
        group = sum(1 for s, _ in named[i : i + most + 1] if s == symbol) if starts else 0
        if chunk and (len(chunk) >= most or (starts and len(chunk) + group > most >= group)):
            chunk = []
            chunks.append(chunk)
        chunk.append((symbol, stream))
    return [c for c in chunks if c]


def snapshot_url(rest_url: str, market: Market, symbol: str, limit: int) -> str:
    """The REST depth snapshot URL for ``symbol``."""
    path = "/fapi/v1/depth" if market is Market.FUTURES else "/api/v3/depth"
    return f"{rest_url.rstrip('/')}{path}?{urlencode({'symbol': symbol, 'limit': limit})}"


def snapshot_weight(market: Market, limit: int) -> int:
    """Request weight of a depth snapshot, from Binance's tables."""
    if market is Market.FUTURES:
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


AGG_TRADES_PAGE = 1000
"""aggTrades per REST page (Binance's maximum)."""


def agg_trades_url(rest_url: str, market: Market, symbol: str, from_id: int, limit: int) -> str:
    """The REST aggTrades URL for the page of ``symbol`` starting at id ``from_id``."""
    path = "/fapi/v1/aggTrades" if market is Market.FUTURES else "/api/v3/aggTrades"
    query = urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
    return f"{rest_url.rstrip('/')}{path}?{query}"


def agg_trades_weight(market: Market) -> int:
    """Request weight of an aggTrades page: 20 on USD-M Futures, 4 on spot (Binance's docs)."""
    return 20 if market is Market.FUTURES else 4


def jittered_delay(policy: ExponentialBackoff, failures: int, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter, never below the policy's initial delay."""
    ceiling = policy.compute(max(failures, 1))
    return rng.uniform(policy.initial_s, max(ceiling, policy.initial_s))


IP_SHARE = 0.8
"""The part of the exchange's per-IP weight limit the service's processes use by default; the
rest is left to other programs on the same IP (whose use the used-weight header shows)."""
HEADER_GUARD = 0.95
"""Requests wait for the next minute once the server reports this much of the IP limit used:
several processes may each have a request on its way when the header is read."""


def default_weight_budget(ip_limit: int, processes_on_host: int) -> int:
    """The weight budget of one process when the config sets none.

    An equal share of :data:`IP_SHARE` of the IP limit among the cluster's processes on this host.
    """
    return max(1, int(ip_limit * IP_SHARE) // max(1, processes_on_host))


class WeightBudget:
    """Paces REST requests so their weight stays within a per-window budget (sliding window).

    Also honours the server: a ``Retry-After`` blocks every request until it has passed, and the
    ``X-MBX-USED-WEIGHT-1M`` header, when over budget, blocks until the window has moved on.
    """

    def __init__(self, budget: int, window_s: float = 60.0, ip_limit: int | None = None) -> None:
        if budget <= 0 or window_s <= 0:
            raise ValueError(f"budget and window must be positive; got {budget}, {window_s}")
        self.budget = budget
        self.window_s = window_s
        # The exchange's own limit for the whole IP (other processes and programs included),
        # which the server's used-weight header is measured against.
        self.ip_limit = ip_limit if ip_limit is not None else max(budget, 2400)
        self._spent: deque[tuple[float, int]] = deque()  # (time, weight)
        self._blocked_until = 0.0

    def delay(self, weight: int, now: float) -> float:
        """Seconds to wait before a request of ``weight`` may be sent at ``now`` (0: send now)."""
        if now < self._blocked_until:
            return self._blocked_until - now
        spent = self._spent
        while spent and spent[0][0] <= now - self.window_s:
            spent.popleft()
        used = sum(w for _, w in spent)
        if used + weight <= self.budget:
            return 0.0
        # Wait until enough old requests leave the window.
        excess = used + weight - self.budget
        for t, w in spent:
            excess -= w
            if excess <= 0:
                return t + self.window_s - now
        return self.window_s  # a single request heavier than the budget: one window

    def spend(self, weight: int, now: float) -> None:
        """Record a request sent at ``now``."""
        self._spent.append((now, weight))

    def block(self, seconds: float, now: float) -> None:
        """The server said to wait ``seconds`` (``Retry-After``) before any request."""
        self._blocked_until = max(self._blocked_until, now + seconds)

    def observe_used(
        self, used: int, now: float, next_weight: int = 0, wall: float | None = None
    ) -> None:
        """The server reports ``used`` weight this minute for the whole IP.

        When the next request would bring the IP past :data:`HEADER_GUARD` of the exchange's
        limit, every request is held until the exchange's window (calendar minutes, by the
        ``wall`` clock) moves on: other programs and processes on the same IP use weight too,
        and our own budget is about our pacing, not a reason to stop while the exchange still
        has room.
        """
        if used + next_weight > self.ip_limit * HEADER_GUARD:
            clock = now if wall is None else wall
            self.block(self.window_s - (clock % self.window_s) + 0.5, now)
