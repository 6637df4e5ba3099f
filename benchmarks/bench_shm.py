"""Shared-memory sink write latency and throughput (prints figures; not a test).

    python -m benchmarks.bench_shm [--n 200000] [--slots 65536] [--slot-size 4096]

Cases: ``ring write`` is one ``ShmWriter.write`` of an already-encoded payload (what the < 5 µs
p99 target is about); ``sink write`` is the sink partition's whole per-item path, including
``sinks.payload`` encoding the public JSON; ``read`` is one reader draining the ring.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from market_data.events import BookUpdate, Trade
from market_data.options import ShmSinkOptions
from sinks.payload import encode_book, encode_trade
from sinks.shm import RecordType, ShmReader, ShmSink, ShmWriter

DEPTH = 20


def sample_book(i: int) -> BookUpdate:
    return BookUpdate(
        symbol="BTCUSDT",
        bids=tuple((5_000_000_000_000 - k * 10_000_000, 12_345_678 + i + k) for k in range(DEPTH)),
        asks=tuple((5_000_010_000_000 + k * 10_000_000, 87_654_321 + i + k) for k in range(DEPTH)),
        last_update_id=3_000_000_000 + i,
        event_time_ms=1_700_000_000_000 + i,
        recv_time=time.time(),
    )


def sample_trade(i: int) -> Trade:
    return Trade("BTCUSDT", 900_000_000 + i, 5_000_012_300_000, 1_500_000, 1_700_000_000_000 + i,
                 i % 2 == 0, 1_700_000_000_000 + i, time.time())  # fmt: skip


def measure(label: str, n: int, step: Callable[[int], object]) -> None:
    lat = [0] * n
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        t0 = clock()
        step(i)
        lat[i] = clock() - t0
    total = clock() - start
    lat.sort()
    p50, p99, p999 = (lat[int(n * q)] / 1000 for q in (0.5, 0.99, 0.999))
    print(
        f"{label:<34} {n / total * 1e9:>11,.0f}/s   p50 {p50:6.2f} µs   p99 {p99:6.2f} µs   "
        f"p99.9 {p999:7.2f} µs   max {lat[-1] / 1000:8.1f} µs"
    )


def main() -> None:
    defaults = ShmSinkOptions()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="writes per case")
    ap.add_argument("--slots", type=int, default=defaults.slots)
    ap.add_argument("--slot-size", type=int, default=defaults.slot_size)
    args = ap.parse_args()
    name = f"bench_shm_{os.getpid()}"

    books = [sample_book(i) for i in range(64)]
    trades = [sample_trade(i) for i in range(64)]
    book_payloads = [encode_book(b) for b in books]
    trade_payloads = [encode_trade(t) for t in trades]
    print(
        f"{args.slots} slots x {args.slot_size} B; book top-{DEPTH} payload "
        f"{len(book_payloads[0])} B, trade payload {len(trade_payloads[0])} B; n={args.n}"
    )

    with ShmWriter.create(name, args.slots, args.slot_size) as writer:
        write = writer.write
        for i in range(args.slots):  # one lap first: touch every page before timing
            write(RecordType.TRADE, "BTCUSDT", trade_payloads[i & 63])
        measure("ring write, book", args.n, lambda i: write(RecordType.BOOK, "BTCUSDT",
                                                            book_payloads[i & 63]))  # fmt: skip
        measure("ring write, trade", args.n, lambda i: write(RecordType.TRADE, "BTCUSDT",
                                                             trade_payloads[i & 63]))  # fmt: skip
        reader = ShmReader(name, start="oldest")
        t0 = time.perf_counter_ns()
        count = sum(len(reader.read(4096)) for _ in range(args.slots // 4096 + 1))
        dt = time.perf_counter_ns() - t0
        print(f"{'read (one reader, trade records)':<34} {count / dt * 1e9:>11,.0f}/s")
        reader.close()

    part = ShmSink(name, args.slots, args.slot_size).build("bench", 0, 1)
    try:
        wb = part.write_batch
        measure("sink write, book (encode+write)", args.n // 4, lambda i: wb([books[i & 63]]))
        measure("sink write, trade (encode+write)", args.n, lambda i: wb([trades[i & 63]]))
        measure("encode_book alone", args.n // 4, lambda i: encode_book(books[i & 63]))
    finally:
        part.close()


if __name__ == "__main__":
    main()
