"""Fetches REST aggTrades pages for trade backfills in a thread, paced by the shared weight budget.

One page per request, one request per symbol at a time; the answer (trades or an error) goes back
to the source partition as a :class:`~sources.backfill.Page`, whose gate decides what comes next
(see :mod:`sources.backfill`). Requests share the snapshots' per-process weight budget, and a 429
or 418 blocks every request of that budget for its ``Retry-After``. Books come first: while the
partition has snapshot requests due, backfill requests wait (``defer``), and a backfill request is
sent only while at most three quarters of the budget are spent in the window (the last quarter,
:data:`SNAPSHOT_SHARE`, is left to snapshots), so
when reconnects are frequent enough to exhaust the budget, backfills give up at their deadline
rather than take the weight the books' snapshots need.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
from collections.abc import Callable

from market_data.events import FrameError, Market
from sources.backfill import Page
from sources.parse import parse_agg_trades
from sources.policy import AGG_TRADES_PAGE, WeightBudget, agg_trades_url, agg_trades_weight
from sources.snapshots import RestWorker, weighted_get

logger = logging.getLogger(__name__)

PageCallback = Callable[[Page], None]
DEFER_POLL_S = 0.05
SNAPSHOT_SHARE = 0.25
"""The part of the shared weight budget that backfill requests leave to snapshots.

Half, at first, starved backfills: in the 10-minute soak the snapshots alone used about half
the budget (31 a minute), and 29 of 28 disconnects' backfills gave up (20 trades never
received); with a quarter, a 3-minute soak had 9 disconnects, 6 trades backfilled, 0 given up,
and the same snapshot rate and book recovery (longest without a correct book 2.4 s).
"""


class TradeFetcher(RestWorker):
    """Fetches the aggTrades pages :meth:`request`-ed, one at a time, in a thread."""

    def __init__(
        self,
        rest_url: str,
        market: Market,
        budget: WeightBudget,
        budget_lock: threading.Lock,
        deliver: PageCallback,
        defer: Callable[[], bool] | None = None,
    ) -> None:
        self.rest_url = rest_url
        self.market = market
        self.weight = agg_trades_weight(market)
        share = int(budget.budget * SNAPSHOT_SHARE)
        self._reserve = max(0, min(share, budget.budget - self.weight))
        self._budget = budget
        self._budget_lock = budget_lock
        self._deliver = deliver
        self._defer = defer  # True while requests must wait (snapshots due)
        self._pending: dict[str, tuple[float, int, int]] = {}  # symbol -> (not before, ep, id)
        super().__init__("trade-backfill")

    def request(self, symbol: str, episode: int, from_id: int, delay_s: float = 0.0) -> None:
        """Ask for the page of ``symbol`` from ``from_id`` (replaces one not yet sent)."""
        with self._cond:
            self._pending[symbol] = (time.monotonic() + delay_s, episode, from_id)
            self._cond.notify_all()

    def cancel(self, symbol: str) -> None:
        """Forget a request of ``symbol`` not yet sent."""
        with self._cond:
            self._pending.pop(symbol, None)

    def _next(self) -> tuple[str, int, int] | None:
        """Block until a request is due and the budget allows it; None when stopping."""
        with self._cond:
            while not self._stop:
                if not self._pending:
                    self._cond.wait()
                    continue
                symbol, (not_before, episode, from_id) = min(
                    self._pending.items(), key=lambda kv: kv[1][0]
                )
                now = time.monotonic()
                wait = not_before - now
                if wait <= 0 and self._defer is not None and self._defer():
                    wait = DEFER_POLL_S
                elif wait <= 0:
                    with self._budget_lock:
                        wait = self._budget.delay(self.weight + self._reserve, now)
                        if wait <= 0:
                            self._budget.spend(self.weight, now)
                            del self._pending[symbol]
                            return symbol, episode, from_id
                self._cond.wait(min(wait, 1.0))
        return None

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            symbol, episode, from_id = job
            try:
                page = self._fetch(symbol, episode, from_id)
            except Exception as exc:  # a bug here must not end the thread; the gate retries
                logger.exception("aggTrades fetch for %s failed unexpectedly", symbol)
                page = Page(symbol, episode, from_id, error=f"internal error: {exc}")
            self._deliver(page)

    def _fetch(self, symbol: str, episode: int, from_id: int) -> Page:
        url = agg_trades_url(self.rest_url, self.market, symbol, from_id, AGG_TRADES_PAGE)
        try:
            status, body, retry_after = weighted_get(
                url, self._budget, self._budget_lock, self.weight
            )
        except (OSError, urllib.error.URLError) as exc:
            return Page(symbol, episode, from_id, error=f"{type(exc).__name__}: {exc}")
        if retry_after is not None:
            logger.warning(
                "aggTrades %s: HTTP %d; every request waits %.1fs (Retry-After)",
                symbol, status, retry_after,
            )  # fmt: skip
            return Page(symbol, episode, from_id, error=f"HTTP {status}", rate_limited=True)
        if status >= 400:
            return Page(symbol, episode, from_id, error=f"HTTP {status}: {body[:200]!r}")
        trades = parse_agg_trades(symbol, body, time.time(), time.perf_counter_ns())
        if isinstance(trades, FrameError):
            return Page(symbol, episode, from_id, error=trades.reason)
        return Page(symbol, episode, from_id, trades)
