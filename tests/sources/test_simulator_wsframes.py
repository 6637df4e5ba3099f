"""The simulator's own WebSocket framing: byte for byte what ``websockets`` writes."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from sources.simulator.wsframes import text_frames


def websockets_frames(texts: list[str]) -> bytes:
    """How ``websockets`` frames each text on a server connection without extensions."""
    frames = (Frame(Opcode.TEXT, t.encode()).serialize(mask=False) for t in texts)
    return b"".join(frames)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 300, 65_535, 65_536, 70_000])
def test_every_header_length_matches_websockets(length: int) -> None:
    text = "x" * length
    assert text_frames([text]) == websockets_frames([text])


def test_many_texts_are_concatenated_frames_in_order() -> None:
    texts = ['{"e":"depthUpdate","u":1}', "", "é€" * 50, "y" * 70_000, '{"u":2}']
    assert text_frames(texts) == websockets_frames(texts)
    assert text_frames([]) == b""
