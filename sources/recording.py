"""The public recording format: what a live source received, replayable byte for byte.

JSON lines, gzip-compressed when the file name ends in ``.gz``; one object per frame::

    {"t": 1626992741.081672, "kind": "ws", "url": "wss://fstream.binance.com/public/stream?...",
     "frame": "<the frame text exactly as received>"}
    {"t": 1626992741.301402, "kind": "rest",
     "url": "https://fapi.binance.com/fapi/v1/depth?symbol=SUSHIUSDT&limit=1000",
     "status": 200, "body": "<the response body text>"}

``t`` is the receive time in unix seconds. Frames and bodies are kept verbatim, so malformed
frames replay too.
"""

from __future__ import annotations

import gzip
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import orjson

from market_data import ParseError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded WebSocket frame or REST response."""

    t: float
    kind: Literal["ws", "rest"]
    url: str
    frame: str = ""  # ws
    status: int = 0  # rest
    body: str = ""  # rest


def _open(path: str | Path, mode: Literal["rb", "ab"]) -> IO[bytes]:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode)  # type: ignore[return-value]
    return open(path, mode)


def decode_record(line: bytes) -> Record:
    """Decode one line of a recording; raise :class:`ParseError` saying what is wrong."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"recording line is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ParseError(f"recording line must be an object; got {type(obj).__name__}")
    t, kind, url = obj.get("t"), obj.get("kind"), obj.get("url")
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise ParseError(f"recording field 't' must be a number; got {t!r}")
    if not isinstance(url, str):
        raise ParseError(f"recording field 'url' must be a string; got {url!r}")
    if kind == "ws":
        frame = obj.get("frame")
        if not isinstance(frame, str):
            raise ParseError(f"recording field 'frame' must be a string; got {frame!r}")
        return Record(float(t), "ws", url, frame=frame)
    if kind == "rest":
        status, body = obj.get("status"), obj.get("body")
        if type(status) is not int or not isinstance(body, str):
            raise ParseError(
                f"rest record needs an integer 'status' and a string 'body'; got {status!r}, "
                f"{type(body).__name__}"
            )
        return Record(float(t), "rest", url, status=status, body=body)
    raise ParseError(f"recording field 'kind' must be 'ws' or 'rest'; got {kind!r}")


def encode_record(record: Record) -> bytes:
    """Encode one record as a JSON line (with the trailing newline)."""
    if record.kind == "ws":
        obj: dict[str, object] = {
            "t": record.t,
            "kind": "ws",
            "url": record.url,
            "frame": record.frame,
        }
    else:
        obj = {
            "t": record.t,
            "kind": "rest",
            "url": record.url,
            "status": record.status,
            "body": record.body,
        }
    return orjson.dumps(obj) + b"\n"


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield each non-blank line of a recording with its line number, not decoded yet."""
    with _open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def read_records(path: str | Path) -> Iterator[Record | ParseError]:
    """Yield each record of a recording in order, or a :class:`ParseError` for a bad line."""
    for lineno, line in read_lines(path):
        try:
            yield decode_record(line)
        except ParseError as exc:
            yield ParseError(f"{path}:{lineno}: {exc}")


class RecordingWriter:
    """Appends records to a recording; safe to share between a source's threads.

    Opened lazily on the first write, flushed every ``flush_every`` records and on :meth:`close`.
    """

    def __init__(self, path: str | Path, flush_every: int = 100) -> None:
        self.path = Path(path)
        self.flush_every = flush_every
        self._fh: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._pending = 0

    def write(self, record: Record) -> None:
        """Append one record."""
        line = encode_record(record)
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = _open(self.path, "ab")
            self._fh.write(line)
            self._pending += 1
            if self._pending >= self.flush_every:
                self._fh.flush()
                self._pending = 0

    def ws(self, t: float, url: str, frame: str | bytes) -> None:
        """Record a WebSocket frame as received."""
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "surrogateescape")
        self.write(Record(t, "ws", url, frame=text))

    def rest(self, t: float, url: str, status: int, body: str | bytes) -> None:
        """Record a REST response as received."""
        text = body if isinstance(body, str) else body.decode("utf-8", "replace")
        self.write(Record(t, "rest", url, status=status, body=text))

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def convert_cryptofeed(ws_path: str | Path, http_path: str | Path | None) -> list[Record]:
    """Convert a cryptofeed ``sample_data`` capture (ws file + http file) into records, by time.

    The ws file's first line is ``<url> <-> <time>``, then ``<time>: <frame>`` lines; the http file
    holds ``<url> -> <time>: <body>`` lines.
    """
    records: list[Record] = []
    with open(ws_path, encoding="utf-8") as fh:
        url = fh.readline().split(" <-> ")[0].strip()
        for line in fh:
            if not line.strip():
                continue
            stamp, _, frame = line.rstrip("\n").partition(": ")
            records.append(Record(float(stamp), "ws", url, frame=frame))
    if http_path is not None:
        with open(http_path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                head, _, body = line.rstrip("\n").partition(": ")
                req_url, _, stamp = head.partition(" -> ")
                records.append(Record(float(stamp), "rest", req_url, status=200, body=body))
    records.sort(key=lambda r: r.t)  # stable: equal times keep file order
    return records


def write_records(path: str | Path, records: list[Record]) -> None:
    """Write ``records`` to a new recording at ``path``."""
    buf = io.BytesIO()
    for r in records:
        buf.write(encode_record(r))
    data = buf.getvalue()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    Path(path).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m sources.recording convert-cryptofeed WS_FILE HTTP_FILE OUT``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sources.recording")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert-cryptofeed", help="convert a cryptofeed sample_data capture")
    conv.add_argument("ws_file")
    conv.add_argument("http_file", nargs="?")
    conv.add_argument("out", help="output recording (.jsonl or .jsonl.gz)")
    args = parser.parse_args(argv)
    records = convert_cryptofeed(args.ws_file, args.http_file)
    write_records(args.out, records)
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
