"""The trade gate: which aggTrades pages to ask for after a reconnect, and when held trades go on.

Table tests of each rule, then a closed loop against a model exchange with dropped connections,
slow and failing REST answers: every trade comes out once and in id order unless a backfill gave
up, and held trades never wait past the deadline.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data.events import Trade
from sources.backfill import MAX_TRIES, NOTHING, Page, Step, TradeGate
from sources.policy import AGG_TRADES_PAGE

SYM = "BTCUSDT"


def trade(i: int) -> Trade:
    return Trade(SYM, i, 100, 1, i, False, i, 0.0)


def trades(first: int, last: int) -> tuple[Trade, ...]:
    return tuple(trade(i) for i in range(first, last + 1))


def ids(step: Step) -> list[int]:
    return [t.trade_id for t in step.emit]


def gate_after(last: int, max_trades: int = 10_000, timeout_s: float = 10.0) -> TradeGate:
    gate = TradeGate(SYM, max_trades, timeout_s, random.Random(0))
    gate.passed(last)
    return gate


def page(gate: TradeGate, first: int, last: int, from_id: int | None = None) -> Page:
    return Page(SYM, gate.episode, from_id or first, trades(first, last))


def test_nothing_to_continue_from_before_the_first_trade() -> None:
    gate = TradeGate(SYM, 100, 1.0)
    assert gate.reconnected(0.0) == NOTHING
    assert not gate.filling


def test_asks_from_the_next_id_holds_live_trades_and_releases_them_after_the_gap() -> None:
    gate = gate_after(10)
    assert gate.reconnected(0.0) == Step(fetch_from=11)
    assert gate.filling
    assert gate.hold(trade(15), 0.1) == NOTHING  # held: the page is in flight
    assert gate.hold(trade(16), 0.1) == NOTHING
    step = gate.on_page(page(gate, 11, 17))  # REST also has 15..17: the live ones are kept
    assert ids(step) == [11, 12, 13, 14, 15, 16]
    assert (step.backfilled, step.ended, step.failed) == (4, "filled", False)
    assert step.emit[4] is not None and step.emit[4].recv_time == 0.0
    assert not gate.filling and gate.last == 16
    gate.passed(17)
    assert gate.last == 17


def test_pages_of_1000_until_the_first_live_trade() -> None:
    gate = gate_after(0)
    assert gate.reconnected(0.0).fetch_from == 1
    gate.hold(trade(2501), 0.1)
    step = gate.on_page(page(gate, 1, 1000))
    assert (len(step.emit), step.fetch_from, step.ended) == (1000, 1001, None)
    step = gate.on_page(page(gate, 1001, 2000))
    assert (step.emit[0].trade_id, step.fetch_from) == (1001, 2001)
    step = gate.on_page(page(gate, 2001, 2600))  # REST reached the present
    assert ids(step) == list(range(2001, 2502)) and step.backfilled == 500
    assert step.ended == "filled" and gate.fetched == 2500


def test_short_page_before_any_live_trade_is_caught_up_then_the_first_live_trade_decides() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    step = gate.on_page(page(gate, 11, 12))
    assert ids(step) == [11, 12] and step.fetch_from is None and step.ended is None
    assert gate.filling  # the next live trade could still show a gap
    step = gate.hold(trade(13), 0.5)
    assert ids(step) == [13] and step.ended == "filled" and step.backfilled == 0


def test_first_live_trade_after_catching_up_can_ask_again() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.on_page(Page(SYM, gate.episode, 11))  # empty: nothing after 10 yet
    step = gate.hold(trade(14), 0.5)  # 11..13 happened before the stream caught them
    assert step == Step(fetch_from=11)
    step = gate.on_page(page(gate, 11, 14))
    assert ids(step) == [11, 12, 13, 14] and step.ended == "filled"


def test_quiet_symbol_ends_caught_up_at_the_deadline_without_a_failure() -> None:
    gate = gate_after(10, timeout_s=2.0)
    gate.reconnected(0.0)
    gate.on_page(page(gate, 11, 11))
    assert gate.expire(1.9) == NOTHING
    step = gate.expire(2.0)
    assert (step.ended, step.failed, step.emit) == ("caught_up", False, ())
    assert not gate.filling


def test_deadline_releases_the_held_trades_and_says_how_many_are_lost() -> None:
    gate = gate_after(10, timeout_s=2.0)
    gate.reconnected(0.0)
    gate.hold(trade(20), 0.5)
    gate.hold(trade(21), 0.6)
    step = gate.expire(2.0)
    assert ids(step) == [20, 21]
    assert (step.ended, step.failed, step.missing) == ("timeout", True, 9)
    assert gate.on_page(page(gate, 11, 19, 11)) == NOTHING  # the late answer is ignored
    assert Page(SYM, gate.episode - 1, 11) and gate.last == 21


def test_gap_larger_than_max_trades_gives_up_at_once() -> None:
    gate = gate_after(10, max_trades=100)
    gate.reconnected(0.0)
    step = gate.hold(trade(112), 0.1)  # 101 missing
    assert ids(step) == [112] and (step.ended, step.missing) == ("too_many_trades", 101)
    gate = gate_after(10, max_trades=101)
    gate.reconnected(0.0)
    assert gate.hold(trade(112), 0.1) == NOTHING


def test_max_trades_also_bounds_pages_fetched_before_the_first_live_trade() -> None:
    gate = gate_after(0, max_trades=1500)
    gate.reconnected(0.0)
    gate.on_page(page(gate, 1, 1000))
    step = gate.on_page(page(gate, 1001, 2000))
    assert len(step.emit) == 1000 and (step.ended, step.failed) == ("too_many_trades", True)
    assert step.missing is None  # no live trade yet: unknown


@pytest.mark.parametrize(("rate_limited", "reason"), [(False, "error"), (True, "rate_limited")])
def test_failed_requests_are_retried_then_given_up(rate_limited: bool, reason: str) -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.hold(trade(12), 0.1)
    for _ in range(MAX_TRIES - 1):
        step = gate.on_page(
            Page(SYM, gate.episode, 11, error="HTTP 500", rate_limited=rate_limited)
        )
        assert step.fetch_from == 11
        # A 429 waits for Retry-After in the shared budget; other errors back off here.
        assert (step.delay_s == 0) is rate_limited
    step = gate.on_page(Page(SYM, gate.episode, 11, error="HTTP 500", rate_limited=rate_limited))
    assert ids(step) == [12] and (step.ended, step.missing) == (reason, 1)


def test_a_success_resets_the_tries() -> None:
    gate = gate_after(0)
    gate.reconnected(0.0)
    gate.hold(trade(3001), 0.1)
    for _ in range(MAX_TRIES - 1):
        gate.on_page(Page(SYM, gate.episode, 1, error="timeout"))
    assert gate.on_page(page(gate, 1, 1000)).fetch_from == 1001
    for _ in range(MAX_TRIES - 1):
        assert gate.on_page(Page(SYM, gate.episode, 1001, error="timeout")).ended is None


def test_rest_ending_before_the_first_live_trade_is_retried_then_incomplete() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.hold(trade(20), 0.1)
    step = gate.on_page(page(gate, 11, 14))  # REST lags the stream
    assert ids(step) == [11, 12, 13, 14] and step.fetch_from == 15 and step.delay_s == 0
    for _ in range(MAX_TRIES - 1):
        step = gate.on_page(Page(SYM, gate.episode, 15))
        assert step.fetch_from == 15 and step.delay_s > 0
    step = gate.on_page(Page(SYM, gate.episode, 15))
    assert ids(step) == [20] and (step.ended, step.missing) == ("incomplete", 5)


def test_missing_ids_are_proven_absent_by_the_page() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.hold(trade(20), 0.1)
    answer = Page(SYM, gate.episode, 11, (trade(12), trade(14), trade(20), trade(21)))
    step = gate.on_page(answer)
    assert ids(step) == [12, 14, 20] and step.ended == "filled"


def test_reconnect_while_filling_goes_on_to_the_new_connections_first_trade() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.hold(trade(15), 0.1)  # second connection: 15, 16, then it drops too
    gate.hold(trade(16), 0.1)
    assert gate.reconnected(0.3) == NOTHING  # the request is still in flight
    gate.hold(trade(19), 0.4)  # the third connection starts at 19: 17, 18 are missing too
    gate.hold(trade(20), 0.4)
    step = gate.on_page(page(gate, 11, 14))  # REST had only reached 14 when it answered
    assert ids(step) == [11, 12, 13, 14] and step.fetch_from == 15  # not done at 15 (held)
    step = gate.on_page(page(gate, 15, 20))
    assert ids(step) == [15, 16, 17, 18, 19, 20] and step.ended == "filled"
    assert step.backfilled == 4  # 15..18 from REST (15, 16 held too: sent once), then 19, 20


def test_reconnect_while_caught_up_asks_again() -> None:
    gate = gate_after(10)
    gate.reconnected(0.0)
    gate.on_page(page(gate, 11, 12))
    assert gate.reconnected(1.0) == Step(fetch_from=13)


def test_answers_for_an_abandoned_backfill_are_ignored() -> None:
    gate = gate_after(10, timeout_s=1.0)
    gate.reconnected(0.0)
    old = gate.episode
    gate.expire(1.0)
    gate.passed(30)
    gate.reconnected(2.0)
    assert gate.on_page(Page(SYM, old, 11, trades(11, 12))) == NOTHING
    assert gate.on_page(page(gate, 31, 31)).emit == (trade(31),)


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TradeGate(SYM, 0, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        TradeGate(SYM, 10, 0.0)


# -- closed loop against a model exchange --------------------------------------------------------


def run_loop(rng: random.Random, error_rate: float, timeout_s: float) -> tuple[list[int], int, int]:
    """Trades happen; a connection drops and comes back; REST answers late, sometimes fails.

    Returns the ids emitted, the number of backfills given up, and the exchange's last id.
    """
    gate = TradeGate(SYM, 100_000, timeout_s, rng)
    head = 1000  # the exchange's last trade id, passed on before the start
    gate.passed(head)
    out: list[int] = []
    up, down_until = True, 0
    request: tuple[int, int, int] | None = None  # (answer at, episode, from id)
    failures = 0

    def act(step: Step, now: int) -> None:
        nonlocal request, failures
        out.extend(t.trade_id for t in step.emit)
        if step.fetch_from is not None:
            request = (now + rng.randint(0, 4) + round(step.delay_s), gate.episode, step.fetch_from)
        if step.failed:
            failures += 1

    for now in range(400):
        for _ in range(rng.choice((0, 0, 1, 2, 30))):
            head += 1
            if not up:
                continue  # pushed while the connection is down: only REST has it
            if gate.filling:
                act(gate.hold(trade(head), now), now)
            else:
                gate.passed(head)
                out.append(head)
        if up and rng.random() < 0.05:
            up, down_until = False, now + rng.randint(1, 10)
        elif not up and now >= down_until:
            up = True
            act(gate.reconnected(now), now)
        if request is not None and request[0] <= now:
            _, episode, from_id = request
            request = None
            if rng.random() < error_rate:
                answer = Page(SYM, episode, from_id, error="HTTP 503")
            else:
                answer = Page(SYM, episode, from_id, trades(from_id, min(head, from_id + 999)))
            act(gate.on_page(answer), now)
        act(gate.expire(now), now)
        if gate.filling:
            assert now < gate.deadline, "held trades waited past the deadline"
    return out, failures, head


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32))
def test_every_trade_once_and_in_order_when_rest_answers(seed: int) -> None:
    out, failures, head = run_loop(random.Random(seed), error_rate=0.0, timeout_s=1e9)
    assert failures == 0
    assert out == list(range(1001, 1001 + len(out)))  # none missing, none twice, in order
    assert head - out[-1] < 500  # at most what is held at the very end


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32))
def test_failing_rest_and_deadlines_keep_trades_in_order_and_bounded(seed: int) -> None:
    out, failures, _ = run_loop(random.Random(seed), error_rate=0.4, timeout_s=6)
    assert out == sorted(set(out)), "a trade twice or out of order"
    assert AGG_TRADES_PAGE == 1000
    if failures == 0:
        assert out == list(range(out[0], out[0] + len(out))) if out else True


def test_a_probe_waits_for_the_first_live_trade_and_a_contiguous_one_needs_no_request() -> None:
    gate = TradeGate(SYM, 100, 10.0, random.Random(0), probe_s=2.0)
    gate.passed(10)
    assert gate.reconnected(5.0) == Step(fetch_from=11, delay_s=2.0)  # not sent before 7.0
    step = gate.hold(trade(11), 5.3)  # 11 follows 10: nothing was missed while cut off
    assert ids(step) == [11] and (step.ended, step.failed, step.backfilled) == ("filled", False, 0)
    assert not gate.filling
    assert gate.on_page(page(gate, 11, 11)) == NOTHING  # the request, had it gone, is ignored


def test_a_probe_sends_the_request_at_once_when_the_first_live_trade_shows_a_gap() -> None:
    gate = TradeGate(SYM, 100, 10.0, random.Random(0), probe_s=2.0)
    gate.passed(10)
    gate.reconnected(5.0)
    assert gate.hold(trade(14), 5.2) == Step(fetch_from=11)  # sooner than 7.0: 11..13 missed
    assert gate.hold(trade(15), 5.3) == NOTHING
    step = gate.on_page(page(gate, 11, 15))
    assert ids(step) == [11, 12, 13, 14, 15] and step.ended == "filled"


def test_a_quiet_symbol_is_asked_after_the_probe() -> None:
    gate = TradeGate(SYM, 100, 10.0, random.Random(0), probe_s=2.0)
    gate.passed(10)
    assert gate.reconnected(5.0).delay_s == 2.0  # the source sends it at 7.0
    step = gate.on_page(page(gate, 11, 12))  # two were missed, no live trade since
    assert ids(step) == [11, 12] and step.backfilled == 2
