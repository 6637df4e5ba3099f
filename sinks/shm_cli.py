"""``python -m sinks.shm``: follow or inspect the shared-memory rings written under a name.

``tail NAME`` prints each new record as one JSON line on standard output::

    {"seq":17,"segment":"market_data_shm.w0","channel":"orderbook:BTCUSDT","data":{...}}

``data`` is the payload exactly as written (the same bytes the Redis channels carry). ``NAME``
is the sink's configured ``name``: every segment ``NAME.w<worker>`` is followed, including ones
that appear later (a new or restarted writer, followed from its first record). An exact segment
name follows just that segment. Missed records (the reader fell more than the ring's size behind),
corrupt records and segments that cannot be read are reported on standard error; nothing in a
segment makes the command crash.

``info NAME`` prints each segment's header as a JSON line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO

import orjson

from sinks.shm import (
    NAME_RE,
    ShmError,
    ShmNotFoundError,
    ShmReader,
    pid_alive,
)
from sinks.shm_format import Record, Start

SHM_DIR = "/dev/shm"
PROBE_WORKERS = 64  # where segments cannot be listed, look for NAME.w0 .. NAME.w63
RESCAN_S = 0.5


def list_segments(name: str) -> list[str]:
    """The existing segments written under ``name``: ``name`` itself and ``name.w<N>``."""
    pattern = re.compile(re.escape(name) + r"(\.w\d+)?")
    if os.path.isdir(SHM_DIR):
        return sorted(e for e in os.listdir(SHM_DIR) if pattern.fullmatch(e))
    found = []
    for candidate in [name] + [f"{name}.w{i}" for i in range(PROBE_WORKERS)]:
        try:
            ShmReader(candidate).close()
        except ShmNotFoundError:
            continue
        except ShmError:
            pass
        found.append(candidate)
    return found


def record_line(segment: str, record: Record) -> bytes:
    """The output line for one record; :class:`ShmFormatError` if its payload is not JSON."""
    record.data()  # validate before splicing the payload in verbatim
    head = orjson.dumps({"seq": record.seq, "segment": segment, "channel": record.channel})
    return head[:-1] + b',"data":' + record.payload + b"}\n"


class Follower:
    """Follows every segment under a name; the CLI's loop calls :meth:`scan` and :meth:`poll`."""

    def __init__(
        self,
        name: str,
        out: IO[bytes],
        err: IO[str],
        *,
        from_start: bool = False,
        count: int | None = None,
    ) -> None:
        self.name = name
        self.readers: dict[str, ShmReader] = {}
        self.printed = 0
        self.count = count
        self._out = out
        self._err = err
        self._start: Start = "first" if from_start else "next"
        self._reported: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._counts: dict[str, tuple[int, int]] = {}

    def _note(self, message: str) -> None:
        print(f"shm tail: {message}", file=self._err, flush=True)

    def scan(self) -> None:
        """Drop segments that were closed or replaced; attach to new ones."""
        for segment, reader in list(self.readers.items()):
            try:
                gone = reader.replaced() or reader.header().closed
            except ShmError as exc:
                self._drop(segment, f"unreadable: {exc}")
                continue
            if gone:
                self._poll_one(segment, reader)  # drain what is left
                self._drop(segment, "writer closed it or it was replaced")
        for segment in list_segments(self.name):
            if segment not in self.readers:
                self._attach(segment)
        self._start = "first"  # segments appearing from now on are new: read them whole

    def _attach(self, segment: str) -> None:
        try:
            reader = ShmReader(segment, start=self._start)
        except ShmNotFoundError:
            return
        except ShmError as exc:
            # A writer initialising its segment is briefly invalid: report from the 2nd scan on.
            failures = self._failures[segment] = self._failures.get(segment, 0) + 1
            if failures >= 2 and self._reported.get(segment) != str(exc):
                self._reported[segment] = str(exc)
                self._note(f"{segment}: skipped: {exc}")
            return
        header = reader.header()
        if header.closed:  # closed, about to be unlinked: nothing more will come
            reader.close()
            return
        self._reported.pop(segment, None)
        self._failures.pop(segment, None)
        self.readers[segment] = reader
        self._counts[segment] = (reader.missed, reader.errors)
        alive = "" if pid_alive(header.writer_pid) else ", not running"
        self._note(
            f"following {segment} (writer pid {header.writer_pid}{alive}, "
            f"{header.layout.slot_count} slots, from seq {reader.next_seq})"
        )

    def _drop(self, segment: str, why: str) -> None:
        self.readers.pop(segment).close()
        self._note(f"{segment}: stopped following: {why}")

    @property
    def done(self) -> bool:
        """True once ``count`` records have been printed."""
        return self.count is not None and self.printed >= self.count

    def poll(self) -> int:
        """Print the new records of every segment (up to ``count`` in all); return how many."""
        return sum(
            self._poll_one(segment, reader) for segment, reader in list(self.readers.items())
        )

    def _poll_one(self, segment: str, reader: ShmReader) -> int:
        if self.done:
            return 0
        try:
            records = reader.read(None if self.count is None else self.count - self.printed)
        except ShmError as exc:
            self._drop(segment, f"unreadable: {exc}")
            return 0
        lines = []
        for record in records:
            try:
                lines.append(record_line(segment, record))
            except ShmError as exc:
                self._note(f"{segment}: corrupt record skipped: {exc}")
        if lines:
            self._out.write(b"".join(lines))
            self._out.flush()
        missed, errors = self._counts[segment]
        if reader.missed != missed:
            self._note(
                f"{segment}: missed {reader.missed - missed} record(s) (fell more than the "
                f"ring's size behind; {reader.missed} in total)"
            )
        if reader.errors != errors:
            self._note(
                f"{segment}: {reader.errors - errors} corrupt record(s) skipped "
                f"({reader.last_error})"
            )
        self._counts[segment] = (reader.missed, reader.errors)
        self.printed += len(lines)
        return len(lines)

    def close(self) -> None:
        """Unmap every segment."""
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


def tail(args: argparse.Namespace) -> int:
    """The ``tail`` command."""
    follower = Follower(
        args.name, sys.stdout.buffer, sys.stderr, from_start=args.from_start, count=args.count
    )
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    next_scan = 0.0
    waiting_noted = False
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return 0
            if now >= next_scan:
                follower.scan()
                next_scan = now + RESCAN_S
                if not follower.readers and not waiting_noted:
                    follower._note(f"waiting for segments named {args.name} or {args.name}.w*")
                    waiting_noted = True
            if not follower.poll():
                time.sleep(args.poll_ms / 1000)
            if follower.done:
                return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        follower.close()


def info(args: argparse.Namespace) -> int:
    """The ``info`` command."""
    segments = list_segments(args.name)
    for segment in segments:
        obj: dict[str, object] = {"segment": segment}
        try:
            with ShmReader(segment) as reader:
                h = reader.header()
            obj |= {
                "slots": h.layout.slot_count,
                "slot_size": h.layout.slot_size,
                "write_seq": h.write_seq,
                "writer_pid": h.writer_pid,
                "writer_alive": pid_alive(h.writer_pid),
                "closed": h.closed,
                "worker_index": h.worker_index,
                "worker_count": h.worker_count,
                "created_unix_ns": h.created_unix_ns,
            }
        except ShmError as exc:
            obj["error"] = str(exc)
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    if not segments:
        print(f"no segments named {args.name} or {args.name}.w*", file=sys.stderr)
        return 1
    return 0


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise argparse.ArgumentTypeError("expected letters, digits, '_', '.' or '-'")
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number; got {value}")
        return number

    return parse


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m sinks.shm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tail", help="print new records as JSON lines")
    t.add_argument("name", type=_name, help="the sink's name (or one segment's name)")
    t.add_argument(
        "--from-start",
        action="store_true",
        help="begin with each writer's first record (overwritten ones are reported missed)",
    )
    t.add_argument("--count", type=_positive(int), help="exit after printing N records")
    t.add_argument("--exit-after", type=_positive(float), help="exit after S seconds")
    t.add_argument("--poll-ms", type=_positive(float), default=1.0, help="idle poll interval")
    t.set_defaults(func=tail)
    i = sub.add_parser("info", help="print each segment's header as JSON")
    i.add_argument("name", type=_name)
    i.set_defaults(func=info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sinks.shm``."""
    args = parser().parse_args(argv)
    return int(args.func(args))
