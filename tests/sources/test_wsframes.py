"""The WebSocket frame decoder: messages out of any split of the byte stream, protocol checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    Message,
    ProtocolError,
    close_reason,
)


def frame(opcode: int, payload: bytes, *, fin: bool = True, b0_extra: int = 0) -> bytes:
    """A server frame (unmasked), with the shortest length encoding, as RFC 6455 wants."""
    b0 = (0x80 if fin else 0) | b0_extra | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, n])
    elif n < 65536:
        head = bytes([b0, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 127]) + n.to_bytes(8, "big")
    return head + payload


def feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Message]:
    out: list[Message] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    return out


def test_frames_of_each_length_encoding_decode_to_their_payloads() -> None:
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65_535, b"w" * 65_536]
    data = b"".join(frame(OP_TEXT, p) for p in payloads)
    assert FrameDecoder().feed(data) == [Message(OP_TEXT, p) for p in payloads]


def test_a_frame_split_anywhere_waits_for_its_last_byte() -> None:
    data = frame(OP_TEXT, b'{"e":"depthUpdate"}' * 10)  # 190 bytes: a 16-bit length
    for cut in range(1, len(data)):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) == []
        assert decoder.buffered == cut
        assert decoder.feed(data[cut:]) == [Message(OP_TEXT, data[4:])]
        assert decoder.buffered == 0


# A message as the server may send it: fragments, with pings/pongs possibly between them.
_messages = st.lists(
    st.tuples(
        st.sampled_from([OP_TEXT, OP_BINARY]),
        st.lists(st.binary(max_size=300), min_size=1, max_size=4),  # its fragments
        st.lists(st.sampled_from([OP_PING, OP_PONG]), max_size=2),  # control frames inside it
    ),
    max_size=12,
)


@given(messages=_messages, cuts=st.lists(st.integers(min_value=0, max_value=6_000), max_size=30))
def test_any_stream_of_messages_decodes_the_same_however_it_is_split(
    messages: list[tuple[int, list[bytes], list[int]]], cuts: list[int]
) -> None:
    data = b""
    expected: list[Message] = []
    for opcode, fragments, controls in messages:
        for i, fragment in enumerate(fragments):
            last = i == len(fragments) - 1
            data += frame(opcode if i == 0 else OP_CONTINUATION, fragment, fin=last)
            if i == 0 and controls and not last:
                for control in controls:  # control frames may come between fragments
                    data += frame(control, b"ctl")
                    expected.append(Message(control, b"ctl"))
        expected.append(Message(opcode, b"".join(fragments)))
    decoder = FrameDecoder()
    assert feed_in_pieces(decoder, data, [c for c in cuts if c < len(data)]) == expected
    assert decoder.buffered == 0


def test_close_ping_and_pong_are_returned_in_stream_order() -> None:
    data = frame(OP_TEXT, b"a") + frame(OP_PING, b"p") + frame(OP_CLOSE, b"\x03\xe8bye")
    assert FrameDecoder().feed(data) == [
        Message(OP_TEXT, b"a"),
        Message(OP_PING, b"p"),
        Message(OP_CLOSE, b"\x03\xe8bye"),
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([0x81, 0x81]) + b"mask" + b"x", "masked frame"),
        (frame(OP_TEXT, b"x", b0_extra=0x40), "reserved bits"),  # RSV1: compression, not agreed
        (frame(0x3, b"x"), "unknown opcode 0x3"),
        (frame(0xB, b"x"), "unknown opcode 0xb"),
        (frame(OP_PING, b"x", fin=False), "fragmented control frame"),
        (frame(OP_PING, b"x" * 126), "control frame of 126 bytes"),
        (frame(OP_CONTINUATION, b"x"), "continuation frame outside"),
        (frame(OP_CLOSE, b"\x03"), "close frame with a 1-byte body"),
        (frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), "new message began"),
    ],
)
def test_protocol_violations_are_named(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        FrameDecoder().feed(data)


def test_messages_over_the_limit_are_refused_before_they_are_buffered() -> None:
    decoder = FrameDecoder(max_message_bytes=1_000)
    head = frame(OP_TEXT, b"x" * 1_001)[:4]  # only the header has arrived
    with pytest.raises(ProtocolError, match="1001 bytes is over the 1000-byte limit"):
        decoder.feed(head)
    decoder = FrameDecoder(max_message_bytes=1_000)
    fragments = frame(OP_TEXT, b"x" * 600, fin=False) + frame(OP_CONTINUATION, b"x" * 600)
    with pytest.raises(ProtocolError, match="message over the 1000-byte limit"):
        decoder.feed(fragments)


def test_close_reasons_carry_the_status_code_and_text() -> None:
    assert close_reason(b"") == "closed by server"
    assert close_reason(b"\x03\xf0") == "closed by server (1008)"
    assert close_reason(b"\x03\xe8going away") == "closed by server (1000: going away)"
