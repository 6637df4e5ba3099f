"""Exposure of the running service: where the sidecar listens, what it lets a client do, and
whether a password from the environment ever shows in its output.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.redis_server import RedisServer
from tests.reliability.procs import ROOT, FlowProcess, wait_until

PASSWORD = "hunter2-" + os.urandom(4).hex()
SYMBOLS = ["EXPAUSDT", "EXPBUSDT"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(args=("--requirepass", PASSWORD)) as private:
        yield private


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def request(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_sidecar_listens_on_loopback_only_refuses_writes_and_never_shows_the_password(
    server: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    with Simulator(SimulatorConfig(symbols=tuple(SYMBOLS), rate=20, seed=3)) as sim:
        config = tmp_path / "pipelines.yaml"
        config.write_text(
            f"""
service:
  health: {{host: 127.0.0.1, port: 0}}
  logging: {{level: DEBUG, format: json}}
pipelines:
  - name: exposed
    source: {{type: binance_futures, symbols: [{", ".join(SYMBOLS)}], ws_url: "{sim.ws_url}",
              rest_url: "{sim.rest_url}"}}
    operators: [{{type: orderbook, depth: 5}}]
    sinks:
      - {{type: redis, url: "${{REDIS_URL}}", mode: both}}
"""
        )
        os.environ["REDIS_URL"] = url  # read by the child; restored below
        try:
            flow = FlowProcess(config, tmp_path / "flow.log")
        finally:
            del os.environ["REDIS_URL"]
        with flow:
            wait_until(lambda: "health: serving" in flow.log(), 20, "the sidecar")
            port = int(re.search(r"serving [^\"]* on http://127\.0\.0\.1:(\d+)", flow.log())[1])  # type: ignore[index]
            # /ready answers 200 once every symbol is synced, not the first one.
            wait_until(
                lambda: all(f"{s}: book synced" in flow.log() for s in SYMBOLS), 20, "synced books"
            )

            # Bound to the configured host only (0.0.0.0 would show as 00000000).
            assert listening_addresses(port) == {"0100007F"}

            paths = ["/health", "/ready", "/metrics", f"/book/{SYMBOLS[0]}"]
            bodies = [request(port, "GET", path) for path in paths]
            assert [status for status, _ in bodies[:3]] == [200, 200, 200]
            # No endpoint changes state: every method but GET/HEAD/OPTIONS is refused.
            for path in [*paths, "/", "/shutdown", "/config"]:
                for method in ("POST", "PUT", "PATCH", "DELETE"):
                    status, _ = request(port, method, path)
                    assert status in (404, 405), (method, path, status)
            code, _ = flow.stop(signal.SIGTERM)
            log = flow.log()
    assert code == 0, log[-2000:]
    assert PASSWORD not in log
    assert "redis://:***@127.0.0.1" in log  # the URL is logged, redacted
    for _, body in bodies:
        assert PASSWORD.encode() not in body


def test_config_error_does_not_print_the_password(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        "pipelines:\n"
        "  - name: p\n"
        '    source: {type: binance_futures, symbols: [BTCUSDT], ws_url: "${REDIS_URL}"}\n'
        "    operators: [{type: orderbook}]\n"
        '    sinks: [{type: redis, url: "${REDIS_URL}", mode: wrong}]\n'
    )
    env = dict(os.environ, PIPELINES_FILE=str(config))
    env["REDIS_URL"] = f"redis://user:{PASSWORD}@db.internal:6379/0"
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.main"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "ws_url" in proc.stderr and "mode" in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
    assert "redis://user:***@db.internal:6379/0" in proc.stderr
