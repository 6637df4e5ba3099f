"""Seeded, Binance-shaped depth streams for benchmarks.

Books of ~``levels`` levels a side around a fixed mid, updates of 1-40 level changes (~10%
deletions, most changes near the touch), USD-M Futures framing (combined-stream envelope, ``pu``
chain), and the REST snapshot they start from. Everything is text, as received from the wire.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

TICK = 0.1
MID_TICKS = 500_000  # 50,000.0


@dataclass(frozen=True)
class Stream:
    """A snapshot body and the depth frames that follow it, for one symbol."""

    symbol: str
    snapshot: str
    frames: list[str]


def _price(ticks: int) -> str:
    return f"{ticks * TICK:.1f}"


def _qty(rng: random.Random) -> str:
    return f"{rng.randint(1, 50_000) / 1000:.3f}"


def generate(
    symbol: str, updates: int, seed: int = 1, levels: int = 1000, max_changes: int = 40
) -> Stream:
    """One symbol's snapshot and ``updates`` depth frames of 1 to ``max_changes`` level changes."""
    rng = random.Random(f"{symbol}:{seed}")
    bids = {MID_TICKS - 1 - i: _qty(rng) for i in range(levels)}
    asks = {MID_TICKS + 1 + i: _qty(rng) for i in range(levels)}
    last_u = 1_000_000
    event_ms = 1_700_000_000_000
    snapshot = orjson.dumps(
        {
            "lastUpdateId": last_u,
            "E": event_ms,
            "T": event_ms,
            "bids": [[_price(p), q] for p, q in sorted(bids.items(), reverse=True)],
            "asks": [[_price(p), q] for p, q in sorted(asks.items())],
        }
    ).decode()
    stream = f"{symbol.lower()}@depth@100ms"
    frames = []
    for _ in range(updates):
        changes = rng.randint(1, max_changes)
        b: dict[int, str] = {}
        a: dict[int, str] = {}
        for _ in range(changes):
            is_bid = rng.random() < 0.5
            side, out = (bids, b) if is_bid else (asks, a)
            distance = min(int(rng.expovariate(1 / 40)), levels * 2)
            price = MID_TICKS - 1 - distance if is_bid else MID_TICKS + 1 + distance
            if rng.random() < 0.1:
                side.pop(price, None)  # removing an absent level happens on Binance too
                out[price] = "0.000"
            else:
                side[price] = out[price] = _qty(rng)
        first = last_u + 1
        final = first + rng.randint(0, 30)
        event_ms += rng.randint(1, 100)
        data = {
            "e": "depthUpdate",
            "E": event_ms,
            "T": event_ms - 3,
            "s": symbol,
            "U": first,
            "u": final,
            "pu": last_u,
            "b": [[_price(p), q] for p, q in b.items()],
            "a": [[_price(p), q] for p, q in a.items()],
        }
        frames.append(orjson.dumps({"stream": stream, "data": data}).decode())
        last_u = final
    return Stream(symbol, snapshot, frames)
