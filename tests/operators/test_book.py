"""OrderBook against a plain-dict reference, under random deltas in a small price range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.book import OrderBook

PRICES = st.integers(min_value=1, max_value=30)  # few prices: re-adds and deletes collide
QTYS = st.one_of(st.just(0), st.just(0), st.integers(min_value=1, max_value=5))
LEVELS = st.lists(st.tuples(PRICES, QTYS), max_size=8)
DELTAS = st.lists(st.tuples(LEVELS, LEVELS), max_size=25)
NS = (1, 2, 5, 1000)


class NaiveBook:
    """What the book must hold: a dict per side, pruned to the levels nearest the touch."""

    def __init__(self, max_levels: int) -> None:
        self.max_levels = max_levels
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def apply(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, qty in levels:
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        self._prune()

    def replace(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        self.bids = {p: q for p, q in bids if q}
        self.asks = {p: q for p, q in asks if q}
        self._prune()

    def _prune(self) -> None:
        keep = sorted(self.bids, reverse=True)[: self.max_levels]
        self.bids = {p: self.bids[p] for p in keep}
        keep = sorted(self.asks)[: self.max_levels]
        self.asks = {p: self.asks[p] for p in keep}

    def top_bids(self, n: int) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self.bids.items(), reverse=True)[:n])

    def top_asks(self, n: int) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self.asks.items())[:n])


def assert_same(book: OrderBook, ref: NaiveBook) -> None:
    assert book.bids() == ref.bids
    assert book.asks() == ref.asks
    assert book.depth() == (len(ref.bids), len(ref.asks))
    for n in NS:
        assert book.top_bids(n) == ref.top_bids(n)
        assert book.top_asks(n) == ref.top_asks(n)
    assert book.best_bid() == (ref.top_bids(1)[0] if ref.bids else None)
    assert book.best_ask() == (ref.top_asks(1)[0] if ref.asks else None)
    crossed = bool(ref.bids and ref.asks) and max(ref.bids) >= min(ref.asks)
    assert book.is_crossed() is crossed


@settings(max_examples=150, deadline=None)
@given(deltas=DELTAS)
def test_apply_matches_dict_reference(deltas: list) -> None:
    book, ref = OrderBook(), NaiveBook(10**9)
    for bids, asks in deltas:
        book.apply(bids, asks)
        ref.apply(bids, asks)
        assert_same(book, ref)
    assert book.pruned == 0


@settings(max_examples=150, deadline=None)
@given(deltas=DELTAS)
def test_top_levels_are_right_when_prices_span_many_sorted_sublists(deltas: list) -> None:
    # top_bids/top_asks slice the SortedList's edge sublist when it holds n prices. Real books
    # fit in one or two sublists of ~1,000; a load factor of 4 makes every book span many short
    # sublists, so both that path and the general one are compared with the reference.
    book, ref = OrderBook(), NaiveBook(10**9)
    book._bid_keys._reset(4)
    book._ask_keys._reset(4)
    book.apply([(p, 1) for p in range(1, 31, 2)], [(p, 1) for p in range(2, 31, 2)])
    ref.apply([(p, 1) for p in range(1, 31, 2)], [(p, 1) for p in range(2, 31, 2)])
    for bids, asks in deltas:
        book.apply(bids, asks)
        ref.apply(bids, asks)
        assert_same(book, ref)


@settings(max_examples=150, deadline=None)
@given(snap=st.tuples(LEVELS, LEVELS), deltas=DELTAS, max_levels=st.integers(1, 6))
def test_replace_then_apply_with_pruning(snap: tuple, deltas: list, max_levels: int) -> None:
    book, ref = OrderBook(max_levels), NaiveBook(max_levels)
    book.apply([(p, 9) for p in range(1, 31)], [(p, 9) for p in range(1, 31)])  # replaced below
    book.replace(*snap)
    ref.replace(*snap)
    assert_same(book, ref)
    for bids, asks in deltas:
        book.apply(bids, asks)
        ref.apply(bids, asks)
        assert_same(book, ref)
        assert len(book.bids()) <= max_levels and len(book.asks()) <= max_levels


def test_pruning_drops_the_levels_farthest_from_the_touch_and_counts_them() -> None:
    book = OrderBook(max_levels=2)
    book.replace([(100, 1), (99, 1), (98, 1)], [(101, 1), (102, 1), (103, 1)])
    assert book.top_bids(10) == ((100, 1), (99, 1))
    assert book.top_asks(10) == ((101, 1), (102, 1))
    assert book.pruned == 2
    book.apply([(97, 5)], [(104, 5)])  # beyond the kept depth: pruned at once
    assert book.bids() == {100: 1, 99: 1} and book.asks() == {101: 1, 102: 1}
    book.apply([(100, 0), (99, 0), (50, 3)], [(101, 0)])  # deletes leave room; no backfill
    assert book.bids() == {50: 3} and book.asks() == {102: 1}
    assert book.pruned == 4


def test_absolute_quantities_and_deletes_of_absent_levels() -> None:
    book = OrderBook()
    book.apply([(10, 5), (10, 7)], [(20, 1)])  # the later quantity for a price wins
    assert book.bids() == {10: 7}
    book.apply([(11, 0), (10, 0), (10, 0)], [(21, 0)])  # absent or already removed: no effect
    assert book.bids() == {} and book.asks() == {20: 1}
    book.apply([(10, 3)], [])  # re-add after delete
    assert book.top_bids(5) == ((10, 3),) and book.best_bid() == (10, 3)


def test_empty_book_views() -> None:
    book = OrderBook()
    assert book.best_bid() is None and book.best_ask() is None
    assert book.top_bids(5) == () and book.top_asks(5) == ()
    assert not book.is_crossed()
    assert book.depth() == (0, 0)


@pytest.mark.parametrize(
    ("bid", "ask", "crossed"),
    [(100, 101, False), (101, 101, True), (102, 101, True), (None, 101, False), (100, None, False)],
)
def test_crossed_detection(bid: int | None, ask: int | None, crossed: bool) -> None:
    book = OrderBook()
    book.replace([(bid, 1)] if bid else [], [(ask, 1)] if ask else [])
    assert book.is_crossed() is crossed


def test_replace_discards_previous_levels_and_zero_quantities() -> None:
    book = OrderBook()
    book.apply([(1, 1), (2, 2)], [(5, 5)])
    book.replace([(3, 3), (4, 0)], [(6, 0), (7, 7)])
    assert book.bids() == {3: 3} and book.asks() == {7: 7}
    assert book.top_bids(3) == ((3, 3),) and book.top_asks(3) == ((7, 7),)


def test_clear_and_copies_are_not_views() -> None:
    book = OrderBook()
    book.apply([(1, 1)], [(2, 2)])
    copy = book.bids()
    copy[5] = 5
    assert book.bids() == {1: 1}
    book.clear()
    assert book.depth() == (0, 0) and book.best_bid() is None
    book.apply([(1, 4)], [])
    assert book.top_bids(1) == ((1, 4),)


def test_max_levels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_levels must be positive"):
        OrderBook(0)
