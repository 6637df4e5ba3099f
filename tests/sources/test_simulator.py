"""The Binance simulator: its pure parts, then its servers over loopback.

Network tests use ``websocket-client`` and ``urllib.request`` like a real client would, and check
the client-visible contract: routes, shapes, ids, the documented snapshot+delta procedure against
the simulator's own book, faults, limits and pings.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
import websocket
from websocket import ABNF

from market_data import ConfigError
from market_data.events import SCALE, Market
from sources.simulator import (
    FaultConfig,
    Simulator,
    SimulatorConfig,
    SimulatorError,
    parse_faults,
)
from sources.simulator.exchange import Exchange, Frame
from sources.simulator.faults import Malformed, break_frame, frame_action
from sources.simulator.limits import MessageRate, WeightLimiter, futures_depth_weight
from sources.simulator.market import BookHistory, MarketModel, default_spec, fmt
from sources.simulator.streams import (
    GENERATED,
    Kind,
    Route,
    delivered,
    depth_speeds,
    parse_path,
    parse_stream,
)
from tests.reference import FUTURES, SPOT, RefBook

FUTURES_DEPTH_KEYS = ["e", "E", "T", "s", "U", "u", "pu", "b", "a"]
SPOT_DEPTH_KEYS = ["e", "E", "s", "U", "u", "b", "a"]
FUTURES_AGG_KEYS = ["e", "E", "a", "s", "p", "q", "f", "l", "T", "m"]
SPOT_AGG_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]


def units(text: str) -> int:
    value = Decimal(text) * SCALE
    assert value == int(value), text
    return int(value)


def levels_in_units(levels: list[tuple[Decimal, Decimal]]) -> tuple[tuple[int, int], ...]:
    return tuple((int(p * SCALE), int(q * SCALE)) for p, q in levels)


# -- pure parts -------------------------------------------------------------------------------


def test_model_is_deterministic_per_seed_and_symbol() -> None:
    def run(seed: int, symbol: str) -> list[Any]:
        model = MarketModel(default_spec(symbol), seed)
        return [model.next_update(i) for i in range(300)]

    assert run(7, "BTCUSDT") == run(7, "BTCUSDT")
    assert run(7, "BTCUSDT") != run(8, "BTCUSDT")
    assert run(7, "BTCUSDT")[0].bids != run(7, "ETHUSDT")[0].bids


@pytest.mark.parametrize("market", [Market.FUTURES, Market.SPOT])
def test_model_book_is_realistic(market: Market) -> None:
    spec = default_spec("BTCUSDT")
    model = MarketModel(spec, 3, market)
    sizes, deletions, changes, traded = [], 0, 0, 0
    last_id = model.last_update_id
    for i in range(3000):
        bid_before, ask_before = model.best_bid(), model.best_ask()
        upd = model.next_update(i)
        if market is Market.SPOT:
            assert upd.update_id == last_id + 1
        else:
            assert upd.update_id > last_id
        last_id = upd.update_id
        levels = upd.bids + upd.asks
        sizes.append(len(levels))
        changes += len(levels)
        deletions += sum(1 for _, q in levels if q == 0)
        assert all(p % spec.tick == 0 and q % spec.lot == 0 for p, q in levels)
        assert model.best_bid()[0] < model.best_ask()[0], "crossed book"
        if upd.fills:
            traded += 1
            first = upd.fills[0]
            touch = bid_before if first.is_buyer_maker else ask_before
            assert first.price == touch[0], "a taker trade starts at the touch"
            assert first.quantity <= touch[1]
    assert min(sizes) >= 1 and max(sizes) <= 40
    assert 0.05 < deletions / changes < 0.2
    assert traded > 50
    assert 950 <= len(model.bids) <= 1100 and 950 <= len(model.asks) <= 1100


def test_history_rebuilds_past_books_and_refuses_unknown_ids() -> None:
    model = MarketModel(default_spec("ETHUSDT"), 5)
    history = BookHistory(model, max_updates=2500)
    seen = {}
    for i in range(4000):
        upd = model.next_update(i)
        history.record(upd)
        if i % 397 == 0:
            seen[upd.update_id] = model.top(50)
    for uid, (bids, asks) in seen.items():
        if uid < history.first_id:
            with pytest.raises(SimulatorError, match="older than the history"):
                history.book_at(uid, 50)
        else:
            book = history.book_at(uid, 50)
            assert (book.last_update_id, book.bids, book.asks) == (uid, bids, asks)
            # an id between two updates gives the book after the earlier one
            assert history.book_at(uid + 1, 50).bids in (bids, history.book_at(uid + 1, 50).bids)
    with pytest.raises(SimulatorError, match="not happened yet"):
        history.book_at(model.last_update_id + 1_000, 5)


def test_fmt_prints_fixed_decimals() -> None:
    assert fmt(761_100_000, 4) == "7.6110"
    assert fmt(6_500_010_000_000, 2) == "65000.10"
    assert fmt(100_000, 3) == "0.001"
    assert fmt(81_300_000_000, 0) == "813"
    with pytest.raises(ValueError):
        fmt(123, 2)


def test_faults_parse_and_validate() -> None:
    cfg = parse_faults("gaps=0.01, disconnect=0.001,snapshot_lag=50,snapshot_delay=2,429=0.5")
    assert cfg == FaultConfig(
        gap=0.01, disconnect=0.001, snapshot_lag=50, snapshot_delay_s=2.0, snapshot_429=0.5
    )
    with pytest.raises(ConfigError) as err:
        parse_faults("nope=1,gap=x,lonely")
    assert "unknown fault 'nope'" in str(err.value)
    assert "expected a number" in str(err.value)
    assert "expected name=value" in str(err.value)
    with pytest.raises(ConfigError, match="probability"):
        FaultConfig(gap=1.5)


def test_frame_action_is_off_by_default_and_reproducible() -> None:
    import random

    off = FaultConfig()
    rng = random.Random(1)
    assert all(frame_action(off, rng, True) == frame_action(off, rng, True) for _ in range(100))
    on = FaultConfig(gap=0.3, duplicate=0.3, malformed=0.3, unknown_event=0.3)
    first = [frame_action(on, random.Random(9), True) for _ in range(1)]
    again = [frame_action(on, random.Random(9), True) for _ in range(1)]
    assert first == again
    acts = [frame_action(on, rng, depth=False) for _ in range(500)]
    assert not any(a.drop for a in acts), "only depth frames are dropped"
    assert any(a.duplicate for a in acts) and any(a.malformed for a in acts)
    for kind in Malformed:
        with pytest.raises(json.JSONDecodeError):
            json.loads(break_frame('{"stream":"a","data":{"e":"x"}}', kind))


def test_weight_limiter_429_then_418_then_new_window() -> None:
    lim = WeightLimiter(budget=50, window_s=60, ban_after_429=1, ban_s=120)
    assert lim.check("ip", 20, 0.0).status == 200
    assert lim.check("ip", 20, 1.0).used_weight == 40
    refused = lim.check("ip", 20, 2.0)
    assert (refused.status, refused.used_weight, refused.retry_after_s) == (429, 40, 58)
    banned = lim.check("ip", 20, 3.0)
    assert (banned.status, banned.retry_after_s) == (418, 120)
    assert lim.check("ip", 1, 61.0).status == 418, "a ban outlasts the window"
    assert lim.check("ip", 20, 125.0).status == 200
    assert lim.check("other", 20, 3.0).status == 200, "limits are per client address"
    assert [futures_depth_weight(n) for n in (5, 50, 100, 500, 1000)] == [2, 2, 5, 10, 20]


def test_weight_limiter_counts_requests_sent_inside_a_retry_after() -> None:
    lim = WeightLimiter(budget=50, window_s=60, ban_after_429=1, ban_s=120)
    assert not lim.arrive("ip", 0.0)
    assert lim.check("ip", 40, 0.0).status == 200
    assert not lim.arrive("ip", 10.0)
    refused = lim.check("ip", 20, 10.0)
    assert (refused.status, refused.retry_after_s) == (429, 50)
    assert lim.arrive("ip", 11.0), "asked again 1 s into a 50 s Retry-After"
    assert lim.check("ip", 20, 11.0).status == 418  # the ban, with its own Retry-After
    assert lim.arrive("ip", 130.0), "the ban's 120 s had not passed"
    assert lim.check("ip", 1, 130.0).status == 418  # still banned
    assert not lim.arrive("ip", 131.0 + 120), "waited the last Retry-After it was given"
    assert lim.ignored_retry_after("ip") == 2
    assert not lim.arrive("other", 11.0) and lim.ignored_retry_after("other") == 0
    # A refusal made outside the limiter (the injected snapshot 429) counts the same.
    lim.told_to_wait("other", 1, 20.0)
    assert lim.arrive("other", 20.5) and not lim.arrive("other", 21.0)
    assert lim.ignored_retry_after("other") == 1


def test_message_rate_counts_the_last_second() -> None:
    rate = MessageRate(10)
    assert all(rate.allow(0.05 * i) for i in range(10))
    assert not rate.allow(0.5)
    assert MessageRate(10).allow(0.0)


def test_streams_routes_and_paths() -> None:
    fut, spot = Market.FUTURES, Market.SPOT
    depth = parse_stream("btcusdt@depth@100ms", fut)
    assert depth is not None and (depth.symbol, depth.kind, depth.speed_ms) == (
        "BTCUSDT",
        Kind.DEPTH,
        100,
    )
    assert parse_stream("btcusdt@depth", fut).speed_ms == 250  # type: ignore[union-attr]
    assert parse_stream("btcusdt@depth", spot).speed_ms == 1000  # type: ignore[union-attr]
    assert parse_stream("BTCUSDT@depth", fut) is None, "stream names are lower case"
    assert parse_stream("btcusdt@depth@250ms", fut) is None
    agg = parse_stream("btcusdt@aggTrade", fut)
    assert agg is not None
    assert delivered(agg, Route.MARKET, fut, False)
    assert not delivered(agg, Route.PUBLIC, fut, False)
    assert not delivered(agg, Route.LEGACY, fut, False)
    assert delivered(agg, Route.LEGACY, fut, True)
    assert delivered(agg, Route.LEGACY, spot, False)
    assert parse_path("/public/stream?streams=a@depth/b@depth", fut).streams == (  # type: ignore[union-attr]
        "a@depth",
        "b@depth",
    )
    assert parse_path("/public/ws", spot) is None
    assert parse_path("/private/ws", fut) is None


def test_partial_depth_stream_names() -> None:
    fut, spot = Market.FUTURES, Market.SPOT
    assert Kind.PARTIAL_DEPTH in GENERATED
    for name, market, levels, speed in [
        ("btcusdt@depth5", fut, 5, 250),
        ("btcusdt@depth10@100ms", fut, 10, 100),
        ("btcusdt@depth20@500ms", fut, 20, 500),
        ("btcusdt@depth20", spot, 20, 1000),
        ("btcusdt@depth5@100ms", spot, 5, 100),
    ]:
        stream = parse_stream(name, market)
        assert stream is not None, name
        assert (stream.kind, stream.levels, stream.speed_ms) == (Kind.PARTIAL_DEPTH, levels, speed)
    for name, market in [
        ("btcusdt@depth5@500ms", spot),
        ("btcusdt@depth15", fut),
        ("btcusdt@depth5@250ms", fut),
        ("btcusdt@depth5@", fut),
    ]:
        assert parse_stream(name, market) is None, name
    partial = parse_stream("btcusdt@depth5", fut)
    assert partial is not None
    assert delivered(partial, Route.PUBLIC, fut, False)
    assert not delivered(partial, Route.MARKET, fut, False)
    assert delivered(partial, Route.LEGACY, spot, False)


def check_partial_frames(
    ex: Exchange, frames: list[Frame], last_u: dict[str, int], diff_listened: bool = True
) -> None:
    """Check every partial depth frame of one tick.

    Each holds the simulator's book as of its ``u``; its ``pu`` is the ``u`` of the stream's
    frame before (``last_u`` carries them from tick to tick). With ``diff_listened``, each comes
    right after its symbol's diff. frame of the same speed (or another partial frame of it),
    with the same ids.
    """
    futures = ex.market is Market.FUTURES
    streams = [parse_stream(f.stream, ex.market) for f in frames]
    for k, (frame, stream) in enumerate(zip(frames, streams, strict=True)):
        assert stream is not None
        if stream.kind is not Kind.PARTIAL_DEPTH:
            continue
        assert not frame.depth, "a gap fault drops diff. depth frames only"
        data = json.loads(frame.data)
        if futures:
            assert list(data) == FUTURES_DEPTH_KEYS
            assert data["pu"] == last_u.get(frame.stream, data["pu"]), "pu chains"
            u, bids, asks, decimals = data["u"], data["b"], data["a"], (2, 3)
        else:
            assert list(data) == ["lastUpdateId", "bids", "asks"]
            u, bids, asks, decimals = data["lastUpdateId"], data["bids"], data["asks"], (8, 8)
        last_u[frame.stream] = u
        if diff_listened:
            j = k - 1
            same = (stream.symbol, stream.speed_ms)
            while (kind := streams[j]) and kind.kind is Kind.PARTIAL_DEPTH:
                assert (kind.symbol, kind.speed_ms) == same
                j -= 1
            diff_stream = streams[j]
            assert diff_stream is not None and diff_stream.kind is Kind.DEPTH
            assert (diff_stream.symbol, diff_stream.speed_ms) == same
            diff = json.loads(frames[j].data)
            assert u == diff["u"]
            if futures:
                keys = ["E", "T", "s", "U", "u", "pu"]
                assert [data[key] for key in keys] == [diff[key] for key in keys]
        book = ex.book_at(stream.symbol, u, stream.levels)
        assert len(bids) == len(asks) == stream.levels
        assert tuple((units(p), units(q)) for p, q in bids) == book.bids
        assert tuple((units(p), units(q)) for p, q in asks) == book.asks
        for price, qty in bids + asks:
            assert re.fullmatch(rf"\d+\.\d{{{decimals[0]}}}", price)
            assert re.fullmatch(rf"\d+\.\d{{{decimals[1]}}}", qty)


@pytest.mark.parametrize("market", [Market.FUTURES, Market.SPOT])
def test_partial_depth_frames_follow_the_diff_frame_with_the_top_levels(market: Market) -> None:
    # ETHUSDT trades rarely: some intervals have no update, hence neither frame.
    config = SimulatorConfig(
        symbols=("BTCUSDT", "ETHUSDT"), market=market, rate=300, rates={"ETHUSDT": 6}
    )
    ex = Exchange(config)
    last_u: dict[str, int] = {}
    counts: dict[tuple[str, str], int] = {}
    for i in range(1, 81):  # 4 s
        frames = ex.tick(i * 50)  # every stream
        check_partial_frames(ex, frames, last_u)
        for frame in frames:
            stream = parse_stream(frame.stream, market)
            assert stream is not None
            if stream.kind in (Kind.DEPTH, Kind.PARTIAL_DEPTH):
                key = (frame.symbol, f"{stream.speed_ms}:{stream.levels}")
                counts[key] = counts.get(key, 0) + 1
    for sym in ("BTCUSDT", "ETHUSDT"):
        for speed in depth_speeds(market).values():
            diffs = counts.get((sym, f"{speed}:0"), 0)
            assert diffs > 0
            for n in (5, 10, 20):
                assert counts.get((sym, f"{speed}:{n}"), 0) == diffs, "one per diff. frame"
    assert counts["ETHUSDT", "100:0"] < 40, "quiet intervals push nothing"


def test_partial_depth_frames_are_made_for_listeners_only() -> None:
    ex = Exchange(SimulatorConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=300))
    last_u: dict[str, int] = {}
    listened = {"btcusdt@depth5@500ms", "ethusdt@depth@100ms"}
    streams = set()
    for i in range(1, 41):
        frames = ex.tick(i * 50, listened)
        streams |= {f.stream for f in frames}
        check_partial_frames(ex, frames, last_u, diff_listened=False)
    assert streams == listened
    assert list(last_u) == ["btcusdt@depth5@500ms"]


def test_partial_depth_frames_in_the_load_test_mode_cover_their_interval() -> None:
    config = SimulatorConfig(
        symbols=("BTCUSDT",), rate=2000, tick_ms=5, depth_frame_per_update=True
    )
    ex = Exchange(config)
    diffs: list[dict[str, Any]] = []
    partials: list[dict[str, Any]] = []
    listened = {"btcusdt@depth@100ms", "btcusdt@depth10@100ms"}
    for i in range(1, 101):  # 0.5 s
        frames = ex.tick(i * 5, listened)
        for frame in frames:
            data = json.loads(frame.data)
            if frame.stream == "btcusdt@depth10@100ms":
                assert i % 20 == 0, "at the 100 ms interval's end only"
                assert data["u"] == ex.last_update_id("BTCUSDT") == diffs[-1]["u"]
                first = next(d for d in diffs if d["U"] > (partials[-1]["u"] if partials else 0))
                assert data["U"] == first["U"] and data["pu"] == first["pu"]
                book = ex.book_at("BTCUSDT", data["u"], 10)
                assert tuple((units(p), units(q)) for p, q in data["b"]) == book.bids
                assert tuple((units(p), units(q)) for p, q in data["a"]) == book.asks
                partials.append(data)
            else:
                diffs.append(data)
    assert len(partials) == 5 and len(diffs) > 900
    for prev, cur in itertools.pairwise(partials):
        assert cur["pu"] == prev["u"]


# -- the servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Any:
    config = SimulatorConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=400, rates={"ETHUSDT": 150})
    with Simulator(config) as s:
        yield s


def connect(url: str, timeout: float = 2.0) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=timeout)


def collect(ws: websocket.WebSocket, seconds: float) -> list[str]:
    """Every text frame received for ``seconds``."""
    out: list[str] = []
    timeout = ws.gettimeout()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            out.append(str(ws.recv()))
        except websocket.WebSocketTimeoutException:
            break
    ws.settimeout(timeout)
    return out


def until(ws: websocket.WebSocket, pred: Any, seconds: float = 3.0) -> dict[str, Any]:
    """The first JSON message matching ``pred``."""
    timeout = ws.gettimeout()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            ws.settimeout(left)
            msg = json.loads(ws.recv())
            if pred(msg):
                return msg
    finally:
        ws.settimeout(timeout)
    raise AssertionError("no matching message")


def get(url: str, timeout: float = 3.0) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_public_combined_delivers_depth_and_book_ticker_not_market_streams(sim: Any) -> None:
    ws = connect(sim.stream_url(["btcusdt@depth@100ms", "btcusdt@bookTicker", "btcusdt@aggTrade"]))
    frames = [json.loads(t) for t in collect(ws, 0.6)]
    ws.close()
    streams = {f["stream"] for f in frames}
    assert streams == {"btcusdt@depth@100ms", "btcusdt@bookTicker"}, "aggTrade lives on /market"
    depth = [f["data"] for f in frames if f["stream"] == "btcusdt@depth@100ms"]
    assert len(depth) >= 3
    for d in depth:
        assert list(d) == FUTURES_DEPTH_KEYS
        assert d["e"] == "depthUpdate" and d["s"] == "BTCUSDT" and d["U"] <= d["u"]
        assert d["T"] <= d["E"]
        for price, qty in d["b"] + d["a"]:
            assert re.fullmatch(r"\d+\.\d{2}", price) and re.fullmatch(r"\d+\.\d{3}", qty)
    for prev, cur in itertools.pairwise(depth):
        assert cur["pu"] == prev["u"]
    assert any(cur["U"] > prev["u"] + 1 for prev, cur in itertools.pairwise(depth)), (
        "futures ids skip between frames"
    )
    ticker = next(f["data"] for f in frames if f["stream"] == "btcusdt@bookTicker")
    assert list(ticker) == ["e", "u", "s", "b", "B", "a", "A", "T", "E"]


def test_public_raw_mode_sends_bare_payloads(sim: Any) -> None:
    ws = connect(sim.stream_url(["ethusdt@depth"], combined=False))
    msg = json.loads(ws.recv())
    ws.close()
    assert list(msg) == FUTURES_DEPTH_KEYS and msg["s"] == "ETHUSDT"


def test_market_route_delivers_trades_that_match_the_simulator(sim: Any) -> None:
    ws = connect(sim.stream_url(["btcusdt@aggTrade", "btcusdt@depth@100ms"], "market", False))
    got = [json.loads(t) for t in collect(ws, 0.8)]
    ws.close()
    assert got and all(list(t) == FUTURES_AGG_KEYS for t in got), "no depth on /market"
    published = {f.agg_id: f for f in sim.trades("BTCUSDT")}
    ids = [t["a"] for t in got]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "aggregate trade ids are contiguous"
    for t in got:
        fill = published[t["a"]]
        assert (units(t["p"]), units(t["q"]), t["f"], t["l"], t["T"], t["m"]) == (
            fill.price,
            fill.quantity,
            fill.first_trade_id,
            fill.last_trade_id,
            fill.time_ms,
            fill.is_buyer_maker,
        )
        assert re.fullmatch(r"\d+\.\d{2}", t["p"]) and re.fullmatch(r"\d+\.\d{3}", t["q"])


def test_market_route_combined_mode(sim: Any) -> None:
    ws = connect(sim.stream_url(["btcusdt@markPrice@1s", "ethusdt@aggTrade"], "market"))
    mark = until(ws, lambda m: m["stream"] == "btcusdt@markPrice@1s")["data"]
    trade = until(ws, lambda m: m["stream"] == "ethusdt@aggTrade")["data"]
    ws.close()
    assert mark["e"] == "markPriceUpdate" and mark["s"] == "BTCUSDT"
    assert list(trade) == FUTURES_AGG_KEYS and trade["s"] == "ETHUSDT"


@pytest.mark.parametrize("combined", [True, False])
def test_legacy_paths_acknowledge_but_stay_silent(sim: Any, combined: bool) -> None:
    ws = connect(sim.stream_url(["btcusdt@depth@100ms", "btcusdt@aggTrade"], "", combined))
    ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@depth@100ms"], "id": 7}))
    frames = collect(ws, 0.5)
    ws.close()
    assert [json.loads(f) for f in frames] == [{"result": None, "id": 7}]


def test_unknown_paths_are_refused(sim: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        connect(f"{sim.ws_url}/private/ws/btcusdt@depth")
    assert err.value.status_code == 404


def test_live_subscribe_list_unsubscribe_and_properties(sim: Any) -> None:
    ws = connect(f"{sim.ws_url}/public/ws")
    ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}))
    assert json.loads(ws.recv()) == {"result": None, "id": 1}
    assert until(ws, lambda m: m.get("e") == "depthUpdate")["s"] == "BTCUSDT"
    ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
    assert until(ws, lambda m: m.get("id") == 2) == {"result": ["btcusdt@depth@100ms"], "id": 2}
    ws.send(json.dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": 3}))
    assert until(ws, lambda m: m.get("id") == 3) == {"result": False, "id": 3}
    ws.send(json.dumps({"method": "SET_PROPERTY", "params": ["combined", True], "id": 4}))
    assert until(ws, lambda m: m.get("id") == 4) == {"result": None, "id": 4}
    assert until(ws, lambda m: "stream" in m)["stream"] == "btcusdt@depth@100ms"
    ws.send(json.dumps({"method": "FOO", "id": 5}))
    err = until(ws, lambda m: m.get("id") == 5)
    assert err["code"] == 2 and "unknown variant" in err["msg"]
    ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 6}))
    assert until(ws, lambda m: m.get("id") == 6) == {"result": None, "id": 6}
    collect(ws, 0.15)  # frames already on their way
    assert collect(ws, 0.4) == []
    ws.close()


def sync_and_check(
    sim: Simulator, symbol: str, ws: websocket.WebSocket, market: str, seconds: float
) -> RefBook:
    """Binance's documented procedure, step by step, checked against ``sim.book_at``."""
    book = RefBook(market)
    buffered = 0
    while buffered < 3:  # buffer a few events before the snapshot, as the documentation says
        data = json.loads(ws.recv())["data"]
        if data.get("e") == "depthUpdate":
            book.delta(data)
            buffered += 1
    status, _, body = get(sim.depth_url(symbol, 1000))
    assert status == 200
    book.snapshot(body)
    checked = 0
    for text in collect(ws, seconds):
        data = json.loads(text)["data"]
        if data.get("e") != "depthUpdate":
            continue
        before = book.applied
        book.delta(data)
        if book.applied > before and book.synced:
            expect = sim.book_at(symbol, book.last_id, 50)  # type: ignore[arg-type]
            bids, asks = book.top(50)
            assert (levels_in_units(bids), levels_in_units(asks)) == (expect.bids, expect.asks)
            checked += 1
    assert book.breaks == 0 and book.synced
    assert checked >= 3
    return book


def test_snapshot_plus_deltas_reproduce_the_simulator_book_futures(sim: Any) -> None:
    ws = connect(sim.stream_url(["btcusdt@depth@100ms"]))
    book = sync_and_check(sim, "BTCUSDT", ws, FUTURES, 0.8)
    ws.close()
    bids, asks = book.top(1000)
    expect = sim.book_at("BTCUSDT", book.last_id, 1000)
    assert len(expect.bids) >= 900
    # Deep levels too: everything the 1000-level snapshot covered still matches.
    assert levels_in_units(bids)[:800] == expect.bids[:800]
    assert levels_in_units(asks)[:800] == expect.asks[:800]


def test_frame_per_update_mode_sends_each_update_as_a_chained_frame() -> None:
    config = SimulatorConfig(
        symbols=("BTCUSDT",), rate=2000, tick_ms=5, depth_frame_per_update=True
    )
    with Simulator(config) as s:
        ws = connect(s.stream_url(["btcusdt@depth@100ms"]))
        book = sync_and_check(s, "BTCUSDT", ws, FUTURES, 0.5)
        frames = [json.loads(t)["data"] for t in collect(ws, 0.3)]
        ws.close()
        traffic = s.traffic()
    assert book.applied >= 100, "about 2,000 frames a second, not 10"
    assert all(d["U"] == d["u"] for d in frames), "one update per frame"
    for prev, cur in itertools.pairwise(frames):
        assert cur["pu"] == prev["u"]
    assert traffic["frames_sent"] >= book.applied + len(frames)
    assert traffic["depth_frames_queued"] >= traffic["frames_sent"]


def test_rest_depth_shape_weight_and_errors(sim: Any) -> None:
    status, headers, body = get(sim.depth_url("ETHUSDT", 5))
    assert status == 200
    assert list(body) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert len(body["bids"]) == len(body["asks"]) == 5
    assert units(body["bids"][0][0]) < units(body["asks"][0][0])
    used = int(headers["X-MBX-USED-WEIGHT-1M"])
    _, headers, _ = get(sim.depth_url("ETHUSDT", 1000))
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) in (used + 20, 20)  # 20: a new minute began
    assert get(sim.depth_url("NOPEUSDT"))[0::2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    status, _, body = get(f"{sim.rest_url}/fapi/v1/depth?limit=5")
    assert status == 400 and body["code"] == -1102
    assert get(f"{sim.rest_url}/fapi/v1/ping")[0::2] == (200, {})


def test_book_at_refuses_unknown_symbols(sim: Any) -> None:
    with pytest.raises(SimulatorError, match="unknown symbol"):
        sim.book_at("NOPEUSDT", 1)


def test_spot_variant() -> None:
    config = SimulatorConfig(symbols=("BTCUSDT",), market=Market.SPOT, rate=300)
    with Simulator(config) as spot:
        with pytest.raises(websocket.WebSocketBadStatusException):
            connect(spot.stream_url(["btcusdt@depth@100ms"], "public"))
        ws = connect(spot.stream_url(["btcusdt@depth@100ms", "btcusdt@aggTrade"], ""))
        frames = [json.loads(t)["data"] for t in collect(ws, 0.5)]
        depth = [d for d in frames if d.get("e") == "depthUpdate"]
        trades = [d for d in frames if d.get("e") == "aggTrade"]
        assert depth and trades
        assert all(list(d) == SPOT_DEPTH_KEYS for d in depth)
        assert all(list(t) == SPOT_AGG_KEYS for t in trades)
        for prev, cur in itertools.pairwise(depth):
            assert cur["U"] == prev["u"] + 1, "spot ids are contiguous"
        price, qty = depth[0]["b"][0] if depth[0]["b"] else depth[0]["a"][0]
        assert re.fullmatch(r"\d+\.\d{8}", price) and re.fullmatch(r"\d+\.\d{8}", qty)
        status, headers, body = get(spot.depth_url("BTCUSDT", 100))
        assert status == 200 and list(body) == ["lastUpdateId", "bids", "asks"]
        assert headers["x-mbx-used-weight-1m"] == "5"
        sync_and_check(spot, "BTCUSDT", ws, SPOT, 0.5)
        ws.close()


def test_public_route_delivers_enveloped_partial_depth_frames(sim: Any) -> None:
    ws = connect(sim.stream_url(["btcusdt@depth20@100ms"]))
    frames = [json.loads(t) for t in collect(ws, 0.6)]
    ws.close()
    assert len(frames) >= 3
    assert {f["stream"] for f in frames} == {"btcusdt@depth20@100ms"}
    for prev, cur in itertools.pairwise(f["data"] for f in frames):
        assert cur["pu"] == prev["u"]
    for frame in frames:
        data = frame["data"]
        assert list(data) == FUTURES_DEPTH_KEYS and data["s"] == "BTCUSDT"
        book = sim.book_at("BTCUSDT", data["u"], 20)
        assert tuple((units(p), units(q)) for p, q in data["b"]) == book.bids
        assert tuple((units(p), units(q)) for p, q in data["a"]) == book.asks
    ws = connect(sim.stream_url(["btcusdt@depth5"], "market"))
    assert collect(ws, 0.4) == [], "partial depth lives on /public"
    ws.close()


# -- faults -----------------------------------------------------------------------------------


@pytest.fixture
def fsim() -> Any:
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=300, seed=11)
    with Simulator(config) as s:
        yield s


def depth_frames(texts: list[str]) -> list[dict[str, Any]]:
    return [m["data"] for m in map(json.loads, texts) if m["data"].get("e") == "depthUpdate"]


def test_gap_fault_skips_frames_while_ids_advance(fsim: Any) -> None:
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    fsim.set_faults(gap=0.4)
    depth = depth_frames(collect(ws, 1.0))
    ws.close()
    breaks = [(p, c) for p, c in itertools.pairwise(depth) if c["pu"] != p["u"]]
    assert breaks and fsim.counts()["gap"] >= len(breaks)
    assert all(c["pu"] > p["u"] for p, c in breaks), "the missing frame's ids were used"


def test_duplicate_fault_sends_frames_twice(fsim: Any) -> None:
    fsim.set_faults(duplicate=0.5)
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    texts = collect(ws, 0.6)
    ws.close()
    assert any(a == b for a, b in itertools.pairwise(texts))
    assert fsim.counts()["duplicate"] > 0


def test_malformed_and_unknown_frames_are_extra(fsim: Any) -> None:
    fsim.faults = FaultConfig(malformed=0.4, unknown_event=0.4)
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    texts = collect(ws, 0.8)
    ws.close()
    good, bad = [], 0
    for text in texts:
        try:
            good.append(json.loads(text)["data"])
        except json.JSONDecodeError:
            bad += 1
    assert bad > 0
    assert any(d["e"] == "simUnknownEvent" for d in good)
    depth = [d for d in good if d["e"] == "depthUpdate"]
    assert all(c["pu"] == p["u"] for p, c in itertools.pairwise(depth)), "no data is lost"


def test_disconnect_fault_cuts_tcp_without_close_frame(fsim: Any) -> None:
    fsim.set_faults(disconnect=1.0)
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        for _ in range(50):
            opcode, _ = ws.recv_data(control_frame=True)
            assert opcode != ABNF.OPCODE_CLOSE, "an abrupt disconnect sends no close frame"
    assert fsim.counts()["disconnect"] >= 1
    fsim.set_faults(disconnect=0.0)
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    assert json.loads(ws.recv())["data"]["e"] == "depthUpdate", "switched off at runtime"
    fsim.disconnect_all()  # the same, on demand
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        for _ in range(50):
            assert ws.recv_data(control_frame=True)[0] != ABNF.OPCODE_CLOSE


def test_snapshot_faults_429_delay_and_lag(fsim: Any) -> None:
    fsim.set_faults(snapshot_429=1.0)
    status, headers, body = get(fsim.depth_url("BTCUSDT"))
    assert (status, headers["Retry-After"], body["code"]) == (429, "1", -1003)
    fsim.faults = FaultConfig(snapshot_delay_s=0.8)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        urllib.request.urlopen(fsim.depth_url("BTCUSDT"), timeout=0.2)
    fsim.faults = FaultConfig(snapshot_lag=200)
    ws = connect(fsim.stream_url(["btcusdt@depth@100ms"]))
    seen = json.loads(ws.recv())["data"]["u"]
    ws.close()
    status, _, body = get(fsim.depth_url("BTCUSDT", 20))
    assert status == 200
    assert body["lastUpdateId"] < seen, "the snapshot is older than what the stream showed"
    expect = fsim.book_at("BTCUSDT", body["lastUpdateId"], 20)
    assert tuple((units(p), units(q)) for p, q in body["bids"]) == expect.bids
    assert tuple((units(p), units(q)) for p, q in body["asks"]) == expect.asks
    counts = fsim.counts()
    assert counts["snapshot_429"] == 1 and counts["snapshot_delay"] == 1
    assert counts["snapshot_lag"] == 1


# -- limits -----------------------------------------------------------------------------------


def test_rest_weight_budget_gives_429_then_418() -> None:
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=10, weight_budget=50, ban_after_429=1)
    with Simulator(config, clock=lambda: 1_800_000_000.0) as s:  # a minute that never ends
        url = s.depth_url("BTCUSDT", 1000)
        assert [get(url)[1]["X-MBX-USED-WEIGHT-1M"] for _ in range(2)] == ["20", "40"]
        status, headers, body = get(url)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert headers["X-MBX-USED-WEIGHT-1M"] == "40" and body["code"] == -1003
        status, headers, body = get(url)
        assert status == 418 and int(headers["Retry-After"]) >= 60 and "banned" in body["msg"]
        assert s.counts()["rest_429"] == 1 and s.counts()["rest_418"] == 1


class FakeClock:
    """A wall clock that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rest_requests_inside_retry_after_are_counted() -> None:
    clock = FakeClock(1_800_000_000.0)  # the start of a minute
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=10, weight_budget=40, ban_after_429=1)
    with Simulator(config, clock=clock) as s:
        url = s.depth_url("BTCUSDT", 1000)  # weight 20
        assert [get(url)[0] for _ in range(2)] == [200, 200]
        status, headers, _ = get(url)
        assert (status, headers["Retry-After"]) == (429, "60")
        clock.now += 59
        assert get(url)[0] == 418, "one second too early: banned"
        assert s.counts()["rest_in_retry_after"] == 1
        assert get(f"{s.rest_url}/fapi/v1/ping")[0] == 418, "any request counts"
        assert s.counts()["rest_in_retry_after"] == 2
        clock.now += 120  # the ban's Retry-After, waited out
        assert get(url)[0] == 200
        assert s.counts()["rest_in_retry_after"] == 2


def test_rest_requests_that_wait_for_retry_after_are_not_counted() -> None:
    clock = FakeClock(1_800_000_030.0)  # half a minute in
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=10, weight_budget=40)
    with Simulator(config, clock=clock) as s:
        url = s.depth_url("BTCUSDT", 1000)
        assert [get(url)[0] for _ in range(2)] == [200, 200]
        status, headers, _ = get(url)
        assert status == 429
        clock.now += int(headers["Retry-After"])
        assert get(url)[0] == 200
        s.set_faults(snapshot_429=1.0)  # Retry-After: 1
        assert get(url)[0] == 429
        clock.now += 1
        s.set_faults(snapshot_429=0.0)
        assert get(url)[0] == 200
        counts = s.counts()
        assert counts["rest_in_retry_after"] == 0 and counts["rest_429"] == 2


def test_too_many_messages_disconnects() -> None:
    with Simulator(SimulatorConfig(rate=10, max_messages_per_s=10)) as s:
        ws = connect(f"{s.ws_url}/public/ws")
        for i in range(11):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        replies, closed = [], None
        while closed is None:
            opcode, data = ws.recv_data()
            if opcode == ABNF.OPCODE_CLOSE:
                closed = int.from_bytes(data[:2], "big")
            else:
                replies.append(json.loads(data))
        ws.shutdown()
        assert len(replies) == 10 and closed == 1008


def test_stream_count_limit() -> None:
    with Simulator(SimulatorConfig(rate=10, max_streams=3)) as s:
        names = [f"btcusdt@kline_{i}" for i in ("1m", "5m", "1h", "1d")]
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            connect(s.stream_url(names, "market"))
        assert err.value.status_code == 400
        ws = connect(s.stream_url(names[:3], "market"))
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": names[3:], "id": 1}))
        reply = json.loads(ws.recv())
        assert reply["code"] == 2 and reply["id"] == 1
        ws.close()


def test_connection_lifetime() -> None:
    with Simulator(SimulatorConfig(rate=10, max_lifetime_s=0.3)) as s:
        ws = connect(f"{s.ws_url}/public/ws")
        opcode, data = ws.recv_data()
        ws.shutdown()
        assert opcode == ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001


def test_server_pings_and_drops_clients_that_do_not_pong() -> None:
    config = SimulatorConfig(rate=10, ping_interval_s=0.2, pong_timeout_s=0.3)
    with Simulator(config) as s:
        lively = connect(f"{s.ws_url}/public/ws")
        silent = connect(f"{s.ws_url}/public/ws")
        opcodes = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            # websocket-client answers each ping with a pong inside recv_data
            opcodes.append(lively.recv_data(control_frame=True)[0])
        assert len(opcodes) >= 4 and set(opcodes) == {ABNF.OPCODE_PING}
        lively.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        assert json.loads(lively.recv()) == {"result": [], "id": 1}
        # The silent client never read, so never answered: the server has given up on it.
        silent.settimeout(2)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            for _ in range(20):
                opcode, data = silent.recv_data()
                if opcode == ABNF.OPCODE_CLOSE:
                    assert int.from_bytes(data[:2], "big") == 1011  # keepalive ping timeout
                    raise websocket.WebSocketConnectionClosedException("closed")
        silent.shutdown()
        lively.close()


def test_config_errors_are_listed_together() -> None:
    with pytest.raises(ConfigError) as err:
        SimulatorConfig(symbols=(), rate=0, tick_ms=30, rates={"ETHUSDT": 5}, max_backlog=0)
    text = str(err.value)
    assert "symbols" in text and "rate:" in text and "tick_ms" in text and "ETHUSDT" in text
    assert "max_backlog" in text


# -- CLI --------------------------------------------------------------------------------------


def test_cli_prints_urls_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sources.simulator",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--port",
            "0",
            "--rate",
            "50",
            "--faults",
            "duplicate=0.1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ws_line, rest_line = proc.stdout.readline().split(), proc.stdout.readline().split()
        assert ws_line[0] == "ws" and ws_line[1].startswith("ws://127.0.0.1:")
        assert rest_line[0] == "rest" and rest_line[1].startswith("http://127.0.0.1:")
        status, _, body = get(f"{rest_line[1]}/fapi/v1/depth?symbol=ETHUSDT&limit=5")
        assert status == 200 and len(body["bids"]) == 5
        ws = connect(f"{ws_line[1]}/public/ws/btcusdt@depth@100ms")
        assert json.loads(ws.recv())["e"] == "depthUpdate"
        ws.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_cli_load_test_options_print_traffic_until_sigterm() -> None:
    argv = ["--rate", "1000", "--tick-ms", "5", "--frame-per-update", "--stats-every", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sources.simulator", *argv, "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ws_url = proc.stdout.readline().split()[1]
        ws = connect(f"{ws_url}/public/ws/btcusdt@depth@100ms")
        got = len(collect(ws, 0.5))
        ws.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        stats = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(stats) >= 2 and stats[-1]["frames_sent"] >= got > 100
        assert [s["t"] for s in stats] == sorted(s["t"] for s in stats)
    finally:
        proc.kill()
        proc.wait()
