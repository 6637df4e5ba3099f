"""The simulator's REST API: depth snapshots, aggTrades, ping, time (``/fapi/v1`` or ``/api/v3``).

A minimal HTTP/1.1 server (keep-alive, JSON bodies) on asyncio streams, with Binance's request
weight accounting (``X-MBX-USED-WEIGHT-1M``, 429 then 418 with ``Retry-After``), its error bodies,
the snapshot faults (refusal, delay, lag) and late aggTrades answers. Requests sent while a
``Retry-After`` given to the client is still running are counted (``rest_in_retry_after``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from market_data.events import Market
from sources.simulator.config import SimulatorConfig
from sources.simulator.exchange import Exchange
from sources.simulator.faults import FaultConfig, snapshot_refused
from sources.simulator.limits import (
    FUTURES_AGG_TRADES_WEIGHT,
    SPOT_AGG_TRADES_WEIGHT,
    WeightLimiter,
    futures_depth_weight,
    spot_depth_weight,
)

Answer = tuple[int, dict[str, str], Any]
"""HTTP status, extra headers, JSON body."""

MAX_TIME_RANGE_MS = 3_600_000
"""aggTrades: ``startTime`` and ``endTime`` at most an hour apart."""


class RestApi:
    """Answers REST requests from the exchange's state; one instance per simulator."""

    def __init__(
        self,
        config: SimulatorConfig,
        exchange: Exchange,
        counts: Counter[str],
        faults: Callable[[], FaultConfig],
        clock: Callable[[], float],
    ) -> None:
        self.market = config.market
        self._exchange = exchange
        self._counts = counts
        self._faults = faults
        self._clock = clock
        self._limiter = WeightLimiter(
            config.weight_limit(), config.weight_window_s, config.ban_after_429, config.ban_s
        )
        self._rng = random.Random(f"{config.seed}:rest")

    def weight_granted(self) -> dict[str, int]:
        """REST weight granted so far (``total``) and the most in one window (``peak``)."""
        return self._limiter.weight_granted()

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one TCP connection: requests in turn until the client closes or asks to."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = raw.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                if len(parts) != 3:
                    extra: dict[str, str] = {}
                    status, body = 400, {"code": -1, "msg": "Bad request line."}
                    keep = False
                else:
                    method, target, version = parts
                    status, extra, body = await self._route(method, target, client)
                    keep = (
                        version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                    )
                payload = orjson.dumps(body)
                head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
                head.append("Content-Type: application/json;charset=UTF-8")
                head.append(f"Content-Length: {len(payload)}")
                head.extend(f"{k}: {v}" for k, v in extra.items())
                head.append("Connection: keep-alive" if keep else "Connection: close")
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, target: str, client: str) -> Answer:
        if self._limiter.arrive(client, self._clock()):
            self._counts["rest_in_retry_after"] += 1
        url = urlsplit(target)
        query = parse_qs(url.query)
        prefix = "/fapi/v1" if self.market is Market.FUTURES else "/api/v3"
        paths = ("depth", "aggTrades", "ping", "time")
        if url.path not in {f"{prefix}/{p}" for p in paths}:
            return 404, {}, {"code": -1, "msg": f"Not found: {url.path}"}
        if method != "GET":
            return 405, {}, {"code": -1, "msg": f"Method {method} is not allowed."}
        if url.path.endswith("/depth"):
            return await self._depth(query, client)
        if url.path.endswith("/aggTrades"):
            return await self._agg_trades(query, client)
        verdict = self._limiter.check(client, 1, self._clock())
        extra = self._weight_headers(verdict.used_weight)
        if verdict.status != 200:
            return self._refused(verdict.status, verdict.retry_after_s, extra, client)
        if url.path.endswith("/ping"):
            return 200, extra, {}
        return 200, extra, {"serverTime": int(self._clock() * 1000)}

    def _weight_headers(self, used: int) -> dict[str, str]:
        if self.market is Market.FUTURES:
            return {"X-MBX-USED-WEIGHT-1M": str(used)}
        return {"x-mbx-used-weight": str(used), "x-mbx-used-weight-1m": str(used)}

    def _refused(self, status: int, retry_after: int, extra: dict[str, str], client: str) -> Answer:
        extra = {**extra, "Retry-After": str(retry_after)}
        if status == 418:
            self._counts["rest_418"] += 1
            until = int((self._clock() + retry_after) * 1000)
            msg = (
                f"Way too many requests; IP({client}) banned until {until}. "
                "Please use the websocket for live updates to avoid bans."
            )
        else:
            self._counts["rest_429"] += 1
            msg = (
                f"Too many requests; current limit of IP({client}) is "
                f"{self._limiter.budget} requests per minute. Please use the websocket for "
                "live updates to avoid polling the API."
            )
        return status, extra, {"code": -1003, "msg": msg}

    async def _depth(self, query: dict[str, list[str]], client: str) -> Answer:
        futures = self.market is Market.FUTURES
        symbol = (query.get("symbol") or [""])[0]
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return 400, {}, {"code": -1102, "msg": msg}
        raw_limit = (query.get("limit") or ["500" if futures else "100"])[0]
        if not raw_limit.isdigit() or not 0 < int(raw_limit):
            msg = "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."
            return 400, {}, {"code": -1100, "msg": msg}
        limit = min(int(raw_limit), 1000 if futures else 5000)
        faults = self._faults()
        if faults.snapshot_429 and snapshot_refused(faults, self._rng):
            self._counts["snapshot_429"] += 1
            now = self._clock()
            self._limiter.told_to_wait(client, 1, now)
            return self._refused(
                429, 1, self._weight_headers(self._limiter.used(client, now)), client
            )
        weight = futures_depth_weight(limit) if futures else spot_depth_weight(limit)
        verdict = self._limiter.check(client, weight, self._clock())
        extra = self._weight_headers(verdict.used_weight)
        if verdict.status != 200:
            return self._refused(verdict.status, verdict.retry_after_s, extra, client)
        if symbol not in self._exchange.symbols:
            return 400, extra, {"code": -1121, "msg": "Invalid symbol."}
        # Taken now and delivered late, as a slow snapshot is: it ages on the way.
        body = self._exchange.snapshot(
            symbol, limit, faults.snapshot_lag, int(self._clock() * 1000)
        )
        if faults.snapshot_lag:
            self._counts["snapshot_lag"] += 1
        if faults.snapshot_delay_s > 0:
            self._counts["snapshot_delay"] += 1
            await asyncio.sleep(faults.snapshot_delay_s)
        return 200, extra, body

    async def _agg_trades(self, query: dict[str, list[str]], client: str) -> Answer:
        symbol = (query.get("symbol") or [""])[0]
        if not symbol:
            msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            return 400, {}, {"code": -1102, "msg": msg}
        values: dict[str, int | None] = {}
        for name in ("limit", "fromId", "startTime", "endTime"):
            raw = query[name][0] if query.get(name) else None
            if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
                msg = (
                    f"Illegal characters found in parameter '{name}'; "
                    "legal range is '^[0-9]{1,20}$'."
                )
                return 400, {}, {"code": -1100, "msg": msg}
            values[name] = None if raw is None else int(raw)
        limit = values["limit"] if values["limit"] is not None else 500
        if limit < 1:
            return 400, {}, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        start, end = values["startTime"], values["endTime"]
        if start is not None and end is not None and end - start > MAX_TIME_RANGE_MS:
            msg = "More than 1 hours between startTime and endTime."
            return 400, {}, {"code": -1127, "msg": msg}
        futures = self.market is Market.FUTURES
        weight = FUTURES_AGG_TRADES_WEIGHT if futures else SPOT_AGG_TRADES_WEIGHT
        verdict = self._limiter.check(client, weight, self._clock())
        extra = self._weight_headers(verdict.used_weight)
        if verdict.status != 200:
            return self._refused(verdict.status, verdict.retry_after_s, extra, client)
        if symbol not in self._exchange.symbols:
            return 400, extra, {"code": -1121, "msg": "Invalid symbol."}
        self._counts["agg_trades"] += 1
        body = self._exchange.agg_trades(symbol, values["fromId"], start, end, min(limit, 1000))
        delay = self._faults().agg_trades_delay_s
        if delay > 0:
            await asyncio.sleep(delay)  # answered late, as taken: newer trades are not in it
        return 200, extra, body
