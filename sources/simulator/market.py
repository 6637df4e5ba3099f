"""A deterministic, seeded order-book and trade generator for one symbol.

Pure: no I/O, no clock of its own (times are passed in), no threads. Prices and quantities are
integer units of ``1e-8`` (:data:`market_data.events.SCALE`), on the symbol's tick and lot grid.

One *update* is one matching-engine event with its own update id: 1 to 40 level changes (about a
tenth of them deletions), and sometimes a taker trade that consumes the touch. A *sweep*
(:meth:`MarketModel.sweep`, when the caller asks for one) is an update too: a large taker order
that empties the best levels of one side at once; the makers then close the wide spread it leaves,
so the touch moves. USD-M Futures ids skip (Binance's futures ids are shared with events a stream
does not show, which is why futures frames carry ``pu``); spot ids are contiguous.
:class:`BookHistory` keeps enough of the past to rebuild the book as it stood after any recent
update id.
"""

from __future__ import annotations

import bisect
import random
import zlib
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from math import exp, log, sqrt

from market_data import MarketDataError
from market_data.events import DECIMALS, SCALE, Level, Market

MAX_CHANGES = 40
DELETE_SHARE = 0.10
AFTERMATH_CHANGES = 8
"""Extra level changes in each update while the makers respond to a sweep."""
CHECKPOINT_EVERY = 1_000
"""Updates between two full copies of the book kept by :class:`BookHistory`."""
_DEPTH_RATE = 1 / 25
"""Rate of the exponential draw of a change's depth (levels from the touch): mean 25."""
_NV_MAGICCONST = 4 * exp(-0.5) / sqrt(2.0)  # as random.NV_MAGICCONST (not in typeshed)


class SimulatorError(MarketDataError):
    """The simulator was asked for what it does not have (an unknown symbol, a forgotten id)."""


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """How a symbol is quoted: its grid, the decimals Binance prints, and where its book starts."""

    symbol: str
    mid_price: int  # units of 1e-8
    tick: int  # price step, units
    lot: int  # quantity step, units
    price_decimals: int  # decimals printed by the futures API (spot always prints 8)
    qty_decimals: int

    def __post_init__(self) -> None:
        for name in ("mid_price", "tick", "lot"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{self.symbol}: {name} must be positive; got {getattr(self, name)}"
                )
        for name, step, decimals in (
            ("tick", self.tick, self.price_decimals),
            ("lot", self.lot, self.qty_decimals),
        ):
            if not 0 <= decimals <= DECIMALS or step % 10 ** (DECIMALS - decimals):
                raise ValueError(
                    f"{self.symbol}: {name}={step} units is not printable with {decimals} decimals"
                )


def default_spec(symbol: str) -> SymbolSpec:
    """A plausible spec: BTC and ETH like Binance's USDT perpetuals, other symbols near 1 USDT."""
    symbol = symbol.upper()
    if symbol.startswith("BTC"):
        return SymbolSpec(symbol, 65_000 * SCALE, SCALE // 10, SCALE // 1000, 2, 3)
    if symbol.startswith("ETH"):
        return SymbolSpec(symbol, 3_200 * SCALE, SCALE // 100, SCALE // 1000, 2, 3)
    return SymbolSpec(symbol, SCALE, SCALE // 10_000, SCALE, 4, 0)


def fmt(units: int, decimals: int) -> str:
    """Print ``units`` (of 1e-8) with exactly ``decimals`` decimals, as Binance does.

    >>> fmt(761_100_000, 4)
    '7.6110'
    """
    step = 10 ** (DECIMALS - decimals)
    scaled, rest = divmod(units, step)
    if rest:
        raise ValueError(f"{units} units do not fit {decimals} decimals")
    if decimals == 0:
        return str(scaled)
    whole, frac = divmod(scaled, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


@dataclass(frozen=True, slots=True)
class Fill:
    """One aggregate trade: a taker's fills against one price level."""

    agg_id: int  # a
    price: int
    quantity: int
    first_trade_id: int  # f
    last_trade_id: int  # l
    time_ms: int  # T
    is_buyer_maker: bool  # m: the taker sold into the bids


@dataclass(frozen=True, slots=True)
class Update:
    """One engine event: its id, the absolute quantities it set (0 removes), its trades."""

    update_id: int
    time_ms: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    fills: tuple[Fill, ...] = ()


class BookSide:
    """One side of a live book: its prices in ascending order beside the quantity at each.

    The generator reads levels by rank near the touch and changes a few an update: a plain sorted
    list (``bisect``, a short memmove) and a dict do that in C, where a general sorted mapping
    spends most of its time in Python.
    """

    __slots__ = ("prices", "qty")

    def __init__(self) -> None:
        self.prices: list[int] = []  # ascending: the best bid is the last, the best ask the first
        self.qty: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.prices)

    def items(self) -> list[Level]:
        """Every level, lowest price first."""
        qty = self.qty
        return [(p, qty[p]) for p in self.prices]

    def set(self, price: int, qty: int) -> None:
        """Set the quantity at ``price``; 0 removes the level."""
        levels = self.qty
        if qty:
            if price not in levels:
                bisect.insort(self.prices, price)
            levels[price] = qty
        elif levels.pop(price, None) is not None:
            del self.prices[bisect.bisect_left(self.prices, price)]


class MarketModel:
    """The live book of one symbol and the generator of its updates.

    The draws are ``random.Random``'s exponential and log-normal variates written out inline
    (the same arithmetic on the same ``random()`` calls, so a seed gives the same updates as
    before): with the list-backed :class:`BookSide` and the change loop in one method, an update
    takes about 10 µs instead of 17, the most of what the load-test mode spends per frame.
    """

    def __init__(
        self,
        spec: SymbolSpec,
        seed: int,
        market: Market = Market.FUTURES,
        levels: int = 1_000,
        trade_probability: float = 0.05,
    ) -> None:
        if levels < 10:
            raise ValueError(f"levels must be at least 10; got {levels}")
        self.spec = spec
        self.market = Market(market)
        self.levels = levels
        self.trade_probability = trade_probability
        # A stable per-symbol stream: Python's hash() of a str changes between processes.
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(spec.symbol.encode()))
        rng = self._rng
        if self.market is Market.FUTURES:
            self.last_update_id = rng.randrange(5 * 10**11, 9 * 10**11)
        else:
            self.last_update_id = rng.randrange(10**9, 6 * 10**10)
        self._next_agg_id = rng.randrange(10**8, 3 * 10**9)
        self._next_trade_id = self._next_agg_id * 3 + rng.randrange(10**6)
        self._after: _Aftermath | None = None  # what the last sweeps left to the makers
        self.bids = BookSide()
        self.asks = BookSide()
        self._seed_book()

    # -- views -----------------------------------------------------------------------------
    def best_bid(self) -> Level:
        """The highest bid ``(price, qty)``."""
        price = self.bids.prices[-1]
        return price, self.bids.qty[price]

    def best_ask(self) -> Level:
        """The lowest ask ``(price, qty)``."""
        price = self.asks.prices[0]
        return price, self.asks.qty[price]

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best ``depth`` levels of each side, best first."""
        return top_levels(self.bids, self.asks, depth)

    def recovered(self) -> bool:
        """Whether the makers are done with the last sweep: its gap closed, its levels back."""
        after = self._after
        if after is not None and after.settled(self.asks.prices[0] - self.bids.prices[-1]):
            self._after = None
        return self._after is None

    # -- generation ------------------------------------------------------------------------
    def next_update(self, time_ms: int) -> Update:
        """Generate, apply and return the next update."""
        if self._after is not None:
            self.recovered()
        random = self._rng.random
        bid_changes: dict[int, int] = {}  # price -> new qty (0: removed)
        ask_changes: dict[int, int] = {}
        fills: tuple[Fill, ...] = ()
        if random() < self.trade_probability:
            fills = self._trade(bid_changes, ask_changes, time_ms)
        count = 1 + min(MAX_CHANGES - 1, int(-log(1.0 - random()) / 0.25))
        if self._after is not None:  # the makers are busy after a sweep
            count = min(MAX_CHANGES, count + AFTERMATH_CHANGES)
        if fills:
            count = max(0, count - len(bid_changes) - len(ask_changes))
        self._changes(count, bid_changes, ask_changes)
        while not (bid_changes or ask_changes):  # an insert can be refused: try again
            self._changes(1, bid_changes, ask_changes)
        self._trim(bid_changes, ask_changes)
        self._next_id()
        bids = tuple(sorted(bid_changes.items(), reverse=True))
        asks = tuple(sorted(ask_changes.items()))
        return Update(self.last_update_id, time_ms, bids, asks, fills)

    def sweep(self, time_ms: int, levels: int) -> Update:
        """Generate, apply and return a sweep: one taker order that empties the best ``levels``.

        The side is a fair draw (a buyer takes asks, a seller takes bids); every one of its best
        ``levels`` levels is consumed entirely, but a side always keeps one level at least. The
        update sets each of them to 0 and carries one aggregate trade per level, best price
        first, as Binance aggregates a taker's fills per price. A side with a single level
        cannot be swept: the update is then an ordinary one (:meth:`next_update`).

        The price has moved, and the makers of the next updates follow it, each such update
        carrying :data:`AFTERMATH_CHANGES` more changes than usual: the other side's close the
        gap (the swept side's stay out of it) and move their ladder along, while the swept side
        gets as many levels back behind its far end as the sweep took. So the touch stays near
        where the sweep took it and the book keeps its depth; :meth:`recovered` says when the
        makers are done (a few dozen updates).
        """
        if levels < 1:
            raise ValueError(f"levels must be positive; got {levels}")
        takes_bids = self._rng.random() < 0.5
        side = self.bids if takes_bids else self.asks
        count = min(levels, len(side) - 1)
        if count < 1:
            return self.next_update(time_ms)
        prices = side.prices[: -count - 1 : -1] if takes_bids else side.prices[:count]
        fills = []
        for price in prices:
            fills.append(self._fill(price, side.qty[price], time_ms, takes_bids))
            side.set(price, 0)
        self._next_id()
        self._after = self._after or _Aftermath(self.spec.tick)
        self._after.swept(takes_bids, count)
        changes = tuple((price, 0) for price in prices)  # best first: bids down, asks up
        bids, asks = (changes, ()) if takes_bids else ((), changes)
        return Update(self.last_update_id, time_ms, bids, asks, tuple(fills))

    def _next_id(self) -> None:
        """Advance ``last_update_id``: by one on spot, by a random skip on futures."""
        if self.market is Market.SPOT:
            self.last_update_id += 1
        else:
            self.last_update_id += 1 + int(-log(1.0 - self._rng.random()) / 0.15)

    def _qty(self) -> int:
        """A quantity: ``lot`` times a log-normal(3.0, 1.4) draw, at least one lot."""
        random = self._rng.random
        while True:  # random.Random.normalvariate (Kinderman and Monahan)
            u1 = random()
            u2 = 1.0 - random()
            z = _NV_MAGICCONST * (u1 - 0.5) / u2
            if z * z / 4.0 <= -log(u2):
                break
        return self.spec.lot * max(1, int(exp(3.0 + z * 1.4)))

    def _changes(
        self, count: int, bid_changes: dict[int, int], ask_changes: dict[int, int]
    ) -> None:
        """Make ``count`` random level changes (an insert may find no room and be skipped)."""
        random, qty_draw = self._rng.random, self._qty
        bids, asks = self.bids, self.asks
        target, tick, after = self.levels, self.spec.tick, self._after
        for _ in range(count):
            is_bid = random() < 0.5
            side, changes = (bids, bid_changes) if is_bid else (asks, ask_changes)
            prices, levels = side.prices, side.qty
            roll = random()
            depth = int(-log(1.0 - random()) / _DEPTH_RATE)  # most activity is near the touch
            n = len(prices)
            # Inserts outnumber deletions below the target depth and not above it, so each
            # side hovers around ``levels``.
            if after is None:
                insert_share = 0.45 if n < target else 0.05
            else:
                insert_share = after.insert_share(is_bid, n, target)
            if roll < DELETE_SHARE and n > target // 2:
                price = prices[-1 - min(depth, n - 1)] if is_bid else prices[min(depth, n - 1)]
                side.set(price, 0)
                changes[price] = 0
                continue
            if after is not None and roll < DELETE_SHARE + insert_share:
                price = self._quote_after_sweep(after, is_bid, depth, changes)
                if not price:
                    continue
            elif roll < DELETE_SHARE + insert_share:
                bid, ask = bids.prices[-1], asks.prices[0]
                gap = (ask - bid) // tick - 1  # free ticks inside the spread
                if gap > 0 and random() < 0.5:  # makers close a wide spread quickly
                    inside = (1 + int(random() * min(gap, 3))) * tick
                    price = bid + inside if is_bid else ask - inside
                else:
                    price = bid - depth * tick if is_bid else ask + depth * tick
                    away = -tick if is_bid else tick
                    for _ in range(50):  # a new level: the first free tick from there, outwards
                        if price not in levels:
                            break
                        price += away
                    if price <= 0:
                        continue
            else:
                price = prices[-1 - min(depth, n - 1)] if is_bid else prices[min(depth, n - 1)]
            qty = qty_draw()
            if price not in levels:
                bisect.insort(prices, price)
            levels[price] = qty
            changes[price] = qty

    def _quote_after_sweep(
        self, after: _Aftermath, is_bid: bool, depth: int, changes: dict[int, int]
    ) -> int:
        """Where a new level goes while sweeps have left something to do (0: nowhere).

        A swept side first gets the levels it lost back behind its far end, and its makers
        stay out of the gap. The other side's close it, every new level one to three ticks
        ahead of their touch (with as many inserts as a side short of levels), then fill in
        behind their new touch. A side at its target depth that adds a level near its touch
        takes one off its far end (recorded in ``changes``): its ladder moves with the price
        rather than thinning out near the touch later.
        """
        random, tick = self._rng.random, self.spec.tick
        side = self.bids if is_bid else self.asks
        prices = side.prices
        if after.behind[is_bid]:
            after.behind[is_bid] -= 1
            step = tick if random() < 0.9 else 2 * tick  # as dense as the seed book
            return max(prices[0] - step, 0) if is_bid else prices[-1] + step
        if after.near[is_bid]:
            after.near[is_bid] -= 1
        bid, ask = self.bids.prices[-1], self.asks.prices[0]
        gap = (ask - bid) // tick - 1
        if gap > 0 and (is_bid is after.chaser or (after.chaser is None and random() < 0.5)):
            inside = (1 + int(random() * min(gap, 3))) * tick
            price = bid + inside if is_bid else ask - inside
        else:
            price = bid - depth * tick if is_bid else ask + depth * tick
            away = -tick if is_bid else tick
            for _ in range(50):  # the first free tick from there, outwards
                if price not in side.qty:
                    break
                price += away
            if price <= 0:
                return 0
        if len(prices) >= self.levels and price not in side.qty:
            far = prices[0] if is_bid else prices[-1]
            side.set(far, 0)
            changes[far] = 0
        return price

    def _trim(self, bid_changes: dict[int, int], ask_changes: dict[int, int]) -> None:
        """Keep each side within 10% of the target depth by removing its farthest levels."""
        most = self.levels * 1.1
        bids, asks = self.bids, self.asks
        while len(bids.prices) > most:
            far = bids.prices[0]
            bids.set(far, 0)
            bid_changes[far] = 0
        while len(asks.prices) > most:
            far = asks.prices[-1]
            asks.set(far, 0)
            ask_changes[far] = 0

    def _trade(
        self, bid_changes: dict[int, int], ask_changes: dict[int, int], time_ms: int
    ) -> tuple[Fill, ...]:
        """A taker order that sweeps one or a few levels from the touch."""
        random = self._rng.random
        taker_buys = random() < 0.5
        book_side = not taker_buys  # a buyer takes asks, a seller takes bids
        side, changes = (self.bids, bid_changes) if book_side else (self.asks, ask_changes)
        prices, levels = side.prices, side.qty
        want = 0
        for n in range(min(3, len(prices) - 1)):
            want += levels[prices[-1 - n if book_side else n]]
        lot = self.spec.lot
        want = max(lot, int(want * random() ** 2) // lot * lot)
        fills = []
        while want > 0 and len(prices) > 1:
            price = prices[-1 if book_side else 0]
            qty = levels[price]
            taken = min(qty, want)
            want -= taken
            fills.append(self._fill(price, taken, time_ms, book_side))
            side.set(price, qty - taken)
            changes[price] = qty - taken
        return tuple(fills)

    def _fill(self, price: int, quantity: int, time_ms: int, is_buyer_maker: bool) -> Fill:
        """The next aggregate trade: 1 to 5 makers' trades at ``price``, the next ids."""
        makers = 1 + min(4, int(-log(1.0 - self._rng.random()) / 0.8))
        first = self._next_trade_id
        self._next_trade_id += makers
        agg_id = self._next_agg_id
        self._next_agg_id += 1
        return Fill(agg_id, price, quantity, first, first + makers - 1, time_ms, is_buyer_maker)

    def _seed_book(self) -> None:
        rng, tick = self._rng, self.spec.tick
        mid = self.spec.mid_price // tick * tick
        for is_bid in (True, False):
            side = self.bids if is_bid else self.asks
            price = mid - tick if is_bid else mid + tick
            while len(side) < self.levels:
                if rng.random() < 0.9:
                    side.set(price, self._qty())
                price += -tick if is_bid else tick
                if price <= 0:
                    raise ValueError(
                        f"{self.spec.symbol}: mid price too low for {self.levels} levels"
                    )


class _Aftermath:
    """What sweeps leave to the makers of the next updates, until they have done it."""

    __slots__ = ("behind", "chaser", "near", "tick")

    def __init__(self, tick: int) -> None:
        self.tick = tick
        self.chaser: bool | None = None
        """The side (True: the bids) that quotes into the last sweep's gap while it is open."""
        self.behind = [0, 0]
        """Levels a swept side puts back behind its far end: the asks' ([0]), the bids' ([1])."""
        self.near = [0, 0]
        """Levels the other side adds near its new touch (elevated inserts), likewise."""

    def swept(self, bids: bool, levels: int) -> None:
        """Note a sweep of ``levels`` levels of the bids (or of the asks)."""
        self.chaser = not bids
        self.behind[bids] += levels
        self.near[not bids] += levels

    def settled(self, spread: int) -> bool:
        """Whether nothing is left to do, given the spread now (the gap closes at one tick)."""
        if spread <= self.tick:
            self.chaser = None
        return self.chaser is None and not any(self.behind) and not any(self.near)

    def insert_share(self, is_bid: bool, n: int, target: int) -> float:
        """The share of that side's changes that add a level."""
        if self.behind[is_bid] or self.near[is_bid]:
            return 0.8
        return 0.45 if n < target or is_bid is self.chaser else 0.05


def top_levels(
    bids: BookSide | dict[int, int], asks: BookSide | dict[int, int], depth: int
) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    """The best ``depth`` levels of each side, best first."""
    if isinstance(bids, BookSide) and isinstance(asks, BookSide):
        bq, aq = bids.qty, asks.qty
        top_b = tuple((p, bq[p]) for p in bids.prices[: -depth - 1 : -1])
        top_a = tuple((p, aq[p]) for p in asks.prices[:depth])
        return top_b, top_a
    return (
        tuple(sorted(bids.items(), reverse=True)[:depth]),
        tuple(sorted(asks.items())[:depth]),
    )


@dataclass(frozen=True, slots=True)
class BookLevels:
    """The top of a book after update ``last_update_id``; prices and quantities in units of 1e-8."""

    last_update_id: int
    bids: tuple[Level, ...]  # best first
    asks: tuple[Level, ...]


class BookHistory:
    """The recent updates of one symbol, to rebuild its book as of any of their ids.

    Keeps the level changes of at least the last ``max_updates`` updates (at most a quarter more)
    and a full copy of the book every :data:`CHECKPOINT_EVERY` updates, all as flat integer arrays
    (about 300 bytes an update); a lookup copies the nearest earlier checkpoint and replays at
    most that many updates.
    """

    def __init__(self, model: MarketModel, max_updates: int = 100_000) -> None:
        if max_updates < 1:
            raise ValueError(f"max_updates must be positive; got {max_updates}")
        self.max_updates = max_updates
        self._every = min(CHECKPOINT_EVERY, max_updates)
        # Per update: [number of bid levels, bid price, bid qty, ..., ask price, ask qty, ...].
        # Lists (trimmed in chunks) rather than deques: lookups index into the middle.
        self._changes: list[array[int]] = []
        self._ids: list[int] = []
        self._first_seq = 0  # sequence number of _changes[0]
        # (seq of the last update included, its id, bids, asks); seq -1 is the seed book.
        self._checkpoints: deque[tuple[int, int, array[int], array[int]]] = deque()
        self._model = model
        self._checkpoint(-1, model.last_update_id)

    def _checkpoint(self, seq: int, update_id: int) -> None:
        m = self._model
        bids = array("q", [x for level in m.bids.items() for x in level])
        asks = array("q", [x for level in m.asks.items() for x in level])
        self._checkpoints.append((seq, update_id, bids, asks))

    @property
    def first_id(self) -> int:
        """The oldest update id the history can rebuild (a checkpoint's id)."""
        return self._checkpoints[0][1]

    def record(self, update: Update) -> None:
        """Remember an update the model has just applied."""
        seq = self._first_seq + len(self._changes)
        flat = [len(update.bids)]
        for price, qty in update.bids:
            flat += (price, qty)
        for price, qty in update.asks:
            flat += (price, qty)
        self._changes.append(array("q", flat))
        self._ids.append(update.update_id)
        if (seq + 1) % self._every == 0:
            self._checkpoint(seq, update.update_id)
        excess = len(self._changes) - self.max_updates
        if excess > self.max_updates // 4:
            del self._changes[:excess]
            del self._ids[:excess]
            self._first_seq += excess
        # A checkpoint is usable while the update right after it is still kept.
        while len(self._checkpoints) > 1 and self._checkpoints[0][0] < self._first_seq - 1:
            self._checkpoints.popleft()

    def seq_of(self, update_id: int) -> int:
        """Sequence number of the last update with an id at or below ``update_id`` (-1: none)."""
        if update_id < self.first_id:
            raise SimulatorError(
                f"update id {update_id} is older than the history kept (oldest {self.first_id})"
            )
        if self._ids and update_id > self._ids[-1]:
            raise SimulatorError(
                f"update id {update_id} has not happened yet (last {self._ids[-1]})"
            )
        return self._first_seq + bisect.bisect_right(self._ids, update_id) - 1

    def book_at(self, update_id: int, depth: int) -> BookLevels:
        """The top ``depth`` levels as they stood after the last update with id <= ``update_id``."""
        return self.book_at_seq(self.seq_of(update_id), depth)

    def book_at_seq(self, seq: int, depth: int) -> BookLevels:
        """Like :meth:`book_at`, by sequence number (-1 is the seed book)."""
        cps = self._checkpoints
        k = bisect.bisect_right([c[0] for c in cps], seq) - 1
        if k < 0:
            raise SimulatorError(f"sequence {seq} is older than the history kept")
        cp_seq, last_id, cp_bids, cp_asks = cps[k]
        bids = dict(zip(cp_bids[0::2], cp_bids[1::2], strict=True))
        asks = dict(zip(cp_asks[0::2], cp_asks[1::2], strict=True))
        for s in range(cp_seq + 1, seq + 1):
            flat = self._changes[s - self._first_seq]
            split = 1 + 2 * flat[0]
            _apply(bids, zip(flat[1:split:2], flat[2:split:2], strict=True))
            _apply(asks, zip(flat[split::2], flat[split + 1 :: 2], strict=True))
            last_id = self._ids[s - self._first_seq]
        top_b, top_a = top_levels(bids, asks, depth)
        return BookLevels(last_id, top_b, top_a)

    def last_seq(self) -> int:
        """Sequence number of the newest update recorded (-1 before the first)."""
        return self._first_seq + len(self._changes) - 1

    def oldest_seq(self) -> int:
        """The oldest sequence number :meth:`book_at_seq` can rebuild."""
        return self._checkpoints[0][0]


def _apply(side: dict[int, int], levels: Iterable[tuple[int, int]]) -> None:
    for price, qty in levels:
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)
