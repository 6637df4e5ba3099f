"""The live Binance source against the project's exchange simulator on loopback."""

from __future__ import annotations

from collections import defaultdict

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, cluster_main, run_main

from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    Market,
    OutputEvent,
    SourceEvent,
    Trade,
)
from market_data.options import BinanceFuturesOptions, OrderBookOptions
from operators.orderbook import apply
from sources.binance import BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.faults import FaultConfig
from sources.simulator.server import Simulator

DEPTH = 10


def run_live(
    sim: Simulator, symbols: list[str], seconds: float, workers: int = 1, **opts
) -> list[OutputEvent]:
    options = BinanceFuturesOptions(
        symbols=symbols,
        ws_url=sim.ws_url,
        rest_url=sim.rest_url,
        reconnect_delay_ms=50,
        max_reconnect_delay_ms=500,
        run_for_s=seconds,
        **opts,
    )
    flow = Dataflow("live_test")
    src: Stream[SourceEvent] = op.input("binance", flow, BinanceSource(options, Market.FUTURES))
    books = apply("order_book", src, OrderBookOptions(depth=DEPTH), Market.FUTURES)
    out: list[OutputEvent] = []
    op.output("out", books, TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def assert_books_match(sim: Simulator, out: list[OutputEvent]) -> dict[str, int]:
    """Every emitted book equals the simulator's own book at that update id."""
    checked: dict[str, int] = defaultdict(int)
    for ev in out:
        if isinstance(ev, BookUpdate):
            truth = sim.book_at(ev.symbol, ev.last_update_id, DEPTH)
            assert (ev.bids, ev.asks) == (truth.bids, truth.asks), (
                f"{ev.symbol}: wrong book at u={ev.last_update_id}"
            )
            checked[ev.symbol] += 1
    return checked


def test_books_and_trades_match_the_exchange():
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    with Simulator(SimulatorConfig(symbols=tuple(symbols), rate=40, seed=3)) as sim:
        out = run_live(sim, symbols, seconds=3.0)
        checked = assert_books_match(sim, out)
        assert set(checked) == set(symbols)
        assert all(n > 10 for n in checked.values()), checked
        trades = defaultdict(list)
        for ev in out:
            if isinstance(ev, Trade):
                trades[ev.symbol].append(ev.trade_id)
        for symbol in symbols:
            sent = [f.agg_id for f in sim.trades(symbol)]
            got = trades[symbol]
            assert got, symbol
            assert got == sorted(set(got)), f"{symbol}: trades duplicated or out of order"
            # Every trade published after the first one we saw reached us, in order.
            assert got == [a for a in sent if got[0] <= a <= got[-1]], symbol


@pytest.mark.parametrize("fault", ["gap", "disconnect", "duplicate", "malformed", "unknown_event"])
def test_each_fault_is_recovered_without_a_wrong_book(fault):
    symbols = ["BTCUSDT", "ETHUSDT"]
    rate = {
        "gap": 0.03,
        "disconnect": 0.01,
        "duplicate": 0.1,
        "malformed": 0.1,
        "unknown_event": 0.1,
    }[fault]
    config = SimulatorConfig(
        symbols=tuple(symbols), rate=40, seed=11, faults=FaultConfig(**{fault: rate})
    )
    with Simulator(config) as sim:
        out = run_live(sim, symbols, seconds=5.0)
        assert sim.counts().get(fault, 0) > 0 or fault in ("gap", "disconnect"), sim.counts()
        checked = assert_books_match(sim, out)
        assert set(checked) == set(symbols)
        # After the last resync of each symbol, its book came back.
        for symbol in symbols:
            states = [e for e in out if isinstance(e, BookStatus) and e.symbol == symbol]
            assert states and states[-1].state is BookState.SYNCED, (symbol, states[-3:])
