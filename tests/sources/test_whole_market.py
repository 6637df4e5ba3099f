"""A whole market starts, and comes back after every connection drops, with no REST snapshot.

Two hundred symbols need two hundred snapshots; at a 1,000-level snapshot's weight of 20 that is
4,000 of the 2,400 weight Binance allows an IP a minute. Partial depth frames start every book
instead (and a book that a sequence break drops), so the REST weight goes to trade backfills.
The exchange imitation here allows only 400 weight a minute: REST snapshots could not sync the
market in minutes, and any request it refuses would show as a 429.

How fast it is, at the real limits and with 500 symbols, is the ``whole-market`` benchmark's
business (``python -m benchmarks.run --cases whole-market``); this test waits on events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY

from market_data import shutdown
from market_data.events import BookState, BookStatus, BookUpdate, Market, OutputEvent
from market_data.options import BinanceFuturesOptions
from market_data.runtime import PipelineRuntime
from sources.binance import BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.flows.helpers import run_source
from tests.sources.test_binance_live import DEPTH, assert_books_match

SYMBOLS = [f"M{i:03d}USDT" for i in range(200)]
WAIT_S = 60.0  # a bound on a broken run, not a target


def rest_snapshots() -> float:
    """REST snapshots fetched for this test's symbols (the counters are the process's)."""
    total = 0.0
    mine = set(SYMBOLS)
    for family in REGISTRY.collect():
        if family.name == "snapshot_fetches":
            total += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("symbol") in mine
            )
    return total


def wait_for(what: Callable[[], bool], name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        if time.monotonic() > deadline:
            shutdown.request_stop("test timed out")
            raise AssertionError(f"timed out waiting for {name}")
        time.sleep(0.05)


def test_two_hundred_books_start_and_survive_a_mass_cut_without_rest_snapshots() -> None:
    config = SimulatorConfig(symbols=tuple(SYMBOLS), rate=4, seed=21, levels=100, weight_budget=400)
    before = rest_snapshots()
    out: list[OutputEvent] = []
    marks: dict[str, Any] = {}

    def drive(sim: Simulator) -> None:
        try:

            def synced() -> set[str]:
                return {
                    e.symbol
                    for e in list(out)
                    if isinstance(e, BookStatus) and e.state is BookState.SYNCED
                }

            wait_for(lambda: synced() == set(SYMBOLS), "every book to sync")
            marks["ids_at_cut"] = {s: sim.last_update_id(s) for s in SYMBOLS}
            marks["cut_at"] = len(out)
            sim.disconnect_all()

            def back() -> set[str]:
                at_cut = marks["ids_at_cut"]
                return {
                    e.symbol
                    for e in list(out)[marks["cut_at"] :]
                    if isinstance(e, BookUpdate) and e.last_update_id > at_cut[e.symbol]
                }

            wait_for(lambda: back() == set(SYMBOLS), "every book back after the cut")
            marks["done"] = True
        finally:
            shutdown.request_stop("test done")

    with Simulator(config) as sim:
        options = BinanceFuturesOptions(
            symbols=SYMBOLS,
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            reconnect_delay_ms=100,
            max_reconnect_delay_ms=500,
            partitions=2,
            trade_backfill=False,  # this test is about books: no aggTrades requests either
        )
        runtime = PipelineRuntime()
        source = BinanceSource(options, Market.FUTURES, depth=DEPTH, wants=runtime.wants)
        driver = threading.Thread(target=drive, args=(sim,), daemon=True)
        driver.start()
        try:
            run_source(source, Market.FUTURES, 1, DEPTH, runtime, sink=out)
        finally:
            shutdown.reset()
        driver.join(10)
        checked = assert_books_match(sim, out)
        counts = sim.counts()
    assert marks.get("done"), "the flow ended before every book came back"
    assert set(checked) == set(SYMBOLS)
    assert rest_snapshots() == before, "a book asked for a REST snapshot"
    assert counts["rest_429"] == 0 and counts["rest_418"] == 0
    assert counts["ws_connections"] >= 2 * 4  # every connection was made again
