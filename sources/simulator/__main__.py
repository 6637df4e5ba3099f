"""Command line: ``python -m sources.simulator --symbols BTCUSDT,ETHUSDT --port 0 --rate 100``.

Prints the WebSocket and REST base URLs it listens on (and a few ready-made URLs), then serves
until Ctrl-C or SIGTERM. For load tests, ``--frame-per-update --tick-ms 1 --rate 10000`` pushes
10,000 depth frames a second per symbol, and ``--stats-every 1`` prints a JSON line a second:
``{"t": <unix s>, "frames_sent": n, "depth_frames_queued": n, "backlog": n, "rest_weight": n,
"rest_weight_peak": n, ...}`` (cumulative counts, then every fault and limit count; ``backlog``
is the longest client queue, ``rest_weight_peak`` the most REST weight granted in one window).
``kill -USR1`` cuts every WebSocket connection at once. For deep books whose touch wanders,
``--levels 1200 --sweep-every 2`` sweeps each symbol's best 80 levels of one side every 2 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import time
from types import FrameType

from market_data import ConfigError
from market_data.events import Market
from sources.simulator.config import SimulatorConfig
from sources.simulator.faults import FaultConfig, parse_faults
from sources.simulator.market import SimulatorError
from sources.simulator.server import Simulator


def _rates(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        sym, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected SYMBOL=RATE; got {item!r}")
        try:
            out[sym.strip().upper()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{sym}: expected a number; got {value!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    p = argparse.ArgumentParser(
        prog="python -m sources.simulator",
        description="A local Binance USD-M Futures (or spot) market-data simulator.",
    )
    p.add_argument("--symbols", default="BTCUSDT", help="comma-separated (default: BTCUSDT)")
    p.add_argument("--spot", action="store_true", help="imitate spot instead of USD-M Futures")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="WebSocket port (0: any free port)")
    p.add_argument("--rest-port", type=int, default=0, help="REST port (0: any free port)")
    p.add_argument("--rate", type=float, default=100.0, help="book updates/s per symbol")
    p.add_argument("--rates", type=_rates, default={}, help="per symbol: BTCUSDT=500,ETHUSDT=50")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--levels", type=int, default=1_000, help="levels kept per side (default: 1000)")
    p.add_argument(
        "--sweep-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="each symbol, once in SECONDS, a taker order empties the best --sweep-levels of one "
        "side (default: never)",
    )
    p.add_argument("--sweep-levels", type=int, default=80, metavar="N", help="levels a sweep takes")
    p.add_argument(
        "--faults",
        default="",
        help="e.g. gaps=0.01,disconnect=0.001,duplicate=0.01,malformed=0.01,unknown=0.01,"
        "snapshot_delay=2,snapshot_429=0.2,snapshot_lag=50",
    )
    p.add_argument("--ping-interval", type=float, default=None, help="seconds between pings")
    p.add_argument("--pong-timeout", type=float, default=None, help="seconds to wait for a pong")
    p.add_argument("--max-lifetime", type=float, default=86_400.0, help="seconds per connection")
    p.add_argument(
        "--legacy-delivers", action="store_true", help="deliver futures streams on /ws and /stream"
    )
    p.add_argument("--tick-ms", type=int, default=50, help="generation step; must divide 100")
    p.add_argument(
        "--frame-per-update",
        action="store_true",
        help="load tests: every update is its own depth frame, sent at once (rate = frames/s); "
        "the garbage collector is off, so the generator does not pause",
    )
    p.add_argument(
        "--max-backlog",
        type=int,
        default=None,
        help="load tests: pause generation while a client has more frames queued than this",
    )
    p.add_argument(
        "--stats-every", type=float, default=0.0, help="print traffic as JSON every S seconds"
    )
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator's config from parsed arguments; raises ``ConfigError`` for bad values."""
    faults = parse_faults(args.faults) if args.faults else FaultConfig()
    return SimulatorConfig(
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        market=Market.SPOT if args.spot else Market.FUTURES,
        host=args.host,
        ws_port=args.port,
        rest_port=args.rest_port,
        seed=args.seed,
        rate=args.rate,
        rates=args.rates,
        levels=args.levels,
        sweep_every_s=args.sweep_every,
        sweep_levels=args.sweep_levels,
        ping_interval_s=args.ping_interval,
        pong_timeout_s=args.pong_timeout,
        max_lifetime_s=args.max_lifetime,
        legacy_delivers=args.legacy_delivers,
        tick_ms=args.tick_ms,
        depth_frame_per_update=args.frame_per_update,
        max_backlog=args.max_backlog,
        faults=faults,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until interrupted; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
        sim = Simulator(config).start()
        if args.frame_per_update:
            _quiet_gc()
    except (ConfigError, SimulatorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        sim.stop()

    signal.signal(signal.SIGTERM, _stop)
    # `kill -USR1 <pid>` cuts every WebSocket connection at once (a mass disconnect).
    signal.signal(signal.SIGUSR1, lambda signum, frame: sim.disconnect_all())
    first = config.symbols[0].lower()
    print(f"ws   {sim.ws_url}", flush=True)
    print(f"rest {sim.rest_url}", flush=True)
    if config.market is Market.FUTURES:
        print(f"e.g. {sim.stream_url([f'{first}@depth@100ms'])}", flush=True)
        print(f"     {sim.stream_url([f'{first}@aggTrade'], route='market')}", flush=True)
    else:
        print(f"e.g. {sim.stream_url([f'{first}@depth@100ms', f'{first}@aggTrade'], route='')}")
    print(f"     {sim.depth_url(config.symbols[0])}", flush=True)
    try:
        if args.stats_every > 0:
            _print_stats(sim)
            while not stopping.wait(args.stats_every):
                _print_stats(sim)
        sim.wait()
    except KeyboardInterrupt:
        sim.stop()
    if args.stats_every > 0:
        _print_stats(sim)  # the totals
    return 0


def _quiet_gc() -> None:
    """A load generator must not pause: start-up objects frozen, then no collector at all.

    The simulator's full collections (12-21 ms alone, ~50 ms on a busy machine, every ~8 s at
    10,000 updates/s) showed up as pauses of the flow under test; with the thresholds raised
    instead (50,000, 20, 100), a generation-1 collection of ~30 ms still came once in every
    ~25 s run, as the one "pause" of the e2e benchmark: with the collector off, the longest gap
    between the flow's deliveries went from 29-44 ms to 8-10 ms. Nothing here leaks by it: the
    load generator makes no reference cycles that matter (its RSS over 90 s at 56,000 frames/s
    grew by the same 1.3 MiB/s with and without the collector: the bounded update history
    filling up).
    """
    gc.collect()
    gc.freeze()
    gc.disable()


def _print_stats(sim: Simulator) -> None:
    weight = sim.rest_weight()
    extra = {"rest_weight": weight["total"], "rest_weight_peak": weight["peak"]}
    print(json.dumps({"t": round(time.time(), 3), **sim.traffic(), **extra, **sim.counts()}))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
