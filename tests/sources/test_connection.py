"""WsConnection against tiny loopback WebSocket servers: silence, reconnects, frames."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import websocket
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from market_data.backoff import ExponentialBackoff
from sources import connection
from sources.connection import (
    ConnectionSettings,
    ConnEvent,
    ConnState,
    Link,
    LinkReader,
    WsConnection,
)
from sources.policy import ConnectionPlan

Handler = Callable[[ServerConnection], object]


@contextmanager
def ws_server(handler: Handler, **options: Any) -> Iterator[tuple[str, list[float]]]:
    """Serve ``handler`` on a free loopback port; yield the URL and the connection times."""
    opened: list[float] = []
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    port: list[int] = []

    async def wrapped(ws: ServerConnection) -> None:
        opened.append(time.monotonic())
        await handler(ws)  # type: ignore[misc]

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serve(wrapped, "127.0.0.1", 0, **options) as server:
            port.append(next(iter(server.sockets)).getsockname()[1])
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield f"ws://127.0.0.1:{port[0]}/public/stream?streams=x@depth", opened
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(5)


class Polled:
    """A connection, and a thread polling its reader every millisecond as a source's worker does."""

    def __init__(self, url: str, settings: ConnectionSettings) -> None:
        self.frames: list[str] = []
        self.events: list[ConnEvent] = []
        self.reader = LinkReader(
            lambda t, ns, u, texts: self.frames.extend(texts), settings.silence_timeout_s
        )
        plan = ConnectionPlan(url, ("x@depth",), ("X",))
        self.conn = WsConnection(plan, settings, self.reader, self.events.append)
        self._done = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)

    stall: tuple[float, float] | None = None  # (poll for s, then stall for s), repeated

    def _poll(self) -> None:
        started = time.monotonic()
        while not self._done.wait(0.001):
            if self.stall is not None:
                busy, stalled = self.stall
                if (time.monotonic() - started) % (busy + stalled) >= busy:
                    continue  # the worker is busy elsewhere: nothing read
            self.reader.poll()

    def start(self) -> None:
        self._poller.start()
        self.conn.start()

    def stop(self) -> None:
        self.conn.stop()
        self._done.set()
        self._poller.join(5)
        self.reader.close()


def connect(
    url: str, stall: tuple[float, float] | None = None, **settings: float
) -> tuple[Polled, list[str], list[ConnEvent]]:
    polled = Polled(url, ConnectionSettings(backoff=ExponentialBackoff(0.2, 0.4), **settings))
    polled.stall = stall
    polled.start()
    return polled, polled.frames, polled.events


def run_until(
    url: str, done: Callable[[list[str], list[ConnEvent]], bool], **settings: float
) -> tuple[list[str], list[ConnEvent]]:
    """Connect, wait until ``done(frames, events)``, stop; return the frames and events."""
    conn, frames, events = connect(url, None, **settings)
    try:
        wait_for(lambda: done(frames, events))
    finally:
        conn.stop()
    return frames, events


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_frames_are_delivered_with_receive_stamps_in_order():
    async def talk(ws: ServerConnection) -> None:
        for i in range(50):
            await ws.send(f'{{"n":{i}}}')
        await ws.wait_closed()

    with ws_server(talk) as (url, _):
        frames, events = run_until(url, lambda frames, _: len(frames) == 50)
    assert frames == [f'{{"n":{i}}}' for i in range(50)]
    assert events[0].state is ConnState.CONNECTED


def test_a_silent_connection_is_dropped_and_reopened():
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()  # never sends a frame (websockets still answers pings)

    with ws_server(silent) as (url, opened):
        _, events = run_until(url, lambda *_: len(opened) >= 2, silence_timeout_s=1.0)
    lost = [e for e in events if e.state is ConnState.DISCONNECTED]
    assert lost and lost[0].reason == "silent for 1s"
    assert opened[1] - opened[0] >= 1.0 + 0.2  # the silence, then at least the initial backoff


def test_reconnects_back_off_after_the_server_drops_the_connection():
    async def hang_up(ws: ServerConnection) -> None:
        await ws.close()

    with ws_server(hang_up) as (url, opened):
        _, events = run_until(url, lambda *_: len(opened) >= 4)
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(0.19 <= g <= 1.0 for g in gaps), gaps  # jittered within [0.2, 0.4] s (+ latency)
    assert sum(e.state is ConnState.DISCONNECTED for e in events) >= 3


def test_an_unreachable_server_is_retried_without_raising():
    url = "ws://127.0.0.1:9/public/stream?streams=x@depth"  # the discard port
    _, events = run_until(url, lambda _, events: len(events) >= 2)
    assert all(e.state is ConnState.DISCONNECTED for e in events)


async def pong_comes(ws: ServerConnection, payload: bytes) -> bool:
    """Ping the client; whether its pong comes within 2 s (Binance drops one that is silent)."""
    waiter = await ws.ping(payload)
    try:
        await asyncio.wait_for(waiter, 2)
    except TimeoutError:
        return False
    return True


def test_pings_are_answered_and_fragmented_messages_arrive_whole():
    answered: list[bool] = []

    async def talk(ws: ServerConnection) -> None:
        answered.append(await pong_comes(ws, b"are you there"))
        await ws.send(['{"part":', "1", "}"])  # one text message in three frames
        await ws.wait_closed()

    with ws_server(talk) as (url, _):
        frames, _ = run_until(url, lambda frames, _: len(frames) == 1)
    assert answered == [True]
    assert frames == ['{"part":1}']


def test_the_servers_close_code_is_the_reason_and_stop_closes_properly():
    codes: list[int | None] = []

    async def talk(ws: ServerConnection) -> None:
        if len(codes) == 0:
            codes.append(None)
            await ws.close(1008, "too many requests")  # the first connection is refused
            return
        await ws.send('{"n":1}')
        await ws.wait_closed()
        codes.append(ws.close_code)  # what our stop() sent

    with ws_server(talk) as (url, _):
        _, events = run_until(url, lambda frames, _: frames == ['{"n":1}'])
        wait_for(lambda: len(codes) == 2)
    lost = [e.reason for e in events if e.state is ConnState.DISCONNECTED]
    assert lost[0] == "closed by server (1008: too many requests)"
    assert codes[1] == 1000, "stop() sends a normal close frame"


def test_a_protocol_violation_drops_the_connection_and_reconnects():
    async def talk(ws: ServerConnection) -> None:
        await ws.send('{"n":1}')
        await asyncio.sleep(0.1)
        ws.transport.write(bytes([0x81, 0x81]) + b"mask" + b"x")  # servers must not mask
        await ws.wait_closed()

    with ws_server(talk) as (url, opened):
        frames, events = run_until(url, lambda *_: len(opened) >= 2)
    lost = [e.reason for e in events if e.state is ConnState.DISCONNECTED]
    assert lost[0] == "protocol error: the server sent a masked frame"
    assert frames[:2] == ['{"n":1}', '{"n":1}']  # the frame before it, then the new connection's


def test_a_replacement_that_cannot_connect_is_tried_again_after_a_backoff():
    """Opening a replacement fails (here: HTTP 429, as when an IP opened too many connections).

    The old connection keeps being read, and the next attempt waits for a backoff delay: not
    one attempt after another, which would hammer the exchange and leave the old unread.
    """
    attempts: list[float] = []

    async def refuse_after_first(conn: ServerConnection, request: Request) -> Response | None:
        attempts.append(time.monotonic())
        if len(attempts) > 1:
            return conn.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many connections\n")
        return None

    async def talk(ws: ServerConnection) -> None:
        for i in itertools.count():
            await ws.send(f'{{"n":{i}}}')
            await asyncio.sleep(0.02)

    with ws_server(talk, process_request=refuse_after_first) as (url, _):
        # ~1.2 s, most of it past the age
        frames, _ = run_until(url, lambda frames, _: len(frames) >= 60, max_age_s=0.2)
    assert frames == [f'{{"n":{i}}}' for i in range(len(frames))]  # the old one, read on
    assert 2 <= len(attempts) <= 10, len(attempts)  # backoff 0.2-0.4 s: about 5


def detach_then_note(
    reader: LinkReader, link: Link, polled: threading.Event, after_poll: list[bool]
) -> None:
    """Detach ``link`` as its connection's thread does; note whether the worker polled first."""
    reader.detach(link)
    after_poll.append(polled.is_set())


def test_each_detach_waits_for_the_worker_also_when_a_link_is_read_again():
    """A replaced connection is read, let go, read again for the overlap, and let go again.

    Its thread closes the socket as soon as detach returns, so every detach must wait until
    the worker's next poll has let go of the socket, not only the first one.
    """
    sock, peer = socket.socketpair()
    link = Link(cast(websocket.WebSocket, SimpleNamespace(sock=sock)), "ws://test")
    reader = LinkReader(lambda t, ns, url, texts: None)
    try:
        for _ in range(2):
            reader.attach(link)
            reader.poll()  # the worker reads it
            polled = threading.Event()
            after_poll: list[bool] = []
            thread = threading.Thread(
                target=detach_then_note, args=(reader, link, polled, after_poll)
            )
            thread.start()
            thread.join(0.5)  # no poll meanwhile: detach must still be waiting
            polled.set()
            reader.poll()
            thread.join(5)
            assert after_poll == [True]
    finally:
        sock.close()
        peer.close()


def test_a_socket_closed_before_its_attach_took_effect_ends_the_link_not_the_worker():
    """After a detach timed out (worker stuck), the thread closes the socket; a stale attach
    of it must not raise in the worker's poll."""
    sock, peer = socket.socketpair()
    link = Link(cast(websocket.WebSocket, SimpleNamespace(sock=sock)), "ws://test")
    reader = LinkReader(lambda t, ns, url, texts: None)
    reader.attach(link)
    sock.close()
    peer.close()
    reader.poll()
    assert link.ended.is_set()


class TlsRecords:
    """What an SSL socket does: each recv returns one TLS record at most, then wants to read."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = deque(records)

    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, size: int) -> bytes:
        if not self.records:
            raise ssl.SSLWantReadError("The operation did not complete (read)")
        return self.records.popleft()


def test_over_tls_one_poll_reads_every_record_waiting_not_one():
    """Binance is wss://: its frames come in small TLS records. A record shorter than a read's
    size does not mean the socket is drained; stopping there read one frame per poll."""
    texts = [f'{{"n":{i}}}'.encode() for i in range(50)]
    tls = TlsRecords([bytes([0x81, len(t)]) + t for t in texts])  # a frame per record
    link = Link(cast(websocket.WebSocket, SimpleNamespace(sock=tls)), "wss://test")
    frames: list[str] = []
    reader = LinkReader(lambda t, ns, url, got: frames.extend(got))
    reader.attach(link)
    reader.poll()
    assert frames == [t.decode() for t in texts]
    assert not link.ended.is_set()


def test_replacements_lose_nothing_while_the_worker_is_behind():
    """Every replacement lets the old connection go only once the worker has read it empty.

    The server broadcasts one numbered frame every 5 ms to every open connection, as the
    exchange does to subscribers. The worker reads for 0.2 s, then is busy for 1.5 s (longer
    than the 0.5 s overlap), again and again, while connections are replaced every 0.5 s:
    frames sent before a replacement opened are only on the old connection, so closing it
    unread would leave a hole in the numbers.
    """
    clients: set[ServerConnection] = set()
    started: list[asyncio.Task[None]] = []

    async def broadcast() -> None:
        for n in itertools.count():
            for ws in list(clients):
                try:
                    await ws.send(f'{{"n":{n}}}')
                except Exception:
                    clients.discard(ws)
            await asyncio.sleep(0.005)

    async def join(ws: ServerConnection) -> None:
        if not started:
            started.append(asyncio.get_running_loop().create_task(broadcast()))
        clients.add(ws)
        await ws.wait_closed()
        clients.discard(ws)

    with ws_server(join) as (url, opened):
        conn, frames, events = connect(url, stall=(0.2, 1.5), max_age_s=0.5)
        try:
            wait_for(lambda: len(opened) >= 4, timeout=30)  # three replacements at least
            time.sleep(1.0)
        finally:
            conn.stop()
    seen = {int(f[5:-1]) for f in frames}
    assert seen, "frames were read"
    missing = sorted(set(range(min(seen), max(seen) + 1)) - seen)
    assert missing == [], f"{len(missing)} frames lost, from {missing[:5]}"
    replaced = [e for e in events if e.state is ConnState.REPLACED]
    assert len(replaced) >= 3 and not [e for e in events if e.state is ConnState.DISCONNECTED]


@pytest.fixture
def tls_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate that websocket-client trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_over_real_tls_every_frame_arrives_in_order_and_pings_are_answered(
    tls_context: ssl.SSLContext,
) -> None:
    """Binance is wss://: the worker reads a non-blocking SSL socket (want-read, records)."""
    answered: list[bool] = []

    async def talk(ws: ServerConnection) -> None:
        for i in range(300):  # a TLS record each, as Binance writes them
            await ws.send(f'{{"n":{i},"pad":"{"x" * (i % 200)}"}}')
        answered.append(await pong_comes(ws, b"tls?"))
        await ws.send('{"n":300,"pad":""}')
        await ws.wait_closed()

    with ws_server(talk, ssl=tls_context) as (url, _):
        wss = url.replace("ws://", "wss://", 1)
        frames, events = run_until(wss, lambda frames, _: len(frames) == 301)
    assert [int(f[5 : f.index(",")]) for f in frames] == list(range(301))
    assert answered == [True]
    assert [e.state for e in events] == [ConnState.CONNECTED]


def test_wait_returns_when_a_socket_has_data_and_otherwise_at_the_timeout() -> None:
    # The low-latency mode's idle wait: woken by data, not by spinning.
    connection._WORKER.__dict__.clear()  # this thread's group: no reader of an earlier test
    reader = LinkReader(lambda *args: None)
    a, b = socket.socketpair()
    with a, b:
        reader._links = [SimpleNamespace(sock=a)]  # type: ignore[list-item]
        reader.wait(0.001)
        started = time.monotonic()
        reader.wait(0.05)
        assert time.monotonic() - started >= 0.04  # nothing came: the whole timeout
        b.send(b"x")
        started = time.monotonic()
        reader.wait(5.0)
        assert time.monotonic() - started < 1.0  # data: at once


def test_a_workers_partitions_wait_once_a_pass_on_all_their_sockets() -> None:
    # bytewax calls a worker's partitions in turn on one thread: one idle wait a pass, on every
    # partition's sockets, or four idle partitions would wait 4 ms and miss each other's data.
    connection._WORKER.__dict__.clear()
    first, second = LinkReader(lambda *args: None), LinkReader(lambda *args: None)
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    with a1, b1, a2, b2:
        first._links = [SimpleNamespace(sock=a1)]  # type: ignore[list-item]
        second._links = [SimpleNamespace(sock=a2)]  # type: ignore[list-item]
        first.wait(0.01)
        second.wait(0.01)  # joins this thread's group
        started = time.monotonic()
        first.wait(0.2)  # a pass: the first waits the whole timeout...
        second.wait(0.2)  # ...and the second, in the same pass, not at all
        assert 0.15 <= time.monotonic() - started < 0.35
        b2.send(b"x")  # data for the second partition wakes the first one's wait
        started = time.monotonic()
        first.wait(5.0)
        assert time.monotonic() - started < 1.0
