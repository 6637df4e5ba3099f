"""Fetches REST aggTrades pages for trade backfills in a thread, paced by the shared weight budget.

One page per request, one request per symbol at a time; the answer (trades or an error) goes back
to the source partition as a :class:`~sources.backfill.Page`, whose gate decides what comes next
(see :mod:`sources.backfill`). Requests share the snapshots' per-process weight budget, and a 429
or 418 blocks every request of that budget for its ``Retry-After``. Backfills come first: a
backfill is one request (a page of 1,000 trades) that bounds how long the symbol's live trades
are held, while a book waiting for a snapshot has partial depth frames or the next snapshot to
come; the snapshot fetcher waits while backfill requests are due (:meth:`TradeFetcher.due`).
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


class TradeFetcher(RestWorker):
    """Fetches the aggTrades pages :meth:`request`-ed, one at a time, in a thread."""

    def __init__(
        self,
        rest_url: str,
        market: Market,
        budget: WeightBudget,
        budget_lock: threading.Lock,
        deliver: PageCallback,
    ) -> None:
        self.rest_url = rest_url
        self.market = market
        self.weight = agg_trades_weight(market)
        self._budget = budget
        self._budget_lock = budget_lock
        self._deliver = deliver
        self._busy = False  # a request is in flight
        self._pending: dict[str, tuple[float, int, int]] = {}  # symbol -> (not before, ep, id)
        super().__init__("trade-backfill")

    def request(self, symbol: str, episode: int, from_id: int, delay_s: float = 0.0) -> None:
        """Ask for the page of ``symbol`` from ``from_id`` (replaces one not yet sent)."""
        with self._cond:
            self._pending[symbol] = (time.monotonic() + delay_s, episode, from_id)
            self._cond.notify_all()

    def due(self) -> bool:
        """Whether a request is due now (it waits only for the weight budget, or is in flight)."""
        now = time.monotonic()
        with self._cond:
            return self._busy or any(p[0] <= now for p in self._pending.values())

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
                if wait <= 0:
                    with self._budget_lock:
                        wait = self._budget.delay(self.weight, now)
                        if wait <= 0:
                            self._budget.spend(self.weight, now)
                            del self._pending[symbol]
                            self._busy = True
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
            finally:
                self._busy = False
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
