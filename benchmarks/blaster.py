"""A load generator that costs next to nothing: depth frames made before the run, sent as fast as a
real local WebSocket takes them.

The simulator makes every update as it goes and uses a whole core for ~50,000 frames/s
(``benchmarks.sim_rate``), which on this 2-core machine leaves the flow one core whatever its own
process count. The blaster serves seeded streams made beforehand (:mod:`benchmarks.streams`, with
as few level changes per update as the simulator's), so the flow and Redis get nearly both cores:

* ``GET /fapi/v1/depth?symbol=S``: the snapshot each stream starts from (once is enough: a
  correct flow never needs another);
* ``/public/stream?streams=...``: the WebSocket handshake, then each named symbol's frames,
  interleaved, written in large chunks as TCP takes them. A connection sends one frame per
  symbol, waits until the flow has fetched those symbols' snapshots, then the rest;
* ``/market/stream?...`` (aggTrade): the handshake, then nothing but pongs.

Every second it adds a traffic line like the simulator's (``frames_sent``, ``depth_frames_queued``,
``backlog``), so :mod:`benchmarks.live` reads both the same way. Benchmark code only: it trusts
its one client and checks little.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from benchmarks.streams import generate
from sources.simulator.wsframes import text_frames

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK_FRAMES = 256  # frames joined per socket write
SNAPSHOT_WAIT_S = 10.0
MAX_CHANGES = 8  # like the simulator's updates (~4 level changes on average)


def _make(args: tuple[str, int, int]) -> tuple[str, str, list[bytes]]:
    symbol, updates, seed = args
    stream = generate(symbol, updates, seed=seed, max_changes=MAX_CHANGES)
    return symbol, stream.snapshot, [text_frames((f,)) for f in stream.frames]


@dataclass
class Blaster:
    """The server's state: each symbol's snapshot and framed updates, and what it sent."""

    snapshots: dict[str, str]
    frames: dict[str, list[bytes]]
    served: dict[str, threading.Event] = field(default_factory=dict)
    sent: int = 0
    ran_out: bool = False  # a connection sent its last frame: the flow may have starved after
    lines: list[dict[str, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.served = {s: threading.Event() for s in self.snapshots}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self) -> None:
        """Accept connections until stopped, each on its own thread."""
        self._listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        self._listener.close()

    def tick(self) -> None:
        """A traffic line a second, as the simulator prints with ``--stats-every 1``."""
        while not self.stop.wait(1.0):
            self.lines.append(
                {"t": time.time(), "frames_sent": self.sent, "depth_frames_queued": self.sent,
                 "backlog": 0}
            )  # fmt: skip

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            request_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            target = request_line.split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in header_lines)}  # fmt: skip
            url = urlsplit(target)
            if url.path.endswith("/depth"):
                self._snapshot(conn, parse_qs(url.query)["symbol"][0])
            elif url.path.endswith("/stream"):
                self._websocket(conn, headers["sec-websocket-key"], url.path, url.query)
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _snapshot(self, conn: socket.socket, symbol: str) -> None:
        body = self.snapshots[symbol].encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-MBX-USED-WEIGHT-1M: 20\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        self.served[symbol].set()

    def _websocket(self, conn: socket.socket, key: str, path: str, query: str) -> None:
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %b\r\n\r\n" % accept
        )
        lock = threading.Lock()  # the sender's chunks and the reader's pongs
        threading.Thread(target=self._answer_pings, args=(conn, lock), daemon=True).start()
        if not path.endswith("/public/stream"):  # aggTrade: nothing to send
            self.stop.wait()
            return
        names = parse_qs(query)["streams"][0].split("/")
        symbols = [n.split("@")[0].upper() for n in names]
        frames = [self.frames[s] for s in symbols]
        with lock:
            conn.sendall(b"".join(f[0] for f in frames))
        for s in symbols:
            self.served[s].wait(SNAPSHOT_WAIT_S)
        order = [f[i] for i in range(1, max(map(len, frames))) for f in frames if i < len(f)]
        try:
            for i in range(0, len(order), CHUNK_FRAMES):
                if self.stop.is_set():
                    return
                chunk = order[i : i + CHUNK_FRAMES]
                with lock:
                    conn.sendall(b"".join(chunk))
                with self._lock:
                    self.sent += len(chunk)
        except OSError:
            return  # the flow stopped
        self.ran_out = True
        self.stop.wait()

    def _answer_pings(self, conn: socket.socket, lock: threading.Lock) -> None:
        """Read the client's frames (masked); answer each ping with a pong."""
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 2:
                    opcode, size = buf[0] & 0x0F, buf[1] & 0x7F
                    at = {126: 4, 127: 10}.get(size, 2)
                    if len(buf) < at + 4:
                        break  # the rest of the header is still to come
                    if size == 126:
                        size = struct.unpack("!H", buf[2:4])[0]
                    elif size == 127:
                        size = struct.unpack("!Q", buf[2:10])[0]
                    if len(buf) < at + 4 + size:
                        break
                    mask, payload = buf[at : at + 4], bytearray(buf[at + 4 : at + 4 + size])
                    buf = buf[at + 4 + size :]
                    for i in range(len(payload)):
                        payload[i] ^= mask[i % 4]
                    if opcode == 0x9 and size < 126:
                        with lock:
                            conn.sendall(bytes((0x8A, size)) + payload)
        except OSError:
            return


@dataclass
class BlasterRun:
    """What :func:`blaster` yields: the URLs to configure and the traffic so far."""

    ws_url: str
    rest_url: str
    blaster: Blaster


_MADE: dict[tuple[tuple[str, ...], int, int], list[tuple[str, str, list[bytes]]]] = {}


@contextmanager
def blaster(symbols: list[str], updates: int, seed: int = 1) -> Iterator[BlasterRun]:
    """Make ``updates`` frames per symbol (in 2 processes; the last set is kept for the next
    run), then serve them until the block ends."""
    key = (tuple(symbols), updates, seed)
    if key not in _MADE:
        _MADE.clear()
        with ProcessPoolExecutor(2) as pool:
            _MADE[key] = list(pool.map(_make, [(s, updates, seed) for s in symbols]))
    made = _MADE[key]
    server = Blaster({s: snap for s, snap, _ in made}, {s: frames for s, _, frames in made})
    threads = [threading.Thread(target=f, daemon=True) for f in (server.serve, server.tick)]
    for t in threads:
        t.start()
    try:
        yield BlasterRun(f"ws://{server.url}", f"http://{server.url}", server)
    finally:
        server.stop.set()
        for t in threads:
            t.join(5)
