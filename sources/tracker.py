"""The source's own view of each symbol's sequence, to know when to fetch a new REST snapshot.

The dataflow has no feedback edge from the book operator to the source, so the source mirrors
the operator's rules on update ids alone (no book) and asks for a snapshot whenever the operator
will need one: after every (re)connect, on a break in the sequence, and when a snapshot turns out
older than the stream. Pure: the caller fetches, paces and emits.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from market_data.events import Market
from operators.sync import continues, ids_went_back, is_stale, straddles

MAX_PENDING_IDS = 10_000


class Phase(StrEnum):
    """Where a symbol stands, as the source sees it."""

    WANT_SNAPSHOT = "want_snapshot"  # a snapshot is needed (requested or to be requested)
    JOINING = "joining"  # snapshot emitted; waiting for the event that straddles it
    LIVE = "live"


class SequenceTracker:
    """One symbol's update ids, judged by the same rules as :class:`operators.sync.BookSync`."""

    __slots__ = ("last", "last_time_ms", "market", "pending", "phase", "reason")

    def __init__(self, market: Market) -> None:
        self.market = market
        self.phase = Phase.WANT_SNAPSHOT
        self.reason = "awaiting first snapshot"
        self.last = 0  # snapshot lastUpdateId while JOINING, last u while LIVE
        self.last_time_ms = 0  # the event time E of the delta that ended at ``last`` (LIVE)
        # (U, u, pu, E) of deltas seen while waiting for a snapshot: the operator buffers them.
        self.pending: deque[tuple[int, int, int | None, int]] = deque(maxlen=MAX_PENDING_IDS)

    def reset(self, reason: str) -> None:
        """A new connection (or anything else) makes the current view worthless."""
        self.phase = Phase.WANT_SNAPSHOT
        self.reason = reason
        self.pending.clear()

    def on_delta(
        self, first: int, final: int, prev_final: int | None, event_time_ms: int = 0
    ) -> bool:
        """Account for one delta; True when a new snapshot must be fetched because of it."""
        if self.phase is Phase.WANT_SNAPSHOT:
            self.pending.append((first, final, prev_final, event_time_ms))
            return False
        if self.phase is Phase.LIVE:
            if continues(self.market, first, prev_final, self.last):
                self.last, self.last_time_ms = final, event_time_ms
                return False
            if final <= self.last:
                if event_time_ms > self.last_time_ms:  # later, yet not newer: ids went back
                    ids = (first, final, prev_final, event_time_ms)
                    return self._want(ids, ids_went_back(final, self.last))
                return False  # duplicate, already applied
            ids = (first, final, prev_final, event_time_ms)
            return self._want(ids, f"sequence break after u={self.last}")
        return self._join(first, final, prev_final, event_time_ms)

    def on_snapshot(self, lid: int, seeds: bool = True) -> bool:
        """A snapshot at ``lid`` was emitted; True when it is already too old for the stream.

        ``seeds`` is False for a snapshot too short to start the book (see
        :func:`operators.sync.too_short`). A live book merges snapshots without leaving its
        stream, so they change nothing here.
        """
        if self.phase is Phase.LIVE or not seeds:
            return False
        if self.phase is Phase.JOINING and lid <= self.last:
            return False  # not newer: the operator ignores it too
        self.phase = Phase.JOINING
        self.last = lid
        pending, self.pending = self.pending, deque(maxlen=MAX_PENDING_IDS)
        for ids in pending:
            self.on_delta(*ids)
        return self.phase is Phase.WANT_SNAPSHOT

    def _join(self, first: int, final: int, prev_final: int | None, event_time_ms: int) -> bool:
        if is_stale(self.market, final, self.last):
            return False
        if straddles(self.market, first, prev_final, self.last):
            self.phase = Phase.LIVE
            self.last, self.last_time_ms = final, event_time_ms
            return False
        return self._want(
            (first, final, prev_final, event_time_ms),
            f"snapshot {self.last} older than the stream (U={first})",
        )

    def _want(self, ids: tuple[int, int, int | None, int], reason: str) -> bool:
        self.phase = Phase.WANT_SNAPSHOT
        self.reason = reason
        self.pending.clear()
        self.pending.append(ids)
        return True
