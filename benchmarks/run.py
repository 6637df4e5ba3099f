"""One command for the performance figures: ``python -m benchmarks.run [--quick]``.

Generates seeded Binance-shaped streams (``benchmarks.streams``) and measures, on this machine:

* ``core``: the per-frame processing latency of the pure core (parse, validate, apply, top-20
  view, encode), as a histogram;
* ``ceiling``: a bare-Python loop doing the same work with no framework (the best the dataflow
  could do in one process);
* ``flow``: the whole dataflow (``python -m bytewax.run flows.main``) replaying the same frames,
  with each sink, under one worker, two worker threads and two processes.

It prints one markdown table (updates/s, p50/p99/p999 µs, peak RSS, ratio to the ceiling) and
writes the figures as JSON (``--json``). These are figures, not pass/fail tests: the machine is
small and shared, so run it several times and compare medians.
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

from benchmarks import core
from benchmarks.streams import Stream, generate
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
    updates_per_s: float
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    peak_rss_mib: float | None = None
    vs_ceiling: float | None = None


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


def run_flow(paths: list[str], sink: str, topology: str, folder: Path) -> tuple[float, float]:
    """Run the dataflow once; return (seconds, peak RSS MiB of the largest process)."""
    config = folder / f"bench-{sink}-{topology}.yaml"
    config.write_text(
        f"""service:
  health: {{enabled: false}}
  logging: {{level: WARNING}}
pipelines:
  - name: bench
    source: {{type: replay, path: {json.dumps(paths)}}}
    operators: [{{type: orderbook, depth: {core.DEPTH}}}]
    sinks: {sink_yaml(sink, folder)}
"""
    )
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


def max_rss_kib(pid: int) -> int:
    """The largest resident set (KiB) among ``pid`` and its descendants, from /proc."""
    best, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # the process ended meanwhile
    return best


def redis_answers() -> bool:
    """True when the benchmark's Redis answers."""
    import redis

    try:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--updates", type=int, default=25_000, help="per symbol")
    parser.add_argument("--runs", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument("--quick", action="store_true", help="fewer updates, one run, 1 sink")
    parser.add_argument("--sinks", default="jsonl,shm,redis")
    parser.add_argument("--json", default="benchmarks/results/latest.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.updates, args.runs, args.sinks = 5_000, 1, "jsonl"
    symbols = [f"SYM{i}USDT" for i in range(args.symbols)]
    streams = [generate(s, args.updates, seed=7) for s in symbols]
    total = sum(len(s.frames) for s in streams)
    rows: list[Row] = []

    lat = sorted(core.latencies(streams))
    mean_s = statistics.fmean(lat) / 1e9
    rows.append(
        Row("core: parse+apply+encode, per frame", total, sum(lat) / 1e9, 1 / mean_s,
            percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 0.999))
    )  # fmt: skip
    ceilings = [core.ceiling(streams) for _ in range(args.runs)]
    ceiling_s = statistics.median(s for _, s in ceilings)
    ceiling_rate = total / ceiling_s
    rows.append(Row("ceiling: bare Python loop", total, ceiling_s, ceiling_rate, vs_ceiling=1.0))

    sinks = [s for s in args.sinks.split(",") if s != "redis" or redis_answers()]
    with tempfile.TemporaryDirectory(prefix="md-bench-") as tmp:
        folder = Path(tmp)
        paths = write_recordings(streams, folder)
        # The fixed cost (interpreter, imports, dataflow start and stop) is measured on a
        # recording of snapshots only and taken off every run.
        empty = write_recordings([Stream(s.symbol, s.snapshot, []) for s in streams], folder / "e")
        for sink in sinks:
            for topology in ("1 worker", "2 workers", "2 processes"):
                base = statistics.median(
                    run_flow(empty, sink, topology, folder)[0] for _ in range(args.runs)
                )
                runs = [run_flow(paths, sink, topology, folder) for _ in range(args.runs)]
                seconds = max(statistics.median(s for s, _ in runs) - base, 1e-9)
                rate = total / seconds
                rows.append(
                    Row(f"flow: replay -> {sink}, {topology}", total, seconds, rate,
                        peak_rss_mib=max(r for _, r in runs), vs_ceiling=rate / ceiling_rate)
                )  # fmt: skip

    print(table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "load": os.getloadavg()},
                "args": vars(args),
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nfigures written to {out}; this process's peak RSS {rss:.0f} MiB")
    return 0


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""

    def f(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = [
        "| case | updates | updates/s | p50 µs | p99 µs | p999 µs | RSS MiB | vs ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.updates:,} | {r.updates_per_s:,.0f} | {f(r.p50_us, '.1f')} | "
            f"{f(r.p99_us, '.1f')} | {f(r.p999_us, '.1f')} | {f(r.peak_rss_mib, '.0f')} | "
            f"{f(r.vs_ceiling, '.2f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
