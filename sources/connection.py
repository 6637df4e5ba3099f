"""Binance WebSocket connections: kept alive by their own threads, read by the bytewax worker.

A :class:`WsConnection`'s thread connects (websocket-client does the handshake), reconnects
with capped exponential backoff and full jitter, and replaces its connection before the
exchange's 24-hour cut by opening the new one first and letting the old one go once the worker
has read it empty after a short overlap (frames seen twice are dropped downstream by id). It
does not read.

The partition's :class:`LinkReader` reads every open connection from the worker's own thread,
in ``next_batch``: non-blocking ``recv`` of up to 256 KiB, every complete frame split out at
once (:mod:`sources.wsframes`), pings answered, close frames and silence detected. Reading on
the worker means no GIL handoff between a reader thread and the worker per burst of frames (with
busy polling, a reader thread waited up to the interpreter's 5 ms switch interval for the
spinning worker), and a worker that falls behind simply reads later: frames wait in the
kernel's socket buffer and TCP slows the exchange, instead of piling up in Python's memory.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
import weakref
from collections import deque
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

RECV_BYTES = 256 * 1024
MAX_READ_BYTES = 8 * RECV_BYTES
"""Bytes read per connection and poll at most (2 MiB): the rest waits for the next poll."""
WATCH_S = 0.25
"""How often a connection's thread checks for its stop, its age and the end of an overlap."""
OVERLAP_MAX_S = 5.0
"""How much longer than the overlap a replacement waits for the worker to read the old
connection empty before closing it anyway."""
DETACH_WAIT_S = 2.0
"""How long a connection's thread waits for the worker to let go of a socket before closing it
anyway (the worker is then stuck in a long batch or gone)."""


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


class Link:
    """An open connection: websocket-client's object (handshake, sending) and our decoder.

    Its thread creates it; the worker reads it while it is attached to a :class:`LinkReader`.
    ``ended`` is set by the worker, with ``reason``, when the connection is over.
    """

    __slots__ = (
        "attached", "decoder", "drained_at", "ended", "last_frame", "opened_at", "plain", "reason",
        "replace_at", "sock", "url", "ws",
    )  # fmt: skip

    def __init__(self, ws: websocket.WebSocket, url: str) -> None:
        if ws.sock is None:
            raise websocket.WebSocketConnectionClosedException("connected without a socket")
        self.ws = ws
        self.sock: socket.socket = ws.sock
        # A short read drains only a plain socket: over TLS a recv returns one record at most
        # (often one frame), and more may wait in the kernel or the SSL object.
        self.plain = type(self.sock) is socket.socket
        self.url = url
        self.decoder = FrameDecoder()
        self.opened_at = time.monotonic()  # its age counts from here, overlap included
        self.replace_at = float("inf")  # when its thread opens a replacement (monotonic)
        self.last_frame = self.opened_at
        # When the worker last read it empty (the start of that poll, monotonic): everything
        # the socket had received before then has been read.
        self.drained_at = 0.0
        self.attached = False  # its thread asked the reader to read it (and not to stop since)
        self.reason = ""
        self.ended = threading.Event()


_WORKER = threading.local()
"""Per worker thread: its partitions' readers, and when one of them last waited idle."""


class LinkReader:
    """Reads the open connections of one partition, on the thread that calls :meth:`poll`.

    Connection threads :meth:`attach` and :meth:`detach` links; the changes take effect at the
    start of the next poll, so the worker is never reading a socket that is being closed; a
    detach returns once that poll has let go of the socket.
    """

    def __init__(
        self,
        on_frames: FramesCallback,
        silence_timeout_s: float = 30.0,
        on_unread: Callable[[float], None] | None = None,
    ) -> None:
        self._on_frames = on_frames
        self.on_unread = on_unread  # called by connection threads: data waits to be read
        self._silence_s = silence_timeout_s
        self._links: list[Link] = []  # the worker's
        # From threads: (link, None) to attach it; (link, let_go) to detach it, let_go set then.
        self._requests: deque[tuple[Link, threading.Event | None]] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self.polled_at = time.monotonic()  # the last poll's start
        self._idle_at = 0.0  # when this reader's last idle wait ended (see wait)

    def attach(self, link: Link) -> None:
        """Have ``link`` read from the next poll on (called by its connection's thread)."""
        with self._lock:
            if self._closed:
                link.reason = "the source is closing"
                link.ended.set()
            else:
                self._requests.append((link, None))

    def detach(self, link: Link) -> None:
        """Stop reading ``link``; return once the worker has let go of it (or after a while)."""
        let_go = threading.Event()
        with self._lock:
            if self._closed:
                return
            self._requests.append((link, let_go))
        if not let_go.wait(DETACH_WAIT_S):
            logger.warning("%s: the worker did not let go of the socket in time", _short(link.url))

    def close(self) -> None:
        """Stop reading for good (the partition is closing); nothing waits for a poll again."""
        with self._lock:
            self._closed = True
            for _, let_go in self._requests:
                if let_go is not None:
                    let_go.set()
            self._links = []
            self._requests.clear()

    def poll(self) -> None:
        """Read whatever every attached connection has received; hand on complete frames."""
        now = self.polled_at = time.monotonic()
        if self._requests:
            self._apply_requests()
        if not self._links:
            return
        for link in list(self._links):
            self._read(link, now)

    def wait(self, timeout_s: float) -> None:
        """The low-latency mode's idle wait: block until a socket has data, or ``timeout_s``.

        Woken at once by data like busy polling, without taking a core from Redis and the load.
        bytewax calls a worker's partitions one after another on its one thread, so the wait is
        the worker's, not the partition's: the first idle partition of a pass waits on the
        sockets of every partition of its thread, and the others of that pass go on at once
        (they read what woke it). Data already inside an SSL object counts as ready (the kernel
        would not show it).
        """
        readers: weakref.WeakSet[LinkReader] | None = getattr(_WORKER, "readers", None)
        if readers is None:
            readers = _WORKER.readers = weakref.WeakSet()
            _WORKER.waited_at = 0.0
        readers.add(self)
        if _WORKER.waited_at > self._idle_at:  # another partition waited since this one did
            self._idle_at = time.monotonic()
            return
        socks = [link.sock for reader in readers for link in reader._links]
        if any(isinstance(sock, ssl.SSLSocket) and sock.pending() for sock in socks):
            return
        poller = select.poll()  # not select.select: no limit on descriptor numbers
        try:
            for sock in socks:
                poller.register(sock, select.POLLIN)
            poller.poll(max(1, round(timeout_s * 1000)))
        except (OSError, ValueError):  # a socket closed meanwhile: the next poll finds out
            pass
        _WORKER.waited_at = self._idle_at = time.monotonic()

    def _apply_requests(self) -> None:
        with self._lock:
            while self._requests:
                link, let_go = self._requests.popleft()
                if let_go is None:
                    try:
                        link.sock.setblocking(False)
                    except OSError:  # closed meanwhile (its thread's detach timed out)
                        self._end(link, "closed before it could be read")
                        continue
                    self._links.append(link)
                else:
                    if link in self._links:
                        self._links.remove(link)
                    let_go.set()

    def _read(self, link: Link, now: float) -> None:
        if link.ws.sock is None:  # shut down by its thread (after a detach timed out)
            self._end(link, "the socket was shut down")
            return
        sock = link.sock
        on_frames = self._on_frames
        budget = MAX_READ_BYTES
        while budget > 0:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError):
                link.drained_at = now
                break  # nothing more for now
            except OSError as exc:
                self._end(link, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return
            if not data:
                self._end(link, "connection closed by the server without a close frame")
                return
            recv_time = time.time()
            recv_ns = time.perf_counter_ns()
            link.last_frame = now
            try:
                messages = link.decoder.feed(data)
            except ProtocolError as exc:
                logger.error("%s: %s; reconnecting", _short(link.url), exc)
                self._end(link, f"protocol error: {exc}")
                return
            texts: list[str] = []
            for opcode, payload in messages:
                if opcode == OP_TEXT or opcode == OP_BINARY:
                    texts.append(payload.decode("utf-8", "replace"))
                elif opcode == OP_PING:
                    _send(link.ws.pong, payload)  # Binance drops a connection that does not
                elif opcode == OP_CLOSE:
                    if texts:
                        on_frames(recv_time, recv_ns, link.url, texts)
                    _send(link.ws.send_close)  # the closing handshake: answer, then shut
                    self._end(link, close_reason(payload))
                    return
            if texts:
                on_frames(recv_time, recv_ns, link.url, texts)
            if len(data) < RECV_BYTES and link.plain:
                link.drained_at = now
                break  # drained (TLS: read on until it would block)
            budget -= len(data)
        if now - link.last_frame > self._silence_s:
            self._end(link, f"silent for {self._silence_s:.0f}s")

    def _end(self, link: Link, reason: str) -> None:
        if link in self._links:
            self._links.remove(link)
        if not link.ended.is_set():
            link.reason = reason
            link.ended.set()


class WsConnection:
    """Keeps one planned connection open until :meth:`stop`; ``reader`` reads it."""

    def __init__(
        self,
        plan: ConnectionPlan,
        settings: ConnectionSettings,
        reader: LinkReader,
        on_state: StateCallback,
        rng: random.Random | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        self._reader = reader
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ws-{plan.streams[0]}", daemon=True)
        self._link: Link | None = None
        self._replace_failures = 0

    def start(self) -> None:
        """Start the connection's thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection properly and end the thread.

        The close frame goes out from here; the connection's thread then stops having the
        connection read and shuts the socket.
        """
        self._stop.set()
        link = self._link
        if link is not None:
            try:
                link.ws.send_close()
            except Exception:  # closing a broken socket must not raise
                logger.debug("closing %s failed", self.plan.url, exc_info=True)
        self._thread.join(timeout)

    def _connect(self) -> Link:
        ws = websocket.create_connection(
            self.plan.url,
            timeout=self.settings.connect_timeout_s,
            skip_utf8_validation=True,
            enable_multithread=True,  # pongs from the worker, close frames from stop()
        )
        link = Link(ws, self.plan.url)
        link.replace_at = link.opened_at + self.settings.max_age_s
        return link

    def _run(self) -> None:
        failures = 0
        link: Link | None = None
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
        if link is not None:  # stopped during a replacement
            self._detach(link)
            _close(link.ws)

    def _attach(self, link: Link) -> None:
        if not link.attached:
            link.attached = True
            self._reader.attach(link)

    def _detach(self, link: Link) -> None:
        if link.attached:
            link.attached = False
            self._reader.detach(link)

    def _read(self, link: Link) -> str:
        """Have ``link`` read until it ends or its age is up; return why.

        When its age is up (``"replace"``) it stays attached: the worker reads it on while the
        replacement opens.
        """
        self._attach(link)
        while not self._stop.is_set():
            if time.monotonic() >= link.replace_at:
                return "replace"
            if link.ended.wait(WATCH_S):
                break
            self._report_unread(link)
        self._detach(link)
        return link.reason if link.ended.is_set() else "stopped"

    def _report_unread(self, link: Link) -> None:
        """Tell the reader's owner when received data waits in the socket.

        A stalled worker stops reading, so only this thread can see that frames arrive and are
        not processed (``/health``'s stall detection). Only when the worker has not polled for
        a while: a working one reads what this thread sees (and a ping read without any frame
        after it must not look like a frame never processed).
        """
        on_unread = self._reader.on_unread
        if on_unread is None:
            return
        at = time.time()
        if time.monotonic() - self._reader.polled_at <= WATCH_S:
            return
        try:
            poller = select.poll()
            poller.register(link.sock, select.POLLIN)
            readable = poller.poll(0)
        except (OSError, ValueError):  # closed meanwhile: the worker reports the end
            return
        if readable:
            on_unread(at)

    def _replace(self, old: Link) -> Link:
        """Open a new connection while the old one is read on, then switch to the new one.

        The old one is let go only once the worker has read it empty after the overlap (from
        the new one's opening): everything the old one received before the new one subscribed
        is then read, and the new one carries the rest (frames seen on both are dropped
        downstream by id). A worker too far behind to drain it within ``OVERLAP_MAX_S`` more
        may lose a few frames: the books see a gap and resync.
        """
        try:
            new = self._connect()
        except Exception as exc:
            # Try again after a backoff, reading the old one meanwhile; the exchange's cut
            # forces a reconnect later if no replacement opens before it.
            self._replace_failures += 1
            delay = jittered_delay(self.settings.backoff, self._replace_failures, self._rng)
            old.replace_at = time.monotonic() + delay
            logger.warning(
                "could not open a replacement for %s (%s); keeping the old one, next try in %.2fs",
                _short(self.plan.url),
                exc,
                delay,
            )
            return old
        self._replace_failures = 0
        until = new.opened_at + self.settings.overlap_s
        deadline = until + OVERLAP_MAX_S
        while not self._stop.is_set() and not old.ended.is_set():
            now = time.monotonic()
            if now >= until and old.drained_at >= until:
                break
            if now >= deadline:
                logger.warning(
                    "%s: the old connection was not read to its end %.1f s after the "
                    "replacement opened (the worker is behind); closing it anyway",
                    _short(self.plan.url), deadline - new.opened_at,
                )  # fmt: skip
                break
            old.ended.wait(min(WATCH_S, until - now) if now < until else 0.02)
        self._detach(old)
        self._link = new
        self._attach(new)  # read the new one first, then close the old one
        _send(old.ws.send_close)
        old.ws.shutdown()  # not waiting for the server's answer to the close frame
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
