"""What the steps of one pipeline share at run time, built with the flow and handed to each step.

The dataflow has no edge back from the book operator to the source, but a symbol's book and the
source partition that reads its frames run on the same worker (:mod:`market_data.placement`).
So the operator tells the source through :class:`BookWants` which books are not published and
why (their top reached past the prices they know exactly, or they were dropped for a reason the
source cannot see), and the source fetches a snapshot for them. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple


class Want(NamedTuple):
    """A book that is not published: why, since when (unix seconds), and whether it is live.

    ``window``: the book follows the stream but its top reached past the prices it knows
    exactly; only a snapshot helps it, and nothing else asks for one.
    """

    reason: str
    since: float
    window: bool = False


class BookWants:
    """Symbols whose books wait for a snapshot, posted by the operator, read by the source.

    Safe across a process's worker threads without a lock: every change is one dict operation
    and one ``next()`` of a counter, each atomic under the GIL. ``version`` takes a value never
    used before at every change (not necessarily a larger one: two threads may store theirs in
    either order), so a reader that rescans when it differs from the one it saw misses nothing.
    """

    def __init__(self) -> None:
        self._wants: dict[str, Want] = {}
        self._counter = itertools.count(1)
        self.version = 0

    def post(self, symbol: str, reason: str, since: float, window: bool = False) -> None:
        """``symbol``'s book is not published from ``since`` on, for ``reason``."""
        self._wants[symbol] = Want(reason, since, window)
        self.version = next(self._counter)

    def clear(self, symbol: str) -> None:
        """``symbol``'s book is published again."""
        if self._wants.pop(symbol, None) is not None:
            self.version = next(self._counter)

    def get(self, symbol: str) -> Want | None:
        """Why ``symbol``'s book waits, or ``None`` when it is published."""
        return self._wants.get(symbol)

    def of(self, symbols: Iterable[str]) -> dict[str, Want]:
        """The wants of ``symbols`` (a partition's)."""
        wants = self._wants
        return {s: w for s in symbols if (w := wants.get(s)) is not None}


@dataclass
class PipelineRuntime:
    """One pipeline's shared run-time objects (one per process, built by ``flows.build``).

    ``live``: the source follows an exchange now (not a recording), so how far events lag the
    exchange's clock says whether the flow is behind (see the orderbook's ``shed_after_s``).
    """

    wants: BookWants = field(default_factory=BookWants)
    live: bool = False
