"""The bytewax side of the order book: a keyed stateful operator that dispatches to SymbolState.

The book itself is never checkpointed: after a restart it must be resynced from a fresh exchange
snapshot anyway, so ``snapshot()`` returns only the last trade id (for trade dedup), which keeps
bytewax's per-epoch snapshot cost constant instead of copying a 1,000-level book.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from typing_extensions import override

from health import metrics
from health.state import STATE, BookHealth
from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    DepthDelta,
    DepthSnapshot,
    FrameError,
    Ignored,
    Market,
    OutputEvent,
    ResyncRequest,
    SourceEvent,
    StatusCause,
    Trade,
)
from market_data.logs import Occurrences
from market_data.options import OrderBookOptions
from market_data.runtime import BookWants, PipelineRuntime
from operators.symbol import SymbolState

logger = logging.getLogger(__name__)

_Resume = int | None  # last trade id


class BookLogic(StatefulBatchLogic[SourceEvent, OutputEvent, _Resume]):
    """Per-symbol logic: the pure :class:`SymbolState` plus metrics.

    bytewax's builder is not told the key, so the state is made on the first batch, from the
    symbol its events carry.
    """

    def __init__(
        self,
        options: OrderBookOptions,
        market: Market,
        resume: _Resume,
        step_id: str = "",
        wants: BookWants | None = None,
    ) -> None:
        self.options = options
        self.market = market
        self.resume = resume
        self.step_id = step_id
        self.wants = wants
        # Whether the book was unpublished after the last batch (a new one is: its first
        # publication is timed too; the source asks for its first snapshot by itself).
        self.unpublished = True
        self.posted = False  # whether ``wants`` holds this symbol
        self.was_published = False
        self.unpublished_since = time.time()  # for the time a book takes to (re)sync
        self.state: SymbolState | None = None
        self.health: BookHealth | None = None
        self.metrics: _Metrics | None = None

    @override
    def on_batch(self, values: list[SourceEvent]) -> tuple[Iterable[OutputEvent], bool]:
        state, m = self.state, self.metrics
        if state is None or m is None:
            opts = self.options
            state = self.state = SymbolState(
                _symbol_of(values[0]),
                opts.depth,
                self.market,
                opts.max_levels,
                opts.max_buffer,
                last_trade_id=self.resume,
            )
            self.health = STATE.book(self.step_id, state.symbol)
            m = self.metrics = _Metrics(state.symbol)
        shed_after_s = self.options.shed_after_s
        conflate = False
        if shed_after_s:
            event_ms = getattr(values[-1], "event_time_ms", None)
            conflate = event_ms is not None and time.time() - event_ms / 1000 > shed_after_s
        out = state.on_events(values, conflate)
        _export_metrics(m, values, out, self.health)
        shed = state.counts["shed"]
        if shed != m.shed_seen:
            m.shed.inc(shed - m.shed_seen)
            m.shed_seen = shed
        misses = state.counts["window_miss"]  # blips within a batch leave no status: count here
        if misses != m.window_misses_seen:
            m.window_misses.inc(misses - m.window_misses_seen)
            m.window_misses_seen = misses
        published = state.published
        if published is self.unpublished:  # it changed: time it
            now = time.time()
            if published:
                m.sync_seconds.observe(max(0.0, now - self.unpublished_since))
            else:
                self.unpublished_since = now
            self.unpublished = not published
        wants = self.wants
        if wants is not None:
            # Tell the source about a book held back that it cannot see: a live book whose top
            # left its window (also one never published yet), or one that was published.
            want = not published and (state.unknown is not None or self.was_published)
            if want is not self.posted:
                if want:
                    reason = state.unknown or "not synced"
                    wants.post(state.symbol, reason, time.time(), state.unknown is not None)
                else:
                    wants.clear(state.symbol)
                self.posted = want
        if published:
            self.was_published = True
        return out, StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> _Resume:
        return self.state.last_trade_id if self.state is not None else self.resume


class _Metrics:
    """One symbol's metric children, looked up once (``labels()`` costs ~1 µs a call)."""

    __slots__ = (
        "audit_mismatches",
        "books",
        "errors",
        "gaps",
        "processed",
        "shed",
        "shed_seen",
        "symbol",
        "sync_seconds",
        "trades",
        "window_misses",
        "window_misses_seen",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.processed: dict[str, Any] = {}
        self.errors = metrics.MESSAGES_ERROR.labels(symbol)
        self.books = metrics.ORDERBOOK_UPDATES.labels(symbol)
        self.trades = metrics.TRADES_PROCESSED.labels(symbol)
        self.gaps = metrics.SEQUENCE_ERRORS.labels(symbol)
        self.window_misses = metrics.BOOK_WINDOW_MISSES.labels(symbol)
        self.window_misses_seen = 0
        self.shed = metrics.BOOKS_SHED.labels(symbol)
        self.shed_seen = 0
        self.audit_mismatches = metrics.BOOK_AUDIT_MISMATCHES.labels(symbol)
        self.sync_seconds = metrics.BOOK_SYNC_SECONDS.labels(symbol)

    def processed_of(self, kind: str) -> Any:
        child = self.processed.get(kind)
        if child is None:
            child = self.processed[kind] = metrics.MESSAGES_PROCESSED.labels(self.symbol, kind)
        return child


_KIND_OF_TYPE: dict[type, str] = {
    DepthDelta: "depth",
    DepthSnapshot: "snapshot",
    Trade: "trade",
    ResyncRequest: "resync_request",
    FrameError: "error",
}


def _export_metrics(
    m: _Metrics, values: list[SourceEvent], out: list[OutputEvent], health: BookHealth | None
) -> None:
    symbol = m.symbol
    for kind, n in Counter(map(_kind, values)).items():
        if kind == "error":
            m.errors.inc(n)
            for v in values:
                if type(v) is FrameError:
                    _log_frame_error(symbol, v)
        m.processed_of(kind).inc(n)
    books = trades = gaps = 0
    last_book: BookUpdate | None = None
    now = time.time()
    for ev in out:
        t = type(ev)
        if t is BookUpdate:
            books += 1
            last_book = ev  # type: ignore[assignment]
        elif t is Trade:
            trades += 1
        elif isinstance(ev, BookStatus):
            if ev.state is not BookState.SYNCED:
                if ev.cause is StatusCause.SEQUENCE:
                    gaps += 1
                elif ev.cause is StatusCause.AUDIT:
                    m.audit_mismatches.inc()
            if health is not None:
                health.changed(ev.state, ev.reason, now)
    STATE.processed_at = now
    if health is not None and last_book is not None:
        health.updated(last_book.last_update_id, now, last_book.event_time_ms)
    if books:
        m.books.inc(books)
    if trades:
        m.trades.inc(trades)
    if gaps:
        m.gaps.inc(gaps)


def _kind(ev: Any) -> str:
    kind = _KIND_OF_TYPE.get(type(ev))
    if kind is not None:
        return kind
    if type(ev) is Ignored:
        return str(ev.kind)
    return type(ev).__name__


def apply(
    step_id: str,
    up: Stream[SourceEvent],
    options: OrderBookOptions,
    market: Market,
    runtime: PipelineRuntime | None = None,
) -> Stream[OutputEvent]:
    """Key ``up`` by symbol, keep one book per symbol, and emit book updates, trades and statuses.

    Events without a symbol (malformed frames, subscription answers) are counted and logged in a
    side branch and never reach a book. Books that are not published are posted to
    ``runtime.wants``, where the live source finds the ones it should fetch a snapshot for.
    """
    # One Python call per batch at each end, not one per item and step: branch + inspect +
    # key_on + key_rm cost ~3 µs an item in a replay flow doing ~60 µs of work per item.
    keyed = op.flat_map_batch(f"{step_id}_by_symbol", up, _Router(f"{step_id}_by_symbol"))
    wants = runtime.wants if runtime is not None else None
    if runtime is None or not runtime.live:  # a recording's event times are history
        options = options.model_copy(update={"shed_after_s": 0.0})
    books = op.stateful_batch(step_id, keyed, _Builder(options, market, step_id, wants))
    return op.flat_map_batch(f"{step_id}_unkey", books, _values)


class _Router:
    """Keys each event by its symbol; counts and logs those without one (unreadable frames)."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def __call__(self, batch: list[SourceEvent]) -> list[tuple[str, SourceEvent]]:
        out = []
        for ev in batch:
            symbol = getattr(ev, "symbol", None)
            if symbol is not None:
                out.append((symbol, ev))
            else:
                _account_unrouted(self.step_id, ev)
        return out


def _values(batch: list[tuple[str, OutputEvent]]) -> list[OutputEvent]:
    return [value for _, value in batch]


class _Builder:
    """Builds a :class:`BookLogic` for a new key; a plain picklable object, not a closure."""

    def __init__(
        self,
        options: OrderBookOptions,
        market: Market,
        step_id: str = "",
        wants: BookWants | None = None,
    ) -> None:
        self.options = options
        self.market = market
        self.step_id = step_id  # names the pipeline in the health state
        self.wants = wants

    def __call__(self, resume: _Resume) -> BookLogic:
        return BookLogic(self.options, self.market, resume, self.step_id, self.wants)


def _symbol_of(ev: SourceEvent) -> str:
    return ev.symbol  # type: ignore[return-value]


_ERRORS_SEEN = Occurrences()


def _log_frame_error(where: str, ev: FrameError) -> None:
    """Log an unusable frame the 1st, 10th, 100th... time its kind of problem comes up."""
    kind = ev.reason.split(":", 1)[0]
    n = _ERRORS_SEEN.note((where, kind))
    if n is not None:
        logger.warning(
            "%s: unusable frame (#%d of this kind): %s: %.200s", where, n, ev.reason, ev.excerpt
        )


def _account_unrouted(step_id: str, ev: SourceEvent) -> None:
    if type(ev) is FrameError:
        metrics.MESSAGES_ERROR.labels("").inc()
        _log_frame_error(step_id, ev)
    else:
        metrics.MESSAGES_PROCESSED.labels("", _kind(ev)).inc()
