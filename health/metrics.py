"""Prometheus metrics, defined once and shared by every worker in the process.

The seed's names and labels are a contract for existing dashboards; keep them. Gauges name a
``multiprocess_mode`` so that, in a multi-process cluster (prometheus-client's multiprocess
mode, see :mod:`health.cluster`), processes' values combine without a ``pid`` label.

The gauges made from the health state at scrape time (book staleness, sync and sink
reachability, readiness) are in :func:`state_families`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from health.report import Expectations, Merged, sink_problem

# 1 µs .. 100 ms, roughly x2.5 per bucket
_LATENCY_US_BUCKETS = (
    1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
)  # fmt: skip

WEBSOCKET_CONNECTED = Gauge(
    "websocket_connected",
    "1 while the symbol's WebSocket connections are up",
    ["symbol"],
    multiprocess_mode="livemax",
)
WEBSOCKET_DISCONNECTS = Counter(
    "websocket_disconnects", "WebSocket disconnects affecting the symbol", ["symbol"]
)
MESSAGES_PROCESSED = Counter(
    "messages_processed", "Frames processed, by event type", ["symbol", "type"]
)
MESSAGES_ERROR = Counter("messages_error", "Frames that could not be used", ["symbol"])
PROCESSING_LATENCY_US = Histogram(
    "processing_latency_microseconds",
    "Receipt of the frame to the sink's write, in microseconds",
    ["symbol"],
    buckets=_LATENCY_US_BUCKETS,
)
PROCESSING_LATENCY_S = Histogram(
    "processing_latency_seconds",
    "Receipt of the frame to the sink's write, in seconds",
    ["symbol"],
    buckets=tuple(b / 1e6 for b in _LATENCY_US_BUCKETS),
)
ORDERBOOK_UPDATES = Counter("orderbook_updates", "Book updates emitted", ["symbol"])
SEQUENCE_ERRORS = Counter("sequence_errors", "Sequence gaps detected", ["symbol"])
BOOK_WINDOW_MISSES = Counter(
    "book_window_misses",
    "Times a live book stopped publishing because its top reached past the prices it knows "
    "exactly (a fresher snapshot widens them again)",
    ["symbol"],
)
BOOKS_SHED = Counter(
    "books_shed",
    "Book updates applied but not published because a newer one of the same batch replaced "
    "them while the flow was behind the exchange (the orderbook operator's shed_after_s)",
    ["symbol"],
)
BOOK_SYNC_SECONDS = Histogram(
    "book_sync_seconds",
    "From the moment a book stops being published (or its first event) until it is published "
    "again: how long a start, a resync or a window miss kept it away",
    ["symbol"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
BOOK_AUDIT_MISMATCHES = Counter(
    "book_audit_mismatches",
    "Snapshots merged into a live book that disagreed with it (the book takes the exchange's "
    "levels)",
    ["symbol"],
)
TRADES_PROCESSED = Counter("trades_processed", "Trades emitted", ["symbol"])
REDIS_PUBLISHES = Counter("redis_publishes", "Messages written to Redis", ["symbol", "type"])
REDIS_ERRORS = Counter("redis_errors", "Failed Redis writes", ["symbol"])
SINK_BUFFER_DEPTH = Gauge(
    "sink_buffer_depth",
    "Items held by a sink awaiting delivery",
    ["sink"],
    multiprocess_mode="livesum",  # partitions report deltas, so they add up
)
SOURCE_BACKLOG = Gauge(
    "source_backlog",
    "Frames, snapshots and connection events a source partition received and has not processed",
    ["partition"],
    multiprocess_mode="livemax",  # one partition lives in one process
)
SINK_DROPS = Counter("sink_drops", "Items a sink had to drop (overflow)", ["sink", "type"])
SNAPSHOT_FETCHES = Counter(
    "snapshot_fetches", "REST depth snapshot requests, by outcome", ["symbol", "outcome"]
)
REST_WEIGHT_SPENT = Counter(
    "rest_weight_spent",
    "REST request weight this process spent, by endpoint (depth, aggTrades)",
    ["endpoint"],
)
REST_WEIGHT_USED = Gauge(
    "rest_weight_used",
    "The exchange's last X-MBX-USED-WEIGHT-1M: weight the whole IP used this minute",
    [],
    multiprocess_mode="livemax",
)
REST_RATE_LIMITED = Counter(
    "rest_rate_limited",
    "REST answers that refused a request for the weight limit (429) or banned the IP (418)",
    ["status"],
)
RESYNCS = Counter("resyncs", "Snapshots requested by the source, by reason", ["symbol", "reason"])
TRADES_BACKFILLED = Counter(
    "trades_backfilled",
    "Trades missed while a connection was down, fetched over REST and emitted",
    ["symbol"],
)
TRADE_BACKFILL_FAILURES = Counter(
    "trade_backfill_failures",
    "Trade backfills given up (the trades not fetched stay missing), by reason",
    ["symbol", "reason"],
)
EVENT_TO_PUBLISH_LATENCY_S = Histogram(
    "event_to_publish_latency_seconds",
    "Exchange event time (E) to the sink's write, in seconds (includes clock offset; >= 0)",
    ["symbol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class HistogramBatch:
    """Observations of one histogram child, added to it together by :meth:`flush`.

    ``Histogram.observe`` costs ~0.85 µs (a lock, or a shared-memory write in multiprocess mode,
    for the sum and again for the bucket); the Redis sink made three a book update. Here an
    observation is a bisection and two additions, and ``flush`` does the locked work once per
    bucket touched. It writes the child's own values (``_sum``, ``_buckets``: non-cumulative
    counts, the first bucket whose bound is >= the value, as ``observe`` chooses), so the
    exposition, multiprocess mode included, is unchanged;
    ``tests/health/test_metrics_batch.py`` checks that against ``observe`` for the installed
    prometheus-client.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, amount: float) -> None:
        """Count ``amount``; it reaches the histogram at the next :meth:`flush`."""
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending = True

    def flush(self) -> None:
        """Add what was observed since the last flush to the histogram."""
        if not self._pending:
            return
        child = self._child
        child._sum.inc(self._sum)
        counts = self._counts
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)
                counts[i] = 0
        self._sum = 0.0
        self._pending = False


def state_families(
    expect: Expectations, merged: Merged, ready: bool
) -> Iterator[GaugeMetricFamily]:
    """Gauges computed at scrape time from the health reports of every process."""
    now = merged.now
    staleness = GaugeMetricFamily(
        "orderbook_staleness_seconds",
        "Seconds since the symbol's last published book update",
        labels=["pipeline", "symbol"],
    )
    synced = GaugeMetricFamily(
        "orderbook_synced", "1 while the symbol's book is synced", labels=["pipeline", "symbol"]
    )
    for (pipeline, symbol), book in sorted(merged.books.items()):
        synced.add_metric([pipeline, symbol], 1.0 if book["state"] == "synced" else 0.0)
        if book["last_update_at"] is not None:
            staleness.add_metric([pipeline, symbol], max(0.0, now - book["last_update_at"]))
    reachable = GaugeMetricFamily(
        "sink_reachable", "1 while every partition of the sink can write", labels=["sink"]
    )
    for p in expect.pipelines:
        for label in p.sinks:
            if label in merged.sinks:
                reachable.add_metric([label], 0.0 if sink_problem(label, merged) else 1.0)
    yield staleness
    yield synced
    yield reachable
    yield GaugeMetricFamily(
        "market_data_ready", "1 when /ready answers 200", value=1.0 if ready else 0.0
    )
    yield GaugeMetricFamily(
        "market_data_processes_reporting",
        "Processes of the cluster whose health report is fresh",
        value=float(len(merged.reports)),
    )
