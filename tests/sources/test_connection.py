"""WsConnection against tiny loopback WebSocket servers: silence, reconnects, frames."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from websockets.asyncio.server import ServerConnection, serve

from market_data.backoff import ExponentialBackoff
from sources.connection import (
    ConnectionSettings,
    ConnEvent,
    ConnState,
    LinkReader,
    WsConnection,
)
from sources.policy import ConnectionPlan

Handler = Callable[[ServerConnection], object]


@contextmanager
def ws_server(handler: Handler) -> Iterator[tuple[str, list[float]]]:
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
        async with serve(wrapped, "127.0.0.1", 0) as server:
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

    def _poll(self) -> None:
        while not self._done.wait(0.001):
            self.reader.poll()

    def start(self) -> None:
        self._poller.start()
        self.conn.start()

    def stop(self) -> None:
        self.conn.stop()
        self._done.set()
        self._poller.join(5)
        self.reader.close()


def connect(url: str, **settings: float) -> tuple[Polled, list[str], list[ConnEvent]]:
    polled = Polled(url, ConnectionSettings(backoff=ExponentialBackoff(0.2, 0.4), **settings))
    polled.start()
    return polled, polled.frames, polled.events


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
        conn, frames, events = connect(url)
        try:
            wait_for(lambda: len(frames) == 50)
        finally:
            conn.stop()
    assert frames == [f'{{"n":{i}}}' for i in range(50)]
    assert events[0].state is ConnState.CONNECTED


def test_a_silent_connection_is_dropped_and_reopened():
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()  # never sends a frame (websockets still answers pings)

    with ws_server(silent) as (url, opened):
        conn, _, events = connect(url, silence_timeout_s=1.0)
        try:
            wait_for(lambda: len(opened) >= 2)
        finally:
            conn.stop()
    lost = [e for e in events if e.state is ConnState.DISCONNECTED]
    assert lost and lost[0].reason == "silent for 1s"
    assert opened[1] - opened[0] >= 1.0 + 0.2  # the silence, then at least the initial backoff


def test_reconnects_back_off_after_the_server_drops_the_connection():
    async def hang_up(ws: ServerConnection) -> None:
        await ws.close()

    with ws_server(hang_up) as (url, opened):
        conn, _, events = connect(url)
        try:
            wait_for(lambda: len(opened) >= 4)
        finally:
            conn.stop()
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(0.19 <= g <= 1.0 for g in gaps), gaps  # jittered within [0.2, 0.4] s (+ latency)
    assert sum(e.state is ConnState.DISCONNECTED for e in events) >= 3


def test_an_unreachable_server_is_retried_without_raising():
    conn, _, events = connect("ws://127.0.0.1:9/public/stream?streams=x@depth")  # discard port
    try:
        wait_for(lambda: len(events) >= 2)
    finally:
        conn.stop()
    assert all(e.state is ConnState.DISCONNECTED for e in events)


def test_pings_are_answered_and_fragmented_messages_arrive_whole():
    answered: list[bool] = []

    async def talk(ws: ServerConnection) -> None:
        waiter = await ws.ping(b"are you there")
        try:
            await asyncio.wait_for(waiter, 2)  # Binance drops a connection that does not answer
            answered.append(True)
        except TimeoutError:
            answered.append(False)
        await ws.send(['{"part":', "1", "}"])  # one text message in three frames
        await ws.wait_closed()

    with ws_server(talk) as (url, _):
        conn, frames, _ = connect(url)
        try:
            wait_for(lambda: len(frames) == 1)
        finally:
            conn.stop()
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
        conn, frames, events = connect(url)
        try:
            wait_for(lambda: frames == ['{"n":1}'])
        finally:
            conn.stop()
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
        conn, frames, events = connect(url)
        try:
            wait_for(lambda: len(opened) >= 2)
        finally:
            conn.stop()
    lost = [e.reason for e in events if e.state is ConnState.DISCONNECTED]
    assert lost[0] == "protocol error: the server sent a masked frame"
    assert frames[:2] == ['{"n":1}', '{"n":1}']  # the frame before it, then the new connection's
