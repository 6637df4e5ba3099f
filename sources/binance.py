"""Live Binance sources (``binance_futures``, ``binance_spot``): routed WebSockets plus snapshots.

Symbols are spread over a few partitions, each run by the worker that keeps its symbols' books
(:mod:`market_data.placement`); each partition owns its connections (split at 1,024
streams, routed ``/public`` for depth and ``/market`` for aggTrade on USD-M Futures) and a
snapshot fetcher. Frames are stamped on receipt by the connection threads and parsed in
``next_batch`` on the bytewax worker. The source mirrors the book's sequence rules per symbol
(:class:`sources.tracker.SequenceTracker`) to fetch a snapshot after every (re)connect, on every
break, and when a snapshot is older than the stream; the snapshot goes into the stream after the
deltas that arrived before it, and the book operator joins them by Binance's procedure. After a
trade connection comes back, the trades it missed are fetched over REST and emitted before the
symbol's next live trades, which wait meanwhile (:mod:`sources.backfill`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from health import metrics
from health.cluster import detect
from health.state import STATE
from market_data.backoff import ExponentialBackoff
from market_data.config import PipelineConfig
from market_data.events import (
    SOURCE_BATCH,
    DepthDelta,
    DepthSnapshot,
    FrameError,
    Market,
    SourceEvent,
    Trade,
)
from market_data.options import (
    BinanceFuturesOptions,
    BinanceOptions,
    BinanceSpotOptions,
    OrderBookOptions,
)
from market_data.placement import partition_names, place_symbols, worker_of_partition
from market_data.runtime import BookWants, PipelineRuntime
from market_data.shutdown import stop_requested
from operators.sync import too_short
from sources.backfill import PROBE_S, Page, Step, TradeGate
from sources.connection import (
    ConnectionSettings,
    ConnEvent,
    ConnState,
    LinkReader,
    WsConnection,
)
from sources.parse import parse_frame
from sources.policy import (
    PARTIAL_LEVELS,
    ConnectionPlan,
    default_weight_budget,
    plan_connections,
    trade_stream,
)
from sources.recording import RecordingWriter
from sources.snapshots import SnapshotFetcher, shared_budget
from sources.tracker import Phase, SequenceTracker
from sources.trade_fetcher import TradeFetcher

logger = logging.getLogger(__name__)

_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # a wake-up time already past: poll again now
IDLE_WAIT_S = 0.001
"""With ``poll_interval_ms: 0``, how long an idle worker waits for data on its partitions' sockets
before handing bytewax an empty batch (``LinkReader.wait``: woken at once by data; one wait a pass
over the worker's partitions, not one each). Spinning instead took a core that Redis and the load
needed: at 10,000 updates/s on 2 cores, p99 1.23-1.44 ms spinning against 0.86-1.07 waiting
(``benchmarks.run --cases e2e``). Snapshots and connection events, which come from other threads,
wait at most this long."""
_FRAME, _CONN, _SNAPSHOT, _PAGE = 0, 1, 2, 3
WANT_DELAY_S = 0.5
"""Without partial depth frames: how long a book the operator says is unpublished waits before
its REST snapshot is asked for (a sequence break's snapshot, asked at once by the tracker, is
usually in by then)."""
REFRESH_MAX_S = 30.0
"""The longest wait between two snapshots asked for a book that stays unpublished."""


def partial_grace_s(speed_ms: int) -> float:
    """How long a book waits for a partial depth frame to start it before asking REST."""
    return max(1.0, 4 * speed_ms / 1000)


_recorders: dict[str, RecordingWriter] = {}
_recorders_lock = threading.Lock()


def _recorder(path: str | None) -> RecordingWriter | None:
    """One writer per recording path in this process (``{pid}`` in the path is replaced)."""
    if not path:
        return None
    path = path.replace("{pid}", str(os.getpid()))
    with _recorders_lock:
        if path not in _recorders:
            _recorders[path] = RecordingWriter(path)
        return _recorders[path]


class _BinancePartition(StatefulSourcePartition[SourceEvent, None]):
    """A group of symbols: its connections, snapshot fetcher and per-symbol trackers."""

    def __init__(
        self,
        options: BinanceOptions,
        market: Market,
        symbols: list[str],
        name: str = "",
        depth: int = 20,
        wants: BookWants | None = None,
    ) -> None:
        self.options = options
        self.market = market
        self.symbols = symbols
        # Whether a partial depth frame can start a book that publishes ``depth`` levels: then
        # a book that needs a snapshot waits for the next one (within ``_grace_s``) instead of
        # asking REST, whose weight is the limit on how many books start or resync a minute.
        self._partial_seeds = options.partial_depth and depth <= PARTIAL_LEVELS
        self._depth = depth
        self._grace_s = partial_grace_s(options.depth_speed_ms) if self._partial_seeds else 0.0
        self._wants = wants
        self._wants_version = -1
        self._wants_seen: dict[str, float] = {}  # symbol -> since, of the wants acted on
        self._asked: dict[str, int] = {}  # symbol -> snapshots asked for its want so far
        self._due: dict[str, tuple[float, str]] = {}  # symbol -> (monotonic time, reason)
        self._next_due = math.inf
        self._queue: deque[tuple[Any, ...]] = deque()  # appended by threads, drained here
        # What is left in the queue after a batch: grows when the flow falls behind the feed.
        self._backlog = metrics.SOURCE_BACKLOG.labels(name or ",".join(symbols[:3]))
        self._backlog_reported = 0
        self._trackers = {s: SequenceTracker(market) for s in symbols}
        self._recorder = _recorder(options.record)
        backoff = ExponentialBackoff.from_ms(
            options.reconnect_delay_ms,
            max(options.max_reconnect_delay_ms, options.reconnect_delay_ms),
        )
        ip_limit = options.exchange_weight_limit or (2400 if market is Market.FUTURES else 6000)
        budget, lock = shared_budget(
            options.rest_url,
            options.snapshot_weight_budget
            or default_weight_budget(ip_limit, detect().processes_on_host),
            options.snapshot_window_s,
            ip_limit,
        )
        self.trade_fetcher: TradeFetcher | None = None
        if options.trade_backfill:
            self.trade_fetcher = TradeFetcher(
                options.rest_url,
                market,
                budget,
                lock,
                lambda page: self._queue.append((_PAGE, page)),
            )
        self.fetcher = SnapshotFetcher(
            options.rest_url,
            market,
            options.snapshot_limit,
            budget,
            lock,
            ExponentialBackoff(0.25, max(backoff.max_s, 0.25)),
            lambda ev: self._queue.append((_SNAPSHOT, ev)),
            self._recorder,
            defer=self.trade_fetcher.due if self.trade_fetcher is not None else None,
        )
        settings = ConnectionSettings(
            backoff=backoff,
            silence_timeout_s=options.silence_timeout_s,
            max_age_s=options.max_connection_age_s,
        )
        self.plans = plan_connections(
            options.ws_url,
            market,
            symbols,
            options.depth_speed_ms,
            options.max_streams_per_connection,
            partial=options.partial_depth,
        )
        rng = random.Random()
        # Trade backfill: a gate per symbol, and which symbols' trades each connection carries.
        self._gates: dict[str, TradeGate] = {}
        self._filling: dict[str, TradeGate] = {}  # gates holding trades, for their deadline
        if options.trade_backfill:
            self._gates = {
                s: TradeGate(
                    s,
                    options.trade_backfill_max_trades,
                    options.trade_backfill_timeout_s,
                    rng,
                    probe_s=PROBE_S,
                )
                for s in symbols
            }
        self._trade_symbols = {
            plan: tuple(s for s in plan.symbols if trade_stream(s) in plan.streams)
            for plan in self.plans
        }
        self.reader = LinkReader(self._on_frames, options.silence_timeout_s, _mark_received)
        self.connections = [
            WsConnection(plan, settings, self.reader, self._on_state, rng) for plan in self.plans
        ]
        self._health = {plan: STATE.connection(options.type, plan.symbols) for plan in self.plans}
        self._poll = timedelta(milliseconds=options.poll_interval_ms)
        self._awake: datetime | None = None
        self._end_at = None if options.run_for_s is None else time.monotonic() + options.run_for_s
        self.fetcher.start()
        if self.trade_fetcher is not None:
            self.trade_fetcher.start()
        for conn in self.connections:
            conn.start()

    def _on_frames(self, recv_time: float, recv_ns: int, url: str, texts: list[str]) -> None:
        """Frames that one read of a connection's socket completed (on the worker's thread)."""
        self._queue.extend([(_FRAME, recv_time, recv_ns, text) for text in texts])
        STATE.received_at = recv_time  # read by the worker; connection threads also mark data
        # waiting unread in a socket (LinkReader.on_unread), as a stalled worker reads nothing
        if self._recorder is not None:
            for text in texts:
                self._recorder.ws(recv_time, url, text)

    def _on_state(self, event: ConnEvent) -> None:
        self._queue.append((_CONN, event))

    @override
    def next_batch(self) -> list[SourceEvent]:
        if stop_requested() or (self._end_at is not None and time.monotonic() >= self._end_at):
            raise StopIteration  # SIGTERM/SIGINT or run_for_s: the flow ends and sinks flush
        out: list[SourceEvent] = []
        queue = self._queue
        trackers = self._trackers
        gates = self._gates
        if self._filling:
            self._expire_backfills(out)
        wants = self._wants
        if wants is not None and wants.version != self._wants_version:
            self._on_wants(wants)
        if len(queue) < SOURCE_BATCH:
            self.reader.poll()  # the sockets, read here: what is not read waits in the kernel
            if not queue and not out and not self._poll:  # low latency: wait, do not spin
                self.reader.wait(IDLE_WAIT_S)
                self.reader.poll()
        while queue and len(out) < SOURCE_BATCH:
            item = queue.popleft()
            kind = item[0]
            if kind == _FRAME:
                ev = parse_frame(item[3], item[1], item[2])
                if type(ev) is DepthDelta:
                    tracker = trackers.get(ev.symbol)
                    if tracker is None:
                        continue  # not ours (a stray subscription)
                    if tracker.on_delta(
                        ev.first_update_id,
                        ev.final_update_id,
                        ev.prev_final_update_id,
                        ev.event_time_ms,
                    ):
                        self._need(ev.symbol, tracker.reason)
                elif type(ev) is DepthSnapshot:  # a partial depth frame: the top at its u
                    tracker = trackers.get(ev.symbol)
                    if tracker is None:
                        continue
                    if tracker.phase is not Phase.LIVE and tracker.on_snapshot(
                        ev.last_update_id, not too_short(ev, self._depth)
                    ):
                        self._need(ev.symbol, tracker.reason)
                elif type(ev) is Trade and gates:
                    gate = gates.get(ev.symbol)
                    if gate is not None:
                        if gate.filling:  # held until the backfill is done or given up
                            self._act(gate, gate.hold(ev, time.monotonic()), out)
                            continue
                        gate.passed(ev.trade_id)
                out.append(ev)
            elif kind == _SNAPSHOT:
                ev = item[1]
                if type(ev) is DepthSnapshot:
                    tracker = trackers[ev.symbol]
                    if tracker.on_snapshot(ev.last_update_id, not too_short(ev, self._depth)):
                        # Binance's REST snapshot can lag its stream; ask again shortly.
                        self._need(ev.symbol, tracker.reason, delay_s=0.25)
                out.append(ev)
            elif kind == _PAGE:
                page: Page = item[1]
                self._act(gates[page.symbol], gates[page.symbol].on_page(page), out)
            else:
                self._on_conn(item[1], out)
        if out:
            STATE.processed_at = time.time()
        if self._due and (not queue or not self._partial_seeds):
            # With partial frames, only with nothing received left to process: a worker that
            # is behind has the frame that would start the book waiting in its queue.
            if time.monotonic() >= self._next_due:
                self._run_due()
        if len(queue) != self._backlog_reported:
            self._backlog_reported = len(queue)
            self._backlog.set(self._backlog_reported)
        if out:
            self._awake = None  # at once: more may be waiting
        elif self._poll:
            self._awake = datetime.now(UTC) + self._poll
        else:
            # Low latency: this call already waited for data (IDLE_WAIT_S). Not None: after an
            # empty batch bytewax would wait another 1 ms before the next call, which put ~0.7 ms
            # (p50) between a frame's receipt and its processing.
            self._awake = _LONG_AGO
        return out

    def _on_conn(self, event: ConnEvent, out: list[SourceEvent]) -> None:
        plan: ConnectionPlan = event.plan
        depth_symbols = [s for s in plan.symbols if any("@depth" in n for n in plan.streams)]
        if event.state is ConnState.CONNECTED:
            self._health[plan].connected()
            for symbol in plan.symbols:
                metrics.WEBSOCKET_CONNECTED.labels(symbol).set(1)
            # Deltas were missed while disconnected (or never seen): every depth symbol of this
            # connection needs a new snapshot.
            for symbol in depth_symbols:
                self._trackers[symbol].reset("connected")
                self._need(symbol, "connected")
            # Trades were missed too: fetch them before the symbol's next live trades go on.
            now = time.monotonic()
            for symbol in self._trade_symbols[plan]:
                gate = self._gates.get(symbol)
                if gate is not None:
                    self._act(gate, gate.reconnected(now), out)
        elif event.state is ConnState.DISCONNECTED:
            self._health[plan].disconnected(event.reason)
            for symbol in plan.symbols:
                metrics.WEBSOCKET_CONNECTED.labels(symbol).set(0)
                metrics.WEBSOCKET_DISCONNECTS.labels(symbol).inc()

    def _need(self, symbol: str, reason: str, delay_s: float = 0.0) -> None:
        """The tracker says ``symbol`` needs a snapshot: the next partial frame, or REST.

        With partial depth frames that can start the book, REST is asked only if none has
        started it within ``_grace_s`` (:meth:`_run_due` checks the tracker then).
        """
        if self._partial_seeds:
            self._schedule(symbol, f"{reason} (no partial depth frame joined)", self._grace_s)
        else:
            self.fetcher.request(symbol, reason, delay_s)

    def _schedule(self, symbol: str, reason: str, delay_s: float) -> None:
        at = time.monotonic() + delay_s
        current = self._due.get(symbol)
        if current is None or at < current[0]:
            self._due[symbol] = (at, reason)
            self._next_due = min(self._next_due, at)

    def _on_wants(self, wants: BookWants) -> None:
        """Books of ours that the operator says are not published: ask for snapshots."""
        self._wants_version = wants.version
        mine = wants.of(self.symbols)
        seen = self._wants_seen
        for symbol in [s for s in seen if s not in mine]:  # published again
            del seen[symbol]
            self._asked.pop(symbol, None)
        for symbol, want in mine.items():
            if seen.get(symbol) != want.since:
                seen[symbol] = want.since
                # The tracker asks for sequence breaks it sees; this covers the rest (a top past
                # the exact window, a crossed book) and anything that outlasts the grace.
                delay = self._want_delay_s(want.window)
                self._schedule(symbol, f"not published: {want.reason}", delay)

    def _want_delay_s(self, window: bool) -> float:
        """How long a book the operator says waits goes on waiting before REST is asked.

        With partial depth frames that can restart it, the next one will (a grace); without,
        a book whose top left its window asks at once, any other after :data:`WANT_DELAY_S`
        (the tracker has asked for the snapshot of a sequence break already).
        """
        if self._partial_seeds:
            return self._grace_s
        return 0.0 if window else WANT_DELAY_S

    def _run_due(self) -> None:
        now = time.monotonic()
        wants = self._wants
        self._next_due = math.inf
        for symbol, (at, reason) in list(self._due.items()):
            if at > now:
                self._next_due = min(self._next_due, at)
                continue
            del self._due[symbol]
            waiting = wants.get(symbol) if wants is not None else None
            if self._trackers[symbol].phase is Phase.WANT_SNAPSHOT or waiting is not None:
                self.fetcher.request(symbol, reason)
                if waiting is not None:  # ask again, backing off, while it stays unpublished
                    n = self._asked[symbol] = self._asked.get(symbol, 0) + 1
                    delay = min(REFRESH_MAX_S, self._want_delay_s(False) + 2.0**n)
                    self._schedule(symbol, reason, delay)

    def _act(self, gate: TradeGate, step: Step, out: list[SourceEvent]) -> None:
        """Carry out what a trade gate decided: emit, request a page, report how it ended."""
        symbol = gate.symbol
        if step.emit:
            out.extend(step.emit)
        if step.backfilled:
            metrics.TRADES_BACKFILLED.labels(symbol).inc(step.backfilled)
        fetcher = self.trade_fetcher
        if step.fetch_from is not None and fetcher is not None:
            fetcher.request(symbol, gate.episode, step.fetch_from, step.delay_s)
        if gate.filling:
            self._filling[symbol] = gate
            return
        self._filling.pop(symbol, None)
        if step.ended is None:
            return
        if fetcher is not None:
            fetcher.cancel(symbol)
        if step.failed:
            metrics.TRADE_BACKFILL_FAILURES.labels(symbol, step.ended).inc()
            lost = "an unknown number of" if step.missing is None else f"{step.missing}"
            logger.warning(
                "%s: trade backfill gave up (%s) after %d trades; %s trades missed while the "
                "connection was down are lost; %d held live trades go on",
                symbol, step.ended, gate.fetched, lost, len(step.emit) - step.backfilled,
            )  # fmt: skip
        elif gate.fetched:
            logger.info("%s: backfilled %d trades missed while disconnected", symbol, gate.fetched)

    def _expire_backfills(self, out: list[SourceEvent]) -> None:
        now = time.monotonic()
        for gate in list(self._filling.values()):
            if now >= gate.deadline:
                self._act(gate, gate.expire(now), out)

    @override
    def next_awake(self) -> datetime | None:
        return self._awake

    @override
    def snapshot(self) -> None:
        return None  # a live feed cannot be rewound; books resync from fresh snapshots

    @override
    def close(self) -> None:
        self.reader.close()  # first: connection threads no longer wait for the worker
        for conn in self.connections:
            conn.stop()
        for health in self._health.values():
            health.close()
        self.fetcher.stop()
        if self.trade_fetcher is not None:
            self.trade_fetcher.stop()
        if self._recorder is not None:
            self._recorder.close()
        for symbol in self.symbols:
            metrics.WEBSOCKET_CONNECTED.labels(symbol).set(0)
        self._backlog.set(0)


def _mark_received(at: float) -> None:
    """Data waits in a socket (for stall detection: received, not yet processed)."""
    STATE.received_at = at


class _NoSymbols(StatefulSourcePartition[SourceEvent, None]):
    """A partition of a worker that keeps none of the symbols' books: it ends at once."""

    @override
    def next_batch(self) -> list[SourceEvent]:
        raise StopIteration

    @override
    def snapshot(self) -> None:
        return None


class BinanceSource(FixedPartitionedSource[SourceEvent, None]):
    """Binance USD-M Futures or Spot depth + aggTrade for the configured symbols.

    ``workers`` is the number of bytewax workers in the whole cluster: partition ``j`` (in sorted
    order of the names) runs on worker ``j % workers`` and holds only symbols whose books are
    kept there (see :func:`market_data.placement.place_symbols`).
    """

    def __init__(
        self,
        options: BinanceOptions,
        market: Market,
        workers: int = 1,
        depth: int = 20,
        wants: BookWants | None = None,
    ) -> None:
        self.options = options
        self.market = market
        self.workers = workers
        self.depth = depth  # levels a side the books publish (a partial frame may start them)
        self.wants = wants
        self.groups = place_symbols(list(options.symbols), workers, options.partitions)
        self.names = partition_names(options.type, len(self.groups))

    @override
    def list_parts(self) -> list[str]:
        return list(self.names)

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSourcePartition[SourceEvent, None]:
        j = self.names.index(for_part)
        group, worker = self.groups[j], worker_of_partition(j, self.workers)
        if not group:
            logger.info(
                "%s: partition %s: no symbol's book is on worker %d; it ends at once",
                step_id, for_part, worker,
            )  # fmt: skip
            return _NoSymbols()
        logger.info(
            "%s: partition %s (worker %d of %d) connects for %d symbols: %s",
            step_id, for_part, worker, self.workers, len(group),
            ", ".join(group[:10]) + (" ..." * (len(group) > 10)),
        )  # fmt: skip
        return _BinancePartition(self.options, self.market, group, for_part, self.depth, self.wants)


def build_source(
    options: BinanceOptions, pipeline: PipelineConfig, runtime: PipelineRuntime | None = None
) -> BinanceSource:
    """Registry builder for ``binance_futures`` and ``binance_spot``."""
    workers = detect().worker_count  # the books' placement follows it
    depths = [o.depth for o in pipeline.operators if isinstance(o, OrderBookOptions)]
    depth = max(depths, default=20)
    wants = runtime.wants if runtime is not None else None
    if isinstance(options, BinanceFuturesOptions):
        return BinanceSource(options, Market.FUTURES, workers, depth, wants)
    if isinstance(options, BinanceSpotOptions):
        return BinanceSource(options, Market.SPOT, workers, depth, wants)
    raise TypeError(f"expected Binance futures or spot options; got {type(options).__name__}")


__all__ = ["BinanceSource", "FrameError", "build_source"]
