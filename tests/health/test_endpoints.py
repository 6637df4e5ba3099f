"""The sidecar of a real flow (``python -m bytewax.run flows.main``) against the simulator.

Every test scrapes the real endpoints over HTTP: one worker, two worker threads, two processes
of one bytewax cluster, and a Redis that is down and then comes up.
"""

from __future__ import annotations

import shutil
import subprocess

from market_data import __version__
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.health.helpers import (
    free_port,
    free_ports,
    get,
    run_flow,
    samples,
    total,
    wait_until,
    write_config,
)
from tests.redis_server import RedisServer

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

# Families (HELP/TYPE) present from the start, whether or not a sample exists yet.
SEED_FAMILIES = {
    "websocket_connected": ("gauge", {"symbol"}),
    "websocket_disconnects": ("counter", {"symbol"}),
    "messages_processed": ("counter", {"symbol", "type"}),
    "messages_error": ("counter", {"symbol"}),
    "processing_latency_microseconds": ("histogram", {"symbol"}),
    "processing_latency_seconds": ("histogram", {"symbol"}),
    "orderbook_updates": ("counter", {"symbol"}),
    "sequence_errors": ("counter", {"symbol"}),
    "trades_processed": ("counter", {"symbol"}),
    "redis_publishes": ("counter", {"symbol", "type"}),
    "redis_errors": ("counter", {"symbol"}),
    "snapshot_fetches": ("counter", {"symbol", "outcome"}),
    "resyncs": ("counter", {"symbol", "reason"}),
    "event_to_publish_latency_seconds": ("histogram", {"symbol"}),
    "sink_buffer_depth": ("gauge", {"sink"}),
    "sink_drops": ("counter", {"sink", "type"}),
    "orderbook_staleness_seconds": ("gauge", {"pipeline", "symbol"}),
    "orderbook_synced": ("gauge", {"pipeline", "symbol"}),
    "sink_reachable": ("gauge", {"sink"}),
}


def ready_ok(got) -> bool:
    return got[0] == 200


def metrics(port: int):
    status, text = get(port, "/metrics")
    assert status == 200
    return samples(text)


def check_promtool(text: str) -> None:
    """promtool finds nothing but its base-unit note on the seed's microseconds histogram."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # Debian's `prometheus` package provides it; the parser checks still ran
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not line.startswith("processing_latency_microseconds")
    ]
    assert problems == [], proc.stdout + proc.stderr


def test_one_worker_ready_after_sync_503_during_a_gap_and_back(tmp_path, redis):
    from prometheus_client.parser import text_string_to_metric_families

    with Simulator(SimulatorConfig(symbols=tuple(SYMBOLS[:2]), rate=40, seed=1)) as sim:
        port = free_port()  # after the simulator has taken its own ports
        # REST snapshots only: a slow one keeps a book resyncing long enough to see below.
        config = write_config(
            tmp_path / "p.yaml", sim, SYMBOLS[:2], port, redis, partial_depth=False
        )
        with run_flow(config, [[]], tmp_path) as logs:
            status, body = wait_until(lambda: get(port, "/ready"), ready_ok, 20, "ready", logs)
            assert body["status"] == "ready"
            assert set(body["pipelines"]["sim"]["symbols"]) == set(SYMBOLS[:2])
            assert body["pipelines"]["sim"]["sinks"] == {"redis:sim": "up"}
            status, body = get(port, "/health")
            assert status == 200
            assert (body["status"], body["service"], body["version"]) == (
                "healthy",
                "market-data",
                __version__,
            )
            assert body["pipelines"]["sim"]["synced"] == 2

            first = metrics(port)
            later = wait_until(
                lambda: metrics(port),
                lambda m: (
                    total(m, "messages_processed_total", symbol="BTCUSDT", type="depth")
                    > total(first, "messages_processed_total", symbol="BTCUSDT", type="depth") + 5
                ),
                10,
                "counters moving",
                logs,
            )
            for symbol in SYMBOLS[:2]:
                assert total(later, "websocket_connected", symbol=symbol) == 1
                assert total(later, "orderbook_updates_total", symbol=symbol) > 0
                assert total(later, "redis_publishes_total", symbol=symbol, type="orderbook") > 0
                assert total(later, "processing_latency_seconds_count", symbol=symbol) > 0
                assert total(later, "processing_latency_microseconds_count", symbol=symbol) > 0
                assert total(later, "event_to_publish_latency_seconds_count", symbol=symbol) > 0
                assert total(later, "snapshot_fetches_total", symbol=symbol, outcome="ok") >= 1
            assert total(later, "market_data_ready") == 1

            # A gap makes a book resync; a slow snapshot keeps it resyncing long enough to see.
            sim.set_faults(gap=0.3, snapshot_delay_s=1.0)
            status, body = wait_until(
                lambda: get(port, "/ready"),
                lambda got: (
                    got[0] == 503
                    and any("resyncing" in p.get("reason", "") for p in got[1]["not_ready"])
                ),
                15,
                "not ready during gaps",
                logs,
            )
            problem = next(p for p in body["not_ready"] if "resyncing" in p["reason"])
            assert problem["pipeline"] == "sim" and problem["symbol"] in SYMBOLS[:2]
            sim.set_faults(gap=0.0, snapshot_delay_s=0.0)
            wait_until(lambda: get(port, "/ready"), ready_ok, 20, "ready again", logs)

            status, text = get(port, "/metrics")
            found = samples(text)
            assert total(found, "sequence_errors_total") > 0
            assert total(found, "resyncs_total") > 0
            families = {f.name: f for f in text_string_to_metric_families(text)}
            for name, (kind, labels) in SEED_FAMILIES.items():
                assert families[name].type == kind, name
                for s in families[name].samples:
                    assert set(s.labels) - {"le"} == labels, (name, s.labels)
            check_promtool(text)


def test_two_worker_threads_show_every_symbol(tmp_path, redis):
    with Simulator(SimulatorConfig(symbols=tuple(SYMBOLS), rate=40, seed=2)) as sim:
        port = free_port()
        config = write_config(tmp_path / "p.yaml", sim, SYMBOLS, port, redis, partitions=2)
        with run_flow(config, [["-w", "2"]], tmp_path) as logs:
            wait_until(lambda: get(port, "/ready"), ready_ok, 20, "ready", logs)
            status, body = get(port, "/health")
            assert status == 200 and body["workers"] == 2
            found = wait_until(
                lambda: metrics(port),
                lambda m: all(
                    total(m, "redis_publishes_total", symbol=s, type="orderbook") > 0
                    for s in SYMBOLS
                ),
                10,
                "every symbol published",
                logs,
            )
            for s in SYMBOLS:
                assert total(found, "websocket_connected", symbol=s) == 1
                assert total(found, "messages_processed_total", symbol=s, type="depth") > 0
            check_promtool(get(port, "/metrics")[1])


def test_two_processes_share_one_port_and_merge_their_metrics(tmp_path, redis):
    shared = tmp_path / "shared"
    symbols = [*SYMBOLS, "BNBUSDT"]
    with Simulator(SimulatorConfig(symbols=tuple(symbols), rate=40, seed=3)) as sim:
        port, a0, a1 = free_ports(3)
        addresses = f"127.0.0.1:{a0};127.0.0.1:{a1}"
        config = write_config(
            tmp_path / "p.yaml", sim, symbols, port, redis, shared_dir=shared, partitions=2
        )
        commands = [["-i", str(i), "-a", addresses] for i in range(2)]
        with run_flow(config, commands, tmp_path) as logs:
            status, body = wait_until(lambda: get(port, "/ready"), ready_ok, 25, "ready", logs)
            assert set(body["pipelines"]["sim"]["symbols"]) == set(symbols)
            status, body = get(port, "/health")
            assert status == 200
            assert body["processes"] == {"expected": 2, "reporting": 2}
            found = wait_until(
                lambda: metrics(port),
                lambda m: all(total(m, "orderbook_updates_total", symbol=s) > 0 for s in symbols),
                10,
                "every symbol's book updates",
                logs,
            )
            assert total(found, "market_data_processes_reporting") == 2

            # Each process's books are in its report; their series reach process 0's /metrics.
            # The reports are rewritten periodically, so the metrics can be ahead of them.
            def book_owners() -> dict[str, int]:
                owners = {}
                for i in range(2):
                    report = (shared / f"process-{i}.json").read_text()
                    for s in symbols:
                        if f'"{s}"' in report.split('"links"')[0]:
                            owners[s] = i
                return owners

            owners = wait_until(
                book_owners, lambda o: set(o) == set(symbols), 5, "every book in a report", logs
            )
            assert set(owners) == set(symbols)
            assert set(owners.values()) == {0, 1}, f"books all in one process: {owners}"
            for s in symbols:
                assert total(found, "websocket_connected", symbol=s) == 1
                assert total(found, "messages_processed_total", symbol=s, type="depth") > 0
                # no per-process `pid` label on merged gauges
                assert all(
                    "pid" not in dict(lab) for (n, lab) in found if n == "websocket_connected"
                )
            check_promtool(get(port, "/metrics")[1])
        for log in logs:
            assert "cannot listen" not in log.read_text(), log.read_text()[-2000:]


def test_ready_names_an_unreachable_redis_until_it_answers_again(tmp_path):
    with (
        RedisServer() as server,
        Simulator(SimulatorConfig(symbols=("BTCUSDT",), rate=40, seed=4)) as sim,
    ):
        port = free_port()
        server.pause()  # accepts connections, answers nothing: every write times out
        config = write_config(
            tmp_path / "p.yaml", sim, ["BTCUSDT"], port, server.url, socket_timeout_s=0.3
        )
        with run_flow(config, [[]], tmp_path) as logs:
            _, body = wait_until(
                lambda: get(port, "/ready"),
                lambda got: (
                    got[0] == 503
                    and got[1]["pipelines"]["sim"]["symbols"]["BTCUSDT"]["book"] == "synced"
                    # "no write yet" until the first write times out
                    and any(
                        p.get("sink") == "redis:sim"
                        and p["reason"].startswith("redis unreachable: TimeoutError")
                        for p in got[1]["not_ready"]
                    )
                ),
                20,
                "redis named as not ready",
                logs,
            )
            assert body["pipelines"]["sim"]["sinks"]["redis:sim"].startswith("redis unreachable")
            found = metrics(port)
            assert total(found, "redis_errors_total", symbol="BTCUSDT") > 0
            assert total(found, "sink_reachable", sink="redis:sim") == 0
            server.resume()
            wait_until(lambda: get(port, "/ready"), ready_ok, 15, "ready with redis", logs)
            assert total(metrics(port), "sink_reachable", sink="redis:sim") == 1
