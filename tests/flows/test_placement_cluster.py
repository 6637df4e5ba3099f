"""The real service on several workers: a symbol's events stay where its book is kept.

Each test runs ``python -m bytewax.run -w W`` or ``python -m flows.launch -n N -w W`` on the
probed flow (:mod:`tests.flows.placement_probe`), which notes the process and thread of every
source partition's batch and every book's batch by symbol; a symbol read on one worker and kept
on another is a crossing (across processes, every such event is pickled and sent over TCP). The
live source reads each symbol on its book's worker; the replay source on its book's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from market_data.placement import worker_of_key
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.flows.helpers import FUTURES
from tests.flows.placement_probe import ENV, TARGET, read_dir

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "LTCUSDT"]
RUN_FOR_S = 2.0


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(symbols=tuple(SYMBOLS), rate=50, seed=5)) as running:
        yield running


def live_config(path: Path, sim: Simulator) -> Path:
    path.write_text(
        f"""service:
  health: {{enabled: false}}
  logging: {{level: INFO}}
pipelines:
  - name: placed
    source: {{type: binance_futures, symbols: {json.dumps(SYMBOLS)}, ws_url: "{sim.ws_url}",
              rest_url: "{sim.rest_url}", run_for_s: {RUN_FOR_S}}}
    operators: [{{type: orderbook, depth: 10}}]
    sinks: [{{type: jsonl, path: "{path.parent}/out-{{worker}}.jsonl"}}]
"""
    )
    return path


def replay_config(path: Path) -> Path:
    path.write_text(
        f"""service:
  health: {{enabled: false}}
  logging: {{level: INFO}}
pipelines:
  - name: placed
    source: {{type: replay, path: ["{FUTURES}"]}}
    operators: [{{type: orderbook, depth: 10}}]
    sinks: [{{type: jsonl, path: "{path.parent}/out-{{worker}}.jsonl"}}]
"""
    )
    return path


def run(config: Path, processes: int, workers: int, probes: Path) -> str:
    """Run the probed flow to its end on ``processes`` x ``workers``; return its log."""
    if processes == 1:
        cmd = [sys.executable, "-m", "bytewax.run", TARGET, "-w", str(workers)]
    else:
        cmd = [sys.executable, "-m", "flows.launch", "-n", str(processes), "-w", str(workers),
               "--target", TARGET]  # fmt: skip
    probes.mkdir()
    env = {**os.environ, "PIPELINES_FILE": str(config), ENV: str(probes)}
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    return log


@pytest.mark.parametrize(("processes", "workers"), [(1, 2), (2, 1), (2, 2)])
def test_live_symbols_are_read_on_the_worker_that_keeps_their_books(
    sim: Simulator, tmp_path: Path, processes: int, workers: int
) -> None:
    total = processes * workers
    assert {worker_of_key(s, total) for s in SYMBOLS} == set(range(total))  # books on each
    config = live_config(tmp_path / "pipelines.yaml", sim)
    log = run(config, processes, workers, tmp_path / "probes")
    where = read_dir(tmp_path / "probes", processes)
    assert set(where.kept) == set(SYMBOLS), log[-3000:]
    assert where.crossings() == {}
    places = where.places()
    assert len(places) == total  # every worker thread of every process keeps books
    assert len({pid for pid, _ in places}) == processes
    assert f"(worker {total - 1} of {total}) connects for" in log


@pytest.mark.parametrize(("processes", "workers"), [(2, 1), (2, 2)])
def test_replayed_symbols_are_read_in_the_process_that_keeps_their_books(
    tmp_path: Path, processes: int, workers: int
) -> None:
    run(replay_config(tmp_path / "pipelines.yaml"), processes, workers, tmp_path / "probes")
    where = read_dir(tmp_path / "probes", processes)
    assert set(where.kept) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    assert where.crossings(by_process=True) == {}
    assert len({pid for pid, _ in where.places()}) == processes
    if workers == 1:
        assert where.crossings() == {}
