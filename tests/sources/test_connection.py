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
from sources.connection import ConnectionSettings, ConnEvent, ConnState, WsConnection
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


def connect(url: str, **settings: float) -> tuple[WsConnection, list[str], list[ConnEvent]]:
    frames: list[str] = []
    events: list[ConnEvent] = []
    plan = ConnectionPlan(url, ("x@depth",), ("X",))
    conn = WsConnection(
        plan,
        ConnectionSettings(backoff=ExponentialBackoff(0.2, 0.4), **settings),
        lambda t, ns, u, text: frames.append(text),
        events.append,
    )
    conn.start()
    return conn, frames, events


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
