"""The live Binance source against the project's exchange simulator on loopback."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from health.state import STATE
from market_data.events import (
    SOURCE_BATCH,
    BookState,
    BookStatus,
    BookUpdate,
    DepthDelta,
    Market,
    OutputEvent,
    Trade,
)
from market_data.options import BinanceFuturesOptions, BinanceSpotOptions
from market_data.runtime import PipelineRuntime
from sources.backfill import FAILURE_REASONS
from sources.binance import IDLE_WAIT_S, BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.faults import FaultConfig
from sources.simulator.server import Simulator
from tests.flows.helpers import run_source

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
    runtime = PipelineRuntime()
    source = BinanceSource(options, Market.FUTURES, depth=DEPTH, wants=runtime.wants)
    return run_source(source, Market.FUTURES, workers, DEPTH, runtime)


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


@pytest.mark.parametrize(
    "fault",
    [
        "gap",
        "disconnect",
        "duplicate",
        "malformed",
        "unknown_event",
        "snapshot_429",
        "snapshot_lag",
    ],
)
def test_each_fault_is_recovered_without_a_wrong_book(fault):
    symbols = ["BTCUSDT", "ETHUSDT"]
    rate = {
        "gap": 0.03,
        "disconnect": 0.05,
        "duplicate": 0.1,
        "malformed": 0.1,
        "unknown_event": 0.1,
        "snapshot_429": 0.5,
        "snapshot_lag": 3,
    }[fault]
    config = SimulatorConfig(
        symbols=tuple(symbols), rate=40, seed=11, faults=FaultConfig().with_(**{fault: rate})
    )
    # Snapshot faults need REST snapshots: without partial depth frames every resync asks one.
    partial_depth = not fault.startswith("snapshot")
    with Simulator(config) as sim:
        out = run_live(sim, symbols, seconds=5.0, partial_depth=partial_depth)
        assert sim.counts().get(fault, 0) > 0, sim.counts()  # the fault really happened
        checked = assert_books_match(sim, out)
        assert set(checked) == set(symbols)
        # After the last resync of each symbol, its book came back.
        for symbol in symbols:
            states = [e for e in out if isinstance(e, BookStatus) and e.symbol == symbol]
            assert states and states[-1].state is BookState.SYNCED, (symbol, states[-3:])


def test_two_hundred_symbols_split_streams_and_pace_snapshots():
    symbols = [f"S{i:03d}USDT" for i in range(200)]
    # The exchange allows 60 weight per second; each snapshot (limit 50) weighs 2, so 200
    # snapshots need at least 400 / 60 ~ 6.7 s. The source is told 50 per second, and starts
    # books from REST only (partial depth frames would need none).
    config = SimulatorConfig(
        symbols=tuple(symbols), rate=1, seed=5, weight_budget=60, weight_window_s=1.0, levels=100
    )
    with Simulator(config) as sim:
        out = run_live(
            sim,
            symbols,
            seconds=14.0,
            partitions=2,
            max_streams_per_connection=64,
            snapshot_limit=50,
            snapshot_weight_budget=50,
            snapshot_window_s=1.0,
            partial_depth=False,
        )
        counts = sim.counts()
    # 2 partitions x 100 symbols: depth on /public and aggTrade on /market, 64 streams each at
    # most -> ceil(100 / 64) = 2 connections per route per partition.
    assert counts["ws_connections"] == 2 * 2 * 2
    assert counts.get("rest_429", 0) == 0 and counts.get("rest_418", 0) == 0
    synced = {
        e.symbol: e.recv_time
        for e in out
        if isinstance(e, BookStatus) and e.state is BookState.SYNCED
    }
    assert set(synced) == set(symbols)
    spread = max(synced.values()) - min(synced.values())
    # 25 snapshots fit the first window, then 25 a second: the last is sent ~7 s after the
    # first; a book syncs on the first delta after its snapshot (up to ~1 s at 1 update/s).
    assert spread >= (200 - 25) / 25 - 1.2, f"snapshots were not paced: synced within {spread:.1f}s"
    assert not [e for e in out if isinstance(e, BookStatus) and e.state is BookState.RESYNCING]


def test_connection_is_replaced_before_the_exchange_cuts_it():
    symbols = ["BTCUSDT", "ETHUSDT"]
    config = SimulatorConfig(symbols=tuple(symbols), rate=40, seed=2, max_lifetime_s=5.0)
    with Simulator(config) as sim:
        out = run_live(sim, symbols, seconds=8.0, max_connection_age_s=1.5)
        counts = sim.counts()
    # Each connection was replaced (several times) before its 5 s cut (a wide margin for a
    # loaded machine), so the exchange never had to cut one and no book needed a resync.
    assert counts["ws_connections"] >= 2 * 3
    assert counts.get("lifetime_closed", 0) == 0
    assert_books_match(sim, out)
    statuses = [e for e in out if isinstance(e, BookStatus)]
    assert [s.state for s in statuses] == [BookState.SYNCED] * len(symbols), statuses


def test_every_fault_at_once_books_stay_right_and_recover_quickly():
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    faults = FaultConfig().with_(
        gap=0.02, disconnect=0.01, duplicate=0.05, malformed=0.05, unknown_event=0.05,
        snapshot_429=0.2, snapshot_lag=2, snapshot_delay_s=0.2,
    )  # fmt: skip
    config = SimulatorConfig(symbols=tuple(symbols), rate=40, seed=21, faults=faults)
    with Simulator(config) as sim:
        out = run_live(sim, symbols, seconds=12.0)
        counts = sim.counts()
    for fault in ("gap", "duplicate", "malformed", "unknown_event"):
        assert counts.get(fault, 0) > 0, (fault, counts)
    checked = assert_books_match(sim, out)
    assert set(checked) == set(symbols)
    # Each time a book was dropped, it came back within a few seconds.
    for symbol in symbols:
        statuses = [e for e in out if isinstance(e, BookStatus) and e.symbol == symbol]
        down_since = None
        for status in statuses:
            if status.state is BookState.RESYNCING and down_since is None:
                down_since = status.recv_time
            elif status.state is BookState.SYNCED and down_since is not None:
                assert status.recv_time - down_since < 5.0, f"{symbol} took too long to resync"
                down_since = None
        assert statuses[-1].state is BookState.SYNCED or (
            down_since is not None and statuses[-1].recv_time - down_since < 5.0
        ), symbol


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("market", [Market.FUTURES, Market.SPOT])
def test_trades_missed_while_disconnected_are_backfilled_once_and_in_order(market: Market) -> None:
    symbols = ["BTCUSDT", "ETHUSDT"]
    # Many trades, and connections cut often (also in the middle of a trade frame, which is then
    # never pushed): each cut loses trades that only REST aggTrades can bring back. REST answers
    # late, so live trades of the new connection arrive first and must wait for the backfill.
    config = SimulatorConfig(
        symbols=tuple(symbols),
        market=market,
        rate=40,
        seed=7,
        trade_probability=0.5,
        faults=FaultConfig(disconnect=0.02, agg_trades_delay_s=0.3),
    )
    options_type = BinanceFuturesOptions if market is Market.FUTURES else BinanceSpotOptions
    before = {s: counter("trades_backfilled_total", symbol=s) for s in symbols}
    failures = [
        ("trade_backfill_failures_total", {"symbol": s, "reason": r})
        for s in symbols
        for r in FAILURE_REASONS
    ]
    failed_before = [counter(name, **labels) for name, labels in failures]
    with Simulator(config) as sim:
        options = options_type(
            symbols=symbols,
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            reconnect_delay_ms=50,
            max_reconnect_delay_ms=300,
            run_for_s=6.0,
        )
        out = run_source(BinanceSource(options, market), market, 1, DEPTH)
        counts = sim.counts()
        sent = {s: [f.agg_id for f in sim.trades(s)] for s in symbols}
    assert counts["disconnect"] >= 4, counts
    assert counts["agg_trades"] > 0, "the source asked REST for the missed trades"
    got: dict[str, list[int]] = defaultdict(list)
    for ev in out:
        if isinstance(ev, Trade):
            got[ev.symbol].append(ev.trade_id)
    for symbol in symbols:
        ids = got[symbol]
        assert len(ids) > 50, symbol
        # Every trade the exchange pushed from the first one received to the last one emitted
        # (also those pushed while a connection was down) came out exactly once, in id order.
        expected = [a for a in sent[symbol] if ids[0] <= a <= ids[-1]]
        missing = sorted(set(expected) - set(ids))
        assert ids == expected, f"{symbol}: {len(missing)} missing, e.g. {missing[:5]}"
    backfilled = sum(counter("trades_backfilled_total", symbol=s) - before[s] for s in symbols)
    assert backfilled > 0
    assert [counter(name, **labels) for name, labels in failures] == failed_before


def test_a_backfill_that_cannot_finish_gives_up_and_trades_go_on() -> None:
    # REST answers far later than the source waits: every backfill times out, is counted, and the
    # held live trades go on in order instead of stalling.
    config = SimulatorConfig(
        symbols=("BTCUSDT",),
        rate=40,
        seed=8,
        trade_probability=0.5,
        faults=FaultConfig(disconnect=0.05, agg_trades_delay_s=1.5),
    )
    timeouts_before = counter("trade_backfill_failures_total", symbol="BTCUSDT", reason="timeout")
    with Simulator(config) as sim:
        end_ms = (time.time() + 4.0) * 1000
        out = run_live(sim, ["BTCUSDT"], seconds=4.0, trade_backfill_timeout_s=0.4)
        fills = sim.trades("BTCUSDT")
        counts = sim.counts()
    assert counts["disconnect"] >= 2, counts
    timeouts = counter("trade_backfill_failures_total", symbol="BTCUSDT", reason="timeout")
    assert timeouts - timeouts_before >= 1
    ids = [ev.trade_id for ev in out if isinstance(ev, Trade)]
    assert ids == sorted(set(ids)), "once each, in id order"
    time_of = {f.agg_id: f.time_ms for f in fills}
    assert time_of[ids[-1]] >= end_ms - 1500, "trades kept flowing until the flow ended"


@contextmanager
def one_partition(**opts: Any) -> Iterator[tuple[str, Any]]:
    """The one source partition of BTCUSDT on a quiet simulator: (its name, the partition)."""
    with Simulator(SimulatorConfig(symbols=("BTCUSDT",), rate=20)) as sim:
        options = BinanceFuturesOptions(
            symbols=["BTCUSDT"], ws_url=sim.ws_url, rest_url=sim.rest_url, **opts
        )
        source = BinanceSource(options, Market.FUTURES)
        (name,) = source.list_parts()
        part = source.build_part("s", name, None)
        try:
            yield name, part
        finally:
            part.close()


def test_frames_left_after_a_batch_show_as_the_partitions_backlog() -> None:
    # A flow that falls behind the feed shows it in source_backlog before latency explodes.
    with one_partition() as (name, part):
        frame = '{"stream":"x@aggTrade","data":{"e":"kline","s":"BTCUSDT"}}'
        part._on_frames(0.0, 0, "ws://x", [frame] * 2_500)  # what a stalled worker leaves
        # At most SOURCE_BATCH events a batch: small enough to stay in the CPU caches.
        assert len(part.next_batch()) == SOURCE_BATCH
        assert counter("source_backlog", partition=name) == 2_500 - SOURCE_BATCH
        sizes = []
        while batch := part.next_batch():
            sizes.append(len(batch))
        assert max(sizes) == SOURCE_BATCH and sum(sizes) == 2_500 - SOURCE_BATCH
        assert counter("source_backlog", partition=name) == 0
    assert counter("source_backlog", partition=name) == 0


@pytest.mark.parametrize("poll_ms", [0.0, 5.0])
def test_an_idle_partition_polls_again_at_once_only_when_busy_polling(poll_ms: float) -> None:
    # bytewax waits 1 ms after an empty batch when next_awake is None, so busy polling must
    # give a time already past (it once cost ~0.7 ms of latency per frame); a poll interval
    # gives a time that far ahead.
    with one_partition(poll_interval_ms=poll_ms) as (_, part):
        part._on_frames(0.0, 0, "ws://x", ['{"e":"kline","s":"BTCUSDT"}'])
        assert part.next_batch() and part.next_awake() is None  # more may be waiting
        while part.next_batch():
            pass
        awake, now = part.next_awake(), datetime.now(UTC)
        assert awake is not None
        if poll_ms:
            assert now < awake <= now + timedelta(milliseconds=poll_ms)
        else:
            assert awake < now


def test_an_idle_low_latency_partition_waits_for_data_instead_of_spinning() -> None:
    # poll_interval_ms: 0 once spun (thousands of calls a second, a whole core); it now waits in
    # select for up to IDLE_WAIT_S, woken by data. The quiet simulator sends a frame every ~50 ms.
    with one_partition(poll_interval_ms=0.0) as (_, part):
        calls, started = 0, time.monotonic()
        while time.monotonic() - started < 0.3:
            part.next_batch()
            calls += 1
        assert calls < 0.3 / IDLE_WAIT_S * 1.5  # at most ~one call per wait, not a spin
        assert part.next_awake() is None or part.next_awake() < datetime.now(UTC)


def test_a_partition_behind_the_feed_leaves_frames_in_the_kernel_and_loses_nothing() -> None:
    # Frames are read by the worker itself (next_batch): one that falls behind reads later,
    # TCP slows the sender, and Python's memory does not grow with the backlog.
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=3_000, tick_ms=1)
    config = replace(config, depth_frame_per_update=True)  # ~3,000 depth frames/s
    with Simulator(config) as sim:
        options = BinanceFuturesOptions(
            symbols=["BTCUSDT"], ws_url=sim.ws_url, rest_url=sim.rest_url
        )
        source = BinanceSource(options, Market.FUTURES)
        (name,) = source.list_parts()
        part: Any = source.build_part("s", name, None)
        deltas: list[DepthDelta] = []
        try:
            time.sleep(1.5)  # a stalled worker: nothing processed, nothing read
            held = len(part._queue)
            assert held < 10, "at most connection events and snapshot answers"
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:  # the worker catches up
                deltas += [ev for ev in part.next_batch() if type(ev) is DepthDelta]
        finally:
            part.close()
    assert len(deltas) > 3_000 * 3, "what waited in the kernel, then the live feed"
    # TCP held what was not read: the chain of update ids has no hole (pu = previous u).
    pairs = itertools.pairwise(deltas)
    assert [b for a, b in pairs if b.prev_final_update_id != a.final_update_id] == []


def test_data_waiting_unread_counts_as_received_so_a_stalled_worker_shows() -> None:
    # The worker reads the sockets; when it stalls, only the connection threads can tell that
    # frames arrive and are not processed: /health's stall rule needs received > processed.
    with one_partition() as (_, part):
        deadline = time.monotonic() + 5.0
        while not part.next_batch():  # connected, frames processed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        part.next_batch()
        processed = STATE.processed_at
        assert processed is not None
        time.sleep(1.0)  # the worker stalls; the simulator sends 20 updates/s
        assert STATE.received_at is not None and STATE.received_at > processed + 0.5
