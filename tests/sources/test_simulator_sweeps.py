"""Sweeps: a taker order that empties the best levels of one side, so the touch wanders.

Driven through :meth:`Exchange.tick` with simulated times (no sockets, no sleeping): a sweep is
one update that zeroes ``sweep_levels`` levels, with one aggTrade per level, and it goes the way
of every update (history, diff depth frames, aggTrade frames, REST trades).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from statistics import median

import pytest

from market_data import ConfigError
from market_data.events import Market
from sources.simulator.__main__ import build_parser, config_from_args
from sources.simulator.config import SimulatorConfig
from sources.simulator.exchange import Exchange
from sources.simulator.market import BookHistory, BookLevels, Fill, MarketModel, default_spec
from tests.sources.test_simulator import units


@pytest.mark.parametrize("market", [Market.FUTURES, Market.SPOT])
def test_a_sweep_empties_the_best_levels_of_one_side_with_one_trade_per_level(
    market: Market,
) -> None:
    model = MarketModel(default_spec("BTCUSDT"), 4, market, levels=300)
    history = BookHistory(model)
    last_agg = None

    def step(time_ms: int) -> None:
        nonlocal last_agg
        upd = model.next_update(time_ms)
        history.record(upd)
        last_agg = upd.fills[-1].agg_id if upd.fills else last_agg

    for t in range(200):
        step(t)
    sides = set()
    for t in range(1000, 11_000, 1000):
        bids_before, asks_before = model.top(120)
        prev_id = model.last_update_id
        upd = model.sweep(t, 80)
        history.record(upd)
        takes_bids = bool(upd.bids)
        sides.add(takes_bids)
        taken = bids_before[:80] if takes_bids else asks_before[:80]
        # One update, every level set to 0, best first; nothing on the other side.
        assert (upd.bids if takes_bids else upd.asks) == tuple((p, 0) for p, _ in taken)
        assert not (upd.asks if takes_bids else upd.bids)
        # One aggregate trade per level, the whole level, at its price, best first.
        assert [(f.price, f.quantity) for f in upd.fills] == list(taken)
        assert all(f.is_buyer_maker is takes_bids and f.time_ms == t for f in upd.fills)
        ids = [f.agg_id for f in upd.fills]
        assert last_agg is not None and ids == list(range(last_agg + 1, last_agg + 81))
        last_agg = ids[-1]
        for a, b in itertools.pairwise(upd.fills):
            assert b.first_trade_id == a.last_trade_id + 1
        if market is Market.SPOT:
            assert upd.update_id == prev_id + 1
        else:
            assert upd.update_id > prev_id
        # The history agrees: the swept side starts at its 81st level, the other is untouched.
        book = history.book_at(upd.update_id, 40)
        if takes_bids:
            assert (book.bids, book.asks) == (bids_before[80:], asks_before[:40])
        else:
            assert (book.bids, book.asks) == (bids_before[:40], asks_before[80:])
        assert not model.recovered(), "the gap is open, the levels not yet back"
        for u in range(1, 201):  # the makers close the gap and refill before the next sweep
            step(t + u)
        assert model.recovered()
    assert sides == {True, False}, "bids or asks, both happen"


def test_a_sweep_leaves_one_level_at_least() -> None:
    model = MarketModel(default_spec("ETHUSDT"), 2, levels=10)
    upd = model.sweep(0, 10_000)
    side = model.bids if upd.bids else model.asks
    assert len(side) == 1 and len(upd.fills) == len(upd.bids or upd.asks) >= 9


def sweep_config(**changes: object) -> SimulatorConfig:
    """One update per tick (20/s at 50 ms), trades only from sweeps, a sweep a second."""
    base: dict[str, object] = dict(
        symbols=("BTCUSDT", "ETHUSDT"),
        rate=20,
        trade_probability=0.0,
        levels=300,
        sweep_every_s=1.0,
        sweep_levels=80,
    )
    return SimulatorConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_sweeps_go_through_the_exchange_like_any_update() -> None:
    ex = Exchange(sweep_config())
    before: dict[tuple[str, int], BookLevels] = {}
    update_at: dict[tuple[str, int], int] = {}
    frames = []
    for i in range(1, 61):  # 3 s
        now = i * 50
        for sym in ex.symbols:
            before[sym, now] = ex.book_at(sym, ex.last_update_id(sym), 100)
        frames += ex.tick(now)
        for sym in ex.symbols:
            update_at[sym, now] = ex.last_update_id(sym)  # one update a tick
    sweep_times = {}
    for sym in ex.symbols:
        fills = ex.trades(sym)  # kept for REST: every trade here is a sweep's
        by_time: dict[int, list[Fill]] = defaultdict(list)
        for fill in fills:
            by_time[fill.time_ms].append(fill)
        assert len(by_time) == 3, "a sweep a second"
        sweep_times[sym] = sorted(by_time)
        for now, group in by_time.items():
            book, uid = before[sym, now], update_at[sym, now]
            takes_bids = group[0].is_buyer_maker
            taken = book.bids[:80] if takes_bids else book.asks[:80]
            assert [(f.price, f.quantity) for f in group] == list(taken)
            assert all(f.is_buyer_maker is takes_bids for f in group)
            after = ex.book_at(sym, uid, 20)
            if takes_bids:
                assert (after.bids, after.asks) == (book.bids[80:100], book.asks[:20])
            else:
                assert (after.bids, after.asks) == (book.bids[:20], book.asks[80:100])
            # The diff frames that cover the sweep carry every level it emptied.
            for speed in ("@100ms", ""):
                stream = f"{sym.lower()}@depth{speed}"
                datas = [json.loads(f.data) for f in frames if f.stream == stream]
                data = next(d for d in datas if d["U"] <= uid <= d["u"])
                printed = {units(p): units(q) for p, q in data["b" if takes_bids else "a"]}
                now_book = ex.book_at(sym, data["u"], 1000)
                side = dict(now_book.bids if takes_bids else now_book.asks)
                for price, _ in taken:
                    assert printed[price] == side.get(price, 0)
        # ... and every fill was published on aggTrade, in order.
        pushed = [json.loads(f.data)["a"] for f in frames if f.stream == f"{sym.lower()}@aggTrade"]
        assert pushed == [f.agg_id for f in fills]
    assert sweep_times["BTCUSDT"] != sweep_times["ETHUSDT"], "symbols sweep at their own ticks"


def test_sweeps_are_reproducible_and_off_by_default() -> None:
    def run(config: SimulatorConfig) -> list[str]:
        ex = Exchange(config)
        return [f.data for i in range(1, 101) for f in ex.tick(i * 50)]

    assert run(sweep_config()) == run(sweep_config())
    assert run(sweep_config()) != run(sweep_config(seed=2))
    assert SimulatorConfig().sweep_every_s is None
    off = Exchange(sweep_config(sweep_every_s=None))
    for i in range(1, 101):
        off.tick(i * 50)
    assert off.trades("BTCUSDT") == [], "no sweeps, and no other trades here"


def test_sweeps_make_the_touch_wander_while_the_book_stays_deep() -> None:
    config = SimulatorConfig(symbols=("BTCUSDT",), rate=100, levels=300, sweep_every_s=2.0)
    ex = Exchange(config)
    start = ex.book_at("BTCUSDT", ex.last_update_id("BTCUSDT"), 300)
    tick = ex.spec("BTCUSDT").tick
    far, spreads, sizes = 0, [], []
    for i in range(1, 20 * 180 + 1):  # three simulated minutes
        ex.tick(i * 50, ())  # nobody listens: nothing is encoded
        if i % 10:
            continue
        book = ex.book_at("BTCUSDT", ex.last_update_id("BTCUSDT"), 1000)
        bid, ask = book.bids[0][0], book.asks[0][0]
        assert bid < ask
        far = max(far, (start.bids[0][0] - bid) // tick, (ask - start.asks[0][0]) // tick)
        spreads.append((ask - bid) // tick)
        sizes += [len(book.bids), len(book.asks)]
    start_depth = max(start.bids[0][0] - start.bids[-1][0], start.asks[-1][0] - start.asks[0][0])
    assert far > start_depth // tick, "the touch left the starting book's 300 levels behind"
    assert median(spreads) <= 3, "the makers close a sweep's gap"
    assert min(sizes) >= 150 and max(sizes) <= 330, "each side stays deep"


def test_sweeps_faster_than_the_market_answers_them_wait() -> None:
    # Ten updates a second, a sweep asked for every 0.2 s: each waits for the book to recover.
    config = sweep_config(symbols=("BTCUSDT",), rate=10, sweep_every_s=0.2)
    ex = Exchange(config)
    tick = ex.spec("BTCUSDT").tick
    widest, thinnest = 0, 10**9
    for i in range(1, 20 * 30 + 1):  # 30 s: 150 sweeps asked for
        ex.tick(i * 50, ())
        book = ex.book_at("BTCUSDT", ex.last_update_id("BTCUSDT"), 1000)
        widest = max(widest, (book.asks[0][0] - book.bids[0][0]) // tick)
        thinnest = min(thinnest, len(book.bids), len(book.asks))
    sweeps = len({f.time_ms for f in ex.trades("BTCUSDT")})
    assert 5 < sweeps < 75
    assert widest < 300 and thinnest >= 150, "the spread closes, the sides stay deep"


def test_without_sweeps_the_touch_stays_near_the_start() -> None:
    ex = Exchange(SimulatorConfig(symbols=("BTCUSDT",), rate=100, levels=300))
    start = ex.book_at("BTCUSDT", ex.last_update_id("BTCUSDT"), 1).bids[0][0]
    tick = ex.spec("BTCUSDT").tick
    far = 0
    for i in range(1, 20 * 60 + 1):
        ex.tick(i * 50, ())
        if i % 10:
            continue
        bid = ex.book_at("BTCUSDT", ex.last_update_id("BTCUSDT"), 1).bids[0][0]
        far = max(far, abs(bid - start) // tick)
    assert far < 100


def test_sweep_config_is_validated() -> None:
    with pytest.raises(ConfigError) as err:
        SimulatorConfig(sweep_every_s=0, sweep_levels=0, levels=5)
    text = str(err.value)
    assert "sweep_every_s" in text and "sweep_levels" in text and "levels: must be" in text
    assert SimulatorConfig(sweep_every_s=0.01).sweep_every_ticks() == 1
    assert SimulatorConfig(sweep_every_s=2.0, tick_ms=20).sweep_every_ticks() == 100


def test_cli_flags_for_levels_and_sweeps() -> None:
    parser = build_parser()
    args = parser.parse_args(["--levels", "1200", "--sweep-every", "2.5", "--sweep-levels", "60"])
    config = config_from_args(args)
    assert (config.levels, config.sweep_every_s, config.sweep_levels) == (1200, 2.5, 60)
    default = config_from_args(parser.parse_args([]))
    assert (default.levels, default.sweep_every_s, default.sweep_levels) == (1000, None, 80)
    with pytest.raises(ConfigError, match="sweep_every_s"):
        config_from_args(parser.parse_args(["--sweep-every", "0"]))


def test_a_sweep_is_one_depth_frame_in_the_load_test_mode() -> None:
    ex = Exchange(sweep_config(depth_frame_per_update=True, tick_ms=10, rate=100))
    sweeps = []
    for i in range(1, 201):  # 2 s
        for frame in ex.tick(i * 10, {"btcusdt@depth@100ms"}):
            data = json.loads(frame.data)
            assert data["U"] == data["u"], "one update per frame"
            if len(data["b"]) == 80 or len(data["a"]) == 80:
                sweeps.append(data)
    assert len(sweeps) == 2
    fills = ex.trades("BTCUSDT")
    for data in sweeps:
        side = data["b"] or data["a"]
        assert all(qty == "0.000" for _, qty in side)
        prices = [units(p) for p, _ in side]
        assert [f.price for f in fills if f.time_ms == data["T"]] == prices
