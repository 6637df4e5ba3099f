"""WebSocket text frames as the simulator's server writes them, many at a time.

A server's frames are unmasked, and the simulator's connections have no extension (compression is
off), so a text message is one frame: a 2, 4 or 10-byte header and the UTF-8 payload (RFC 6455,
section 5.2), byte for byte what ``websockets`` writes for it. Building the headers here costs a
tenth of ``websockets``' own framing, which the load-test mode paid once per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_FIN_TEXT = 0x81  # FIN bit, opcode 1 (text)
_SHORT = [bytes((_FIN_TEXT, n)) for n in range(126)]
_MEDIUM = struct.Struct("!BBH").pack  # length 126: a 16-bit length follows
_LONG = struct.Struct("!BBQ").pack  # length 127: a 64-bit length follows


def text_frames(texts: Iterable[str]) -> bytes:
    """Each of ``texts`` as one unfragmented, unmasked text frame, concatenated."""
    parts: list[bytes] = []
    append = parts.append
    for text in texts:
        data = text.encode()
        n = len(data)
        if n < 126:
            append(_SHORT[n])
        elif n < 65_536:
            append(_MEDIUM(_FIN_TEXT, 126, n))
        else:
            append(_LONG(_FIN_TEXT, 127, n))
        append(data)
    return b"".join(parts)
