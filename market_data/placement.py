"""Which bytewax worker keeps each symbol's book, so a source can read the symbol on that worker.

bytewax 0.21 routes a keyed step's items (the order book is keyed by symbol) to the worker at
index ``hash(key) % workers``, where the hash is Rust's ``DefaultHasher`` (SipHash-1-3 with two
zero keys) over the key string's bytes followed by ``0xff`` (how Rust hashes a ``str``). It
places the partitions of a ``FixedPartitionedSource`` that every worker lists in sorted order of
their names, each on the worker with the fewest so far, so the ``j``-th name in sorted order
runs on worker ``j % workers``. Both rules are checked against bytewax itself by
``tests/market_data/test_placement.py``.

A source that puts each symbol in a partition whose sorted position maps to the symbol's own
worker never sends that symbol's events to another worker (or, in a cluster, pickled over TCP to
another process). Placement is only about speed: bytewax routes every event to its key's worker
whatever partition read it, so a wrong guess of the worker count costs copies, never books.

Pure: no bytewax, no I/O.

>>> symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]
>>> [worker_of_key(s, 2) for s in symbols]
[1, 0, 1, 0, 0, 0]
>>> place_symbols(symbols, workers=2, partitions=4)
[['ETHUSDT', 'XRPUSDT'], ['BTCUSDT'], ['BNBUSDT', 'DOGEUSDT'], ['SOLUSDT']]
"""

from __future__ import annotations

from collections.abc import Sequence

from market_data import MarketDataError

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of ``data`` under the 64-bit keys ``k0``, ``k1``: Rust's ``DefaultHasher``.

    One compression round per 8-byte block and three finalization rounds; ``k0 = k1 = 0`` is
    what ``BuildHasherDefault::<DefaultHasher>`` uses.
    """
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    whole = n - n % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    # The last block: the remaining bytes, with the length's low byte on top.
    m = ((n & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= m
    sip_round()
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def worker_of_key(key: str, workers: int) -> int:
    """The index of the worker bytewax 0.21 routes items keyed ``key`` to, among ``workers``."""
    if workers < 1:
        raise MarketDataError(f"workers must be at least 1; got {workers}")
    if workers == 1:
        return 0
    # Rust's `impl Hash for str` writes the bytes, then 0xff (which no UTF-8 text contains).
    return siphash13(key.encode("utf-8") + b"\xff") % workers


def place_symbols(symbols: Sequence[str], workers: int, partitions: int) -> list[list[str]]:
    """Deal ``symbols`` into groups; group ``j`` holds only symbols of worker ``j % workers``.

    There are ``partitions`` groups (but no more than there are symbols) and at least one per
    worker; each worker's symbols are dealt round-robin, in the given order, over that worker's
    groups. A worker that has fewer symbols than groups leaves some of them empty (they must
    stay: removing one would move every later group to another worker). With one worker this is
    ``symbols`` dealt round-robin into ``min(partitions, len(symbols))`` groups.
    """
    if workers < 1 or partitions < 1:
        raise MarketDataError(
            f"workers and partitions must be at least 1; got {workers} and {partitions}"
        )
    count = max(workers, min(partitions, len(symbols)))
    groups: list[list[str]] = [[] for _ in range(count)]
    # Worker w's groups are w, w + workers, w + 2 * workers, ... (their sorted positions).
    own: list[list[list[str]]] = [groups[w::workers] for w in range(workers)]
    dealt = [0] * workers
    for symbol in symbols:
        w = worker_of_key(symbol, workers)
        own[w][dealt[w] % len(own[w])].append(symbol)
        dealt[w] += 1
    return groups


def partition_names(prefix: str, count: int) -> list[str]:
    """``count`` names ``<prefix>-<j>`` whose sorted order is ``j``'s (zero-padded from 10 on)."""
    width = len(str(count - 1)) if count > 1 else 1
    return [f"{prefix}-{j:0{width}d}" for j in range(count)]


def worker_of_partition(position: int, workers: int) -> int:
    """The worker that runs the partition at sorted ``position`` when every worker lists it."""
    return position % workers
