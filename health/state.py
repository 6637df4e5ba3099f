"""What this process knows about its books, connections and sinks, for ``/health`` and ``/ready``.

One :data:`STATE` per process, shared by every bytewax worker thread. The dataflow's edges update
it with cheap calls and no I/O: the order-book operator through a :class:`BookHealth` per symbol,
the live source through a :class:`ConnectionHealth` per WebSocket and the ``processed_at`` /
``received_at`` stamps, the Redis and shm sinks through a :class:`SinkHealth` per partition. The
sidecar reads it with :meth:`HealthState.snapshot`, a JSON-ready dict (also the per-process
report file of a multi-process cluster, see :mod:`health.cluster`).

Hot-path updates are single attribute stores (atomic under the GIL); the lock guards only the
dicts, which change when a symbol, connection or sink partition appears or goes away. All times
are unix seconds (``time.time()``), so that processes of one host can compare them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from market_data.events import BookState
from market_data.placement import worker_of_key

logger = logging.getLogger(__name__)

REPORT_FORMAT = 1
"""Version of the :meth:`HealthState.snapshot` layout."""
_SYNCED = BookState.SYNCED.value


@dataclass(frozen=True)
class PipelineScope:
    """How one pipeline's parts name themselves when they report.

    The order-book operator reports under its step id, ``<step_prefix>_order_book`` (see
    :mod:`flows.build`); the live source under its ``type`` (one pipeline per source type and
    symbol, which the config checks); sinks under their metric label (``redis:<name>``).
    """

    name: str
    step_prefix: str
    source_type: str
    symbols: tuple[str, ...] = ()


class BookHealth:
    """One symbol's book as its order-book operator last saw it."""

    __slots__ = (
        "_state",
        "last_event_ms",
        "last_update_at",
        "last_update_id",
        "pipeline",
        "status",
        "symbol",
    )

    def __init__(
        self, pipeline: str, symbol: str, now: float, state: HealthState | None = None
    ) -> None:
        self._state = state
        self.pipeline = pipeline
        self.symbol = symbol
        # (state, reason, since): one tuple, so a reader never sees a state with another's reason
        self.status: tuple[str, str, float] = (BookState.AWAITING_SNAPSHOT.value, "", now)
        self.last_update_at: float | None = None
        self.last_update_id: int | None = None
        self.last_event_ms: int | None = None  # the exchange's event time of that update

    def changed(self, state: BookState, reason: str, now: float) -> None:
        """The book's sync state changed (a ``BookStatus`` was emitted)."""
        was = self.status[0]
        self.status = (state.value, reason, now)
        if self._state is not None and (was == _SYNCED) != (state.value == _SYNCED):
            self._state._synced_changed(self.pipeline, state.value == _SYNCED, now)

    def updated(self, last_update_id: int, now: float, event_time_ms: int | None = None) -> None:
        """A book update was emitted at ``now`` (for the exchange's event at ``event_time_ms``)."""
        self.last_update_at = now
        self.last_update_id = last_update_id
        self.last_event_ms = event_time_ms


class ConnectionHealth:
    """One WebSocket connection of the live source and the symbols it carries."""

    __slots__ = ("_state", "pipeline", "reason", "symbols", "up")

    def __init__(self, state: HealthState, pipeline: str, symbols: tuple[str, ...]) -> None:
        self._state = state
        self.pipeline = pipeline
        self.symbols = symbols
        self.up = False
        self.reason = "connecting"

    def connected(self) -> None:
        """The connection is open and subscribed."""
        self._state._set_connection(self, True, "connected")

    def disconnected(self, reason: str) -> None:
        """The connection dropped (it reconnects by itself)."""
        self._state._set_connection(self, False, reason or "disconnected")

    def close(self) -> None:
        """The source partition closed: forget the connection."""
        self._state._drop_connection(self)


class SinkHealth:
    """One sink partition's reachability: unknown until its first write, then up or down."""

    __slots__ = ("_state", "label", "status")

    UNKNOWN, UP, DOWN = "unknown", "up", "down"

    def __init__(self, state: HealthState, label: str, now: float) -> None:
        self._state = state
        self.label = label
        # (status, reason, since): one tuple, replaced whole
        self.status: tuple[str, str, float] = (SinkHealth.UNKNOWN, "no write yet", now)

    def up(self) -> None:
        """A write succeeded. Cheap when nothing changes: call it after every good write."""
        if self.status[0] != SinkHealth.UP:
            self.status = (SinkHealth.UP, "", self._state._clock())

    def down(self, reason: str) -> None:
        """A write failed; ``reason`` says why (``redis unreachable: ...``)."""
        if self.status[:2] != (SinkHealth.DOWN, reason):
            self.status = (SinkHealth.DOWN, reason, self._state._clock())

    def close(self) -> None:
        """The partition closed: it no longer counts."""
        self._state._drop_sink(self)


class HealthState:
    """The process-wide health state; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started_at = clock()
        self.process_id = 0
        self.workers = 1
        # Hooks assign these two directly (one attribute store, no call):
        self.processed_at: float | None = None
        """Last time a worker took frames from a source or applied events to a book."""
        self.received_at: float | None = None
        """Receipt time of the last frame that a live source's connection received."""
        self._scopes: tuple[PipelineScope, ...] = ()
        self._by_step: dict[str, str] = {}
        self._by_source: dict[str, list[str]] = {}
        self._books: dict[tuple[str, str], BookHealth] = {}
        self._connections: set[ConnectionHealth] = set()
        self._sinks: set[SinkHealth] = set()
        # Per pipeline: books this process keeps (None: unknown), how many are synced, and
        # since when not all of them are (for the "all synced" log line).
        self._expected: dict[str, int | None] = {}
        self._clustered = False
        self._synced: dict[str, int] = {}
        self._unsynced_since: dict[str, float] = {}

    # -- set-up (build time) -------------------------------------------------------------------
    def configure(
        self,
        scopes: Iterable[PipelineScope],
        *,
        process_id: int = 0,
        workers: int = 1,
        processes: int = 1,
    ) -> None:
        """Name the pipelines whose parts will report; forget books of an earlier flow."""
        with self._lock:
            self._scopes = tuple(scopes)
            self._by_step = {}
            self._by_source = {}
            for scope in self._scopes:
                self._by_source.setdefault(scope.source_type, []).append(scope.name)
            self._books = {}
            self.process_id = process_id
            self.workers = workers
            self.started_at = self._clock()
            self.processed_at = self.received_at = None
            total = processes * workers
            self._clustered = processes > 1
            self._expected = {
                scope.name: sum(
                    1 for s in scope.symbols if worker_of_key(s, total) // workers == process_id
                )
                if scope.symbols
                else None
                for scope in self._scopes
            }
            self._synced = dict.fromkeys(self._expected, 0)
            self._unsynced_since = dict.fromkeys(self._expected, self.started_at)

    def _synced_changed(self, pipeline: str, synced: bool, now: float) -> None:
        """One of ``pipeline``'s books became synced or stopped being: log when all are."""
        with self._lock:
            if pipeline not in self._synced:
                return
            expected = self._expected.get(pipeline)
            before = self._synced[pipeline]
            count = self._synced[pipeline] = before + (1 if synced else -1)
            if expected is None:
                return
            if not synced and before == expected:
                self._unsynced_since[pipeline] = now
            if synced and count == expected:
                since = self._unsynced_since[pipeline]
                first = since == self.started_at
                logger.info(
                    "%s: all %d books%s synced%s, %.1f s after %s",
                    pipeline,
                    expected,
                    f" of process {self.process_id}" if self._clustered else "",
                    "" if first else " again",
                    now - since,
                    "start" if first else "the first went out of sync",
                )

    def _pipeline_of_step(self, step_id: str) -> str:
        name = self._by_step.get(step_id)
        if name is None:
            # flows.build names the step "<prefix>_order_book"; else the longest matching prefix.
            best: PipelineScope | None = None
            for scope in self._scopes:
                if step_id == f"{scope.step_prefix}_order_book":
                    best = scope
                    break
                if step_id.startswith(scope.step_prefix + "_") and (
                    best is None or len(scope.step_prefix) > len(best.step_prefix)
                ):
                    best = scope
            name = self._by_step[step_id] = best.name if best else step_id
        return name

    def _pipeline_of_source(self, source_type: str, symbols: tuple[str, ...]) -> str:
        names = self._by_source.get(source_type, [])
        if len(names) == 1:
            return names[0]
        # Pipelines of one source type hold different symbols (the config checks that).
        wanted = set(symbols)
        for scope in self._scopes:
            if scope.source_type == source_type and wanted & set(scope.symbols):
                return scope.name
        return names[0] if names else source_type

    # -- hooks ---------------------------------------------------------------------------------
    def book(self, step_id: str, symbol: str) -> BookHealth:
        """The entry the order-book operator ``step_id`` updates for ``symbol``."""
        with self._lock:
            pipeline = self._pipeline_of_step(step_id)
            entry = self._books.get((pipeline, symbol))
            if entry is None:
                entry = BookHealth(pipeline, symbol, self._clock(), self)
                self._books[pipeline, symbol] = entry
            return entry

    def connection(self, source_type: str, symbols: Iterable[str]) -> ConnectionHealth:
        """A new WebSocket connection of a ``source_type`` source, for ``symbols``."""
        syms = tuple(symbols)
        with self._lock:
            conn = ConnectionHealth(self, self._pipeline_of_source(source_type, syms), syms)
            self._connections.add(conn)
            return conn

    def sink(self, label: str) -> SinkHealth:
        """A new partition of the sink labelled ``label`` (``redis:<pipeline>``)."""
        handle = SinkHealth(self, label, self._clock())
        with self._lock:
            self._sinks.add(handle)
        return handle

    def _set_connection(self, conn: ConnectionHealth, up: bool, reason: str) -> None:
        with self._lock:
            conn.up, conn.reason = up, reason

    def _drop_connection(self, conn: ConnectionHealth) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _drop_sink(self, handle: SinkHealth) -> None:
        with self._lock:
            self._sinks.discard(handle)

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The process's state as a JSON-ready dict (the report format)."""
        with self._lock:
            books = list(self._books.values())
            connections = [(c.pipeline, c.symbols, c.up, c.reason) for c in self._connections]
            sinks = [(s.label, s.status) for s in self._sinks]
        out_books: dict[str, dict[str, Any]] = {}
        for b in books:
            state, reason, since = b.status
            out_books.setdefault(b.pipeline, {})[b.symbol] = {
                "state": state,
                "reason": reason,
                "since": since,
                "last_update_at": b.last_update_at,
                "last_update_id": b.last_update_id,
                "last_event_ms": b.last_event_ms,
            }
        links: dict[str, dict[str, dict[str, Any]]] = {}
        for pipeline, symbols, up, why in connections:
            for symbol in symbols:
                entry = links.setdefault(pipeline, {}).setdefault(
                    symbol, {"up": 0, "down": 0, "reason": ""}
                )
                if up:
                    entry["up"] += 1
                else:
                    entry["down"] += 1
                    entry["reason"] = why
        out_sinks: dict[str, dict[str, Any]] = {}
        for label, (status, reason, _since) in sinks:
            agg = out_sinks.setdefault(label, {"up": 0, "down": 0, "unknown": 0, "reason": ""})
            agg[status] += 1
            if status == SinkHealth.DOWN:
                agg["reason"] = reason
        return {
            "format": REPORT_FORMAT,
            "process": self.process_id,
            "pid": os.getpid(),
            "workers": self.workers,
            "written_at": self._clock(),
            "started_at": self.started_at,
            "processed_at": self.processed_at,
            "received_at": self.received_at,
            "connections": {
                "up": sum(1 for c in connections if c[2]),
                "down": sum(1 for c in connections if not c[2]),
            },
            "books": out_books,
            "links": links,
            "sinks": out_sinks,
        }


STATE = HealthState()
"""The one state of this process."""
