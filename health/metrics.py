"""Prometheus metrics, defined once and shared by every worker in the process.

The seed's names and labels are a contract for existing dashboards; keep them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 1 µs .. 100 ms, roughly x2.5 per bucket
_LATENCY_US_BUCKETS = (
    1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
)  # fmt: skip

WEBSOCKET_CONNECTED = Gauge(
    "websocket_connected", "1 while the symbol's WebSocket connections are up", ["symbol"]
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
TRADES_PROCESSED = Counter("trades_processed", "Trades emitted", ["symbol"])
REDIS_PUBLISHES = Counter("redis_publishes", "Messages written to Redis", ["symbol", "type"])
REDIS_ERRORS = Counter("redis_errors", "Failed Redis writes", ["symbol"])
SINK_BUFFER_DEPTH = Gauge("sink_buffer_depth", "Items held by a sink awaiting delivery", ["sink"])
SINK_DROPS = Counter("sink_drops", "Items a sink had to drop (overflow)", ["sink", "type"])
SNAPSHOT_FETCHES = Counter(
    "snapshot_fetches", "REST depth snapshot requests, by outcome", ["symbol", "outcome"]
)
RESYNCS = Counter("resyncs", "Snapshots requested by the source, by reason", ["symbol", "reason"])
