"""`python -m bytewax.run flows.main` as users run it: one worker, two workers, two processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from market_data import speedups
from tests.flows.helpers import FUTURES

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINES_FILE": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def replay_config(tmp_path: Path, out: str) -> Path:
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"""
service:
  logging: {{level: INFO, format: json}}
pipelines:
  - name: replay-futures
    source: {{type: replay, path: "{FUTURES}"}}
    operators: [{{type: orderbook, depth: 5}}]
    sinks: [{{type: jsonl, path: "{tmp_path / out}"}}]
"""
    )
    return config


def lines(paths: list[Path]) -> list[dict]:
    out: list[dict] = []
    for p in paths:
        out.extend(orjson.loads(line) for line in p.read_bytes().splitlines())
    return out


def last_books(records: list[dict]) -> dict[str, dict]:
    books: dict[str, dict] = {}
    for r in records:
        if r["channel"].startswith("orderbook:"):
            data = r["data"]
            prev = books.get(data["symbol"])
            if prev is None or data["last_update_id"] > prev["last_update_id"]:
                books[data["symbol"]] = data
    return books


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple[Path, str]:
    """The output file and the log of one replay run in one worker."""
    tmp = tmp_path_factory.mktemp("single")
    proc = run(["flows.main"], replay_config(tmp, "books.jsonl"))
    assert proc.returncode == 0, proc.stderr
    return tmp / "books.jsonl", proc.stderr


@pytest.fixture(scope="module")
def single(single_run) -> list[dict]:
    return lines([single_run[0]])


def test_pure_python_writes_the_same_bytes(single_run, tmp_path, monkeypatch):
    # Without the C speedups (no compiler at install, or turned off) the output is identical.
    monkeypatch.setenv(speedups.PURE_ENV, "1")
    proc = run(["flows.main"], replay_config(tmp_path, "books.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "C speedups off (MARKET_DATA_PURE_PYTHON is set)" in proc.stderr
    if speedups.SPEEDUPS is not None:
        assert "C speedups on" in single_run[1]
    assert (tmp_path / "books.jsonl").read_bytes() == single_run[0].read_bytes()


def test_replay_writes_the_contract_payloads(single):
    books = last_books(single)
    assert set(books) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    sushi = books["SUSHIUSDT"]
    assert sushi["last_update_id"] == 600860425198
    assert sushi["bids"][0] == [7.612, 303.0]
    assert sushi["asks"][0] == [7.616, 267.0]
    assert set(sushi) == {"symbol", "bids", "asks", "last_update_id", "timestamp"}
    trades = [r["data"] for r in single if r["channel"].startswith("trades:")]
    assert len(trades) == 91
    assert set(trades[0]) == {
        "symbol", "trade_id", "price", "quantity", "timestamp", "is_buyer_maker",
    }  # fmt: skip


def test_two_workers_split_output_but_not_content(single, tmp_path):
    proc = run(["flows.main", "-w", "2"], replay_config(tmp_path, "books.jsonl"))
    assert proc.returncode == 0, proc.stderr
    files = sorted(tmp_path.glob("books.w*.jsonl"))
    assert [f.name for f in files] == ["books.w0.jsonl", "books.w1.jsonl"]
    records = lines(files)
    assert len(records) == len(single)
    assert last_books(records) == last_books(single)


def test_two_processes_as_a_bytewax_cluster(single, tmp_path):
    config = replay_config(tmp_path, "books.jsonl")
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = {**os.environ, "PIPELINES_FILE": str(config)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.main", "-i", str(i), "-a", addresses],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    records = lines(sorted(tmp_path.glob("books.w*.jsonl")))
    assert len(records) == len(single)
    assert last_books(records) == last_books(single)


def test_factory_form_names_the_config(tmp_path):
    config = replay_config(tmp_path, "books.jsonl")
    proc = run([f"flows.main:build_flow({str(config)!r})"], tmp_path / "absent.yaml")
    assert proc.returncode == 0, proc.stderr
    assert last_books(lines([tmp_path / "books.jsonl"]))["SUSHIUSDT"]["last_update_id"] == (
        600860425198
    )


def test_broken_config_lists_every_error_and_exits_non_zero(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text(
        """
pipelines:
  - name: p
    source: {type: binance_futures, symbols: [BTCUSDT, BTCUSDT], rest_url: "ftp://x"}
    operators: [{type: orderbook, depth: -1}]
    sinks: [{type: redis}, {type: kafka}, {type: jsonl, path: x.jsonl, colour: red}]
"""
    )
    proc = run(["flows.main"], config)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert f"{config}: 5 configuration errors" in err
    assert "pipelines[0].source.symbols: expected each symbol once" in err
    assert "pipelines[0].source.rest_url: expected a http/https URL; got 'ftp://x'" in err
    assert "pipelines[0].operators[0].depth: input should be greater than 0; got -1" in err
    assert "pipelines[0].sinks[1].type: unknown sink type; expected one of" in err
    assert "pipelines[0].sinks[2].colour: unknown key" in err


def test_missing_config_file_is_a_clear_error(tmp_path):
    proc = run(["flows.main"], tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml: cannot read the config file: No such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_launcher_runs_a_two_process_cluster(single, tmp_path):
    config = replay_config(tmp_path, "books.jsonl")
    env = {**os.environ, "PIPELINES_FILE": str(config)}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.launch", "-n", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = lines(sorted(tmp_path.glob("books.w*.jsonl")))
    assert len(records) == len(single)
    assert last_books(records) == last_books(single)


def test_launcher_reports_a_failing_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flows.launch", "-n", "2"],
        cwd=ROOT,
        env={**os.environ, "PIPELINES_FILE": str(tmp_path / "missing.yaml")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "cannot read the config file" in proc.stderr
