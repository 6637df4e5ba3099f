"""WebSocket frames from the server, decoded from the socket's bytes (RFC 6455, section 5).

websocket-client reads one frame with two or three ``recv`` calls (header, length, payload) and
builds several objects per frame. Each call releases and retakes the GIL, which the bytewax
worker holds most of the time: under load the connection thread spent most of its time waiting
to get it back (py-spy, 4 symbols at 12,000 updates/s: 45% of all samples in ``socket.recv``).
:class:`FrameDecoder` splits whatever one large ``recv`` returned into every complete message
at once, so a burst of frames costs one system call and one GIL handoff.

It is pure (bytes in, messages out) and checks what a client must check: server frames are not
masked, no reserved bits (no extension was negotiated), known opcodes, control frames short and
unfragmented, continuation frames only inside a fragmented message, and a size limit.
"""

from __future__ import annotations

from typing import NamedTuple

from market_data import MarketDataError

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_TEXT_FIN = 0x80 | OP_TEXT  # the first byte of an unfragmented text frame: the usual case
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Larger messages end the connection: Binance's largest are a few hundred KiB."""


class ProtocolError(MarketDataError):
    """The server broke the WebSocket protocol; the connection cannot be trusted."""


class Message(NamedTuple):
    """A complete message (text or binary, fragments joined) or a control frame."""

    opcode: int
    payload: bytes


class FrameDecoder:
    """Turns the bytes received on one connection into messages, in order.

    ``feed`` takes any chunk of the byte stream (a frame may be split anywhere) and returns
    the messages it completed; the rest waits for the next chunk. After a
    :class:`ProtocolError` the decoder is unusable, as is the connection.
    """

    __slots__ = ("_fragments", "_fragments_size", "_max", "_opcode", "_pending")

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._pending = b""  # an incomplete frame's bytes
        self._opcode = 0  # of the fragmented message in progress (0: none)
        self._fragments: list[bytes] = []
        self._fragments_size = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._pending) + self._fragments_size

    def feed(self, data: bytes) -> list[Message]:
        """Decode ``data`` (the next bytes of the stream); return the messages it completed."""
        buf = self._pending + data if self._pending else data
        end = len(buf)
        pos = 0
        out: list[Message] = []
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length >= 126:
                if length == 126:
                    if end - head < 2:
                        break
                    length = int.from_bytes(buf[head : head + 2], "big")
                    head += 2
                else:
                    if end - head < 8:
                        break
                    length = int.from_bytes(buf[head : head + 8], "big")
                    head += 8
            if b1 & 0x80:
                raise ProtocolError("the server sent a masked frame")
            if length > self._max:
                raise ProtocolError(f"a frame of {length} bytes is over the {self._max}-byte limit")
            stop = head + length
            if stop > end:
                break
            payload = buf[head:stop]
            pos = stop
            if b0 == _TEXT_FIN and not self._opcode:
                out.append(Message(OP_TEXT, payload))
            else:
                self._frame(b0, payload, out)
        self._pending = buf[pos:] if pos < end else b""
        return out

    def _frame(self, b0: int, payload: bytes, out: list[Message]) -> None:
        """Every frame but an unfragmented text frame outside a fragmented message."""
        if b0 & 0x70:
            raise ProtocolError(f"reserved bits set ({b0 & 0x70:#04x}) with no extension agreed")
        fin = b0 & 0x80
        opcode = b0 & 0x0F
        if opcode in _CONTROL_OPS:
            if not fin:
                raise ProtocolError(f"a fragmented control frame (opcode {opcode:#x})")
            if len(payload) > 125:
                raise ProtocolError(f"a control frame of {len(payload)} bytes (at most 125)")
            if opcode == OP_CLOSE and len(payload) == 1:
                raise ProtocolError("a close frame with a 1-byte body (a status code has 2)")
            out.append(Message(opcode, payload))  # may come between a message's fragments
        elif opcode in _DATA_OPS:
            if self._opcode:
                raise ProtocolError("a new message began before the fragmented one ended")
            if fin:
                out.append(Message(opcode, payload))
            else:
                self._opcode = opcode
                self._fragments = [payload]
                self._fragments_size = len(payload)
        elif opcode == OP_CONTINUATION:
            if not self._opcode:
                raise ProtocolError("a continuation frame outside a fragmented message")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if self._fragments_size > self._max:
                raise ProtocolError(f"a message over the {self._max}-byte limit")
            if fin:
                out.append(Message(self._opcode, b"".join(self._fragments)))
                self._opcode = 0
                self._fragments = []
                self._fragments_size = 0
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")


def close_reason(payload: bytes) -> str:
    """Describe a close frame's payload: its status code and reason, if any."""
    if len(payload) < 2:
        return "closed by server"
    code = int.from_bytes(payload[:2], "big")
    reason = payload[2:].decode("utf-8", "replace")
    return f"closed by server ({code}{': ' + reason if reason else ''})"
