"""The Redis sink against a real Redis (see tests/redis_server.py for which one)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main
from prometheus_client import REGISTRY

from market_data import ConfigError, MarketDataError
from market_data.config import PipelineConfig
from market_data.events import BookState, BookStatus, BookUpdate, OutputEvent, Trade
from market_data.options import OrderBookOptions, RedisSinkOptions, ReplayOptions
from sinks.payload import encode_book, encode_trade
from sinks.redis import RedisPartition, RedisSink, build_sink, redact_url
from sinks.resp import ReplyReader
from tests.redis_server import LossyProxy, RedisServer, free_port, redis_url, stream_entries

T0 = 1_700_000_000_000


def book(symbol: str, update_id: int, recv_ns: int = 0) -> BookUpdate:
    bids = ((50_000_12_345_678, 150_000_000), (49_999_00_000_000, 1))
    asks = ((50_001_00_000_000, 200_000_000),)
    return BookUpdate(symbol, bids, asks, update_id, T0 + update_id, 0.0, recv_ns)


def trade(symbol: str, trade_id: int, recv_ns: int = 0) -> Trade:
    price = 50_000_00_000_000 + trade_id
    return Trade(
        symbol, trade_id, price, 1_500_000, T0 + trade_id, trade_id % 2 == 0, 0, 0.0, recv_ns
    )


def status(symbol: str) -> BookStatus:
    return BookStatus(symbol, BookState.RESYNCING, "gap", 7, 0.0)


def message(item: BookUpdate | Trade, prefix: str = "") -> tuple[str, bytes]:
    """The (channel, payload) the sink publishes for ``item``."""
    if isinstance(item, BookUpdate):
        return f"{prefix}orderbook:{item.symbol}", encode_book(item)
    return f"{prefix}trades:{item.symbol}", encode_trade(item)


def pipeline(name: str, sink: RedisSinkOptions) -> PipelineConfig:
    return PipelineConfig(name, ReplayOptions(path="unused.jsonl"), (OrderBookOptions(),), (sink,))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_url() as found:
        yield found


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private server that tests may pause (never kill: later tests share it)."""
    with RedisServer() as private:
        yield private


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def client(url: str, prefix: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(url)
    yield conn
    keys = list(conn.scan_iter(match=f"{prefix}*"))
    if keys:
        conn.delete(*keys)
    conn.close()


Make = Callable[..., RedisPartition]


@pytest.fixture
def make(url: str, prefix: str) -> Iterator[Make]:
    """Build partitions the way bytewax does, closing them after the test."""
    parts: list[RedisPartition] = []

    def build(**options: Any) -> RedisPartition:
        options.setdefault("url", url)
        options.setdefault("channel_prefix", prefix)
        opts = RedisSinkOptions(**options)
        sink = build_sink(opts, pipeline(prefix.rstrip(":"), opts))
        sink.close_timeout_s = 0.5
        part = sink.build("publish_redis", 0, 1)
        parts.append(part)
        return part

    yield build
    for part in parts:
        part.close()


class Subscriber:
    """A pattern subscription, confirmed before anything is published."""

    def __init__(self, url: str, pattern: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.pubsub = self.conn.pubsub()
        self.pubsub.psubscribe(pattern)
        message = self.pubsub.get_message(timeout=5)
        assert message is not None and message["type"] == "psubscribe"

    def take(self, count: int, timeout_s: float = 5.0) -> list[tuple[str, bytes]]:
        """The next ``count`` messages as ``(channel, data)``."""
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "pmessage":
                out.append((message["channel"].decode(), message["data"]))
        return out

    def rest(self, quiet_s: float = 0.2) -> list[tuple[str, bytes]]:
        """Whatever else arrives until nothing has for ``quiet_s``."""
        out: list[tuple[str, bytes]] = []
        while (message := self.pubsub.get_message(timeout=quiet_s)) is not None:
            if message["type"] == "pmessage":
                out.append((message["channel"].decode(), message["data"]))
        return out

    def close(self) -> None:
        self.pubsub.close()
        self.conn.close()


@pytest.fixture
def subscribe(url: str) -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make_sub(pattern: str, at: str = url) -> Subscriber:
        subs.append(Subscriber(at, pattern))
        return subs[-1]

    yield make_sub
    for sub in subs:
        sub.close()


def wait_until_flushed(part: RedisPartition, sink: str, timeout_s: float = 10.0) -> None:
    """Keep calling write_batch, as a flow with traffic would, until nothing is held."""
    deadline = time.monotonic() + timeout_s
    part.write_batch([])
    while sample("sink_buffer_depth", sink=sink) > 0:
        assert time.monotonic() < deadline, "held items were not delivered"
        time.sleep(0.01)
        part.write_batch([])


# --- pub/sub payloads, through a real dataflow -------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_flow_publishes_the_exact_payloads_and_skips_book_status(
    url: str, prefix: str, subscribe: Callable[[str], Subscriber], workers: int
) -> None:
    items: list[OutputEvent] = [
        book("BTCUSDT", 10),
        trade("BTCUSDT", 1),
        status("BTCUSDT"),
        trade("ETHUSDT", 2),
        book("ETHUSDT", 11),
        book("BTCUSDT", 12),
        trade("BTCUSDT", 3),
    ]
    sub = subscribe(f"{prefix}*")
    opts = RedisSinkOptions(url=url, channel_prefix=prefix)
    flow = Dataflow("redis_sink_test")
    source: TestingSource[OutputEvent] = TestingSource(items, batch_size=3)
    stream = op.input("events", flow, source)
    op.output("publish_redis", stream, build_sink(opts, pipeline("flow", opts)))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)

    expected = [message(i, prefix) for i in items if isinstance(i, BookUpdate | Trade)]
    assert sub.take(len(expected)) == expected
    assert sub.rest() == []
    assert orjson.loads(expected[1][1]) == {
        "symbol": "BTCUSDT",
        "trade_id": 1,
        "price": 50000.00000001,
        "quantity": 0.015,
        "timestamp": T0 + 1,
        "is_buyer_maker": False,
    }
    assert orjson.loads(expected[0][1])["bids"][0] == [50000.12345678, 1.5]


def test_flow_runs_to_completion_while_redis_is_down() -> None:
    opts = RedisSinkOptions(url=f"redis://127.0.0.1:{free_port()}", retry_initial_ms=10)
    sink = f"redis:down-{uuid.uuid4().hex[:6]}"
    items: list[OutputEvent] = [trade("DOWNUSDT", i) for i in range(1, 7)]
    items += [book("DOWNUSDT", i) for i in range(1, 4)]
    source: TestingSource[OutputEvent] = TestingSource(items, batch_size=2)
    flow = Dataflow("redis_down_test")
    op.output(
        "publish_redis",
        op.input("events", flow, source),
        RedisSink(opts, sink, close_timeout_s=0.1),
    )
    run_main(flow)  # no exception: everything held, then counted at close
    assert sample("sink_drops_total", sink=sink, type="trade") == 6
    assert sample("sink_drops_total", sink=sink, type="orderbook") == 1  # conflated to one
    assert sample("sink_buffer_depth", sink=sink) == 0


# --- streams ------------------------------------------------------------------------------------


def test_streams_mode_adds_entries_with_trade_ids_and_publishes_nothing(
    make: Make, prefix: str, client: redis.Redis, subscribe: Callable[[str], Subscriber]
) -> None:
    sub = subscribe(f"{prefix}*")
    part = make(mode="streams")
    books = [book("BTCUSDT", 1), book("BTCUSDT", 2)]
    trades = [trade("BTCUSDT", 5), trade("BTCUSDT", 6), trade("ETHUSDT", 7)]
    part.write_batch([books[0], trades[0], status("BTCUSDT"), trades[1]])
    part.write_batch([trades[2], books[1]])

    assert stream_entries(client, f"{prefix}trades:BTCUSDT") == [
        (f"{T0 + 5}-5", encode_trade(trades[0])),
        (f"{T0 + 6}-6", encode_trade(trades[1])),
    ]
    assert stream_entries(client, f"{prefix}trades:ETHUSDT") == [
        (f"{T0 + 7}-7", encode_trade(trades[2]))
    ]
    assert [d for _, d in stream_entries(client, f"{prefix}orderbook:BTCUSDT")] == [
        encode_book(b) for b in books
    ]
    assert sub.rest() == []


def test_streams_are_trimmed_to_about_stream_maxlen(
    make: Make, prefix: str, client: redis.Redis
) -> None:
    part = make(mode="streams", stream_maxlen=10)
    for start in range(0, 1000, 100):
        part.write_batch([book("BTCUSDT", i) for i in range(start, start + 100)])
    node: Any = client.config_get("stream-node-max-entries")
    slack = int(node.get("stream-node-max-entries", 100))
    key = f"{prefix}orderbook:BTCUSDT"
    assert 10 <= client.xlen(key) <= 10 + slack
    assert stream_entries(client, key)[-1][1] == encode_book(book("BTCUSDT", 999))


def test_both_mode_uses_one_name_for_the_stream_and_the_channel(
    make: Make, prefix: str, client: redis.Redis, subscribe: Callable[[str], Subscriber]
) -> None:
    sub = subscribe(f"{prefix}*")
    part = make(mode="both")
    first, second = trade("BTCUSDT", 1), book("BTCUSDT", 2)
    part.write_batch([first, second])
    (trades_name, trade_data), (books_name, book_data) = (
        message(first, prefix),
        message(second, prefix),
    )
    assert sub.take(2) == [(trades_name, trade_data), (books_name, book_data)]
    assert client.type(trades_name) == b"stream"
    assert client.type(books_name) == b"stream"
    assert stream_entries(client, trades_name) == [(f"{T0 + 1}-1", trade_data)]
    assert [d for _, d in stream_entries(client, books_name)] == [book_data]


# --- metrics --------------------------------------------------------------------------------------


def test_counts_publishes_and_records_latency_only_for_items_with_recv_ns(make: Make) -> None:
    symbol = f"M{uuid.uuid4().hex[:8].upper()}"
    part = make()
    now = time.perf_counter_ns()
    part.write_batch(
        [book(symbol, 1, now), trade(symbol, 1, now), trade(symbol, 2, now), trade(symbol, 3)]
    )
    assert sample("redis_publishes_total", symbol=symbol, type="orderbook") == 1
    assert sample("redis_publishes_total", symbol=symbol, type="trade") == 3
    assert sample("processing_latency_microseconds_count", symbol=symbol) == 3
    assert sample("processing_latency_seconds_count", symbol=symbol) == 3
    assert sample("processing_latency_seconds_sum", symbol=symbol) > 0


def test_a_refused_write_is_counted_and_the_rest_goes_through(
    make: Make, prefix: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client.set(f"{prefix}trades:BTCUSDT", "not a stream")  # XADD gets WRONGTYPE
    part = make(mode="streams")
    sink = f"redis:{prefix.rstrip(':')}"
    errors_before = sample("redis_errors_total", symbol="BTCUSDT")
    published_before = sample("redis_publishes_total", symbol="BTCUSDT", type="trade")
    delivered_before = sample("redis_publishes_total", symbol="ETHUSDT", type="trade")
    with caplog.at_level(logging.ERROR, logger="sinks.redis"):
        part.write_batch([trade("BTCUSDT", 1), trade("ETHUSDT", 2), trade("BTCUSDT", 3)])
    assert sample("sink_drops_total", sink=sink, type="trade") == 2
    assert sample("redis_errors_total", symbol="BTCUSDT") - errors_before == 2
    assert sample("redis_publishes_total", symbol="BTCUSDT", type="trade") == published_before
    assert sample("redis_publishes_total", symbol="ETHUSDT", type="trade") == delivered_before + 1
    assert sample("sink_buffer_depth", sink=sink) == 0
    assert len(caplog.records) == 1 and "WRONGTYPE" in caplog.text
    assert [i for i, _ in stream_entries(client, f"{prefix}trades:ETHUSDT")] == [f"{T0 + 2}-2"]


class ScriptedRedis:
    """A stand-in Redis whose answers to ``XADD`` and ``PUBLISH`` a test chooses.

    ``answer(name)`` gets the command's name (``b"XADD"`` or ``b"PUBLISH"``) and returns the raw
    RESP reply; set-up commands are answered as Redis would. Every write command is recorded in
    ``commands`` as ``(name, key)``.
    """

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._answer_of = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}"
        self.commands: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        commands = ReplyReader()  # commands are RESP arrays of bulk strings, like replies
        with conn:
            try:
                while data := conn.recv(65536):
                    commands.feed(data)
                    out = b""
                    while (command := commands.pop(1)) is not None:
                        name = command[0][0].upper()  # type: ignore[index]
                        if name in (b"XADD", b"PUBLISH"):
                            self.commands.append((name, command[0][1]))  # type: ignore[index]
                            out += self._answer_of(name)
                        elif name == b"HELLO":  # redis-py 8 speaks RESP3 by default
                            out += b"%1\r\n+proto\r\n:3\r\n"
                        else:
                            out += b"+OK\r\n"
                    conn.sendall(out)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


def test_a_redis_still_loading_its_data_holds_the_writes_for_a_retry() -> None:
    """LOADING is a connection error to redis-py (retried), not a refusal of the item (dropped)."""
    fake = ScriptedRedis(lambda _: b"-LOADING Redis is loading the dataset in memory\r\n")
    opts = RedisSinkOptions(
        url=fake.url, mode="streams", retry_initial_ms=60_000, retry_max_ms=60_000
    )
    sink = f"redis:loading-{uuid.uuid4().hex[:6]}"
    part = RedisSink(opts, sink, close_timeout_s=0.0).build("publish_redis", 0, 1)
    try:
        part.write_batch([trade("LOADUSDT", 1), trade("LOADUSDT", 2)])
        assert fake.commands  # the writes reached it and were answered with LOADING
        assert sample("sink_drops_total", sink=sink, type="trade") == 0
        assert sample("sink_buffer_depth", sink=sink) == 2  # held until Redis has loaded
        assert sample("redis_publishes_total", symbol="LOADUSDT", type="trade") == 0
    finally:
        part.close()
        fake.close()


def test_a_transient_refusal_retries_only_the_refused_command_and_counts_the_item_once() -> None:
    """OOM on the XADD, the PUBLISH accepted: only the XADD is sent again, and the item counts
    as published once, when both are done."""
    oom = [True]

    def answer(name: bytes) -> bytes:
        if name == b"XADD" and oom[0]:
            return b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
        return b"$15\r\n1700000000000-1\r\n" if name == b"XADD" else b":1\r\n"

    fake = ScriptedRedis(answer)
    now = 1000.0
    opts = RedisSinkOptions(url=fake.url, mode="both", retry_initial_ms=100, retry_max_ms=100)
    symbol = f"O{uuid.uuid4().hex[:8].upper()}"
    sink = f"redis:oom-{uuid.uuid4().hex[:6]}"
    part = RedisPartition(
        redis.Redis.from_url(opts.url), opts, sink, clock=lambda: now, close_timeout_s=0.0
    )
    try:
        part.write_batch([trade(symbol, 1), book(symbol, 2)])  # both items refused on the XADD
        assert sample("sink_buffer_depth", sink=sink) == 2
        assert sample("redis_publishes_total", symbol=symbol, type="trade") == 0
        assert sample("redis_publishes_total", symbol=symbol, type="orderbook") == 0
        oom[0] = False
        now += 0.1
        part.write_batch([])  # the retry is due
        assert sample("sink_buffer_depth", sink=sink) == 0
        assert sample("redis_publishes_total", symbol=symbol, type="trade") == 1
        assert sample("redis_publishes_total", symbol=symbol, type="orderbook") == 1
        names = [name for name, _ in fake.commands]
        assert names == [b"XADD", b"PUBLISH", b"XADD", b"PUBLISH", b"XADD", b"XADD"]
    finally:
        part.close()
        fake.close()


def test_rejects_items_that_are_not_output_events(make: Make) -> None:
    with pytest.raises(MarketDataError, match="got str"):
        make().write_batch(["BTCUSDT"])  # type: ignore[list-item]


def test_retry_bounds_are_checked_when_the_sink_is_built() -> None:
    opts = RedisSinkOptions(retry_initial_ms=500, retry_max_ms=100)
    with pytest.raises(ConfigError, match="retry_max_ms must be at least retry_initial_ms"):
        build_sink(opts, pipeline("p", opts))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@h:6379", "redis://:***@h:6379"),
        ("rediss://user:hunter2@h:6380/1", "rediss://user:***@h:6380/1"),
        ("redis://hunter2@h", "redis://***@h"),
        ("redis://u:p%40ss@h#frag", "redis://u:***@h#frag"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=hunter2", "unix:///run/redis.sock?password=***"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# --- outages --------------------------------------------------------------------------------------


def test_kill_and_restart_loses_no_trade_and_conflates_books(
    subscribe: Callable[..., Subscriber],
) -> None:
    name = f"outage-{uuid.uuid4().hex[:6]}"
    opts = RedisSinkOptions(mode="both", retry_initial_ms=10, retry_max_ms=50, socket_timeout_s=1.0)
    symbols = ("BTCUSDT", "ETHUSDT")
    sent: dict[str, list[int]] = {s: [] for s in symbols}
    next_id = iter(range(1, 10**6))

    def batch(books_per_symbol: int) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for _ in range(5):
            for s in symbols:
                tid = next(next_id)
                sent[s].append(tid)
                out.append(trade(s, tid))
        for s in symbols:
            out.extend(book(s, next(next_id)) for _ in range(books_per_symbol))
        return out

    with RedisServer(persistent=True) as server:
        opts = opts.model_copy(update={"url": server.url})
        part = RedisSink(opts, f"redis:{name}").build("publish_redis", 0, 1)
        sink = f"redis:{name}"
        for _ in range(4):
            part.write_batch(batch(2))
        before_kill = {s: list(ids) for s, ids in sent.items()}

        server.kill()
        during: list[OutputEvent] = []
        for _ in range(6):
            held = batch(3)
            during += held
            part.write_batch(held)  # never raises
        held_trades = sum(isinstance(i, Trade) for i in during)
        assert sample("sink_buffer_depth", sink=sink) == held_trades + len(symbols)

        server.start()
        sub = subscribe("*", server.url)
        wait_until_flushed(part, sink)
        after = batch(1)
        part.write_batch(after)

        # Subscribers see the held trades once, in order, and only the latest held book.
        latest = {i.symbol: i for i in during if isinstance(i, BookUpdate)}
        expected = [message(i) for i in during if isinstance(i, Trade)]
        expected += [message(b) for b in latest.values()]
        live = [message(i) for i in after if isinstance(i, BookUpdate | Trade)]
        got = sub.take(len(expected) + len(live))
        assert sorted(got[: len(expected)]) == sorted(expected)
        for s in symbols:
            channel_trades = [d for c, d in got if c == f"trades:{s}"]
            assert channel_trades == [
                encode_trade(i) for i in during + after if isinstance(i, Trade) and i.symbol == s
            ]
        assert got[len(expected) :] == live

        # The stream survived the kill (fsynced AOF) and holds every trade once, in order.
        conn = redis.Redis.from_url(server.url)
        for s in symbols:
            ids = [int(i.split("-")[1]) for i, _ in stream_entries(conn, f"trades:{s}")]
            assert ids == sent[s]
            assert ids[: len(before_kill[s])] == before_kill[s]
        conn.close()
        part.close()


def test_lost_replies_do_not_duplicate_trades_in_the_stream(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with LossyProxy(server.port) as proxy:
        opts = RedisSinkOptions(
            url=proxy.url, mode="both", retry_initial_ms=10, retry_max_ms=20, socket_timeout_s=2
        )
        sink = f"redis:lossy-{uuid.uuid4().hex[:6]}"
        part = RedisSink(opts, sink).build("publish_redis", 0, 1)
        part.write_batch([trade("LOSTUSDT", i) for i in (1, 2, 3)])
        proxy.lose_next_replies()
        with caplog.at_level(logging.WARNING, logger="sinks.redis"):
            part.write_batch([trade("LOSTUSDT", i) for i in (4, 5, 6)])
            assert sample("sink_buffer_depth", sink=sink) == 3  # executed, but unconfirmed
            wait_until_flushed(part, sink)
        part.write_batch([trade("LOSTUSDT", 7)])
        part.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    conn = redis.Redis.from_url(server.url)
    entries = stream_entries(conn, "trades:LOSTUSDT")
    conn.delete("trades:LOSTUSDT")
    conn.close()
    assert entries == [(f"{T0 + i}-{i}", encode_trade(trade("LOSTUSDT", i))) for i in range(1, 8)]


def test_a_paused_redis_times_out_and_the_trades_arrive_once(server: RedisServer) -> None:
    opts = RedisSinkOptions(
        url=server.url, mode="streams", retry_initial_ms=10, retry_max_ms=20, socket_timeout_s=0.2
    )
    sink = f"redis:paused-{uuid.uuid4().hex[:6]}"
    part = RedisSink(opts, sink).build("publish_redis", 0, 1)
    part.write_batch([trade("PAUSEUSDT", 1)])
    server.pause()
    try:
        part.write_batch([trade("PAUSEUSDT", 2), trade("PAUSEUSDT", 3)])  # times out, held
        assert sample("sink_buffer_depth", sink=sink) == 2
    finally:
        server.resume()
    wait_until_flushed(part, sink)
    part.close()
    conn = redis.Redis.from_url(server.url)
    ids = [i for i, _ in stream_entries(conn, "trades:PAUSEUSDT")]
    conn.delete("trades:PAUSEUSDT")
    conn.close()
    assert ids == [f"{T0 + i}-{i}" for i in (1, 2, 3)]


def test_retries_wait_for_the_backoff_delay_on_the_partition_clock() -> None:
    now = 1000.0
    opts = RedisSinkOptions(
        url=f"redis://127.0.0.1:{free_port()}", retry_initial_ms=125, retry_max_ms=500
    )
    symbol = f"B{uuid.uuid4().hex[:8].upper()}"
    client = redis.Redis.from_url(opts.url)
    part = RedisPartition(client, opts, "redis:backoff", clock=lambda: now, close_timeout_s=0.0)
    attempts: list[int] = []
    for step in (0.0, 0.0, 0.124, 0.001, 0.249, 0.001, 0.499, 0.001, 0.499, 0.001):
        now += step
        part.write_batch([trade(symbol, len(attempts) + 1)])
        attempts.append(int(sample("redis_errors_total", symbol=symbol)))
    # failed attempts at 0, then 0.125, 0.25 and 0.5 (the cap) apart
    assert attempts == [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    part.close()


def test_overflow_is_counted_logged_once_and_the_newest_trades_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, password = free_port(), "s3cret-pw"
    opts = RedisSinkOptions(
        url=f"redis://:{password}@127.0.0.1:{port}/0",
        max_buffer=5,
        mode="streams",
        retry_initial_ms=10,
        retry_max_ms=20,
    )
    sink = f"redis:overflow-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.DEBUG, logger="sinks.redis"):
        part = RedisSink(opts, sink).build("publish_redis", 0, 1)  # nothing listens yet
        for start in (1, 5, 9):
            part.write_batch([trade("OVERUSDT", i) for i in range(start, start + 4)])
            time.sleep(0.03)  # let retries (and their failures) happen in between
        assert sample("sink_drops_total", sink=sink, type="trade") == 7
        assert sample("sink_buffer_depth", sink=sink) == 5
        with RedisServer(port, args=("--requirepass", password)) as server:
            wait_until_flushed(part, sink)
            conn = redis.Redis.from_url(server.ping_url)
            ids = [i for i, _ in stream_entries(conn, "trades:OVERUSDT")]
            conn.close()
            part.close()
    assert ids == [f"{T0 + i}-{i}" for i in range(8, 13)]
    overflow_logs = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(overflow_logs) == 1
    assert password not in caplog.text
    assert "***" in caplog.text


def test_close_delivers_what_is_held_and_counts_what_it_cannot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    opts = RedisSinkOptions(
        url=f"redis://127.0.0.1:{port}", mode="streams", retry_initial_ms=10, retry_max_ms=20
    )
    delivered, lost = (
        f"redis:close-a-{uuid.uuid4().hex[:6]}",
        f"redis:close-b-{uuid.uuid4().hex[:6]}",
    )
    part = RedisSink(opts, delivered, close_timeout_s=2.0).build("publish_redis", 0, 1)
    part.write_batch([trade("CLOSEUSDT", 1), book("CLOSEUSDT", 1), trade("CLOSEUSDT", 2)])
    with RedisServer(port) as server:
        part.close()  # Redis is back: close flushes without another write_batch
        conn = redis.Redis.from_url(server.url)
        assert [i for i, _ in stream_entries(conn, "trades:CLOSEUSDT")] == [
            f"{T0 + 1}-1",
            f"{T0 + 2}-2",
        ]
        assert conn.xlen("orderbook:CLOSEUSDT") == 1
        conn.close()
    assert sample("sink_drops_total", sink=delivered, type="trade") == 0

    part = RedisSink(opts, lost, close_timeout_s=0.1).build("publish_redis", 0, 1)
    part.write_batch([trade("CLOSEUSDT", 3), book("CLOSEUSDT", 2), book("CLOSEUSDT", 3)])
    with caplog.at_level(logging.WARNING, logger="sinks.redis"):
        part.close()  # Redis is still down: bounded, and counted
    assert sample("sink_drops_total", sink=lost, type="trade") == 1
    assert sample("sink_drops_total", sink=lost, type="orderbook") == 1
    assert sample("sink_buffer_depth", sink=lost) == 0
    assert "1 trades and 1 book updates not delivered" in caplog.text


@pytest.mark.parametrize(("query", "protocol"), [("", "2"), ("?protocol=3", "3")])
def test_the_sink_speaks_resp2_unless_the_url_asks_for_resp3(query: str, protocol: str) -> None:
    # The sink reads replies itself: RESP3 would let a server push out-of-band messages
    # (maintenance notifications) between them. redis-py 8 defaults to RESP3.
    options = RedisSinkOptions(url=f"redis://127.0.0.1:9/0{query}")  # never connected here
    part = RedisSink(options, "redis:test").build("s", 0, 1)
    try:
        assert str(part._client.connection_pool.connection_kwargs["protocol"]) == protocol
    finally:
        part.close()
