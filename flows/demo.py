"""The offline demo: ``python -m flows.demo`` runs the real dataflow against the simulator.

It starts the bundled exchange simulator on loopback, points ``pipelines.demo.yaml`` at it
(``SIM_WS_URL`` / ``SIM_REST_URL``), leaves out Redis sinks when no Redis answers, and runs the
dataflow in this process until Ctrl-C. Options: ``--workers N``, ``--rate`` (updates per second
per symbol), ``--faults gap=0.01,disconnect=0.001`` to watch it recover.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from market_data import ConfigError
from market_data.config import AppConfig, load_config
from market_data.logs import setup_logging
from market_data.options import RedisSinkOptions
from market_data.shutdown import install_signal_handlers

logger = logging.getLogger("flows.demo")


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url`` within a second."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def without_dead_redis(config: AppConfig) -> AppConfig:
    """The config without Redis sinks whose server does not answer (said in the log)."""
    pipelines = []
    for p in config.pipelines:
        sinks = []
        for s in p.sinks:
            if isinstance(s, RedisSinkOptions) and not redis_answers(s.url):
                logger.warning(
                    "demo: no Redis answers at %s; publishing to shared memory only", s.url
                )
                continue
            sinks.append(s)
        pipelines.append(dataclasses.replace(p, sinks=tuple(sinks)))
    return dataclasses.replace(config, pipelines=tuple(pipelines))


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    parser.add_argument("--config", default="pipelines.demo.yaml")
    parser.add_argument("--workers", "-w", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="updates/s per symbol")
    parser.add_argument("--faults", default="", help="e.g. gap=0.01,disconnect=0.001")
    args = parser.parse_args(argv)

    from bytewax._bytewax import cli_main

    from flows.build import build_dataflow
    from health import server
    from health.cluster import Topology
    from sources.simulator.config import SimulatorConfig
    from sources.simulator.faults import parse_faults
    from sources.simulator.server import Simulator

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(config.service.logging)
    install_signal_handlers()  # Ctrl-C / SIGTERM: sources end, sinks flush, shm is unlinked
    logging.getLogger("sources.simulator.server.ws").setLevel(
        logging.WARNING
    )  # per-connection chatter
    symbols = sorted({s for p in config.pipelines for s in getattr(p.source, "symbols", [])})
    sim_config = SimulatorConfig(
        symbols=tuple(symbols), rate=args.rate, faults=parse_faults(args.faults)
    )
    with Simulator(sim_config) as sim:
        os.environ["SIM_WS_URL"], os.environ["SIM_REST_URL"] = sim.ws_url, sim.rest_url
        config = without_dead_redis(load_config(args.config))
        logger.info(
            "demo: simulator at %s (REST %s), symbols %s", sim.ws_url, sim.rest_url, symbols
        )
        flow = build_dataflow(config)
        sidecar = server.start(config, Topology(workers_per_process=args.workers), None)
        first = "BTCUSDT" if "BTCUSDT" in symbols or not symbols else symbols[0]
        page = (
            f"http://{config.service.health.host}:{sidecar.port}/book/{first}"
            if sidecar is not None and sidecar.port
            else "(no sidecar)"
        )
        logger.info("demo: watch it with: python -m market_data book %s, or open %s", first, page)
        try:
            cli_main(flow, workers_per_process=args.workers)
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # bytewax reports Ctrl-C as a runtime error "signal received"
            if "signal received" not in str(exc):
                raise
        logger.info("demo: stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
