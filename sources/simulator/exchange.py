"""The simulated exchange's state: every symbol's book, the frames it publishes, its snapshots.

No I/O: :meth:`Exchange.tick` advances the market by one step and returns the frames due, encoded
once; the server decides who gets them. Safe to query from another thread (one lock).

Each depth speed (100, 250, 500, 1000 ms) pushes, at the end of every interval in which a symbol
had updates, its diff. depth frame (the interval's net changes) and right after it the partial
depth frames of that speed (``<symbol>@depth5/10/20``: the top levels after the interval's last
update, with the same ``U``, ``u`` and ``pu``). Sweeps, when configured, are ordinary updates on
that path: recorded, merged into the depth frames, their trades published.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Container, Iterable
from itertools import islice
from typing import Any, NamedTuple

import orjson

from market_data.events import DECIMALS, Level, Market
from sources.simulator.config import SimulatorConfig
from sources.simulator.market import (
    BookHistory,
    BookLevels,
    Fill,
    MarketModel,
    SimulatorError,
    SymbolSpec,
    Update,
    fmt,
)
from sources.simulator.streams import (
    MARK_PRICE_SPEEDS,
    PARTIAL_DEPTH_LEVELS,
    depth_speeds,
    depth_stream,
    mark_price_stream,
    partial_depth_stream,
)

AGG_TRADE_MS = 100
"""USD-M Futures pushes aggTrade every 100 ms; spot pushes it as it happens (every tick here)."""
MAX_TRADES_KEPT = 200_000
"""Published aggTrades kept per symbol, for :meth:`Exchange.trades` and REST ``aggTrades``."""
FUNDING_INTERVAL_MS = 8 * 3_600_000
PRINTED_KEPT = 100_000
"""Printed prices (and, apart, quantities) remembered per symbol before the memory starts over."""


class Frame(NamedTuple):
    """One payload due on one stream: ``data`` is the bare JSON text.

    A named tuple, not a dataclass: the load-test mode makes one per update (and depth stream
    listened to), and a tuple is built about three times faster than a frozen dataclass.
    """

    stream: str
    symbol: str
    data: str
    depth: bool = False  # a diff. depth frame: the only kind a gap fault drops (not partial)

    def enveloped(self) -> str:
        """The combined-stream form: ``{"stream":...,"data":...}``."""
        return f'{{"stream":"{self.stream}","data":{self.data}}}'


class _Printed(dict[int, str]):
    """Units of 1e-8 printed with ``decimals`` decimals (:func:`fmt`), remembered.

    Depth frames print the same few thousand prices and quantities over and over; a dict lookup
    is ten times cheaper than printing. Bounded: it starts over after :data:`PRINTED_KEPT`.
    """

    def __init__(self, decimals: int) -> None:
        super().__init__()
        self.decimals = decimals

    def __missing__(self, units: int) -> str:
        if len(self) >= PRINTED_KEPT:
            self.clear()
        text = self[units] = fmt(units, self.decimals)
        return text


class _DepthBatch:
    """The net changes of one depth speed since its last frame, and their ids."""

    __slots__ = ("asks", "bids", "first", "last", "prev_final", "time_ms")

    def __init__(self, prev_final: int) -> None:
        self.prev_final = prev_final
        self.first: int | None = None
        self.last = prev_final
        self.time_ms = 0
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def add(self, upd: Update) -> None:
        if self.first is None:
            self.first = upd.update_id
        self.last = upd.update_id
        self.time_ms = upd.time_ms
        self.bids.update(upd.bids)
        self.asks.update(upd.asks)

    def mark(self, first: int, last: int, time_ms: int) -> None:
        """Note the ids of a tick's updates, not their levels (the load-test mode's batches)."""
        if self.first is None:
            self.first = first
        self.last = last
        self.time_ms = time_ms


class _Symbol:
    """One symbol's model, history, pending frames and published trades."""

    def __init__(self, config: SimulatorConfig, symbol: str) -> None:
        self.spec = config.spec_of(symbol)
        self.model = MarketModel(
            self.spec, config.seed, config.market, config.levels, config.trade_probability
        )
        self.history = BookHistory(self.model, config.history_updates)
        self.rate_per_tick = config.rate_of(symbol) * config.tick_ms / 1000
        self.carry = 0.0
        start = self.model.last_update_id
        speeds = depth_speeds(config.market).values()
        self.batches = {speed: _DepthBatch(start) for speed in speeds}
        self.depth_streams = {speed: depth_stream(symbol, speed, config.market) for speed in speeds}
        self.partial_streams = {
            speed: tuple(
                (n, partial_depth_stream(symbol, n, speed, config.market))
                for n in PARTIAL_DEPTH_LEVELS
            )
            for speed in speeds
        }
        self.ticker_stream = f"{symbol.lower()}@bookTicker"
        self.trade_stream = f"{symbol.lower()}@aggTrade"
        self.pending_fills: list[Fill] = []
        self.trades: deque[Fill] = deque(maxlen=MAX_TRADES_KEPT)
        self.last_time_ms = 0
        self.top: tuple[Any, ...] = ()
        self.sweep_every = config.sweep_every_ticks()
        # Each symbol sweeps at its own tick of the period, the same for a seed.
        rng = random.Random(f"{config.seed}:{symbol}:sweep")
        self.sweep_phase = rng.randrange(self.sweep_every) if self.sweep_every else 0
        self.sweep_waiting = False

    def sweeps_now(self, tick: int) -> bool:
        """Whether tick number ``tick`` (from 1) starts with a sweep.

        A sweep is due at the symbol's own tick of each period; it waits, if need be, until the
        makers are done with the one before (:meth:`MarketModel.recovered`), so sweeps faster
        than the market can answer them do not pile up into a spread that never closes.
        """
        if self.sweep_every is None:
            return False
        if tick % self.sweep_every == self.sweep_phase:
            self.sweep_waiting = True
        if self.sweep_waiting and self.model.recovered():
            self.sweep_waiting = False
            return True
        return False


class Exchange:
    """All symbols of one simulator, stepped by :meth:`tick`."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.market = config.market
        self._lock = threading.Lock()
        self._symbols = {s: _Symbol(config, s) for s in config.symbols}
        self._ticks = 0
        futures = self.market is Market.FUTURES
        items = self._symbols.items()
        # Futures print each symbol's own decimals; spot always prints eight.
        self._price_dec = {s: st.spec.price_decimals if futures else DECIMALS for s, st in items}
        self._qty_dec = {s: st.spec.qty_decimals if futures else DECIMALS for s, st in items}
        self._prices = {s: _Printed(d) for s, d in self._price_dec.items()}
        self._qtys = {s: _Printed(d) for s, d in self._qty_dec.items()}

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols traded, upper case."""
        return tuple(self._symbols)

    def _get(self, symbol: str) -> _Symbol:
        try:
            return self._symbols[symbol.upper()]
        except KeyError:
            raise SimulatorError(
                f"unknown symbol {symbol!r}; the simulator trades {list(self._symbols)}"
            ) from None

    def spec(self, symbol: str) -> SymbolSpec:
        """The grid of ``symbol``."""
        return self._get(symbol).spec

    # -- stepping --------------------------------------------------------------------------
    def tick(self, now_ms: int, listened: Container[str] | None = None) -> list[Frame]:
        """Advance every symbol by one step; return the frames due at ``now_ms``, in order.

        With ``listened``, only the frames of those streams are made: the market moves, its
        history and its trades are kept all the same, but what no client listens to is not
        encoded (in the load-test mode, most of the frames due). A symbol's partial depth
        frames of a speed come right after its diff. depth frame of that speed.
        """

        def on(stream: str) -> bool:
            return listened is None or stream in listened

        with self._lock:
            self._ticks += 1
            elapsed = self._ticks * self.config.tick_ms
            futures = self.market is Market.FUTURES
            per_update = self.config.depth_frame_per_update
            trade_every = AGG_TRADE_MS if futures else self.config.tick_ms
            frames: list[Frame] = []
            for symbol, st in self._symbols.items():
                streams = [name for name in st.depth_streams.values() if on(name)]
                sweep = st.sweeps_now(self._ticks)
                self._generate(symbol, st, now_ms, sweep, streams, frames)
                if on(st.ticker_stream):
                    frames.extend(self._book_ticker(symbol, st, now_ms))
                for speed, batch in st.batches.items():
                    if elapsed % speed == 0 and batch.first is not None:
                        if not per_update and on(st.depth_streams[speed]):
                            frames.append(self._depth_frame(symbol, st, speed, batch, now_ms))
                        partial = [(n, name) for n, name in st.partial_streams[speed] if on(name)]
                        if partial:
                            frames.extend(self._partial_frames(symbol, st, batch, partial, now_ms))
                        st.batches[speed] = _DepthBatch(batch.last)
                if elapsed % trade_every == 0 and st.pending_fills:
                    trades = self._agg_trades(symbol, st, now_ms, on(st.trade_stream))
                    frames.extend(trades)
                if futures:
                    for speed in MARK_PRICE_SPEEDS.values():
                        if elapsed % speed == 0 and on(mark_price_stream(symbol, speed)):
                            frames.append(self._mark_price(symbol, st, speed, now_ms))
            return frames

    def _generate(
        self,
        symbol: str,
        st: _Symbol,
        now_ms: int,
        sweep: bool,
        streams: list[str],
        frames: list[Frame],
    ) -> None:
        """Make the tick's updates; with ``sweep``, the first of them is a sweep."""
        st.carry += st.rate_per_tick
        count = int(st.carry)
        if sweep and not count:
            count = 1  # the sweep is due now: an update borrowed from the next ticks
        st.carry -= count
        if not count:
            return
        model, record = st.model, st.history.record
        sweep_levels = self.config.sweep_levels
        if self.config.depth_frame_per_update:
            # Every update is at once a frame on every depth stream listened to (the same text:
            # its own U..u, pu the previous update's id); the speeds' batches keep only the ids,
            # for the partial depth frames.
            depth_data = self._depth_data
            prev = first = model.last_update_id
            for i in range(count):
                if i:
                    upd = model.next_update(now_ms)
                else:
                    upd = model.sweep(now_ms, sweep_levels) if sweep else model.next_update(now_ms)
                    first = upd.update_id
                record(upd)
                if upd.fills:
                    st.pending_fills.extend(upd.fills)
                uid = upd.update_id
                if streams:
                    data = depth_data(
                        symbol, now_ms, upd.time_ms, uid, uid, prev, upd.bids, upd.asks
                    )
                    frames += [Frame(stream, symbol, data, True) for stream in streams]
                prev = uid
            for batch in st.batches.values():
                batch.mark(first, prev, now_ms)
        else:
            for i in range(count):
                if sweep and not i:
                    upd = model.sweep(now_ms, sweep_levels)
                else:
                    upd = model.next_update(now_ms)
                record(upd)
                for batch in st.batches.values():
                    batch.add(upd)
                st.pending_fills.extend(upd.fills)
        st.last_time_ms = now_ms

    def _levels(self, symbol: str, levels: Iterable[Level]) -> str:
        """``["price","qty"],...`` as depth frames print a side (without the brackets)."""
        prices, qtys = self._prices[symbol], self._qtys[symbol]
        return ",".join([f'["{prices[p]}","{qtys[q]}"]' for p, q in levels])

    def _depth_data(
        self,
        symbol: str,
        now_ms: int,
        time_ms: int,
        first: int,
        last: int,
        prev: int,
        bids: Iterable[Level],
        asks: Iterable[Level],
    ) -> str:
        """The JSON of a depth frame, best levels first, keys in Binance's order.

        Written out rather than ``orjson.dumps`` of a dict of lists: on the load-test path, with
        the printed numbers remembered, it is several times cheaper, and the text is the same.
        """
        prices, qtys = self._prices[symbol], self._qtys[symbol]
        b = ",".join([f'["{prices[p]}","{qtys[q]}"]' for p, q in bids])
        a = ",".join([f'["{prices[p]}","{qtys[q]}"]' for p, q in asks])
        if self.market is Market.FUTURES:
            return (
                f'{{"e":"depthUpdate","E":{now_ms},"T":{time_ms},"s":"{symbol}","U":{first},'
                f'"u":{last},"pu":{prev},"b":[{b}],"a":[{a}]}}'
            )
        return (
            f'{{"e":"depthUpdate","E":{now_ms},"s":"{symbol}","U":{first},"u":{last},'
            f'"b":[{b}],"a":[{a}]}}'
        )

    def _partial_frames(
        self,
        symbol: str,
        st: _Symbol,
        batch: _DepthBatch,
        streams: list[tuple[int, str]],
        now_ms: int,
    ) -> list[Frame]:
        """The partial depth frames of one push: the top levels after the batch's last update.

        Futures print them as a diff. frame of the batch's ids (``U``, ``u``, ``pu``) holding
        the top levels; spot as ``{"lastUpdateId","bids","asks"}``.
        """
        assert batch.first is not None  # only intervals with updates are published
        bids, asks = st.model.top(max(n for n, _ in streams))  # the book after batch.last
        frames = []
        for n, stream in streams:
            if self.market is Market.FUTURES:
                data = self._depth_data(
                    symbol,
                    now_ms,
                    batch.time_ms,
                    batch.first,
                    batch.last,
                    batch.prev_final,
                    bids[:n],
                    asks[:n],
                )
            else:
                b, a = self._levels(symbol, bids[:n]), self._levels(symbol, asks[:n])
                data = f'{{"lastUpdateId":{batch.last},"bids":[{b}],"asks":[{a}]}}'
            frames.append(Frame(stream, symbol, data))
        return frames

    def _depth_frame(
        self, symbol: str, st: _Symbol, speed: int, batch: _DepthBatch, now_ms: int
    ) -> Frame:
        assert batch.first is not None  # only batches with updates are published
        data = self._depth_data(
            symbol,
            now_ms,
            batch.time_ms,
            batch.first,
            batch.last,
            batch.prev_final,
            sorted(batch.bids.items(), reverse=True),
            sorted(batch.asks.items()),
        )
        return Frame(st.depth_streams[speed], symbol, data, depth=True)

    def _agg_trades(self, symbol: str, st: _Symbol, now_ms: int, encode: bool) -> list[Frame]:
        """Publish the pending trades: kept for REST, and their frames if ``encode``."""
        if not encode:
            st.trades.extend(st.pending_fills)
            st.pending_fills = []
            return []
        prices, qtys = self._prices[symbol], self._qtys[symbol]
        stream = st.trade_stream
        frames = []
        for fill in st.pending_fills:
            price, qty = prices[fill.price], qtys[fill.quantity]
            if self.market is Market.FUTURES:
                data: dict[str, Any] = {"e": "aggTrade", "E": now_ms, "a": fill.agg_id, "s": symbol}
            else:
                data = {"e": "aggTrade", "E": now_ms, "s": symbol, "a": fill.agg_id}
            data.update(p=price, q=qty, f=fill.first_trade_id, l=fill.last_trade_id)
            data.update(T=fill.time_ms, m=fill.is_buyer_maker)
            if self.market is Market.SPOT:
                data["M"] = True
            frames.append(Frame(stream, symbol, orjson.dumps(data).decode()))
            st.trades.append(fill)
        st.pending_fills = []
        return frames

    def _book_ticker(self, symbol: str, st: _Symbol, now_ms: int) -> list[Frame]:
        bid, ask = st.model.best_bid(), st.model.best_ask()
        top = (bid, ask)
        if top == st.top:
            return []
        st.top = top
        prices, qtys = self._prices[symbol], self._qtys[symbol]
        data: dict[str, Any] = {}
        if self.market is Market.FUTURES:
            data["e"] = "bookTicker"
        data.update(u=st.model.last_update_id, s=symbol, b=prices[bid[0]], B=qtys[bid[1]])
        data.update(a=prices[ask[0]], A=qtys[ask[1]])
        if self.market is Market.FUTURES:
            data.update(T=st.last_time_ms or now_ms, E=now_ms)
        return [Frame(st.ticker_stream, symbol, orjson.dumps(data).decode())]

    def _mark_price(self, symbol: str, st: _Symbol, speed: int, now_ms: int) -> Frame:
        tick = st.spec.tick
        mid = (st.model.best_bid()[0] + st.model.best_ask()[0]) // 2 // tick * tick
        price = fmt(mid, DECIMALS)
        data = {
            "e": "markPriceUpdate",
            "E": now_ms,
            "s": symbol,
            "p": price,
            "i": price,
            "P": price,
            "r": "0.00010000",
            "T": (now_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS,
        }
        return Frame(mark_price_stream(symbol, speed), symbol, orjson.dumps(data).decode())

    # -- queries ---------------------------------------------------------------------------
    def snapshot(self, symbol: str, limit: int, lag: int, now_ms: int) -> dict[str, Any]:
        """The REST depth body for ``symbol``: top ``limit`` levels, ``lag`` updates ago."""
        st = self._get(symbol)
        sym = st.spec.symbol
        pd, qd = self._price_dec[sym], self._qty_dec[sym]
        with self._lock:
            if lag > 0:
                seq = max(st.history.oldest_seq(), st.history.last_seq() - lag)
                book = st.history.book_at_seq(seq, limit)
            else:
                bids, asks = st.model.top(limit)
                book = BookLevels(st.model.last_update_id, bids, asks)
            time_ms = st.last_time_ms or now_ms
        body: dict[str, Any] = {"lastUpdateId": book.last_update_id}
        if self.market is Market.FUTURES:
            body.update(E=now_ms, T=time_ms)
        body["bids"] = [[fmt(p, pd), fmt(q, qd)] for p, q in book.bids]
        body["asks"] = [[fmt(p, pd), fmt(q, qd)] for p, q in book.asks]
        return body

    def book_at(self, symbol: str, update_id: int, depth: int) -> BookLevels:
        """The top ``depth`` levels after the last update with an id at or below ``update_id``."""
        st = self._get(symbol)
        with self._lock:
            return st.history.book_at(update_id, depth)

    def trades(self, symbol: str) -> list[Fill]:
        """Every aggregate trade published for ``symbol``, oldest first."""
        st = self._get(symbol)
        with self._lock:
            return list(st.trades)

    def agg_trades(
        self,
        symbol: str,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """The REST ``aggTrades`` body for ``symbol``: published trades, oldest first.

        As Binance: from ``from_id`` (inclusive) or from ``start_ms`` (trade time, inclusive),
        up to ``end_ms`` (inclusive), at most ``limit``; with neither ``from_id`` nor ``start_ms``
        the most recent ``limit`` ones (up to ``end_ms``). Only the last
        :data:`MAX_TRADES_KEPT` trades are kept: older ids are answered from the oldest kept.
        """
        st = self._get(symbol)
        sym = st.spec.symbol
        pd, qd = self._price_dec[sym], self._qty_dec[sym]
        with self._lock:
            trades = st.trades
            picked: list[Fill] = []
            if from_id is not None or start_ms is not None:
                if from_id is not None:
                    start = bisect_left(trades, from_id, key=_agg_id)
                else:
                    start = bisect_left(trades, start_ms or 0, key=_trade_time)
                for fill in islice(trades, start, None):
                    if len(picked) >= limit or (end_ms is not None and fill.time_ms > end_ms):
                        break
                    if start_ms is None or fill.time_ms >= start_ms:
                        picked.append(fill)
            else:
                stop = (
                    len(trades) if end_ms is None else bisect_right(trades, end_ms, key=_trade_time)
                )
                picked = list(islice(trades, max(0, stop - limit), stop))
        spot = self.market is Market.SPOT
        body = []
        for fill in picked:
            item: dict[str, Any] = {"a": fill.agg_id, "p": fmt(fill.price, pd)}
            item.update(q=fmt(fill.quantity, qd), f=fill.first_trade_id, l=fill.last_trade_id)
            item.update(T=fill.time_ms, m=fill.is_buyer_maker)
            if spot:
                item["M"] = True
            body.append(item)
        return body

    def last_update_id(self, symbol: str) -> int:
        """The id of the newest update applied to ``symbol``'s book (maybe not yet published)."""
        st = self._get(symbol)
        with self._lock:
            return st.model.last_update_id


def _agg_id(fill: Fill) -> int:
    return fill.agg_id


def _trade_time(fill: Fill) -> int:
    return fill.time_ms
