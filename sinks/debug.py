"""Debugging sinks: one JSON line per book update, trade and status change.

Each line is ``{"channel": "orderbook:BTCUSDT", "data": {<the contract payload>}}`` (channels
``orderbook:``, ``trades:`` and ``status:``), so a file can be compared with what Redis carries.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from market_data.config import PipelineConfig
from market_data.events import BookStatus, BookUpdate, OutputEvent, Trade
from market_data.options import JsonlSinkOptions, StdoutSinkOptions
from sinks.payload import BOOK_PREFIX, TRADE_PREFIX, encode_book, trade_dict


def line_of(ev: OutputEvent) -> bytes:
    """The JSON line (with newline) for one output event."""
    obj: dict[str, Any]
    if isinstance(ev, BookUpdate):  # orjson's bytes for the same object, with the payload's writer
        channel = orjson.dumps(f"{BOOK_PREFIX}:{ev.symbol}")
        return b'{"channel":' + channel + b',"data":' + encode_book(ev) + b"}\n"
    if isinstance(ev, Trade):
        obj = {"channel": f"{TRADE_PREFIX}:{ev.symbol}", "data": trade_dict(ev)}
    elif isinstance(ev, BookStatus):
        obj = {
            "channel": f"status:{ev.symbol}",
            "data": {
                "symbol": ev.symbol,
                "state": ev.state.value,
                "reason": ev.reason,
                "last_update_id": ev.last_update_id,
            },
        }
    else:
        raise TypeError(f"expected a BookUpdate, Trade or BookStatus; got {ev!r}")
    return orjson.dumps(obj) + b"\n"


class _StreamPartition(StatelessSinkPartition[OutputEvent]):
    def __init__(self, fh: IO[bytes], owned: bool) -> None:
        self._fh = fh
        self._owned = owned

    @override
    def write_batch(self, items: list[OutputEvent]) -> None:
        self._fh.write(b"".join(line_of(ev) for ev in items))
        self._fh.flush()

    @override
    def close(self) -> None:
        self._fh.flush()
        if self._owned:
            self._fh.close()


class StdoutSink(DynamicSink[OutputEvent]):
    """Writes JSON lines to standard output."""

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamPartition:
        return _StreamPartition(sys.stdout.buffer, owned=False)


class JsonlSink(DynamicSink[OutputEvent]):
    """Writes JSON lines to a file per worker.

    With one worker the file is ``path``; with several, ``{worker}`` in the path is replaced by
    the worker index, or ``.w<index>`` is put before the suffix (``books.w1.jsonl``).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def path_for(self, worker_index: int, worker_count: int) -> Path:
        """The file that worker ``worker_index`` writes."""
        if "{worker}" in self.path:
            return Path(self.path.replace("{worker}", str(worker_index)))
        path = Path(self.path)
        if worker_count == 1:
            return path
        return path.with_name(f"{path.stem}.w{worker_index}{path.suffix}")

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamPartition:
        path = self.path_for(worker_index, worker_count)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _StreamPartition(path.open("wb"), owned=True)


def build_stdout_sink(options: StdoutSinkOptions, pipeline: PipelineConfig) -> StdoutSink:
    """Registry builder for ``type: stdout``."""
    return StdoutSink()


def build_jsonl_sink(options: JsonlSinkOptions, pipeline: PipelineConfig) -> JsonlSink:
    """Registry builder for ``type: jsonl``."""
    return JsonlSink(options.path)
