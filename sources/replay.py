"""Replay a recording through the dataflow, as fast as possible or at the recorded pace.

One bytewax partition per recording file. The flow ends when every recording has been replayed
(bytewax then closes the sinks, which flush).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from market_data import ParseError
from market_data.config import PipelineConfig
from market_data.events import FrameError, Ignored, Market, SourceEvent
from market_data.options import ReplayOptions
from market_data.shutdown import stop_requested
from sources.parse import parse_frame, parse_snapshot
from sources.recording import Record, read_records

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000


def market_of_url(url: str) -> Market | None:
    """Which sequence rules a recorded URL implies (``None`` when it does not say)."""
    parts = urlsplit(url)
    host, path = parts.netloc, parts.path
    if "fstream" in host or "fapi" in host or path.startswith("/fapi/"):
        return Market.FUTURES
    if path.startswith("/api/v3/") or host.startswith(("stream.binance", "api.binance")):
        return Market.SPOT
    return None


def detect_market(paths: list[str]) -> Market:
    """Read recordings until a URL tells the market; futures if none does."""
    for path in paths:
        for rec in read_records(path):
            if isinstance(rec, Record):
                market = market_of_url(rec.url)
                if market is not None:
                    return market
    return Market.FUTURES


def events_of(rec: Record, recv_ns: int) -> SourceEvent:
    """Turn one record into the event the live source would have emitted for it."""
    if rec.kind == "ws":
        return parse_frame(rec.frame, rec.t, recv_ns)
    symbols = parse_qs(urlsplit(rec.url).query).get("symbol")
    if not symbols:
        return Ignored("rest_other")
    symbol = symbols[0].upper()
    if rec.status != 200:
        return FrameError(f"snapshot: HTTP {rec.status}", rec.body[:200], symbol, rec.t)
    return parse_snapshot(symbol, rec.body, rec.t, recv_ns)


class _ReplayPartition(StatefulSourcePartition[SourceEvent, int]):
    def __init__(
        self, path: str, speed: float, symbols: frozenset[str] | None, resume_at: int
    ) -> None:
        self._path = path
        self._speed = speed
        self._symbols = symbols
        self._records: Iterator[Record | ParseError] = read_records(path)
        self._position = 0  # records consumed, for resume
        for _ in range(resume_at):
            next(self._records, None)
            self._position += 1
        self._t0_rec: float | None = None
        self._t0_wall = 0.0
        self._held: Record | None = None  # a record whose time has not come yet
        self._awake: datetime | None = None

    def _keep(self, ev: SourceEvent) -> bool:
        if self._symbols is None:
            return True
        symbol = getattr(ev, "symbol", None)
        return symbol is None or symbol in self._symbols

    @override
    def next_batch(self) -> list[SourceEvent]:
        if stop_requested():
            raise StopIteration  # SIGTERM/SIGINT: end here; bytewax closes (flushes) the sinks
        out: list[SourceEvent] = []
        self._awake = None
        while len(out) < BATCH_SIZE:
            rec = self._held
            self._held = None
            if rec is None:
                item = next(self._records, None)
                if item is None:
                    if out:
                        return out
                    raise StopIteration
                self._position += 1
                if isinstance(item, ParseError):
                    logger.warning("replay: %s", item)
                    out.append(FrameError(str(item), "", None, 0.0))
                    continue
                rec = item
            if self._speed > 0:
                due = self._due(rec.t)
                if due > 0:
                    self._held = rec
                    self._awake = datetime.now(UTC) + timedelta(seconds=due)
                    break
            ev = events_of(rec, time.perf_counter_ns())
            if self._keep(ev):
                out.append(ev)
        return out

    def _due(self, t: float) -> float:
        """Seconds until a record stamped ``t`` is due at the configured speed."""
        now = time.monotonic()
        if self._t0_rec is None:
            self._t0_rec, self._t0_wall = t, now
            return 0.0
        return (t - self._t0_rec) / self._speed - (now - self._t0_wall)

    @override
    def next_awake(self) -> datetime | None:
        return self._awake

    @override
    def snapshot(self) -> int:
        return self._position - (1 if self._held is not None else 0)


class ReplaySource(FixedPartitionedSource[SourceEvent, int]):
    """Replays recordings; one partition per file."""

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        self.paths = options.paths()
        self.market = options.market or detect_market(self.paths)
        self.symbols = frozenset(options.symbols) if options.symbols else None

    @override
    def list_parts(self) -> list[str]:
        return [f"replay-{i}" for i in range(len(self.paths))]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        path = self.paths[int(for_part.rsplit("-", 1)[1])]
        return _ReplayPartition(path, self.options.speed, self.symbols, resume_state or 0)


def build_source(options: ReplayOptions, pipeline: PipelineConfig) -> ReplaySource:
    """Registry builder for ``type: replay``."""
    return ReplaySource(options)
