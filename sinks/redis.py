"""The ``redis`` sink: book updates and trades to Redis pub/sub channels and/or Redis Streams.

Names and payloads (see :mod:`sinks.payload`; ``P`` is ``channel_prefix``)::

    pubsub   PUBLISH P orderbook:BTCUSDT <book json>     PUBLISH P trades:BTCUSDT <trade json>
    streams  XADD P orderbook:BTCUSDT MAXLEN ~ n * data <book json>
             XADD P trades:BTCUSDT MAXLEN ~ n <T>-<a> data <trade json>
    both     the XADD, then the PUBLISH, of each item

In mode ``both`` a stream key and a channel share one name on purpose: pub/sub channels are not
keys (``PUBLISH`` never touches the keyspace), so a consumer can ``XRANGE``/``XREAD`` the key to
catch up and ``SUBSCRIBE`` to the same name to follow. ``BookStatus`` items are not published.

Each bytewax batch is written with one non-transactional pipeline: the commands are packed in
the Redis protocol here (the per-name part once) and sent in one write on a connection of the
pool, then every reply is read off the socket at once (:mod:`sinks.resp`); redis-py's
``Pipeline`` did the same with about three times the Python work per command, and its
``read_response`` ten times the work per reply (see ``benchmarks/``). Each worker gets its own
connection pool in :meth:`RedisSink.build` (connections are made on first use, so a Redis that is
down at start-up is just an outage).

Delivery when Redis is down, restarting or slow (``write_batch`` never raises for it):

* The items of a failed write are held in a :class:`~sinks.buffer.PendingBuffer`: the latest book
  per symbol (conflated) and up to ``max_buffer`` trades in order; beyond that the oldest trades
  are dropped, counted in ``sink_drops{type="trade"}`` and logged once per outage. While items
  are held, new ones queue behind them, so order is kept.
* The partition retries from ``write_batch`` once the delay of an :class:`ExponentialBackoff`
  (``retry_initial_ms`` doubling up to ``retry_max_ms``) has passed on its clock; it never sleeps
  there, but one attempt can block for up to ``socket_timeout_s`` (connect or read timeout).
  With no new items, held ones wait for the next batch or for :meth:`RedisPartition.close`, which
  keeps trying for :data:`CLOSE_TIMEOUT_S` and counts what is left in ``sink_drops``. After an
  outage at most :data:`FLUSH_CHUNK` held trades go out per batch.
* A write that failed after it was sent may have been executed. Trades in streams therefore
  carry explicit ids ``<trade_time_ms>-<trade_id>``: Redis rejects a re-sent trade as not newer
  than the stream's top, so **each trade is in its stream once and in order**, provided trade
  time never decreases as trade id grows (true of Binance aggTrades) and nothing else writes the
  key (pipelines that carry the same symbol need different ``channel_prefix`` values). A
  rejection of a trade never sent before is counted in ``redis_errors`` and logged. Book entries
  use ``*`` ids: the latest book may appear twice (a repeated state is harmless).
* **Pub/sub is at-least-once across such failures**: a re-sent ``PUBLISH`` reaches subscribers
  twice; ``trade_id`` (strictly increasing per symbol) identifies repeats. Redis pub/sub itself is
  at-most-once: subscribers miss what is published while they are not connected, e.g. while
  Redis restarts; the streams are the way to catch up.
* Transient server refusals (OOM, READONLY, MISCONF, BUSY, TRYAGAIN, ...) are retried like an
  outage, for the refused commands only; other command errors (e.g. ``WRONGTYPE``: the name holds
  another type) drop that write, counted in ``redis_errors`` and ``sink_drops`` and logged once
  per symbol and message. If Redis refuses a trade's ``XADD`` but accepts a later trade of the
  same symbol in the same pipeline, the refused one can no longer enter the stream (it is
  logged as a rejection when retried).

Metrics: ``redis_publishes{symbol,type}`` per item fully written (``type`` is ``orderbook`` or
``trade``), ``redis_errors{symbol}`` per failed attempt and symbol in it and per refused write,
``sink_buffer_depth{sink}`` and ``sink_drops{sink,type}`` with ``sink`` = ``redis:<pipeline>``,
``processing_latency_*{symbol}``: ``recv_ns`` to the moment the pipeline returned, for items
with ``recv_ns > 0``, and ``event_to_publish_latency_seconds{symbol}``: the exchange's event
time to that moment, for the same items. With ``$MARKET_DATA_LATENCY_REPORT`` set, each partition
also records the latency of every book update at a resolution of 1/128 and writes it out when it
closes (:mod:`health.latency`). Reachability goes to :data:`health.state.STATE`
(down after a failed attempt, up after a good one) for ``/ready``. URLs are logged with any
password replaced by ``***``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from health import metrics
from health.latency import LatencyReport, report_from_env
from health.metrics import HistogramBatch
from health.state import STATE
from market_data import ConfigError, MarketDataError
from market_data.backoff import ExponentialBackoff
from market_data.config import PipelineConfig
from market_data.events import BookStatus, BookUpdate, OutputEvent, Trade
from market_data.options import RedisSinkOptions
from sinks.buffer import Pending, PendingBuffer, Target
from sinks.payload import BOOK_PREFIX, TRADE_PREFIX, channel, encode_book, encode_trade
from sinks.resp import ReplyProtocolError, ReplyReader

logger = logging.getLogger(__name__)

FLUSH_CHUNK = 10_000
"""Most held trades sent by one ``write_batch`` after an outage, to bound how long it takes."""
CLOSE_TIMEOUT_S = 5.0
"""How long :meth:`RedisPartition.close` keeps trying to deliver held items."""

_TARGETS = {
    "pubsub": Target.PUBLISH,
    "streams": Target.STREAM,
    "both": Target.STREAM | Target.PUBLISH,
}
_TRANSIENT = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError, MasterDownError)
_TRANSIENT_CODES = ("MISCONF", "BUSY", "NOREPLICAS")  # error codes redis-py has no class for
_DUPLICATE_ID = "equal or smaller than the target stream top item"
_READ_BYTES = 65536


def redact_url(url: str) -> str:
    """``url`` with any password (user info or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
    out = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        pairs = [p.partition("=") for p in parts.query.split("&")]
        out += "?" + "&".join(
            f"{k}{eq}***" if k.lower() == "password" else f"{k}{eq}{v}" for k, eq, v in pairs
        )
    return out + (f"#{parts.fragment}" if parts.fragment else "")


def _bulk(arg: bytes) -> bytes:
    """One argument in the Redis protocol (RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


_BOOK_ENTRY_ID = _bulk(b"*")  # books: Redis assigns the id
_DATA_FIELD = _bulk(b"data")


def _read_replies(conn: AbstractConnection, n: int) -> tuple[list[object], bool]:
    """Read the ``n`` replies to what was just sent on ``conn``, straight off its socket.

    Returns them and whether any is an error reply. redis-py's ``read_response`` costs ~3 µs a
    reply; this ~0.3 (:mod:`sinks.resp`). Nothing else reads this connection while the pool
    lends it to us, and it is dropped on any failure, so redis-py's own reply buffer is always
    empty here.
    """
    sock = conn._sock
    if sock is None:
        raise RedisConnectionError("the connection has no socket")
    reader = ReplyReader()
    try:
        while (replies := reader.pop(n)) is None:
            data = sock.recv(_READ_BYTES)
            if not data:
                raise RedisConnectionError("Redis closed the connection before replying")
            reader.feed(data)
    except ReplyProtocolError as exc:
        raise RedisConnectionError(f"unreadable reply from Redis: {exc}") from exc
    if reader.ready or reader.buffered:  # more than asked for: the connection is out of step
        raise RedisConnectionError(
            f"Redis sent more than the {n} replies expected ({reader.ready} more replies, "
            f"{reader.buffered} more bytes)"
        )
    if not reader.errors:
        return replies, False
    for reply in replies:
        # LOADING, NOAUTH, WRONGPASS...: redis-py's parsers raise these (ConnectionError
        # subclasses) instead of returning them, so they fail the attempt and it is retried;
        # returned here they would count as refusals of the items and drop them.
        if isinstance(reply, RedisConnectionError):
            raise reply
    return replies, True


def _transient(error: Exception) -> bool:
    return isinstance(error, _TRANSIENT) or str(error).startswith(_TRANSIENT_CODES)


class RedisPartition(StatelessSinkPartition[OutputEvent]):
    """One worker's writer: a pipeline per batch, the outage buffer and the retry schedule."""

    def __init__(
        self,
        client: redis.Redis,
        options: RedisSinkOptions,
        sink_label: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        latency_report: LatencyReport | None = None,
    ) -> None:
        self._client = client
        self._options = options
        self._targets = _TARGETS[options.mode]
        self._stream = bool(self._targets & Target.STREAM)
        self._publish = bool(self._targets & Target.PUBLISH)
        self._url = redact_url(options.url)
        self._label = sink_label
        self._backoff = ExponentialBackoff.from_ms(options.retry_initial_ms, options.retry_max_ms)
        self._buffer = PendingBuffer(options.max_buffer)
        self._clock = clock
        self._close_timeout_s = close_timeout_s
        self._failures = 0  # consecutive failed attempts
        self._retry_at = 0.0
        self._outage_since = 0.0
        self._outage_dropped = 0
        self._overflow_logged = False
        self._depth_reported = 0
        self._heads_cache: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._tallies: dict[str, _Tally] = {}  # per symbol: metrics of delivered items
        self._errors: dict[str, Counter] = {}
        self._health = STATE.sink(sink_label)  # reachability, for /ready
        self._report = latency_report

    def write_batch(self, items: list[OutputEvent]) -> None:
        """Write ``items`` in one pipeline, or hold them while Redis is unreachable."""
        writes = [self._pending(item) for item in items if not isinstance(item, BookStatus)]
        now = self._clock()
        if self._failures == 0 and not self._buffer:
            if writes:
                self._send(writes, now)
        else:
            self._count_drops(sum(self._buffer.add(w) for w in writes))
            if now >= self._retry_at and self._buffer:
                self._send(self._buffer.drain(FLUSH_CHUNK), now)
        self._report_depth()

    def close(self) -> None:
        """Deliver held items for up to ``close_timeout_s``, count the rest, close the pool."""
        deadline = time.monotonic() + self._close_timeout_s
        while self._buffer and time.monotonic() < deadline:
            if not self._send(self._buffer.drain(FLUSH_CHUNK), self._clock()):
                wait = min(self._backoff.compute(self._failures), deadline - time.monotonic())
                time.sleep(max(0.0, wait))
        left = self._buffer.drain()
        if left:
            trades = sum(1 for p in left if isinstance(p.item, Trade))
            books = len(left) - trades
            metrics.SINK_DROPS.labels(self._label, "trade").inc(trades)
            metrics.SINK_DROPS.labels(self._label, "orderbook").inc(books)
            logger.warning(
                "redis sink %s: closing with %d trades and %d book updates not delivered to %s",
                self._label,
                trades,
                books,
                self._url,
            )
        self._report_depth()
        self._health.close()
        self._client.close()
        if self._report is not None:
            self._report.write()

    def _pending(self, item: OutputEvent) -> Pending:
        if not isinstance(item, BookUpdate | Trade):
            raise MarketDataError(
                f"redis sink {self._label}: expected BookUpdate, Trade or BookStatus items; "
                f"got {type(item).__name__}"
            )
        return Pending(item, self._targets)

    def _heads(self, kind: str, symbol: str) -> tuple[bytes, bytes]:
        """The packed start of this name's ``XADD`` (up to its entry id) and ``PUBLISH``."""
        heads = self._heads_cache.get((kind, symbol))
        if heads is None:
            name = channel(self._options.channel_prefix, kind, symbol).encode()
            maxlen = str(self._options.stream_maxlen).encode()
            xadd = b"*8\r\n" + _bulk(b"XADD") + _bulk(name) + _bulk(b"MAXLEN") + _bulk(b"~")
            heads = self._heads_cache[kind, symbol] = (
                xadd + _bulk(maxlen),
                b"*3\r\n" + _bulk(b"PUBLISH") + _bulk(name),
            )
        return heads

    def _queue(self, commands: list[bytes], pending: Pending) -> tuple[bool, bool]:
        """Pack the commands for ``pending``; return which of (stream, publish) were queued."""
        item = pending.item
        if isinstance(item, BookUpdate):
            xadd, pub = self._heads(BOOK_PREFIX, item.symbol)
            payload, entry_id = encode_book(item), _BOOK_ENTRY_ID
        else:
            xadd, pub = self._heads(TRADE_PREFIX, item.symbol)
            payload = encode_trade(item)
            entry_id = _bulk(b"%d-%d" % (item.trade_time_ms, item.trade_id))
        if pending.targets is self._targets:  # the usual case; IntFlag arithmetic is slow
            stream, publish = self._stream, self._publish
        else:
            stream, publish = (
                bool(pending.targets & Target.STREAM),
                bool(pending.targets & Target.PUBLISH),
            )
        data = b"$%d\r\n%b\r\n" % (len(payload), payload)
        if stream:
            commands.append(xadd + entry_id + _DATA_FIELD + data)
        if publish:
            commands.append(pub + data)
        return stream, publish

    def _execute(self, commands: list[bytes]) -> tuple[list[object], bool]:
        """Send ``commands`` in one write; return their replies and whether any was refused.

        A refusal is its exception, among the replies.

        Raises :class:`RedisError` or :class:`OSError` when the connection fails (then it is
        dropped, and how much Redis executed is unknown).
        """
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)], check_health=False)
            return _read_replies(conn, len(commands))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _send(self, writes: list[Pending], now: float) -> bool:
        """Write ``writes`` in one pipeline; True unless they had to be held for a retry."""
        commands: list[bytes] = []
        queued = [self._queue(commands, pending) for pending in writes]
        try:
            replies, refused = self._execute(commands)
        except (RedisError, OSError) as exc:  # unknown how much Redis executed
            self._failed(writes, now, exc, maybe_sent=True)
            return False
        done_ns = time.perf_counter_ns()
        done_s = time.time()
        retry: list[Pending] = []
        first_error: Exception | None = None
        if not refused:  # the usual case: every item delivered
            self._delivered([pending.item for pending in writes], done_ns, done_s)
        else:
            delivered: list[BookUpdate | Trade] = []
            replies_iter = iter(replies)
            for pending, (stream, publish) in zip(writes, queued, strict=True):
                left, ok = Target(0), True
                for target, sent in ((Target.STREAM, stream), (Target.PUBLISH, publish)):
                    if not sent:
                        continue
                    reply = next(replies_iter)
                    if not isinstance(reply, Exception):
                        continue
                    if target is Target.STREAM and _DUPLICATE_ID in str(reply):
                        if not pending.maybe_sent:
                            self._rejected(pending, reply, dropped=False)
                    elif _transient(reply):
                        left |= target
                        first_error = first_error or reply
                    else:
                        ok = False
                        self._rejected(pending, reply, dropped=True)
                if left:
                    retry.append(Pending(pending.item, left, pending.maybe_sent))
                elif ok:
                    delivered.append(pending.item)
            self._delivered(delivered, done_ns, done_s)
        if first_error is not None:
            self._failed(retry, now, first_error, maybe_sent=False)
            return False
        self._health.up()
        if self._failures:
            logger.info(
                "redis sink %s: writing to %s again after %.1f s and %d failed attempts; "
                "%d trades dropped meanwhile, %d items still held",
                self._label,
                self._url,
                now - self._outage_since,
                self._failures,
                self._outage_dropped,
                len(self._buffer),
            )
            self._failures = 0
        return True

    def _failed(
        self, writes: list[Pending], now: float, error: Exception, maybe_sent: bool
    ) -> None:
        self._failures += 1
        self._health.down(
            f"redis {'unreachable' if maybe_sent else 'refusing writes'}: "
            f"{type(error).__name__}: {error}"
        )
        delay = self._backoff.compute(self._failures)
        self._retry_at = now + delay
        for symbol in sorted({p.item.symbol for p in writes}):
            self._error_counter(symbol).inc()
        if self._failures == 1:
            self._outage_since, self._outage_dropped, self._overflow_logged = now, 0, False
            logger.warning(
                "redis sink %s: cannot write to %s (%s: %s); holding the latest book per symbol "
                "and up to %d trades, retrying in %.3f s",
                self._label,
                self._url,
                type(error).__name__,
                error,
                self._options.max_buffer,
                delay,
            )
        else:
            logger.debug("redis sink %s: attempt %d failed: %s", self._label, self._failures, error)
        self._count_drops(self._buffer.requeue(writes, maybe_sent=maybe_sent))

    def _rejected(self, pending: Pending, error: Exception, *, dropped: bool) -> None:
        item = pending.item
        kind = "orderbook" if isinstance(item, BookUpdate) else "trade"
        self._error_counter(item.symbol).inc()
        if dropped:
            metrics.SINK_DROPS.labels(self._label, kind).inc()
        key = (f"{kind}:{item.symbol}", str(error))
        if key not in self._logged:  # once per symbol and message, not once per item
            self._logged.add(key)
            logger.error(
                "redis sink %s: Redis refused a %s write of %s (%s); %s",
                self._label,
                kind,
                item.symbol,
                error,
                "it is dropped" if dropped else "skipped in the stream (another writer?)",
            )

    def _delivered(self, items: list[BookUpdate | Trade], done_ns: int, done_s: float) -> None:
        """Count ``items``, written by the pipeline that returned at ``done_ns``/``done_s``."""
        tallies = self._tallies
        report = self._report
        for item in items:
            tally = tallies.get(item.symbol)
            if tally is None:
                tally = tallies[item.symbol] = _Tally(item.symbol)
            book = type(item) is BookUpdate
            if book:
                tally.books += 1
            else:
                tally.trades += 1
            if item.recv_ns > 0:
                elapsed_ns = done_ns - item.recv_ns
                tally.latency_us.observe(elapsed_ns / 1e3)
                tally.latency_s.observe(elapsed_ns / 1e9)
                # The exchange's clock may run ahead of ours: never a negative observation.
                since_event_s = max(0.0, done_s - item.event_time_ms / 1e3)
                tally.event_to_publish_s.observe(since_event_s)
                if report is not None:
                    if book:
                        report.recorder.record(elapsed_ns, done_ns)
                        report.event_recorder.record(round(since_event_s * 1e9), done_ns)
                    else:
                        report.trades += 1
        for tally in tallies.values():
            tally.flush()

    def _error_counter(self, symbol: str) -> Counter:
        counter = self._errors.get(symbol)
        if counter is None:
            counter = self._errors[symbol] = metrics.REDIS_ERRORS.labels(symbol)
        return counter

    def _count_drops(self, dropped: int) -> None:
        if not dropped:
            return
        metrics.SINK_DROPS.labels(self._label, "trade").inc(dropped)
        self._outage_dropped += dropped
        if not self._overflow_logged:
            self._overflow_logged = True
            logger.warning(
                "redis sink %s: %d trades held while %s is unreachable; dropping the oldest "
                "(counted in sink_drops, logged once per outage)",
                self._label,
                self._options.max_buffer,
                self._url,
            )

    def _report_depth(self) -> None:
        depth = len(self._buffer)
        if depth != self._depth_reported:  # deltas, so workers sharing the label add up
            metrics.SINK_BUFFER_DEPTH.labels(self._label).inc(depth - self._depth_reported)
            self._depth_reported = depth


class RedisSink(DynamicSink[OutputEvent]):
    """Every worker writes its own items through its own connection pool."""

    def __init__(
        self, options: RedisSinkOptions, label: str, *, close_timeout_s: float = CLOSE_TIMEOUT_S
    ) -> None:
        self.options = options
        self.label = label
        self.close_timeout_s = close_timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> RedisPartition:
        """Open this worker's connection pool (connections are made on first use)."""
        o = self.options
        client = redis.Redis.from_url(
            o.url,
            socket_timeout=o.socket_timeout_s,
            socket_connect_timeout=o.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),  # the partition retries, with its own policy
            # RESP2 unless the URL asks otherwise (?protocol=3): redis-py 8 speaks RESP3 by
            # default, where a server may push out-of-band messages (maintenance
            # notifications) into the replies that the sink reads itself (sinks/resp.py).
            protocol=2,
        )
        logger.info(
            "redis sink %s: worker %d/%d writes %s to %s (prefix %r)",
            self.label,
            worker_index,
            worker_count,
            o.mode,
            redact_url(o.url),
            o.channel_prefix,
        )
        return RedisPartition(
            client,
            o,
            self.label,
            close_timeout_s=self.close_timeout_s,
            latency_report=report_from_env(self.label, worker_index),
        )


class _Tally:
    """One symbol's delivered items, counted per batch and added to the metrics once."""

    __slots__ = (
        "books", "books_counter", "event_to_publish_s", "latency_s", "latency_us", "symbol",
        "trades", "trades_counter",
    )  # fmt: skip

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.books = 0
        self.trades = 0
        # Looked up on first use (labels() costs ~1 µs; a series appears once it has a count).
        self.books_counter: Counter | None = None
        self.trades_counter: Counter | None = None
        self.latency_us = HistogramBatch(metrics.PROCESSING_LATENCY_US.labels(symbol))
        self.latency_s = HistogramBatch(metrics.PROCESSING_LATENCY_S.labels(symbol))
        self.event_to_publish_s = HistogramBatch(metrics.EVENT_TO_PUBLISH_LATENCY_S.labels(symbol))

    def flush(self) -> None:
        if self.books:
            if self.books_counter is None:
                self.books_counter = metrics.REDIS_PUBLISHES.labels(self.symbol, "orderbook")
            self.books_counter.inc(self.books)
            self.books = 0
        if self.trades:
            if self.trades_counter is None:
                self.trades_counter = metrics.REDIS_PUBLISHES.labels(self.symbol, "trade")
            self.trades_counter.inc(self.trades)
            self.trades = 0
        self.latency_us.flush()
        self.latency_s.flush()
        self.event_to_publish_s.flush()


def build_sink(options: RedisSinkOptions, pipeline: PipelineConfig) -> RedisSink:
    """The sink for one ``type: redis`` entry of ``pipeline``."""
    if options.retry_max_ms < options.retry_initial_ms:
        raise ConfigError(
            f"pipeline {pipeline.name!r}: redis sink: retry_max_ms must be at least "
            f"retry_initial_ms ({options.retry_initial_ms}); got {options.retry_max_ms}"
        )
    return RedisSink(options, f"redis:{pipeline.name}")
