"""The shared-memory ring's binary layout, and a writer and reader over any buffer.

Nothing here opens shared memory: :class:`RingWriter` and :class:`RingReader` work on a
``memoryview`` (a ``bytearray`` in tests, an ``mmap`` in :mod:`sinks.shm`). The layout is
specified byte by byte in ``docs/shm-format.md``; the constants below are that document in code.

All integers are little-endian. A segment is a 128-byte header followed by ``slot_count`` slots
of ``slot_size`` bytes. Record ``seq`` (numbered from 1) lives in slot ``(seq - 1) % slot_count``.
Each slot starts with an 8-byte sequence word that is a seqlock: ``2*seq - 1`` while the writer
fills the slot, ``2*seq`` once record ``seq`` is complete. The header's ``write_seq`` is the
sequence number of the newest complete record.
"""

from __future__ import annotations

import platform
import struct
import sys
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import orjson

from market_data import MarketDataError

MAGIC = b"MDSHMRNG"
VERSION = 1
HEADER_SIZE = 128
SLOT_HEADER_SIZE = 56
MIN_SLOT_SIZE = 64
SYMBOL_SIZE = 32
MAX_SLOTS = 2**32 - 1

FLAG_CLOSED = 1
"""Header flag: the writer closed the segment cleanly (it is about to be unlinked)."""

# magic, version, header_size, slot_count, slot_size, slot_header_size, flags, writer_pid,
# worker_index, worker_count, reserved, created_unix_ns, reserved
_HEADER = struct.Struct("<8sIIIIIIIIIIQQ")
_FLAGS_OFFSET = 28
WRITE_SEQ_OFFSET = 64
# payload_len, record_type, symbol_len, reserved, write_time_ns, symbol
_SLOT_HEAD = struct.Struct("<IBBHQ32s")
_pack_slot_head = _SLOT_HEAD.pack_into
_time_ns = time.time_ns
assert _HEADER.size == WRITE_SEQ_OFFSET and 8 + _SLOT_HEAD.size == SLOT_HEADER_SIZE

# Stores from Python are plain memcpy's. x86 keeps stores (and loads) in program order, so the
# seqlock needs no barrier there; elsewhere a release-then-acquire of a private lock stands in
# for a full fence (see docs/shm-format.md, "Memory ordering").
NEEDS_FENCE = platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686", "x86"}


class ShmError(MarketDataError):
    """Root of the shared-memory sink's errors."""


class ShmFormatError(ShmError):
    """A segment does not hold a valid ring (garbage, truncated, or not initialised yet)."""


class RecordRejected(ShmError):
    """A record cannot be written (too large for a slot, or a symbol that cannot be stored)."""


class RecordType(IntEnum):
    """The record type tag stored in each slot, and the channel prefix it stands for."""

    BOOK = 1
    TRADE = 2
    STATUS = 3

    @property
    def prefix(self) -> str:
        """The channel prefix: ``orderbook``, ``trades`` or ``status``."""
        return _PREFIXES[self]


_PREFIXES = {RecordType.BOOK: "orderbook", RecordType.TRADE: "trades", RecordType.STATUS: "status"}


@dataclass(frozen=True, slots=True)
class Layout:
    """The geometry of a ring; validated on construction."""

    slot_count: int
    slot_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.slot_count <= MAX_SLOTS:
            raise ShmFormatError(f"slot_count must be in 1..{MAX_SLOTS}; got {self.slot_count}")
        if self.slot_size < MIN_SLOT_SIZE or self.slot_size % 8:
            raise ShmFormatError(
                f"slot_size must be a multiple of 8 and at least {MIN_SLOT_SIZE}; "
                f"got {self.slot_size}"
            )

    @property
    def total_size(self) -> int:
        """Bytes in the whole segment."""
        return HEADER_SIZE + self.slot_count * self.slot_size

    @property
    def max_payload(self) -> int:
        """The largest payload one slot holds."""
        return self.slot_size - SLOT_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed fields of a segment header."""

    layout: Layout
    flags: int
    writer_pid: int
    worker_index: int
    worker_count: int
    created_unix_ns: int
    write_seq: int

    @property
    def closed(self) -> bool:
        """True once the writer has closed the segment cleanly."""
        return bool(self.flags & FLAG_CLOSED)


def parse_header(buf: memoryview | bytes | bytearray) -> Header:
    """Validate and decode a segment header; raise :class:`ShmFormatError` on anything else."""
    size = len(buf)
    if size < HEADER_SIZE:
        raise ShmFormatError(f"expected at least {HEADER_SIZE} bytes of header; got {size}")
    fields = _HEADER.unpack_from(buf, 0)
    magic, version, header_size, slots, slot_size, slot_head, flags, pid, index, count = fields[:10]
    created_ns = fields[11]
    if magic != MAGIC:
        raise ShmFormatError(f"expected magic {MAGIC!r}; got {bytes(magic)!r}")
    if version != VERSION:
        raise ShmFormatError(f"expected format version {VERSION}; got {version}")
    if header_size != HEADER_SIZE or slot_head != SLOT_HEADER_SIZE:
        raise ShmFormatError(
            f"expected header/slot header sizes {HEADER_SIZE}/{SLOT_HEADER_SIZE}; "
            f"got {header_size}/{slot_head}"
        )
    layout = Layout(slots, slot_size)
    if layout.total_size > size:
        raise ShmFormatError(
            f"header describes {slots} slots of {slot_size} bytes ({layout.total_size} bytes) "
            f"but the segment has only {size} bytes"
        )
    (write_seq,) = struct.unpack_from("<Q", buf, WRITE_SEQ_OFFSET)
    return Header(layout, flags, pid, index, count, created_ns, write_seq)


def init_header(
    buf: memoryview,
    layout: Layout,
    *,
    writer_pid: int,
    worker_index: int = 0,
    worker_count: int = 1,
    clear_slots: bool = True,
) -> None:
    """Write a fresh header (``write_seq`` 0, empty slots); the magic is written last.

    ``clear_slots=False`` skips zeroing the slots' sequence words, for a buffer known to be zero.
    """
    if len(buf) < layout.total_size:
        raise ShmFormatError(f"expected a buffer of {layout.total_size} bytes; got {len(buf)}")
    buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
    for i in range(layout.slot_count if clear_slots else 0):  # only sequence words matter
        off = HEADER_SIZE + i * layout.slot_size
        buf[off : off + 8] = bytes(8)
    fields = (
        b"\0" * 8,
        VERSION,
        HEADER_SIZE,
        layout.slot_count,
        layout.slot_size,
        SLOT_HEADER_SIZE,
        0,
        writer_pid,
        worker_index,
        worker_count,
        0,
        time.time_ns(),
        0,
    )
    _HEADER.pack_into(buf, 0, *fields)
    buf[:8] = MAGIC


def mark_closed(buf: memoryview) -> None:
    """Set the header's closed flag."""
    (flags,) = struct.unpack_from("<I", buf, _FLAGS_OFFSET)
    struct.pack_into("<I", buf, _FLAGS_OFFSET, flags | FLAG_CLOSED)


class _Fence:
    """A full memory barrier from Python: release then re-acquire a lock held by this object.

    Release-then-acquire is ordered on every CPU CPython supports (an acquire-then-release pair
    would not be: accesses may move into the critical section from both sides).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def __call__(self) -> None:
        self._lock.release()
        self._lock.acquire()


def _words(buf: memoryview, layout: Layout) -> memoryview:
    # Item assignment on a "Q" view is one aligned 8-byte memcpy, which compilers emit as a
    # single store, so readers never see half of a sequence word (struct.pack_into writes bytes
    # one at a time).
    if sys.byteorder != "little":
        raise ShmError("the shared-memory ring is little-endian; this host is big-endian")
    return buf[: layout.total_size].cast("Q")


class RingWriter:
    """The single writer of a ring in ``buf``; ``init_header`` must have been called."""

    def __init__(self, buf: memoryview, layout: Layout) -> None:
        self._buf = buf
        self._layout = layout
        self._q = _words(buf, layout)
        self._slots = layout.slot_count
        self._slot_size = layout.slot_size
        self._max_payload = layout.max_payload
        self._seq = int(self._q[WRITE_SEQ_OFFSET // 8])
        self._symbols: dict[str, bytes] = {}
        self._fence = _Fence() if NEEDS_FENCE else None

    @property
    def seq(self) -> int:
        """The sequence number of the last record written (0 before the first)."""
        return self._seq

    @property
    def max_payload(self) -> int:
        """The largest payload a slot holds."""
        return self._max_payload

    def write(self, kind: RecordType, symbol: str, payload: bytes) -> int:
        """Publish one record and return its sequence number.

        Raises :class:`RecordRejected`, writing nothing, if the payload does not fit a slot or
        the symbol is not 1..32 ASCII characters.
        """
        n = len(payload)
        if n > self._max_payload:
            raise RecordRejected(
                f"expected a payload of at most {self._max_payload} bytes (slot_size "
                f"{self._slot_size} minus {SLOT_HEADER_SIZE}); got {n} bytes"
            )
        sym = self._symbols.get(symbol) or self._symbol_bytes(symbol)
        seq = self._seq + 1
        off = HEADER_SIZE + ((seq - 1) % self._slots) * self._slot_size
        q = self._q
        word = off >> 3
        fence = self._fence
        q[word] = 2 * seq - 1  # odd: slot being written
        if fence is not None:
            fence()
        _pack_slot_head(self._buf, off + 8, n, kind, len(sym), 0, _time_ns(), sym)
        self._buf[off + SLOT_HEADER_SIZE : off + SLOT_HEADER_SIZE + n] = payload
        if fence is not None:
            fence()
        q[word] = 2 * seq  # even: record seq complete
        if fence is not None:
            fence()
        q[WRITE_SEQ_OFFSET >> 3] = seq
        self._seq = seq
        return seq

    def _symbol_bytes(self, symbol: str) -> bytes:
        try:
            sym = symbol.encode("ascii")
        except UnicodeEncodeError:
            raise RecordRejected(f"expected an ASCII symbol; got {symbol!r}") from None
        if not 1 <= len(sym) <= SYMBOL_SIZE:
            raise RecordRejected(f"expected a symbol of 1..{SYMBOL_SIZE} bytes; got {symbol!r}")
        self._symbols[symbol] = sym
        return sym

    def release(self) -> None:
        """Drop the views on the buffer so that it can be closed."""
        self._q.release()


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a ring."""

    seq: int
    kind: RecordType
    symbol: str
    payload: bytes  # the public JSON payload, exactly as sinks.payload encodes it
    write_time_ns: int  # unix time of the write, in ns

    @property
    def channel(self) -> str:
        """The channel this payload is published on elsewhere (``orderbook:BTCUSDT``)."""
        return f"{self.kind.prefix}:{self.symbol}"

    def data(self) -> Any:
        """The decoded JSON payload; :class:`ShmFormatError` if it is not valid JSON."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError as exc:
            raise ShmFormatError(f"record {self.seq}: payload is not valid JSON: {exc}") from None


Start = Literal["next", "oldest", "first"]


class RingReader:
    """Reads the records of a ring in order, counting what it missed and what was corrupt.

    ``start`` is where reading begins: ``"next"`` (the first record written after this reader
    was made), ``"oldest"`` (the oldest record still in the ring) or ``"first"`` (record 1;
    records already overwritten are counted as missed).

    A record is *missed* when the writer overwrote it before this reader got to it (the reader
    fell more than ``slot_count`` records behind); it is an *error* when its slot holds
    something the writer never writes. ``delivered + missed + errors`` always equals the
    number of records the writer published, up to the last one read.
    """

    def __init__(self, buf: memoryview, *, start: Start = "next") -> None:
        header = parse_header(buf)
        self._buf = buf
        self._layout = header.layout
        self._q = _words(buf, header.layout)
        self._slots = header.layout.slot_count
        self._slot_size = header.layout.slot_size
        self._max_payload = header.layout.max_payload
        self._fence = _Fence() if NEEDS_FENCE else None
        self.missed = 0
        self.errors = 0
        self.last_error = ""
        head = self._head()
        if start == "next":
            self._next = head + 1
        elif start == "oldest":
            self._next = max(1, head - self._slots + 1)
        elif start == "first":
            self._next = 1
        else:
            raise ValueError(f"start must be 'next', 'oldest' or 'first'; got {start!r}")

    @property
    def layout(self) -> Layout:
        """The ring's geometry."""
        return self._layout

    @property
    def next_seq(self) -> int:
        """The sequence number of the next record this reader expects."""
        return self._next

    def header(self) -> Header:
        """The current header (re-validated)."""
        return parse_header(self._buf)

    def _head(self) -> int:
        if bytes(self._buf[:8]) != MAGIC:
            raise ShmFormatError("the segment's magic has been overwritten")
        head = int(self._q[WRITE_SEQ_OFFSET >> 3])
        if self._fence is not None:
            self._fence()
        return head

    def read(self, max_records: int | None = None) -> list[Record]:
        """The records published since the last call, oldest first (at most ``max_records``)."""
        out: list[Record] = []
        head = self._head()
        q, buf, fence = self._q, self._buf, self._fence
        limit = max_records if max_records is not None else -1
        while self._next <= head and len(out) != limit:
            seq = self._next
            if head - seq >= self._slots:  # already overwritten: skip to the oldest retained
                oldest = head - self._slots + 1
                self.missed += oldest - seq
                self._next = oldest
                continue
            off = HEADER_SIZE + ((seq - 1) % self._slots) * self._slot_size
            word = off >> 3
            w1 = q[word]
            if w1 != 2 * seq:
                if w1 > 2 * seq:  # the writer lapped us since we read head: skip what it overwrote
                    # (``head`` stays the snapshot, so that a writer faster than this reader
                    # cannot keep read() from returning)
                    self._next = max(seq + 1, self._head() - self._slots + 1)
                    self.missed += self._next - seq
                else:
                    self.errors += 1
                    self.last_error = f"record {seq}: sequence word {w1}, expected {2 * seq}"
                    self._next = seq + 1
                continue
            if fence is not None:
                fence()
            n, kind, sym_len, _, t_ns, sym = _SLOT_HEAD.unpack_from(buf, off + 8)
            payload = None
            if n <= self._max_payload:
                start = off + SLOT_HEADER_SIZE
                payload = buf[start : start + n].tobytes()
            if fence is not None:
                fence()
            if q[word] != w1:  # overwritten while we copied it
                self.missed += 1
                self._next = seq + 1
                continue
            self._next = seq + 1
            record = self._record(seq, n, kind, sym_len, t_ns, sym, payload)
            if record is not None:
                out.append(record)
        return out

    def _record(
        self, seq: int, n: int, kind: int, sym_len: int, t_ns: int, sym: bytes, payload: Any
    ) -> Record | None:
        problem = None
        if payload is None:
            problem = f"payload length {n} exceeds the slot ({self._max_payload})"
        elif kind not in _KINDS:
            problem = f"unknown record type {kind}"
        elif not 1 <= sym_len <= SYMBOL_SIZE:
            problem = f"symbol length {sym_len} not in 1..{SYMBOL_SIZE}"
        elif not sym[:sym_len].isascii():
            problem = f"symbol {sym[:sym_len]!r} is not ASCII"
        if problem is not None:
            self.errors += 1
            self.last_error = f"record {seq}: {problem}"
            return None
        return Record(seq, _KINDS[kind], sym[:sym_len].decode("ascii"), payload, t_ns)

    def release(self) -> None:
        """Drop the views on the buffer so that it can be closed."""
        self._q.release()


_KINDS = {int(k): k for k in RecordType}
