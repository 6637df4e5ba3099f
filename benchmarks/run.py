"""One command for the performance figures: ``python -m benchmarks.run [--quick]``.

Generates seeded Binance-shaped streams (``benchmarks.streams``) and measures, on this machine:

* ``core``: the per-frame processing latency of the pure core (parse, validate, apply, top-20
  view, encode), as a histogram;
* ``ceiling``: a bare-Python loop doing the same work with no framework (the best the dataflow
  could do in one process);
* ``replay``: the whole dataflow (``python -m bytewax.run flows.main``) replaying the same
  frames, with each sink, under one worker, two worker threads and two processes;
* ``e2e``: the whole dataflow on the simulator's WebSocket (the simulator in its own process),
  one symbol at ``--e2e-rate`` updates/s, Redis sink: latency from the frame read off the socket
  to the Redis pipeline's return, after a warm-up, under each of ``--e2e-variants`` (``default``;
  ``low-latency``: ``poll_interval_ms: 0``, the source waits on its sockets; ``-gc``:
  ``service.gc`` turned off, Python's own collector settings), with the longest pause (gap
  between deliveries) and what GC did meanwhile, and the latency from the exchange's event time
  ``E`` (the simulator shares the host's clock; ``E`` is in ms): that one also counts time a
  frame waited in the socket before the worker read it, and the simulator's own delay between
  making an update and sending it;
* ``throughput``: the same with 4 symbols and the simulator pushed as fast as it goes, the flow
  in 1 and 2 processes: book updates that reached Redis per second, and the simulator's own
  send rate, so the limiting side shows (see :mod:`benchmarks.live`);
* ``premade``: the same with frames made before the run and sent as fast as the flow reads them
  (:mod:`benchmarks.blaster`), so the load generator leaves the flow and Redis nearly both cores:
  what the flow can do when the simulator is not the limit.

``--cases`` picks some (default: all). It prints one markdown table (updates/s, p50/p99/p999 µs,
the live cases' max latency, longest pause, latency from ``E`` and simulator rate, peak RSS,
ratio to the ceiling: the median over the replay runs of each one's ratio to a ceiling run made
just before it), then which implementation ran (the C speedups or pure Python) and, with live
cases, the Redis round trip of one ``PUBLISH`` as the sink sends it, measured alone before and
after them (the floor under their latency on this machine); and writes the figures as JSON
(``--json``; the live cases with their per-second figures). These are figures, not pass/fail
tests: the machine is small and shared, so run it several times and compare medians. The live
cases' frames are the simulator's (about 4 level changes each on average), lighter than the
replayed ones (1-40, about 20), so they are not compared with the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import core, live, whole_market
from benchmarks.procs import max_rss_kib
from benchmarks.streams import Stream, generate
from market_data import speedups
from sources.recording import Record, write_records

ROOT = Path(__file__).resolve().parent.parent
WS_URL = "wss://fstream.binance.com/public/stream?streams={s}@depth@100ms"
REST_URL = "https://fapi.binance.com/fapi/v1/depth?symbol={S}&limit=1000"


@dataclass
class Row:
    """One line of the table."""

    case: str
    updates: int
    seconds: float
    updates_per_s: float | None  # None: not measured
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    peak_rss_mib: float | None = None
    vs_ceiling: float | None = None
    max_ms: float | None = None  # the largest latency (live cases)
    pause_ms: float | None = None  # the longest gap between deliveries (live cases)
    source_per_s: float | None = None  # what the simulator sent (live cases)
    event_p50_us: float | None = None  # from the exchange's event time E (live cases)
    event_p99_us: float | None = None


def percentile(sorted_ns: list[int], q: float) -> float:
    """The ``q`` quantile of sorted nanoseconds, in microseconds."""
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def write_recordings(streams: list[Stream], folder: Path) -> list[str]:
    """One recording per symbol (one replay partition each): its snapshot, then its frames."""
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for s in streams:
        records = [Record(0.0, "rest", REST_URL.format(S=s.symbol), status=200, body=s.snapshot)]
        url = WS_URL.format(s=s.symbol.lower())
        records += [Record(0.001 * (i + 1), "ws", url, frame=f) for i, f in enumerate(s.frames)]
        path = folder / f"{s.symbol}.jsonl"
        write_records(path, records)
        paths.append(str(path))
    return paths


def sink_yaml(sink: str, folder: Path) -> str:
    """The sinks list for one benchmark case."""
    if sink == "jsonl":
        return f'[{{type: jsonl, path: "{folder}/out-{{worker}}.jsonl"}}]'
    if sink == "shm":
        return f"[{{type: shm, name: md_bench_{os.getpid()}, slots: 65536, slot_size: 2048}}]"
    if sink == "redis":
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        return f'[{{type: redis, url: "{url}", channel_prefix: "bench:"}}]'
    raise ValueError(sink)


def replay_config(paths: list[str], sink: str, folder: Path, name: str = "bench") -> str:
    """A pipelines.yaml replaying ``paths`` into ``sink``, with no sidecar and quiet logs."""
    return f"""service:
  health: {{enabled: false}}
  logging: {{level: WARNING}}
pipelines:
  - name: {name}
    source: {{type: replay, path: {json.dumps(paths)}}}
    operators: [{{type: orderbook, depth: {core.DEPTH}}}]
    sinks: {sink_yaml(sink, folder)}
"""


def run_flow(paths: list[str], sink: str, topology: str, folder: Path) -> tuple[float, float]:
    """Run the dataflow once; return (seconds, peak RSS MiB of the largest process)."""
    config = folder / f"bench-{sink}-{topology}.yaml"
    config.write_text(replay_config(paths, sink, folder))
    if topology == "1 worker":
        cmd = [sys.executable, "-m", "bytewax.run", "flows.main"]
    elif topology == "2 workers":
        cmd = [sys.executable, "-m", "bytewax.run", "flows.main", "-w", "2"]
    else:
        cmd = [sys.executable, "-m", "flows.launch", "-n", "2"]
    env = {**os.environ, "PIPELINES_FILE": str(config)}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err)
        peak_kib = 0
        while proc.poll() is None:
            peak_kib = max(peak_kib, max_rss_kib(proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return seconds, peak_kib / 1024


def redis_answers() -> bool:
    """True when the benchmark's Redis answers."""
    import redis

    try:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


CASES = ("core", "ceiling", "replay", "e2e", "throughput", "premade")
"""The cases run by default."""
MORE_CASES = ("whole-market", "overload")
"""Cases run only when named (``--cases whole-market``): minutes each."""
PREMADE_PER_S = 25_000
"""Frames made per symbol for each second of a ``premade`` run (two processes read ~23,000); a
run that uses them all up fails rather than report a starved window."""
GC_OFF = "{freeze: false, gen0_threshold: null}"  # service.gc is on by default
E2E_VARIANTS = {  # name: (source poll_interval_ms, service.gc)
    "default": (1.0, "{}"),
    "low-latency": (0.0, "{}"),
    "default-gc": (1.0, GC_OFF),
    "low-latency-gc": (0.0, GC_OFF),
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen cases and print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"some of {','.join(CASES + MORE_CASES)}"
    )
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--updates", type=int, default=25_000, help="per symbol")
    parser.add_argument("--runs", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument(
        "--quick", action="store_true", help="fewer updates, one run, 1 sink, short live cases"
    )
    parser.add_argument("--sinks", default="jsonl,shm,redis")
    parser.add_argument("--e2e-rate", type=float, default=10_000, help="updates/s, one symbol")
    parser.add_argument("--e2e-variants", default=",".join(E2E_VARIANTS))
    parser.add_argument("--throughput-processes", default="1,2")
    parser.add_argument(
        "--throughput-no-gc",
        action="store_true",
        help="also run throughput with service.gc turned off",
    )
    parser.add_argument("--live-warmup", type=float, default=5.0, help="seconds left out")
    parser.add_argument("--live-seconds", type=float, default=20.0, help="seconds measured")
    parser.add_argument(
        "--whole-market-symbols", default="200,500", help="symbol counts of the whole-market case"
    )
    parser.add_argument("--whole-market-markets", default="futures,spot")
    parser.add_argument(
        "--whole-market-variants",
        default="partial",
        help="partial (books from partial depth frames, the default config) and/or rest "
        "(partial_depth: false, REST snapshots only)",
    )
    parser.add_argument("--whole-market-rate", type=float, default=10.0, help="updates/s each")
    parser.add_argument(
        "--whole-market-processes", type=int, default=1, help="processes of one cluster"
    )
    parser.add_argument(
        "--overload-rate", type=float, default=15_000, help="updates/s each of 4 symbols"
    )
    parser.add_argument("--json", default="benchmarks/results/latest.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.updates, args.runs, args.sinks = 5_000, 1, "jsonl"
        args.live_warmup, args.live_seconds = 3.0, 6.0
        args.e2e_variants, args.throughput_processes = "default,low-latency", "1"
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    variants = [v.strip() for v in args.e2e_variants.split(",") if v.strip()]
    unknown = sorted(set(cases) - set(CASES + MORE_CASES))
    unknown += sorted(set(variants) - set(E2E_VARIANTS))
    if unknown:
        parser.error(
            f"unknown case or variant {unknown}; expected cases from "
            f"{list(CASES + MORE_CASES)} and variants from {list(E2E_VARIANTS)}"
        )
    symbols = [f"SYM{i}USDT" for i in range(args.symbols)]
    streams = [generate(s, args.updates, seed=7) for s in symbols]
    total = sum(len(s.frames) for s in streams)
    rows: list[Row] = []
    figures: list[live.LiveFigures] = []

    if "core" in cases:
        lat = sorted(core.latencies(streams))
        mean_s = statistics.fmean(lat) / 1e9
        rows.append(
            Row("core: parse+apply+encode, per frame", total, sum(lat) / 1e9, 1 / mean_s,
                percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 0.999))
        )  # fmt: skip
    if "ceiling" in cases or "replay" in cases:
        ceilings = [core.ceiling(streams) for _ in range(args.runs)]
        ceiling_s = statistics.median(s for _, s in ceilings)
        rows.append(
            Row("ceiling: bare Python loop", total, ceiling_s, total / ceiling_s, vs_ceiling=1.0)
        )

    if "replay" in cases:
        rows += replay_rows(args, streams, total)

    live_cases = [c for c in ("e2e", "throughput", "premade", "overload") if c in cases]
    if live_cases and not redis_answers():
        print("no Redis answers at $REDIS_URL or 127.0.0.1:6379: skipping", live_cases)
        live_cases = []
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    warmup_s, measure_s = args.live_warmup, args.live_seconds
    round_trips: list[tuple[float, float]] = []  # before the live cases, and after
    if live_cases:
        round_trips.append(live.redis_round_trip(url))
    if "e2e" in live_cases:
        for variant in variants:
            poll, gc = E2E_VARIANTS[variant]
            case = f"e2e: simulator ws -> redis, 1 symbol at {args.e2e_rate:,.0f}/s, {variant}"
            figures.append(
                live.run_case(case, ["BTCUSDT"], args.e2e_rate, poll_interval_ms=poll, gc=gc,
                              warmup_s=warmup_s, measure_s=measure_s, redis_url=url)
            )  # fmt: skip
    if "throughput" in live_cases:
        for gc in ("{}", GC_OFF) if args.throughput_no_gc else ("{}",):
            for n in (int(p) for p in args.throughput_processes.split(",")):
                figures.append(
                    live.throughput_case(n, symbols=args.symbols, gc=gc, warmup_s=warmup_s,
                                         measure_s=measure_s, redis_url=url)
                )  # fmt: skip
    if "premade" in live_cases:
        premade = round((warmup_s + measure_s + 8) * PREMADE_PER_S)
        for n in (int(p) for p in args.throughput_processes.split(",")):
            figures.append(
                live.throughput_case(n, symbols=args.symbols, warmup_s=warmup_s,
                                     measure_s=measure_s, redis_url=url, premade=premade)
            )  # fmt: skip
    if "overload" in live_cases:
        # More than one process can take: books shed (the default) against every book published.
        for shed in (1.0, 0.0):
            how = f"shed_after_s {shed:g}" if shed else "no shedding"
            case = f"overload: 4 symbols at {args.overload_rate:,.0f}/s each, {how}"
            figures.append(
                live.run_case(case, live.throughput_symbols(4), args.overload_rate,
                              warmup_s=warmup_s, measure_s=measure_s, redis_url=url,
                              shed_after_s=shed)
            )  # fmt: skip
    if live_cases:
        round_trips.append(live.redis_round_trip(url))
    rows += [live_row(f) for f in figures]

    markets: list[whole_market.WholeMarketFigures] = []
    if "whole-market" in cases:
        for market in (m.strip() for m in args.whole_market_markets.split(",") if m.strip()):
            for n in (int(x) for x in args.whole_market_symbols.split(",") if x.strip()):
                for variant in (v.strip() for v in args.whole_market_variants.split(",")):
                    markets.append(
                        whole_market.run_whole_market(
                            n, spot=market == "spot", rate=args.whole_market_rate,
                            variant=variant, processes=args.whole_market_processes,
                        )
                    )  # fmt: skip
                    print(whole_market.table(markets[-1:]).splitlines()[-1], flush=True)

    if rows:
        print(table(rows))
    if markets:
        print(whole_market.table(markets))
        for m in markets:
            for note in m.notes:
                print(f"{m.market} {m.symbols} {m.variant}: {note}")
    print(f"\n{speedups.STATUS}")
    if round_trips:
        print(
            "Redis round trip of one PUBLISH as the sink sends it, alone: "
            + "; ".join(
                f"{when} the live cases p50 {p50:.0f} µs, p99 {p99:.0f} µs"
                for when, (p50, p99) in zip(("before", "after"), round_trips, strict=False)
            )
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "load": os.getloadavg(), "speedups": speedups.STATUS},
                "args": vars(args),
                "rows": [asdict(r) for r in rows],
                "live": [asdict(f) for f in figures],
                "whole_market": [asdict(m) for m in markets],
                "redis_round_trip_us": [{"p50": p50, "p99": p99} for p50, p99 in round_trips],
            },
            indent=2,
        )
    )  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nfigures written to {out}; this process's peak RSS {rss:.0f} MiB")
    return 0


def replay_rows(args: argparse.Namespace, streams: list[Stream], total: int) -> list[Row]:
    """The replay flow with each sink and topology."""
    rows = []
    sinks = [s for s in args.sinks.split(",") if s != "redis" or redis_answers()]
    with tempfile.TemporaryDirectory(prefix="md-bench-") as tmp:
        folder = Path(tmp)
        paths = write_recordings(streams, folder)
        # The fixed cost (interpreter, imports, dataflow start and stop) is measured on a
        # recording of snapshots only and taken off every run: its fastest run, as what varies
        # is added delay (a cluster's processes retry connecting to each other; with the
        # median, one slow start made 2 processes look 3x faster than the ceiling).
        empty = write_recordings([Stream(s.symbol, s.snapshot, []) for s in streams], folder / "e")
        for sink in sinks:
            for topology in ("1 worker", "2 workers", "2 processes"):
                base = min(run_flow(empty, sink, topology, folder)[0] for _ in range(args.runs))
                # Each run is paired with a ceiling run just before it, and the ratio is the
                # median of the pairs': this machine's speed drifts by 10-20% over minutes (the
                # ceiling alone measured 31k-39k frames/s in one afternoon), which moved ratios
                # against a ceiling measured once at the start by as much.
                runs, ceilings = [], []
                for _ in range(args.runs):
                    ceilings.append(core.ceiling(streams)[1])
                    runs.append(run_flow(paths, sink, topology, folder))
                case = f"flow: replay -> {sink}, {topology}"
                work = [s - base for s, _ in runs]
                rss = max(r for _, r in runs)
                if min(work) <= 0:  # --quick: a start-up slower than the base run's hid the work
                    rows.append(
                        Row(
                            f"{case} (shorter than start-up: not measured)",
                            total,
                            statistics.median(s for s, _ in runs),
                            None,
                            peak_rss_mib=rss,
                        )
                    )
                    continue
                seconds = statistics.median(work)
                ratio = statistics.median(c / w for c, w in zip(ceilings, work, strict=True))
                rows.append(
                    Row(case, total, seconds, total / seconds, peak_rss_mib=rss, vs_ceiling=ratio)
                )
    return rows


def live_row(f: live.LiveFigures) -> Row:
    """A live case's line of the table."""
    return Row(
        f.case,
        f.updates,
        f.seconds,
        f.updates_per_s,
        f.p50_us,
        f.p99_us,
        f.p999_us,
        peak_rss_mib=f.peak_rss_mib,
        max_ms=f.max_us / 1e3,
        pause_ms=f.longest_gap_ms,
        source_per_s=f.sim_sent_per_s,
        event_p50_us=f.event_p50_us,
        event_p99_us=f.event_p99_us,
    )


def _pair(p50_us: float | None, p99_us: float | None) -> str:
    if p50_us is None or p99_us is None:
        return ""
    return f"{p50_us / 1e3:.1f} / {p99_us / 1e3:.1f}"


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""

    def f(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = [
        "| case | updates | updates/s | p50 µs | p99 µs | p999 µs | max ms | pause ms "
        "| from E p50/p99 ms | sim sent/s | RSS MiB | vs ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.updates:,} | {f(r.updates_per_s, ',.0f')} | {f(r.p50_us, '.1f')} | "
            f"{f(r.p99_us, '.1f')} | {f(r.p999_us, '.1f')} | {f(r.max_ms, '.1f')} | "
            f"{f(r.pause_ms, '.1f')} | {_pair(r.event_p50_us, r.event_p99_us)} | "
            f"{f(r.source_per_s, ',.0f')} | "
            f"{f(r.peak_rss_mib, '.0f')} | {f(r.vs_ceiling, '.2f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
