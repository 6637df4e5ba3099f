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
    StatusCause,
    Trade,
)
from market_data.logs import Occurrences
from operators.book import DEFAULT_MAX_LEVELS
from operators.sync import DEFAULT_MAX_BUFFER, BookSync, Outcome, Step

logger = logging.getLogger(__name__)

_APPLIED = Outcome.APPLIED.value


class SymbolState:
    """The book of one symbol plus the id of the last trade passed on.

    A book is *published* (a ``synced`` status, then a view after every update) only while its
    sync follows the exchange's stream and its top ``depth`` levels lie inside the prices it
    knows exactly (:meth:`operators.book.OrderBook.exact_top`). When the top reaches past them
    (a sweep through the book beyond the last snapshot's deepest level), a ``resyncing`` status
    says so and nothing is published until a snapshot widens the window again; ``unknown`` holds
    the reason meanwhile, and ``unknown_since`` the receipt time it started, so the operator can
    ask the source for a snapshot.
    """

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
        self.sync = BookSync(market, max_levels, max_buffer, min_levels=depth)
        self.last_trade_id = last_trade_id
        # The latest trade time passed on: a replayed trade is never later than it (trade
        # times need not rise with ids, so the last trade's own time would not do).
        self.last_trade_time_ms = 0
        self.counts: Counter[str] = Counter()  # outcome name -> events, for metrics and tests
        self.published = False
        self.unknown: str | None = None
        self.unknown_since = 0.0
        self._seen = Occurrences(max_keys=2)  # window misses and audit mismatches to log
        # (the batch's output, index) of a window-miss status of a book that was published
        self._blip: tuple[list[OutputEvent], int] | None = None
        self._untold: str | None = None  # a window miss of this batch, to log at its end

    def on_events(self, events: Iterable[SourceEvent], conflate: bool = False) -> list[OutputEvent]:
        """Handle a batch of this symbol's events in order; return what to emit.

        With ``conflate`` (the flow is behind: see :mod:`operators.orderbook`), every update is
        applied, but of the views between two statuses only the last is emitted: books are
        states, and the newest is what a consumer of a late book needs. ``counts["shed"]``
        counts the views left out.
        """
        out: list[OutputEvent] = []
        sync = self.sync
        for ev in events:
            if type(ev) is DepthDelta:
                step = sync.on_delta(ev)
                if step.outcome is Outcome.APPLIED:  # the common case, kept short
                    self.counts[_APPLIED] += 1
                    if sync.held:
                        self._on_steps(sync.settle(), ev.recv_time, out, changed=True)
                    else:
                        self._publish(ev.recv_time, out)
                elif sync.held:
                    self._on_steps((step, *sync.settle()), ev.recv_time, out)
                else:
                    self._on_steps((step,), ev.recv_time, out)
            elif type(ev) is Trade:
                self._on_trade(ev, out)
            elif type(ev) is DepthSnapshot:
                self._on_steps(sync.on_snapshot(ev), ev.recv_time, out)
            elif type(ev) is ResyncRequest:
                self._on_steps((sync.reset(ev.reason),), ev.recv_time, out)
            elif type(ev) in (FrameError, Ignored):
                self.counts[type(ev).__name__] += 1
            else:
                raise TypeError(f"SymbolState got an unexpected event {ev!r}")
        if conflate and len(out) > 1:
            out = self._conflated(out)
        self._blip = None  # a miss that outlasts the batch was reported
        if self._untold is not None:
            n = self._seen.note("window")
            if n is not None:
                logger.info("%s: not published (#%d): %s", self.symbol, n, self._untold)
            self._untold = None
        return out

    def _conflated(self, out: list[OutputEvent]) -> list[OutputEvent]:
        """``out`` without the views that a later view replaces before the next status."""
        kept: list[OutputEvent] = []
        replaced = False  # a later view, with no status between, follows the one looked at
        for ev in reversed(out):
            t = type(ev)
            if t is BookUpdate:
                if replaced:
                    self.counts["shed"] += 1
                    continue
                replaced = True
            elif t is BookStatus:
                replaced = False
            kept.append(ev)
        kept.reverse()
        return kept

    def _on_trade(self, ev: Trade, out: list[OutputEvent]) -> None:
        last = self.last_trade_id
        if last is not None and ev.trade_id <= last:
            if not self.last_trade_time_ms or ev.trade_time_ms <= self.last_trade_time_ms:
                self.counts["trade_duplicate"] += 1  # replayed around a reconnect
                return
            # Later than every trade passed on, yet not a newer id: the exchange's trade ids
            # went back (restarted or reset). Its trades go on from here.
            logger.warning(
                "%s: trade id %d is not above the last one passed on (%d) but is later in "
                "time: the exchange's trade ids went back; passing its trades on from here",
                self.symbol, ev.trade_id, last,
            )  # fmt: skip
            self.counts["trade_ids_reset"] += 1
        self.last_trade_id = ev.trade_id
        if ev.trade_time_ms > self.last_trade_time_ms:
            self.last_trade_time_ms = ev.trade_time_ms
        self.counts["trade"] += 1
        out.append(ev)

    def _on_steps(
        self,
        steps: Iterable[Step],
        recv_time: float,
        out: list[OutputEvent],
        changed: bool = False,
    ) -> None:
        """Count ``steps``, say what changed, and publish once after them if the top changed."""
        symbol = self.symbol
        for step in steps:
            outcome = step.outcome
            self.counts[outcome.value] += 1
            if outcome is Outcome.APPLIED or outcome is Outcome.SYNCED:
                changed = True
            elif outcome is Outcome.SNAPSHOT_MERGED:
                changed = changed or not self.published  # it may have widened the window
            elif outcome is Outcome.AUDIT_MISMATCH:
                changed = True  # the book took the exchange's levels: publish them
                self._blip = None
                n = self._seen.note("audit")
                if n is not None:
                    logger.warning("%s: audit mismatch (#%d): %s", symbol, n, step.reason)
                if self.published:
                    self.published = False
                    out.append(
                        BookStatus(
                            symbol,
                            BookState.RESYNCING,
                            step.reason,
                            step.update_id,
                            recv_time,
                            StatusCause.AUDIT,
                        )
                    )
            elif outcome is Outcome.GAP:
                changed = False  # whatever was applied before the gap is gone with the book
                self.published = False
                self.unknown = None
                self._blip = None
                logger.warning("%s: resyncing: %s", symbol, step.reason)
                out.append(
                    BookStatus(symbol, BookState.RESYNCING, step.reason, step.update_id, recv_time)
                )
        if changed and self.sync.synced:
            self._publish(recv_time, out)

    def _publish(self, recv_time: float, out: list[OutputEvent]) -> None:
        """Emit the view of the live book, or say once why it cannot be published."""
        sync = self.sync
        top = sync.book.exact_top(self.depth)
        last = sync.last_applied
        update_id = sync.last_update_id
        if isinstance(top, str):
            if self.published or self.unknown is None:
                if self.published:  # a blip that ends in this same batch is not reported
                    self._blip = (out, len(out))
                self.published = False
                self.unknown, self.unknown_since = top, recv_time
                self.counts["window_miss"] += 1
                self._untold = top  # logged at the end of the batch, unless it ended in it
                out.append(
                    BookStatus(
                        self.symbol,
                        BookState.RESYNCING,
                        top,
                        update_id,
                        recv_time,
                        StatusCause.WINDOW,
                    )
                )
            return
        if last is None or update_id is None:  # pragma: no cover - synced implies both
            raise RuntimeError(f"{self.symbol}: a synced book with no applied update")
        if not self.published:
            self.published = True
            blip, self._blip = self._blip, None
            cause = StatusCause.SEQUENCE
            if self.unknown is None:
                logger.info("%s: book synced at u=%d", self.symbol, update_id)
            else:
                cause = StatusCause.WINDOW
            self.unknown = None
            if blip is not None and blip[0] is out:
                self._untold = None
                # Published before this batch, held back and published again within it (the
                # partial frame that widens the window came right after the update): consumers
                # missed no view, so the two statuses would only be noise.
                del out[blip[1]]
            else:
                out.append(
                    BookStatus(self.symbol, BookState.SYNCED, "synced", update_id, recv_time, cause)
                )
        bids, asks = top
        out.append(
            BookUpdate(
                self.symbol,
                bids,
                asks,
                update_id,
                last.event_time_ms,
                last.recv_time,
                last.recv_ns,
            )
        )

    def view(self) -> BookUpdate:
        """The top-N view of the published book, tagged with the delta that produced it."""
        if not self.published:
            raise RuntimeError(f"{self.symbol}: no synced book to view")
        out: list[OutputEvent] = []
        self._publish(0.0, out)
        view = out[-1]
        assert type(view) is BookUpdate
        return view
