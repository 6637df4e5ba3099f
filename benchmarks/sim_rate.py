"""The simulator's own ceiling: ``python -m benchmarks.sim_rate [--symbols 4] [--connections 1]``.

Starts the simulator as the throughput case does (:func:`benchmarks.live.simulator`: load-test
mode, every update its own depth frame, generation paused while a client has ``--max-backlog``
frames queued) and drains its depth streams with a minimal reader: the WebSocket handshake, then
raw ``recv_into`` on the socket, counting depth frames by their ``"depthUpdate"`` marker, so the
reader costs next to nothing and the simulator is the limit. Prints the depth frames a second the
reader received, the simulator's send rate from its own traffic lines, the CPU it used (% of one
core, from ``/proc``) and the reader's.

The symbols are split over ``--connections`` connections (the flow opens one per worker), each on
``/public/stream?streams=<s>@depth@100ms/...`` as the flow subscribes. A figure, not a test: the
machine is small and shared, so run it twice.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass

import websocket

from benchmarks import live

MARKER = b'"depthUpdate"'


@dataclass
class SimRate:
    """What one run measured over its window (after the warm-up)."""

    symbols: int
    connections: int
    seconds: float
    frames_per_s: float  # depth frames the reader received
    sim_sent_per_s: float  # frames the simulator handed to its sockets (its traffic lines)
    sim_cpu_pct: float  # % of one core, user + system
    reader_cpu_pct: float


class MarkerCounter:
    """Counts a marker in a byte stream read in chunks (a marker split between two counts once)."""

    def __init__(self, marker: bytes = MARKER) -> None:
        self.marker = marker
        self.count = 0
        self._tail = b""  # the end of the last chunk: the start of a split marker

    def feed(self, chunk: bytes | memoryview) -> None:
        """Count the markers that end in ``chunk``."""
        data = self._tail + chunk
        self.count += data.count(self.marker)
        keep = len(self.marker) - 1
        self._tail = data[-keep:] if keep else b""


class _Reader:
    """Drains one connection as fast as the socket gives bytes; counts depth frames."""

    def __init__(self, url: str) -> None:
        self.counter = MarkerCounter()
        self._ws = websocket.create_connection(url, timeout=10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def frames(self) -> int:
        return self.counter.count

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._ws.close(timeout=1)

    def _run(self) -> None:
        sock = self._ws.sock
        assert sock is not None  # connected in __init__
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while not self._stop.is_set():
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:
                return
            if not n:
                return
            self.counter.feed(view[:n])


def _cpu_s(pid: int) -> float:
    """User + system seconds ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    symbols: int = 4,
    connections: int = 1,
    *,
    warmup_s: float = 3.0,
    measure_s: float = 10.0,
    rate: float = live.FLAT_OUT_RATE,
    max_backlog: int = live.FLAT_OUT_BACKLOG,
) -> SimRate:
    """Run the simulator flat out against ``connections`` readers; the figures after warm-up."""
    chosen = live.throughput_symbols(symbols)
    groups = [chosen[i::connections] for i in range(connections)]
    with live.simulator(chosen, rate, max_backlog=max_backlog) as sim:
        readers = []
        for group in filter(None, groups):
            names = "/".join(f"{s.lower()}@depth@100ms" for s in group)
            readers.append(_Reader(f"{sim.ws_url}/public/stream?streams={names}"))
        for r in readers:
            r.start()
        time.sleep(warmup_s)
        start, start_cpu = time.time(), _cpu_s(sim.proc.pid)
        start_frames, start_own = sum(r.frames for r in readers), time.process_time()
        time.sleep(measure_s)
        end, end_cpu = time.time(), _cpu_s(sim.proc.pid)
        end_frames, end_own = sum(r.frames for r in readers), time.process_time()
        for r in readers:
            r.stop()
    seconds = end - start
    return SimRate(
        symbols=symbols,
        connections=len(readers),
        seconds=seconds,
        frames_per_s=(end_frames - start_frames) / seconds,
        sim_sent_per_s=sim.traffic.rate("frames_sent", start, end),
        sim_cpu_pct=100 * (end_cpu - start_cpu) / seconds,
        reader_cpu_pct=100 * (end_own - start_own) / seconds,
    )


def main(argv: list[str] | None = None) -> int:
    """Print one line of figures per run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.sim_rate", description=__doc__)
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="measured, after the warm-up")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=100_000, help="asked updates/s per symbol")
    p.add_argument("--max-backlog", type=int, default=5_000)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)
    for _ in range(args.runs):
        r = measure(
            args.symbols,
            args.connections,
            warmup_s=args.warmup,
            measure_s=args.seconds,
            rate=args.rate,
            max_backlog=args.max_backlog,
        )
        print(
            f"{r.symbols} symbols, {r.connections} connection(s): "
            f"{r.frames_per_s:,.0f} depth frames/s received "
            f"(simulator sent {r.sim_sent_per_s:,.0f}/s), "
            f"simulator CPU {r.sim_cpu_pct:.0f}%, reader CPU {r.reader_cpu_pct:.0f}%",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
