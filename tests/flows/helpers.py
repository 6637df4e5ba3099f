"""Shared helpers for flow tests: recorded events and a harness run under 1 or 2 workers."""

from __future__ import annotations

from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from market_data.events import Market, OutputEvent, SourceEvent
from market_data.options import OrderBookOptions
from market_data.runtime import PipelineRuntime
from operators.orderbook import apply
from sources.recording import Record, read_records
from sources.replay import events_of

DATA = Path(__file__).resolve().parent.parent / "data"
FUTURES = DATA / "binance_futures_2021-07-22.jsonl.gz"
SPOT = DATA / "binance_spot_2021-10-12.jsonl.gz"


def recorded_events(path: Path) -> list[SourceEvent]:
    """Every event the replay source would emit for ``path``, in order."""
    return [events_of(rec, 0) for rec in read_records(path) if isinstance(rec, Record)]


def run_source(
    source: Source[SourceEvent],
    market: Market,
    workers: int = 1,
    depth: int = 10,
    runtime: PipelineRuntime | None = None,
    sink: list[OutputEvent] | None = None,
) -> list[OutputEvent]:
    """Run ``source`` through the order-book operator with bytewax's testing harness.

    ``runtime`` is the one the source was built with (the operator tells it which books wait);
    outputs are appended to ``sink`` as they come (another thread may watch it), or to a new list.
    """
    flow = Dataflow("test_books")
    src: Stream[SourceEvent] = op.input("inp", flow, source)
    out_stream = apply("order_book", src, OrderBookOptions(depth=depth), market, runtime)
    out: list[OutputEvent] = sink if sink is not None else []
    op.output("out", out_stream, TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def run_books(
    events: list[SourceEvent], market: Market, workers: int = 1, depth: int = 10
) -> list[OutputEvent]:
    """Run recorded events through the order-book operator (one and several workers)."""
    return run_source(TestingSource(events, batch_size=50), market, workers, depth)
