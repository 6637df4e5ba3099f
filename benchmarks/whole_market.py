"""Whole-market scale: how long until every book is synced, at start and after a mass cut.

The simulator runs in its own process (``python -m sources.simulator``) with N symbols at
``rate`` updates/s each (the whole USD-M market is ~500 perpetuals at <= 10 updates/s), enforcing
the exchange's REST weight limit per IP (2,400 a minute for futures, 6,000 for spot) with 429s
and 418 bans. The flow runs as in production (``python -m bytewax.run flows.main``) on a
pipelines file that is the default one but for the simulator's URLs and N symbols, with the
shared-memory sink. The case then:

1. launches the flow and polls its ``/ready`` until every book is synced: **start**, in seconds
   from the launch (Python's and bytewax's start-up included);
2. cuts every WebSocket connection at once (``kill -USR1`` to the simulator) and polls until
   every book is synced again with an update published after the cut: **after the cut**;
3. reads from the simulator the REST weight the flow was granted (in all, and the most in one
   minute window), and how many 429s, 418s and requests sent during a ``Retry-After`` there were.

``--whole-market-variants`` also runs the flow with ``partial_depth: false`` (REST snapshots
only, the service before this case existed) for comparison. Figures, not pass/fail tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30.0
POLL_S = 0.1
VARIANTS = ("partial", "rest")


@dataclass
class WholeMarketFigures:
    """One run: the market, the symbols, how long each phase took, the REST weight used."""

    market: str
    symbols: int
    variant: str
    rate: float
    processes: int = 1
    start_s: float | None = None  # launch -> every book synced (None: not within the timeout)
    cut_s: float | None = None  # mass cut -> every book synced with an update after it
    rest_weight: int = 0
    rest_weight_peak: int = 0  # the most in one window (what the IP limit is checked against)
    weight_limit: int = 0
    rest_429: int = 0
    rest_418: int = 0
    rest_in_retry_after: int = 0
    cpu_share: float | None = None  # the flow's CPU time over its life, per wall second
    trades_backfilled: int = 0  # trades missed while cut off, fetched over REST
    backfills_given_up: int = 0  # each loses the trades it had not fetched
    notes: list[str] = field(default_factory=list)


class _SimStats:
    """The simulator's JSON stats lines, the last one kept."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    def read(self, out: IO[str]) -> None:
        for line in out:
            if line.startswith("{"):
                self.last = json.loads(line)


@contextmanager
def _simulator(
    symbols: list[str], rate: float, spot: bool
) -> Iterator[tuple[subprocess.Popen[str], str, str, _SimStats]]:
    cmd = [
        sys.executable, "-m", "sources.simulator", "--symbols", ",".join(symbols),
        "--rate", str(rate), "--stats-every", "1", "--log-level", "WARNING",
    ]  # fmt: skip
    if spot:
        cmd.append("--spot")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the simulator ended before printing its URLs")
            key, _, value = line.strip().partition(" ")
            if key in ("ws", "rest"):
                urls[key] = value.strip()
        stats = _SimStats()
        reader = threading.Thread(target=stats.read, args=(proc.stdout,), daemon=True)
        reader.start()
        yield proc, urls["ws"], urls["rest"], stats
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pipelines_yaml(
    symbols: list[str], ws_url: str, rest_url: str, port: int, spot: bool, partial: bool
) -> str:
    """The default pipelines file, pointed at the simulator, with ``symbols`` and a shm sink."""
    kind = "binance_spot" if spot else "binance_futures"
    return f"""service:
  health: {{host: 127.0.0.1, port: {port}}}
  logging: {{level: WARNING}}
pipelines:
  - name: market
    source:
      type: {kind}
      symbols: {json.dumps(symbols)}
      ws_url: "{ws_url}"
      rest_url: "{rest_url}"
      partial_depth: {str(partial).lower()}
    operators: [{{type: orderbook, depth: 20}}]
    sinks: [{{type: shm, name: md_whole_market_{os.getpid()}, slots: 65536, slot_size: 1024}}]
"""


def _ready(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body says why
        body = json.loads(exc.read())
        return body
    except (OSError, ValueError):
        return None


def _books(body: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if body is None:
        return {}
    symbols: dict[str, dict[str, Any]] = (
        body.get("pipelines", {}).get("market", {}).get("symbols", {})
    )
    return symbols


def _wait_all_synced(port: int, n: int, timeout_s: float) -> bool:
    """Poll ``/ready`` until all ``n`` books are synced; False at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        books = _books(_ready(port))
        if sum(1 for book in books.values() if book.get("book") == "synced") >= n:
            return True
        time.sleep(POLL_S)
    return False


def _wait_all_back(port: int, n: int, timeout_s: float) -> bool:
    """After a mass cut: poll ``/ready`` until every book has been seen disconnected, then
    connected again, then synced with an update published after its reconnection (frames the
    old connection had delivered are not enough). False at the timeout."""
    deadline = time.monotonic() + timeout_s
    cut: set[str] = set()
    reconnected: dict[str, float] = {}  # symbol -> unix time it was first seen connected again
    back: set[str] = set()
    while time.monotonic() < deadline:
        books = _books(_ready(port))
        now = time.time()
        for symbol, book in books.items():
            if book.get("connected") is False:
                cut.add(symbol)
            elif symbol in cut and symbol not in reconnected:
                reconnected[symbol] = now
            age = book.get("last_update_age_s")
            since = reconnected.get(symbol)
            if (
                since is not None
                and book.get("book") == "synced"
                and age is not None
                and now - age >= since - POLL_S
            ):
                back.add(symbol)
        if len(back) >= n:
            return True
        time.sleep(POLL_S / 2)
    return False


def run_whole_market(
    n: int,
    *,
    spot: bool = False,
    rate: float = 10.0,
    variant: str = "partial",
    timeout_s: float = 300.0,
    processes: int = 1,
) -> WholeMarketFigures:
    """Start ``n`` symbols, wait for every book, cut every connection, wait again.

    With ``processes`` > 1 the flow runs as one cluster of that many processes on this host
    (``python -m flows.launch -n``), which share the IP's weight limit.
    """
    market = "spot" if spot else "futures"
    figures = WholeMarketFigures(
        market, n, variant, rate, processes, weight_limit=6000 if spot else 2400
    )
    symbols = [f"W{i:03d}USDT" for i in range(n)]
    with (
        _simulator(symbols, rate, spot) as (sim, ws_url, rest_url, stats),
        tempfile.TemporaryDirectory() as tmp,
    ):
        port = _free_port()
        config = Path(tmp) / "pipelines.yaml"
        config.write_text(
            pipelines_yaml(symbols, ws_url, rest_url, port, spot, variant == "partial")
        )
        env = {**os.environ, "PIPELINES_FILE": str(config)}
        log = Path(tmp) / "flow.log"
        with open(log, "wb") as out:
            launched = time.monotonic()
            command = [sys.executable, "-m", "bytewax.run", "flows.main"]
            if processes > 1:
                command = [sys.executable, "-m", "flows.launch", "-n", str(processes)]
            flow = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
            try:
                if _wait_all_synced(port, n, timeout_s):
                    figures.start_s = time.monotonic() - launched
                    time.sleep(2.0)  # live for a moment: books updated, trades flowing
                    cut = time.monotonic()
                    sim.send_signal(signal.SIGUSR1)
                    if _wait_all_back(port, n, timeout_s):
                        figures.cut_s = time.monotonic() - cut
                    else:
                        figures.notes.append(f"not all synced within {timeout_s:.0f} s of the cut")
                else:
                    figures.notes.append(f"not all synced within {timeout_s:.0f} s of the launch")
                time.sleep(1.5)  # one more stats line from the simulator
                if figures.cut_s is not None:
                    # Backfills give up at trade_backfill_timeout_s (10 s): wait them out.
                    time.sleep(max(0.0, 12.0 - figures.cut_s))
                found = _metrics(port)
                if processes == 1:  # (the launcher of a cluster does no work itself)
                    figures.cpu_share = _cpu_seconds(flow.pid) / (time.monotonic() - launched)
                figures.trades_backfilled = int(found.get("trades_backfilled_total", 0))
                figures.backfills_given_up = int(found.get("trade_backfill_failures_total", 0))
            finally:
                flow.send_signal(signal.SIGTERM)
                try:
                    flow.wait(30)
                except subprocess.TimeoutExpired:
                    flow.kill()
                    flow.wait()
        last = stats.last
        figures.rest_weight = int(last.get("rest_weight", 0))
        figures.rest_weight_peak = int(last.get("rest_weight_peak", 0))
        figures.rest_429 = int(last.get("rest_429", 0))
        figures.rest_418 = int(last.get("rest_418", 0))
        figures.rest_in_retry_after = int(last.get("rest_in_retry_after", 0))
        if figures.start_s is None or figures.cut_s is None:
            figures.notes.append(log.read_text(errors="replace")[-1500:])
    return figures


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds ``pid`` has used (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(port: int) -> dict[str, float]:
    """The flow's counters summed over their labels, by sample name."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            try:
                sums[key] = sums.get(key, 0.0) + float(value)
            except ValueError:
                continue
    return sums


def table(rows: list[WholeMarketFigures]) -> str:
    """A markdown table of the runs."""
    head = (
        "| whole market | symbols | books from | all synced after start s | all synced after "
        "a mass cut s | REST weight (most in a minute / limit) | 429 / 418 / in Retry-After | "
        "trades backfilled / backfills given up | flow CPU |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )

    def s(v: float | None) -> str:
        return "not within the timeout" if v is None else f"{v:.1f}"

    lines = [head]
    for r in rows:
        source = "partial depth frames" if r.variant == "partial" else "REST snapshots only"
        if r.processes > 1:
            source += f", {r.processes} processes"
        lines.append(
            f"| {r.market} at {r.rate:g} updates/s | {r.symbols} | {source} | {s(r.start_s)} | "
            f"{s(r.cut_s)} | {r.rest_weight:,} ({r.rest_weight_peak:,} / {r.weight_limit:,}) | "
            f"{r.rest_429} / {r.rest_418} / {r.rest_in_retry_after} | "
            f"{r.trades_backfilled:,} / {r.backfills_given_up} | "
            f"{'' if r.cpu_share is None else f'{r.cpu_share:.0%}'} |"
        )
    return "\n".join(lines)
