"""The Redis reply reader: any split of the bytes, every reply type, errors as redis-py's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ReadOnlyError, ResponseError

from sinks.resp import ReplyProtocolError, ReplyReader


def encode(reply: object) -> bytes:
    """RESP2 encoding of a reply as Redis sends it (the reference for the reader)."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%b\r\n" % (len(reply), reply)
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode(r) for r in reply)
    raise TypeError(reply)


replies = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


@given(sent=st.lists(replies, max_size=20), cuts=st.lists(st.integers(0, 2_000), max_size=20))
def test_replies_come_out_whole_and_in_order_however_the_bytes_are_split(
    sent: list[object], cuts: list[int]
) -> None:
    data = b"".join(encode(r) for r in sent)
    reader = ReplyReader()
    start = 0
    for cut in [*sorted({c for c in cuts if c < len(data)}), len(data)]:
        reader.feed(data[start:cut])
        start = cut
    assert reader.pop(len(sent)) == sent
    assert reader.ready == 0 and reader.buffered == 0


def test_pop_waits_until_enough_replies_have_arrived() -> None:
    reader = ReplyReader()
    reader.feed(b":1\r\n$15\r\n1700000000000-0\r\n:2")
    assert reader.pop(3) is None  # the third is not complete
    assert reader.buffered == 2
    reader.feed(b"\r\n")
    assert reader.pop(3) == [1, b"1700000000000-0", 2]


def test_errors_are_returned_as_redis_py_exceptions_between_other_replies() -> None:
    reader = ReplyReader()
    reader.feed(
        b":1\r\n-ERR The ID specified in XADD is equal or smaller than the target stream top "
        b"item\r\n-READONLY You can't write against a read only replica.\r\n"
        b"-MISCONF Redis is configured to save RDB snapshots\r\n:0\r\n"
    )
    got = reader.pop(5)
    assert got is not None
    assert got[0] == 1 and got[4] == 0
    assert type(got[1]) is ResponseError and "equal or smaller" in str(got[1])
    assert isinstance(got[2], ReadOnlyError)
    assert isinstance(got[3], ResponseError) and str(got[3]).startswith("MISCONF")
    assert reader.errors == 3  # how the sink knows, without looking at each reply


def test_a_reader_of_only_good_replies_counts_no_errors() -> None:
    reader = ReplyReader()
    reader.feed(b":1\r\n$15\r\n1700000000000-0\r\n+OK\r\n")
    assert reader.pop(3) == [1, b"1700000000000-0", b"OK"]
    assert reader.errors == 0
    reader.feed(b"!9\r\nERR bulky\r\n")
    assert reader.errors == 1


def test_resp3_types_and_push_messages() -> None:
    reader = ReplyReader()
    reader.feed(
        b"_\r\n#t\r\n,1.5\r\n(12345678901234567890\r\n=7\r\ntxt:abc\r\n+OK\r\n"
        b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n"  # a push: out of band, not a reply
        b"%1\r\n+k\r\n:1\r\n|1\r\n+ttl\r\n:3\r\n:9\r\n!5\r\nERR x\r\n"
    )
    got = reader.pop(9)
    assert got is not None
    assert got[:8] == [None, True, 1.5, 12345678901234567890, b"abc", b"OK", [b"k", 1], 9]
    assert isinstance(got[8], ResponseError) and str(got[8]) == "x"
    assert reader.ready == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"?what\r\n", "unknown reply type '?'"),
        (b":x\r\n", "':' reply with no number"),
        (b"$3\r\nabcXY", "not followed by CRLF"),
        (b",nope\r\n", "',' reply with no number"),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes, error: str) -> None:
    with pytest.raises(ReplyProtocolError, match=error):
        ReplyReader().feed(data)
