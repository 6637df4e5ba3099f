"""Binance's snapshot/delta synchronisation, as a pure state machine.

USD-M Futures (the documented procedure): buffer deltas until a snapshot arrives; drop events with
``u < lastUpdateId``; the first applied event must satisfy ``U <= lastUpdateId <= u`` (or, exactly
equivalent, ``pu == lastUpdateId``: see :func:`straddles`); afterwards
each event's ``pu`` must equal the previous event's ``u``. Spot: drop ``u <= lastUpdateId``; the
first event must satisfy ``U <= lastUpdateId + 1 <= u``; afterwards ``U == previous u + 1``.

Every call returns what happened as values (:class:`Step`); nothing here raises on the exchange's
behaviour. On a gap the book is dropped and nothing may be published until a new snapshot syncs it.
Events whose ``u`` is at or below the last applied ``u`` describe a state the book already has
(duplicated frames around a reconnect); they are dropped rather than treated as gaps.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import NamedTuple

from market_data.events import BookState, DepthDelta, DepthSnapshot, Market
from operators.book import DEFAULT_MAX_LEVELS, OrderBook

DEFAULT_MAX_BUFFER = 10_000
"""Deltas kept while waiting for a snapshot; the oldest are dropped past this."""


class Outcome(StrEnum):
    """What one event did to the book."""

    BUFFERED = "buffered"  # waiting for a snapshot
    STALE = "stale"  # older than the snapshot, dropped as the procedure says
    DUPLICATE = "duplicate"  # at or below the last applied u, already in the book
    SYNCED = "synced"  # the first event after a snapshot was applied: the book is live
    APPLIED = "applied"
    GAP = "gap"  # sequence broken (or impossible state): the book needs a new snapshot
    SNAPSHOT_APPLIED = "snapshot_applied"
    SNAPSHOT_IGNORED = "snapshot_ignored"  # not newer than the live book
    BUFFER_OVERFLOW = "buffer_overflow"  # oldest buffered delta dropped


class Step(NamedTuple):
    """One outcome, the update id it concerns, and a reason for the ones that need one."""

    outcome: Outcome
    update_id: int
    reason: str = ""


def is_stale(market: Market, final: int, lid: int) -> bool:
    """An event ending at ``final`` is older than a snapshot at ``lid`` and must be dropped."""
    return final < lid if market is Market.FUTURES else final <= lid


def straddles(market: Market, first: int, prev_final: int | None, lid: int) -> bool:
    """A non-stale event may be the first one applied on a snapshot at ``lid``.

    Futures: Binance documents ``U <= lastUpdateId <= u``. An event whose ``pu`` equals
    ``lastUpdateId`` also joins exactly (the snapshot is the state after the event that ended at
    ``pu``); it happens when the connection opened after that event, and accepting it avoids a
    needless resync loop.
    """
    if market is Market.FUTURES:
        return first <= lid or prev_final == lid
    return first <= lid + 1


def continues(market: Market, first: int, prev_final: int | None, last: int) -> bool:
    """An event continues a book whose last applied event ended at ``last``."""
    return prev_final == last if market is Market.FUTURES else first == last + 1


def break_reason(market: Market, first: int, prev_final: int | None, last: int) -> str:
    """Why an event does not continue the book, in Binance's terms."""
    if market is Market.FUTURES:
        return f"pu={prev_final} does not continue the previous u={last}"
    return f"U={first} does not follow the previous u={last}"


class BookSync:
    """Keeps one symbol's :class:`OrderBook` in sync with the exchange, by Binance's rules."""

    __slots__ = (
        "book",
        "buffer",
        "crossed_snapshots",
        "last_applied",
        "last_update_id",
        "market",
        "max_buffer",
        "state",
    )

    def __init__(
        self,
        market: Market = Market.FUTURES,
        max_levels: int = DEFAULT_MAX_LEVELS,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self.market = Market(market)
        self.book = OrderBook(max_levels)
        self.max_buffer = max_buffer
        self.buffer: deque[DepthDelta] = deque()
        self.state = BookState.AWAITING_SNAPSHOT
        # The snapshot's lastUpdateId while waiting for the first event, then the last applied u.
        self.last_update_id: int | None = None
        self.crossed_snapshots = 0
        self.last_applied: DepthDelta | None = None  # the delta that brought the book to its state

    @property
    def synced(self) -> bool:
        """True when the book reflects the exchange and may be published."""
        return self.state is BookState.SYNCED

    def on_delta(self, ev: DepthDelta) -> Step:
        """Handle one depth update."""
        if self.last_update_id is None:  # no snapshot yet (or dropped after a gap)
            return self._buffer(ev)
        if self.state is BookState.SYNCED:
            return self._continue(ev, self.last_update_id)
        return self._first_after_snapshot(ev, self.last_update_id)

    def on_snapshot(self, snap: DepthSnapshot) -> list[Step]:
        """Apply a REST snapshot, then the buffered deltas it can be joined with."""
        lid = snap.last_update_id
        if self.last_update_id is not None and lid <= self.last_update_id:
            state = "live book" if self.synced else "pending snapshot"
            reason = f"lastUpdateId={lid} is not newer than the {state} at {self.last_update_id}"
            return [Step(Outcome.SNAPSHOT_IGNORED, lid, reason)]
        self.book.replace(snap.bids, snap.asks)
        self.last_update_id = lid
        if self.state is BookState.SYNCED:  # a newer snapshot replaces a live book
            self.state = BookState.RESYNCING
        steps = [Step(Outcome.SNAPSHOT_APPLIED, lid)]
        if self.book.is_crossed():
            # The exchange's own snapshot is the truth; count it, do not loop on resyncs.
            self.crossed_snapshots += 1
        pending, self.buffer = self.buffer, deque()
        while pending:
            ev = pending.popleft()
            steps.append(self.on_delta(ev))
            if self.last_update_id is None:  # gap: keep the rest for the next snapshot
                self.buffer.extend(pending)
                break
        return steps

    def reset(self, reason: str) -> Step:
        """Drop the book and wait for a new snapshot (the source asked for a resync)."""
        return self._gap(None, reason)

    def _buffer(self, ev: DepthDelta) -> Step:
        self.buffer.append(ev)
        if len(self.buffer) > self.max_buffer:
            dropped = self.buffer.popleft()
            return Step(
                Outcome.BUFFER_OVERFLOW,
                dropped.final_update_id,
                f"more than {self.max_buffer} deltas buffered while awaiting a snapshot",
            )
        return Step(Outcome.BUFFERED, ev.final_update_id)

    def _first_after_snapshot(self, ev: DepthDelta, lid: int) -> Step:
        market, first, final = self.market, ev.first_update_id, ev.final_update_id
        if is_stale(market, final, lid):
            return Step(Outcome.STALE, final)
        if not straddles(market, first, ev.prev_final_update_id, lid):
            return self._gap(
                ev,
                f"snapshot lastUpdateId={lid} is older than the stream (next event U={first})",
            )
        return self._apply(ev, Outcome.SYNCED)

    def _continue(self, ev: DepthDelta, last: int) -> Step:
        final = ev.final_update_id
        if continues(self.market, ev.first_update_id, ev.prev_final_update_id, last):
            return self._apply(ev, Outcome.APPLIED)
        if final <= last:
            return Step(Outcome.DUPLICATE, final)
        return self._gap(
            ev, break_reason(self.market, ev.first_update_id, ev.prev_final_update_id, last)
        )

    def _apply(self, ev: DepthDelta, outcome: Outcome) -> Step:
        book = self.book
        book.apply(ev.bids, ev.asks)
        self.last_update_id = ev.final_update_id
        self.last_applied = ev
        if book.is_crossed():
            bid, ask = book.best_bid(), book.best_ask()
            return self._gap(
                None,
                f"crossed book after u={ev.final_update_id}: best bid {bid} >= best ask {ask}",
            )
        self.state = BookState.SYNCED
        return Step(outcome, ev.final_update_id)

    def _gap(self, ev: DepthDelta | None, reason: str) -> Step:
        update_id = ev.final_update_id if ev is not None else (self.last_update_id or 0)
        self.book.clear()
        self.last_update_id = None
        self.state = BookState.RESYNCING
        self.buffer.clear()
        if ev is not None:
            self.buffer.append(ev)  # a newer snapshot may straddle it
        return Step(Outcome.GAP, update_id, reason)
