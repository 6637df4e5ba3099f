"""What a sink holds while its destination is unreachable: pure, no I/O, no clock.

Book updates are states, so only the latest per symbol is kept (conflation); trades are events, so
every one is kept, in order, up to a bound. When the bound is reached the *oldest* trade is dropped
and reported to the caller, so what is eventually delivered is one contiguous, most recent run of
trades and the caller can count what was lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import IntFlag
from typing import NamedTuple

from market_data.events import BookUpdate, Trade


class Target(IntFlag):
    """Where one item still has to be written."""

    PUBLISH = 1
    STREAM = 2


class Pending(NamedTuple):
    """One item and the targets it still has to reach.

    ``maybe_sent`` is true once the item was part of a write whose outcome is unknown (the
    connection broke after the request was sent), so Redis may already hold it. A named tuple:
    one is made per item written, and a frozen dataclass cost three times as much to build.
    """

    item: BookUpdate | Trade
    targets: Target
    maybe_sent: bool = False


class PendingBuffer:
    """The latest book per symbol and up to ``max_trades`` trades in arrival order."""

    def __init__(self, max_trades: int) -> None:
        if max_trades < 1:
            raise ValueError(f"max_trades must be at least 1; got {max_trades}")
        self.max_trades = max_trades
        self._trades: deque[Pending] = deque()
        self._books: dict[str, Pending] = {}

    @property
    def trades(self) -> int:
        """Trades held."""
        return len(self._trades)

    @property
    def books(self) -> int:
        """Book updates held (at most one per symbol)."""
        return len(self._books)

    def __len__(self) -> int:
        return len(self._trades) + len(self._books)

    def add(self, pending: Pending) -> int:
        """Hold a new item, newer than everything held; return how many trades were dropped."""
        if isinstance(pending.item, BookUpdate):
            # Re-insert so the dict stays ordered by the age of each symbol's latest update.
            self._books.pop(pending.item.symbol, None)
            self._books[pending.item.symbol] = pending
            return 0
        self._trades.append(pending)
        return self._trim()

    def requeue(self, pendings: Iterable[Pending], *, maybe_sent: bool) -> int:
        """Put back items that failed to be delivered; return how many trades were dropped.

        ``pendings`` (in their original order) are older than everything held: their trades go
        in front, and a book is kept only if no newer one for its symbol is held.
        ``maybe_sent`` marks them as possibly written already.
        """
        trades: list[Pending] = []
        books: dict[str, Pending] = {}
        for p in pendings:
            if maybe_sent and not p.maybe_sent:
                p = p._replace(maybe_sent=True)
            if isinstance(p.item, BookUpdate):
                books.pop(p.item.symbol, None)
                books[p.item.symbol] = p
            else:
                trades.append(p)
        self._trades.extendleft(reversed(trades))
        for symbol, newer in self._books.items():
            books.pop(symbol, None)
            books[symbol] = newer
        self._books = books
        return self._trim()

    def drain(self, max_trades: int | None = None) -> list[Pending]:
        """Remove and return the oldest ``max_trades`` trades (all if None), then every book."""
        count = len(self._trades) if max_trades is None else min(max_trades, len(self._trades))
        out = [self._trades.popleft() for _ in range(count)]
        out.extend(self._books.values())
        self._books = {}
        return out

    def _trim(self) -> int:
        dropped = 0
        while len(self._trades) > self.max_trades:
            self._trades.popleft()
            dropped += 1
        return dropped
