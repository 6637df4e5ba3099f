"""Shared-memory sink: a lock-free single-writer ring of records per bytewax worker.

Worker ``i`` writes the POSIX shared-memory segment ``<name>.w<i>`` (``/dev/shm/<name>.w<i>`` on
Linux), created when the sink is built and unlinked when it closes. Each record is the public
JSON payload of :mod:`sinks.payload` with a type tag (book, trade or status) and the symbol; the
byte layout and the seqlock protocol are in ``docs/shm-format.md``. Readers use
:class:`ShmReader`, or ``python -m sinks.shm tail <name>`` (see :mod:`sinks.shm_cli`).

Segments are opened with ``shm_open`` directly rather than through
``multiprocessing.shared_memory.SharedMemory``: that class registers every segment it *attaches*
with the process's resource tracker, which unlinks the segment when the reader exits. The usual
work-around, unregistering right after attaching, is wrong whenever the reader shares the
writer's tracker (same process, or a ``multiprocessing`` child): the tracker keeps a set, not a
count, so it forgets the writer's registration too and complains when the writer unlinks. So
readers here never talk to the tracker and map the segment read-only; writers register (so that
a crashed writer's segment is still removed when its process tree ends) and unregister on close.
Any process may still attach to a segment with ``SharedMemory(name)``.
"""

from __future__ import annotations

import _posixshmem
import errno
import fcntl
import logging
import mmap
import os
import re
from collections.abc import Iterator
from multiprocessing import resource_tracker
from typing import TYPE_CHECKING, Self

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from health.metrics import SINK_DROPS
from health.state import STATE
from market_data import ConfigError
from market_data.events import BookStatus, BookUpdate, OutputEvent, Trade
from sinks.payload import encode_book, encode_trade
from sinks.shm_format import (
    Header,
    Layout,
    Record,
    RecordRejected,
    RecordType,
    RingReader,
    RingWriter,
    ShmError,
    ShmFormatError,
    Start,
    init_header,
    mark_closed,
    parse_header,
)

if TYPE_CHECKING:  # importing the config models costs a CLI start-up ~0.2 s
    from market_data.config import PipelineConfig
    from market_data.options import ShmSinkOptions

__all__ = [
    "Record",
    "RecordRejected",
    "RecordType",
    "ShmError",
    "ShmFormatError",
    "ShmInUseError",
    "ShmNotFoundError",
    "ShmReader",
    "ShmSink",
    "ShmWriter",
    "build_sink",
    "segment_name",
]

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")

_WRITING: set[str] = set()  # segments this process has open as a writer


class ShmInUseError(ShmError):
    """The segment belongs to a live writer."""


class ShmNotFoundError(ShmError):
    """No segment has that name."""


def segment_name(name: str, worker_index: int) -> str:
    """The segment that worker ``worker_index`` of a sink named ``name`` writes."""
    return f"{name}.w{worker_index}"


def _path(name: str) -> str:
    if not NAME_RE.match(name):
        raise ShmError(f"expected a segment name of letters, digits, '_', '.', '-'; got {name!r}")
    return "/" + name


def _open(name: str, flags: int) -> int:
    try:
        return int(_posixshmem.shm_open(_path(name), flags, 0o600))
    except FileNotFoundError:
        raise ShmNotFoundError(f"no shared-memory segment named {name!r}") from None
    except PermissionError as exc:
        raise ShmError(f"cannot open shared-memory segment {name!r}: {exc}") from None


def _unlink(name: str) -> None:
    try:
        _posixshmem.shm_unlink(_path(name))
    except FileNotFoundError:
        pass


def _lock(fd: int) -> bool:
    """Take the writer's lock; False if another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # no flock on this file system: rely on the PID check alone
        logger.debug("flock unsupported on shared memory (%s); relying on writer PIDs", exc)
    return True


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _identity_of(name: str) -> tuple[int, int] | None:
    """The file that segment ``name`` is now, or None if there is none."""
    try:
        fd = _open(name, os.O_RDONLY)
    except ShmNotFoundError:
        return None
    try:
        return _identity(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (in this PID namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; or a pid beyond any pid_t
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _map(fd: int, *, writable: bool) -> mmap.mmap:
    size = os.fstat(fd).st_size
    if size == 0:
        raise ShmFormatError("it is empty (0 bytes)")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    # The writer maps every page up front, so that its first lap takes no page faults.
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if writable else 0)
    return mmap.mmap(fd, size, flags, prot)


class ShmWriter:
    """The single writer of one segment: create with :meth:`create`, then :meth:`write`."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, layout: Layout) -> None:
        self.name = name
        self.layout = layout
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        self._view = memoryview(mm)
        self._ring = RingWriter(self._view, layout)

    @classmethod
    def create(
        cls,
        name: str,
        slots: int,
        slot_size: int,
        *,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> Self:
        """Create segment ``name``, taking over a stale one left by a dead writer.

        Raises :class:`ShmInUseError` if a live writer holds it, :class:`ShmFormatError` for an
        invalid geometry and :class:`ShmError` if the system cannot provide the memory.
        """
        layout = Layout(slots, slot_size)
        for _ in range(3):
            try:
                fd = _open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            except FileExistsError:
                _reclaim(name)
                continue
            try:
                return cls._init(name, fd, layout, worker_index, worker_count)
            except BaseException:
                os.close(fd)
                raise
        raise ShmInUseError(f"segment {name!r} keeps being re-created by another process")

    @classmethod
    def _init(cls, name: str, fd: int, layout: Layout, index: int, count: int) -> Self:
        if not _lock(fd):  # another process took this fresh segment over between our calls
            raise ShmInUseError(f"segment {name!r} was claimed by another writer while created")
        try:
            os.ftruncate(fd, layout.total_size)
            if hasattr(os, "posix_fallocate"):  # reserve the pages now: SIGBUS later otherwise
                os.posix_fallocate(fd, 0, layout.total_size)
            mm = _map(fd, writable=True)
        except OSError as exc:
            _unlink(name)
            hint = (
                " (enlarge /dev/shm, e.g. docker --shm-size)" if exc.errno == errno.ENOSPC else ""
            )
            raise ShmError(
                f"cannot allocate {layout.total_size} bytes of shared memory for {name!r} "
                f"({layout.slot_count} slots x {layout.slot_size} bytes): {exc}{hint}"
            ) from None
        view = memoryview(mm)
        init_header(
            view,
            layout,
            writer_pid=os.getpid(),
            worker_index=index,
            worker_count=count,
            clear_slots=False,  # a new file reads as zeros
        )
        view.release()
        resource_tracker.register(_path(name), "shared_memory")
        _WRITING.add(name)
        logger.info(
            "shm segment %s created: %d slots x %d bytes (%d MiB)",
            name,
            layout.slot_count,
            layout.slot_size,
            layout.total_size >> 20,
        )
        return cls(name, fd, mm, layout)

    @property
    def seq(self) -> int:
        """The sequence number of the last record written."""
        return self._ring.seq

    @property
    def max_payload(self) -> int:
        """The largest payload a slot holds."""
        return self._ring.max_payload

    def write(self, kind: RecordType, symbol: str, payload: bytes) -> int:
        """Publish one record; see :meth:`RingWriter.write`."""
        return self._ring.write(kind, symbol, payload)

    def close(self) -> None:
        """Mark the segment closed, unlink it and release it. Idempotent."""
        if self._mm is None:
            return
        mark_closed(self._view)
        if _identity_of(self.name) == _identity(self._fd):  # not one re-created under our name
            _unlink(self.name)
        resource_tracker.unregister(_path(self.name), "shared_memory")
        _WRITING.discard(self.name)
        self._ring.release()
        self._view.release()
        self._mm.close()
        self._mm = None
        os.close(self._fd)  # releases the writer's lock
        logger.info("shm segment %s closed after %d records", self.name, self.seq)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # bytewax does not call close() when a dataflow aborts; an abandoned writer must still
        # give its segment (and lock) up, or a rerun in this process would find it "in use".
        try:
            self.close()
        except Exception:  # e.g. at interpreter shutdown: nothing left to report to
            pass


def _reclaim(name: str) -> None:
    """Unlink segment ``name`` if its writer is gone; raise :class:`ShmInUseError` if not."""
    try:
        fd = _open(name, os.O_RDWR)
    except ShmNotFoundError:
        return
    try:
        locked = _lock(fd)
        header: Header | None = None
        try:
            mm = _map(fd, writable=False)
            try:
                with memoryview(mm) as view:
                    header = parse_header(view)
            finally:
                mm.close()
            reason = f"its writer (pid {header.writer_pid}) is gone"
        except (ShmFormatError, ValueError, OSError) as exc:
            reason = f"it does not hold a valid ring ({exc})"
        pid = header.writer_pid if header is not None else 0
        if not locked:
            raise ShmInUseError(f"segment {name!r} is locked by a live writer (pid {pid or '?'})")
        if header is not None and not header.closed:
            mine = pid == os.getpid()
            if (mine and name in _WRITING) or (not mine and pid_alive(pid)):
                raise ShmInUseError(
                    f"segment {name!r} belongs to writer pid {pid}, which is still running; "
                    "stop it or choose another sink name"
                )
        logger.warning("shm segment %s is stale and is taken over: %s", name, reason)
        _unlink(name)
    finally:
        os.close(fd)


class ShmReader:
    """Reads one segment from any process, without ever modifying or unlinking it.

    ``start`` is ``"next"`` (records written from now on), ``"oldest"`` (the oldest still in
    the ring) or ``"first"`` (from record 1, counting overwritten ones as missed). Raises
    :class:`ShmNotFoundError` or :class:`ShmFormatError` if the segment is missing or invalid.
    """

    def __init__(self, name: str, *, start: Start = "next") -> None:
        self.name = name
        fd = _open(name, os.O_RDONLY)
        try:
            self._identity = _identity(fd)
            try:
                self._mm: mmap.mmap | None = _map(fd, writable=False)
            except (ShmFormatError, ValueError, OSError) as exc:
                raise ShmFormatError(f"segment {name!r} cannot be mapped: {exc}") from None
        finally:
            os.close(fd)
        self._view = memoryview(self._mm)
        try:
            self._ring = RingReader(self._view, start=start)
        except ShmFormatError as exc:
            self._view.release()
            self._mm.close()
            raise ShmFormatError(f"segment {name!r}: {exc}") from None

    @property
    def missed(self) -> int:
        """Records overwritten before this reader got to them, so far."""
        return self._ring.missed

    @property
    def errors(self) -> int:
        """Corrupt records skipped so far (see :attr:`last_error`)."""
        return self._ring.errors

    @property
    def last_error(self) -> str:
        """Why the last corrupt record was skipped."""
        return self._ring.last_error

    @property
    def next_seq(self) -> int:
        """The sequence number of the next record expected."""
        return self._ring.next_seq

    def header(self) -> Header:
        """The segment's current header."""
        return self._ring.header()

    def read(self, max_records: int | None = None) -> list[Record]:
        """The new records, oldest first; see :meth:`RingReader.read`."""
        return self._ring.read(max_records)

    def __iter__(self) -> Iterator[Record]:
        """Iterate over the records available now (not waiting for more)."""
        return iter(self.read())

    def writer_gone(self) -> bool:
        """True if the writer closed the segment or its process no longer exists."""
        header = self.header()
        return header.closed or not pid_alive(header.writer_pid)

    def replaced(self) -> bool:
        """True if ``name`` no longer refers to this segment (unlinked, maybe re-created)."""
        return _identity_of(self.name) != self._identity

    def close(self) -> None:
        """Unmap the segment (never unlinks it). Idempotent."""
        if self._mm is None:
            return
        self._ring.release()
        self._view.release()
        self._mm.close()
        self._mm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_payload(status: BookStatus) -> bytes:
    """The ``status:{SYMBOL}`` payload (as the debug sinks write it)."""
    return orjson.dumps(
        {
            "symbol": status.symbol,
            "state": status.state.value,
            "reason": status.reason,
            "last_update_id": status.last_update_id,
        }
    )


_BOOK, _TRADE, _STATUS = RecordType.BOOK, RecordType.TRADE, RecordType.STATUS  # fast lookups
DROP_TYPES = {_BOOK: "orderbook", _TRADE: "trade", _STATUS: "status"}
"""The ``type`` label of ``sink_drops`` per record type (as the Redis sink labels them)."""


class _ShmPartition(StatelessSinkPartition[OutputEvent]):
    def __init__(self, writer: ShmWriter, label: str) -> None:
        self._writer = writer
        self._label = label
        self._drops: dict[tuple[str, str], int] = {}
        self._health = STATE.sink(label)
        self._health.up()  # the segment exists and is ours until close

    @override
    def write_batch(self, items: list[OutputEvent]) -> None:
        write = self._writer.write
        for ev in items:
            if isinstance(ev, BookUpdate):
                kind, payload = _BOOK, encode_book(ev)
            elif isinstance(ev, Trade):
                kind, payload = _TRADE, encode_trade(ev)
            elif isinstance(ev, BookStatus):
                kind, payload = _STATUS, status_payload(ev)
            else:
                raise TypeError(f"expected a BookUpdate, Trade or BookStatus; got {ev!r}")
            try:
                write(kind, ev.symbol, payload)
            except RecordRejected as exc:
                self._dropped(kind, ev.symbol, exc)

    def _dropped(self, kind: RecordType, symbol: str, exc: RecordRejected) -> None:
        SINK_DROPS.labels(sink=self._label, type=DROP_TYPES[kind]).inc()
        key = (kind.prefix, symbol)
        count = self._drops[key] = self._drops.get(key, 0) + 1
        if count == 1 or count % 1000 == 0:  # first and every 1000th, not every record
            logger.warning(
                "shm segment %s: dropped %s record for %s (%d so far): %s",
                self._writer.name,
                kind.prefix,
                symbol,
                count,
                exc,
            )

    @override
    def close(self) -> None:
        self._health.close()
        self._writer.close()


class ShmSink(DynamicSink[OutputEvent]):
    """Writes book updates, trades and status changes to one ring per worker.

    ``label`` is the ``sink`` label of its metrics (``shm:<pipeline>`` from the config).
    """

    def __init__(self, name: str, slots: int, slot_size: int, label: str = "shm") -> None:
        self.name = name
        self.layout = Layout(slots, slot_size)
        self.label = label

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ShmPartition:
        writer = ShmWriter.create(
            segment_name(self.name, worker_index),
            self.layout.slot_count,
            self.layout.slot_size,
            worker_index=worker_index,
            worker_count=worker_count,
        )
        return _ShmPartition(writer, self.label)


def build_sink(options: ShmSinkOptions, pipeline: PipelineConfig) -> ShmSink:
    """Registry builder for ``type: shm``."""
    try:
        return ShmSink(options.name, options.slots, options.slot_size, f"shm:{pipeline.name}")
    except ShmFormatError as exc:
        raise ConfigError(f"pipeline {pipeline.name!r}: shm sink: {exc}") from None


if __name__ == "__main__":
    from sinks.shm_cli import main

    raise SystemExit(main())
