"""The aggTrades page fetcher against the simulator: pages, errors, 429s, pacing, first in line."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from market_data.events import Market
from sources.backfill import Page
from sources.policy import WeightBudget
from sources.simulator import Simulator, SimulatorConfig
from sources.trade_fetcher import TradeFetcher
from tests.sources.test_simulator_agg_trades import wait_for_trades


@pytest.fixture(scope="module")
def sim() -> Any:
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=500, trade_probability=1.0)
    with Simulator(config) as s:
        wait_for_trades(s, "BTCUSDT", 1200)
        yield s


def fetcher(sim: Simulator, budget: WeightBudget) -> tuple[TradeFetcher, queue.Queue[Page]]:
    pages: queue.Queue[Page] = queue.Queue()
    f = TradeFetcher(sim.rest_url, Market.FUTURES, budget, threading.Lock(), pages.put)
    f.start()
    return f, pages


def test_a_page_of_1000_from_the_id_asked_and_the_weight_spent(sim: Any) -> None:
    budget = WeightBudget(1000, 60.0)
    f, pages = fetcher(sim, budget)
    try:
        start = sim.trades("BTCUSDT")[5].agg_id
        f.request("BTCUSDT", 7, start)
        page = pages.get(timeout=5)
        assert (page.symbol, page.episode, page.from_id, page.error) == ("BTCUSDT", 7, start, None)
        ids = [t.trade_id for t in page.trades]
        assert ids == list(range(start, start + 1000))
        assert budget.delay(981, time.monotonic()) > 0  # 20 of 1000 spent
    finally:
        f.stop()


def test_errors_come_back_as_pages(sim: Any) -> None:
    f, pages = fetcher(sim, WeightBudget(1000, 60.0))
    try:
        f.request("NOPEUSDT", 1, 1)
        page = pages.get(timeout=5)
        assert page.trades == () and page.error is not None and "HTTP 400" in page.error
        assert "-1121" in page.error and not page.rate_limited
    finally:
        f.stop()


def test_429_blocks_the_budget_for_retry_after() -> None:
    config = SimulatorConfig(symbols=("BTCUSDT",), weight_budget=30)
    with Simulator(config) as s:
        budget = WeightBudget(1000, 60.0)
        f, pages = fetcher(s, budget)
        try:
            f.request("BTCUSDT", 1, 1)
            assert pages.get(timeout=5).error is None  # 20 of the exchange's 30
            f.request("BTCUSDT", 1, 1)
            page = pages.get(timeout=5)
            assert page.rate_limited and page.error == "HTTP 429"
            assert budget.delay(1, time.monotonic()) > 0.5  # blocked for Retry-After (>= 1 s)
        finally:
            f.stop()


def test_a_cancelled_request_is_never_sent_and_a_newer_one_replaces_the_pending_one(
    sim: Any,
) -> None:
    budget = WeightBudget(1000, 60.0)
    budget.block(0.5, time.monotonic())  # nothing is sent for half a second
    f, pages = fetcher(sim, budget)
    try:
        f.request("BTCUSDT", 1, sim.trades("BTCUSDT")[0].agg_id)
        assert f.due()  # the snapshot fetcher waits while this is so
        f.cancel("BTCUSDT")
        f.request("ETHUSDT", 2, 1)  # replaced below before it is sent
        f.request("ETHUSDT", 3, 1)
        page = pages.get(timeout=5)
        assert (page.symbol, page.episode) == ("ETHUSDT", 3)
        with pytest.raises(queue.Empty):
            pages.get(timeout=0.3)
        assert not f.due()
    finally:
        f.stop()


def test_backfills_may_use_the_whole_budget(sim: Any) -> None:
    budget = WeightBudget(100, 60.0)
    budget.spend(80, time.monotonic())  # 80 + 20 fits
    f, pages = fetcher(sim, budget)
    try:
        f.request("BTCUSDT", 1, sim.trades("BTCUSDT")[0].agg_id)
        assert pages.get(timeout=5).error is None
    finally:
        f.stop()
