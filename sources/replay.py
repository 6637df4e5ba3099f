"""Replay a recording through the dataflow, as fast as possible or at the recorded pace.

One bytewax partition per recording file in one process. In a cluster of several processes, each
process reads every file, on its first worker, and emits only the records of the symbols whose
books bytewax keeps in that process (:mod:`market_data.placement`), so no event is pickled over
to another process; records that name no symbol go out from process 0 only. (Between the worker
threads of one process, events move without copies, so there a file is read once and its symbols'
events go to whichever thread keeps their book.) The flow ends when every recording has been
replayed (bytewax then closes the sinks, which flush).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from health.cluster import detect
from market_data import MarketDataError, ParseError
from market_data.config import PipelineConfig
from market_data.events import SOURCE_BATCH, FrameError, Ignored, Market, SourceEvent
from market_data.options import ReplayOptions
from market_data.placement import partition_names, worker_of_key, worker_of_partition
from market_data.runtime import PipelineRuntime
from market_data.shutdown import stop_requested
from sources.parse import parse_frame, parse_snapshot
from sources.recording import Record, decode_record, read_lines, read_records

logger = logging.getLogger(__name__)

SCAN_LIMIT = 20 * SOURCE_BATCH  # records read per call at most, kept or not: the worker moves on
_STREAM_PREFIX = '{"stream":"'
_OTHERS = Record(0.0, "ws", "")  # stands for a line of another process's symbol, not decoded
_LINE_STREAM_PREFIX = b'"frame":"{\\"stream\\":\\"'  # the same, in a recording's JSON line


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
    query = parse_qs(urlsplit(rec.url).query)
    symbols = query.get("symbol")
    if not symbols:
        return Ignored("rest_other")
    symbol = symbols[0].upper()
    if rec.status != 200:
        return FrameError(f"snapshot: HTTP {rec.status}", rec.body[:200], symbol, rec.t)
    limits = query.get("limit") or [""]
    limit = int(limits[0]) if limits[0].isdigit() else None
    return parse_snapshot(symbol, rec.body, rec.t, recv_ns, limit)


def symbol_of_record(rec: Record) -> str | None:
    """The symbol a record is about, read without parsing its frame; ``None`` if that needs parsing.

    A combined-stream frame starts with its stream name (``{"stream":"btcusdt@depth@100ms",...``),
    whose upper-cased symbol is the one its event carries; a REST record names it in its URL.
    """
    if rec.kind == "ws":
        frame = rec.frame
        if frame.startswith(_STREAM_PREFIX):
            at = frame.find("@", len(_STREAM_PREFIX))
            if at > 0:
                return frame[len(_STREAM_PREFIX) : at].upper()
        return None
    symbols = parse_qs(urlsplit(rec.url).query).get("symbol")
    return symbols[0].upper() if symbols else None


def symbol_of_line(line: bytes) -> str | None:
    """:func:`symbol_of_record` of a recording line, from its raw bytes (``None``: decode it).

    Skipping other processes' lines this way costs a fraction of decoding them.
    """
    start = line.find(_LINE_STREAM_PREFIX)
    if start < 0:
        return None
    start += len(_LINE_STREAM_PREFIX)
    name = line[start : line.find(b"@", start)]
    if not name.isalnum():  # ASCII letters and digits only: nothing escaped, no "@" missing
        return None
    return name.decode("ascii").upper()


@dataclass(frozen=True)
class Share:
    """A file read by every process of a cluster: the part of it that ``process`` emits."""

    process: int
    workers: int  # in the whole cluster
    workers_per_process: int

    def process_of(self, symbol: str) -> int:
        """The process whose worker keeps ``symbol``'s book."""
        return worker_of_key(symbol, self.workers) // self.workers_per_process


class _NoRecords(StatefulSourcePartition[SourceEvent, int]):
    """A slot that no process reads from (see :class:`ReplaySource`): it ends at once."""

    @override
    def next_batch(self) -> list[SourceEvent]:
        raise StopIteration

    @override
    def snapshot(self) -> int:
        return 0


class _ReplayPartition(StatefulSourcePartition[SourceEvent, int]):
    def __init__(
        self,
        path: str,
        speed: float,
        symbols: frozenset[str] | None,
        resume_at: int,
        share: Share | None = None,
    ) -> None:
        self._path = path
        self._speed = speed
        self._symbols = symbols
        self._share = share  # emit only the records of symbols whose book is in this process
        self._owners: dict[str | None, int] = {}  # symbol -> the process of its book
        self._records: Iterator[Record | ParseError] = (
            read_records(path) if share is None else self._shared_records()
        )
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
        share = self._share
        scan_limit = sys.maxsize if share is None else SCAN_LIMIT  # unshared: batches as before
        scanned = 0
        while len(out) < SOURCE_BATCH and scanned < scan_limit:
            rec = self._held
            self._held = None
            if rec is None:
                item = next(self._records, None)
                if item is None:
                    if out:
                        return out
                    raise StopIteration
                self._position += 1
                scanned += 1
                if item is _OTHERS:  # another process's line, left undecoded
                    continue
                if isinstance(item, ParseError):
                    if share is None or share.process == 0:
                        logger.warning("replay: %s", item)
                        out.append(FrameError(str(item), "", None, 0.0))
                    continue
                rec = item
                if share is not None and not self._mine(rec, share):
                    if self._t0_rec is None:  # the pace starts at the file's first record
                        self._due(rec.t)
                    continue
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

    def _shared_records(self) -> Iterator[Record | ParseError]:
        """The records of a file every process reads; ``_OTHERS`` for other processes' lines.

        The first line is always decoded: its time starts the pace at ``speed > 0``.
        """
        assert self._share is not None
        process = self._share.process
        first = True
        for lineno, line in read_lines(self._path):
            if not first:
                symbol = symbol_of_line(line)
                if symbol is not None and self._owner(symbol, self._share) != process:
                    yield _OTHERS
                    continue
            first = False
            try:
                yield decode_record(line)
            except ParseError as exc:
                yield ParseError(f"{self._path}:{lineno}: {exc}")

    def _mine(self, rec: Record, share: Share) -> bool:
        """Whether this partition emits ``rec``: its symbol's book is in this process."""
        symbol = symbol_of_record(rec)
        if symbol is None:  # rare (bare frames, subscription answers): parse to find out
            symbol = getattr(events_of(rec, 0), "symbol", None)
        return self._owner(symbol, share) == share.process

    def _owner(self, symbol: str | None, share: Share) -> int:
        """The process that keeps ``symbol``'s book."""
        owner = self._owners.get(symbol)
        if owner is None:
            # Events without a symbol are not keyed: process 0 sends them.
            owner = 0 if symbol is None else share.process_of(symbol)
            self._owners[symbol] = owner
        return owner

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
    """Replays recordings: one partition per file, or per file and process in a cluster.

    ``workers`` is the number of bytewax workers in the whole cluster, ``workers_per_process``
    how many of them each process runs. In a cluster of several processes, each file gets one
    partition per worker: the one at sorted position ``j`` runs on worker ``j % workers``
    (:mod:`market_data.placement`); those on a process's first worker read the file for their
    process, the others end at once.
    """

    def __init__(
        self, options: ReplayOptions, workers: int = 1, workers_per_process: int | None = None
    ) -> None:
        per_process = workers if workers_per_process is None else workers_per_process
        if workers < 1 or per_process < 1 or workers % per_process:
            raise MarketDataError(
                f"workers must be a positive multiple of workers_per_process; got {workers} "
                f"and {per_process}"
            )
        self.options = options
        self.paths = options.paths()
        self.market = options.market or detect_market(self.paths)
        self.symbols = frozenset(options.symbols) if options.symbols else None
        # The partitions that read: (path index, the share they emit, None for all of it).
        self.readers: dict[str, tuple[int, Share | None]] = {}
        if workers == per_process:  # one process: one partition per file, reading all of it
            self.names = [f"replay-{i}" for i in range(len(self.paths))]
            self.readers = {name: (i, None) for i, name in enumerate(self.names)}
            return
        self.names = partition_names("replay", len(self.paths) * workers)
        for j, name in enumerate(self.names):
            process, rank = divmod(worker_of_partition(j, workers), per_process)
            if rank == 0:
                self.readers[name] = (j // workers, Share(process, workers, per_process))

    @override
    def list_parts(self) -> list[str]:
        return list(self.names)

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[SourceEvent, int]:
        if for_part not in self.readers:
            return _NoRecords()
        i, share = self.readers[for_part]
        return _ReplayPartition(
            self.paths[i], self.options.speed, self.symbols, resume_state or 0, share
        )


def build_source(
    options: ReplayOptions, pipeline: PipelineConfig, runtime: PipelineRuntime | None = None
) -> ReplaySource:
    """Registry builder for ``type: replay``: partitioned for this cluster's processes.

    A recording cannot fetch snapshots, so the ``runtime``'s wants go unanswered: a book whose
    top leaves its exact window waits for the next recorded snapshot.
    """
    topology = detect()
    return ReplaySource(options, topology.worker_count, topology.workers_per_process)
