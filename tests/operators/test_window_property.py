"""Property: a published book is the exchange's true top at its update id, whatever arrives.

A naive model exchange keeps a deep book (many levels a side, on an integer price grid: bids
below 1,000, asks above, so it is never crossed) and its own update ids. Each depth event is one
to three exchange updates (its ``[U, u]`` range), each changing levels near the touch, far from
it, sweeping many top levels away (sometimes a whole side) or refilling the touch; the state
after every single update id is recorded, so a snapshot can be taken inside an event's range.

:class:`operators.symbol.SymbolState` gets an adversarial mix: events delivered in order,
dropped, duplicated, late or swapped, held back while the exchange runs ahead; REST-like
snapshots at the current, a recent, an old or an in-between id, cut to a random ``limit``
(sometimes ``None``, sometimes longer than the side: the whole side); partial-like frames
(``limit=20``, ``from_stream``) at a recent event's ``u``; source resets; receipt-time jumps
(past ``HISTORY_S``) and a small ``HISTORY_EVENTS``; random ``depth`` and ``max_levels``;
futures and spot rules; inputs gathered into batches. After every batch, every
:class:`BookUpdate` must equal the exchange's top ``depth`` (best first) at its
``last_update_id``, and come while the statuses say the book is synced. At the end a clean tail
(an in-order stream, a snapshot of every level, one more event, another such snapshot) must have
the book published, and no snapshot may ever have disagreed with it (no audit mismatch: every
snapshot here is the exchange's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from market_data.events import (
    BookState,
    BookStatus,
    BookUpdate,
    DepthDelta,
    DepthSnapshot,
    Level,
    Market,
    OutputEvent,
    ResyncRequest,
    SourceEvent,
)
from operators import sync as sync_module
from operators.book import OrderBook
from operators.symbol import SymbolState

SYM = "BTCUSDT"
MID = 1_000  # bids at 1..999, asks at 1_001..1_999: the exchange is never crossed
PARTIAL = 20
WHOLE = 100_000  # a REST limit beyond any side: the snapshot holds every level

Side = dict[int, int]
Top = tuple[tuple[Level, ...], tuple[Level, ...]]


@dataclass
class Exchange:
    """The truth: a deep book, its update ids, and its full state after every id."""

    market: Market
    bids: Side
    asks: Side
    uid: int = 1_000
    clock: float = 1_000.0
    states: dict[int, tuple[Side, Side]] = field(default_factory=dict)
    events: list[DepthDelta] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.states[self.uid] = (dict(self.bids), dict(self.asks))

    def _update(self, kind: int, seed: int) -> tuple[Side, Side]:
        """One exchange update (one id): the absolute quantities of the levels it changed."""
        bids, asks = self.bids, self.asks
        on_bids = seed % 2 == 0
        side, sign, limit = (bids, -1, 999) if on_bids else (asks, 1, 1_999)
        best = (max(bids) if bids else MID - 1) if on_bids else (min(asks) if asks else MID + 1)
        changes: Side = {}
        if kind == 0:  # makers near the touch: add, change or remove a few levels
            for i in range(1 + seed % 3):
                price = best - sign * ((seed >> (2 + i)) % 6)
                changes[price] = 0 if (seed >> (5 + i)) % 4 == 0 else 1 + (seed >> i) % 9
        elif kind == 1:  # far from the touch: anywhere on the side
            for i in range(1 + seed % 2):
                price = MID + sign * (1 + (seed * (7 + i)) % 999)
                changes[price] = 0 if (seed >> (3 + i)) % 3 == 0 else 1 + seed % 7
        elif kind == 2:  # a sweep: the best levels taken, sometimes the whole side
            count = 1 + (seed >> 1) % 40
            ordered = sorted(side, reverse=on_bids)
            changes = dict.fromkeys(ordered[:count], 0)
        else:  # a refill: new levels inside the touch (next to the middle when empty)
            for i in range(1 + seed % 8):
                price = best - sign * (1 + i) if side else MID + sign * (1 + i)
                changes[price] = 1 + (seed + i) % 9
        for price, qty in changes.items():
            if not (0 < price < MID if on_bids else MID < price <= limit):
                continue
            if qty:
                side[price] = qty
            else:
                side.pop(price, None)
        self.uid += 1
        self.states[self.uid] = (dict(bids), dict(asks))
        return (changes, {}) if on_bids else ({}, changes)

    def event(self, parts: list[tuple[int, int]], dt: float) -> DepthDelta:
        """One depth event made of ``parts`` exchange updates (kind, seed)."""
        prev = self.uid
        bids: Side = {}
        asks: Side = {}
        for kind, seed in parts:
            b, a = self._update(kind, seed)
            bids.update({p: q for p, q in b.items() if 0 < p < MID})
            asks.update({p: q for p, q in a.items() if MID < p < 2 * MID})
        self.clock += dt
        ev = DepthDelta(
            SYM,
            prev + 1,
            self.uid,
            prev if self.market is Market.FUTURES else None,
            self.uid,
            tuple(bids.items()),
            tuple(asks.items()),
            self.clock,
        )
        self.events.append(ev)
        return ev

    def snapshot(self, uid: int, limit: int | None, cut: int, from_stream: bool) -> DepthSnapshot:
        """The book at ``uid``, each side cut to ``limit`` levels (or ``cut`` when unknown)."""
        bids, asks = self.states[uid]
        keep = limit if limit is not None else cut
        return DepthSnapshot(
            SYM,
            uid,
            tuple(sorted(bids.items(), reverse=True)[:keep]),
            tuple(sorted(asks.items())[:keep]),
            self.clock,
            uid if self.market is Market.FUTURES else None,
            limit=limit,
            from_stream=from_stream,
        )

    def top(self, uid: int, depth: int) -> Top:
        bids, asks = self.states[uid]
        return tuple(sorted(bids.items(), reverse=True)[:depth]), tuple(
            sorted(asks.items())[:depth]
        )


def initial(market: Market, levels: int, spacing: int) -> Exchange:
    bids = {MID - 1 - i * spacing: 1 + i % 7 for i in range(levels) if MID - 1 - i * spacing > 0}
    asks = {MID + 1 + i * spacing: 1 + i % 5 for i in range(levels)}
    return Exchange(market, bids, asks)


class Feed:
    """Delivers source events to the state, in batches, and checks everything it emits.

    Every :class:`BookUpdate` must be the exchange's top at its id, and must come while the
    consumer, reading the statuses, sees the book as synced (a ``synced`` status and no
    ``resyncing`` one since).
    """

    def __init__(self, ex: Exchange, state: SymbolState) -> None:
        self.ex, self.state = ex, state
        self.delivered: list[DepthDelta] = []
        self.next = 0  # index in ex.events of the next event the stream has not delivered
        self.batch: list[SourceEvent] = []
        self.hold = 0  # sends still to gather into the current batch
        self.live = False  # as the consumer sees it

    def send(self, *events: SourceEvent) -> None:
        self.batch.extend(events)
        if self.hold > 0:
            self.hold -= 1
        else:
            self.flush()

    def flush(self) -> list[OutputEvent]:
        batch, self.batch = self.batch, []
        out = self.state.on_events(batch) if batch else []
        depth = self.state.depth
        for o in out:
            if type(o) is BookStatus:
                self.live = o.state is BookState.SYNCED
            elif type(o) is BookUpdate:
                assert self.live, f"a view at u={o.last_update_id} with no synced status before"
                truth = self.ex.top(o.last_update_id, depth)
                assert (o.bids, o.asks) == truth, (
                    f"wrong book published at u={o.last_update_id}:\n"
                    f" bids {o.bids}\n  vs {truth[0]}\n asks {o.asks}\n  vs {truth[1]}"
                )
        return out

    def deliver_next(self) -> None:
        if self.next < len(self.ex.events):
            ev = self.ex.events[self.next]
            self.next += 1
            self.delivered.append(ev)
            self.send(ev)


# An action: (name, a, b, c); the numbers are read modulo what the state allows.
ACTIONS = st.tuples(
    st.sampled_from(
        [
            *("event", "event", "event", "event", "event", "event", "ahead", "deliver"),
            *("drop", "duplicate", "swap", "rest", "rest", "rest", "partial", "partial"),
            *("reset", "pause", "batch"),
        ]
    ),
    st.integers(0, 3),
    st.integers(0, 2**16),
    st.integers(0, 90),
)


def play(
    market: Market,
    levels: int,
    spacing: int,
    depth: int,
    max_levels: int,
    history_events: int,
    actions: list[tuple[str, int, int, int]],
) -> None:
    ex = initial(market, levels, spacing)
    state = SymbolState(SYM, depth, market, max_levels)
    feed = Feed(ex, state)
    with mock.patch.object(sync_module, "HISTORY_EVENTS", history_events):
        for name, a, b, c in actions:
            if name in ("event", "ahead"):
                parts = [(a, b), ((a + c) % 4, b // 3 + c), ((a * c) % 4, b // 7)][: 1 + c % 3]
                ex.event(parts, 0.1)
                if name == "event":  # the stream delivers everything up to it
                    while feed.next < len(ex.events):
                        feed.deliver_next()
            elif name == "deliver":
                for _ in range(1 + a):
                    feed.deliver_next()
            elif name == "drop":
                feed.next = min(feed.next + 1, len(ex.events))
            elif name == "duplicate" and feed.delivered:
                feed.send(feed.delivered[-1 - b % min(len(feed.delivered), 12)])
            elif name == "swap" and feed.next + 1 < len(ex.events):
                late, early = ex.events[feed.next], ex.events[feed.next + 1]
                feed.next += 2
                feed.delivered += [early, late]
                feed.send(early)
                feed.send(late)
            elif name == "rest":
                # Any id from an old one (past the history) to the exchange's newest, which
                # may lie inside an event's range or ahead of what the stream delivered.
                back = (b % 12) if a else (b % 200)
                uid = max(min(ex.states), ex.uid - back)
                limit = None if c % 5 == 0 else (WHOLE if c % 5 == 1 else 1 + c)
                feed.send(ex.snapshot(uid, limit, 1 + b % 60, from_stream=False))
            elif name == "partial" and ex.events:
                ev = ex.events[-1 - b % min(len(ex.events), 4)]
                feed.send(ex.snapshot(ev.final_update_id, PARTIAL, 0, from_stream=True))
            elif name == "reset":
                feed.send(ResyncRequest(SYM, "reconnected", ex.clock))
            elif name == "pause":  # a quiet symbol: the next update comes long after
                ex.clock += 20.0 if a else 2.0
            elif name == "batch":  # the next few inputs reach the operator as one batch
                feed.hold = 1 + a + c % 4

        # The clean tail: an in-order stream, a snapshot of every level, one more event (which
        # joins it if the book was dropped), and a snapshot of every level at that event (which
        # widens the window of a book that pruning or the event left short).
        feed.hold = 0
        feed.flush()
        feed.next = len(ex.events)  # what the stream never delivered is lost
        for i in range(3):
            ex.event([(i % 4, 17 * i + 5)], 0.1)
            feed.deliver_next()
        feed.send(ex.snapshot(ex.uid, WHOLE, 0, from_stream=False))
        ex.event([(0, 2)], 0.1)
        feed.deliver_next()
        feed.send(ex.snapshot(ex.uid, WHOLE, 0, from_stream=False))
    assert state.published, f"not published after a clean tail: {state.unknown}"
    assert state.sync.last_update_id == ex.uid
    view = state.view()
    assert (view.bids, view.asks) == ex.top(ex.uid, depth)
    # Every snapshot was the exchange's: a book that follows the rules never disagrees with one
    # where it claims to know the levels.
    assert state.counts["audit_mismatch"] == 0, "the book was wrong where it claimed to know"


MARKETS = st.sampled_from([Market.FUTURES, Market.SPOT])
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    market=MARKETS,
    levels=st.integers(0, 60),
    spacing=st.integers(1, 3),
    depth=st.integers(1, 25),
    history_events=st.sampled_from([2, 5, 128]),
    actions=st.lists(ACTIONS, min_size=20, max_size=80),
)
def test_published_books_are_the_exchanges_top_without_pruning(
    market: Market,
    levels: int,
    spacing: int,
    depth: int,
    history_events: int,
    actions: list[tuple[str, int, int, int]],
) -> None:
    """No level is ever pruned (max_levels beyond any side)."""
    play(market, levels, spacing, depth, 10_000, history_events, actions)


# The shrunk counterexample hypothesis found: a far bid set at u=1017 is pruned at once
# (max_levels=1), a sweep empties the book's bids, and a whole-side REST snapshot at 1016 merged
# then publishes no bid where the exchange has 943. It keeps this test failing until fixed.
_PRUNED_EXAMPLE = [
    *[("event", 0, 0, 0)] * 16,
    ("event", 1, 8, 0),
    ("rest", 0, 1, 1),
    ("event", 0, 0, 2),
    ("rest", 1, 52, 1),
]


@SETTINGS
@example(
    market=Market.FUTURES,
    levels=20,
    spacing=1,
    depth=1,
    extra=0,
    history_events=2,
    actions=_PRUNED_EXAMPLE,
)
@given(
    market=MARKETS,
    levels=st.integers(0, 60),
    spacing=st.integers(1, 3),
    depth=st.integers(1, 25),
    extra=st.integers(0, 30),
    history_events=st.sampled_from([2, 5, 128]),
    actions=st.lists(ACTIONS, min_size=20, max_size=80),
)
def test_published_books_are_the_exchanges_top_with_pruning(
    market: Market,
    levels: int,
    spacing: int,
    depth: int,
    extra: int,
    history_events: int,
    actions: list[tuple[str, int, int, int]],
) -> None:
    """max_levels from depth up: far levels are pruned and the window narrows."""
    play(market, levels, spacing, depth, depth + extra, history_events, actions)


def delta(first: int, final: int, bids: list[Level], asks: list[Level] = []) -> DepthDelta:  # noqa: B006
    return DepthDelta(SYM, first, final, first - 1, final, tuple(bids), tuple(asks), 1.0)


def rest(lid: int, bids: list[Level], limit: int) -> DepthSnapshot:
    return DepthSnapshot(SYM, lid, tuple(bids), ((200, 1),), 1.0, lid, limit=limit)


def views(state: SymbolState, *events: SourceEvent) -> list[Top]:
    return [(o.bids, o.asks) for o in state.on_events(list(events)) if type(o) is BookUpdate]


def test_a_pruned_price_set_after_a_merged_snapshot_is_not_claimed() -> None:
    # The exchange: bids 100 and 96 at u=10; u=11 adds 97; u=12 takes 100.
    state = SymbolState(SYM, depth=1, max_levels=1)
    assert views(state, rest(10, [(100, 1)], limit=1), delta(11, 11, [(97, 5)])) == [
        (((100, 1),), ((200, 1),))
    ]  # 97 was pruned at once (max_levels=1): the book knows bids from 100 up
    assert views(state, delta(12, 12, [(100, 0)])) == []  # the top left the window
    # A REST answer at u=10 (older than the book, within its history) holding the whole bid
    # side: the book takes 96, skips 97 (set after 10, "the book holds its newer quantity")
    # and now claims every bid. The exchange's best bid is 97.
    assert views(state, rest(10, [(100, 1), (96, 1)], limit=1000)) == [(((97, 5),), ((200, 1),))]


def test_an_audit_mismatch_does_not_claim_the_levels_the_merge_pruned() -> None:
    book = OrderBook(max_levels=2)
    book.replace([(100, 1), (99, 1)], [(200, 1)], bid_floor=99, ask_ceiling=200)
    # A whole-side snapshot disagrees at 100 (the book was wrong there): overlay takes its four
    # bids, prunes two (bid_floor 99), and the mismatch restricts the book to the snapshot's window.
    assert book.overlay([(100, 2), (99, 1), (98, 1), (97, 1)], [(200, 1)], None, None) == 1
    book.restrict(None, None)
    book.apply([(100, 0), (99, 0)], [])
    # The exchange still has 98 and 97; the book must not say the bid side is empty.
    assert isinstance(book.exact_top(1), str)
