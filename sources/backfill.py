"""Trades missed while a connection was down: which to fetch, and when held live trades go on.

Binance does not replay aggTrades on a new connection. When a connection carrying a symbol's
``@aggTrade`` stream comes back and the source had passed on a trade of that symbol before (id
``last``), it asks REST ``aggTrades?fromId=last+1&limit=1000``, page after page, until it reaches
the first trade received live on the new connection. Meanwhile that symbol's live trades are
*held*: the book operator drops every trade whose id is not above the last one it passed on, so
an older, backfilled trade emitted after a newer live one would be lost as a "duplicate". When
the backfill is done the held trades follow, in id order, without the ones already emitted.

The hold is bounded. The backfill gives up, passes the held trades on and reports the trades it
could not fetch when ``timeout_s`` has passed since the reconnect (``timeout``), when the gap is
larger than ``max_trades`` (``too_many_trades``), after :data:`MAX_TRIES` failed requests in a
row (``error``, ``rate_limited``, or ``incomplete`` when REST keeps ending before the first live
trade), or when more than :data:`MAX_HELD` live trades wait (``held_too_many``).

A REST page starting at ``fromId`` also proves that no trade exists between ``fromId`` and its
first id, so ids need not be contiguous: the gate tracks the highest id accounted for.

Pure: :class:`TradeGate` decides from ids, pages and the time it is given; the source fetches,
waits and emits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from market_data.backoff import ExponentialBackoff
from market_data.events import Trade
from sources.policy import AGG_TRADES_PAGE, jittered_delay

MAX_TRIES = 5
"""Failed requests in a row before a backfill gives up."""
MAX_HELD = 100_000
"""Live trades held for one symbol before a backfill gives up."""
PROBE_S = 2.0
"""After a reconnect, how long the backfill request waits for the symbol's first live trade:
when that trade's id follows the last one passed on, nothing was missed and no request (weight
20 on USD-M) is sent. Only a quiet symbol's missed trades wait for it (live trades that arrive
are decided at once: contiguous, or the request goes out then); at a mass disconnect of a whole
market it spares the weight of every symbol that traded nothing meanwhile."""
RETRY = ExponentialBackoff(0.25, 2.0)
"""Delays between failed requests (with full jitter); 429s also wait for their Retry-After."""

FAILURE_REASONS = (
    "timeout",
    "too_many_trades",
    "held_too_many",
    "error",
    "rate_limited",
    "incomplete",
)
"""Every reason a backfill can give up for (the ``reason`` label of its metric)."""


@dataclass(frozen=True, slots=True)
class Page:
    """The answer to one aggTrades request: trades in id order, or why there are none."""

    symbol: str
    episode: int  # which backfill asked (answers to an abandoned one are ignored)
    from_id: int
    trades: tuple[Trade, ...] = ()
    error: str | None = None
    rate_limited: bool = False  # 429 or 418: the request budget is blocked for Retry-After


@dataclass(frozen=True, slots=True)
class Step:
    """What the source does after telling a gate something."""

    emit: tuple[Trade, ...] = ()
    """Trades to emit now, in id order."""
    backfilled: int = 0
    """How many of ``emit`` came from REST."""
    fetch_from: int | None = None
    """Request the page starting at this id..."""
    delay_s: float = 0.0
    """...after this long."""
    ended: str | None = None
    """The backfill ended: ``filled``, ``caught_up``, or the reason it gave up."""
    failed: bool = False
    missing: int | None = None
    """When it gave up: trades known to be missing (``None``: unknown, no live trade yet)."""


NOTHING = Step()


class TradeGate:
    """One symbol's trades around reconnects: passes them on, or holds them during a backfill."""

    __slots__ = (
        "_held",
        "_in_flight",
        "_probe_until",
        "_rng",
        "_tries",
        "covered",
        "deadline",
        "episode",
        "fetched",
        "filling",
        "first_live",
        "last",
        "max_trades",
        "probe_s",
        "symbol",
        "timeout_s",
    )

    def __init__(
        self,
        symbol: str,
        max_trades: int,
        timeout_s: float,
        rng: random.Random | None = None,
        probe_s: float = 0.0,
    ) -> None:
        if max_trades < 1 or timeout_s <= 0:
            raise ValueError(
                f"max_trades and timeout_s must be positive; got {max_trades}, {timeout_s}"
            )
        self.symbol = symbol
        self.max_trades = max_trades
        self.timeout_s = timeout_s
        self._rng = rng or random.Random()
        self.last: int | None = None  # id of the last trade passed on
        self.filling = False
        self.episode = 0
        self.deadline = 0.0
        self.covered = 0  # while filling: every id up to here is emitted or does not exist
        self.first_live: int | None = None  # first trade received since the latest reconnect
        self.fetched = 0
        self._held: list[Trade] = []
        self._in_flight = False
        self._tries = 0
        self.probe_s = probe_s  # see PROBE_S
        self._probe_until = 0.0  # until then, the first request waits to be sent

    def passed(self, trade_id: int) -> None:
        """A live trade was passed on (the gate is not filling)."""
        last = self.last
        if last is None or trade_id > last:
            self.last = trade_id

    def reconnected(self, now: float) -> Step:
        """A connection carrying this symbol's trades (re)connected at ``now`` (monotonic)."""
        if self.last is None:
            return NOTHING  # nothing passed on yet: nothing to continue from
        self.first_live = None
        if self.filling:
            # Trades held from the previous connection may have a gap after them: keep going
            # until the first trade of this one. The deadline stays: it bounds the hold.
            return NOTHING if self._in_flight else self._fetch(0.0)
        self.filling = True
        self.episode += 1
        self.deadline = now + self.timeout_s
        self.covered = self.last
        self.fetched = 0
        self._tries = 0
        self._held = []
        self._probe_until = now + self.probe_s
        return self._fetch(self.probe_s)

    def hold(self, trade: Trade, now: float) -> Step:
        """A live trade arrived while filling: hold it; maybe the backfill is complete now."""
        self._held.append(trade)
        if self.first_live is None:
            self.first_live = trade.trade_id
            if self.first_live - self.covered - 1 > self.max_trades - self.fetched:
                return self._end("too_many_trades", failed=True)
            if self._reached():  # continuous with what went out: nothing is missing
                return self._end("filled", failed=False)
            if not self._in_flight:  # caught up before, and trades were missed since
                return self._fetch(0.0)
            if now < self._probe_until:  # the first request still waits: send it now
                self._probe_until = 0.0
                return Step(fetch_from=self.covered + 1)
        if len(self._held) > MAX_HELD:
            return self._end("held_too_many", failed=True)
        return NOTHING

    def on_page(self, page: Page) -> Step:
        """The answer to this gate's request (answers to an abandoned backfill are ignored)."""
        if not self.filling or page.episode != self.episode or not self._in_flight:
            return NOTHING
        self._in_flight = False
        if page.error is not None:
            self._tries += 1
            if self._tries >= MAX_TRIES:
                return self._end("rate_limited" if page.rate_limited else "error", failed=True)
            # After a 429 the shared request budget already waits for Retry-After.
            delay = 0.0 if page.rate_limited else jittered_delay(RETRY, self._tries, self._rng)
            return self._fetch(delay)
        first_live, covered = self.first_live, self.covered
        new = tuple(
            t
            for t in page.trades
            if t.trade_id > covered and (first_live is None or t.trade_id < first_live)
        )
        if page.trades:
            self.covered = max(covered, page.trades[-1].trade_id)
        if new:
            self.last = new[-1].trade_id
            self.fetched += len(new)
            self._tries = 0
        if len(page.trades) >= AGG_TRADES_PAGE and not self._reached():
            if self.fetched >= self.max_trades:
                return self._end("too_many_trades", failed=True, emit=new)
            step = self._fetch(0.0)
            return Step(new, len(new), step.fetch_from)
        if self.first_live is None:
            # A short page: caught up with the exchange. Live trades are the rest, unless the
            # first one says otherwise (then :meth:`hold` fetches again).
            return Step(new, len(new)) if new else NOTHING
        return self._next(new)

    def expire(self, now: float) -> Step:
        """Give up when the deadline has passed (``caught_up`` if nothing was left to fetch)."""
        if not self.filling or now < self.deadline:
            return NOTHING
        if not self._in_flight and self.first_live is None:
            # Caught up, and no live trade since: nothing is known to be lost.
            return self._end("caught_up", failed=False)
        return self._end("timeout", failed=True)

    # -- internals ------------------------------------------------------------------------------
    def _reached(self) -> bool:
        return self.first_live is not None and self.covered + 1 >= self.first_live

    def _next(self, new: tuple[Trade, ...]) -> Step:
        """After a short page, with the first live trade known: done, or ask for the rest."""
        if self._reached():
            return self._end("filled", failed=False, emit=new)
        if new:
            step = self._fetch(0.0)
        else:
            # REST ended before the first live trade (it can lag the stream): retry, bounded.
            self._tries += 1
            if self._tries >= MAX_TRIES:
                return self._end("incomplete", failed=True)
            step = self._fetch(jittered_delay(RETRY, self._tries, self._rng))
        return Step(new, len(new), step.fetch_from, step.delay_s)

    def _fetch(self, delay_s: float) -> Step:
        self._in_flight = True
        return Step(fetch_from=self.covered + 1, delay_s=delay_s)

    def _end(self, how: str, failed: bool, emit: tuple[Trade, ...] = ()) -> Step:
        """Stop filling: emit ``emit``, then the held trades newer than the last one passed on."""
        backfilled = len(emit)
        out = list(emit)
        last = self.last if self.last is not None else -1
        for trade in self._held:
            if trade.trade_id > last:
                out.append(trade)
                last = trade.trade_id
        missing = None
        if failed and self.first_live is not None:
            missing = max(0, self.first_live - self.covered - 1)
        self.last = last
        self.filling = False
        self.episode += 1  # an answer still in flight belongs to the abandoned backfill
        self.first_live = None
        self._held = []
        self._in_flight = False
        return Step(tuple(out), backfilled, ended=how, failed=failed, missing=missing)
