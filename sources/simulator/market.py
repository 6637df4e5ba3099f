"""A deterministic, seeded order-book and trade generator for one symbol.

Pure: no I/O, no clock of its own (times are passed in), no threads. Prices and quantities are
integer units of ``1e-8`` (:data:`market_data.events.SCALE`), on the symbol's tick and lot grid.

One *update* is one matching-engine event with its own update id: 1 to 40 level changes (about a
tenth of them deletions), and sometimes a taker trade that consumes the touch. USD-M Futures ids
skip (Binance's futures ids are shared with events a stream does not show, which is why futures
frames carry ``pu``); spot ids are contiguous. :class:`BookHistory` keeps enough of the past to
rebuild the book as it stood after any recent update id.
"""

from __future__ import annotations

import bisect
import random
import zlib
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sortedcontainers import SortedDict

from market_data import MarketDataError
from market_data.events import DECIMALS, SCALE, Level, Market

MAX_CHANGES = 40
DELETE_SHARE = 0.10
CHECKPOINT_EVERY = 1_000
"""Updates between two full copies of the book kept by :class:`BookHistory`."""


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


class MarketModel:
    """The live book of one symbol and the generator of its updates."""

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
        self.bids: SortedDict = SortedDict()  # price -> qty, best is the last key
        self.asks: SortedDict = SortedDict()  # best is the first key
        self._seed_book()

    # -- views -----------------------------------------------------------------------------
    def best_bid(self) -> Level:
        """The highest bid ``(price, qty)``."""
        return self.bids.peekitem(-1)

    def best_ask(self) -> Level:
        """The lowest ask ``(price, qty)``."""
        return self.asks.peekitem(0)

    def top(self, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best ``depth`` levels of each side, best first."""
        return top_levels(self.bids, self.asks, depth)

    # -- generation ------------------------------------------------------------------------
    def next_update(self, time_ms: int) -> Update:
        """Generate, apply and return the next update."""
        rng = self._rng
        changes: dict[tuple[bool, int], int] = {}  # (is_bid, price) -> new qty
        fills: tuple[Fill, ...] = ()
        if rng.random() < self.trade_probability:
            fills = self._trade(changes, time_ms)
        count = 1 + min(MAX_CHANGES - 1, int(rng.expovariate(0.25)))
        if fills:
            count = max(0, count - len(changes))
        for _ in range(count):
            self._change(rng.random() < 0.5, changes)
        while not changes:  # an insert can be refused (no room inside the spread): try again
            self._change(rng.random() < 0.5, changes)
        self._trim(changes)
        step = 1 if self.market is Market.SPOT else 1 + int(rng.expovariate(0.15))
        self.last_update_id += step
        bids = tuple(sorted(((p, q) for (b, p), q in changes.items() if b), reverse=True))
        asks = tuple(sorted((p, q) for (b, p), q in changes.items() if not b))
        return Update(self.last_update_id, time_ms, bids, asks, fills)

    def _side(self, is_bid: bool) -> SortedDict:
        return self.bids if is_bid else self.asks

    def _set(
        self, is_bid: bool, price: int, qty: int, changes: dict[tuple[bool, int], int]
    ) -> None:
        side = self._side(is_bid)
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)
        changes[(is_bid, price)] = qty

    def _qty(self) -> int:
        return self.spec.lot * max(1, int(self._rng.lognormvariate(3.0, 1.4)))

    def _nth(self, is_bid: bool, n: int) -> int:
        side = self._side(is_bid)
        n = min(n, len(side) - 1)
        return side.peekitem(-1 - n if is_bid else n)[0]

    def _change(self, is_bid: bool, changes: dict[tuple[bool, int], int]) -> None:
        rng = self._rng
        side = self._side(is_bid)
        roll = rng.random()
        depth = int(rng.expovariate(1 / 25))  # most activity is near the touch
        # Inserts outnumber deletions below the target depth and not above it, so each side
        # hovers around ``levels``.
        insert_share = 0.45 if len(side) < self.levels else 0.05
        if roll < DELETE_SHARE and len(side) > self.levels // 2:
            self._set(is_bid, self._nth(is_bid, depth), 0, changes)
        elif roll < DELETE_SHARE + insert_share:
            tick = self.spec.tick
            bid, ask = self.bids.peekitem(-1)[0], self.asks.peekitem(0)[0]
            gap = (ask - bid) // tick - 1  # free ticks inside the spread
            if gap > 0 and rng.random() < 0.5:  # makers close a wide spread quickly
                inside = (1 + int(rng.random() * min(gap, 3))) * tick
                price = bid + inside if is_bid else ask - inside
            else:
                price = bid - depth * tick if is_bid else ask + depth * tick
                away = -tick if is_bid else tick
                for _ in range(50):  # a new level: the first free tick from there, outwards
                    if price not in side:
                        break
                    price += away
                if price <= 0:
                    return
            self._set(is_bid, price, self._qty(), changes)
        else:
            self._set(is_bid, self._nth(is_bid, depth), self._qty(), changes)

    def _trim(self, changes: dict[tuple[bool, int], int]) -> None:
        """Keep each side within 10% of the target depth by removing its farthest levels."""
        for is_bid in (True, False):
            side = self._side(is_bid)
            while len(side) > self.levels * 1.1:
                far = side.peekitem(0 if is_bid else -1)[0]
                self._set(is_bid, far, 0, changes)

    def _trade(self, changes: dict[tuple[bool, int], int], time_ms: int) -> tuple[Fill, ...]:
        """A taker order that sweeps one or a few levels from the touch."""
        rng = self._rng
        taker_buys = rng.random() < 0.5
        book_side = not taker_buys  # a buyer takes asks, a seller takes bids
        side = self._side(book_side)
        want = 0
        for n in range(min(3, len(side) - 1)):
            want += side.peekitem(-1 - n if book_side else n)[1]
        want = max(self.spec.lot, int(want * rng.random() ** 2) // self.spec.lot * self.spec.lot)
        fills = []
        while want > 0 and len(side) > 1:
            price, qty = side.peekitem(-1 if book_side else 0)
            taken = min(qty, want)
            want -= taken
            makers = 1 + min(4, int(rng.expovariate(0.8)))
            first = self._next_trade_id
            self._next_trade_id += makers
            fills.append(
                Fill(self._next_agg_id, price, taken, first, first + makers - 1, time_ms, book_side)
            )
            self._next_agg_id += 1
            self._set(book_side, price, qty - taken, changes)
        return tuple(fills)

    def _seed_book(self) -> None:
        rng, tick = self._rng, self.spec.tick
        mid = self.spec.mid_price // tick * tick
        for is_bid in (True, False):
            side = self._side(is_bid)
            price = mid - tick if is_bid else mid + tick
            while len(side) < self.levels:
                if rng.random() < 0.9:
                    side[price] = self._qty()
                price += -tick if is_bid else tick
                if price <= 0:
                    raise ValueError(
                        f"{self.spec.symbol}: mid price too low for {self.levels} levels"
                    )


def top_levels(
    bids: SortedDict | dict[int, int], asks: SortedDict | dict[int, int], depth: int
) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    """The best ``depth`` levels of each side, best first."""
    if isinstance(bids, SortedDict) and isinstance(asks, SortedDict):
        nb, na = min(depth, len(bids)), min(depth, len(asks))
        top_b = tuple(bids.peekitem(-1 - i) for i in range(nb))
        top_a = tuple(asks.peekitem(i) for i in range(na))
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
        flat = array("q", [len(update.bids)])
        for level in update.bids + update.asks:
            flat.extend(level)
        self._changes.append(flat)
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
