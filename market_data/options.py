"""Options of the built-in source, operator and sink types, and their registrations.

Every key, its type and default is here; ``docs/configuration.md`` describes them for users.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator

from market_data.events import Market
from market_data.registry import OPERATORS, SINKS, SOURCES, Options

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,32}$")


def _url(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a {'/'.join(schemes)} URL")
        return value

    return AfterValidator(check)


WsUrl = Annotated[str, _url("ws", "wss")]
HttpUrl = Annotated[str, _url("http", "https")]
RedisUrl = Annotated[str, _url("redis", "rediss", "unix")]
PositiveInt = Annotated[int, Field(gt=0)]


def _check_symbols(symbols: list[str]) -> list[str]:
    bad = [s for s in symbols if not SYMBOL_RE.match(s)]
    if bad:
        raise ValueError(f"expected upper-case symbols like BTCUSDT, which {bad} are not")
    seen: set[str] = set()
    dups = sorted({s for s in symbols if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    if dups:
        raise ValueError(f"expected each symbol once, but {dups} repeat")
    return symbols


Symbols = Annotated[list[str], AfterValidator(_check_symbols)]


class BinanceOptions(Options):
    """Options shared by the live Binance sources."""

    symbols: Annotated[Symbols, Field(min_length=1)]
    ws_url: str
    rest_url: str
    depth_speed_ms: int = 100
    reconnect_delay_ms: PositiveInt = 1000
    max_reconnect_delay_ms: PositiveInt = 60000
    snapshot_limit: Literal[5, 10, 20, 50, 100, 500, 1000] = 1000
    silence_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    record: str | None = None  # path of a recording of every raw frame (see sources.recording)
    partitions: PositiveInt = 4  # symbol groups, each with its own connections and thread
    max_streams_per_connection: Annotated[int, Field(ge=1, le=1024)] = 1024
    # REST weight per window, per process; None: 80% of the exchange's limit, shared equally by
    # the cluster's processes on this host (see sources.policy.default_weight_budget).
    snapshot_weight_budget: PositiveInt | None = None
    snapshot_window_s: Annotated[float, Field(gt=0)] = 60.0
    # The exchange's request-weight limit per IP and window (Binance: 2400 futures, 6000 spot);
    # requests wait for the next window only when the server's used-weight header says so.
    exchange_weight_limit: PositiveInt | None = None
    max_connection_age_s: Annotated[float, Field(gt=0)] = 23.5 * 3600  # replaced before 24 h
    poll_interval_ms: Annotated[float, Field(ge=0)] = 1.0  # 0: wait on the sockets (low latency)
    run_for_s: Annotated[float, Field(gt=0)] | None = None  # end the flow after this (soak, demos)
    # After a trade connection comes back, fetch the aggTrades it missed over REST (see
    # sources.backfill); the symbol's live trades wait meanwhile, at most the timeout.
    trade_backfill: bool = True
    trade_backfill_max_trades: PositiveInt = 10_000
    trade_backfill_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Listen to each symbol's partial depth stream (<symbol>@depth20) too: its frames start a
    # book that publishes at most 20 levels without any REST request, and check (and widen)
    # every live book's top at no cost (see docs/architecture.md, "Snapshots").
    partial_depth: bool = True


class BinanceFuturesOptions(BinanceOptions):
    """``type: binance_futures``: USD-M Futures, routed ``/public`` and ``/market`` streams."""

    type: Literal["binance_futures"] = "binance_futures"
    ws_url: WsUrl = "wss://fstream.binance.com"
    rest_url: HttpUrl = "https://fapi.binance.com"

    @field_validator("depth_speed_ms")
    @classmethod
    def _speed(cls, v: int) -> int:
        if v not in (100, 250, 500):
            raise ValueError("expected 100, 250 or 500 (futures depth stream speeds, ms)")
        return v


class BinanceSpotOptions(BinanceOptions):
    """``type: binance_spot``: Spot streams with the Spot sequence rules."""

    type: Literal["binance_spot"] = "binance_spot"
    ws_url: WsUrl = "wss://stream.binance.com:9443"
    rest_url: HttpUrl = "https://api.binance.com"

    @field_validator("depth_speed_ms")
    @classmethod
    def _speed(cls, v: int) -> int:
        if v not in (100, 1000):
            raise ValueError("expected 100 or 1000 (spot depth stream speeds, ms)")
        return v


class ReplayOptions(Options):
    """``type: replay``: replays a recording (see :mod:`sources.recording`)."""

    type: Literal["replay"] = "replay"
    path: str | Annotated[list[str], Field(min_length=1)]
    speed: Annotated[float, Field(ge=0)] = 0.0  # 0: as fast as possible; 1: recorded pace
    symbols: Symbols | None = None  # default: every symbol in the recording
    market: Market | None = None  # default: from the recorded URLs

    def paths(self) -> list[str]:
        """The recording paths as a list."""
        return [self.path] if isinstance(self.path, str) else list(self.path)


class OrderBookOptions(Options):
    """``type: orderbook``: the keyed per-symbol book operator."""

    type: Literal["orderbook"] = "orderbook"
    depth: PositiveInt = 20
    max_levels: PositiveInt = 5000
    max_buffer: PositiveInt = 10000
    # When a batch's newest event is further behind the exchange's event time than this (the
    # flow has fallen behind), publish only the last book of each run of updates; every update
    # is still applied (books_shed_total counts what was left out). 0: never.
    shed_after_s: Annotated[float, Field(ge=0)] = 1.0


class RedisSinkOptions(Options):
    """``type: redis``: pub/sub channels and/or Redis Streams."""

    type: Literal["redis"] = "redis"
    url: RedisUrl = "redis://127.0.0.1:6379"
    channel_prefix: str = ""
    mode: Literal["pubsub", "streams", "both"] = "pubsub"
    stream_maxlen: PositiveInt = 100_000
    max_buffer: PositiveInt = 100_000  # trades kept in order while Redis is unreachable
    retry_initial_ms: PositiveInt = 100
    retry_max_ms: PositiveInt = 5000
    socket_timeout_s: Annotated[float, Field(gt=0)] = 2.0


class ShmSinkOptions(Options):
    """``type: shm``: a shared-memory ring per worker (see :mod:`sinks.shm`)."""

    type: Literal["shm"] = "shm"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,200}$")] = "market_data_shm"
    slots: PositiveInt = 65536
    slot_size: PositiveInt = 4096


class StdoutSinkOptions(Options):
    """``type: stdout``: one JSON line per book update and trade, for debugging."""

    type: Literal["stdout"] = "stdout"


class JsonlSinkOptions(Options):
    """``type: jsonl``: like ``stdout``, into a file per worker."""

    type: Literal["jsonl"] = "jsonl"
    path: str


SOURCES.register("binance_futures", BinanceFuturesOptions, "sources.binance:build_source")
SOURCES.register("binance_spot", BinanceSpotOptions, "sources.binance:build_source")
SOURCES.register("replay", ReplayOptions, "sources.replay:build_source")
OPERATORS.register("orderbook", OrderBookOptions, "operators.orderbook:apply")
SINKS.register("redis", RedisSinkOptions, "sinks.redis:build_sink")
SINKS.register("shm", ShmSinkOptions, "sinks.shm:build_sink")
SINKS.register("stdout", StdoutSinkOptions, "sinks.debug:build_stdout_sink")
SINKS.register("jsonl", JsonlSinkOptions, "sinks.debug:build_jsonl_sink")
