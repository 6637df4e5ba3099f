"""The source's snapshot decisions and the book's sync rules together, under adversarial orderings.

The dataflow has no edge back from the book to the source: the source's
:class:`~sources.tracker.SequenceTracker` decides on update ids alone when to fetch a snapshot,
and :class:`~operators.sync.BookSync` decides what to do with it. If they ever disagreed, a
symbol would stall silently (the book waits for a snapshot the source never asks for) or loop on
resyncs (the source keeps fetching snapshots the book cannot use). This closed-loop model runs
both on generated exchanges, as the live source does: frames dropped, duplicated, delivered late,
connections lost; snapshots fetched a few events after they are asked for, some lagging behind
the stream (older than the buffer), some ahead of it (newer than the buffer), some inside an
event's ``[U, u]`` range. A naive reference (``tests/reference.py``) is fed the same inputs.

Checked after every input: a synced book equals the exchange's book at its update id (and the
reference's, when the reference is synced at the same id); a book that is not synced always has
a snapshot on its way or is joining one (no silent stall). After the faults stop, each symbol is
synced again within a few snapshots (no resync loop) and stays synced to the last event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data.events import DepthDelta, DepthSnapshot, Market
from operators.sync import BookSync
from sources.tracker import Phase, SequenceTracker
from tests import reference

F, S = Market.FUTURES, Market.SPOT
CLEAN_TAIL = 14  # fault-free events at the end
MAX_SNAPSHOTS_AFTER_FAULTS = 4
Book = tuple[dict[int, int], dict[int, int]]


@dataclass
class Exchange:
    """A true book history and the events that describe it (ids skip on futures)."""

    market: Market
    states: dict[int, Book]  # update id -> book after it
    events: list[DepthDelta]
    own_ids: list[int]  # this symbol's update ids (the others belong to other symbols)


@st.composite
def exchanges(draw: st.DrawFn, market: Market, n: int) -> Exchange:
    bids = {p: 1 for p in draw(st.sets(st.integers(1, 8), min_size=1, max_size=5))}
    asks = {p: 1 for p in draw(st.sets(st.integers(11, 18), min_size=1, max_size=5))}
    next_id = draw(st.integers(100, 200))
    states = {next_id - 1: (dict(bids), dict(asks))}
    own_ids = [next_id - 1]
    events: list[DepthDelta] = []
    prev = next_id - 1
    for _ in range(n):
        first, changed = next_id, {}
        for _ in range(draw(st.integers(1, 3))):
            side, price = draw(
                st.sampled_from([("b", p) for p in range(1, 9)] + [("a", p) for p in range(11, 19)])
            )
            qty = draw(st.integers(0, 3))
            book = bids if side == "b" else asks
            if qty:
                book[price] = qty
            else:
                book.pop(price, None)
            changed[side, price] = qty
            states[next_id] = (dict(bids), dict(asks))
            own_ids.append(next_id)
            next_id += 1
        final = next_id - 1
        events.append(
            DepthDelta(
                "X", first, final, prev if market is F else None, final,
                tuple((p, q) for (s, p), q in changed.items() if s == "b"),
                tuple((p, q) for (s, p), q in changed.items() if s == "a"),
                0.0,
            )
        )  # fmt: skip
        prev = final
        if market is F:  # other symbols' updates take ids too
            for skipped in range(next_id, next_id + draw(st.integers(0, 2))):
                states[skipped] = (dict(bids), dict(asks))
                next_id += 1
    return Exchange(market, states, events, own_ids)


FAULTS = st.sampled_from(["ok", "ok", "ok", "drop", "duplicate", "late", "disconnect"])


@dataclass
class Loop:
    """The source (tracker + fetcher queue) and the operator (BookSync), fed the same frames."""

    exchange: Exchange
    tracker: SequenceTracker
    sync: BookSync
    ref: reference.RefBook
    requested_at: int | None = None  # tick of the pending snapshot request (the fetcher's dedup)
    snapshots: list[int] = field(default_factory=list)  # tick of each snapshot delivered

    def request(self, tick: int) -> None:
        if self.requested_at is None:
            self.requested_at = tick

    def frame(self, ev: DepthDelta, tick: int) -> None:
        ids = (ev.first_update_id, ev.final_update_id, ev.prev_final_update_id)
        asked = self.tracker.on_delta(*ids)
        if asked:
            self.request(tick)
        self.sync.on_delta(ev)
        self.sync.settle()  # as SymbolState does: held snapshots merge, or start a new book
        self.ref.delta(_ref_event(ev))
        # The source asks for a snapshot only when the book needs one (no wasted resync).
        assert not (asked and self.sync.synced), f"a snapshot asked for at {ids}; book is live"
        self.check()

    def snapshot(self, lid: int, tick: int) -> None:
        self.requested_at = None
        self.snapshots.append(tick)
        bids, asks = self.exchange.states[lid]
        if self.tracker.on_snapshot(lid):
            self.request(tick + 1)  # "ask again shortly"
        self.sync.on_snapshot(
            DepthSnapshot("X", lid, tuple(bids.items()), tuple(asks.items()), 0.0)
        )
        self.ref.snapshot(
            {"lastUpdateId": lid, "bids": [[str(p), str(q)] for p, q in bids.items()],
             "asks": [[str(p), str(q)] for p, q in asks.items()]}
        )  # fmt: skip
        self.check()

    def connected(self, tick: int) -> None:
        self.tracker.reset("connected")
        self.request(tick)
        self.check()

    def check(self) -> None:
        sync, tracker = self.sync, self.tracker
        if sync.synced:
            assert sync.last_update_id is not None
            truth = self.exchange.states[sync.last_update_id]
            assert (sync.book.bids(), sync.book.asks()) == truth, (
                f"wrong at u={sync.last_update_id}"
            )
            if self.ref.synced and self.ref.last_id == sync.last_update_id:
                assert _ref_book(self.ref) == truth
        else:
            # Not synced: a snapshot is on its way, or the source is joining one (the next
            # event either syncs the book or makes the source ask again). Never neither.
            assert self.requested_at is not None or tracker.phase is Phase.JOINING, (
                f"stalled: book {sync.state}, source {tracker.phase}, no snapshot requested"
            )
        if tracker.phase is Phase.LIVE:
            assert sync.synced, "the source believes the book is live; the book is not"


def _ref_event(ev: DepthDelta) -> dict:
    out = {
        "e": "depthUpdate", "s": "X", "U": ev.first_update_id, "u": ev.final_update_id,
        "b": [[str(p), str(q)] for p, q in ev.bids], "a": [[str(p), str(q)] for p, q in ev.asks],
    }  # fmt: skip
    if ev.prev_final_update_id is not None:
        out["pu"] = ev.prev_final_update_id
    return out


def _ref_book(ref: reference.RefBook) -> Book:
    def side(levels: dict[Decimal, Decimal]) -> dict[int, int]:
        return {int(p): int(q) for p, q in levels.items()}

    return side(ref.bids), side(ref.asks)


@pytest.mark.parametrize("market", [F, S])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_source_and_book_agree_under_adversarial_orderings(
    market: Market, data: st.DataObject
) -> None:
    faulty = data.draw(st.integers(0, 12), label="faulty events")
    exchange = data.draw(exchanges(market, faulty + CLEAN_TAIL))
    loop = Loop(
        exchange, SequenceTracker(market), BookSync(market), reference.RefBook(market.value)
    )
    events = exchange.events
    held: list[tuple[int, DepthDelta]] = []  # frames delivered late: (due tick, frame)
    down_until = -1  # a lost connection: frames until then are never delivered
    last_fault = -1
    loop.request(0)  # the first connection asks for a snapshot
    for tick, ev in enumerate(events):
        # The fetcher answers a request a few events later, with the book as of then, or
        # a little older (Binance's REST snapshot can lag its stream).
        if loop.requested_at is not None and tick >= loop.requested_at + data.draw(
            st.integers(0, 2)
        ):
            lid = _snapshot_id(
                exchange, events[tick - 1] if tick else None, data.draw(st.integers(0, 3))
            )
            loop.snapshot(lid, tick)
        fault = data.draw(FAULTS) if tick < faulty else "ok"
        if fault != "ok":
            last_fault = tick
        if tick <= down_until:
            continue
        if fault == "disconnect":
            down_until = tick + data.draw(st.integers(0, 2))
            held.clear()  # whatever the old connection had not delivered is gone
            loop.connected(tick)
            continue
        for due, late in [h for h in held if h[0] <= tick]:
            held.remove((due, late))
            loop.frame(late, tick)
        if fault == "drop":
            continue
        if fault == "late":
            held.append((tick + data.draw(st.integers(1, 3)), ev))
            continue
        loop.frame(ev, tick)
        if fault == "duplicate":
            loop.frame(ev, tick)
    # The end of the stream: the book follows the exchange to its last event, and it took only
    # a few snapshots once the faults stopped.
    after = [t for t in loop.snapshots if t > last_fault]
    assert len(after) <= MAX_SNAPSHOTS_AFTER_FAULTS, f"resync loop: snapshots at {after}"
    assert loop.sync.synced, (
        f"not synced at the end: {loop.sync.state}, source {loop.tracker.phase}"
    )
    assert loop.sync.last_update_id == events[-1].final_update_id


def _snapshot_id(exchange: Exchange, last: DepthDelta | None, lag: int) -> int:
    """The id of a snapshot taken after ``last`` was published, ``lag`` of its updates behind.

    A snapshot's ``lastUpdateId`` is the id of one of the symbol's own updates (on futures,
    never one of the ids the symbol skips): in the recorded captures each one is the ``U`` or
    the ``u`` of an event, or inside its range.
    """
    ids = exchange.own_ids
    top = ids.index(last.final_update_id) if last is not None else 0
    return ids[max(0, top - lag)]
