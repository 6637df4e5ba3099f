"""Everything the service keeps per symbol, as one plain object: the synced book and trade dedup.

:class:`SymbolState` takes source events and returns output events; the bytewax operator only
dispatches to it (see :mod:`operators.orderbook`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

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
    Trade,
)
from operators.book import DEFAULT_MAX_LEVELS
from operators.sync import DEFAULT_MAX_BUFFER, BookSync, Outcome, Step

logger = logging.getLogger(__name__)

_APPLIED = Outcome.APPLIED.value

SNAPSHOT_REPLACED = "newer snapshot replaced the live book"
"""The reason of a ``resyncing`` status that is not a sequence error."""


class SymbolState:
    """The book of one symbol plus the id of the last trade passed on."""

    def __init__(
        self,
        symbol: str,
        depth: int,
        market: Market = Market.FUTURES,
        max_levels: int = DEFAULT_MAX_LEVELS,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        last_trade_id: int | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be positive; got {depth}")
        self.symbol = symbol
        self.depth = depth
        self.sync = BookSync(market, max_levels, max_buffer)
        self.last_trade_id = last_trade_id
        self.counts: Counter[str] = Counter()  # outcome name -> events, for metrics and tests

    def on_events(self, events: Iterable[SourceEvent]) -> list[OutputEvent]:
        """Handle a batch of this symbol's events in order; return what to emit."""
        out: list[OutputEvent] = []
        for ev in events:
            if type(ev) is DepthDelta:
                step = self.sync.on_delta(ev)
                if step.outcome is Outcome.APPLIED:  # the common case, kept short
                    self.counts[_APPLIED] += 1
                    out.append(self.view())
                else:
                    self._on_steps((step,), ev.recv_time, out)
            elif type(ev) is Trade:
                self._on_trade(ev, out)
            elif type(ev) is DepthSnapshot:
                was_synced, before = self.sync.synced, len(out)
                self._on_steps(self.sync.on_snapshot(ev), ev.recv_time, out)
                said = any(type(o) is BookStatus for o in out[before:])
                if was_synced and not self.sync.synced and not said:
                    # A newer snapshot replaced the live book: say so until it joins the stream.
                    out.append(
                        BookStatus(
                            self.symbol,
                            BookState.RESYNCING,
                            SNAPSHOT_REPLACED,
                            ev.last_update_id,
                            ev.recv_time,
                        )
                    )
            elif type(ev) is ResyncRequest:
                self._on_steps((self.sync.reset(ev.reason),), ev.recv_time, out)
            elif type(ev) in (FrameError, Ignored):
                self.counts[type(ev).__name__] += 1
            else:
                raise TypeError(f"SymbolState got an unexpected event {ev!r}")
        return out

    def _on_trade(self, ev: Trade, out: list[OutputEvent]) -> None:
        if self.last_trade_id is not None and ev.trade_id <= self.last_trade_id:
            self.counts["trade_duplicate"] += 1  # replayed around a reconnect
            return
        self.last_trade_id = ev.trade_id
        self.counts["trade"] += 1
        out.append(ev)

    def _on_steps(self, steps: Iterable[Step], recv_time: float, out: list[OutputEvent]) -> None:
        changed = False
        for step in steps:
            outcome = step.outcome
            self.counts[outcome.value] += 1
            if outcome is Outcome.APPLIED:
                changed = True
            elif outcome is Outcome.SYNCED:
                changed = True
                logger.info("%s: book synced at u=%d", self.symbol, step.update_id)
                out.append(
                    BookStatus(self.symbol, BookState.SYNCED, "synced", step.update_id, recv_time)
                )
            elif outcome is Outcome.GAP:
                changed = False  # whatever was applied before the gap is gone with the book
                logger.warning("%s: resyncing: %s", self.symbol, step.reason)
                out.append(
                    BookStatus(
                        self.symbol, BookState.RESYNCING, step.reason, step.update_id, recv_time
                    )
                )
        sync = self.sync
        if changed and sync.synced:
            out.append(self.view())

    def view(self) -> BookUpdate:
        """The top-N view of the synced book, tagged with the delta that produced it."""
        sync, book = self.sync, self.sync.book
        last = sync.last_applied
        if not sync.synced or last is None or sync.last_update_id is None:
            raise RuntimeError(f"{self.symbol}: no synced book to view")
        return BookUpdate(
            self.symbol,
            book.top_bids(self.depth),
            book.top_asks(self.depth),
            sync.last_update_id,
            last.event_time_ms,
            last.recv_time,
            last.recv_ns,
        )
