"""An exchange that restarts with lower update and trade ids: the book resyncs, trades go on.

Before, the fresh snapshot was ignored as older than the book, the lower-id deltas were taken
for duplicates and the new trades for repeats: the book stayed "synced" and nothing was
published (one symbol frozen for 64 s in an independent probe). A replayed frame repeats its
event time; these are later in time, which is how the service tells them apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from market_data import shutdown
from market_data.events import BookState, BookStatus, BookUpdate, Market, OutputEvent, Trade
from market_data.options import BinanceFuturesOptions
from market_data.runtime import PipelineRuntime
from sources.binance import BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.market import MarketModel
from sources.simulator.server import Simulator
from tests.flows.helpers import run_source
from tests.sources.test_binance_live import DEPTH

SYMBOL = "AAAUSDT"
BEFORE, AFTER = 8, 11  # seeds: the second exchange's update and trade ids are both lower
WAIT_S = 60.0  # a bound on a broken run, not a target


def first_ids(config: SimulatorConfig) -> tuple[int, int]:
    model = MarketModel(config.spec_of(SYMBOL), config.seed, config.market)
    return model.last_update_id, model._next_agg_id


def wait_for(what: Callable[[], bool], name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not what():
        if time.monotonic() > deadline:
            shutdown.request_stop("test timed out")
            raise AssertionError(f"timed out waiting for {name}")
        time.sleep(0.05)


def test_an_exchange_restarted_with_lower_ids_is_followed_again() -> None:
    before = SimulatorConfig(symbols=(SYMBOL,), rate=50, seed=BEFORE, trade_probability=0.3)
    after_ids = first_ids(replace(before, seed=AFTER))
    assert after_ids < first_ids(before)  # the test's premise: both kinds of ids go back
    out: list[OutputEvent] = []
    marks: dict[str, Any] = {}
    sims: list[Simulator] = [Simulator(before).start()]

    def drive() -> None:
        try:
            wait_for(
                lambda: (
                    any(isinstance(e, BookUpdate) for e in list(out))
                    and any(isinstance(e, Trade) for e in list(out))
                ),
                "a book and a trade from the first exchange",
            )
            old = sims[0]
            ws_port = int(old.ws_url.rsplit(":", 1)[1])
            rest_port = int(old.rest_url.rsplit(":", 1)[1])
            old.stop()
            marks["restart_at"] = len(out)
            config = replace(before, seed=AFTER, ws_port=ws_port, rest_port=rest_port)
            sims.append(Simulator(config).start())

            def from_the_new_exchange() -> bool:
                later = list(out)[marks["restart_at"] :]
                books = [e for e in later if isinstance(e, BookUpdate)]
                trades = [e for e in later if isinstance(e, Trade)]
                return bool(books) and bool(trades) and books[-1].last_update_id >= after_ids[0]

            wait_for(from_the_new_exchange, "books and trades of the restarted exchange")
            time.sleep(0.5)  # a few more of each
            marks["done"] = True
        finally:
            shutdown.request_stop("test done")

    options = BinanceFuturesOptions(
        symbols=[SYMBOL],
        ws_url=sims[0].ws_url,
        rest_url=sims[0].rest_url,
        reconnect_delay_ms=100,
        max_reconnect_delay_ms=500,
    )
    runtime = PipelineRuntime()
    source = BinanceSource(options, Market.FUTURES, depth=DEPTH, wants=runtime.wants)
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        run_source(source, Market.FUTURES, 1, DEPTH, runtime, sink=out)
    finally:
        shutdown.reset()
        driver.join(10)
        for sim in sims:
            sim.stop()
    assert marks.get("done"), "the flow ended before the restarted exchange was followed"
    first, second = sims
    later = out[marks["restart_at"] :]
    # Every book published is the one exchange's or the other's, exactly.
    for ev in out:
        if isinstance(ev, BookUpdate):
            sim = second if ev.last_update_id < first_ids(before)[0] else first
            truth = sim.book_at(SYMBOL, ev.last_update_id, DEPTH)
            assert (ev.bids, ev.asks) == (truth.bids, truth.asks), ev.last_update_id
    statuses = [e for e in later if isinstance(e, BookStatus)]
    assert any("ids went back" in s.reason for s in statuses), statuses
    assert statuses[-1].state is BookState.SYNCED
    # The new exchange's trades are published, in its id order, and they are its own.
    new_trades = [
        e.trade_id for e in later if isinstance(e, Trade) and e.trade_id < after_ids[1] + 10**6
    ]
    assert new_trades and new_trades == sorted(set(new_trades))
    assert set(new_trades) <= {f.agg_id for f in second.trades(SYMBOL)}
