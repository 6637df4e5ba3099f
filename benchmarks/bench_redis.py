"""Throughput and latency of the Redis sink for book updates from one worker.

Run from the repository root::

    python -m benchmarks.bench_redis                      # pubsub, batch sizes 1, 10, 100, 500
    python -m benchmarks.bench_redis --mode both --updates 50000 --batch-sizes 100

Redis: ``--url``, else ``$REDIS_URL``, else 127.0.0.1:6379 if it answers, else a private
``redis-server`` started for the run. Each batch is assembled item by item (``recv_ns`` stamped as
each item is made, as a source would) and handed to one ``write_batch``, i.e. one pipeline.
Reported per row:

* updates/s: book updates written per second of wall time, item creation included;
* batch p50/p99: duration of ``write_batch`` (encode + one pipeline round trip + metrics);
* item p50/p99: from an item's ``recv_ns`` to the return of the ``write_batch`` carrying it.

The target is 20,000 book updates/s from one worker.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from market_data.config import PipelineConfig
from market_data.events import SCALE, BookUpdate, OutputEvent
from market_data.options import OrderBookOptions, RedisSinkOptions, ReplayOptions
from sinks.redis import RedisPartition, build_sink

TARGET_PER_S = 20_000


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def make_book(symbol: str, n: int, depth: int) -> BookUpdate:
    """A realistic top-``depth`` book (prices near 50,000 with 0.1 ticks)."""
    mid = 50_000 * SCALE + (n % 1000) * SCALE // 10
    bids = tuple((mid - (i + 1) * SCALE // 10, (i + 1) * 12_345_678) for i in range(depth))
    asks = tuple((mid + (i + 1) * SCALE // 10, (i + 1) * 23_456_789) for i in range(depth))
    return BookUpdate(symbol, bids, asks, n, 1_700_000_000_000 + n, time.time(), 0)


@contextmanager
def redis_at(url: str | None) -> Iterator[str]:
    """``url``, or the test helper's choice (``$REDIS_URL``, 6379, or a private server)."""
    if url:
        yield url
        return
    from tests.redis_server import redis_url  # a dev-only helper, imported only when needed

    with redis_url() as found:
        yield found


def run(
    part: RedisPartition, books: list[BookUpdate], batch_size: int, updates: int
) -> tuple[float, list[float], list[float]]:
    """Write ``updates`` book updates in batches; return (seconds, batch µs, item µs)."""
    batch_us: list[float] = []
    item_us: list[float] = []
    n = 0
    start = time.perf_counter()
    while n < updates:
        batch: list[OutputEvent] = []
        stamps: list[int] = []
        for _ in range(min(batch_size, updates - n)):
            template = books[n % len(books)]
            stamp = time.perf_counter_ns()
            batch.append(
                BookUpdate(
                    template.symbol,
                    template.bids,
                    template.asks,
                    n,
                    template.event_time_ms,
                    template.recv_time,
                    stamp,
                )
            )
            stamps.append(stamp)
            n += 1
        t0 = time.perf_counter_ns()
        part.write_batch(batch)
        t1 = time.perf_counter_ns()
        batch_us.append((t1 - t0) / 1e3)
        item_us.extend((t1 - s) / 1e3 for s in stamps)
    return time.perf_counter() - start, batch_us, item_us


def main() -> None:
    """Print one row per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Redis URL (default: see module docstring)")
    parser.add_argument("--mode", choices=("pubsub", "streams", "both"), default="pubsub")
    parser.add_argument("--updates", type=int, default=100_000, help="book updates per row")
    parser.add_argument("--batch-sizes", default="1,10,100,500", help="comma-separated")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--depth", type=int, default=20, help="levels per side")
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    books = [
        make_book(f"SYM{s}USDT", i, args.depth) for i in range(100) for s in range(args.symbols)
    ]
    with redis_at(args.url) as url:
        options = RedisSinkOptions(url=url, channel_prefix=prefix, mode=args.mode)
        pipeline = PipelineConfig(
            "bench", ReplayOptions(path="unused"), (OrderBookOptions(),), (options,)
        )
        print(
            f"Redis sink, mode {args.mode}, {args.symbols} symbols, depth {args.depth}, "
            f"{args.updates} updates per row, target {TARGET_PER_S:,}/s"
        )
        print(
            f"{'batch':>6} {'updates/s':>10} {'batch p50 µs':>13} {'batch p99 µs':>13} "
            f"{'item p50 µs':>12} {'item p99 µs':>12} {'µs/item':>8}"
        )
        for size in (int(s) for s in args.batch_sizes.split(",")):
            part = build_sink(options, pipeline).build("publish_redis", 0, 1)
            run(part, books, size, min(args.updates, 2_000))  # warm up the connection
            seconds, batch_us, item_us = run(part, books, size, args.updates)
            part.close()
            batch_us.sort()
            item_us.sort()
            rate = args.updates / seconds
            flag = "" if rate >= TARGET_PER_S else "  (below target)"
            print(
                f"{size:>6} {rate:>10,.0f} {percentile(batch_us, 0.5):>13,.0f} "
                f"{percentile(batch_us, 0.99):>13,.0f} {percentile(item_us, 0.5):>12,.0f} "
                f"{percentile(item_us, 0.99):>12,.0f} {seconds * 1e6 / args.updates:>8.1f}{flag}"
            )
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
