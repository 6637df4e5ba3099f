"""An exact L2 order book for one symbol.

Pure: no I/O, no bytewax. Prices and quantities are integer units (see :mod:`market_data.events`);
each side is a dict ``price -> (price, quantity)`` plus a ``SortedList`` of its prices, which
measured about twice as fast as ``SortedDict`` for Binance-sized updates. Both lists are
ascending, so the best bid is the last element and the best ask the first.

The dict keeps the ``(price, quantity)`` tuple the parser made for the level (levels must be
tuples), so a top-N view is made of existing tuples by ``map`` in C, with no tuple made per level
and view: making 40 of them was about a third of the view's cost.

The top-N view reads the ``SortedList``'s first (asks) or last (bids) internal sublist directly
when it holds N prices (it holds up to ~1,000, so nearly always): a slice of a plain list instead
of ``SortedList.__getitem__``'s position arithmetic, which was most of the view's cost. This relies
on ``SortedList._lists`` (sortedcontainers 2.x, pinned in ``pyproject.toml``); the general path is
used otherwise, and the tests compare both with a reference on random books.

**The exact window.** A book built from a snapshot of ``limit`` levels knows the exchange's book
exactly only between the snapshot's deepest bid and deepest ask (and at every price a later
update set): the exchange may hold levels beyond them that never changed since. ``bid_floor``
and ``ask_ceiling`` are those bounds (``None``: the whole side is known); pruning far levels
narrows them, merging a snapshot (:meth:`OrderBook.overlay`) widens them. The book never claims
more than that: :meth:`OrderBook.exact_top` gives the top levels only while they lie inside.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from sortedcontainers import SortedList

from market_data.events import Level, units_text

DEFAULT_MAX_LEVELS = 5_000
"""Levels kept per side; the ones farthest from the touch are pruned past this."""


class OrderBook:
    """Absolute-quantity L2 book: quantity 0 removes a level; removing an absent level is normal."""

    __slots__ = (
        "_ask_keys",
        "_asks",
        "_bid_keys",
        "_bids",
        "ask_ceiling",
        "bid_floor",
        "max_levels",
        "pruned",
    )

    def __init__(self, max_levels: int = DEFAULT_MAX_LEVELS) -> None:
        if max_levels < 1:
            raise ValueError(f"max_levels must be positive; got {max_levels}")
        self.max_levels = max_levels
        self._bids: dict[int, Level] = {}
        self._asks: dict[int, Level] = {}
        self._bid_keys: SortedList = SortedList()
        self._ask_keys: SortedList = SortedList()
        self.pruned = 0  # levels dropped for being beyond max_levels, over the book's life
        # Every bid at or above bid_floor, and every ask at or below ask_ceiling, is exactly
        # the exchange's; None: the whole side is (see the module docstring).
        self.bid_floor: int | None = None
        self.ask_ceiling: int | None = None

    def clear(self) -> None:
        """Remove every level."""
        self._bids.clear()
        self._asks.clear()
        self._bid_keys.clear()
        self._ask_keys.clear()
        self.bid_floor = self.ask_ceiling = None

    def replace(
        self,
        bids: Iterable[Level],
        asks: Iterable[Level],
        bid_floor: int | None = None,
        ask_ceiling: int | None = None,
    ) -> None:
        """Replace the whole book by a snapshot (levels of quantity 0 are skipped).

        ``bid_floor`` and ``ask_ceiling`` bound what the snapshot knows (see
        :meth:`market_data.events.DepthSnapshot.window`); ``None`` means the whole side.
        """
        self._bids = {level[0]: level for level in bids if level[1]}
        self._asks = {level[0]: level for level in asks if level[1]}
        self._bid_keys = SortedList(self._bids)
        self._ask_keys = SortedList(self._asks)
        self.bid_floor, self.ask_ceiling = bid_floor, ask_ceiling
        self._prune()

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply absolute quantities for the changed levels of one update."""
        levels, keys = self._bids, self._bid_keys
        for level in bids:
            price = level[0]
            if level[1]:
                if price not in levels:
                    keys.add(price)
                levels[price] = level
            elif levels.pop(price, None) is not None:
                keys.remove(price)
        levels, keys = self._asks, self._ask_keys
        for level in asks:
            price = level[0]
            if level[1]:
                if price not in levels:
                    keys.add(price)
                levels[price] = level
            elif levels.pop(price, None) is not None:
                keys.remove(price)
        if len(self._bids) > self.max_levels or len(self._asks) > self.max_levels:
            self._prune()

    def _prune(self) -> None:
        """Drop the farthest levels past ``max_levels``; what lay there is unknown from now on."""
        keys = self._bid_keys
        if len(keys) > self.max_levels:
            while len(keys) > self.max_levels:
                del self._bids[keys.pop(0)]
                self.pruned += 1
            floor = self.bid_floor
            self.bid_floor = keys[0] if floor is None or keys[0] > floor else floor
        keys = self._ask_keys
        if len(keys) > self.max_levels:
            while len(keys) > self.max_levels:
                del self._asks[keys.pop()]
                self.pruned += 1
            ceiling = self.ask_ceiling
            self.ask_ceiling = keys[-1] if ceiling is None or keys[-1] < ceiling else ceiling

    def overlay(
        self,
        bids: Iterable[Level],
        asks: Iterable[Level],
        bid_floor: int | None,
        ask_ceiling: int | None,
        newer_bids: Container[int] = (),
        newer_asks: Container[int] = (),
    ) -> int:
        """Take a snapshot's levels within its window, and widen the book's window to it.

        Inside the snapshot's window (bids at or above ``bid_floor``, asks at or below
        ``ask_ceiling``; ``None``: the whole side), the book becomes the snapshot, except at the
        prices in ``newer_bids`` / ``newer_asks``: updates newer than the snapshot set those, and
        the book holds their newer quantity. Returns how many levels differed from the snapshot
        where the book claimed to know them exactly (inside its own window, not newer): 0 on a
        correct book, so the merge is also an audit.
        """
        differed = self._overlay_side(
            self._bids, self._bid_keys, bids, bid_floor, self.bid_floor, newer_bids, True
        )
        differed += self._overlay_side(
            self._asks, self._ask_keys, asks, ask_ceiling, self.ask_ceiling, newer_asks, False
        )
        if self.bid_floor is not None:
            self.bid_floor = None if bid_floor is None else min(self.bid_floor, bid_floor)
        if self.ask_ceiling is not None:
            self.ask_ceiling = None if ask_ceiling is None else max(self.ask_ceiling, ask_ceiling)
        if len(self._bids) > self.max_levels or len(self._asks) > self.max_levels:
            self._prune()
        return differed

    @staticmethod
    def _overlay_side(
        levels: dict[int, Level],
        keys: SortedList,
        snap: Iterable[Level],
        bound: int | None,
        known: int | None,
        newer: Container[int],
        is_bid: bool,
    ) -> int:
        """One side of :meth:`overlay`: ``bound`` is the snapshot's, ``known`` the book's."""
        given = {level[0]: level for level in snap if level[1]}
        if bound is None:
            inside = list(keys)
        elif is_bid:
            inside = list(keys.irange(minimum=bound))
        else:
            inside = list(keys.irange(maximum=bound))

        def claimed(price: int) -> bool:  # the book said it knew this price exactly
            return known is None or (price >= known if is_bid else price <= known)

        differed = 0
        for price in inside:  # levels the snapshot says are gone
            if price not in given and price not in newer:
                if claimed(price):
                    differed += 1
                del levels[price]
                keys.remove(price)
        for price, level in given.items():
            if price in newer:
                continue
            held = levels.get(price)
            if held is None:
                keys.add(price)
            elif held[1] == level[1]:
                continue
            if claimed(price):
                differed += 1
            levels[price] = level
        return differed

    def restrict(self, bid_floor: int | None, ask_ceiling: int | None) -> None:
        """Forget every level outside ``bid_floor``..``ask_ceiling``, and narrow the window to it.

        Narrow only: where the book already knew less (levels pruned since), it stays so.
        """
        if bid_floor is None or (self.bid_floor is not None and self.bid_floor > bid_floor):
            bid_floor = self.bid_floor
        if ask_ceiling is None or (self.ask_ceiling is not None and self.ask_ceiling < ask_ceiling):
            ask_ceiling = self.ask_ceiling
        if bid_floor is not None:
            for price in list(self._bid_keys.irange(maximum=bid_floor, inclusive=(True, False))):
                del self._bids[price]
                self._bid_keys.remove(price)
        if ask_ceiling is not None:
            for price in list(self._ask_keys.irange(minimum=ask_ceiling, inclusive=(False, True))):
                del self._asks[price]
                self._ask_keys.remove(price)
        self.bid_floor, self.ask_ceiling = bid_floor, ask_ceiling

    def exact_top(self, n: int) -> tuple[tuple[Level, ...], tuple[Level, ...]] | str:
        """The best ``n`` bids and asks, or why they are not known exactly (a reason)."""
        bids, asks = self.top_bids(n), self.top_asks(n)
        floor, ceiling = self.bid_floor, self.ask_ceiling
        if floor is not None and (len(bids) < n or bids[-1][0] < floor):
            known = units_text(floor)
            return f"the top {n} bids reach below the lowest bid known exactly ({known})"
        if ceiling is not None and (len(asks) < n or asks[-1][0] > ceiling):
            known = units_text(ceiling)
            return f"the top {n} asks reach above the highest ask known exactly ({known})"
        return bids, asks

    def top_bids(self, n: int) -> tuple[Level, ...]:
        """The best ``n`` bids, highest price first."""
        levels, keys = self._bids, self._bid_keys
        lists = keys._lists
        if lists and len(lists[-1]) >= n:
            head = lists[-1][-n:]  # the n highest prices, ascending
        else:
            head = list(keys.islice(max(len(keys) - n, 0)))
        head.reverse()
        return tuple(map(levels.__getitem__, head))

    def top_asks(self, n: int) -> tuple[Level, ...]:
        """The best ``n`` asks, lowest price first."""
        levels, keys = self._asks, self._ask_keys
        lists = keys._lists
        head = lists[0][:n] if lists and len(lists[0]) >= n else keys[:n]
        return tuple(map(levels.__getitem__, head))

    def best_bid(self) -> Level | None:
        """The highest bid, or ``None`` when there are no bids."""
        return self._bids[self._bid_keys[-1]] if self._bid_keys else None

    def best_ask(self) -> Level | None:
        """The lowest ask, or ``None`` when there are no asks."""
        return self._asks[self._ask_keys[0]] if self._ask_keys else None

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask (impossible on a correct book)."""
        bids, asks = self._bid_keys._lists, self._ask_keys._lists  # no sublist is ever empty
        return bool(bids and asks) and bids[-1][-1] >= asks[0][0]

    def depth(self) -> tuple[int, int]:
        """Number of bid and ask levels."""
        return len(self._bids), len(self._asks)

    def bids(self) -> dict[int, int]:
        """A copy of every bid level, ``price -> quantity``."""
        return {p: level[1] for p, level in self._bids.items()}

    def asks(self) -> dict[int, int]:
        """A copy of every ask level, ``price -> quantity``."""
        return {p: level[1] for p, level in self._asks.items()}
