"""The replay source in a cluster: each process reads the symbols whose books it keeps.

bytewax's test harness runs workers as threads of this process; a source told that each worker
is a process of its own (``workers_per_process=1``) is placed as in a cluster of processes, so
the thread that reads a symbol stands for the process.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_data import MarketDataError
from market_data.events import SOURCE_BATCH, Market, OutputEvent
from market_data.options import ReplayOptions
from market_data.placement import worker_of_key
from sources.recording import Record, encode_record, write_records
from sources.replay import (
    SCAN_LIMIT,
    ReplaySource,
    symbol_of_line,
    symbol_of_record,
)
from tests.flows.helpers import FUTURES, run_source
from tests.flows.placement_probe import Where, install

FUTURES_SYMBOLS = ["SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"]
WS = "wss://fstream.binance.com/public/stream?streams=sushiusdt@depth@100ms"


@pytest.mark.parametrize(
    ("record", "symbol"),
    [
        (Record(0, "ws", WS, frame='{"stream":"sushiusdt@depth@100ms","data":{}}'), "SUSHIUSDT"),
        (Record(0, "ws", WS, frame='{"stream":"btcusdt@aggTrade","data":{"e":"x"}}'), "BTCUSDT"),
        (Record(0, "ws", WS, frame='{"e":"depthUpdate","s":"SUSHIUSDT"}'), None),  # bare: parse
        (Record(0, "ws", WS, frame='{"result":null,"id":1}'), None),
        (Record(0, "ws", WS, frame='{"stream":"nosymbol","data":{}}'), None),
        (Record(0, "ws", WS, frame="not json"), None),
        (
            Record(0, "rest", "https://fapi.binance.com/fapi/v1/depth?symbol=ethusdt&limit=1000"),
            "ETHUSDT",
        ),
        (Record(0, "rest", "https://fapi.binance.com/fapi/v1/time"), None),
    ],
)
def test_symbol_of_record_reads_the_stream_name_or_the_url(record, symbol):
    assert symbol_of_record(record) == symbol


@given(
    st.sampled_from(["ws", "rest"]),
    st.text(max_size=40),
    st.sampled_from(['{"stream":"', '{"stream": "', '{"e":"', ""]),
    st.text(max_size=20),
)
def test_symbol_of_line_agrees_with_the_decoded_record(kind, url, head, name):
    # The fast path may decline (None), never disagree: a line and its record go to one worker.
    text = f"{head}{name}@depth@100ms" + '","data":{}}'
    if kind == "ws":
        rec = Record(1.0, "ws", url, frame=text)
    else:
        rec = Record(1.0, "rest", f"{url}?symbol={name}", status=200, body=text)
    fast = symbol_of_line(encode_record(rec))
    assert fast is None or fast == symbol_of_record(rec)


def test_symbol_of_line_reads_a_recorded_frame_undecoded():
    frame = '{"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","s":"SUSHIUSDT"}}'
    assert symbol_of_line(encode_record(Record(1.0, "ws", WS, frame=frame))) == "SUSHIUSDT"


def extra_recording(path: Path) -> Path:
    """Records that name no symbol cheaply: bare frames, answers, a broken line, a REST call."""
    url = "wss://fstream.binance.com/ws/akrousdt@bookTicker"
    records = [
        Record(1.0, "ws", url, frame='{"result":null,"id":1}'),
        Record(1.1, "ws", url, frame='{"e":"bookTicker","s":"AKROUSDT","b":"1","a":"2"}'),
        Record(1.2, "ws", url, frame='{"e":"kline","s":"KEEPUSDT"}'),
        Record(1.3, "ws", url, frame="{broken"),
        Record(1.4, "rest", "https://fapi.binance.com/fapi/v1/exchangeInfo", status=200, body="{}"),
    ]
    write_records(path, records)
    with open(path, "ab") as fh:
        fh.write(b"this line is not a record\n")
    return path


def normalized(out: list[OutputEvent]) -> dict[str, list[OutputEvent]]:
    """Output by symbol, without the receive stamps (perf_counter_ns at emission)."""
    grouped: dict[str, list[OutputEvent]] = defaultdict(list)
    for ev in out:
        if hasattr(ev, "_replace"):
            ev = ev._replace(recv_ns=0)
        grouped[ev.symbol].append(ev)
    return grouped


def replay(
    paths: list[Path], threads: int, workers: int, per_process: int = 1
) -> list[OutputEvent]:
    """Replay through the books on ``threads`` workers, the source placed for a cluster of
    ``workers`` workers, ``per_process`` to a process."""
    options = ReplayOptions(path=[str(p) for p in paths], market=Market.FUTURES)
    return run_source(ReplaySource(options, workers, per_process), Market.FUTURES, threads)


@pytest.fixture
def where(monkeypatch: pytest.MonkeyPatch) -> Where:
    found = Where()
    install(found, monkeypatch.setattr)
    return found


@pytest.mark.parametrize(("workers", "per_process"), [(1, 1), (2, 2), (3, 3)])
def test_one_process_keeps_one_partition_per_file(workers: int, per_process: int) -> None:
    # Worker threads exchange events without copies: one read of each file serves them all.
    source = ReplaySource(ReplayOptions(path=[str(FUTURES), str(FUTURES)]), workers, per_process)
    assert source.list_parts() == ["replay-0", "replay-1"]


def test_a_cluster_reads_each_file_on_the_first_worker_of_each_process() -> None:
    source = ReplaySource(ReplayOptions(path=[str(FUTURES), str(FUTURES)]), 4, 2)
    names = source.list_parts()
    assert names == [f"replay-{j}" for j in range(8)]  # 2 files x 4 workers
    # Position j runs on worker j % 4; workers 0 and 2 are the first of processes 0 and 1.
    assert {n: (i, s.process) for n, (i, s) in source.readers.items() if s} == {
        "replay-0": (0, 0), "replay-2": (0, 1), "replay-4": (1, 0), "replay-6": (1, 1),
    }  # fmt: skip
    assert drain(source, "replay-1") == []  # the others end at once


@pytest.mark.parametrize("workers", [2, 3])
def test_every_symbol_is_read_on_the_worker_that_keeps_its_book(where: Where, workers: int) -> None:
    replay([FUTURES], workers, workers)
    assert set(where.kept) == set(FUTURES_SYMBOLS)
    assert where.crossings() == {}
    owners = {worker_of_key(s, workers) for s in FUTURES_SYMBOLS}
    assert len(where.places()) == len(owners) >= 2  # the books really are on several workers


def test_the_probe_sees_crossings_when_the_source_ignores_placement(where: Where) -> None:
    # The source as it was: partitions unrelated to the books' workers. With the recording
    # listed twice, bytewax runs one copy on each of the 2 workers, so every symbol crosses.
    replay([FUTURES, FUTURES], threads=2, workers=1)
    assert set(where.crossings()) == set(FUTURES_SYMBOLS)


@pytest.mark.parametrize(("workers", "per_process"), [(2, 1), (3, 1), (4, 2), (2, 2)])
def test_a_cluster_emits_exactly_what_one_worker_emits(
    tmp_path: Path, workers: int, per_process: int
) -> None:
    paths = [FUTURES, extra_recording(tmp_path / "extra.jsonl")]
    one = normalized(replay(paths, 1, 1))
    several = normalized(replay(paths, workers, workers, per_process))
    assert set(one) == set(several) == {*FUTURES_SYMBOLS}
    for symbol in one:
        assert several[symbol] == one[symbol], f"{symbol}: output differs"


def kinds(batch: list) -> Counter[str]:
    return Counter(f"{type(ev).__name__}:{getattr(ev, 'symbol', None)}" for ev in batch)


def test_rejects_workers_that_do_not_fill_whole_processes() -> None:
    with pytest.raises(MarketDataError, match="multiple of workers_per_process"):
        ReplaySource(ReplayOptions(path=str(FUTURES)), 3, 2)


def test_events_without_a_symbol_are_emitted_once(tmp_path: Path) -> None:
    extra = extra_recording(tmp_path / "extra.jsonl")
    options = ReplayOptions(path=[str(extra)], market=Market.FUTURES)
    source = ReplaySource(options, 3, 1)
    emitted: Counter[str] = Counter()
    for name in source.list_parts():
        emitted += kinds(drain(source, name))
    expected = kinds(drain(ReplaySource(options, 1), "replay-0"))
    assert emitted == expected
    assert expected["FrameError:None"] == 2  # the broken frame and the broken line, once each


def drain(source: ReplaySource, name: str) -> list:
    part = source.build_part("replay", name, None)
    out: list = []
    while True:
        try:
            out += part.next_batch()
        except StopIteration:
            return out


def test_a_partition_with_nothing_of_its_own_hands_the_worker_back_between_slices(
    tmp_path: Path,
) -> None:
    # A long recording of another process's symbol must not be read whole in one call, which
    # would stall the worker's other partitions and its books meanwhile.
    symbol = next(s for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT") if worker_of_key(s, 2) == 1)
    frame = f'{{"stream":"{symbol.lower()}@bookTicker","data":{{"e":"bookTicker","s":"{symbol}"}}}}'
    path = tmp_path / "many.jsonl"
    write_records(path, [Record(0.0, "ws", WS, frame=frame)] * (2 * SCAN_LIMIT + 10))
    source = ReplaySource(ReplayOptions(path=str(path), market=Market.FUTURES), 2, 1)
    part = source.build_part("replay", source.list_parts()[0], None)  # process 0's
    assert part.next_batch() == []
    assert part.snapshot() == SCAN_LIMIT  # resumable after the records it skipped
    assert part.next_batch() == []
    with pytest.raises(StopIteration):
        part.next_batch()
    mine = source.build_part("replay", source.list_parts()[1], None)  # process 1's
    assert len(list(mine.next_batch())) == SOURCE_BATCH
