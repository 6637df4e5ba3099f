"""The pure core's per-frame cost, and the bare-Python ceiling loop (no framework).

``process`` is the seed's definition of processing: a depth frame parsed, validated, applied,
and its top-20 payload encoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from benchmarks.streams import Stream
from market_data.events import BookUpdate, Market, Trade
from operators.symbol import SymbolState
from sinks.payload import encode_book, encode_trade
from sources.parse import parse_frame, parse_snapshot

DEPTH = 20


def _states(streams: Iterable[Stream]) -> dict[str, SymbolState]:
    states = {}
    for s in streams:
        state = SymbolState(s.symbol, DEPTH, Market.FUTURES)
        state.on_events([parse_snapshot(s.symbol, s.snapshot, 0.0)])
        states[s.symbol] = state
    return states


def interleave(streams: list[Stream]) -> list[tuple[str, str]]:
    """Round-robin ``(symbol, frame)`` over the streams, as a multi-symbol feed arrives."""
    out = []
    for i in range(max(len(s.frames) for s in streams)):
        for s in streams:
            if i < len(s.frames):
                out.append((s.symbol, s.frames[i]))
    return out


def latencies(streams: list[Stream]) -> list[int]:
    """Nanoseconds to process each frame (parse, sync, apply, top-20 view, encode)."""
    states = _states(streams)
    clock = time.perf_counter_ns
    out = []
    for symbol, frame in interleave(streams):
        t0 = clock()
        for ev in states[symbol].on_events([parse_frame(frame, 0.0, t0)]):
            if type(ev) is BookUpdate:
                encode_book(ev)
            elif type(ev) is Trade:
                encode_trade(ev)
        out.append(clock() - t0)
    return out


def ceiling(streams: list[Stream]) -> tuple[int, float]:
    """The bare loop over the same frames: ``(frames, seconds)``."""
    states = _states(streams)
    feed = interleave(streams)
    start = time.perf_counter()
    for symbol, frame in feed:
        for ev in states[symbol].on_events([parse_frame(frame, 0.0)]):
            if type(ev) is BookUpdate:
                encode_book(ev)
    return len(feed), time.perf_counter() - start
