"""The book view: what a trader is told about a book, as a pure function of what arrived and now."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from market_data.bookview import Book, BookView, Condition, decimals, render_text

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def book(u: int = 100, bids=((50000.0, 1.5), (49999.9, 0.002)), asks=((50000.1, 2.0),)):
    return {
        "symbol": "BTCUSDT",
        "bids": [list(b) for b in bids],
        "asks": [list(a) for a in asks],
        "last_update_id": u,
        "timestamp": 1_700_000_000_123,
    }


def trade(i: int, price: float = 50000.1, maker: bool = False):
    return {
        "symbol": "BTCUSDT",
        "trade_id": i,
        "price": price,
        "quantity": 0.25,
        "timestamp": 1_700_000_000_500,
        "is_buyer_maker": maker,
    }


def status(state: str, reason: str = ""):
    return {"symbol": "BTCUSDT", "state": state, "reason": reason, "last_update_id": 0}


@pytest.mark.parametrize(
    ("feed", "now", "condition", "words"),
    [
        ([], T0, Condition.WAITING, "waiting for the first book of BTCUSDT"),
        ([("status", status("awaiting_snapshot"), T0)], T0, Condition.SYNCING, "snapshot"),
        ([("book", book(), T0)], T0 + 1, Condition.LIVE, "synced and updating"),
        ([("book", book(), T0)], T0 + 5.5, Condition.STALE, "no update of BTCUSDT for 5.5 s"),
        (  # published 12 s after the exchange's event: the service is behind
            [("book", book(), T0 + 12)],
            T0 + 12.1,
            Condition.STALE,
            "BTCUSDT is 11.9 s behind the exchange",
        ),
        (
            [("book", book(), T0), ("status", status("resyncing", "gap: pu 7 != 6"), T0 + 1)],
            T0 + 1.1,
            Condition.RESYNCING,
            "resyncing: gap: pu 7 != 6; the book shown is the last good one",
        ),
        (  # a book after the resync: the service publishes books only while synced
            [("status", status("resyncing"), T0), ("book", book(101), T0 + 1)],
            T0 + 1.1,
            Condition.LIVE,
            "synced",
        ),
    ],
)
def test_headline_says_whether_the_book_can_be_trusted(feed, now, condition, words):
    view = BookView("BTCUSDT", "shm demo.w0")
    for kind, data, at in feed:
        getattr(view, f"on_{kind}")(data, at)
    head = view.headline(now)
    assert head.condition is condition
    assert words in head.message
    assert head.trusted == (condition is Condition.LIVE)


def test_source_down_outranks_everything_until_it_is_back():
    view = BookView("BTCUSDT")
    view.on_book(book(), T0)
    view.source_down("the service that writes the ring is no longer running")
    head = view.headline(T0)
    assert (head.condition, head.message) == (
        Condition.DOWN,
        "the service that writes the ring is no longer running",
    )
    view.source_up()
    assert view.headline(T0).condition is Condition.LIVE


def test_a_source_without_status_says_so_when_stale():
    view = BookView("BTCUSDT", "redis", status_known=False)
    view.on_book(book(), T0)
    assert "carries no sync status" in view.headline(T0 + 10).message


def test_rates_count_the_last_window_only():
    view = BookView("BTCUSDT", rate_window_s=5)
    for i in range(100):  # 10 updates/s for 10 s
        view.on_book(book(i), T0 + i / 10)
    view.on_trade(trade(1), T0 + 4)  # out of the window
    view.on_trade(trade(2), T0 + 9)
    books, trades = view.rates(T0 + 9.95)
    assert books == pytest.approx(10.0)
    assert trades == pytest.approx(0.2)
    assert view.rates(T0 + 20) == (0.0, 0.0)


def test_malformed_payloads_are_counted_not_shown():
    view = BookView("BTCUSDT")
    view.on_book(book(7), T0)
    view.on_book({"symbol": "BTCUSDT", "bids": "nope"}, T0 + 1)
    view.on_trade({"price": 1}, T0 + 1)
    view.on_status({"state": None}, T0 + 1)
    assert view.errors == 3
    assert view.book is not None and view.book.last_update_id == 7
    assert not view.trades


def test_spread_is_rounded_to_the_prices_decimals():
    b = Book.from_payload(book(bids=((0.1, 1.0),), asks=((0.3, 1.0),)), T0)
    assert 0.3 - 0.1 != 0.2  # what a float subtraction gives
    assert b.spread == 0.2
    assert Book.from_payload(book(asks=()), T0).spread is None


@pytest.mark.parametrize(
    ("x", "n"), [(50000.0, 0), (50000.1, 1), (0.002, 3), (1e-05, 5), (1.5e-07, 8), (3.25, 2)]
)
def test_decimals(x, n):
    assert decimals(x) == n


def test_to_dict_is_what_the_page_draws():
    view = BookView("BTCUSDT", "shm demo.w0")
    view.on_book(book(42, bids=[(100.0 - i, 1.0) for i in range(30)]), T0)
    for i in range(25):
        view.on_trade(trade(i, maker=i % 2 == 1), T0)
    out = view.to_dict(T0 + 0.25, levels=5)
    assert out["condition"] == "live"
    assert out["book"]["last_update_id"] == 42
    assert out["book"]["bids"] == [[100.0 - i, 1.0] for i in range(5)]
    assert out["book"]["age_s"] == 0.25
    assert len(out["trades"]) == 20  # the most recent, newest first
    assert [t["trade_id"] for t in out["trades"][:2]] == [24, 23]
    assert [t["side"] for t in out["trades"][:2]] == ["buy", "sell"]


def ladder_lines(text: str) -> list[list[str]]:
    """The ladder's rows (the left table), as lists of cells."""
    rows = []
    for line in text.splitlines():
        left = line[:34].split()
        if left and all(c.replace(".", "").isdigit() or c == "spread" for c in left[:2]):
            rows.append(left)
    return rows


def test_render_draws_asks_above_the_spread_above_bids():
    view = BookView("BTCUSDT", "shm demo.w0")
    view.on_book(
        book(
            123,
            bids=((50000.0, 1.5), (49999.9, 0.002)),
            asks=((50000.1, 2.0), (50001.0, 3.25)),
        ),
        T0,
    )
    view.on_trade(trade(9, maker=True), T0)
    text = render_text(view, T0 + 0.5, levels=10)
    assert " LIVE " in text
    assert "u=123" in text
    assert "0.5 s ago" in text
    assert ladder_lines(text) == [
        ["50001.0", "3.250"],  # asks, highest first, quantities to the book's decimals
        ["50000.1", "2.000"],
        ["spread", "0.1", "0.02", "bps"],
        ["1.500", "50000.0"],  # bids, best first
        ["0.002", "49999.9"],
    ]
    assert "sell   50000.1" in text  # buyer was maker: a sell hit the bid
    assert "00:13:20.500" not in text and "22:13:20.500" in text  # trade time in UTC


def test_render_says_resyncing_and_waiting_in_words():
    view = BookView("ETHUSDT", "shm demo.w0")
    assert "WAITING" in render_text(view, T0)
    assert "no book yet" in render_text(view, T0)
    view.on_book(book(), T0)
    view.on_status(status("resyncing", "gap"), T0 + 1)
    text = render_text(view, T0 + 1)
    assert "RESYNCING" in text and "not current" in text


@pytest.fixture
def ring():
    import uuid

    from sinks.shm import ShmWriter, segment_name

    if not Path("/dev/shm").is_dir():
        pytest.skip("needs POSIX shared memory")
    name = f"test_view_{uuid.uuid4().hex[:8]}"
    writer = ShmWriter.create(segment_name(name, 0), 64, 1024)
    yield name, writer
    writer.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "market_data", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_cli_prints_the_ladder_of_a_live_ring_and_exits_0(ring):
    from sinks.shm_format import RecordType

    name, writer = ring
    live = {**book(77), "timestamp": int(time.time() * 1000)}  # not behind the exchange
    writer.write(RecordType.BOOK, "BTCUSDT", orjson.dumps(live))
    writer.write(RecordType.TRADE, "BTCUSDT", orjson.dumps(trade(5)))
    done = run_cli("book", "btcusdt", "--name", name, "--once", "--exit-after", "5")
    assert done.returncode == 0, done.stderr
    assert " LIVE " in done.stdout
    assert f"shm {name}.w0" in done.stdout
    assert ["spread", "0.1", "0.02", "bps"] in ladder_lines(done.stdout)
    assert "u=77" in done.stdout


def test_cli_exits_1_and_says_why_when_the_book_is_not_live(ring):
    from sinks.shm_format import RecordType

    name, writer = ring
    writer.write(RecordType.BOOK, "BTCUSDT", orjson.dumps(book(77)))
    writer.write(RecordType.STATUS, "BTCUSDT", orjson.dumps(status("resyncing", "gap")))
    done = run_cli("book", "BTCUSDT", "--name", name, "--once", "--exit-after", "0.5")
    assert done.returncode == 1
    assert "RESYNCING" in done.stdout and "not current" in done.stdout
    done = run_cli("book", "BTCUSDT", "--name", "no_such_ring", "--once", "--exit-after", "0.5")
    assert done.returncode == 1
    assert "DOWN" in done.stdout and "no_such_ring.w*" in done.stdout


def test_cli_rejects_a_bad_symbol():
    done = run_cli("book", "BTC-USDT", "--once")
    assert done.returncode == 2
    assert "expected a symbol like BTCUSDT" in done.stderr
