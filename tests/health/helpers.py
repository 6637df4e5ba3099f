"""Run ``python -m bytewax.run flows.main`` against the simulator and scrape the sidecar."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sources.simulator.server import Simulator

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports that were free a moment ago on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def write_config(
    path: Path,
    sim: Simulator,
    symbols: list[str],
    health_port: int,
    sink_url: str,
    *,
    shared_dir: Path | None = None,
    partitions: int = 1,
    socket_timeout_s: float = 2.0,
    partial_depth: bool = True,
) -> Path:
    """A one-pipeline config: the simulator's futures feed into a Redis sink.

    ``partial_depth=False``: books start and resync from REST snapshots only (slow snapshots
    then keep a book resyncing long enough to watch).
    """
    shared = f", shared_dir: {str(shared_dir)!r}" if shared_dir else ""
    path.write_text(
        f"""
service:
  health: {{host: 127.0.0.1, port: {health_port}, stall_after_s: 30{shared}}}
  logging: {{level: INFO, format: text}}
pipelines:
  - name: sim
    source:
      type: binance_futures
      symbols: [{", ".join(symbols)}]
      ws_url: {sim.ws_url}
      rest_url: {sim.rest_url}
      reconnect_delay_ms: 50
      max_reconnect_delay_ms: 500
      partitions: {partitions}
      partial_depth: {str(partial_depth).lower()}
      run_for_s: 50
    operators: [{{type: orderbook, depth: 5}}]
    sinks:
      - {{type: redis, url: "{sink_url}", channel_prefix: "health-{uuid.uuid4().hex[:8]}:",
          retry_initial_ms: 50, retry_max_ms: 200, socket_timeout_s: {socket_timeout_s}}}
"""
    )
    return path


@contextmanager
def run_flow(config: Path, commands: list[list[str]], logs: Path) -> Iterator[list[Path]]:
    """Start one ``bytewax.run`` process per argument list; stop them all at the end."""
    env = {**os.environ, "PIPELINES_FILE": str(config)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    procs: list[subprocess.Popen[bytes]] = []
    files: list[Path] = []
    try:
        for i, args in enumerate(commands):
            err = logs / f"flow{i}.log"
            files.append(err)
            with err.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bytewax.run", "flows.main", *args],
                        cwd=ROOT,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield files
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def get(port: int, path: str) -> tuple[int, Any]:
    """``(status, body)``: JSON bodies decoded, others as text; status 0 if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers["Content-Type"]
    except OSError:
        return 0, None
    return status, orjson.loads(raw) if ctype == "application/json" else raw.decode()


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition (parsed by prometheus-client's parser)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in found.items() if n == name and want <= set(lab))


def wait_until(
    probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float, what: str, logs=()
) -> T:
    """Call ``probe`` until ``accept`` takes its result; fail with the last one after a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if accept(got):
            return got
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs)
            pytest.fail(f"{what}: not within {timeout_s} s; last: {str(got)[:2000]}\n{tails}")
        time.sleep(0.1)
