"""A CI-sized soak: ``benchmarks.soak`` for 25 s with every simulator fault on.

The full run is ``python -m benchmarks.soak`` (10 minutes); its figures are in the README.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import format_report, run_soak


@pytest.mark.parametrize("variant", ["rest-snapshots", "partial-depth-deep-books"], ids=lambda v: v)
def test_short_soak_with_every_fault_keeps_books_right_and_trades_whole(variant: str) -> None:
    if variant == "rest-snapshots":  # every book starts and resyncs from REST, faults and all
        report = run_soak(25.0, symbols=6, rate=40.0, warmup_s=8.0, partial_depth=False)
        faults: tuple[str, ...] = ("gap", "duplicate", "malformed", "unknown_event", "snapshot_lag")
    else:  # partial depth frames, books of 1,200 levels swept 80 at a time every 3 s
        report = run_soak(25.0, symbols=6, rate=40.0, warmup_s=8.0, sweep_every_s=3.0, levels=1200)
        faults = ("gap", "duplicate", "malformed", "unknown_event")
    print(format_report(report))  # shown by pytest -s / on failure
    counts = report.sim_counts
    for fault in faults:
        assert counts.get(fault, 0) > 0, (fault, counts)  # the faults really happened
    assert report.books_checked > 1000
    assert report.books_wrong == 0, report.wrong_examples
    assert report.books_unverifiable == 0
    assert report.trades_published > 100
    assert report.trades_duplicated == 0 and report.trades_out_of_order == 0
    assert report.trades_lost_in_flow == 0
    # Every symbol got a correct book and never lost it for long: no resync loop, no stall.
    assert report.first_book_s < 10.0
    assert report.longest_without_book_s < 10.0, report.longest_without_book_symbol
    # Connections and snapshot requests are closed as they are replaced: descriptors flat.
    assert abs(report.fds_end - report.fds_warm) <= 2
    assert report.fds_after <= report.fds_start + 2


def test_a_gap_storm_costs_each_book_a_moment_and_no_trade() -> None:
    # Issue 15's storm, denser: 3 symbols at 200 updates/s, 2% of depth frames dropped (about a
    # dozen gaps: none at all would be a 1-in-100,000 draw) and connections cut every few
    # seconds. Books restart from the next partial depth frame, so no resync waits for REST
    # weight, and the trade backfills after each cut have the REST budget to themselves.
    storm = "gap=0.02,disconnect=0.003"
    report = run_soak(20.0, symbols=3, rate=200.0, warmup_s=5.0, faults=storm)
    print(format_report(report))
    assert report.sim_counts["gap"] > 0 and report.sim_counts["disconnect"] > 0
    assert report.books_wrong == 0, report.wrong_examples
    assert report.longest_without_book_s < 5.0, report.longest_without_book_story
    assert report.trades_missing == 0
    assert not report.trade_backfills_failed, report.trade_backfills_failed
    assert report.trades_duplicated == 0 and report.trades_out_of_order == 0
