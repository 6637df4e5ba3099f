"""One Binance WebSocket connection, kept alive in its own thread.

It connects (websocket-client does the handshake), reads the socket in large chunks and hands
the messages of each chunk, stamped on receipt, to a callback (:mod:`sources.wsframes` decodes
them: one system call for a burst of frames); answers pings; reconnects with capped
exponential backoff and full jitter; treats a connection that stays silent too long as dead;
and replaces a connection before the exchange's 24-hour cut by opening the new one first,
reading the old one for a short overlap, then switching (frames seen twice are dropped
downstream by id).
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
from sources.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    ProtocolError,
    close_reason,
)

logger = logging.getLogger(__name__)

RECV_TIMEOUT_S = 0.5
RECV_BYTES = 256 * 1024


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


FramesCallback = Callable[[float, int, str, list[str]], None]  # (recv_time, recv_ns, url, texts)
StateCallback = Callable[[ConnEvent], None]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Timing of one connection."""

    backoff: ExponentialBackoff
    silence_timeout_s: float = 30.0
    max_age_s: float = 23.5 * 3600
    overlap_s: float = 0.5
    connect_timeout_s: float = 10.0


class _Link:
    """An open connection: websocket-client's object (handshake, sending) and our decoder."""

    __slots__ = ("decoder", "opened_at", "ws")

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.decoder = FrameDecoder()
        self.opened_at = time.monotonic()  # its age counts from here, overlap included


class WsConnection:
    """Keeps one planned connection open until :meth:`stop`."""

    def __init__(
        self,
        plan: ConnectionPlan,
        settings: ConnectionSettings,
        on_frames: FramesCallback,
        on_state: StateCallback,
        rng: random.Random | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self._on_frames = on_frames
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ws-{plan.streams[0]}", daemon=True)
        self._link: _Link | None = None

    def start(self) -> None:
        """Start the connection's thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection properly and end the thread.

        The close frame goes out from here; the connection's thread sees the server's answer
        (or its read timeout) and shuts the socket.
        """
        self._stop.set()
        link = self._link
        if link is not None:
            try:
                link.ws.send_close()
            except Exception:  # closing a broken socket must not raise
                logger.debug("closing %s failed", self.plan.url, exc_info=True)
        self._thread.join(timeout)

    def _connect(self) -> _Link:
        ws = websocket.create_connection(
            self.plan.url,
            timeout=self.settings.connect_timeout_s,
            skip_utf8_validation=True,
            enable_multithread=True,  # stop() sends the close frame from another thread
        )
        ws.settimeout(RECV_TIMEOUT_S)
        return _Link(ws)

    def _run(self) -> None:
        failures = 0
        link: _Link | None = None
        while not self._stop.is_set():
            if link is None:
                try:
                    link = self._connect()
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
                self._link = link
                logger.info(
                    "connected to %s (%d streams)", _short(self.plan.url), len(self.plan.streams)
                )
                self._on_state(ConnEvent(self.plan, ConnState.CONNECTED, "connected"))
            reason = self._read(link)
            if reason == "replace":
                link = self._replace(link)
                continue
            _close(link.ws)
            link = self._link = None
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

    def _read(self, link: _Link, until: float | None = None) -> str:
        """Read frames until the connection ends; return why it ended.

        Each ``recv`` takes whatever has arrived (up to ``RECV_BYTES``); every message it
        completes is handed on at once, stamped with that ``recv``'s time.
        """
        settings = self.settings
        ws = link.ws
        sock = ws.sock
        if sock is None:
            return "closed"
        decoder = link.decoder
        last_frame = time.monotonic()
        url = self.plan.url
        on_frames = self._on_frames
        stopping = self._stop.is_set
        while not stopping():
            now = time.monotonic()
            if until is not None and now >= until:
                return "overlap over"
            if until is None and now - link.opened_at >= settings.max_age_s:
                return "replace"
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                if time.monotonic() - last_frame > settings.silence_timeout_s:
                    return f"silent for {settings.silence_timeout_s:.0f}s"
                continue
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not data:
                return "connection closed by the server without a close frame"
            recv_time = time.time()
            recv_ns = time.perf_counter_ns()
            last_frame = time.monotonic()
            try:
                messages = decoder.feed(data)
            except ProtocolError as exc:
                logger.error("%s: %s; reconnecting", _short(url), exc)
                return f"protocol error: {exc}"
            texts: list[str] = []
            for opcode, payload in messages:
                if opcode == OP_TEXT or opcode == OP_BINARY:
                    texts.append(payload.decode("utf-8", "replace"))
                elif opcode == OP_PING:
                    _send(ws.pong, payload)  # Binance drops a connection that does not answer
                elif opcode == OP_CLOSE:
                    if texts:
                        on_frames(recv_time, recv_ns, url, texts)
                    _send(ws.send_close)  # the closing handshake: answer, then shut the socket
                    return close_reason(payload)
            if texts:
                on_frames(recv_time, recv_ns, url, texts)
        return "stopped"

    def _replace(self, old: _Link) -> _Link | None:
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
        _close(old.ws)
        self._link = new
        logger.info("replaced the connection to %s before its 24h cut", _short(self.plan.url))
        self._on_state(ConnEvent(self.plan, ConnState.REPLACED, "replaced before the 24h cut"))
        return new


def _send(method: Callable[..., object], *args: object) -> None:
    """Send a control frame; a broken socket shows at the next read, not here."""
    try:
        method(*args)
    except Exception:
        logger.debug("sending a control frame failed", exc_info=True)


def _close(ws: websocket.WebSocket) -> None:
    try:
        ws.close(timeout=1)  # does nothing if the close frame went out already
    except Exception:
        logger.debug("close failed", exc_info=True)
    ws.shutdown()


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
