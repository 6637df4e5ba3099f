"""The real service (``python -m bytewax.run flows.main``) in a subprocess, against the simulator.

The simulator runs in the test process; the flow reads a config written into the test's temporary
directory and logs to a file there (a pipe nobody reads would block it once full).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from sources.simulator.server import Simulator

ROOT = Path(__file__).resolve().parents[2]
SCALE = 10**8


def write_config(
    path: Path, sim: Simulator, symbols: Iterable[str], sinks: list[str], **source: Any
) -> Path:
    """A one-pipeline ``pipelines.yaml`` reading ``sim``; each sink is a YAML flow mapping."""
    extra = "".join(f", {k}: {v}" for k, v in source.items())
    text = f"""
service:
  health: {{host: 127.0.0.1, port: 0}}
  logging: {{level: INFO}}
pipelines:
  - name: rel
    source: {{type: binance_futures, symbols: [{", ".join(symbols)}], ws_url: "{sim.ws_url}",
              rest_url: "{sim.rest_url}", reconnect_delay_ms: 50,
              max_reconnect_delay_ms: 500{extra}}}
    operators: [{{type: orderbook, depth: 10}}]
    sinks:
"""
    text += "".join(f"      - {sink}\n" for sink in sinks)
    path.write_text(text)
    return path


class FlowProcess:
    """One ``bytewax.run flows.main`` process; its log is :attr:`log_path`."""

    def __init__(
        self, config: Path, log_path: Path, *, workers: int = 1, new_session: bool = False
    ) -> None:
        self.log_path = log_path
        env = dict(os.environ, PIPELINES_FILE=str(config), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "bytewax.run", "flows.main", "-w", str(workers)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,  # its own process group, to kill -9 it all
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int, timeout_s: float = 30.0) -> tuple[int, float]:
        """Send ``signum``; return the exit status and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        return self.wait(timeout_s), time.monotonic() - started

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to end (killing it after ``timeout_s``)."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(
                f"the flow did not exit within {timeout_s} s:\n{self.log()}"
            ) from None
        finally:
            self._log.close()
        return code

    def kill_group(self) -> None:
        """SIGKILL the process and every process of its group (its resource tracker too)."""
        try:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> FlowProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def jsonl_lines(pattern: str) -> list[dict[str, Any]]:
    """Every line of the jsonl sink's files matching ``pattern`` (complete lines only)."""
    out: list[dict[str, Any]] = []
    for path in sorted(glob.glob(pattern)):
        data = Path(path).read_bytes()
        for line in data.split(b"\n")[:-1]:  # the last piece is "" or a line being written
            out.append(orjson.loads(line))
    return out


class JsonlTail:
    """Reads only what a jsonl sink file gained since the last call.

    Polling a growing file by re-parsing all of it holds the GIL long enough to starve the
    in-process simulator (slow snapshots, timeouts); this keeps each poll small.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[dict[str, Any]]:
        """The complete lines written since the previous call."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        return [orjson.loads(line) for line in data[:end].split(b"\n") if line]


def channel_items(lines: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The payloads of one kind (``orderbook``, ``trades``, ``status``), in file order."""
    return [line["data"] for line in lines if line["channel"].startswith(prefix + ":")]


def units(levels: list[list[float]]) -> tuple[tuple[int, int], ...]:
    """Published ``[[price, qty], ...]`` back to integer units (exact for <= 15 digits)."""
    return tuple((round(p * SCALE), round(q * SCALE)) for p, q in levels)


def check_books(sim: Simulator, books: list[dict[str, Any]], depth: int = 10) -> int:
    """Assert that every published book equals the simulator's at its update id; count them."""
    for book in books:
        truth = sim.book_at(book["symbol"], book["last_update_id"], depth)
        got = (units(book["bids"]), units(book["asks"]))
        assert got == (truth.bids, truth.asks), (
            f"{book['symbol']}: wrong book at u={book['last_update_id']}"
        )
    return len(books)


def segments(name: str) -> list[str]:
    """The shared-memory segments of a shm sink named ``name`` that exist now."""
    return sorted(glob.glob(f"/dev/shm/{name}.w*"))
