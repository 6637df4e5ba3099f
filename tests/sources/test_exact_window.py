"""Deep books, sweeps through the top, books kept live: every published book is the exchange's.

The exchange holds more levels a side than a snapshot returns, and takers sweep dozens of levels
at a time, so the touch wanders past the deepest level of the snapshot the book started from
and into prices the book never saw. A book that published there would show levels missing
(found silently wrong in 3 of 8 runs of 60 symbols before the book tracked its exact window).
"""

from __future__ import annotations

from collections import Counter

import pytest

from market_data.events import BookState, BookStatus, StatusCause
from sources.simulator.config import SimulatorConfig
from sources.simulator.server import Simulator
from tests.sources.test_binance_live import assert_books_match, run_live

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]


@pytest.mark.parametrize("partial_depth", [False, True], ids=["rest-only", "partial-depth"])
def test_books_past_the_snapshots_deepest_level_are_never_published_wrong(
    partial_depth: bool,
) -> None:
    # 300 levels a side, snapshots of 100, a taker eating 40 levels of one side every 0.4 s.
    config = SimulatorConfig(
        symbols=tuple(SYMBOLS), rate=60, seed=7, levels=300, sweep_every_s=0.4, sweep_levels=40
    )
    with Simulator(config) as sim:
        out = run_live(sim, SYMBOLS, seconds=8.0, snapshot_limit=100, partial_depth=partial_depth)
        checked = assert_books_match(sim, out)  # the exactness check: every book published
    assert set(checked) == set(SYMBOLS)
    assert all(n > 40 for n in checked.values()), checked
    statuses = [ev for ev in out if isinstance(ev, BookStatus)]
    misses = Counter(s.symbol for s in statuses if s.cause is StatusCause.WINDOW)
    assert not any(s.cause is StatusCause.AUDIT for s in statuses), "a live book was wrong"
    if not partial_depth:
        # The sweeps did take the tops past what 100-level snapshots know: the books stopped,
        # said why, and came back after a fresh snapshot.
        assert sum(misses.values()) > 0, statuses[-10:]
    for symbol in SYMBOLS:
        last = [s for s in statuses if s.symbol == symbol][-1]
        assert last.state is BookState.SYNCED or last.cause is StatusCause.WINDOW, last
