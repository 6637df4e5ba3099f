"""Book feeds: one symbol's records from a shared-memory ring or from Redis into a BookView."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from market_data.bookview import BookView, Condition
from market_data.events import BookState, BookStatus
from sinks.feeds import RedisFeed, ShmFeed, ring_segments
from sinks.shm import ShmWriter, segment_name, status_payload
from sinks.shm_format import MAGIC, RecordType
from tests.redis_server import free_port, redis_url


def book(u: int, symbol: str = "BTCUSDT", bid: float = 50000.0) -> bytes:
    return orjson.dumps(
        {
            "symbol": symbol,
            "bids": [[bid, 1.5], [bid - 0.1, 2.0]],
            "asks": [[bid + 0.1, 0.5]],
            "last_update_id": u,
            "timestamp": int(time.time() * 1000),  # just now: not behind the exchange
        }
    )


def trade(i: int, symbol: str = "BTCUSDT") -> bytes:
    return orjson.dumps(
        {
            "symbol": symbol,
            "trade_id": i,
            "price": 50000.1,
            "quantity": 0.5,
            "timestamp": 1_700_000_000_000 + i,
            "is_buyer_maker": False,
        }
    )


def status(state: BookState, reason: str = "") -> bytes:
    return status_payload(BookStatus("BTCUSDT", state, reason, 0, 0.0))


class Ticks:
    """A monotonic clock the test moves, so that rescans happen when the test says."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ring() -> Iterator[tuple[str, ShmWriter]]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("needs POSIX shared memory")
    name = f"test_feed_{uuid.uuid4().hex[:8]}"
    writer = ShmWriter.create(segment_name(name, 0), 64, 1024)
    yield name, writer
    writer.close()


def test_shm_feed_shows_the_latest_state_at_once_and_follows(ring):
    name, writer = ring
    writer.write(RecordType.STATUS, "BTCUSDT", status(BookState.AWAITING_SNAPSHOT))
    writer.write(RecordType.BOOK, "BTCUSDT", book(1))
    writer.write(RecordType.TRADE, "BTCUSDT", trade(1))
    writer.write(RecordType.BOOK, "ETHUSDT", book(9, "ETHUSDT", 3000.0))
    writer.write(RecordType.BOOK, "BTCUSDT", book(2))
    ticks = Ticks()
    feed = ShmFeed("BTCUSDT", [name], monotonic=ticks)
    view = BookView("BTCUSDT")
    try:
        assert feed.poll(view) == 4  # ETHUSDT's record is not ours
        assert view.book is not None and view.book.last_update_id == 2
        assert [t.trade_id for t in view.trades] == [1]
        assert view.headline(time.time()).condition is Condition.LIVE
        assert view.source == f"shm {name}.w0"

        writer.write(RecordType.STATUS, "BTCUSDT", status(BookState.RESYNCING, "gap"))
        assert feed.poll(view) == 1
        head = view.headline(time.time())
        assert head.condition is Condition.RESYNCING and "gap" in head.message

        writer.close()  # the service stopped
        ticks.t += 1
        feed.poll(view)
        head = view.headline(time.time())
        assert head.condition is Condition.DOWN
        assert f"{name}.w*" in head.message and "is the service running" in head.message
    finally:
        feed.close()


def test_shm_feed_leaves_out_rings_of_other_processes(ring):
    name, writer = ring
    writer.write(RecordType.BOOK, "BTCUSDT", book(1))
    other = ShmFeed("BTCUSDT", [name], pids=lambda: {os.getpid() + 10_000_000})
    mine = ShmFeed("BTCUSDT", [name], pids=lambda: {os.getpid()})
    a, b = BookView("BTCUSDT"), BookView("BTCUSDT")
    try:
        assert other.poll(a) == 0
        assert a.headline(time.time()).condition is Condition.DOWN
        assert mine.poll(b) == 1
    finally:
        other.close()
        mine.close()


def test_ring_segments_are_found_by_name_and_magic(tmp_path):
    for entry, head in [
        ("svc.w0", MAGIC),
        ("svc.w12", MAGIC),
        ("svc", MAGIC),
        ("svc.w1x", MAGIC),  # not a worker suffix
        ("svcx.w0", MAGIC),  # another name
        ("PostgreSQL.123", b"whatever"),  # not a ring
    ]:
        (tmp_path / entry).write_bytes(head + bytes(16))
    assert ring_segments(["svc"], str(tmp_path)) == ["svc", "svc.w0", "svc.w12"]
    assert "PostgreSQL.123" not in ring_segments(None, str(tmp_path))
    assert ring_segments(["svc"], str(tmp_path / "missing")) == []


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_url() as found:
        yield found


def test_redis_feed_catches_up_from_streams_then_follows_pubsub(url):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    feed = RedisFeed("BTCUSDT", url, prefix)
    view = BookView("BTCUSDT", status_known=False)
    try:
        client.xadd(f"{prefix}orderbook:BTCUSDT", {"data": book(1)})
        client.xadd(f"{prefix}orderbook:BTCUSDT", {"data": book(2)})
        client.xadd(f"{prefix}trades:BTCUSDT", {"data": trade(7)}, id="1700000000007-7")
        feed.poll(view, timeout_s=0.05)
        assert view.book is not None and view.book.last_update_id == 2
        assert [t.trade_id for t in view.trades] == [7]
        assert view.source.startswith("redis ")

        client.publish(f"{prefix}orderbook:BTCUSDT", book(3))
        client.publish(f"{prefix}trades:BTCUSDT", trade(8))
        client.publish(f"{prefix}orderbook:ETHUSDT", book(4, "ETHUSDT"))  # not subscribed
        deadline = time.monotonic() + 5
        while len(view.trades) < 2 and time.monotonic() < deadline:
            feed.poll(view, timeout_s=0.1)
        assert view.book.last_update_id == 3
        assert [t.trade_id for t in view.trades] == [8, 7]
        assert view.headline(time.time()).condition is Condition.LIVE
    finally:
        feed.close()
        client.delete(f"{prefix}orderbook:BTCUSDT", f"{prefix}trades:BTCUSDT")
        client.close()


def test_redis_feed_says_when_redis_is_unreachable():
    url = f"redis://127.0.0.1:{free_port()}"
    feed = RedisFeed("BTCUSDT", url, retry_s=60)
    view = BookView("BTCUSDT", status_known=False)
    assert feed.poll(view, timeout_s=0.01) == 0
    head = view.headline(time.time())
    assert head.condition is Condition.DOWN
    assert head.message.startswith(f"Redis unreachable at {url}")
    assert feed.poll(view, timeout_s=0.01) == 0  # waits for retry_s before trying again
    feed.close()


def test_without_names_the_feed_keeps_to_the_first_sink_that_carries_the_symbol(ring):
    name, writer = ring
    other = ShmWriter.create(segment_name(f"{name}_other", 0), 64, 1024)
    try:
        writer.write(RecordType.BOOK, "BTCUSDT", book(1))
        feed = ShmFeed("BTCUSDT", pids=lambda: {os.getpid()})  # every ring of this process
        view = BookView("BTCUSDT")
        try:
            assert feed.poll(view) == 1
            assert view.source == f"shm {name}.w0"
            other.write(RecordType.BOOK, "BTCUSDT", book(99, bid=1.0))  # another service's book
            writer.write(RecordType.BOOK, "BTCUSDT", book(2))
            feed.poll(view)
            assert view.book is not None and view.book.last_update_id == 2
            assert list(feed.readers) == [f"{name}.w0"]
        finally:
            feed.close()
    finally:
        other.close()
