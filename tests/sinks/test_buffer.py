from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_data.events import BookUpdate, Trade
from sinks.buffer import Pending, PendingBuffer, Target

BOTH = Target.PUBLISH | Target.STREAM


def book(symbol: str, update_id: int) -> Pending:
    update = BookUpdate(symbol, ((100, 1),), ((101, 1),), update_id, update_id, 0.0)
    return Pending(update, BOTH)


def trade(trade_id: int, symbol: str = "BTCUSDT") -> Pending:
    return Pending(Trade(symbol, trade_id, 100, 1, trade_id, False, trade_id, 0.0), BOTH)


def ids(pendings: list[Pending]) -> list[tuple[str, str, int]]:
    """(kind, symbol, id) of each pending item, in order."""
    out = []
    for p in pendings:
        if isinstance(p.item, Trade):
            out.append(("trade", p.item.symbol, p.item.trade_id))
        else:
            out.append(("book", p.item.symbol, p.item.last_update_id))
    return out


def test_keeps_only_the_latest_book_per_symbol() -> None:
    buf = PendingBuffer(10)
    for p in (book("BTCUSDT", 1), book("ETHUSDT", 2), book("BTCUSDT", 3)):
        assert buf.add(p) == 0
    assert (buf.books, buf.trades, len(buf)) == (2, 0, 2)
    assert ids(buf.drain()) == [("book", "ETHUSDT", 2), ("book", "BTCUSDT", 3)]
    assert len(buf) == 0


def test_keeps_every_trade_in_order_and_drains_trades_before_books() -> None:
    buf = PendingBuffer(10)
    for p in (trade(1), book("BTCUSDT", 7), trade(2, "ETHUSDT"), trade(3)):
        buf.add(p)
    assert ids(buf.drain()) == [
        ("trade", "BTCUSDT", 1),
        ("trade", "ETHUSDT", 2),
        ("trade", "BTCUSDT", 3),
        ("book", "BTCUSDT", 7),
    ]


def test_overflow_drops_the_oldest_trades_and_reports_each() -> None:
    buf = PendingBuffer(3)
    dropped = [buf.add(trade(i)) for i in range(1, 6)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [t for _, _, t in ids(buf.drain())] == [3, 4, 5]


def test_books_never_count_against_the_trade_bound() -> None:
    buf = PendingBuffer(1)
    assert [buf.add(book(f"S{i}X", i)) for i in range(5)] == [0] * 5
    assert buf.add(trade(1)) == 0
    assert (buf.books, buf.trades) == (5, 1)


def test_drain_with_a_limit_takes_the_oldest_trades_and_every_book() -> None:
    buf = PendingBuffer(10)
    for p in (trade(1), trade(2), book("BTCUSDT", 9), trade(3)):
        buf.add(p)
    assert ids(buf.drain(2)) == [
        ("trade", "BTCUSDT", 1),
        ("trade", "BTCUSDT", 2),
        ("book", "BTCUSDT", 9),
    ]
    assert ids(buf.drain(2)) == [("trade", "BTCUSDT", 3)]


def test_requeue_puts_failed_trades_back_in_front_and_marks_them() -> None:
    buf = PendingBuffer(10)
    buf.add(trade(1))
    buf.add(trade(2))
    failed = buf.drain()
    buf.add(trade(3))
    assert buf.requeue(failed, maybe_sent=True) == 0
    out = buf.drain()
    assert [t for _, _, t in ids(out)] == [1, 2, 3]
    assert [p.maybe_sent for p in out] == [True, True, False]


def test_requeue_without_maybe_sent_keeps_the_mark_as_it_was() -> None:
    buf = PendingBuffer(10)
    buf.requeue(
        [trade(1), Pending(trade(2).item, Target.STREAM, maybe_sent=True)], maybe_sent=False
    )
    out = buf.drain()
    assert [(p.maybe_sent, p.targets) for p in out] == [(False, BOTH), (True, Target.STREAM)]


def test_requeued_book_loses_to_a_newer_one_held() -> None:
    buf = PendingBuffer(10)
    buf.add(book("BTCUSDT", 5))
    buf.requeue([book("BTCUSDT", 3), book("BTCUSDT", 4), book("ETHUSDT", 1)], maybe_sent=True)
    assert sorted(ids(buf.drain())) == [("book", "BTCUSDT", 5), ("book", "ETHUSDT", 1)]


def test_requeue_overflow_drops_the_oldest_which_are_the_requeued_trades() -> None:
    buf = PendingBuffer(3)
    buf.add(trade(3))
    buf.add(trade(4))
    assert buf.requeue([trade(1), trade(2)], maybe_sent=True) == 1
    assert [t for _, _, t in ids(buf.drain())] == [2, 3, 4]


def test_rejects_a_bound_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1; got 0"):
        PendingBuffer(0)


# Property: whatever mix of arrivals, partial drains and failed deliveries, every trade is
# delivered exactly once or counted as dropped, delivered trades keep their order, and each
# symbol's last delivered book is its latest.
_op = st.one_of(
    st.tuples(st.just("book"), st.sampled_from(["AAA", "BBB", "CCC"])),
    st.tuples(st.just("trade"), st.just("")),
    st.tuples(st.just("deliver"), st.integers(0, 5)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
)


@given(max_trades=st.integers(1, 6), ops=st.lists(_op, max_size=80))
def test_every_trade_is_delivered_once_in_order_or_counted(
    max_trades: int, ops: list[tuple[str, object]]
) -> None:
    buf = PendingBuffer(max_trades)
    next_id = 0
    latest_book: dict[str, int] = {}
    delivered_trades: list[int] = []
    delivered_books: dict[str, list[int]] = {}
    dropped = 0

    def deliver(pendings: list[Pending]) -> None:
        for p in pendings:
            if isinstance(p.item, Trade):
                delivered_trades.append(p.item.trade_id)
            else:
                delivered_books.setdefault(p.item.symbol, []).append(p.item.last_update_id)

    for kind, arg in ops:
        if kind in ("book", "trade"):
            next_id += 1
            if kind == "book":
                assert isinstance(arg, str)
                latest_book[arg] = next_id
                dropped += buf.add(book(arg, next_id))
            else:
                dropped += buf.add(trade(next_id))
        elif kind == "deliver":
            assert isinstance(arg, int)
            deliver(buf.drain(arg))
        else:
            assert isinstance(arg, int)
            dropped += buf.requeue(buf.drain(arg), maybe_sent=True)
        assert buf.trades <= max_trades
    deliver(buf.drain())

    added_trades = sum(1 for kind, _ in ops if kind == "trade")
    assert len(delivered_trades) + dropped == added_trades
    assert delivered_trades == sorted(set(delivered_trades))
    for symbol, seen in delivered_books.items():
        assert seen == sorted(set(seen))
        assert seen[-1] == latest_book[symbol]
    assert set(delivered_books) == set(latest_book)
