"""A deliberately naive, independent implementation of Binance's documented book sync.

It shares no code with ``operators/``: prices and quantities stay ``decimal.Decimal`` made from
the exchange's strings, each side is a plain dict, and the procedure is one straightforward
loop per event, written from Binance's documentation:

USD-M Futures ("How to manage a local order book correctly"):
  1. buffer depth events until a snapshot arrives;
  2. drop any event where ``u < lastUpdateId``;
  3. the first processed event must have ``U <= lastUpdateId <= u``;
  4. afterwards each event's ``pu`` must equal the previous event's ``u``, else resync.
Spot:
  2. drop any event where ``u <= lastUpdateId``;
  3. the first processed event must have ``U <= lastUpdateId + 1 <= u``;
  4. afterwards each event's ``U`` must equal the previous event's ``u + 1``, else resync.
Both: quantities are absolute; a quantity of 0 removes the level (absent or not).

Choices the documentation leaves open, made here the same way a careful reader would:
  * an event whose ``u`` is at or below the book's last applied ``u`` is already in the book
    (a replayed frame) and is dropped, not treated as a break;
  * on a break the book is discarded and the breaking event is kept as the first buffered event
    of the next attempt (a newer snapshot may straddle it);
  * a snapshot that is not newer than the book it would replace is ignored.

Use :func:`replay` on a list of raw inputs: :class:`Snapshot` (a REST body) or a depth ``data``
dict (``{"e": "depthUpdate", "s": ..., "U": ..., "u": ..., "pu": ..., "b": ..., "a": ...}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

FUTURES = "futures"
SPOT = "spot"
UNITS = Decimal(100_000_000)


@dataclass(frozen=True)
class Snapshot:
    """A REST depth snapshot for ``symbol``: the body as text or as an already decoded dict."""

    symbol: str
    body: str | dict[str, Any]

    def data(self) -> dict[str, Any]:
        return json.loads(self.body) if isinstance(self.body, str) else self.body


@dataclass
class RefBook:
    """One symbol's book and what happened to it."""

    market: str
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    # None: no snapshot yet (or discarded after a break).
    last_id: int | None = None
    synced: bool = False
    buffered: list[dict[str, Any]] = field(default_factory=list)
    applied: int = 0
    dropped: int = 0  # stale before the first event, or already in the book
    breaks: int = 0
    snapshots_used: int = 0
    snapshots_ignored: int = 0

    # -- inputs --------------------------------------------------------------------------------
    def snapshot(self, body: dict[str, Any]) -> None:
        lid = body["lastUpdateId"]
        if self.last_id is not None and lid <= self.last_id:
            self.snapshots_ignored += 1
            return
        self.bids = {}
        self.asks = {}
        for price, qty in body["bids"]:
            if Decimal(qty) != 0:
                self.bids[Decimal(price)] = Decimal(qty)
        for price, qty in body["asks"]:
            if Decimal(qty) != 0:
                self.asks[Decimal(price)] = Decimal(qty)
        self.last_id = lid
        self.synced = False
        self.snapshots_used += 1
        waiting = self.buffered
        self.buffered = []
        for i, event in enumerate(waiting):
            self.delta(event)
            if self.last_id is None:  # broke: what is left waits for the next snapshot
                self.buffered.extend(waiting[i + 1 :])
                break

    def delta(self, event: dict[str, Any]) -> None:
        if self.last_id is None:
            self.buffered.append(event)
            return
        first, final = event["U"], event["u"]
        lid = self.last_id
        if not self.synced:
            if self.market == FUTURES:
                if final < lid:
                    self.dropped += 1
                    return
                ok = first <= lid <= final
            else:
                if final <= lid:
                    self.dropped += 1
                    return
                ok = first <= lid + 1 <= final
            if not ok:
                self._break(event)
                return
            self._apply(event)
            self.synced = True
            return
        if self.market == FUTURES:
            ok = event.get("pu") == lid
        else:
            ok = first == lid + 1
        if ok:
            self._apply(event)
        elif final <= lid:
            self.dropped += 1
        else:
            self._break(event)

    # -- internals -----------------------------------------------------------------------------
    def _apply(self, event: dict[str, Any]) -> None:
        for side, levels in ((self.bids, event["b"]), (self.asks, event["a"])):
            for price, qty in levels:
                p, q = Decimal(price), Decimal(qty)
                if q == 0:
                    if p in side:
                        del side[p]
                else:
                    side[p] = q
        self.last_id = event["u"]
        self.applied += 1

    def _break(self, event: dict[str, Any]) -> None:
        self.breaks += 1
        self.bids = {}
        self.asks = {}
        self.last_id = None
        self.synced = False
        self.buffered = [event]

    # -- views ---------------------------------------------------------------------------------
    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        if not self.bids:
            return None
        best = max(self.bids)
        return best, self.bids[best]

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        if not self.asks:
            return None
        best = min(self.asks)
        return best, self.asks[best]

    def top(self, n: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The best ``n`` levels of each side, best first."""
        bids = sorted(self.bids.items(), reverse=True)[:n]
        asks = sorted(self.asks.items())[:n]
        return bids, asks

    def units(self) -> tuple[dict[int, int], dict[int, int]]:
        """Both sides in the project's integer units of 1e-8, to compare with ``OrderBook``."""

        def conv(side: dict[Decimal, Decimal]) -> dict[int, int]:
            out = {}
            for p, q in side.items():
                pu, qu = p * UNITS, q * UNITS
                assert pu == int(pu) and qu == int(qu), f"more than 8 decimals: {p} {q}"
                out[int(pu)] = int(qu)
            return out

        return conv(self.bids), conv(self.asks)


def replay(inputs: Iterable[Snapshot | dict[str, Any]], market: str) -> dict[str, RefBook]:
    """Feed snapshots and depth ``data`` dicts in order; return the final book per symbol.

    Dicts whose ``e`` is not ``depthUpdate`` are skipped, so the ``data`` of every frame of a
    combined stream can be passed as is.
    """
    if market not in (FUTURES, SPOT):
        raise ValueError(f"market must be {FUTURES!r} or {SPOT!r}; got {market!r}")
    books: dict[str, RefBook] = {}
    for item in inputs:
        if isinstance(item, Snapshot):
            books.setdefault(item.symbol, RefBook(market)).snapshot(item.data())
        elif item.get("e") == "depthUpdate":
            books.setdefault(item["s"], RefBook(market)).delta(item)
    return books


def replay_recording(records: Iterable[tuple[str, str, str]], market: str) -> dict[str, RefBook]:
    """Replay ``(kind, url, text)`` triples: ``("ws", url, frame)`` or ``("rest", url, body)``.

    The symbol of a REST snapshot is read from the ``symbol=`` query parameter of its URL.
    """
    from urllib.parse import parse_qs, urlsplit

    def inputs() -> Iterable[Snapshot | dict[str, Any]]:
        for kind, url, text in records:
            if kind == "rest":
                symbol = parse_qs(urlsplit(url).query)["symbol"][0]
                yield Snapshot(symbol, text)
            else:
                msg = json.loads(text)
                data = msg.get("data", msg) if isinstance(msg, dict) else None
                if isinstance(data, dict):
                    yield data

    return replay(inputs(), market)
