"""Redis replies read straight from the bytes Redis sent (RESP2 and RESP3).

The Redis sink sends a batch's commands in one write and then needs exactly one reply per
command. redis-py's ``read_response`` costs ~3 µs a reply in Python layers (the reply parser,
its socket buffer, error translation); the sink's replies are short (``:1`` for ``PUBLISH``, an
entry id for ``XADD``), so :class:`ReplyReader` splits whole chunks of them at once, ~10x
cheaper. Error replies become redis-py's exception objects (``ResponseError`` and its
subclasses, chosen as redis-py chooses them), returned as values, not raised.
"""

from __future__ import annotations

from redis._parsers import BaseParser

from market_data import MarketDataError

_CRLF = b"\r\n"
_NULL = None
PUSH = object()
"""What a RESP3 push message parses to; :class:`ReplyReader` skips them."""


class ReplyProtocolError(MarketDataError):
    """What Redis sent is not a reply the protocol allows: the connection must be dropped."""


class ReplyReader:
    """Turns the bytes of one connection into replies, in order.

    ``feed`` adds bytes; ``pop(n)`` returns the first ``n`` complete replies or ``None`` while
    fewer have arrived. Bulk strings come back as ``bytes``, simple strings as ``bytes``,
    integers as ``int``, nulls as ``None``, arrays (and RESP3 maps, sets, pushes) as lists,
    errors as exception objects; RESP3 push messages are skipped. ``errors`` counts the error
    replies parsed so far (not errors inside arrays), so a reader of many replies can tell at
    once that none failed.
    """

    __slots__ = ("_buf", "_pos", "_replies", "errors")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # where the next unparsed reply starts in _buf
        self._replies: list[object] = []
        self.errors = 0

    def feed(self, data: bytes) -> None:
        """Add the next bytes received and parse every reply they complete."""
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        else:
            self._buf = self._buf + data if self._buf else data
        buf = self._buf
        replies = self._replies
        pos = 0
        end = len(buf)
        while pos < end:
            kind = buf[pos]
            if kind == 0x3A:  # ':' integer, PUBLISH's answer: the usual case, kept inline
                eol = buf.find(_CRLF, pos)
                if eol < 0:
                    break
                replies.append(_int(buf[pos + 1 : eol], kind))
                pos = eol + 2
                continue
            parsed = _parse(buf, pos)
            if parsed is None:
                break
            reply, pos = parsed
            if reply is not PUSH:
                replies.append(reply)
                if isinstance(reply, Exception):
                    self.errors += 1
        self._pos = pos

    @property
    def ready(self) -> int:
        """Complete replies not yet popped."""
        return len(self._replies)

    @property
    def buffered(self) -> int:
        """Bytes received that are not part of a complete reply yet."""
        return len(self._buf) - self._pos

    def pop(self, n: int) -> list[object] | None:
        """The next ``n`` replies, or ``None`` until that many have arrived."""
        if len(self._replies) < n:
            return None
        out = self._replies[:n]
        del self._replies[:n]
        return out


def _parse(buf: bytes, pos: int) -> tuple[object, int] | None:
    """The reply starting at ``pos`` and the position after it; ``None`` if it is incomplete."""
    eol = buf.find(_CRLF, pos)
    if eol < 0:
        return None
    kind = buf[pos]
    line = buf[pos + 1 : eol]
    after = eol + 2
    if kind == 0x24 or kind == 0x3D or kind == 0x21:  # '$' bulk, '=' verbatim, '!' bulk error
        size = _int(line, kind)
        if size < 0:
            return _NULL, after
        stop = after + size
        if len(buf) < stop + 2:
            return None
        if buf[stop : stop + 2] != _CRLF:
            raise ReplyProtocolError(f"a bulk reply of {size} bytes is not followed by CRLF")
        body = buf[after:stop]
        if kind == 0x21:
            return BaseParser.parse_error(body.decode("utf-8", "replace")), stop + 2
        return (body[4:] if kind == 0x3D else body), stop + 2  # verbatim: drop "txt:"
    if kind == 0x2B:  # '+' simple string
        return line, after
    if kind == 0x2D:  # '-' error
        return BaseParser.parse_error(line.decode("utf-8", "replace")), after
    if kind == 0x3A or kind == 0x28:  # ':' integer, '(' big number
        return _int(line, kind), after
    if kind == 0x5F:  # '_' null
        return _NULL, after
    if kind == 0x23:  # '#' boolean
        return line == b"t", after
    if kind == 0x2C:  # ',' double
        try:
            return float(line), after
        except ValueError:
            raise ReplyProtocolError(f"a ',' reply with no number: {line[:60]!r}") from None
    if kind in (0x2A, 0x7E, 0x3E, 0x25, 0x7C):  # '*' array, '~' set, '>' push, '%' map, '|' attr
        count = _int(line, kind)
        if count < 0:
            return _NULL, after
        if kind == 0x25 or kind == 0x7C:
            count *= 2
        items: list[object] = []
        pos = after
        for _ in range(count):
            parsed = _parse(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        if kind == 0x3E:
            return PUSH, pos  # out of band (RESP3): not the answer to a command
        if kind == 0x7C:
            return _parse(buf, pos)  # attributes annotate the reply that follows them
        return items, pos
    raise ReplyProtocolError(f"unknown reply type {chr(kind)!r} in {bytes(buf[pos:eol])[:60]!r}")


def _int(line: bytes, kind: int) -> int:
    try:
        return int(line)
    except ValueError:
        raise ReplyProtocolError(f"a {chr(kind)!r} reply with no number: {line[:60]!r}") from None
