"""One Binance WebSocket connection, kept alive in its own thread.

It connects, reads frames and hands each one, stamped on receipt, to a callback; answers pings
(websocket-client replies to them inside ``recv``); reconnects with capped exponential backoff
and full jitter; treats a connection that stays silent too long as dead; and replaces a
connection before the exchange's 24-hour cut by opening the new one first, reading the old one
for a short overlap, then switching (frames seen twice are dropped downstream by id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import websocket

from market_data.backoff import ExponentialBackoff
from sources.policy import ConnectionPlan, jittered_delay

logger = logging.getLogger(__name__)

RECV_TIMEOUT_S = 0.5


class ConnState(StrEnum):
    """What happened to a connection."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REPLACED = "replaced"  # proactively, without a gap


@dataclass(frozen=True, slots=True)
class ConnEvent:
    """A connection state change, for the partition's bookkeeping and metrics."""

    plan: ConnectionPlan
    state: ConnState
    reason: str


FrameCallback = Callable[[float, int, str, str], None]  # (recv_time, recv_ns, url, text)
StateCallback = Callable[[ConnEvent], None]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Timing of one connection."""

    backoff: ExponentialBackoff
    silence_timeout_s: float = 30.0
    max_age_s: float = 23.5 * 3600
    overlap_s: float = 0.5
    connect_timeout_s: float = 10.0


class WsConnection:
    """Keeps one planned connection open until :meth:`stop`."""

    def __init__(
        self,
        plan: ConnectionPlan,
        settings: ConnectionSettings,
        on_frame: FrameCallback,
        on_state: StateCallback,
        rng: random.Random | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self._on_frame = on_frame
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ws-{plan.streams[0]}", daemon=True)
        self._ws: websocket.WebSocket | None = None
        self._opened_at = 0.0

    def start(self) -> None:
        """Start the connection's thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the socket and end the thread."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:  # closing a broken socket must not raise
                logger.debug("closing %s failed", self.plan.url, exc_info=True)
        self._thread.join(timeout)

    def _connect(self) -> websocket.WebSocket:
        ws = websocket.create_connection(
            self.plan.url,
            timeout=self.settings.connect_timeout_s,
            skip_utf8_validation=True,  # ~10x faster decoding; Binance sends ASCII JSON
            enable_multithread=True,
        )
        ws.settimeout(RECV_TIMEOUT_S)
        self._opened_at = time.monotonic()  # its age counts from here, overlap included
        return ws

    def _run(self) -> None:
        failures = 0
        ws: websocket.WebSocket | None = None
        while not self._stop.is_set():
            if ws is None:
                try:
                    ws = self._connect()
                except Exception as exc:  # the network's behaviour never kills us
                    failures += 1
                    delay = jittered_delay(self.settings.backoff, failures, self._rng)
                    logger.warning(
                        "connect to %s failed (%s: %s); retry %d in %.2fs",
                        _short(self.plan.url), type(exc).__name__, exc, failures, delay,
                    )  # fmt: skip
                    self._on_state(ConnEvent(self.plan, ConnState.DISCONNECTED, str(exc)))
                    self._stop.wait(delay)
                    continue
                failures = 0
                self._ws = ws
                logger.info(
                    "connected to %s (%d streams)", _short(self.plan.url), len(self.plan.streams)
                )
                self._on_state(ConnEvent(self.plan, ConnState.CONNECTED, "connected"))
            reason = self._read(ws)
            if reason == "replace":
                ws = self._replace(ws)
                continue
            _close(ws)
            ws = self._ws = None
            if self._stop.is_set():
                break
            failures += 1
            delay = jittered_delay(self.settings.backoff, failures, self._rng)
            logger.warning(
                "connection to %s lost (%s); reconnecting in %.2fs",
                _short(self.plan.url),
                reason,
                delay,
            )
            self._on_state(ConnEvent(self.plan, ConnState.DISCONNECTED, reason))
            self._stop.wait(delay)

    def _read(self, ws: websocket.WebSocket, until: float | None = None) -> str:
        """Read frames until the connection ends; return why it ended."""
        settings = self.settings
        opened = self._opened_at
        last_frame = time.monotonic()
        url = self.plan.url
        on_frame = self._on_frame
        while not self._stop.is_set():
            now = time.monotonic()
            if until is not None and now >= until:
                return "overlap over"
            if until is None and now - opened >= settings.max_age_s:
                return "replace"
            try:
                text = ws.recv()
            except websocket.WebSocketTimeoutException:
                if time.monotonic() - last_frame > settings.silence_timeout_s:
                    return f"silent for {settings.silence_timeout_s:.0f}s"
                continue
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not text:  # websocket-client returns "" for a close frame
                if not ws.connected:
                    return "closed by server"
                continue
            last_frame = time.monotonic()
            on_frame(
                time.time(),
                time.perf_counter_ns(),
                url,
                text if isinstance(text, str) else text.decode("utf-8", "replace"),
            )
        return "stopped"

    def _replace(self, old: websocket.WebSocket) -> websocket.WebSocket | None:
        """Open a new connection, keep reading the old one briefly, then switch to the new one."""
        try:
            new = self._connect()
        except Exception as exc:
            logger.warning(
                "could not open a replacement for %s (%s); keeping the old one",
                _short(self.plan.url),
                exc,
            )
            return old  # the exchange's cut will force a reconnect later
        # Frames on the old connection up to now are all read; the new one has been receiving
        # since it opened, so everything after the overlap is on it (earlier ones are duplicates).
        self._read(old, until=time.monotonic() + self.settings.overlap_s)
        _close(old)
        self._ws = new
        logger.info("replaced the connection to %s before its 24h cut", _short(self.plan.url))
        self._on_state(ConnEvent(self.plan, ConnState.REPLACED, "replaced before the 24h cut"))
        return new


def _close(ws: websocket.WebSocket) -> None:
    try:
        ws.close(timeout=1)
    except Exception:
        logger.debug("close failed", exc_info=True)


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
