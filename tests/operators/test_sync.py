"""BookSync: every branch of Binance's futures and spot procedures, then adversarial streams.

In the table-driven cases each delta puts one bid at price ``u`` and each snapshot one bid at
``SNAP + lastUpdateId``, so the book's bid prices say exactly which events were applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data.events import BookState, DepthDelta, DepthSnapshot, Market
from operators.sync import BookSync, Outcome, Step, break_reason, continues, is_stale, straddles
from tests import reference

F, S = Market.FUTURES, Market.SPOT
SNAP = 500_000
ASK = 10**9  # every ask sits far above every bid: no accidental crossing


def d(first: int, final: int, pu: int | None = None, *, bids=None, asks=None) -> DepthDelta:
    """A delta; by default its only change is a bid at price ``final``."""
    return DepthDelta(
        symbol="BTCUSDT",
        first_update_id=first,
        final_update_id=final,
        prev_final_update_id=pu,
        event_time_ms=final * 10,
        bids=tuple(bids) if bids is not None else ((final, 1),),
        asks=tuple(asks) if asks is not None else (),
        recv_time=final / 10,
    )


def snap(lid: int, *, bids=None, asks=None) -> DepthSnapshot:
    return DepthSnapshot(
        symbol="BTCUSDT",
        last_update_id=lid,
        bids=tuple(bids) if bids is not None else ((SNAP + lid, 1),),
        asks=tuple(asks) if asks is not None else ((ASK, 1),),
        recv_time=0.0,
    )


@dataclass(frozen=True)
class Reset:
    reason: str = "source asked"


Action = DepthDelta | DepthSnapshot | Reset


def run(sync: BookSync, action: Action) -> list[Outcome]:
    if isinstance(action, DepthDelta):
        return [sync.on_delta(action).outcome] + [s.outcome for s in sync.settle()]
    if isinstance(action, DepthSnapshot):
        return [s.outcome for s in sync.on_snapshot(action)]
    return [sync.reset(action.reason).outcome]


B, ST, DU, SY, AP, GA = (
    Outcome.BUFFERED,
    Outcome.STALE,
    Outcome.DUPLICATE,
    Outcome.SYNCED,
    Outcome.APPLIED,
    Outcome.GAP,
)
SA, SI, OV = Outcome.SNAPSHOT_APPLIED, Outcome.SNAPSHOT_IGNORED, Outcome.BUFFER_OVERFLOW
SH, SM, AM = Outcome.SNAPSHOT_HELD, Outcome.SNAPSHOT_MERGED, Outcome.AUDIT_MISMATCH
AT_25 = [(SNAP + 20, 1), (25, 1)]  # the bids of the book below at u=25
AWAIT, LIVE, RESYNC = BookState.AWAITING_SNAPSHOT, BookState.SYNCED, BookState.RESYNCING

# (market, [(action, expected outcomes)], final state, final last_update_id, applied bid prices,
#  final buffer as (U, u) pairs)
CASES = [
    # -- buffering before a snapshot ------------------------------------------------------------
    pytest.param(F, [(d(10, 12, 9), [B])], AWAIT, None, set(), [(10, 12)], id="f-buffer"),
    pytest.param(S, [(d(10, 12), [B])], AWAIT, None, set(), [(10, 12)], id="s-buffer"),
    # -- the first event after a snapshot: stale, straddling, boundaries -------------------------
    pytest.param(F, [(snap(20), [SA]), (d(15, 19, 14), [ST])], AWAIT, 20, {SNAP + 20}, [],
                 id="f-stale-u-below-lid"),
    pytest.param(F, [(snap(20), [SA]), (d(15, 20, 14), [SY])], LIVE, 20, {SNAP + 20, 20}, [],
                 id="f-first-u-equals-lid"),
    pytest.param(F, [(snap(20), [SA]), (d(20, 25, 19), [SY])], LIVE, 25, {SNAP + 20, 25}, [],
                 id="f-first-U-equals-lid"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY])], LIVE, 25, {SNAP + 20, 25}, [],
                 id="f-first-straddles"),
    pytest.param(F, [(snap(20), [SA]), (d(21, 25, 19), [GA])], RESYNC, None, set(), [(21, 25)],
                 id="f-first-U-above-lid-is-gap-and-kept"),
    pytest.param(F, [(snap(20), [SA]), (d(22, 25, 20), [SY])], LIVE, 25, {SNAP + 20, 25}, [],
                 id="f-first-pu-equals-lid-joins"),
    pytest.param(F, [(d(22, 25, 20), [B]), (snap(20), [SA, SY])], LIVE, 25, {SNAP + 20, 25}, [],
                 id="f-buffered-pu-equals-lid-joins"),
    pytest.param(S, [(snap(20), [SA]), (d(15, 20), [ST])], AWAIT, 20, {SNAP + 20}, [],
                 id="s-stale-u-equals-lid"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY])], LIVE, 25, {SNAP + 20, 25}, [],
                 id="s-first-U-equals-lid-plus-1"),
    pytest.param(S, [(snap(20), [SA]), (d(18, 21), [SY])], LIVE, 21, {SNAP + 20, 21}, [],
                 id="s-first-u-equals-lid-plus-1"),
    pytest.param(S, [(snap(20), [SA]), (d(22, 25), [GA])], RESYNC, None, set(), [(22, 25)],
                 id="s-first-U-above-lid-plus-1-is-gap"),
    # -- buffered deltas joined with the snapshot -----------------------------------------------
    pytest.param(F, [(d(10, 12, 9), [B]), (d(13, 15, 12), [B]), (d(16, 18, 15), [B]),
                     (snap(14), [SA, ST, SY, AP])],
                 LIVE, 18, {SNAP + 14, 15, 18}, [], id="f-buffer-then-snapshot"),
    pytest.param(S, [(d(10, 12), [B]), (d(13, 15), [B]), (d(16, 18), [B]),
                     (snap(12), [SA, ST, SY, AP])],
                 LIVE, 18, {SNAP + 12, 15, 18}, [], id="s-buffer-then-snapshot"),
    pytest.param(F, [(d(10, 12, 9), [B]), (snap(30), [SA, ST]), (d(28, 31, 12), [SY])],
                 LIVE, 31, {SNAP + 30, 31}, [], id="f-snapshot-newer-than-buffer"),
    # -- a snapshot older than the buffered stream: gap, the events are kept --------------------
    pytest.param(F, [(d(16, 18, 15), [B]), (d(19, 21, 18), [B]), (snap(10), [SA, GA])],
                 RESYNC, None, set(), [(16, 18), (19, 21)], id="f-snapshot-older-than-buffer"),
    pytest.param(F, [(d(16, 18, 15), [B]), (d(19, 21, 18), [B]), (snap(10), [SA, GA]),
                     (snap(17), [SA, SY, AP])],
                 LIVE, 21, {SNAP + 17, 18, 21}, [], id="f-older-then-newer-snapshot-syncs"),
    pytest.param(S, [(d(16, 18), [B]), (d(19, 21), [B]), (snap(14), [SA, GA]),
                     (snap(15), [SA, SY, AP])],
                 LIVE, 21, {SNAP + 15, 18, 21}, [], id="s-older-then-newer-snapshot-syncs"),
    # -- a break inside the buffered stream keeps the rest for the next snapshot ----------------
    pytest.param(F, [(d(10, 12, 9), [B]), (d(13, 15, 12), [B]), (d(20, 22, 18), [B]),
                     (d(23, 25, 22), [B]), (snap(11), [SA, SY, AP, GA])],
                 RESYNC, None, set(), [(20, 22), (23, 25)], id="f-gap-in-buffer-keeps-rest"),
    pytest.param(F, [(d(10, 12, 9), [B]), (d(13, 15, 12), [B]), (d(20, 22, 18), [B]),
                     (d(23, 25, 22), [B]), (snap(11), [SA, SY, AP, GA]), (snap(21), [SA, SY, AP])],
                 LIVE, 25, {SNAP + 21, 22, 25}, [], id="f-gap-in-buffer-then-resync"),
    # -- the live chain --------------------------------------------------------------------------
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(40, 44, 25), [AP])],
                 LIVE, 44, {SNAP + 20, 25, 44}, [], id="f-pu-chain-ignores-U"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (d(26, 30, 999), [AP])],
                 LIVE, 30, {SNAP + 20, 25, 30}, [], id="s-U-chain-ignores-pu"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(18, 25, 17), [DU]),
                     (d(10, 22, 9), [DU])],
                 LIVE, 25, {SNAP + 20, 25}, [], id="f-duplicates"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (d(21, 25), [DU]), (d(23, 24), [DU])],
                 LIVE, 25, {SNAP + 20, 25}, [], id="s-duplicates"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(30, 35, 28), [GA])],
                 RESYNC, None, set(), [(30, 35)], id="f-pu-gap"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(24, 30, 24), [GA])],
                 RESYNC, None, set(), [(24, 30)], id="f-overlap-is-gap"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(26, 30, None), [GA])],
                 RESYNC, None, set(), [(26, 30)], id="f-missing-pu-is-gap"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (d(27, 30), [GA])],
                 RESYNC, None, set(), [(27, 30)], id="s-U-gap"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (d(24, 30), [GA])],
                 RESYNC, None, set(), [(24, 30)], id="s-overlap-is-gap"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (d(30, 35, 28), [GA]),
                     (d(36, 38, 35), [B]), (snap(37), [SA, ST, SY])],
                 LIVE, 38, {SNAP + 37, 38}, [], id="f-gap-then-resync"),
    # -- snapshots against a pending or live book ------------------------------------------------
    pytest.param(F, [(snap(20), [SA]), (snap(20), [SI]), (snap(19), [SI])],
                 AWAIT, 20, {SNAP + 20}, [], id="f-snapshot-not-newer-than-pending"),
    pytest.param(F, [(snap(20), [SA]), (snap(21), [SA])], AWAIT, 21, {SNAP + 21}, [],
                 id="f-newer-snapshot-replaces-pending"),
    # A live book merges snapshots (consistent ones here: the book's own bids at that id).
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (snap(25, bids=AT_25), [SM]),
                     (snap(20, bids=[(SNAP + 20, 1)]), [SM]), (snap(19), [SI])],
                 LIVE, 25, {SNAP + 20, 25}, [], id="f-snapshots-at-or-behind-live-merge"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (snap(25, bids=AT_25), [SM])],
                 LIVE, 25, {SNAP + 20, 25}, [], id="s-snapshot-at-live-merges"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]),
                     (snap(30, bids=[*AT_25, (30, 1)]), [SH]),
                     (d(26, 30, 25), [AP, SM])],
                 LIVE, 30, {SNAP + 20, 25, 30}, [], id="f-newer-snapshot-held-then-merged"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (snap(30), [SH]),
                     (d(29, 32, 28), [GA, SA, SY])],
                 LIVE, 32, {SNAP + 30, 32}, [], id="f-gap-before-a-held-snapshot-starts-from-it"),
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]),
                     (snap(25, bids=[(SNAP + 20, 2), (25, 1)]), [AM])],
                 LIVE, 25, {SNAP + 20, 25}, [], id="f-merge-that-disagrees-is-an-audit-mismatch"),
    # -- reset -----------------------------------------------------------------------------------
    pytest.param(F, [(snap(20), [SA]), (d(18, 25, 17), [SY]), (Reset(), [GA])],
                 RESYNC, None, set(), [], id="f-reset-live"),
    pytest.param(F, [(d(10, 12, 9), [B]), (Reset(), [GA]), (d(13, 15, 12), [B])],
                 RESYNC, None, set(), [(13, 15)], id="f-reset-drops-buffer"),
    pytest.param(S, [(snap(20), [SA]), (d(21, 25), [SY]), (Reset(), [GA]), (d(26, 27), [B]),
                     (snap(26), [SA, SY])],
                 LIVE, 27, {SNAP + 26, 27}, [], id="s-reset-then-resync"),
]  # fmt: skip


@pytest.mark.parametrize(("market", "script", "state", "lid", "bids", "buffer"), CASES)
def test_branches(
    market: Market,
    script: list[tuple[Action, list[Outcome]]],
    state: BookState,
    lid: int | None,
    bids: set[int],
    buffer: list[tuple[int, int]],
) -> None:
    sync = BookSync(market)
    for i, (action, expected) in enumerate(script):
        assert run(sync, action) == expected, f"action {i}: {action}"
    assert sync.state is state
    assert sync.synced is (state is LIVE)
    assert sync.last_update_id == lid
    assert set(sync.book.bids()) == bids
    assert [(e.first_update_id, e.final_update_id) for e in sync.buffer] == buffer


@pytest.mark.parametrize("market", [F, S])
def test_buffer_overflow_drops_the_oldest(market: Market) -> None:
    sync = BookSync(market, max_buffer=2)
    assert sync.on_delta(d(1, 2, 0)).outcome is B
    assert sync.on_delta(d(3, 4, 2)).outcome is B
    step = sync.on_delta(d(5, 6, 4))
    assert step.outcome is OV and step.update_id == 2 and "2 deltas" in step.reason
    assert [e.final_update_id for e in sync.buffer] == [4, 6]
    steps = sync.on_snapshot(snap(4 if market is F else 3))
    assert [s.outcome for s in steps] == [SA, SY, AP]
    assert sync.last_update_id == 6


def test_steps_carry_update_ids_and_reasons() -> None:
    sync = BookSync(F)
    assert sync.on_snapshot(snap(20)) == [Step(SA, 20)]
    assert sync.on_delta(d(15, 19, 14)) == Step(ST, 19)
    assert sync.on_delta(d(18, 25, 17)) == Step(SY, 25)
    assert sync.last_applied == d(18, 25, 17)
    assert sync.on_delta(d(26, 27, 25)) == Step(AP, 27)
    assert sync.on_delta(d(26, 27, 25)) == Step(DU, 27)
    ignored = sync.on_snapshot(snap(19))
    assert ignored[0].outcome is SI and "19" in ignored[0].reason and "from 20" in ignored[0].reason
    gap = sync.on_delta(d(40, 41, 30))
    assert gap.outcome is GA and gap.update_id == 41
    assert "pu=30" in gap.reason and "u=27" in gap.reason
    again = BookSync(F)
    again.on_snapshot(snap(20))
    again.on_delta(d(18, 25, 17))
    step = again.reset("reconnected")
    assert step == Step(GA, 25, "reconnected")


def test_snapshot_older_than_stream_names_the_ids() -> None:
    sync = BookSync(S)
    sync.on_delta(d(30, 31))
    steps = sync.on_snapshot(snap(10))
    assert steps[-1].outcome is GA and "lastUpdateId=10" in steps[-1].reason
    assert "U=30" in steps[-1].reason


@pytest.mark.parametrize("market", [F, S])
def test_crossed_book_after_a_delta_is_a_gap(market: Market) -> None:
    sync = BookSync(market)
    sync.on_snapshot(snap(20, bids=[(100, 1)], asks=[(101, 1)]))
    first = d(20, 21, 19) if market is F else d(21, 21)
    assert sync.on_delta(first).outcome is SY
    crossing = d(22, 22, 21, bids=[(101, 5)], asks=[])
    step = sync.on_delta(crossing)
    assert step.outcome is GA and step.update_id == 22 and "crossed" in step.reason
    assert not sync.synced and sync.last_update_id is None
    assert sync.book.depth() == (0, 0)
    assert not sync.buffer  # the crossing event itself is not trusted for the next attempt
    assert sync.on_delta(d(23, 23, 22)).outcome is B


def test_crossed_first_event_is_a_gap() -> None:
    sync = BookSync(F)
    sync.on_delta(d(19, 21, 18, bids=[(101, 5)], asks=[]))
    steps = sync.on_snapshot(snap(20, bids=[(100, 1)], asks=[(101, 1)]))
    assert [s.outcome for s in steps] == [SA, GA]
    assert not sync.synced


def test_crossed_snapshot_is_counted_not_refused() -> None:
    sync = BookSync(F)
    steps = sync.on_snapshot(snap(20, bids=[(101, 1)], asks=[(100, 1)]))
    assert [s.outcome for s in steps] == [SA]
    assert sync.crossed_snapshots == 1
    assert sync.on_delta(d(20, 21, 19, bids=[], asks=[(100, 0)])).outcome is SY


def test_market_accepts_its_string_value() -> None:
    assert BookSync("spot").market is S  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("market", "final", "lid", "stale"),
    [(F, 19, 20, True), (F, 20, 20, False), (F, 21, 20, False),
     (S, 19, 20, True), (S, 20, 20, True), (S, 21, 20, False)],
)  # fmt: skip
def test_is_stale(market: Market, final: int, lid: int, stale: bool) -> None:
    assert is_stale(market, final, lid) is stale


@pytest.mark.parametrize(
    ("market", "first", "pu", "lid", "ok"),
    [(F, 19, 10, 20, True), (F, 20, 10, 20, True), (F, 21, 19, 20, False),
     (F, 21, 20, 20, True),  # pu == lastUpdateId: the event follows the snapshot exactly
     (F, 21, None, 20, False),
     (S, 20, None, 20, True), (S, 21, None, 20, True), (S, 22, None, 20, False),
     (S, 22, 20, 20, False)],  # spot ignores pu
)  # fmt: skip
def test_straddles(market: Market, first: int, pu: int | None, lid: int, ok: bool) -> None:
    assert straddles(market, first, pu, lid) is ok


@pytest.mark.parametrize(
    ("market", "first", "pu", "last", "ok"),
    [(F, 99, 25, 25, True), (F, 26, 24, 25, False), (F, 26, None, 25, False),
     (S, 26, 999, 25, True), (S, 27, 25, 25, False), (S, 25, 24, 25, False)],
)  # fmt: skip
def test_continues(market: Market, first: int, pu: int | None, last: int, ok: bool) -> None:
    assert continues(market, first, pu, last) is ok
    reason = break_reason(market, first, pu, last)
    assert (f"pu={pu}" if market is F else f"U={first}") in reason and f"u={last}" in reason


# ---------------------------------------------------------------------------------------------
# Adversarial streams generated from a ground truth.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A true sequence of book states and the events that describe it."""

    market: Market
    states: dict[int, tuple[dict[int, int], dict[int, int]]]  # update id -> (bids, asks)
    events: list[DepthDelta]
    lids: list[list[int]]  # per event: the snapshot ids this event straddles

    def state(self, lid: int) -> tuple[dict[int, int], dict[int, int]]:
        return self.states[lid]

    def snapshot(self, lid: int) -> DepthSnapshot:
        bids, asks = self.states[lid]
        return DepthSnapshot("X", lid, tuple(bids.items()), tuple(asks.items()), 0.0)


CHANGE = st.one_of(
    st.tuples(st.just("b"), st.integers(1, 6), st.integers(0, 3)),
    st.tuples(st.just("a"), st.integers(11, 16), st.integers(0, 3)),
)


@st.composite
def worlds(draw: st.DrawFn, market: Market) -> World:
    bids = {p: 1 for p in draw(st.sets(st.integers(1, 6), max_size=4))}
    asks = {p: 1 for p in draw(st.sets(st.integers(11, 16), max_size=4))}
    next_id = draw(st.integers(1, 50))
    states = {next_id - 1: (dict(bids), dict(asks))}
    events: list[DepthDelta] = []
    lids: list[list[int]] = []
    prev_u = next_id - 1 - draw(st.integers(0, 3))
    for _ in range(draw(st.integers(3, 10))):
        changes = draw(st.lists(CHANGE, min_size=1, max_size=3))
        first = next_id
        final: dict[tuple[str, int], int] = {}
        for side, price, qty in changes:
            book = bids if side == "b" else asks
            if qty:
                book[price] = qty
            else:
                book.pop(price, None)
            final[(side, price)] = qty
            states[next_id] = (dict(bids), dict(asks))
            next_id += 1
        last = next_id - 1
        events.append(
            DepthDelta(
                "X",
                first,
                last,
                prev_u,
                last,
                tuple((p, q) for (s, p), q in final.items() if s == "b"),
                tuple((p, q) for (s, p), q in final.items() if s == "a"),
                0.0,
            )
        )
        lids.append(list(range(first, last + 1)) if market is F else list(range(first - 1, last)))
        prev_u = last
        if market is F:  # futures ids of one symbol skip the other symbols' updates
            skip = draw(st.integers(0, 3))
            for missing in range(next_id, next_id + skip):
                states[missing] = (dict(bids), dict(asks))
            next_id += skip
    return World(market, states, events, lids)


@st.composite
def scenarios(draw: st.DrawFn, market: Market) -> tuple[World, list[Action], list[Action]]:
    """An adversarial prefix, then a clean resync: events, one consistent snapshot, the rest."""
    world = draw(worlds(market))
    n = len(world.events)
    k = draw(st.integers(0, n - 1))  # the prefix may only use events[:k]
    all_lids = sorted({lid for lids in world.lids for lid in lids})
    noise: list[Action] = []
    for choice in draw(st.lists(st.integers(0, 9), max_size=14)):
        if choice <= 5 and k:
            noise.append(world.events[draw(st.integers(0, k - 1))])  # any order, repeats, gaps
        elif choice <= 8:
            noise.append(world.snapshot(draw(st.sampled_from(all_lids))))
        else:
            noise.append(Reset())
    j = draw(st.integers(k, n - 1))  # the event the clean snapshot is straddled by
    lid = draw(st.sampled_from(world.lids[j]))
    before = draw(st.integers(k, n))  # how many events arrive before that snapshot
    clean: list[Action] = []
    for i in range(k, n):
        if i == before:
            if draw(st.booleans()) and k:  # an old snapshot first: it must not stick
                clean.append(world.snapshot(draw(st.sampled_from(world.lids[0]))))
            clean.append(world.snapshot(lid))
        clean.append(world.events[i])
        if i > k and draw(st.integers(0, 4)) == 0:
            clean.append(world.events[i - 1])  # a replayed frame
    if before == n:
        clean.append(world.snapshot(lid))
    return world, noise, clean


def check_safe(sync: BookSync, world: World, steps: list[Step]) -> None:
    for step in steps:
        assert step.outcome is not Outcome.BUFFER_OVERFLOW
    if sync.synced:
        assert sync.last_update_id is not None
        assert sync.last_update_id in {e.final_update_id for e in world.events}
        bids, asks = world.state(sync.last_update_id)
        assert sync.book.bids() == bids, f"bids differ at u={sync.last_update_id}"
        assert sync.book.asks() == asks, f"asks differ at u={sync.last_update_id}"


def feed(sync: BookSync, world: World, action: Action) -> None:
    if isinstance(action, DepthDelta):
        steps = [sync.on_delta(action), *sync.settle()]  # as SymbolState does
    elif isinstance(action, DepthSnapshot):
        steps = sync.on_snapshot(action)
    else:
        steps = [sync.reset(action.reason)]
    check_safe(sync, world, steps)


@pytest.mark.parametrize("market", [F, S])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_adversarial_streams_against_ground_truth(market: Market, data: st.DataObject) -> None:
    world, noise, clean = data.draw(scenarios(market))
    sync = BookSync(market)
    for action in noise:
        feed(sync, world, action)
    for action in clean:
        feed(sync, world, action)
    last = world.events[-1]
    assert sync.synced, "a consistent snapshot and every following event arrived"
    assert sync.last_update_id == last.final_update_id
    assert (sync.book.bids(), sync.book.asks()) == world.state(last.final_update_id)


# ---------------------------------------------------------------------------------------------
# The real captures: BookSync and the naive reference end on the same books.
# ---------------------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(
    ("name", "market"),
    [("binance_futures_2021-07-22.jsonl.gz", F), ("binance_spot_2021-10-12.jsonl.gz", S)],
)
def test_recorded_streams_match_the_reference(name: str, market: Market) -> None:
    from sources.parse import parse_frame, parse_snapshot
    from sources.recording import read_records

    triples = []
    syncs: dict[str, BookSync] = {}
    applied: dict[str, int] = {}
    for rec in read_records(DATA / name):
        assert not isinstance(rec, Exception)
        if rec.kind == "rest":
            symbol = parse_qs(urlsplit(rec.url).query)["symbol"][0]
            triples.append(("rest", rec.url, rec.body))
            shot = parse_snapshot(symbol, rec.body, rec.t)
            assert isinstance(shot, DepthSnapshot)
            steps = syncs.setdefault(symbol, BookSync(market)).on_snapshot(shot)
        else:
            triples.append(("ws", rec.url, rec.frame))
            ev = parse_frame(rec.frame, rec.t)
            if not isinstance(ev, DepthDelta):
                continue
            symbol = ev.symbol
            steps = [syncs.setdefault(ev.symbol, BookSync(market)).on_delta(ev)]
        for step in steps:
            assert step.outcome not in (GA, OV), step
            if step.outcome in (SY, AP):
                applied[symbol] = applied.get(symbol, 0) + 1
    ref = reference.replay_recording(triples, market.value)
    assert set(ref) == set(syncs) and len(ref) == 4
    for symbol, book in ref.items():
        sync = syncs[symbol]
        assert book.synced and sync.synced, symbol
        assert book.breaks == 0
        assert sync.last_update_id == book.last_id
        assert applied[symbol] == book.applied
        assert (sync.book.bids(), sync.book.asks()) == book.units(), symbol
    if market is F:  # the figures quoted in the capture's README
        sushi = ref["SUSHIUSDT"]
        assert (sushi.last_id, sushi.applied, sushi.dropped) == (600860425198, 252, 3)
        assert syncs["SUSHIUSDT"].book.best_bid() == (761_200_000, 303 * 10**8)
        assert syncs["SUSHIUSDT"].book.best_ask() == (761_600_000, 267 * 10**8)


@pytest.mark.parametrize("market", [F, S])
def test_ids_that_go_back_while_time_goes_on_are_an_exchange_reset_not_duplicates(
    market: Market,
) -> None:
    sync = BookSync(market)
    sync.on_snapshot(snap(20))
    first = d(18, 25, 17) if market is F else d(21, 25)
    assert sync.on_delta(first).outcome is SY
    assert sync.on_delta(first).outcome is DU  # a replayed frame: same ids, same event time
    restarted = DepthDelta("BTCUSDT", 3, 4, 2, 260, ((4, 1),), (), 26.0)  # E 260 > 250
    step = sync.on_delta(restarted)
    assert step.outcome is GA and "ids went back" in step.reason
    assert not sync.synced and list(sync.buffer) == [restarted]
    # The exchange's new book starts it again.
    steps = sync.on_snapshot(snap(3 if market is F else 2, bids=[(1, 1)]))
    assert [s.outcome for s in steps] == [SA, SY] and sync.last_update_id == 4


def test_a_snapshot_older_than_the_book_but_later_in_time_restarts_it() -> None:
    sync = BookSync(F)
    sync.on_snapshot(snap(20))
    sync.on_delta(d(18, 25, 17))  # E 250
    reset = DepthSnapshot("BTCUSDT", 5, ((7, 1),), ((ASK, 1),), 0.0, event_time_ms=900)
    steps = sync.on_snapshot(reset)
    assert [s.outcome for s in steps] == [GA, SA] and "ids went back" in steps[0].reason
    assert sync.last_update_id == 5 and set(sync.book.bids()) == {7}
    late = DepthSnapshot("BTCUSDT", 19, ((7, 1),), ((ASK, 1),), 0.0, event_time_ms=240)
    assert [s.outcome for s in BookSync(F).on_snapshot(late)] == [SA]  # nothing to compare
