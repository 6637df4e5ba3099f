"""The simulator's servers: Binance-like WebSocket streams and REST (depth, aggTrades) on loopback.

Runs in its own thread with its own asyncio loop, so a test can use it in-process::

    with Simulator(SimulatorConfig(symbols=("BTCUSDT",), rate=200)) as sim:
        url = f"{sim.ws_url}/public/stream?streams=btcusdt@depth@100ms"
        snapshot = f"{sim.rest_url}/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
        ...
        sim.book_at("BTCUSDT", u, depth=20)  # what a correct local book holds after update u

Everything the exchange does is decided by :class:`~sources.simulator.exchange.Exchange` (the
market) and :mod:`~sources.simulator.faults` (what goes wrong); this module runs the loop and
the WebSocket side, :mod:`~sources.simulator.rest` the REST side.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from market_data.events import Market
from sources.simulator.config import SimulatorConfig
from sources.simulator.exchange import Exchange, Frame
from sources.simulator.faults import FaultConfig, break_frame, frame_action
from sources.simulator.limits import MessageRate
from sources.simulator.market import BookLevels, Fill, SimulatorError
from sources.simulator.rest import RestApi
from sources.simulator.streams import ConnectPath, delivered, parse_path, parse_stream
from sources.simulator.wsframes import text_frames

logger = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 100_000
"""Frames waiting for one slow client before it is dropped, as Binance drops slow consumers."""
MAX_FRAMES_PER_WRITE = 1_000
"""Frames written to a client's socket with one call at most."""
STARTUP_TIMEOUT_S = 10.0
CLOSE_WAIT_S = 5.0
UNKNOWN_EVENT = "simUnknownEvent"
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ABORT = object()
COUNT_NAMES = (
    "gap",
    "disconnect",
    "duplicate",
    "malformed",
    "unknown_event",
    "snapshot_429",
    "snapshot_delay",
    "snapshot_lag",
    "rest_429",
    "rest_418",
    "rest_in_retry_after",
    "ws_connections",
    "too_many_messages",
    "lifetime_closed",
    "agg_trades",
)


class _Close:
    """A queued request to close the connection after the frames queued before it."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class _Conn:
    """One client WebSocket: its mode, subscriptions, send queue and fault stream."""

    def __init__(self, ws: ServerConnection, path: ConnectPath, rng: random.Random, limit: int):
        self.ws = ws
        self.route = path.route
        self.combined = path.combined
        self.subscriptions: dict[str, None] = {}  # ordered set, for LIST_SUBSCRIPTIONS
        self.rng = rng
        self.rate = MessageRate(limit)
        self.queue: deque[object] = deque()  # texts to send, and _ABORT / _Close
        self._wakeup: asyncio.Future[None] | None = None  # set while the writer waits
        self.sent = 0  # frames handed to the socket

    def backlog(self) -> int:
        """Frames queued and not yet handed to the socket (safe from any thread)."""
        return len(self.queue)

    def send(self, text: str) -> None:
        if len(self.queue) >= MAX_QUEUED_FRAMES:
            logger.warning("dropping a client that is %d frames behind", MAX_QUEUED_FRAMES)
            self.abort()
            return
        self._put(text)

    def abort(self) -> None:
        """Cut the TCP connection after what is already queued (no close frame)."""
        self._put(_ABORT)

    def close(self, code: int, reason: str) -> None:
        """Close the connection properly after what is already queued."""
        self._put(_Close(code, reason))

    def _put(self, item: object) -> None:
        self.queue.append(item)
        if self._wakeup is not None:
            self._wakeup.set_result(None)
            self._wakeup = None

    async def write_loop(self) -> None:
        """Send what is queued, in order: every text frame queued so far in one socket write."""
        queue, loop = self.queue, asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    self._wakeup = loop.create_future()
                    await self._wakeup
                batch: list[str] = []
                while queue and len(batch) < MAX_FRAMES_PER_WRITE:
                    if not isinstance(queue[0], str):
                        break
                    batch.append(queue.popleft())  # type: ignore[arg-type]
                if batch:
                    if not await self._write(batch):
                        return
                    continue
                item = queue.popleft()
                if item is _ABORT:
                    self.ws.transport.abort()
                    return
                if isinstance(item, _Close):
                    await self.ws.close(item.code, item.reason)
                    return
        except ConnectionClosed:
            pass

    async def _write(self, texts: list[str]) -> bool:
        """Write ``texts`` as text frames with one call; False once the connection is closing.

        ``ServerConnection.send`` frames and writes each message on its own (a ``send`` system
        call per frame: most of the load-test mode's sending cost); here they are framed
        together (:func:`~sources.simulator.wsframes.text_frames`) and written at once, then the
        writer waits for the transport's buffer to drain, as ``send`` does. Pings, pongs and the
        close handshake stay with ``websockets``: each write is whole frames, so they interleave
        between frames.
        """
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return False  # closing: the handler ends with the connection
        ws.transport.write(text_frames(texts))
        self.sent += len(texts)
        try:
            await ws.drain()
        except OSError:  # the connection was lost while its buffer was full
            return False
        return True


class Simulator:
    """A local imitation of Binance USD-M Futures (or spot) market data, for tests and demos.

    Construct it cheaply, then :meth:`start` it (or use it as a context manager); ``ws_url`` and
    ``rest_url`` are known once it has started. Query methods are safe from any thread.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or SimulatorConfig()
        self._clock = clock
        self._exchange = Exchange(self.config)
        self._faults = self.config.faults
        # Every key exists from the start, so counts() can copy it from another thread.
        self._counts: Counter[str] = Counter(dict.fromkeys(COUNT_NAMES, 0))
        self._rest = RestApi(self.config, self._exchange, self._counts, lambda: self._faults, clock)
        self._subs: dict[str, set[_Conn]] = {}  # stream -> its listeners (never empty)
        self._conns: set[_Conn] = set()
        self._conn_serial = 0
        self._sent_by_closed = 0  # frames sent on connections that are gone
        self._depth_queued = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self.ws_url = ""
        self.rest_url = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Simulator:
        """Bind the ports and start serving; returns once both servers listen."""
        if self._thread is not None:
            raise SimulatorError("the simulator is already started")
        self._thread = threading.Thread(target=self._run, name="binance-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise SimulatorError(f"the simulator did not start within {STARTUP_TIMEOUT_S} s")
        if self._startup_error is not None:
            self._thread.join()
            raise SimulatorError(f"the simulator could not start: {self._startup_error}")
        return self

    def stop(self) -> None:
        """Close every connection and both servers; wait for the thread to end."""
        loop, stop = self._loop, self._stop_event
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(STARTUP_TIMEOUT_S)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until the simulator stops (the CLI's main loop)."""
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.5)

    # -- what tests ask --------------------------------------------------------------------
    @property
    def market(self) -> Market:
        """USD-M Futures or spot."""
        return self.config.market

    def book_at(self, symbol: str, update_id: int, depth: int = 20) -> BookLevels:
        """Top ``depth`` levels of ``symbol`` right after update ``update_id``.

        Prices and quantities are integer units of 1e-8 (:data:`market_data.events.SCALE`), best
        first, as in :class:`market_data.events.BookUpdate`. Any id from the recent history works
        (the last ``history_updates`` updates); an id between two updates gives the book after the
        earlier one. Raises :class:`SimulatorError` for ids out of that range.
        """
        return self._exchange.book_at(symbol, update_id, depth)

    def trades(self, symbol: str) -> list[Fill]:
        """Every aggTrade published for ``symbol`` so far, oldest first (units of 1e-8)."""
        return self._exchange.trades(symbol)

    def last_update_id(self, symbol: str) -> int:
        """The newest update id of ``symbol``'s book (it may not have been pushed yet)."""
        return self._exchange.last_update_id(symbol)

    @property
    def faults(self) -> FaultConfig:
        """The faults in force; assign a new :class:`FaultConfig` to change them at runtime."""
        return self._faults

    @faults.setter
    def faults(self, value: FaultConfig) -> None:
        self._faults = value

    def set_faults(self, **rates: float) -> FaultConfig:
        """Change some faults now, e.g. ``sim.set_faults(gap=0.2)``; returns the new set."""
        self._faults = self._faults.with_(**rates)
        return self._faults

    def rest_weight(self) -> dict[str, int]:
        """REST request weight granted so far (``total``) and the most in one window (``peak``).

        ``peak`` is what the exchange counted against its per-IP limit at worst.
        """
        return self._rest.weight_granted()

    def counts(self) -> dict[str, int]:
        """How often each fault and each limit happened (``gap``, ``rest_429``, ...).

        ``rest_in_retry_after`` counts the REST requests a client sent while a ``Retry-After``
        it was given (with a 429 or a 418) was still running, which Binance's rules forbid.
        """
        return dict(self._counts)

    def traffic(self) -> dict[str, int]:
        """Frames sent to clients so far, depth frames queued for them, the longest queue now."""
        conns = list(self._conns)
        return {
            "frames_sent": self._sent_by_closed + sum(c.sent for c in conns),
            "depth_frames_queued": self._depth_queued,
            "backlog": max((c.backlog() for c in conns), default=0),
        }

    def connection_count(self) -> int:
        """Open WebSocket connections."""
        return len(self._conns)

    def disconnect_all(self) -> None:
        """Abort every WebSocket connection (TCP cut, no close frame)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._abort_all)

    def _abort_all(self) -> None:
        for conn in list(self._conns):
            conn.abort()

    def stream_url(
        self, streams: Iterable[str], route: str | None = None, combined: bool = True
    ) -> str:
        """A connection URL, e.g. ``stream_url(["btcusdt@depth@100ms"])``.

        ``route`` is ``"public"``, ``"market"`` or ``""`` (the legacy unrouted paths, spot's only
        ones); by default ``"public"`` for futures and ``""`` for spot.
        """
        if route is None:
            route = "public" if self.market is Market.FUTURES else ""
        prefix = f"{self.ws_url}/{route}" if route else self.ws_url
        names = "/".join(streams)
        return f"{prefix}/stream?streams={names}" if combined else f"{prefix}/ws/{names}"

    def depth_url(self, symbol: str, limit: int = 1000) -> str:
        """The REST snapshot URL of ``symbol``."""
        path = "/fapi/v1/depth" if self.market is Market.FUTURES else "/api/v3/depth"
        return f"{self.rest_url}{path}?symbol={symbol}&limit={limit}"

    def agg_trades_url(self, symbol: str, **params: int) -> str:
        """The REST aggTrades URL of ``symbol``, e.g. ``agg_trades_url("BTCUSDT", fromId=5)``."""
        path = "/fapi/v1/aggTrades" if self.market is Market.FUTURES else "/api/v3/aggTrades"
        query = "".join(f"&{k}={v}" for k, v in params.items())
        return f"{self.rest_url}{path}?symbol={symbol}{query}"

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            # asyncio.run cancels what is left (a delayed snapshot, a writer) before closing.
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); nothing else can see this thread
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                logger.exception("the simulator stopped on an error")

    async def _main(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        ws_server = await serve(
            self._ws_handler,
            cfg.host,
            cfg.ws_port,
            process_request=self._process_request,
            compression=None,
            ping_interval=cfg.ping_interval(),
            ping_timeout=cfg.pong_timeout(),
            close_timeout=1,
            max_size=2**16,
            logger=logging.getLogger(f"{__name__}.ws"),
        )
        http_server = await asyncio.start_server(self._rest.serve_client, cfg.host, cfg.rest_port)
        ws_port = _port(ws_server)
        rest_port = http_server.sockets[0].getsockname()[1]
        self.ws_url = f"ws://{cfg.host}:{ws_port}"
        self.rest_url = f"http://{cfg.host}:{rest_port}"
        ticker = asyncio.create_task(self._tick_loop())
        self._ready.set()
        logger.info("simulator listening: %s %s", self.ws_url, self.rest_url)
        try:
            await self._stop_event.wait()
        finally:
            ticker.cancel()
            http_server.close()
            ws_server.close()
            await ws_server.wait_closed()
            await http_server.wait_closed()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.config.tick_ms / 1000
        max_backlog = self.config.max_backlog
        due = loop.time()
        while True:
            due += step
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:  # far behind (a paused process): carry on, do not burst
                    due = loop.time()
                await asyncio.sleep(0)  # behind: the writers and REST still get their turn
            if max_backlog is not None and any(c.backlog() > max_backlog for c in self._conns):
                continue  # a load test's client is behind: skip this tick's updates
            frames = self._exchange.tick(int(self._clock() * 1000), self._subs)
            self._dispatch(frames)

    def _dispatch(self, frames: list[Frame]) -> None:
        faults = self._faults
        rates = faults.gap + faults.disconnect + faults.duplicate
        faulty = rates + faults.malformed + faults.unknown_event > 0
        for frame in frames:
            subs = self._subs.get(frame.stream)
            if not subs:
                continue
            enveloped = None
            if frame.depth:
                self._depth_queued += len(subs)
            for conn in list(subs):
                if conn.combined:
                    enveloped = enveloped or frame.enveloped()
                    text = enveloped
                else:
                    text = frame.data
                if not faulty:
                    conn.send(text)
                else:
                    self._send_faulty(conn, frame, text, faults)

    def _send_faulty(self, conn: _Conn, frame: Frame, text: str, faults: FaultConfig) -> None:
        act = frame_action(faults, conn.rng, frame.depth)
        if act.disconnect:
            self._counts["disconnect"] += 1
            self._drop(conn)
            conn.abort()
            return
        if act.drop:
            self._counts["gap"] += 1
            return
        if act.unknown_event:
            self._counts["unknown_event"] += 1
            data = _dumps({"e": UNKNOWN_EVENT, "E": int(self._clock() * 1000), "s": frame.symbol})
            conn.send(
                Frame(frame.stream, frame.symbol, data).enveloped() if conn.combined else data
            )
        if act.malformed is not None:
            self._counts["malformed"] += 1
            conn.send(break_frame(text, act.malformed))
        conn.send(text)
        if act.duplicate:
            self._counts["duplicate"] += 1
            conn.send(text)

    # -- WebSocket -------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = parse_path(request.path, self.market)
        if path is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if len(set(path.streams)) > self.config.max_streams:
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"a connection can listen to at most {self.config.max_streams} streams\n",
            )
        return None

    async def _ws_handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # the handshake is done
        path = parse_path(ws.request.path, self.market)
        assert path is not None  # _process_request refused the others
        self._conn_serial += 1
        rng = random.Random(f"{self.config.seed}:conn:{self._conn_serial}")
        conn = _Conn(ws, path, rng, self.config.message_limit())
        self._conns.add(conn)
        self._counts["ws_connections"] += 1
        for name in path.streams:
            self._subscribe(conn, name)
        loop = asyncio.get_running_loop()
        writer = asyncio.create_task(conn.write_loop())
        expiry = loop.call_later(self.config.max_lifetime_s, self._expire, conn)
        try:
            async for message in ws:
                if not conn.rate.allow(loop.time()):
                    self._counts["too_many_messages"] += 1
                    conn.close(1008, "Too many requests")
                    # Let the writer send the replies queued before the close, then close.
                    await asyncio.wait_for(writer, CLOSE_WAIT_S)
                    break
                reply = self._command(conn, message)
                if reply is not None:
                    conn.send(reply)
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            expiry.cancel()
            self._drop(conn)
            writer.cancel()

    def _expire(self, conn: _Conn) -> None:
        self._counts["lifetime_closed"] += 1
        conn.close(1001, "connection lifetime exceeded")

    def _drop(self, conn: _Conn) -> None:
        for name in conn.subscriptions:
            self._stop_delivering(conn, name)
        if conn in self._conns:
            self._conns.discard(conn)
            self._sent_by_closed += conn.sent

    def _subscribe(self, conn: _Conn, name: str) -> None:
        if name in conn.subscriptions:
            return
        conn.subscriptions[name] = None
        stream = parse_stream(name, self.market)
        if (
            stream is not None
            and stream.symbol in self._exchange.symbols
            and delivered(stream, conn.route, self.market, self.config.legacy_delivers)
        ):
            self._subs.setdefault(name, set()).add(conn)

    def _unsubscribe(self, conn: _Conn, name: str) -> None:
        conn.subscriptions.pop(name, None)
        self._stop_delivering(conn, name)

    def _stop_delivering(self, conn: _Conn, name: str) -> None:
        subs = self._subs.get(name)
        if subs is not None:
            subs.discard(conn)
            if not subs:  # _subs holds the streams listened to: the exchange frames only those
                del self._subs[name]

    def _command(self, conn: _Conn, message: str | bytes) -> str | None:
        """Answer one client message the way Binance's stream servers do."""
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return _dumps({"code": 3, "msg": f"Invalid JSON: {exc}"})
        if not isinstance(msg, dict):
            return _dumps({"code": 3, "msg": "Invalid JSON: expected an object"})
        rid = msg.get("id")
        if type(rid) is not int or rid < 0:
            return _dumps(
                {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
            )
        method, params = msg.get("method"), msg.get("params", [])
        if method not in METHODS:
            expected = ", ".join(f"`{m}`" for m in METHODS)
            text = f"Invalid request: unknown variant `{method}`, expected one of {expected}"
            return _dumps({"code": 2, "msg": text, "id": rid})
        if method == "LIST_SUBSCRIPTIONS":
            return _dumps({"result": list(conn.subscriptions), "id": rid})
        if not isinstance(params, list):
            return _dumps({"code": 2, "msg": "Invalid request: params must be a list", "id": rid})
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            return self._property(conn, method, params, rid)
        if not all(isinstance(p, str) for p in params):
            return _dumps(
                {"code": 2, "msg": "Invalid request: stream names must be strings", "id": rid}
            )
        if method == "SUBSCRIBE":
            total = len(conn.subscriptions.keys() | set(params))
            if total > self.config.max_streams:
                limit = self.config.max_streams
                text = f"Invalid request: a connection can listen to at most {limit} streams"
                return _dumps({"code": 2, "msg": text, "id": rid})
            for name in params:
                self._subscribe(conn, name)
        else:
            for name in params:
                self._unsubscribe(conn, name)
        return _dumps({"result": None, "id": rid})

    @staticmethod
    def _property(conn: _Conn, method: str, params: list[Any], rid: int) -> str:
        if not params or not isinstance(params[0], str):
            text = "Invalid request: property name must be a string"
            return _dumps({"code": 2, "msg": text, "id": rid})
        if params[0] != "combined":
            return _dumps({"code": 0, "msg": "Unknown property", "id": rid})
        if method == "GET_PROPERTY":
            return _dumps({"result": conn.combined, "id": rid})
        if len(params) < 2 or not isinstance(params[1], bool):
            return _dumps({"code": 1, "msg": "Invalid value type: expected Boolean", "id": rid})
        conn.combined = params[1]
        return _dumps({"result": None, "id": rid})


def _port(server: Server) -> int:
    for sock in server.sockets:
        return int(sock.getsockname()[1])
    raise SimulatorError("the WebSocket server has no listening socket")
