"""The real flow over the simulator's WebSocket, with the Redis sink: latency and throughput.

Each case starts the project's simulator in its own process (``python -m sources.simulator``, so
it does not share the flow's GIL) in its load-test mode: every update is its own depth frame,
generated every millisecond (``--frame-per-update --tick-ms 1``), with a JSON traffic line a
second. The flow runs as in production (``python -m bytewax.run flows.main``, or
``python -m flows.launch -n 2``) on a generated pipelines file whose ``binance_futures`` source
points at the simulator and whose source ends the flow after ``run_for_s``. With
``$MARKET_DATA_LATENCY_REPORT`` set, every Redis sink partition writes its latencies (frame read
from the socket to the Redis pipeline's return, per book update, per second, to 1/128) and the
process's garbage collections when the flow ends (:mod:`health.latency`); this module reads them.

* :func:`latency_case`: one symbol at a fixed rate (10,000 updates/s by default). Figures are
  taken after a warm-up (counted from the first book delivered, so start-up and the first
  snapshot are left out) until the last whole second: p50/p99/p999/max latency, the longest gap
  between two deliveries (a pause of the whole flow), and the GC collections in that window.
* :func:`throughput_case`: several symbols with the simulator pushed as fast as it goes (its
  generation pauses while a client has ``max_backlog`` frames queued, instead of dropping it).
  The flow's rate is the book updates that reached Redis per second of the window; the
  simulator's is the depth frames it queued per second of the same window. When the flow is the
  limit, the frames wait in its source's queue and the latency grows through the run.

Figures, not pass/fail tests: the machine is small and shared.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

import redis

from benchmarks.blaster import blaster
from benchmarks.procs import max_rss_kib
from health.latency import ENV_VAR
from market_data.histogram import LatencyHistogram, LatencyRecorder
from sinks.redis import _bulk, _read_replies

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 20.0
FLOW_GRACE_S = 60.0
"""How long a flow may run past its ``run_for_s`` (start-up, flushing) before it is killed."""
PAUSE_MS = 20.0
"""A gap between deliveries longer than this after warm-up counts as a pause (the target)."""
GC_PAUSE_MS = 5.0
"""A pause is put down to GC when a collection at least this long overlapped it."""


@dataclass
class SimTraffic:
    """The simulator's traffic lines (``--stats-every``): cumulative counts with a timestamp."""

    lines: list[dict[str, Any]] = field(default_factory=list)

    def rate(self, key: str, start_unix: float, end_unix: float) -> float:
        """Per-second growth of ``key`` between the first and last lines within the window."""
        inside = [x for x in self.lines if start_unix <= x["t"] <= end_unix]
        if len(inside) < 2:
            return 0.0
        first, last = inside[0], inside[-1]
        return (last[key] - first[key]) / max(last["t"] - first["t"], 1e-9)

    def max_backlog(self, start_unix: float, end_unix: float) -> int:
        """The longest client queue seen in the window, in frames."""
        inside = (x["backlog"] for x in self.lines if start_unix <= x["t"] <= end_unix)
        return max(inside, default=0)


@dataclass
class Simulator:
    """A simulator process: its URLs and the traffic it reported so far."""

    proc: subprocess.Popen[str]
    ws_url: str
    rest_url: str
    traffic: SimTraffic


@contextmanager
def simulator(
    symbols: list[str], rate: float, *, max_backlog: int | None = None, seed: int = 1
) -> Iterator[Simulator]:
    """Run ``python -m sources.simulator`` in load-test mode until the block ends."""
    cmd = [
        sys.executable, "-m", "sources.simulator", "--symbols", ",".join(symbols),
        "--rate", str(rate), "--tick-ms", "1", "--frame-per-update", "--stats-every", "1",
        "--seed", str(seed), "--log-level", "WARNING",
    ]  # fmt: skip
    if max_backlog is not None:
        cmd += ["--max-backlog", str(max_backlog)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = _read_urls(proc.stdout)
        traffic = SimTraffic()
        reader = threading.Thread(target=_read_traffic, args=(proc.stdout, traffic), daemon=True)
        reader.start()
        yield Simulator(proc, urls["ws"], urls["rest"], traffic)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_urls(out: IO[str]) -> dict[str, str]:
    urls: dict[str, str] = {}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(urls) < 2 and time.monotonic() < deadline:
        line = out.readline()
        if not line:
            break
        key, _, value = line.strip().partition(" ")
        if key in ("ws", "rest"):
            urls[key] = value.strip()
    if len(urls) < 2:
        raise RuntimeError(f"the simulator did not print its URLs; got {urls}")
    return urls


def _read_traffic(out: IO[str], traffic: SimTraffic) -> None:
    for line in out:
        if line.startswith("{"):
            traffic.lines.append(json.loads(line))


class Feed(Protocol):
    """Where the flow connects: the simulator, or the blaster of pre-made frames."""

    ws_url: str
    rest_url: str


def pipelines_yaml(
    sim: Feed,
    symbols: list[str],
    *,
    run_for_s: float,
    poll_interval_ms: float,
    redis_url: str,
    prefix: str = "bench:",
    gc: str = "{}",
    shed_after_s: float = 1.0,
) -> str:
    """The flow's config: the simulator's symbols, the order book, the Redis sink.

    ``gc`` is the ``service.gc`` mapping in YAML flow style, e.g. ``{freeze: true}``;
    ``shed_after_s`` the orderbook's (0: publish every book however far behind).
    """
    return f"""service:
  health: {{enabled: false}}
  logging: {{level: WARNING}}
  gc: {gc}
pipelines:
  - name: bench
    source:
      type: binance_futures
      symbols: {json.dumps(symbols)}
      ws_url: "{sim.ws_url}"
      rest_url: "{sim.rest_url}"
      depth_speed_ms: 100
      reconnect_delay_ms: 200
      poll_interval_ms: {poll_interval_ms}
      run_for_s: {run_for_s}
    operators: [{{type: orderbook, depth: 20, shed_after_s: {shed_after_s}}}]
    sinks: [{{type: redis, url: "{redis_url}", channel_prefix: "{prefix}"}}]
"""


def run_flow(config: Path, processes: int, reports: Path, timeout_s: float) -> float:
    """Run the flow on ``config`` until it ends; return the peak RSS (MiB) of a process."""
    if processes == 1:
        cmd = [sys.executable, "-m", "bytewax.run", "flows.main"]
    else:
        cmd = [sys.executable, "-m", "flows.launch", "-n", str(processes)]
    env = {
        **os.environ,
        "PIPELINES_FILE": str(config),
        ENV_VAR: str(reports / "latency-{pid}-{worker}.json"),
    }
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout_s
        peak_kib = 0
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{' '.join(cmd)} still ran after {timeout_s:.0f} s")
            peak_kib = max(peak_kib, max_rss_kib(proc.pid))
            time.sleep(0.1)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return peak_kib / 1024


@dataclass
class LiveFigures:
    """What one live case measured, in the window after warm-up."""

    case: str
    updates: int  # book updates that reached Redis in the window
    seconds: float  # the window
    updates_per_s: float
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    # From the exchange's event time E (ms, same host clock) instead of the read off the socket:
    # includes any wait in the socket and up to 1 ms of E's rounding.
    event_p50_us: float | None
    event_p99_us: float | None
    event_max_us: float | None  # a flow that stopped reading shows here, not in max_us
    longest_gap_ms: float  # the longest time a worker delivered nothing
    pauses: int  # gaps over PAUSE_MS (the longest of each second and worker)
    pauses_with_gc: int  # ... overlapped by a collection of GC_PAUSE_MS or more
    gc_max_ms: float  # the longest collection in the window
    gc_over_1ms: list[int]  # collections that took 1 ms or more, per generation, in the window
    sim_sent_per_s: float  # depth frames the simulator queued per second of the window
    sim_max_backlog: int  # frames, the longest client queue it reported in the window
    peak_rss_mib: float
    workers: int  # reports read (Redis sink partitions)
    seconds_by_interval: list[dict[str, float]] = field(default_factory=list)


def summarize(
    case: str,
    reports: list[dict[str, Any]],
    warmup_s: float,
    traffic: SimTraffic,
    peak_rss_mib: float = 0.0,
) -> LiveFigures:
    """The figures of one run from its latency reports (one per Redis sink partition).

    Every report's interval ``k`` is the wall-clock second ``origin_unix + k`` (see
    :mod:`health.latency`). The window starts ``warmup_s`` after the first second with a
    delivery and ends before the last second of the report that stopped first (the flow stopped
    within it).
    """
    # second -> (histogram, longest gap ns, when it ended, pid) of each report
    seconds_of: dict[int, list[tuple[LatencyHistogram, int, float, int]]] = {}
    ends = []
    for rep in reports:
        rec = LatencyRecorder.from_dict(rep["latency"])
        intervals = rec.intervals()
        for k, hist, gap in intervals:
            gap_end = rep["origin_unix"] + (rec.gap_end(k) - rec.origin_ns) / 1e9
            seconds_of.setdefault(rep["origin_unix"] + k, []).append(
                (hist, gap, gap_end, rep["pid"])
            )
        if intervals:
            ends.append(rep["origin_unix"] + intervals[-1][0])
    if not seconds_of:
        raise RuntimeError(f"{case}: no book update reached Redis")
    first = min(seconds_of)
    start, end = first + math.ceil(warmup_s), min(ends)
    window = sorted((t, parts) for t, parts in seconds_of.items() if start <= t < end)
    if not window:
        raise RuntimeError(f"{case}: nothing delivered after the {warmup_s:.0f} s warm-up")
    hist = LatencyHistogram.merged(h for _, parts in window for h, *_ in parts)
    event_hist = LatencyHistogram.merged(
        h
        for rep in reports
        if "event_latency" in rep
        for k, h, _ in LatencyRecorder.from_dict(rep["event_latency"]).intervals()
        if start <= rep["origin_unix"] + k < end
    )
    gaps_ms = {t: max(p[1] for p in parts) / 1e6 for t, parts in window}
    # Long collections on the wall clock: (start, ms, generation, pid); the workers of a
    # process share one GcWatch, hence the set.
    gcs: set[tuple[float, float, int, int]] = set()
    for rep in reports:
        for g in rep["gc"]["long"]:
            at = rep["origin_unix"] + (g["start_ns"] - rep["latency"]["origin_ns"]) / 1e9
            gcs.add((round(at, 6), g["ns"] / 1e6, g["generation"], rep["pid"]))
    in_window = [g for g in gcs if start <= g[0] < end]
    gc_counts = [sum(1 for g in in_window if g[2] == gen) for gen in range(3)]
    pauses = [
        (gap / 1e6, gap_end, pid)
        for _, parts in window
        for _, gap, gap_end, pid in parts
        if gap / 1e6 > PAUSE_MS
    ]
    with_gc = [
        p
        for p in pauses
        if any(
            pid == p[2] and ms >= GC_PAUSE_MS and at < p[1] and at + ms / 1e3 > p[1] - p[0] / 1e3
            for at, ms, _, pid in gcs
        )
    ]
    return LiveFigures(
        case=case,
        updates=hist.count,
        seconds=end - start,
        updates_per_s=hist.count / (end - start),
        p50_us=hist.percentile(0.5) / 1e3,
        p99_us=hist.percentile(0.99) / 1e3,
        p999_us=hist.percentile(0.999) / 1e3,
        max_us=hist.max / 1e3,
        event_p50_us=event_hist.percentile(0.5) / 1e3 if event_hist.count else None,
        event_p99_us=event_hist.percentile(0.99) / 1e3 if event_hist.count else None,
        event_max_us=event_hist.max / 1e3 if event_hist.count else None,
        longest_gap_ms=max(gaps_ms.values()),
        pauses=len(pauses),
        pauses_with_gc=len(with_gc),
        gc_max_ms=max((g[1] for g in in_window), default=0.0),
        gc_over_1ms=gc_counts,
        sim_sent_per_s=traffic.rate("depth_frames_queued", start, end),
        sim_max_backlog=traffic.max_backlog(start, end),
        peak_rss_mib=peak_rss_mib,
        workers=len(reports),
        seconds_by_interval=[
            {
                "t": t - first,
                "count": sum(p[0].count for p in parts),
                "p99_us": LatencyHistogram.merged(p[0] for p in parts).percentile(0.99) / 1e3,
                "max_us": max(p[0].max for p in parts) / 1e3,
                "gap_ms": gaps_ms[t],
            }
            for t, parts in window
        ],
    )


def read_reports(folder: Path) -> list[dict[str, Any]]:
    """Every latency report the flow wrote into ``folder``."""
    return [json.loads(p.read_bytes()) for p in sorted(folder.glob("latency-*.json"))]


def run_case(
    case: str,
    symbols: list[str],
    rate: float,
    *,
    processes: int = 1,
    poll_interval_ms: float = 1.0,
    warmup_s: float = 5.0,
    measure_s: float = 20.0,
    max_backlog: int | None = None,
    redis_url: str = "redis://127.0.0.1:6379",
    gc: str = "{}",
    premade: int | None = None,
    shed_after_s: float = 1.0,
) -> LiveFigures:
    """Start the simulator and the flow, let the flow run out, summarize its reports.

    With ``premade``, the feed is :mod:`benchmarks.blaster` with that many frames per symbol,
    made before the run and sent as fast as the flow reads them (``rate`` is then not used).
    """
    # The flow's clock starts when its source does, after imports and the first connect; the
    # warm-up is counted from the first delivery, so the margin covers the snapshot sync.
    run_for_s = warmup_s + measure_s + 3.0
    feed = (
        simulator(symbols, rate, max_backlog=max_backlog)
        if premade is None
        else blaster(symbols, premade)
    )
    with tempfile.TemporaryDirectory(prefix="md-live-") as tmp, feed as sim:
        folder = Path(tmp)
        config = folder / "pipelines.yaml"
        config.write_text(
            pipelines_yaml(
                sim,
                symbols,
                run_for_s=run_for_s,
                poll_interval_ms=poll_interval_ms,
                redis_url=redis_url,
                gc=gc,
                shed_after_s=shed_after_s,
            )
        )
        rss = run_flow(config, processes, folder, run_for_s + FLOW_GRACE_S)
        reports = read_reports(folder)
    if not reports:
        raise RuntimeError(f"{case}: the flow wrote no latency report")
    if isinstance(sim, Simulator):
        traffic = sim.traffic
    elif sim.blaster.ran_out:
        raise RuntimeError(f"{case}: the pre-made frames ran out during the run: make more")
    else:
        traffic = SimTraffic(sim.blaster.lines)
    return summarize(case, reports, warmup_s, traffic, rss)


RTT_CHANNEL = b"market-data:benchmark:round-trip"


def redis_round_trip(
    url: str, count: int = 2_000, spacing_s: float = 0.0005
) -> tuple[float, float]:
    """p50 and p99 µs of one ``PUBLISH`` sent and answered as the Redis sink does it (one packed
    write, the reply read off the socket), ``count`` times ``spacing_s`` apart, with nothing else
    running: the floor under the live cases' latency on this machine (with the flow and the
    simulator on the same cores, a round trip takes longer)."""
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    pool = client.connection_pool
    conn = pool.get_connection()
    command = b"*3\r\n" + _bulk(b"PUBLISH") + _bulk(RTT_CHANNEL) + _bulk(b"x")
    took = []
    try:
        for _ in range(count):
            start = time.perf_counter_ns()
            conn.send_packed_command([command], check_health=False)
            replies, refused = _read_replies(conn, 1)
            took.append(time.perf_counter_ns() - start)
            if refused:
                raise RuntimeError(f"Redis at {url} refused PUBLISH: {replies[0]}")
            time.sleep(spacing_s)
    finally:
        pool.release(conn)
        client.close()
    took.sort()
    return took[len(took) // 2] / 1e3, took[int(len(took) * 0.99)] / 1e3


FLAT_OUT_RATE = 100_000
"""Updates/s asked per symbol when the simulator is to go as fast as it can (far beyond it)."""
FLAT_OUT_BACKLOG = 5_000
"""Frames queued for a client at most before the simulator pauses generating (load tests)."""


def throughput_symbols(n: int) -> list[str]:
    """``n`` symbol names for the flat-out cases: real ones first, then ``SYM<i>USDT``."""
    names = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT"]
    return (names + [f"SYM{i}USDT" for i in range(n)])[:n]


def throughput_case(
    processes: int,
    *,
    symbols: int = 4,
    warmup_s: float = 5.0,
    measure_s: float = 20.0,
    redis_url: str = "redis://127.0.0.1:6379",
    gc: str = "{}",
    premade: int | None = None,
) -> LiveFigures:
    """The simulator as fast as it goes over ``symbols`` symbols, the flow in ``processes``;
    or, with ``premade``, that many frames per symbol made before the run (see ``run_case``)."""
    topology = "1 process" if processes == 1 else f"{processes} processes"
    tuned = "" if gc == "{}" else f", gc {gc}"
    feed = "simulator" if premade is None else "pre-made frames"
    figures = run_case(
        f"throughput: {feed} ws -> redis, {symbols} symbols, {topology}{tuned}",
        throughput_symbols(symbols),
        rate=FLAT_OUT_RATE,
        processes=processes,
        warmup_s=warmup_s,
        measure_s=measure_s,
        max_backlog=FLAT_OUT_BACKLOG,
        redis_url=redis_url,
        gc=gc,
        premade=premade,
    )
    if premade is None:
        return figures
    # Pre-made frames carry the generator's event times (2023, ~50 ms apart), not when they
    # were sent: no latency from E.
    return replace(figures, event_p50_us=None, event_p99_us=None, event_max_us=None)
