"""The health state's hooks, merged reports, and the /ready and /health verdicts (pure)."""

from __future__ import annotations

import pytest

from health import report
from health.report import Expectations, PipelineExpectation, health, merge, ready
from health.state import HealthState, PipelineScope
from market_data.events import BookState

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def make_state(clock: Clock) -> HealthState:
    state = HealthState(clock)
    state.configure(
        [
            PipelineScope("fut", "fut", "binance_futures", ("BTCUSDT", "ETHUSDT")),
            PipelineScope("spot", "spot", "binance_spot", ("BTCUSDT",)),
            PipelineScope("rep", "rep", "replay"),
        ]
    )
    return state


EXPECT = Expectations(
    (
        PipelineExpectation("fut", ("BTCUSDT", "ETHUSDT"), ("redis:fut",)),
        PipelineExpectation("spot", ("BTCUSDT",), ()),
    ),
    stall_after_s=30.0,
)


def all_good(state: HealthState, clock: Clock) -> None:
    for step, symbols in (
        ("fut_order_book", ("BTCUSDT", "ETHUSDT")),
        ("spot_order_book", ("BTCUSDT",)),
    ):
        for s in symbols:
            book = state.book(step, s)
            book.changed(BookState.SYNCED, "synced", clock())
            book.updated(10, clock())
    state.connection("binance_futures", ("BTCUSDT", "ETHUSDT")).connected()
    state.connection("binance_spot", ("BTCUSDT",)).connected()
    state.sink("redis:fut").up()


def verdict(state: HealthState, clock: Clock, expect: Expectations = EXPECT):
    return ready(expect, merge({0: state.snapshot()}, clock()))


def test_ready_when_every_symbol_is_synced_connected_and_its_sinks_write():
    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    ok, body = verdict(state, clock)
    assert ok, body["not_ready"]
    assert body["status"] == "ready"
    assert body["pipelines"]["fut"]["symbols"]["ETHUSDT"]["connected"] is True
    assert body["pipelines"]["fut"]["sinks"] == {"redis:fut": "up"}


def test_same_symbol_in_two_pipelines_is_judged_per_pipeline():
    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    state.book("spot_order_book", "BTCUSDT").changed(
        BookState.RESYNCING, "U=5 does not follow", clock()
    )
    ok, body = verdict(state, clock)
    assert not ok
    assert body["not_ready"] == [
        {
            "pipeline": "spot",
            "symbol": "BTCUSDT",
            "reason": "resyncing: U=5 does not follow",
        }
    ]
    assert body["pipelines"]["fut"]["symbols"]["BTCUSDT"]["ready"] is True


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda s, c: None, None),
        (
            lambda s, c: s.book("fut_order_book", "ETHUSDT").changed(
                BookState.RESYNCING, "pu=3 does not continue the previous u=2", c()
            ),
            {
                "pipeline": "fut",
                "symbol": "ETHUSDT",
                "reason": "resyncing: pu=3 does not continue the previous u=2",
            },
        ),
        (
            lambda s, c: s.connection("binance_futures", ("ETHUSDT",)).disconnected(
                "silent for 30 s"
            ),
            {"pipeline": "fut", "symbol": "ETHUSDT", "reason": "disconnected: silent for 30 s"},
        ),
        (
            lambda s, c: s.sink("redis:fut").down("redis unreachable: ConnectionError: refused"),
            {
                "pipeline": "fut",
                "sink": "redis:fut",
                "reason": "redis unreachable: ConnectionError: refused",
            },
        ),
    ],
    ids=["none", "gap", "disconnected", "redis-down"],
)
def test_each_problem_is_named_with_its_reason(breakage, expected):
    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    breakage(state, clock)
    ok, body = verdict(state, clock)
    assert body["not_ready"] == ([] if expected is None else [expected])
    assert ok is (expected is None)


def test_before_anything_happens_symbols_await_snapshots_and_sinks_are_not_started():
    clock = Clock()
    state = make_state(clock)
    ok, body = verdict(state, clock)
    assert not ok
    assert {"pipeline": "fut", "symbol": "BTCUSDT", "reason": "awaiting snapshot"} in body[
        "not_ready"
    ]
    assert {"pipeline": "fut", "sink": "redis:fut", "reason": "not started"} in body["not_ready"]
    state.sink("redis:fut")  # built, nothing written yet
    _, body = verdict(state, clock)
    assert {"pipeline": "fut", "sink": "redis:fut", "reason": "no write yet"} in body["not_ready"]


def test_a_closed_partition_no_longer_counts_and_one_good_partition_is_enough():
    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    idle = state.sink("redis:fut")  # a worker that never wrote (no symbol of its own)
    assert verdict(state, clock)[0]
    broken = state.sink("redis:fut")
    broken.down("redis unreachable: timeout")
    assert not verdict(state, clock)[0]
    broken.close()
    idle.close()
    assert verdict(state, clock)[0]


def test_a_recovered_connection_and_resynced_book_are_ready_again():
    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    conn = state.connection("binance_futures", ("BTCUSDT",))
    conn.disconnected("reset by peer")
    book = state.book("fut_order_book", "BTCUSDT")
    book.changed(BookState.RESYNCING, "connected", clock())
    assert not verdict(state, clock)[0]
    conn.connected()
    clock.t += 1
    book.changed(BookState.SYNCED, "synced", clock())
    assert verdict(state, clock)[0]


def test_a_replay_pipeline_expects_the_symbols_it_has_seen():
    clock = Clock()
    state = make_state(clock)
    expect = Expectations((PipelineExpectation("rep", None, ()),))
    ok, body = verdict(state, clock, expect)
    assert not ok and body["not_ready"] == [{"pipeline": "rep", "reason": "no symbol seen yet"}]
    state.book("rep_order_book", "SUSHIUSDT").changed(BookState.SYNCED, "synced", clock())
    ok, body = verdict(state, clock, expect)
    assert ok and list(body["pipelines"]["rep"]["symbols"]) == ["SUSHIUSDT"]
    state.book("rep_order_book", "DOGEUSDT")  # seen, not synced yet
    ok, body = verdict(state, clock, expect)
    assert body["not_ready"] == [
        {"pipeline": "rep", "symbol": "DOGEUSDT", "reason": "awaiting snapshot"}
    ]


def test_a_step_id_maps_to_the_pipeline_with_the_longest_matching_prefix():
    state = HealthState()
    state.configure([PipelineScope("a", "a", "replay"), PipelineScope("a-b", "a_b", "replay")])
    assert state.book("a_b_order_book", "X").pipeline == "a-b"
    assert state.book("a_order_book", "X").pipeline == "a"
    assert state.book("a_b_op_1", "X").pipeline == "a-b"
    assert state.book("other", "X").pipeline == "other"  # unconfigured: reported as it is
    state.configure(
        [PipelineScope("a", "a", "replay"), PipelineScope("a_order", "a_order", "replay")]
    )
    assert state.book("a_order_book", "X").pipeline == "a"
    assert state.book("a_order_order_book", "X").pipeline == "a_order"


def test_pipelines_of_one_source_type_are_told_apart_by_their_symbols():
    state = HealthState()
    state.configure(
        [
            PipelineScope("one", "one", "binance_futures", ("BTCUSDT",)),
            PipelineScope("two", "two", "binance_futures", ("ETHUSDT",)),
        ]
    )
    assert state.connection("binance_futures", ("ETHUSDT",)).pipeline == "two"
    assert state.connection("binance_futures", ("BTCUSDT",)).pipeline == "one"


# -- several processes -------------------------------------------------------------------------


def process_reports(clock: Clock) -> tuple[HealthState, HealthState]:
    """A book in one process, its connections in the other (as bytewax routes them)."""
    p0, p1 = make_state(clock), make_state(clock)
    p1.process_id = 1
    for s in ("BTCUSDT", "ETHUSDT"):
        p1.book("fut_order_book", s).changed(BookState.SYNCED, "synced", clock())
    p0.book("spot_order_book", "BTCUSDT").changed(BookState.SYNCED, "synced", clock())
    p0.connection("binance_futures", ("BTCUSDT", "ETHUSDT")).connected()
    p1.connection("binance_spot", ("BTCUSDT",)).connected()
    p0.sink("redis:fut").up()
    p1.sink("redis:fut")
    return p0, p1


def test_reports_of_several_processes_are_merged():
    clock = Clock()
    p0, p1 = process_reports(clock)
    ok, body = ready(EXPECT, merge({0: p0.snapshot(), 1: p1.snapshot()}, clock()))
    assert ok, body["not_ready"]
    assert body["pipelines"]["fut"]["symbols"]["ETHUSDT"] | {"last_update_age_s": None} == {
        "ready": True,
        "book": "synced",
        "connected": True,
        "last_update_id": None,
        "last_update_age_s": None,
        "lag_s": None,
    }


def test_a_stale_or_missing_report_is_a_process_that_is_not_ready():
    clock = Clock()
    p0, p1 = process_reports(clock)
    old = p1.snapshot()
    clock.t += 10
    ok, body = ready(EXPECT, merge({0: p0.snapshot(), 1: old}, clock(), stale_after_s=3.0))
    assert not ok
    assert {"process": 1, "reason": "no report for 10.0 s (stopped or frozen)"} in body["not_ready"]
    # Its books are gone with it.
    assert {"pipeline": "fut", "symbol": "ETHUSDT", "reason": "awaiting snapshot"} in body[
        "not_ready"
    ]
    ok, body = ready(EXPECT, merge({0: p0.snapshot(), 1: None}, clock()))
    assert {"process": 1, "reason": "no report yet"} in body["not_ready"]


# -- /health -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connected", "received", "processed", "now", "stalled"),
    [
        (True, T0 + 1, T0 + 2, T0 + 100, False),  # a quiet exchange: nothing left unprocessed
        (True, T0 + 5, T0 + 2, T0 + 20, False),  # behind, but not for long
        (True, T0 + 50, T0 + 2, T0 + 40, True),  # received, nothing processed for 38 s
        (False, T0 + 50, T0 + 2, T0 + 40, False),  # not connected: not a stall
        (True, T0 + 50, None, T0 + 40, True),  # received but never processed since the start
        (True, None, None, T0 + 100, False),  # connected, nothing ever received
    ],
)
def test_a_process_stalls_when_frames_wait_unprocessed_too_long(
    connected, received, processed, now, stalled
):
    clock = Clock()
    state = make_state(clock)
    if connected:
        state.connection("binance_futures", ("BTCUSDT",)).connected()
    state.received_at, state.processed_at = received, processed
    clock.t = now
    ok, body = health(EXPECT, merge({0: state.snapshot()}, now), started_at=T0)
    assert ok is not stalled
    assert body["status"] == ("unhealthy" if stalled else "healthy")
    if stalled:
        assert "stalled" in body["problems"][0]


def test_health_body_names_service_version_and_summarises_pipelines():
    from market_data import __version__

    clock = Clock()
    state = make_state(clock)
    all_good(state, clock)
    ok, body = health(EXPECT, merge({0: state.snapshot()}, clock()), started_at=T0)
    assert ok
    assert (body["status"], body["service"], body["version"]) == (
        "healthy",
        "market-data",
        __version__,
    )
    assert body["pipelines"]["fut"] == {
        "symbols": 2,
        "synced": 2,
        "connected": 2,
        "sinks": {"redis:fut": "up"},
    }


def test_a_process_that_never_reports_is_unhealthy_only_after_a_grace_period():
    clock = Clock()
    state = make_state(clock)
    reports = {0: state.snapshot(), 1: None}
    assert health(EXPECT, merge(reports, T0 + 1), started_at=T0)[0]
    ok, body = health(
        EXPECT,
        merge(reports | {0: state.snapshot() | {"written_at": T0 + 31}}, T0 + 31),
        started_at=T0,
    )
    assert not ok and body["problems"] == ["process 1: no report yet"]


@pytest.mark.parametrize(
    ("published_at", "event_s", "problem"),
    [
        (99.5, 99.4, None),  # half a second ago, 0.1 s after the exchange's event
        (85.0, 84.9, "stale: no book published for 15.0 s (max_book_age_s 10)"),
        (99.5, 96.5, "lagging: the last book was published 3.0 s after the exchange's event"),
    ],
)
def test_a_synced_book_that_stopped_or_lags_is_not_ready(
    published_at: float, event_s: float, problem: str | None
) -> None:
    book = {
        "state": "synced",
        "reason": "",
        "last_update_at": published_at,
        "last_event_ms": int(event_s * 1000),
    }
    found = report.book_problem(book, 100.0, max_age_s=10.0, max_lag_s=2.0)
    assert (found is None) if problem is None else (found or "").startswith(problem)
    assert report.book_problem(book, 100.0) is None  # both checks off
