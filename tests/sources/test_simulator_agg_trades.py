"""The simulator's REST aggTrades (``GET /fapi/v1/aggTrades``, ``/api/v3/aggTrades``).

Binance's documented semantics: ``fromId`` inclusive, ``startTime``/``endTime`` inclusive and at
most an hour apart, ``limit`` 500 by default and 1000 at most, the most recent trades without
``fromId`` or ``startTime``; weight 20 on futures and 4 on spot; the usual error bodies.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from market_data.events import Market
from sources.simulator import Simulator, SimulatorConfig
from sources.simulator.market import Fill
from tests.sources.test_simulator import get, units

FUTURES_REST_KEYS = ["a", "p", "q", "f", "l", "T", "m"]


def wait_for_trades(sim: Simulator, symbol: str, n: int, timeout_s: float = 10.0) -> list[Fill]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fills = sim.trades(symbol)
        if len(fills) >= n:
            return fills
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} trades after {timeout_s} s")


def as_fill(item: dict[str, Any]) -> Fill:
    return Fill(
        item["a"], units(item["p"]), units(item["q"]), item["f"], item["l"], item["T"], item["m"]
    )


@pytest.fixture(scope="module")
def sim() -> Any:
    # Every update trades: over a thousand aggTrades a second.
    config = SimulatorConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=1000, trade_probability=1.0)
    with Simulator(config) as s:
        wait_for_trades(s, "BTCUSDT", 2500)
        yield s


def test_from_id_is_inclusive_in_id_order_and_matches_what_was_pushed(sim: Any) -> None:
    fills = sim.trades("BTCUSDT")
    start = fills[100].agg_id
    status, _, body = get(sim.agg_trades_url("BTCUSDT", fromId=start, limit=50))
    assert status == 200
    assert all(list(item) == FUTURES_REST_KEYS for item in body)
    assert [as_fill(item) for item in body] == fills[100:150]


def test_limit_defaults_to_500_and_is_capped_at_1000(sim: Any) -> None:
    first = sim.trades("BTCUSDT")[0].agg_id
    assert len(get(sim.agg_trades_url("BTCUSDT", fromId=first))[2]) == 500
    assert len(get(sim.agg_trades_url("BTCUSDT", fromId=first, limit=5000))[2]) == 1000
    assert len(get(sim.agg_trades_url("BTCUSDT", fromId=first, limit=1))[2]) == 1


def test_without_from_id_the_most_recent_and_past_the_newest_nothing(sim: Any) -> None:
    status, _, body = get(sim.agg_trades_url("ETHUSDT", limit=20))
    after = sim.trades("ETHUSDT")
    ids = [item["a"] for item in body]
    assert status == 200 and ids == list(range(ids[0], ids[0] + 20))
    assert ids[-1] in {f.agg_id for f in after[-200:]}, "among the newest"
    assert get(sim.agg_trades_url("ETHUSDT", fromId=after[-1].agg_id + 10**6))[2] == []


def test_time_window_is_inclusive_and_at_most_an_hour(sim: Any) -> None:
    fills = sim.trades("BTCUSDT")
    t0, t1 = fills[200].time_ms, fills[600].time_ms
    status, _, body = get(sim.agg_trades_url("BTCUSDT", startTime=t0, endTime=t1, limit=1000))
    expected = [f for f in fills if t0 <= f.time_ms <= t1][:1000]
    assert status == 200 and [as_fill(item) for item in body] == expected
    assert body[0]["T"] == t0 and body[-1]["T"] == t1
    status, _, body = get(sim.agg_trades_url("BTCUSDT", startTime=t0, endTime=t0 + 3_600_001))
    assert (status, body["code"]) == (400, -1127)


def test_weight_and_errors(sim: Any) -> None:
    _, headers, _ = get(sim.agg_trades_url("BTCUSDT", limit=1))
    used = int(headers["X-MBX-USED-WEIGHT-1M"])
    _, headers, _ = get(sim.agg_trades_url("BTCUSDT", limit=1000))
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) in (used + 20, 20)  # 20: a new minute began
    assert get(sim.agg_trades_url("NOPEUSDT"))[0::2] == (
        400,
        {"code": -1121, "msg": "Invalid symbol."},
    )
    status, _, body = get(f"{sim.rest_url}/fapi/v1/aggTrades?fromId=1")
    assert (status, body["code"]) == (400, -1102)
    status, _, body = get(f"{sim.rest_url}/fapi/v1/aggTrades?symbol=BTCUSDT&fromId=-1")
    assert (status, body["code"]) == (400, -1100) and "'fromId'" in body["msg"]
    status, _, body = get(f"{sim.rest_url}/fapi/v1/aggTrades?symbol=BTCUSDT&limit=0")
    assert (status, body["code"]) == (400, -1130)
    assert get(f"{sim.rest_url}/api/v3/aggTrades?symbol=BTCUSDT")[0] == 404  # a futures exchange


def test_delay_fault_answers_late(sim: Any) -> None:
    sim.set_faults(agg_trades_delay=0.4)
    try:
        started = time.monotonic()
        assert get(sim.agg_trades_url("BTCUSDT", limit=1))[0] == 200
        assert time.monotonic() - started >= 0.4
    finally:
        sim.set_faults(agg_trades_delay=0.0)


def test_requests_over_the_weight_budget_get_429() -> None:
    config = SimulatorConfig(symbols=("BTCUSDT",), weight_budget=50, weight_window_s=60.0)
    with Simulator(config) as s:
        assert [get(s.agg_trades_url("BTCUSDT"))[0] for _ in range(2)] == [200, 200]
        status, headers, body = get(s.agg_trades_url("BTCUSDT"))
        assert (status, body["code"]) == (429, -1003) and int(headers["Retry-After"]) >= 1
        assert headers["X-MBX-USED-WEIGHT-1M"] == "40"


def test_spot_adds_best_match_and_weighs_4() -> None:
    config = SimulatorConfig(
        symbols=("BTCUSDT",), market=Market.SPOT, rate=500, trade_probability=1.0
    )
    with Simulator(config) as spot:
        fills = wait_for_trades(spot, "BTCUSDT", 20)
        status, headers, body = get(spot.agg_trades_url("BTCUSDT", fromId=fills[0].agg_id))
        assert status == 200 and spot.agg_trades_url("BTCUSDT").count("/api/v3/aggTrades") == 1
        assert all(list(item) == [*FUTURES_REST_KEYS, "M"] and item["M"] is True for item in body)
        assert [as_fill(item) for item in body[:20]] == fills[:20]
        assert headers["x-mbx-used-weight-1m"] == "4"
