"""Feeds of one symbol's published records, from shared memory or Redis, into a book view.

A feed reads what the ``shm`` or ``redis`` sink published and hands that symbol's payloads to a
:class:`market_data.bookview.BookView`; the view decides what to show. Feeds are polled: the
caller calls :meth:`ShmFeed.poll` / :meth:`RedisFeed.poll` in its own loop (the terminal view
about ten times a second, the sidecar's ``/book/<SYMBOL>`` stream five times). Both connect late
(on the first poll) and never raise for the source being absent or going away: the view is told
(:meth:`BookView.source_down`) and the feed tries again.

* :class:`ShmFeed` follows the rings of a sink name (``<name>.w<N>``), or every ring on the host,
  from the oldest record still in them, so the latest book, trades and sync status appear at
  once. It sees status records (awaiting snapshot, synced, resyncing).
* :class:`RedisFeed` subscribes to ``orderbook:<SYMBOL>`` and ``trades:<SYMBOL>`` (under the
  sink's ``channel_prefix``) and, when the sink also writes streams, starts from their last
  entries. Redis carries no status: a resync shows as a book that stops updating.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import orjson

from market_data.bookview import TRADES_KEPT, BookView
from sinks.payload import BOOK_PREFIX, TRADE_PREFIX, channel
from sinks.shm import NAME_RE, ShmError, ShmNotFoundError, ShmReader
from sinks.shm_format import MAGIC, Record, RecordType, Start

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
RESCAN_S = 0.5
"""How often a shared-memory feed looks for new, closed or re-created rings."""
RETRY_S = 1.0
"""How long a Redis feed waits before connecting again."""
MAX_MESSAGES = 10_000
"""Most Redis messages one poll takes (the rest wait for the next)."""


def ring_segments(names: Collection[str] | None = None, shm_dir: str = SHM_DIR) -> list[str]:
    """The shared-memory rings under the sink ``names`` (every ring on the host if None).

    A ring is a segment whose first bytes are the ring's magic; ``name`` matches ``name`` itself
    and ``name.w<N>``.
    """
    try:
        entries = sorted(os.listdir(shm_dir))
    except OSError:
        return []
    found = []
    for entry in entries:
        if names is not None and not any(
            entry == n or (entry.startswith(n + ".w") and entry[len(n) + 2 :].isdigit())
            for n in names
        ):
            continue
        if not NAME_RE.match(entry):
            continue
        try:
            with open(os.path.join(shm_dir, entry), "rb") as fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    continue
        except OSError:
            continue
        found.append(entry)
    return found


class ShmFeed:
    """Follows shared-memory rings and feeds one symbol's records to a :class:`BookView`.

    ``names`` are shm sink names. ``None`` looks at every ring on this host until one carries
    the symbol, then follows only the rings of that sink name, so that two services on one host
    (the demo and the live one, say) are never mixed. ``pids``, when given,
    returns the writer PIDs to accept (the sidecar passes its own cluster's processes, so that
    another service's rings on the same host are left out). ``start`` is where a ring is read
    from when first seen (``"oldest"``: the latest state appears at once).
    """

    def __init__(
        self,
        symbol: str,
        names: Collection[str] | None = None,
        *,
        pids: Callable[[], Collection[int]] | None = None,
        start: Start = "oldest",
        shm_dir: str = SHM_DIR,
        rescan_s: float = RESCAN_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.symbol = symbol
        self.names = tuple(names) if names is not None else None
        self._pids = pids
        self._start: Start = start
        self._shm_dir = shm_dir
        self._rescan_s = rescan_s
        self._monotonic = monotonic
        self._next_scan = float("-inf")
        self._locked: tuple[str, ...] | None = None  # the sink name found carrying the symbol
        self.readers: dict[str, ShmReader] = {}

    def describe(self) -> str:
        """Where the records come from, for people."""
        if self.names is None:
            return "shm (every ring on this host)"
        return "shm " + ", ".join(self.names)

    def _wanted(self) -> tuple[str, ...] | None:
        return self.names if self.names is not None else self._locked

    def poll(self, view: BookView) -> int:
        """Apply the new records of the symbol to ``view``; return how many."""
        if self._monotonic() >= self._next_scan:
            self._scan(view)
            self._next_scan = self._monotonic() + self._rescan_s
        applied = 0
        for segment, reader in list(self.readers.items()):
            if segment not in self.readers:  # dropped by _lock meanwhile
                continue
            try:
                records = reader.read()
            except ShmError as exc:
                self._drop(segment, f"unreadable: {exc}")
                continue
            n = apply_records(view, self.symbol, records)
            if n and self._wanted() is None:
                self._lock(sink_name(segment))
            applied += n
        if self.readers:
            view.source = "shm " + ", ".join(sorted(self.readers))
        return applied

    def _lock(self, name: str) -> None:
        """Follow only the rings of sink ``name`` from now on (another service's are left out)."""
        self._locked = (name,)
        for segment in list(self.readers):
            if sink_name(segment) != name:
                self._drop(segment, f"the symbol is followed in {name}")

    def _scan(self, view: BookView) -> None:
        for segment, reader in list(self.readers.items()):
            try:
                gone = reader.replaced() or reader.header().closed
            except ShmError as exc:
                self._drop(segment, f"unreadable: {exc}")
                continue
            if gone:
                apply_records(view, self.symbol, reader.read())  # what is left
                self._drop(segment, "closed by its writer")
        accepted = set(self._pids()) if self._pids is not None else None
        for segment in ring_segments(self._wanted(), self._shm_dir):
            if segment not in self.readers:
                self._attach(segment, accepted)
        self._judge(view)

    def _attach(self, segment: str, pids: set[int] | None) -> None:
        try:
            reader = ShmReader(segment, start=self._start)
        except ShmNotFoundError:
            return
        except ShmError as exc:  # e.g. a writer still initialising it: next scan
            logger.debug("book feed: %s skipped: %s", segment, exc)
            return
        header = reader.header()
        if header.closed or (pids is not None and header.writer_pid not in pids):
            reader.close()
            return
        self.readers[segment] = reader

    def _drop(self, segment: str, why: str) -> None:
        self.readers.pop(segment).close()
        logger.debug("book feed: stopped following %s: %s", segment, why)

    def _judge(self, view: BookView) -> None:
        if not self.readers:
            wanted = self._wanted()
            what = (
                "on this host"
                if wanted is None
                else "named " + " or ".join(f"{n}.w*" for n in wanted)
            )
            view.source_down(f"no shared-memory ring {what}: is the service running?")
            return
        alive = []
        for reader in self.readers.values():
            try:
                alive.append(not reader.writer_gone())
            except ShmError:
                alive.append(False)
        if not any(alive):
            view.source_down("the service that writes the ring is no longer running")
        else:
            view.source_up()

    def close(self) -> None:
        """Unmap every ring (never unlinks them)."""
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


def sink_name(segment: str) -> str:
    """The sink name a segment belongs to: ``market_data_shm`` for ``market_data_shm.w3``."""
    base, dot, worker = segment.rpartition(".w")
    return base if dot and worker.isdigit() else segment


def apply_records(view: BookView, symbol: str, records: list[Record]) -> int:
    """Feed the records of ``symbol`` to ``view``, stamped with their write times."""
    applied = 0
    for record in records:
        if record.symbol != symbol:
            continue
        try:
            data = record.data()
        except ShmError:
            view.errors += 1
            continue
        at = record.write_time_ns / 1e9
        if record.kind is RecordType.BOOK:
            view.on_book(data, at)
        elif record.kind is RecordType.TRADE:
            view.on_trade(data, at)
        else:
            view.on_status(data, at)
        applied += 1
    return applied


class RedisFeed:
    """Subscribes to one symbol's Redis channels and feeds a :class:`BookView`.

    ``prefix`` is the sink's ``channel_prefix``. When the channels are also streams (sink mode
    ``streams`` or ``both``), the last book and trades are read from them first.
    """

    def __init__(
        self,
        symbol: str,
        url: str,
        prefix: str = "",
        *,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.symbol = symbol
        self.url = url
        self.book_channel = channel(prefix, BOOK_PREFIX, symbol)
        self.trade_channel = channel(prefix, TRADE_PREFIX, symbol)
        self._retry_s = retry_s
        self._clock = clock
        self._monotonic = monotonic
        self._client: redis.Redis | None = None
        self._pubsub: Any = None
        self._retry_at = float("-inf")

    def describe(self) -> str:
        """Where the records come from, for people."""
        from sinks.redis import redact_url

        return f"redis {redact_url(self.url)} {self.book_channel}, {self.trade_channel}"

    def poll(self, view: BookView, timeout_s: float = 0.1) -> int:
        """Apply new messages to ``view``, waiting up to ``timeout_s`` for the first one."""
        import redis

        from sinks.redis import redact_url

        if self._pubsub is None:
            if self._monotonic() < self._retry_at:
                time.sleep(timeout_s)
                return 0
            try:
                self._connect(view)
            except (redis.RedisError, OSError) as exc:
                self._fail(view, f"Redis unreachable at {redact_url(self.url)}: {exc}")
                return 0
        applied = 0
        try:
            wait = timeout_s
            while applied < MAX_MESSAGES:
                msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                if msg is None:
                    break
                wait = 0.0
                applied += self._apply(view, msg)
        except (redis.RedisError, OSError) as exc:
            self._fail(view, f"lost Redis at {redact_url(self.url)}: {exc}")
        return applied

    def _connect(self, view: BookView) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        self._client = client
        pubsub = client.pubsub()
        pubsub.subscribe(self.book_channel, self.trade_channel)
        self._pubsub = pubsub
        # Catch up from the streams, if the sink writes them: subscribed first, so nothing
        # published meanwhile is lost (a book may come twice, which is harmless).
        if client.type(self.book_channel) == b"stream":
            books: list[Any] = client.xrevrange(self.book_channel, count=1) or []
            for entry_id, fields in books:
                view.on_book(orjson.loads(fields[b"data"]), _stream_time(entry_id))
        if client.type(self.trade_channel) == b"stream":
            trades: list[Any] = client.xrevrange(self.trade_channel, count=TRADES_KEPT) or []
            for entry_id, fields in reversed(trades):
                view.on_trade(orjson.loads(fields[b"data"]), _stream_time(entry_id))
        view.source_up()
        view.source = self.describe()

    def _apply(self, view: BookView, msg: dict[str, Any]) -> int:
        if msg.get("type") != "message":
            return 0
        try:
            data = orjson.loads(msg["data"])
        except (orjson.JSONDecodeError, TypeError):
            view.errors += 1
            return 0
        name = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
        if name == self.book_channel:
            view.on_book(data, self._clock())
        elif name == self.trade_channel:
            view.on_trade(data, self._clock())
        else:
            return 0
        return 1

    def _fail(self, view: BookView, problem: str) -> None:
        view.source_down(problem)
        self.close()
        self._retry_at = self._monotonic() + self._retry_s

    def close(self) -> None:
        """Drop the connection (the next poll connects again)."""
        import redis

        for closable in (self._pubsub, self._client):
            if closable is not None:
                try:
                    closable.close()
                except (redis.RedisError, OSError):
                    pass
        self._pubsub = self._client = None


def _stream_time(entry_id: bytes | str) -> float:
    """The unix time of a stream entry id ``<ms>-<n>``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000
