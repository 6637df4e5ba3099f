"""The shared-memory sink: ring layout, segments, readers in other processes, the CLI, the flow."""

from __future__ import annotations

import _posixshmem
import gc
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data import ConfigError, MarketDataError
from market_data.config import PipelineConfig
from market_data.events import BookState, BookStatus, BookUpdate, OutputEvent, Trade
from market_data.options import OrderBookOptions, ReplayOptions, ShmSinkOptions
from sinks.payload import book_dict, encode_book, encode_trade, trade_dict
from sinks.shm import (
    ShmInUseError,
    ShmNotFoundError,
    ShmReader,
    ShmWriter,
    build_sink,
    segment_name,
    status_payload,
)
from sinks.shm_format import (
    HEADER_SIZE,
    SLOT_HEADER_SIZE,
    Layout,
    Record,
    RecordRejected,
    RecordType,
    RingReader,
    RingWriter,
    ShmFormatError,
    init_header,
)

REPO = Path(__file__).resolve().parents[2]
SHM_DIR = Path("/dev/shm")

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs POSIX shared memory")


def book(i: int, symbol: str = "BTCUSDT", depth: int = 20) -> BookUpdate:
    return BookUpdate(
        symbol=symbol,
        bids=tuple((5_000_000_000_000 - k * 1_000_000 - i, 150_000_000 + k) for k in range(depth)),
        asks=tuple((5_000_100_000_000 + k * 1_000_000 + i, 761_100_000 + k) for k in range(depth)),
        last_update_id=1_000_000 + i,
        event_time_ms=1_700_000_000_000 + i,
        recv_time=1_700_000_000.5,
    )


def trade(i: int, symbol: str = "ETHUSDT") -> Trade:
    return Trade(
        symbol=symbol,
        trade_id=5_000 + i,
        price=300_012_345_678 + i,
        quantity=1_234_567,
        trade_time_ms=1_700_000_000_000 + i,
        is_buyer_maker=i % 2 == 0,
        event_time_ms=1_700_000_000_001 + i,
        recv_time=1_700_000_000.5,
    )


def ring(slots: int, slot_size: int = 256) -> tuple[memoryview, Layout]:
    layout = Layout(slots, slot_size)
    buf = memoryview(bytearray(layout.total_size))
    init_header(buf, layout, writer_pid=os.getpid())
    return buf, layout


def write_n(writer: RingWriter | ShmWriter, first: int, last: int) -> None:
    for i in range(first, last + 1):
        writer.write(RecordType.TRADE, "ETHUSDT", encode_trade(trade(i)))


@pytest.fixture
def name() -> Iterator[str]:
    """A unique sink name; any segment left under it is removed afterwards."""
    base = f"mdtest_{uuid.uuid4().hex[:12]}"
    yield base
    for entry in SHM_DIR.iterdir():
        if entry.name.startswith(base):
            entry.unlink()


def raw_segment(name: str, data: bytes, size: int | None = None) -> None:
    """Create segment ``name`` holding ``data``, the way a crashed process would leave it."""
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size if size is not None else len(data))
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def valid_ring_bytes(slots: int, slot_size: int, writer_pid: int, records: int = 0) -> bytes:
    buf, layout = ring(slots, slot_size)
    init_header(buf, layout, writer_pid=writer_pid)
    writer = RingWriter(buf, layout)
    write_n(writer, 1, records)
    writer.release()
    return bytes(buf)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def run_py(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the ring itself, on a plain buffer ------------------------------------------------------


def test_records_round_trip_the_exact_public_payloads() -> None:
    buf, layout = ring(8, 2048)
    writer = RingWriter(buf, layout)
    reader = RingReader(buf, start="next")
    b, t = book(1), trade(2)
    assert writer.write(RecordType.BOOK, b.symbol, encode_book(b)) == 1
    assert writer.write(RecordType.TRADE, t.symbol, encode_trade(t)) == 2

    first, second = reader.read()

    assert (first.seq, first.kind, first.symbol, first.channel) == (
        1,
        RecordType.BOOK,
        "BTCUSDT",
        "orderbook:BTCUSDT",
    )
    assert first.payload == encode_book(b)
    assert first.data() == book_dict(b)
    assert (second.seq, second.channel, second.payload) == (2, "trades:ETHUSDT", encode_trade(t))
    assert second.data() == trade_dict(t)
    assert abs(first.write_time_ns - time.time_ns()) < 60 * 10**9
    assert reader.read() == []
    assert (reader.missed, reader.errors) == (0, 0)


def test_reader_that_falls_behind_is_told_exactly_how_many_it_missed() -> None:
    buf, layout = ring(8)
    writer = RingWriter(buf, layout)
    reader = RingReader(buf, start="next")

    write_n(writer, 1, 20)
    got = reader.read()
    assert [r.seq for r in got] == list(range(13, 21))
    assert reader.missed == 12

    write_n(writer, 21, 23)  # within the ring again: nothing more is missed
    assert [r.seq for r in reader.read()] == [21, 22, 23]
    assert reader.missed == 12

    write_n(writer, 24, 60)
    assert [r.seq for r in reader.read(max_records=3)] == [53, 54, 55]
    assert reader.missed == 12 + 29
    assert [r.seq for r in reader.read()] == [56, 57, 58, 59, 60]


@pytest.mark.parametrize(
    ("start", "seqs", "missed"),
    [("next", [], 0), ("oldest", [3, 4, 5, 6], 0), ("first", [3, 4, 5, 6], 2)],
)
def test_reader_start_positions(start: str, seqs: list[int], missed: int) -> None:
    buf, layout = ring(4)
    writer = RingWriter(buf, layout)
    write_n(writer, 1, 6)
    reader = RingReader(buf, start=start)  # type: ignore[arg-type]
    assert [r.seq for r in reader.read()] == seqs
    assert reader.missed == missed


def test_slot_being_overwritten_counts_as_missed_not_as_a_torn_record() -> None:
    buf, layout = ring(8)
    writer = RingWriter(buf, layout)
    write_n(writer, 1, 3)
    # The writer has started record 9 in slot 0 (odd sequence word) and scribbled half of it.
    words = buf.cast("Q")
    words[HEADER_SIZE // 8] = 2 * 9 - 1
    buf[HEADER_SIZE + SLOT_HEADER_SIZE : HEADER_SIZE + SLOT_HEADER_SIZE + 4] = b"\xff\xfe{["
    words.release()

    reader = RingReader(buf, start="first")
    assert [r.seq for r in reader.read()] == [2, 3]
    assert (reader.missed, reader.errors) == (1, 0)


def test_record_larger_than_a_slot_is_rejected_and_nothing_is_written() -> None:
    buf, layout = ring(4, 128)
    writer = RingWriter(buf, layout)
    reader = RingReader(buf)
    fits = b"x" * layout.max_payload
    with pytest.raises(RecordRejected, match="at most 72 bytes"):
        writer.write(RecordType.BOOK, "BTCUSDT", fits + b"x")
    with pytest.raises(RecordRejected, match="symbol"):
        writer.write(RecordType.BOOK, "X" * 33, b"{}")
    assert writer.seq == 0 and reader.read() == []
    assert writer.write(RecordType.BOOK, "BTCUSDT", fits) == 1
    assert [r.payload for r in reader.read()] == [fits]


@pytest.mark.parametrize(("slots", "slot_size"), [(0, 256), (4, 60), (4, 100), (2**32, 64)])
def test_invalid_geometry_is_refused(slots: int, slot_size: int) -> None:
    with pytest.raises(ShmFormatError):
        Layout(slots, slot_size)


def test_invalid_geometry_in_the_config_is_a_config_error() -> None:
    pipeline = PipelineConfig("p", ReplayOptions(path="x"), (OrderBookOptions(),), ())
    with pytest.raises(ConfigError, match="pipeline 'p': shm sink: slot_size must be a multiple"):
        build_sink(ShmSinkOptions(name="x", slot_size=100), pipeline)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_header_is_a_format_error(data: bytes) -> None:
    try:
        RingReader(memoryview(bytearray(data)))
    except ShmFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    patches=st.lists(
        st.tuples(st.integers(0, 127), st.binary(min_size=1, max_size=16)), min_size=1
    ),
    size=st.integers(0, HEADER_SIZE + 4 * 256),
)
def test_damaged_header_is_a_format_error_or_still_readable(
    patches: list[tuple[int, bytes]], size: int
) -> None:
    buf, layout = ring(4, 256)
    writer = RingWriter(buf, layout)
    write_n(writer, 1, 3)
    writer.release()
    for offset, data in patches:
        data = data[: HEADER_SIZE - offset]
        buf[offset : offset + len(data)] = data
    try:
        reader = RingReader(buf[:size], start="first")
        reader.read()
    except ShmFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    head=st.integers(0, 2**64 - 1) | st.integers(0, 40),
    patches=st.lists(st.tuples(st.integers(0, 4 * 256 - 1), st.binary(min_size=1, max_size=64))),
    start=st.sampled_from(["next", "oldest", "first"]),
)
def test_garbage_in_slots_is_counted_never_raised(
    head: int, patches: list[tuple[int, bytes]], start: str
) -> None:
    buf, layout = ring(4, 256)
    writer = RingWriter(buf, layout)
    write_n(writer, 1, 3)
    writer.release()
    body = buf[HEADER_SIZE:]
    for offset, data in patches:
        body[offset : offset + len(data)] = data[: len(body) - offset]
    buf[64:72] = head.to_bytes(8, "little")

    reader = RingReader(buf, start=start)  # type: ignore[arg-type]
    first = reader.next_seq
    got = reader.read()
    assert [r.seq for r in got] == sorted({r.seq for r in got})
    assert len(got) + reader.missed + reader.errors == max(0, head - first + 1)
    for record in got:
        try:
            record.data()
        except ShmFormatError:
            pass


# --- segments ---------------------------------------------------------------------------------


def test_close_unlinks_and_attached_readers_keep_what_was_written(name: str) -> None:
    writer = ShmWriter.create(name, 16, 512)
    assert (SHM_DIR / name).exists()
    reader = ShmReader(name, start="first")
    write_n(writer, 1, 5)
    assert not reader.writer_gone() and not reader.replaced()

    writer.close()
    writer.close()  # idempotent

    assert not (SHM_DIR / name).exists()
    assert reader.header().closed and reader.writer_gone() and reader.replaced()
    assert [r.seq for r in reader.read()] == [1, 2, 3, 4, 5]
    reader.close()
    with pytest.raises(ShmNotFoundError):
        ShmReader(name)


def test_reader_in_another_process_sees_every_record_in_order(name: str) -> None:
    slots, total = 1024, 1000
    code = """
        import sys, orjson
        from sinks.shm import ShmReader
        reader = ShmReader(sys.argv[1])
        print("ready", flush=True)
        got = []
        while len(got) < int(sys.argv[2]):
            got += [[r.seq, r.channel, r.payload.decode()] for r in reader.read()]
        print(orjson.dumps({"got": got, "missed": reader.missed, "errors": reader.errors}).decode())
    """
    with ShmWriter.create(name, slots, 1024) as writer:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), name, str(total)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            for i in range(1, total + 1):  # in bursts, so that reading and writing interleave
                if i % 2:
                    writer.write(RecordType.BOOK, "BTCUSDT", encode_book(book(i, depth=5)))
                else:
                    writer.write(RecordType.TRADE, "ETHUSDT", encode_trade(trade(i)))
                if i % 100 == 0:
                    time.sleep(0.005)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        result = orjson.loads(out)
        assert (result["missed"], result["errors"]) == (0, 0)
        assert [seq for seq, _, _ in result["got"]] == list(range(1, total + 1))
        for seq, chan, payload in result["got"]:
            if seq % 2:
                assert (chan, payload) == (
                    "orderbook:BTCUSDT",
                    encode_book(book(seq, depth=5)).decode(),
                )
            else:
                assert (chan, payload) == ("trades:ETHUSDT", encode_trade(trade(seq)).decode())
        # The reader's exit neither unlinked the segment nor made the resource tracker complain.
        assert err == ""
        assert (SHM_DIR / name).exists()
        write_n(writer, total + 1, total + 1)
    assert not (SHM_DIR / name).exists()


def test_reader_racing_a_faster_writer_never_gets_a_torn_record(name: str) -> None:
    # A small ring, a writer process in a tight loop and a reader here: the reader is lapped
    # again and again, and every record it does deliver must be exactly what was written.
    total = 60_000
    code = """
        import sys
        from sinks.shm import ShmWriter, RecordType
        writer = ShmWriter.create(sys.argv[1], 16, 256)
        print("ready", flush=True)
        sys.stdin.readline()
        for seq in range(1, int(sys.argv[2]) + 1):
            writer.write(RecordType.TRADE, "S%d" % (seq % 97), b"%d:" % seq + b"x" * (seq % 150))
        print("done", flush=True)
        sys.stdin.readline()
        writer.close()
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), name, str(total)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        reader = ShmReader(name, start="first")
        proc.stdin.write("\n")
        proc.stdin.flush()
        delivered, last = 0, 0
        while reader.next_seq <= total:
            for r in reader.read(100):
                assert r.seq > last
                assert (r.symbol, r.payload) == (
                    f"S{r.seq % 97}",
                    b"%d:" % r.seq + b"x" * (r.seq % 150),
                )
                delivered, last = delivered + 1, r.seq
        assert proc.stdout.readline() == "done\n"
        assert (reader.errors, delivered + reader.missed) == (0, total)
        assert delivered >= 16  # at least the last lap
        reader.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def test_a_reader_beside_the_writer_leaves_the_resource_tracker_consistent(name: str) -> None:
    # The usual work-around (unregister after attaching) breaks exactly this: the tracker forgets
    # the writer's registration and prints a KeyError traceback when the writer unlinks.
    code = """
        import sys
        from sinks.shm import ShmReader, ShmWriter, RecordType
        writer = ShmWriter.create(sys.argv[1], 8, 256)
        for _ in range(3):
            with ShmReader(sys.argv[1]) as reader:
                writer.write(RecordType.TRADE, "BTCUSDT", b"{}")
                assert [r.seq for r in reader.read()] == [writer.seq]
        writer.close()
        print("ok")
    """
    result = run_py(code, name)
    assert (result.stdout, result.stderr) == ("ok\n", "")
    assert not (SHM_DIR / name).exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"MDSHMRNG",
        os.urandom(4096),
        b"MDSHMRNG" + b"\xff" * 120,
    ],
    ids=["empty", "short", "random", "bad-version"],
)
def test_reader_of_a_garbage_segment_gets_a_format_error(name: str, data: bytes) -> None:
    raw_segment(name, data, size=len(data))
    with pytest.raises(ShmFormatError) as info:
        ShmReader(name)
    assert isinstance(info.value, MarketDataError)
    assert name in str(info.value)


def test_reader_of_a_truncated_segment_gets_a_format_error(name: str) -> None:
    data = valid_ring_bytes(16, 256, os.getpid(), records=3)
    raw_segment(name, data[:1000])
    with pytest.raises(ShmFormatError, match="only 1000 bytes"):
        ShmReader(name)


def test_stale_segment_of_a_dead_writer_is_taken_over(name: str) -> None:
    raw_segment(name, valid_ring_bytes(4, 256, dead_pid(), records=6))
    with ShmWriter.create(name, 16, 256) as writer, ShmReader(name, start="first") as reader:
        header = reader.header()
        assert (header.writer_pid, header.write_seq, header.layout) == (
            os.getpid(),
            0,
            Layout(16, 256),
        )
        write_n(writer, 1, 2)
        assert [r.seq for r in reader.read()] == [1, 2]


@pytest.mark.parametrize(
    "data", [b"", os.urandom(300), b"\0" * 4096], ids=["empty", "random", "zeros"]
)
def test_segment_with_an_invalid_layout_is_taken_over(name: str, data: bytes) -> None:
    raw_segment(name, data)
    with ShmWriter.create(name, 4, 128), ShmReader(name) as reader:
        assert reader.header().writer_pid == os.getpid()


def test_segment_left_by_an_earlier_process_with_our_pid_is_taken_over(name: str) -> None:
    # A container restart can give the new writer the PID the old one had.
    raw_segment(name, valid_ring_bytes(4, 128, os.getpid()))
    with ShmWriter.create(name, 4, 128):
        pass


def test_segment_of_a_live_writer_pid_is_refused(name: str) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        raw_segment(name, valid_ring_bytes(4, 128, sleeper.pid))
        with pytest.raises(ShmInUseError, match=f"pid {sleeper.pid}, which is still running"):
            ShmWriter.create(name, 4, 128)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (SHM_DIR / name).exists()  # untouched
    with ShmWriter.create(name, 4, 128):  # and reusable once that process is gone
        pass


def test_close_does_not_unlink_a_segment_re_created_under_the_same_name(name: str) -> None:
    code = """
        import os, sys
        from sinks.shm import ShmWriter
        old = ShmWriter.create(sys.argv[1], 4, 128)
        os.unlink("/dev/shm/" + sys.argv[1])  # removed by hand while still open ...
        print("go", flush=True)
        sys.stdin.readline()  # ... and re-created by another writer
        old.close()
        print("closed")
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), name],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "go\n"
        with ShmWriter.create(name, 4, 128):
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "closed\n"
            assert (SHM_DIR / name).exists()
    finally:
        proc.kill()
        proc.wait()


def test_an_abandoned_writer_gives_its_segment_up(name: str) -> None:
    writer = ShmWriter.create(name, 4, 128)
    del writer
    gc.collect()
    assert not (SHM_DIR / name).exists()
    with ShmWriter.create(name, 4, 128):
        pass


def test_second_writer_is_refused_while_the_first_holds_the_segment(name: str) -> None:
    with ShmWriter.create(name, 4, 128) as first:
        with pytest.raises(ShmInUseError):
            ShmWriter.create(name, 4, 128)
        first.write(RecordType.TRADE, "BTCUSDT", b"{}")
        with ShmReader(name, start="first") as reader:
            assert [r.seq for r in reader.read()] == [1]


# --- the CLI ----------------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sinks.shm", *args]


def test_tail_prints_json_lines_and_reports_misses(name: str) -> None:
    seg = segment_name(name, 0)
    with ShmWriter.create(seg, 16, 512) as writer:
        write_n(writer, 1, 35)
        result = subprocess.run(
            cli("tail", name, "--from-start", "--count", "16", "--exit-after", "20"),
            cwd=REPO,
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 0
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines] == list(range(20, 36))
    for line in lines:
        assert line["segment"] == seg
        assert line["channel"] == "trades:ETHUSDT"
        assert line["data"] == trade_dict(trade(line["seq"]))
    assert result.stdout.splitlines()[0].endswith(b'"data":' + encode_trade(trade(20)) + b"}")
    assert f"{seg}: missed 19 record(s)".encode() in result.stderr


def _read_stderr_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on stderr; got {seen!r}"
        if select.select([proc.stderr], [], [], left)[0]:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"stderr closed; got {seen!r}"
            seen += chunk
    return seen


def test_tail_follows_every_worker_segment_and_discovers_new_ones(name: str) -> None:
    w0 = ShmWriter.create(segment_name(name, 0), 64, 2048)
    write_n(w0, 1, 3)  # before tail starts: not printed (tail prints new records)
    proc = subprocess.Popen(
        cli("tail", name, "--count", "7", "--exit-after", "20"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _read_stderr_until(proc, f"following {name}.w0".encode(), 20)
        w0.write(RecordType.BOOK, "BTCUSDT", encode_book(book(4)))
        with ShmWriter.create(segment_name(name, 1), 64, 2048, worker_index=1) as w1:
            write_n(w1, 1, 5)  # a new segment is read from its first record
            w0.write(RecordType.BOOK, "BTCUSDT", encode_book(book(5)))
            out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        w0.close()
    assert proc.returncode == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    by_segment = {
        seg: [(x["seq"], x["channel"], x["data"]) for x in lines if x["segment"] == seg]
        for seg in (f"{name}.w0", f"{name}.w1")
    }
    assert by_segment[f"{name}.w0"] == [
        (4, "orderbook:BTCUSDT", book_dict(book(4))),
        (5, "orderbook:BTCUSDT", book_dict(book(5))),
    ]
    assert by_segment[f"{name}.w1"] == [
        (i, "trades:ETHUSDT", trade_dict(trade(i))) for i in range(1, 6)
    ]


def test_tail_follows_a_writer_that_restarts(name: str) -> None:
    seg = segment_name(name, 0)
    first = ShmWriter.create(seg, 8, 256)
    proc = subprocess.Popen(
        cli("tail", name, "--count", "5", "--exit-after", "20"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _read_stderr_until(proc, f"following {seg}".encode(), 20)
        write_n(first, 1, 2)
        first.close()
        with ShmWriter.create(seg, 8, 256) as second:  # same name, a new segment: seq from 1
            write_n(second, 3, 5)
            out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        first.close()
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [(x["seq"], x["data"]["trade_id"]) for x in lines] == [
        (1, 5001),
        (2, 5002),
        (1, 5003),
        (2, 5004),
        (3, 5005),
    ]


def test_tail_survives_a_garbage_segment(name: str) -> None:
    raw_segment(f"{name}.w0", os.urandom(1000))
    result = subprocess.run(
        cli("tail", name, "--exit-after", "1"), cwd=REPO, capture_output=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout == b""
    assert b"skipped: segment" in result.stderr and b"Traceback" not in result.stderr


def test_info_prints_each_header(name: str) -> None:
    with ShmWriter.create(segment_name(name, 0), 8, 256, worker_count=1) as writer:
        write_n(writer, 1, 2)
        result = subprocess.run(cli("info", name), cwd=REPO, capture_output=True, timeout=30)
    assert result.returncode == 0
    (header,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert header | {"created_unix_ns": 0} == {
        "segment": f"{name}.w0",
        "slots": 8,
        "slot_size": 256,
        "write_seq": 2,
        "writer_pid": os.getpid(),
        "writer_alive": True,
        "closed": False,
        "worker_index": 0,
        "worker_count": 1,
        "created_unix_ns": 0,
    }


# --- the bytewax sink -------------------------------------------------------------------------


def _events() -> list[OutputEvent]:
    events: list[OutputEvent] = []
    for i in range(1, 11):
        events.append(book(i))
        events.append(trade(i))
    events.append(BookStatus("BTCUSDT", BookState.RESYNCING, "gap", 1_000_010, 1.0))
    events.append(book(11, depth=200))  # larger than a slot: dropped, counted
    return events


@pytest.mark.parametrize("workers", [1, 2])
def test_sink_in_a_flow_writes_books_trades_and_status(name: str, workers: int) -> None:
    events = _events()
    release = threading.Event()

    def items() -> Iterator[OutputEvent]:
        yield from events
        release.wait(20)  # keep the flow (and its segments) alive until the test has read them

    options = ShmSinkOptions(name=name, slots=64, slot_size=1536)
    pipeline = PipelineConfig("p", ReplayOptions(path="x"), (OrderBookOptions(),), (options,))
    flow = Dataflow("shm_sink_test")
    source: TestingSource[OutputEvent] = TestingSource(items())
    stream = op.input("replay", flow, source)
    op.output("publish_shm", stream, build_sink(options, pipeline))
    if workers == 1:
        runner = threading.Thread(target=run_main, args=(flow,))
    else:
        runner = threading.Thread(
            target=cluster_main, args=(flow, [], 0), kwargs={"worker_count_per_proc": 2}
        )
    runner.start()
    try:
        got = _read_all(name, workers, expected=len(events) - 1)
    finally:
        release.set()
        runner.join(20)
    assert not runner.is_alive()

    expected = [(e.symbol, payload_of(e)) for e in events[:-1]]
    assert [(r.symbol, r.payload) for r in got] == expected
    assert [r.kind for r in got[:3]] == [RecordType.BOOK, RecordType.TRADE, RecordType.BOOK]
    assert got[-1].kind is RecordType.STATUS
    assert got[-1].data() == {
        "symbol": "BTCUSDT",
        "state": "resyncing",
        "reason": "gap",
        "last_update_id": 1_000_010,
    }
    assert not any(SHM_DIR.glob(f"{name}*")), "segments are unlinked when the flow ends"


def payload_of(ev: OutputEvent) -> bytes:
    if isinstance(ev, BookUpdate):
        return encode_book(ev)
    if isinstance(ev, Trade):
        return encode_trade(ev)
    return status_payload(ev)


def _read_all(name: str, workers: int, expected: int) -> list[Record]:
    readers: dict[str, ShmReader] = {}
    got: list[Record] = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < expected:
            assert time.monotonic() < deadline, f"got {len(got)} of {expected} records"
            for i in range(workers):
                seg = segment_name(name, i)
                if seg not in readers:
                    try:
                        readers[seg] = ShmReader(seg, start="first")
                    except (ShmNotFoundError, ShmFormatError):
                        continue
                got += readers[seg].read()
            time.sleep(0.001)
        assert len(readers) == workers
        assert sum(r.missed + r.errors for r in readers.values()) == 0
        time.sleep(0.05)
        assert [r.read() for r in readers.values()] == [[]] * workers  # the oversized book
    finally:
        for reader in readers.values():
            reader.close()
    return got


def test_oversized_records_are_counted_as_drops(name: str) -> None:
    from health.metrics import SINK_DROPS

    sink = build_sink(
        ShmSinkOptions(name=name, slots=8, slot_size=256),
        PipelineConfig("p", ReplayOptions(path="x"), (OrderBookOptions(),), ()),
    )
    drops = SINK_DROPS.labels(sink="shm:p", type="orderbook")
    before = drops._value.get()
    part = sink.build("publish_shm", 0, 1)
    try:
        part.write_batch([book(1), trade(1), book(2, depth=1)])
        with ShmReader(segment_name(name, 0), start="first") as reader:
            assert [r.channel for r in reader.read()] == ["trades:ETHUSDT", "orderbook:BTCUSDT"]
    finally:
        part.close()
    assert drops._value.get() - before == 1
    assert not (SHM_DIR / segment_name(name, 0)).exists()
