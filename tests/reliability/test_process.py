"""Process failures of the real service: SIGTERM / SIGINT under load, and kill -9 then restart.

Each test runs ``python -m bytewax.run flows.main`` in a subprocess against the simulator in
this process, with many symbols at a high update rate.
"""

from __future__ import annotations

import gc
import signal
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sinks.shm import ShmReader
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.redis_server import RedisServer, stream_entries
from tests.reliability.procs import (
    FlowProcess,
    JsonlTail,
    channel_items,
    check_books,
    jsonl_lines,
    segments,
    wait_until,
    write_config,
)

SYMBOLS = [f"R{i:02d}USDT" for i in range(20)]
EXIT_WITHIN_S = 15.0  # "a few seconds" with a wide margin for a loaded CI machine


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    # 20 symbols x 200 updates/s, trades on 5% of updates: ~200 depth and ~200 trade frames/s.
    # Every flow of this module starts with 20 snapshots of weight 20 from one simulator: with
    # Binance's 2,400 a minute, the fifth flow within a minute would wait out a 429 (that
    # pacing is tested in tests/sources/test_binance_live.py), so the budget is raised here.
    # The simulator runs in this (pytest) process: a bounded history (100 s at 200 updates/s)
    # and frozen earlier objects (other test modules') keep its garbage collections short, or
    # its REST answers stall for seconds in a full run.
    config = SimulatorConfig(
        symbols=tuple(SYMBOLS), rate=200, seed=8, weight_budget=1_000_000, history_updates=20_000
    )
    gc.collect()
    gc.freeze()
    try:
        with Simulator(config) as running:
            yield running
    finally:
        gc.unfreeze()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as private:
        yield private


def trades_by_symbol(items: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for t in items:
        out[t["symbol"]].append(t["trade_id"])
    return out


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["sigterm", "sigint", "sigterm-2-workers"],
)
def test_signal_under_load_flushes_sinks_and_unlinks_shared_memory(
    sim: Simulator, server: RedisServer, tmp_path: Path, signum: int, workers: int
) -> None:
    shm = f"rel_sig_{tmp_path.name[-12:]}"
    prefix = f"{tmp_path.name}:"
    config = write_config(
        tmp_path / "pipelines.yaml",
        sim,
        SYMBOLS,
        [
            f'{{type: redis, url: "{server.url}", mode: streams, channel_prefix: "{prefix}", '
            "socket_timeout_s: 0.2, retry_initial_ms: 10, retry_max_ms: 50}",
            f"{{type: shm, name: {shm}, slots: 4096, slot_size: 1024}}",
            f"{{type: jsonl, path: {tmp_path}/out.jsonl}}",
        ],
        partitions=2,
    )
    with FlowProcess(config, tmp_path / "flow.log", workers=workers) as flow:
        wait_until(
            lambda: (
                len(segments(shm)) == workers
                and len(channel_items(jsonl_lines(f"{tmp_path}/out*.jsonl"), "trades")) > 200
            ),
            30,
            "books and trades from every worker",
        )
        # Redis stops answering just before the signal, so the Redis sink is holding items
        # when the flow stops; it comes back right after: close() must deliver them.
        server.pause()
        try:
            wait_until(lambda: "cannot write to" in flow.log(), 10, "the sink to notice")
            flow.proc.send_signal(signum)
            wait_until(lambda: "received: stopping" in flow.log(), 10, "the signal")
        finally:
            server.resume()
        code = flow.wait(EXIT_WITHIN_S)
        log = flow.log()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert segments(shm) == [], "shared memory left behind"
    assert "not delivered" not in log, "the Redis sink gave up items at close"

    # Every trade the flow emitted (the jsonl sink's copy) is in Redis, once and in order.
    emitted = trades_by_symbol(channel_items(jsonl_lines(f"{tmp_path}/out*.jsonl"), "trades"))
    conn = redis.Redis.from_url(server.url)
    try:
        for symbol in SYMBOLS:
            key = f"{prefix}trades:{symbol}"
            stored = [int(i.split("-")[1]) for i, _ in stream_entries(conn, key)]
            assert stored == emitted[symbol], f"{symbol}: Redis differs from what was emitted"
    finally:
        conn.delete(*conn.keys(f"{prefix}*"))
        conn.close()
    assert sum(map(len, emitted.values())) > 200


def test_kill_9_then_restart_takes_over_the_segment_and_resyncs(
    sim: Simulator, tmp_path: Path
) -> None:
    shm = f"rel_kill_{tmp_path.name[-12:]}"
    config = write_config(
        tmp_path / "pipelines.yaml",
        sim,
        SYMBOLS,
        [
            f"{{type: shm, name: {shm}, slots: 4096, slot_size: 1024}}",
            f"{{type: jsonl, path: {tmp_path}/out.jsonl}}",
        ],
        exchange_weight_limit=1_000_000,  # the simulator's (raised) limit: see the fixture
    )
    first = FlowProcess(config, tmp_path / "first.log", new_session=True)
    with first:
        wait_until(
            lambda: len(channel_items(jsonl_lines(f"{tmp_path}/out.jsonl"), "orderbook")) > 100,
            30,
            "books from the first run",
        )
        first.kill_group()  # the process and its resource tracker: nothing cleans up
    assert segments(shm) == [f"/dev/shm/{shm}.w0"], "kill -9 should leave the segment behind"
    with ShmReader(f"{shm}.w0") as stale:
        assert stale.header().writer_pid == first.pid and stale.writer_gone()

    (tmp_path / "out.jsonl").unlink()
    with FlowProcess(config, tmp_path / "second.log") as second:
        tail, seen = JsonlTail(f"{tmp_path}/out.jsonl"), Counter[str]()

        def every_symbol_published_twice() -> bool:
            # Twice: the resynced book went on applying deltas (stopping right after the first
            # book of the last symbol made the count below a race).
            seen.update(b["symbol"] for b in channel_items(tail.new_lines(), "orderbook"))
            return all(seen[s] >= 2 for s in SYMBOLS)

        wait_until(
            every_symbol_published_twice, 30, "two books of every symbol from the restarted flow"
        )
        with ShmReader(f"{shm}.w0", start="first") as reader:
            assert reader.header().writer_pid == second.pid
            assert reader.read(), "the restarted writer publishes into the taken-over segment"
        code, _ = second.stop(signal.SIGTERM, EXIT_WITHIN_S)
        log = second.log()
    assert code == 0, log[-3000:]
    assert "is stale and is taken over" in log
    assert segments(shm) == []
    lines = jsonl_lines(f"{tmp_path}/out.jsonl")
    # The restarted flow synced each book from a fresh snapshot before publishing it, and every
    # book it published is the exchange's book at that update id.
    statuses = channel_items(lines, "status")
    first_status = {s["symbol"]: s["state"] for s in reversed(statuses)}
    assert first_status == dict.fromkeys(SYMBOLS, "synced")
    assert check_books(sim, channel_items(lines, "orderbook")) >= 2 * len(SYMBOLS)
