"""A live view of one symbol: its latest book, last trades, sync state and update rate.

:class:`BookView` is a plain object fed with the published payloads (``sinks/payload.py``) and
the status records of the shared-memory ring; it knows nothing of where they come from (the
feeds are in :mod:`sinks.feeds`). What it shows is a pure function of what it was fed and of
``now``: :meth:`BookView.headline` judges the book (live, stale, resyncing, ...),
:meth:`BookView.to_dict` is the JSON the sidecar's ``/book/<SYMBOL>`` page draws, and
:func:`render` is the terminal ladder of ``python -m market_data book`` (``rich``, imported only
when rendering).

Prices and quantities arrive as the payload's JSON floats (each the nearest double to the
exchange's decimal string); they are only formatted here, never computed with, except for the
spread, which is rounded to the decimals the book's prices use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

STALE_AFTER_S = 5.0
"""A book with no update for this long is shown as stale."""
RATE_WINDOW_S = 5.0
"""Update and trade rates are averaged over this window."""
TRADES_KEPT = 20
"""Recent trades kept (and shown)."""
LEVELS_SHOWN = 10
"""Levels per side in the ladder, by default."""

Quote = tuple[float, float]
"""A ``(price, quantity)`` level as published."""


class Condition(StrEnum):
    """How far the shown book can be trusted, worst first."""

    DOWN = "down"  # the source itself is unavailable (writer gone, Redis unreachable)
    RESYNCING = "resyncing"  # the service dropped the book after a gap; a new snapshot is due
    SYNCING = "syncing"  # the book awaits its first snapshot
    WAITING = "waiting"  # nothing received for this symbol yet
    STALE = "stale"  # no update for STALE_AFTER_S
    LIVE = "live"


@dataclass(frozen=True)
class Headline:
    """The verdict on the shown book and a sentence saying why."""

    condition: Condition
    message: str

    @property
    def trusted(self) -> bool:
        """Whether the shown book is the current one."""
        return self.condition is Condition.LIVE


@dataclass(frozen=True)
class Book:
    """One published ``orderbook:{SYMBOL}`` payload and when it was written or received."""

    bids: tuple[Quote, ...]  # best first
    asks: tuple[Quote, ...]
    last_update_id: int
    event_time_ms: int
    at: float  # unix seconds

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], at: float) -> Book:
        """Parse the payload dict; :class:`ValueError` if it is not one."""
        try:
            return cls(
                tuple((float(p), float(q)) for p, q in data["bids"]),
                tuple((float(p), float(q)) for p, q in data["asks"]),
                int(data["last_update_id"]),
                int(data["timestamp"]),
                at,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"expected an orderbook payload; got {data!r:.200} ({exc})") from None

    @property
    def lag_s(self) -> float:
        """How far behind the exchange the book was when written or received.

        ``at`` minus its event time; includes any offset between the exchange's clock and ours.
        """
        return max(0.0, self.at - self.event_time_ms / 1000)

    @property
    def spread(self) -> float | None:
        """Best ask minus best bid, or None if a side is empty."""
        if not self.bids or not self.asks:
            return None
        digits = max(decimals(self.bids[0][0]), decimals(self.asks[0][0]))
        return round(self.asks[0][0] - self.bids[0][0], digits)

    @property
    def mid(self) -> float | None:
        """The mid price, or None if a side is empty."""
        if not self.bids or not self.asks:
            return None
        return (self.asks[0][0] + self.bids[0][0]) / 2


@dataclass(frozen=True)
class TradeRow:
    """One published ``trades:{SYMBOL}`` payload."""

    trade_id: int
    price: float
    quantity: float
    time_ms: int
    is_buyer_maker: bool

    @property
    def side(self) -> str:
        """The aggressor's side: ``sell`` when the buyer was the maker."""
        return "sell" if self.is_buyer_maker else "buy"

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> TradeRow:
        """Parse the payload dict; :class:`ValueError` if it is not one."""
        try:
            return cls(
                int(data["trade_id"]),
                float(data["price"]),
                float(data["quantity"]),
                int(data["timestamp"]),
                bool(data["is_buyer_maker"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"expected a trades payload; got {data!r:.200} ({exc})") from None


class _Rate:
    """Events per second over a sliding window of their times."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first: float | None = None

    def add(self, at: float) -> None:
        self._times.append(at)
        if self._first is None or at < self._first:
            self._first = at

    def per_s(self, now: float) -> float:
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times or self._first is None:
            return 0.0
        # Over the window, or over the time seen so far when that is shorter (a fresh view).
        span = min(self.window_s, max(1.0, now - self._first))
        return len(times) / span


class BookView:
    """One symbol's latest book, recent trades and sync state, fed with published payloads.

    ``source`` names where they come from (shown to the user). ``status_known`` is False for
    sources that carry no status records (Redis): there a resync shows only as staleness.
    """

    def __init__(
        self,
        symbol: str,
        source: str = "",
        *,
        status_known: bool = True,
        stale_after_s: float = STALE_AFTER_S,
        rate_window_s: float = RATE_WINDOW_S,
        trades_kept: int = TRADES_KEPT,
    ) -> None:
        self.symbol = symbol
        self.source = source
        self.status_known = status_known
        self.stale_after_s = stale_after_s
        self.book: Book | None = None
        self.trades: deque[TradeRow] = deque(maxlen=trades_kept)
        self.state: str | None = None  # the last status, or "synced" once a book arrived after it
        self.reason = ""
        self.problem: str | None = None  # why the source is unavailable, if it is
        self.errors = 0  # payloads that could not be understood
        self._books = _Rate(rate_window_s)
        self._trades = _Rate(rate_window_s)

    # -- feeding -------------------------------------------------------------------------------
    def on_book(self, data: Mapping[str, Any], at: float) -> None:
        """A book update written (or received) at unix time ``at``."""
        try:
            self.book = Book.from_payload(data, at)
        except ValueError:
            self.errors += 1
            return
        self._books.add(at)
        # The service publishes a book only while it is synced.
        self.state, self.reason = "synced", ""

    def on_trade(self, data: Mapping[str, Any], at: float) -> None:
        """A trade written (or received) at unix time ``at``."""
        try:
            self.trades.appendleft(TradeRow.from_payload(data))
        except ValueError:
            self.errors += 1
            return
        self._trades.add(at)

    def on_status(self, data: Mapping[str, Any], at: float) -> None:
        """A ``status`` record: the book's sync state changed."""
        state = data.get("state")
        if not isinstance(state, str):
            self.errors += 1
            return
        self.state, self.reason = state, str(data.get("reason") or "")

    def source_down(self, problem: str) -> None:
        """The source is unavailable, e.g. ``the service stopped``."""
        self.problem = problem

    def source_up(self) -> None:
        """The source is available again."""
        self.problem = None

    # -- judging -------------------------------------------------------------------------------
    def rates(self, now: float) -> tuple[float, float]:
        """Book updates and trades per second, over the last :data:`RATE_WINDOW_S`."""
        return self._books.per_s(now), self._trades.per_s(now)

    def headline(self, now: float) -> Headline:
        """The verdict on the shown book at unix time ``now``."""
        sym = self.symbol
        if self.problem is not None:
            return Headline(Condition.DOWN, self.problem)
        if self.state == "resyncing":
            why = f": {self.reason}" if self.reason else ""
            return Headline(
                Condition.RESYNCING,
                f"{sym} is resyncing{why}; the book shown is the last good one, not current",
            )
        if self.state == "awaiting_snapshot":
            return Headline(Condition.SYNCING, f"{sym} awaits its depth snapshot")
        if self.book is None:
            where = f" on {self.source}" if self.source else ""
            return Headline(Condition.WAITING, f"waiting for the first book of {sym}{where}")
        age = now - self.book.at
        if age > self.stale_after_s:
            hint = "" if self.status_known else " (this source carries no sync status)"
            return Headline(Condition.STALE, f"no update of {sym} for {age:.1f} s{hint}")
        lag = self.book.lag_s
        if lag > self.stale_after_s:
            return Headline(
                Condition.STALE,
                f"{sym} is {lag:.1f} s behind the exchange: the service is falling behind",
            )
        return Headline(Condition.LIVE, f"{sym} is synced and updating")

    def to_dict(self, now: float, levels: int = LEVELS_SHOWN) -> dict[str, Any]:
        """A JSON-ready picture of the view (what the ``/book/<SYMBOL>`` page draws)."""
        head = self.headline(now)
        book_rate, trade_rate = self.rates(now)
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "source": self.source,
            "condition": head.condition.value,
            "message": head.message,
            "state": self.state,
            "updates_per_s": round(book_rate, 2),
            "trades_per_s": round(trade_rate, 2),
            "now": now,
            "book": None,
            "trades": [
                {
                    "trade_id": t.trade_id,
                    "price": t.price,
                    "quantity": t.quantity,
                    "timestamp": t.time_ms,
                    "side": t.side,
                }
                for t in self.trades
            ],
        }
        book = self.book
        if book is not None:
            out["book"] = {
                "bids": [list(q) for q in book.bids[:levels]],
                "asks": [list(q) for q in book.asks[:levels]],
                "last_update_id": book.last_update_id,
                "timestamp": book.event_time_ms,
                "age_s": round(max(0.0, now - book.at), 3),
                "lag_s": round(book.lag_s, 3),
                "spread": book.spread,
                "mid": book.mid,
            }
        return out


# -- formatting --------------------------------------------------------------------------------
def decimals(x: float) -> int:
    """Decimals in the shortest text of ``x`` (``50000.1`` -> 1, ``1e-05`` -> 5), at most 8."""
    text = repr(x)
    if "e" in text or "E" in text:
        mantissa, _, exp = text.lower().partition("e")
        frac = len(mantissa.partition(".")[2].rstrip("0"))
        return max(0, min(8, frac - int(exp)))
    return min(8, len(text.partition(".")[2].rstrip("0")))


def fmt(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals."""
    return f"{x:.{digits}f}"


def _digits(quotes: Sequence[Quote], index: int) -> int:
    return max((decimals(q[index]) for q in quotes), default=0)


def clock_ms(ms: int) -> str:
    """A millisecond timestamp as ``HH:MM:SS.mmm`` UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


_BADGE = {
    Condition.LIVE: "bold white on green",
    Condition.STALE: "bold black on yellow",
    Condition.WAITING: "bold black on yellow",
    Condition.SYNCING: "bold black on yellow",
    Condition.RESYNCING: "bold white on red",
    Condition.DOWN: "bold white on red",
}


def render(view: BookView, now: float, levels: int = LEVELS_SHOWN) -> RenderableType:
    """The terminal picture of ``view`` at unix time ``now``: status line, ladder, trades."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = view.headline(now)
    book_rate, trade_rate = view.rates(now)
    book = view.book
    status = Text()
    status.append(f" {view.symbol} ", style="bold")
    status.append(f" {head.condition.value.upper()} ", style=_BADGE[head.condition])
    status.append(f"  {head.message}")
    facts = Text(style="dim")
    facts.append(f" source {view.source or '?'}")
    facts.append(f" | {book_rate:.1f} updates/s, {trade_rate:.1f} trades/s")
    if book is not None:
        facts.append(f" | u={book.last_update_id}")
        facts.append(f" | event {clock_ms(book.event_time_ms)} UTC")
        facts.append(f" | updated {max(0.0, now - book.at):.1f} s ago")
        facts.append(f" | {book.lag_s:.2f} s behind the exchange")
    if view.errors:
        facts.append(f" | {view.errors} unreadable payload(s)", style="red")

    dim = "" if head.trusted else "dim"
    ladder = Table(box=box.SIMPLE_HEAD, title="book", expand=False, style=dim)
    ladder.add_column("bid qty", justify="right", style="green")
    ladder.add_column("price", justify="right")
    ladder.add_column("ask qty", justify="right", style="red")
    if book is not None:
        bids, asks = book.bids[:levels], book.asks[:levels]
        pd = _digits(bids + asks, 0)
        qd = _digits(bids + asks, 1)
        for price, qty in reversed(asks):
            ladder.add_row("", Text(fmt(price, pd), style="red"), fmt(qty, qd))
        spread = book.spread
        if spread is not None and book.mid:
            bps = spread / book.mid * 10_000
            ladder.add_row(
                Text("spread", style="bold"), Text(fmt(spread, pd), style="bold"), f"{bps:.2f} bps"
            )
        for price, qty in bids:
            ladder.add_row(fmt(qty, qd), Text(fmt(price, pd), style="green"), "")
    else:
        ladder.add_row("", Text("no book yet", style="italic"), "")

    trades = Table(box=box.SIMPLE_HEAD, title="last trades", expand=False)
    trades.add_column("time (UTC)")
    trades.add_column("side")
    trades.add_column("price", justify="right")
    trades.add_column("qty", justify="right")
    rows = list(view.trades)[: max(levels * 2, 1)]
    tpd = max((decimals(t.price) for t in rows), default=0)
    tqd = max((decimals(t.quantity) for t in rows), default=0)
    for t in rows:
        style = "green" if t.side == "buy" else "red"
        trades.add_row(
            clock_ms(t.time_ms),
            Text(t.side, style=style),
            Text(fmt(t.price, tpd), style=style),
            fmt(t.quantity, tqd),
        )
    if not rows:
        trades.add_row("", "", Text("none yet", style="italic"), "")

    body = Table.grid(padding=(0, 3))
    body.add_row(ladder, trades)
    return Group(status, facts, body)


def render_text(view: BookView, now: float, levels: int = LEVELS_SHOWN, width: int = 120) -> str:
    """:func:`render` as plain text (no colours), for tests and ``--once``."""
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    console.print(render(view, now, levels))
    return out.getvalue()
