"""Redis killed and restarted under the live flow: consumers catch up, metrics show the outage.

The live source reads the simulator; the Redis sink writes ``both`` (streams and pub/sub) to a
``redis-server`` this test starts with an always-fsynced append-only file, kills with SIGKILL
mid-run and starts again on the same port. A stream consumer that keeps its last id and
reconnects on errors (the way a client should) must receive every trade the flow emitted exactly
once and in order; a subscriber must hear from the sink again after the restart without anyone
touching the flow; ``redis_errors`` and ``sink_buffer_depth`` must show the outage.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import bytewax.operators as op
import orjson
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from prometheus_client import REGISTRY

from market_data.events import Market, OutputEvent, Trade
from market_data.options import BinanceFuturesOptions, OrderBookOptions, RedisSinkOptions
from operators.orderbook import apply
from sinks.redis import RedisSink
from sources.binance import BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.redis_server import RedisServer

SYMBOLS = ["OUTAUSDT", "OUTBUSDT", "OUTCUSDT"]
RUN_S = 12.0
KILL_AT_S, DOWN_FOR_S = 3.0, 2.5


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class StreamConsumer(threading.Thread):
    """XREADs every trade stream from its last id; on any error, reconnects and goes on."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.last = {f"{prefix}trades:{s}": "0-0" for s in SYMBOLS}
        self.got: dict[str, list[int]] = defaultdict(list)
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        while not self.stop.is_set():
            try:
                replies: Any = conn.xread(self.last, block=100)  # type: ignore[arg-type]
            except (redis.RedisError, OSError):
                self.errors += 1
                time.sleep(0.1)
                continue
            for key, entries in replies or []:
                for entry_id, fields in entries:
                    self.last[key.decode()] = entry_id.decode()
                    trade = orjson.loads(fields[b"data"])
                    self.got[trade["symbol"]].append(trade["trade_id"])
        conn.close()


class Subscriber(threading.Thread):
    """PSUBSCRIBEs to everything under the prefix; resubscribes when the connection drops."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.pattern = f"{prefix}*"
        self.received: list[float] = []  # arrival times
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            conn = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            try:
                pubsub = conn.pubsub()
                pubsub.psubscribe(self.pattern)
                while not self.stop.is_set():
                    msg = pubsub.get_message(timeout=0.1)
                    if msg and msg["type"] == "pmessage":
                        self.received.append(time.monotonic())
            except (redis.RedisError, OSError):
                time.sleep(0.1)
            finally:
                conn.close()


def test_redis_killed_mid_run_consumers_catch_up_and_metrics_show_it() -> None:
    prefix = f"out-{uuid.uuid4().hex[:6]}:"
    label = f"redis:outage-{prefix[:-1]}"
    config = SimulatorConfig(symbols=tuple(SYMBOLS), rate=60, seed=4, trade_probability=0.2)
    with RedisServer(persistent=True) as server, Simulator(config) as sim:
        options = BinanceFuturesOptions(
            symbols=SYMBOLS, ws_url=sim.ws_url, rest_url=sim.rest_url, run_for_s=RUN_S
        )
        sink = RedisSink(
            RedisSinkOptions(
                url=server.url, channel_prefix=prefix, mode="both",
                socket_timeout_s=0.3, retry_initial_ms=20, retry_max_ms=200,
            ),
            label,
        )  # fmt: skip
        flow = Dataflow("redis_outage")
        src = op.input("binance", flow, BinanceSource(options, Market.FUTURES))
        books = apply("order_book", src, OrderBookOptions(depth=5), Market.FUTURES)
        emitted: list[OutputEvent] = []
        op.output("copy", books, TestingSink(emitted))
        op.output("redis", books, sink)

        errors_before = sum(sample("redis_errors_total", symbol=s) for s in SYMBOLS)
        consumer = StreamConsumer(server.url, prefix)
        subscriber = Subscriber(server.url, prefix)
        consumer.start()
        subscriber.start()
        runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
        started = time.monotonic()
        runner.start()

        # Kill it once the sink has been publishing for a while (a slow start must not make
        # the outage come first).
        deadline = started + RUN_S - DOWN_FOR_S - 3
        while not subscriber.received or time.monotonic() - started < KILL_AT_S:
            assert time.monotonic() < deadline, "nothing was published before the outage"
            time.sleep(0.05)
        server.kill()
        killed_at = time.monotonic()
        depth_during = 0.0
        while time.monotonic() - killed_at < DOWN_FOR_S:
            depth_during = max(depth_during, sample("sink_buffer_depth", sink=label))
            time.sleep(0.05)
        server.start()
        restarted_at = time.monotonic()
        runner.join(RUN_S + 30)
        assert not runner.is_alive(), "the flow did not end"
        time.sleep(0.5)  # the consumer reads what the last batch wrote
        consumer.stop.set()
        subscriber.stop.set()
        consumer.join(5)
        subscriber.join(5)
        assert time.monotonic() - started < RUN_S + 30

    emitted_trades: dict[str, list[int]] = defaultdict(list)
    for ev in emitted:
        if isinstance(ev, Trade):
            emitted_trades[ev.symbol].append(ev.trade_id)
    for symbol in SYMBOLS:
        assert emitted_trades[symbol], symbol
        # Exactly once and in order, across the outage: what the flow emitted is what was read.
        assert consumer.got[symbol] == emitted_trades[symbol], symbol
        # And the flow emitted every trade the exchange published in that span (no faults).
        ids = emitted_trades[symbol]
        assert ids == [f.agg_id for f in sim.trades(symbol) if ids[0] <= f.agg_id <= ids[-1]]
    assert consumer.errors > 0, "the consumer should have seen the outage"
    # Pub/sub resumed by itself: the sink published again after the restart.
    assert any(t > restarted_at for t in subscriber.received)
    assert any(t < killed_at for t in subscriber.received)
    # The metrics show the outage, and that it is over.
    assert depth_during > 0
    assert sum(sample("redis_errors_total", symbol=s) for s in SYMBOLS) > errors_before
    assert sample("sink_buffer_depth", sink=label) == 0
    assert sample("sink_drops_total", sink=label, type="trade") == 0
