"""Soak: the live dataflow against the simulator with every fault on, checked as it runs.

    python -m benchmarks.soak                      # 10 minutes, 8 symbols at 50 updates/s
    python -m benchmarks.soak --minutes 60 --symbols 20 --rate 100 --json soak.json

The real source, book operator and shared-memory sink run in this process on the simulator
(gaps, disconnects, duplicates, malformed and unknown frames, 429s, slow and lagging snapshots,
late REST aggTrades answers).
A checking sink compares every published book with the simulator's own book at that update id
(and its JSON payload, byte for byte, with orjson's for the same book) and records every trade;
a thread samples resident memory (``VmRSS``) and open descriptors. At the end it prints: books
checked and wrong, resyncs, the longest time a symbol went without a correct book, trades missing
or duplicated, RSS and descriptors at start and end.

Trades are counted in two places: where the source emitted them and where the flow published
them. Binance does not replay aggTrades on a new connection; the source fetches the ones pushed
while a connection was down over REST (``trade_backfill``), and those count as received. A trade
that never reached the source (its backfill gave up) is reported apart from a trade lost inside
the flow, which must never happen.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
import time
import tracemalloc
from array import array
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main, run_main
from prometheus_client import REGISTRY

from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    Market,
    OutputEvent,
    SourceEvent,
    Trade,
)
from market_data.options import BinanceFuturesOptions, OrderBookOptions
from market_data.runtime import PipelineRuntime
from market_data.shutdown import reset as reset_shutdown
from operators.orderbook import apply
from sinks.payload import book_dict, encode_book
from sinks.shm import ShmSink
from sources import parse
from sources.binance import BinanceSource
from sources.simulator.config import SimulatorConfig
from sources.simulator.faults import FaultConfig, parse_faults
from sources.simulator.market import SimulatorError
from sources.simulator.server import Simulator

DEPTH = 10
# Far more often than Binance misbehaves. A gap costs a 1,000-level snapshot of weight 20 and the
# source spends at most 1,200 a minute (60 snapshots): with gaps much more frequent than this,
# the weight budget, not the recovery, decides how long a book is down.
EVERY_FAULT = (
    "gap=0.005,disconnect=0.0005,duplicate=0.02,malformed=0.02,unknown_event=0.02,"
    "snapshot_429=0.1,snapshot_lag=2,snapshot_delay=0.2,agg_trades_delay=0.2"
)


def rss_kib() -> int:
    """This process's resident set size in KiB (``VmRSS``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def snapshot_fetches() -> dict[str, float]:
    """The process's ``snapshot_fetches`` counters summed by outcome."""
    return counter_sums("snapshot_fetches", "outcome")


def counter_sums(name: str, label: str | None = None) -> dict[str, float]:
    """The process's counters ``name`` summed by ``label`` (all under ``""`` without one)."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name == name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = sample.labels[label] if label else ""
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def open_fds() -> int:
    """Descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def _published_right(ev: BookUpdate) -> bool:
    """The payload the sinks publish for ``ev`` (the C writer's, when built) is, byte for byte,
    the contract's JSON of ``ev`` as orjson writes it."""
    return encode_book(ev) == orjson.dumps(book_dict(ev))


class Checker:
    """Checks every published item against the simulator; shared by the flow's workers."""

    def __init__(self, sim: Simulator, symbols: list[str], depth: int = DEPTH) -> None:
        self.sim = sim
        self.depth = depth
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.books_checked = 0
        self.books_wrong = 0
        self.books_unverifiable = 0  # older than the simulator's history (should stay 0)
        self.wrong_examples: list[str] = []
        self.resyncs: dict[str, list[float]] = {s: [] for s in symbols}
        self.last_ok: dict[str, float | None] = dict.fromkeys(symbols)
        self.first_ok: dict[str, float] = {}
        self.longest_gap: dict[str, float] = dict.fromkeys(symbols, 0.0)
        self.emitted: dict[str, array[int]] = {s: array("q") for s in symbols}
        # Status changes since each symbol's last correct book, kept for the longest gap.
        self.since_ok: dict[str, list[str]] = {s: [] for s in symbols}
        self.longest_gap_story: list[str] = []
        self.at_source: dict[str, set[int]] = {s: set() for s in symbols}
        self.trade_held_max_s = 0.0

    # -- hooks ----------------------------------------------------------------------------------
    def on_source(self, step_id: str, ev: SourceEvent) -> None:
        """Every event the source emitted (before the book operator)."""
        if type(ev) is Trade:
            with self.lock:
                self.at_source[ev.symbol].add(ev.trade_id)

    def on_output(self, items: list[OutputEvent]) -> None:
        """Every batch the flow published."""
        with self.lock:
            for ev in items:
                if isinstance(ev, BookUpdate):
                    self._book(ev)
                elif isinstance(ev, Trade):
                    self.emitted[ev.symbol].append(ev.trade_id)
                    # A live trade's receipt to its publication: the hold of a backfill, if any
                    # (a backfilled one's recv_time is its REST answer's).
                    held = time.time() - ev.recv_time
                    if held > self.trade_held_max_s:
                        self.trade_held_max_s = held
                elif isinstance(ev, BookStatus):
                    t = time.monotonic() - self.started
                    if ev.state is BookState.RESYNCING:
                        self.resyncs[ev.symbol].append(t)
                    story = self.since_ok[ev.symbol]
                    if len(story) < 50:
                        story.append(f"{t:.2f}s {ev.state.value}: {ev.reason}")

    def _book(self, ev: BookUpdate) -> None:
        try:
            truth = self.sim.book_at(ev.symbol, ev.last_update_id, self.depth)
        except SimulatorError:
            self.books_unverifiable += 1
            return
        self.books_checked += 1
        now = time.monotonic()
        if (ev.bids, ev.asks) != (truth.bids, truth.asks) or not _published_right(ev):
            self.books_wrong += 1
            if len(self.wrong_examples) < 5:
                self.wrong_examples.append(f"{ev.symbol} u={ev.last_update_id}")
            return
        last = self.last_ok[ev.symbol]
        if last is None:
            self.first_ok[ev.symbol] = now - self.started
        else:
            gap = now - last
            if gap > max(self.longest_gap.values()):
                at = last - self.started
                self.longest_gap_story = [
                    f"{ev.symbol}: last correct book at {at:.2f}s",
                    *(self.since_ok[ev.symbol]),
                    f"{now - self.started:.2f}s correct book again (u={ev.last_update_id})",
                ]
            self.longest_gap[ev.symbol] = max(self.longest_gap[ev.symbol], gap)
        self.since_ok[ev.symbol] = []
        self.last_ok[ev.symbol] = now

    def close(self) -> None:
        """The flow ended: the time since each symbol's last correct book counts too."""
        now = time.monotonic()
        with self.lock:
            for symbol, last in self.last_ok.items():
                if last is not None:
                    self.longest_gap[symbol] = max(self.longest_gap[symbol], now - last)


class _CheckPartition(StatelessSinkPartition[OutputEvent]):
    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    def write_batch(self, items: list[OutputEvent]) -> None:
        self._checker.on_output(items)


class CheckSink(DynamicSink[OutputEvent]):
    """A sink that hands every batch to a :class:`Checker`."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckPartition:
        return _CheckPartition(self.checker)


class Sampler:
    """Samples RSS and open descriptors every ``every_s`` seconds in a thread.

    With ``trace_after_s``, also takes a tracemalloc snapshot at the first sample past that time
    (tracemalloc must be tracing), to compare with one taken at the end.
    """

    def __init__(self, every_s: float = 2.0, trace_after_s: float | None = None) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []  # (seconds, rss KiB, fds)
        self.trace_after_s = trace_after_s
        self.traced: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            elapsed = time.monotonic() - self._t0
            self.samples.append((elapsed, rss_kib(), open_fds()))
            after = self.trace_after_s
            if after is not None and self.traced is None and elapsed >= after:
                self.traced = tracemalloc.take_snapshot()


def memory_growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 8
) -> list[str]:
    """The source lines whose live allocations grew most between two snapshots."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    lines = [
        f"{st.size_diff / 1024:+9.1f} KiB {st.count_diff:+8d} blocks  "
        f"{st.traceback[0].filename.rsplit('site-packages/', 1)[-1]}:{st.traceback[0].lineno}"
        for st in sorted(stats, key=lambda st: st.size_diff, reverse=True)[:top]
    ]
    total = sum(st.size_diff for st in stats)
    return [f"{total / 1024:+9.1f} KiB in all traced allocations", *lines]


@dataclass
class SoakReport:
    """What one soak run measured."""

    seconds: float
    symbols: int
    rate: float
    faults: str
    books_checked: int = 0
    books_wrong: int = 0
    books_unverifiable: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    resyncs: int = 0
    resyncs_max_per_symbol_per_minute: int = 0
    first_book_s: float = 0.0  # the slowest symbol's first correct book, from the start
    longest_without_book_s: float = 0.0
    longest_without_book_symbol: str = ""
    longest_without_book_story: list[str] = field(default_factory=list)
    trades_held_max_s: float = 0.0  # the longest from a trade's receipt to its publication
    trades_published: int = 0
    trades_duplicated: int = 0
    trades_out_of_order: int = 0
    trades_lost_in_flow: int = 0  # parsed by the source, never published
    trades_not_received: int = 0  # pushed while a connection was down and not backfilled
    trades_backfilled: int = 0  # pushed while a connection was down, fetched over REST
    trade_backfills_failed: dict[str, int] = field(default_factory=dict)  # by reason
    trades_missing: int = 0  # = lost in flow + not received
    snapshots_fetched: int = 0
    snapshots_refused: int = 0  # 429 / 418 answers
    snapshots_failed: int = 0  # timeouts, bad bodies
    rss_kib_start: int = 0
    rss_kib_warm: int = 0
    rss_kib_mid: int = 0
    rss_kib_end: int = 0
    rss_kib_after: int = 0
    units_cache_entries: int = 0  # sources.parse's bounded price/quantity cache, at the end
    memory_growth: list[str] = field(default_factory=list)  # --trace-memory: warm-up to end
    fds_start: int = 0
    fds_warm: int = 0
    fds_end: int = 0
    fds_after: int = 0
    sim_counts: dict[str, int] = field(default_factory=dict)

    def ok(self) -> bool:
        """The targets: no wrong book, no trade lost by the flow or duplicated."""
        return (
            self.books_checked > 0
            and self.books_wrong == 0
            and self.trades_duplicated == 0
            and self.trades_out_of_order == 0
            and self.trades_lost_in_flow == 0
        )


def _trade_figures(checker: Checker, sim: Simulator, report: SoakReport) -> None:
    for symbol, emitted in checker.emitted.items():
        ids = list(emitted)
        report.trades_published += len(ids)
        report.trades_duplicated += len(ids) - len(set(ids))
        report.trades_out_of_order += sum(1 for a, b in pairwise(ids) if b < a)
        if not ids:
            continue
        got = set(ids)
        sent = [f.agg_id for f in sim.trades(symbol) if ids[0] <= f.agg_id <= ids[-1]]
        for agg_id in sent:
            if agg_id in got:
                continue
            report.trades_missing += 1
            if agg_id in checker.at_source[symbol]:
                report.trades_lost_in_flow += 1
            else:
                report.trades_not_received += 1


def run_soak(
    seconds: float,
    symbols: int = 8,
    rate: float = 50.0,
    faults: str = EVERY_FAULT,
    seed: int = 1,
    workers: int = 1,
    warmup_s: float | None = None,
    trace_memory: bool = False,
    partial_depth: bool = True,
    sweep_every_s: float | None = None,
    levels: int = 1_000,
) -> SoakReport:
    """Run the flow for ``seconds`` against a faulty simulator; return the figures.

    ``trace_memory`` runs tracemalloc (slower) and reports which source lines' allocations grew
    between the end of the warm-up and the end of the run. ``partial_depth=False`` starts and
    resyncs books from REST snapshots only (so the snapshot faults happen); ``sweep_every_s``
    has takers sweep 80 levels of one side that often, in books of ``levels`` a side, so books
    live for the whole run cross the deepest level of their snapshot.
    """
    warm = warmup_s if warmup_s is not None else min(60.0, seconds / 5)
    names = [f"SOAK{i:02d}USDT" for i in range(symbols)]
    fault_config = parse_faults(faults) if faults else FaultConfig()
    config = SimulatorConfig(
        symbols=tuple(names),
        rate=rate,
        seed=seed,
        faults=fault_config,
        levels=levels,
        sweep_every_s=sweep_every_s,
        # Books are checked as they are published, so a minute of history is plenty; a bounded
        # history also keeps the simulator's own memory flat after the first minute.
        history_updates=max(2_000, int(rate * 60)),
    )
    report = SoakReport(seconds, symbols, rate, faults)
    gc.collect()
    report.rss_kib_start, report.fds_start = rss_kib(), open_fds()
    if trace_memory:
        tracemalloc.start()
    sampler = Sampler(trace_after_s=warm if trace_memory else None)
    reset_shutdown()
    fetches_before = snapshot_fetches()
    backfilled_before = counter_sums("trades_backfilled")
    failed_before = counter_sums("trade_backfill_failures", "reason")
    with Simulator(config) as sim:
        checker = Checker(sim, names)
        options = BinanceFuturesOptions(
            symbols=names,
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            reconnect_delay_ms=50,
            max_reconnect_delay_ms=1000,
            partitions=2,
            run_for_s=seconds,
            partial_depth=partial_depth,
        )
        flow = Dataflow("soak")
        runtime = PipelineRuntime()
        source = BinanceSource(options, Market.FUTURES, depth=DEPTH, wants=runtime.wants)
        src = op.input("binance", flow, source)
        op.inspect("seen_at_source", src, checker.on_source)
        books = apply("order_book", src, OrderBookOptions(depth=DEPTH), Market.FUTURES, runtime)
        op.output("check", books, CheckSink(checker))
        op.output("shm", books, ShmSink(f"soak_{os.getpid()}", 4096, 1024, "shm:soak"))
        sampler.start()
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
        sampler.stop()
        if trace_memory:
            gc.collect()
            end = tracemalloc.take_snapshot()
            tracemalloc.stop()
            if sampler.traced is not None:
                report.memory_growth = memory_growth(sampler.traced, end)
        checker.close()
        _trade_figures(checker, sim, report)
        report.sim_counts = {k: v for k, v in sim.counts().items() if v}
    fetches = snapshot_fetches()
    report.trades_backfilled = int(
        counter_sums("trades_backfilled").get("", 0.0) - backfilled_before.get("", 0.0)
    )
    for reason, count in counter_sums("trade_backfill_failures", "reason").items():
        if count > failed_before.get(reason, 0.0):
            report.trade_backfills_failed[reason] = int(count - failed_before.get(reason, 0.0))
    for outcome, name in (("ok", "fetched"), ("rate_limited", "refused"), ("error", "failed")):
        done = fetches.get(outcome, 0.0) - fetches_before.get(outcome, 0.0)
        setattr(report, f"snapshots_{name}", int(done))
    report.units_cache_entries = len(parse._UNITS_CACHE)
    del flow, books, src
    gc.collect()
    report.rss_kib_after, report.fds_after = rss_kib(), open_fds()

    samples = sampler.samples or [(0.0, report.rss_kib_start, report.fds_start)]
    after_warm = [s for s in samples if s[0] >= warm] or samples[-1:]
    report.rss_kib_warm, report.fds_warm = after_warm[0][1], after_warm[0][2]
    report.rss_kib_end, report.fds_end = samples[-1][1], samples[-1][2]
    report.rss_kib_mid = min(samples, key=lambda s: abs(s[0] - seconds / 2))[1]

    report.books_checked = checker.books_checked
    report.books_wrong = checker.books_wrong
    report.books_unverifiable = checker.books_unverifiable
    report.wrong_examples = checker.wrong_examples
    report.resyncs = sum(len(times) for times in checker.resyncs.values())
    per_minute = [
        sum(1 for u in times if t - 60 < u <= t)
        for times in checker.resyncs.values()
        for t in times
    ]
    report.resyncs_max_per_symbol_per_minute = max(per_minute, default=0)
    report.first_book_s = max(checker.first_ok.values(), default=float("inf"))
    if len(checker.first_ok) < len(names):
        report.first_book_s = float("inf")  # a symbol never got a correct book
    symbol, gap = max(checker.longest_gap.items(), key=lambda kv: kv[1])
    report.longest_without_book_s, report.longest_without_book_symbol = gap, symbol
    report.longest_without_book_story = checker.longest_gap_story
    report.trades_held_max_s = checker.trade_held_max_s
    return report


def format_report(r: SoakReport) -> str:
    """The figures as aligned text."""
    mib = 1024
    lines = [
        f"soak: {r.seconds:.0f} s, {r.symbols} symbols at {r.rate:g} updates/s, faults {r.faults}",
        f"  injected            {', '.join(f'{k}={v}' for k, v in sorted(r.sim_counts.items()))}",
        f"  books checked       {r.books_checked}",
        f"  books wrong         {r.books_wrong}"
        + (f"  e.g. {', '.join(r.wrong_examples)}" if r.wrong_examples else ""),
        f"  books unverifiable  {r.books_unverifiable} (older than the simulator's history)",
        f"  resyncs             {r.resyncs} (at most {r.resyncs_max_per_symbol_per_minute} "
        "for one symbol in one minute)",
        f"  snapshots           {r.snapshots_fetched} fetched "
        f"({r.snapshots_fetched / max(r.seconds / 60, 1e-9):.0f} a minute), "
        f"{r.snapshots_refused} refused (429), {r.snapshots_failed} failed",
        f"  first correct book  {r.first_book_s:.2f} s after start (slowest symbol)",
        f"  longest without a correct book  {r.longest_without_book_s:.2f} s "
        f"({r.longest_without_book_symbol})",
        *(f"      {line}" for line in r.longest_without_book_story[:12]),
        f"  trades published    {r.trades_published}; the longest from receipt to publication "
        f"{r.trades_held_max_s:.2f} s",
        f"  trades duplicated   {r.trades_duplicated}, out of order {r.trades_out_of_order}",
        f"  trades missing      {r.trades_missing}: lost in the flow {r.trades_lost_in_flow}, "
        f"never received {r.trades_not_received} (pushed while a connection was down and not "
        "backfilled)",
        f"  trades backfilled   {r.trades_backfilled} over REST after reconnects; backfills given "
        f"up: {sum(r.trade_backfills_failed.values())}"
        + (
            f" ({', '.join(f'{k}={v}' for k, v in sorted(r.trade_backfills_failed.items()))})"
            if r.trade_backfills_failed
            else ""
        ),
        f"  RSS MiB             start {r.rss_kib_start / mib:.1f}, after warm-up "
        f"{r.rss_kib_warm / mib:.1f}, half-way {r.rss_kib_mid / mib:.1f}, "
        f"end {r.rss_kib_end / mib:.1f}, after the flow {r.rss_kib_after / mib:.1f} "
        f"(price/quantity cache: {r.units_cache_entries:,} of at most "
        f"{parse.UNITS_CACHE_MAX:,} entries)",
        f"  open descriptors    start {r.fds_start}, after warm-up {r.fds_warm}, "
        f"end {r.fds_end}, after the flow {r.fds_after}",
        *(
            ["  memory growth after the warm-up, by line (tracemalloc):"]
            + [f"      {line}" for line in r.memory_growth]
            if r.memory_growth
            else []
        ),
        f"  result              {'OK' if r.ok() else 'FAILED'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its figures; exit status 1 if a target was missed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--rate", type=float, default=50.0, help="updates/s per symbol")
    p.add_argument("--faults", default=EVERY_FAULT, help="simulator faults ('' for none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--log-level", default="ERROR", help="the flow's log level (default ERROR)")
    p.add_argument(
        "--warmup-seconds", type=float, default=None, help="default: a fifth, at most 60 s"
    )
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="trace allocations (slower) and print the lines that grew after the warm-up",
    )
    p.add_argument(
        "--no-partial-depth",
        action="store_true",
        help="start and resync books from REST snapshots only (the snapshot faults then happen)",
    )
    p.add_argument(
        "--sweep-every", type=float, default=None, help="seconds between 80-level sweeps"
    )
    p.add_argument("--levels", type=int, default=1_000, help="levels a side of each book")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    report = run_soak(
        seconds,
        args.symbols,
        args.rate,
        args.faults,
        args.seed,
        args.workers,
        warmup_s=args.warmup_seconds,
        trace_memory=args.trace_memory,
        partial_depth=not args.no_partial_depth,
        sweep_every_s=args.sweep_every,
        levels=args.levels,
    )
    print(format_report(report))
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
