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

**Snapshots of a live book are merged, not applied.** A snapshot (a REST answer or a partial depth
frame) that reaches a live book is the exchange's book at its ``lastUpdateId`` L. The book keeps
the updates it applied recently (:data:`HISTORY_EVENTS`, :data:`HISTORY_S`), so whether L is
behind the book or ahead of it (then the snapshot waits until the book reaches L), the book knows
which prices changed after L: everywhere else inside the snapshot's window the snapshot's
quantity is today's, so the book takes it (:meth:`OrderBook.overlay`). That widens the book's
exact window and checks it: a quantity that differs where the book claimed to know it is an
audit mismatch (the book was wrong), reported as a step, after which the book keeps only what
the snapshot vouches for.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import NamedTuple

from market_data.events import BookState, DepthDelta, DepthSnapshot, Market
from operators.book import DEFAULT_MAX_LEVELS, OrderBook

DEFAULT_MAX_BUFFER = 10_000
"""Deltas kept while waiting for a snapshot; the oldest are dropped past this."""
HISTORY_EVENTS = 128
"""Applied updates a live book remembers at most, to merge snapshots older than itself: 12.8 s
of a 100 ms diff. stream, where a REST answer is a fraction of a second old and a partial depth
frame a few updates at most. A snapshot older than what is remembered is not merged (it is
ignored, and a book that needs one asks again). More costs time on every update, not memory: at
1,000 the oldest update, read to trim the history, had left the CPU caches (12.4 -> 14.1 µs an
update in ``benchmarks.run --cases core``'s apply; 128: no difference)."""
HISTORY_S = 15.0
"""...and only those received in the last this many seconds, so that a whole market of quiet
symbols does not keep old updates."""
MAX_HELD = 4
"""Snapshots ahead of the book kept until it catches up with them (the newest win)."""


class Outcome(StrEnum):
    """What one event did to the book."""

    BUFFERED = "buffered"  # waiting for a snapshot
    STALE = "stale"  # older than the snapshot, dropped as the procedure says
    DUPLICATE = "duplicate"  # at or below the last applied u, already in the book
    SYNCED = "synced"  # the first event after a snapshot was applied: the book is live
    APPLIED = "applied"
    GAP = "gap"  # sequence broken (or impossible state): the book needs a new snapshot
    SNAPSHOT_APPLIED = "snapshot_applied"
    SNAPSHOT_IGNORED = "snapshot_ignored"  # of no use to the book (the reason says why)
    SNAPSHOT_HELD = "snapshot_held"  # ahead of the live book: merged once the book reaches it
    SNAPSHOT_MERGED = "snapshot_merged"  # merged into the live book, which agreed with it
    AUDIT_MISMATCH = "audit_mismatch"  # merged, and the live book disagreed with it
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


def too_short(snap: DepthSnapshot, need: int) -> str:
    """Why ``snap`` cannot start a book that publishes ``need`` levels a side ("" when it can)."""
    floor, ceiling = snap.window()
    for name, side, bound in (("bids", snap.bids, floor), ("asks", snap.asks, ceiling)):
        # A side the snapshot holds whole (bound None) is enough, however short.
        if len(side) < need and bound is not None:
            return f"holds {len(side)} {name}, fewer than the {need} the book publishes"
    return ""


def ids_went_back(update_id: int, last: int) -> str:
    """The reason of a resync after the exchange's update ids went back."""
    return (
        f"update id {update_id} is not above the book's {last} but is later in time: "
        "the exchange's ids went back (restarted or reset)"
    )


class BookSync:
    """Keeps one symbol's :class:`OrderBook` in sync with the exchange, by Binance's rules.

    ``min_levels`` is how many levels a side the book publishes: a snapshot that holds fewer on
    a side where the exchange has more (a ``@depth5`` frame for a book of 20) cannot start a
    book, though it can still be merged into a live one.
    """

    __slots__ = (
        "base",
        "book",
        "buffer",
        "crossed_snapshots",
        "held",
        "history",
        "last_applied",
        "last_update_id",
        "market",
        "max_buffer",
        "min_levels",
        "state",
    )

    def __init__(
        self,
        market: Market = Market.FUTURES,
        max_levels: int = DEFAULT_MAX_LEVELS,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        min_levels: int = 1,
    ) -> None:
        self.market = Market(market)
        self.book = OrderBook(max_levels)
        self.max_buffer = max_buffer
        self.min_levels = min_levels
        self.buffer: deque[DepthDelta] = deque()
        self.state = BookState.AWAITING_SNAPSHOT
        # The snapshot's lastUpdateId while waiting for the first event, then the last applied u.
        self.last_update_id: int | None = None
        self.crossed_snapshots = 0
        self.last_applied: DepthDelta | None = None  # the delta that brought the book to its state
        # The updates applied since ``base`` (a snapshot's id, or the u of the last forgotten
        # update): a snapshot at or after ``base`` can be merged (see the module docstring).
        self.history: deque[DepthDelta] = deque()
        self.base: int | None = None
        self.held: list[DepthSnapshot] = []  # snapshots ahead of the live book, oldest first

    @property
    def synced(self) -> bool:
        """True when the book follows the exchange's stream (see :meth:`OrderBook.exact_top`)."""
        return self.state is BookState.SYNCED

    def on_delta(self, ev: DepthDelta) -> Step:
        """Handle one depth update; then call :meth:`settle` if snapshots are ``held``."""
        if self.last_update_id is None:  # no snapshot yet (or dropped after a gap)
            return self._buffer(ev)
        if self.state is BookState.SYNCED:
            return self._continue(ev, self.last_update_id)
        return self._first_after_snapshot(ev, self.last_update_id)

    def on_snapshot(self, snap: DepthSnapshot) -> list[Step]:
        """Start the book from a snapshot, or merge it into the live book."""
        lid = snap.last_update_id
        if self.state is BookState.SYNCED:
            return self._merge_or_hold(snap)
        short = too_short(snap, self.min_levels)
        if short:
            return [Step(Outcome.SNAPSHOT_IGNORED, lid, short)]
        if self.last_update_id is not None and lid <= self.last_update_id:
            reason = (
                f"lastUpdateId={lid} is not newer than the pending snapshot at "
                f"{self.last_update_id}"
            )
            return [Step(Outcome.SNAPSHOT_IGNORED, lid, reason)]
        floor, ceiling = snap.window()
        self.book.replace(snap.bids, snap.asks, floor, ceiling)
        self.last_update_id = self.base = lid
        self.history.clear()
        self.held.clear()
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
        if self.held:
            steps.extend(self.settle())
        return steps

    def settle(self) -> list[Step]:
        """Use the held snapshots after :meth:`on_delta` (a no-op when none are held).

        A live book merges those it has reached; a book dropped by a gap starts again from the
        newest one (the buffered event that broke the chain may straddle it).
        """
        held = self.held
        if not held:
            return []
        if self.synced:
            steps = []
            last = self.last_update_id
            while held and last is not None and held[0].last_update_id <= last:
                steps.append(self._merge(held.pop(0)))
            return steps
        if self.last_update_id is None:
            # The newest that can start a book (a 20-level frame cannot start a deeper one).
            usable = [h for h in held if not too_short(h, self.min_levels)]
            held.clear()
            return self.on_snapshot(usable[-1]) if usable else []
        return []

    def reset(self, reason: str) -> Step:
        """Drop the book and wait for a new snapshot (the source asked for a resync)."""
        return self._gap(None, reason)

    def _merge_or_hold(self, snap: DepthSnapshot) -> list[Step]:
        lid, last, base = snap.last_update_id, self.last_update_id, self.base
        if last is not None and lid > last:
            held = self.held
            held.append(snap)
            held.sort(key=lambda s: s.last_update_id)
            del held[:-MAX_HELD]
            return [Step(Outcome.SNAPSHOT_HELD, lid)]
        applied = self.last_applied
        if (
            (base is None or lid < base)
            and snap.event_time_ms is not None
            and applied is not None
            and snap.event_time_ms > applied.event_time_ms
        ):
            # Older ids than the book's, yet a later event time: the exchange's ids went back.
            gap = self._gap(None, ids_went_back(lid, last or 0))
            return [gap, *self.on_snapshot(snap)]
        if base is None or lid < base:
            reason = (
                f"lastUpdateId={lid} is older than the updates the live book remembers "
                f"(from {base})"
            )
            return [Step(Outcome.SNAPSHOT_IGNORED, lid, reason)]
        return [self._merge(snap)]

    def _merge(self, snap: DepthSnapshot) -> Step:
        lid = snap.last_update_id
        newer_bids: set[int] = set()
        newer_asks: set[int] = set()
        newer: list[DepthDelta] = []
        for ev in reversed(self.history):
            if ev.final_update_id <= lid:
                break
            newer.append(ev)
            newer_bids.update([level[0] for level in ev.bids])
            newer_asks.update([level[0] for level in ev.asks])
        floor, ceiling = snap.window()
        book = self.book
        differed = book.overlay(snap.bids, snap.asks, floor, ceiling, newer_bids, newer_asks)
        if differed:
            # The book was wrong somewhere it claimed to know: keep only what the snapshot
            # vouches for.
            book.restrict(floor, ceiling)
        # The prices set after the snapshot take their quantities from those updates, not from
        # the book, which may have pruned them since (or just restricted them away).
        for ev in reversed(newer):
            book.apply(ev.bids, ev.asks)
        if not differed:
            return Step(Outcome.SNAPSHOT_MERGED, lid)
        return Step(
            Outcome.AUDIT_MISMATCH,
            lid,
            f"{differed} levels differed from the exchange's snapshot at lastUpdateId={lid}",
        )

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
            applied = self.last_applied
            if applied is not None and ev.event_time_ms > applied.event_time_ms:
                # A replayed frame repeats its event time; a later one with an id at or below
                # the book's means the exchange's ids went back (it was restarted or reset).
                return self._gap(ev, ids_went_back(final, last))
            return Step(Outcome.DUPLICATE, final)
        return self._gap(
            ev, break_reason(self.market, ev.first_update_id, ev.prev_final_update_id, last)
        )

    def _apply(self, ev: DepthDelta, outcome: Outcome) -> Step:
        book = self.book
        book.apply(ev.bids, ev.asks)
        self.last_update_id = ev.final_update_id
        self.last_applied = ev
        history = self.history
        history.append(ev)
        if len(history) > HISTORY_EVENTS:
            self.base = history.popleft().final_update_id
        while history[0].recv_time < ev.recv_time - HISTORY_S:  # (the last one never is)
            self.base = history.popleft().final_update_id
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
        self.last_update_id = self.base = None
        self.history.clear()  # the held snapshots stay: the newest may start the next book
        self.state = BookState.RESYNCING
        self.buffer.clear()
        if ev is not None:
            self.buffer.append(ev)  # a newer snapshot may straddle it
        return Step(Outcome.GAP, update_id, reason)
