"""The sidecar's live book page: ``/book/<SYMBOL>``, its data and its server-sent events.

* ``GET /book/`` lists the symbols whose books this service reports, with links.
* ``GET /book/<SYMBOL>`` is a page (plain HTML and JavaScript, :mod:`health.book_html`) showing
  the ladder of the top levels, the spread, a depth chart, the last trades, the update rate and
  whether the book is live, stale, resyncing or awaiting its snapshot.
* ``GET /book/<SYMBOL>/snapshot`` is that picture as JSON (:meth:`BookView.to_dict`).
* ``GET /book/<SYMBOL>/events`` streams it as server-sent events (``event: book``): after every
  poll that brought new records, and at least once a second.

Each takes ``?name=<shm sink name>`` (repeatable) to choose the rings; by default the first of
the service's rings that carries the symbol is followed (see :class:`sinks.feeds.ShmFeed`).

The data come from the service's own shared-memory rings (:class:`sinks.feeds.ShmFeed`), so a
pipeline needs an ``shm`` sink for its books to be shown. The rings are found by their writers'
PIDs: those of the processes that report to this sidecar (all processes of a cluster on one
host), so a second service on the same host is never mixed in. Each stream polls the rings five
times a second in a thread of the sidecar; :data:`MAX_STREAMS` streams at most are served at
once (more get 503), and a stream ends after :data:`MAX_STREAM_S` (browsers reconnect by
themselves).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

import orjson
from flask import Blueprint, Response, abort, request

from health.book_html import INDEX, PAGE
from market_data.bookview import BookView
from market_data.options import SYMBOL_RE
from sinks.feeds import SHM_DIR, ShmFeed
from sinks.shm import NAME_RE

POLL_S = 0.2
"""How often a stream reads the rings."""
HEARTBEAT_S = 1.0
"""A stream sends its picture at least this often, so ages and staleness stay current."""
MAX_STREAMS = 16
"""Streams served at once."""
MAX_STREAM_S = 600.0
"""A stream ends after this long; the browser's EventSource reconnects."""


class _Merged(Protocol):
    reports: dict[int, dict[str, Any]]
    books: dict[tuple[str, str], dict[str, Any]]


class _View(Protocol):
    def merged(self) -> _Merged: ...


def _pids_of(view: Callable[[], _View]) -> Callable[[], Collection[int]]:
    def pids() -> Collection[int]:
        reports = view().merged().reports.values()
        return {pid for r in reports if isinstance(pid := r.get("pid"), int)}

    return pids


def _symbol(value: str) -> str:
    symbol = value.upper()
    if not SYMBOL_RE.match(symbol):
        abort(404)
    return symbol


def blueprint(
    view: Callable[[], _View] | None = None,
    *,
    shm_dir: str = SHM_DIR,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    max_streams: int = MAX_STREAMS,
    max_stream_s: float = MAX_STREAM_S,
) -> Blueprint:
    """The ``/book`` routes; ``view`` is the sidecar's health view (None: every ring on the host).

    The health view tells which processes belong to this service (their PIDs) and which
    symbols they carry.
    """
    bp = Blueprint("book", __name__)
    pids = _pids_of(view) if view is not None else None
    slots = threading.BoundedSemaphore(max_streams)

    def feed(symbol: str) -> ShmFeed:
        names = request.args.getlist("name") or None  # ?name=<shm sink name>, repeatable
        if names is not None and not all(NAME_RE.match(n) for n in names):
            abort(404)
        return ShmFeed(symbol, names, pids=pids, shm_dir=shm_dir)

    @bp.get("/book/")
    def index() -> Response:
        symbols = sorted({s for _, s in view().merged().books}) if view is not None else []
        items = "".join(
            f'<li><a href="/book/{html.escape(s)}">{html.escape(s)}</a></li>' for s in symbols
        )
        return Response(INDEX.replace("__ITEMS__", items or "<li>no book yet</li>"))

    @bp.get("/book/<symbol>")
    def page(symbol: str) -> Response:
        return Response(PAGE.replace("__SYMBOL__", _symbol(symbol)), mimetype="text/html")

    @bp.get("/book/<symbol>/snapshot")
    def snapshot(symbol: str) -> Response:
        sym = _symbol(symbol)
        book = BookView(sym)
        f = feed(sym)
        try:
            f.poll(book)
        finally:
            f.close()
        return Response(orjson.dumps(book.to_dict(time.time())), mimetype="application/json")

    @bp.get("/book/<symbol>/events")
    def events(symbol: str) -> Response:
        sym = _symbol(symbol)
        if not slots.acquire(blocking=False):
            return Response("too many book streams open\n", status=503, mimetype="text/plain")
        try:
            body = _Stream(sym, feed(sym), poll_s, heartbeat_s, max_stream_s, slots.release)
        except BaseException:
            slots.release()
            raise
        return Response(
            body,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return bp


class _Stream:
    """The event stream of one client: ends after ``max_stream_s`` or when the client leaves.

    The server calls :meth:`close` when the response ends, also if the body was never started,
    which a bare generator would not notice; that releases the feed and the stream's slot.
    """

    def __init__(
        self,
        symbol: str,
        feed: ShmFeed,
        poll_s: float,
        heartbeat_s: float,
        max_stream_s: float,
        done: Callable[[], None],
    ) -> None:
        self.book = BookView(symbol)
        self.feed = feed
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.max_stream_s = max_stream_s
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[str]:
        yield "retry: 2000\n\n"
        end = time.monotonic() + self.max_stream_s
        sent_at = float("-inf")
        while time.monotonic() < end and self._done is not None:
            applied = self.feed.poll(self.book)
            if applied or time.monotonic() - sent_at >= self.heartbeat_s:
                sent_at = time.monotonic()
                data = orjson.dumps(self.book.to_dict(time.time())).decode()
                yield f"event: book\ndata: {data}\n\n"
            time.sleep(self.poll_s)

    def close(self) -> None:
        """Release the feed and the slot (idempotent)."""
        done, self._done = self._done, None
        if done is not None:
            self.feed.close()
            done()
